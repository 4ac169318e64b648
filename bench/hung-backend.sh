#!/usr/bin/env bash
# A backend that accepts connections and never answers, under load: Veer and
# NGINX side by side, each over three backends, first all healthy, then with
# the third one hung. Both proxies use a 1 s per-try timeout and retry the
# next backend after it (NGINX: proxy_read_timeout 1s + proxy_next_upstream
# error timeout; Veer: response_timeout_ms = 1000 and its default retry
# policy). Prints requests served, errors and the hung/healthy ratio.
#
#   cargo build --release
#   bench/hung-backend.sh [SECONDS] [CONNECTIONS]     # defaults: 20 s, 64
#
# Needs nginx, wrk and python3. Everything listens on 127.0.0.1:1818x/1819x;
# every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-20}
CONNS=${2:-64}
VEER_BIN=${VEER_BIN:-$PWD/target/release/veer}
[[ -x $VEER_BIN ]] || { echo "missing $VEER_BIN: run cargo build --release" >&2; exit 1; }
for tool in nginx wrk python3; do
  command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
DIR=$(mktemp -d /tmp/veer-hung.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -f $DIR/backends.pid ]] && kill "$(cat "$DIR/backends.pid")" 2>/dev/null || true
  [[ -f $DIR/nginx.pid ]] && kill "$(cat "$DIR/nginx.pid")" 2>/dev/null || true
  sleep 0.5
  rm -rf "$DIR"
}
trap cleanup EXIT

# Backends: NGINX answering 200 on 18181-18184 (18184 is the third backend
# of the healthy runs), and a hung one on 18185 that reads and never writes.
cat > "$DIR/backends.conf" <<EOF
worker_processes 1;
pid $DIR/backends.pid;
error_log $DIR/backends.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  server { listen 127.0.0.1:18181; location / { return 200 "b1\n"; } }
  server { listen 127.0.0.1:18182; location / { return 200 "b2\n"; } }
  server { listen 127.0.0.1:18184; location / { return 200 "b3\n"; } }
}
EOF
nginx -c "$DIR/backends.conf" -p "$DIR"
timeout $((DURATION * 4 + 120)) python3 - <<'PY' &
import socket, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 18185))
s.listen(4096)
held = []
while True:
    conn, _ = s.accept()
    held.append(conn)  # never answered, never closed
PY
PIDS+=($!)
sleep 0.5

# $1: third backend's port; writes the proxy configs for it.
configs() {
  cat > "$DIR/nginx.conf" <<EOF
worker_processes 1;
pid $DIR/nginx.pid;
error_log $DIR/nginx.err crit;
events { worker_connections 4096; }
http {
  access_log off;
  upstream pool {
    server 127.0.0.1:18181;
    server 127.0.0.1:18182;
    server 127.0.0.1:$1;
    keepalive 128;
  }
  server {
    listen 127.0.0.1:18190;
    location / {
      proxy_pass http://pool;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_connect_timeout 1s;
      proxy_read_timeout 1s;
      proxy_next_upstream error timeout http_502 http_503 http_504;
    }
  }
}
EOF
  cat > "$DIR/veer.toml" <<EOF
[server]
listen = "127.0.0.1:18191"
workers = 1

[plugins]
dir = ""

[pools.bench]
backends = ["127.0.0.1:18181", "127.0.0.1:18182", "127.0.0.1:$1"]
max_idle_per_backend = 128
connect_timeout_ms = 1000
response_timeout_ms = 1000
EOF
}

# $1: label, $2: port. Prints "label requests errors rps".
measure() {
  local out
  out=$(timeout $((DURATION + 30)) wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s "http://127.0.0.1:$2/" 2>&1)
  local requests errors non2xx timeouts
  requests=$(awk '/requests in/ { print $1 }' <<<"$out")
  non2xx=$(awk '/Non-2xx/ { print $NF }' <<<"$out")
  errors=$(awk -F'[ ,]+' '/Socket errors/ { print $4 + $6 + $8 + $10 }' <<<"$out")
  timeouts=$(awk -F'[ ,]+' '/Socket errors/ { print $10 }' <<<"$out")
  printf '%-22s %10s requests  %6s non-2xx  %6s socket errors (%s timeouts)\n' \
    "$1" "$requests" "${non2xx:-0}" "${errors:-0}" "${timeouts:-0}"
  echo "$requests" > "$DIR/$1.n"
}

run_both() {
  configs "$1"
  nginx -c "$DIR/nginx.conf" -p "$DIR"
  "$VEER_BIN" run --config "$DIR/veer.toml" 2>"$DIR/veer-$2.log" &
  local veer=$!
  PIDS+=($veer)
  sleep 1
  measure "nginx-$2" 18190
  measure "veer-$2" 18191
  kill "$(cat "$DIR/nginx.pid")"; kill $veer; wait $veer 2>/dev/null || true
  sleep 1
}

echo "wrk -t1 -c$CONNS -d${DURATION}s, 1 worker each, per-try timeout 1 s"
run_both 18184 healthy
run_both 18185 hung
for p in nginx veer; do
  awk -v p=$p -v h="$(cat "$DIR/$p-healthy.n")" -v u="$(cat "$DIR/$p-hung.n")" \
    'BEGIN { printf "%-6s hung/healthy = %.3f\n", p, u / h }'
done
