#!/usr/bin/env bash
# Resident (VmRSS) and virtual (VmSize) memory of `veer run` with WORKERS
# workers and NPOOLS extra pools cycling through 8 built-in strategies
# (one instance per worker and a spare each). Compare NPOOLS 0, 8, 16.
# Needs a release build and curl.
# usage: bench/plugin-memory.sh WORKERS NPOOLS  -> prints: workers pools rss_kib vsz_kib
set -eu
BIN="$(cd "$(dirname "$0")/.." && pwd)/target/release/veer"
cd "$(mktemp -d)"
W=$1; N=$2; PORT=$((22000 + RANDOM % 1000))
strategies=(round-robin weighted-round-robin least-connections random p2c peak-ewma ip-hash consistent-hash)
{
echo "[server]"; echo "listen = \"127.0.0.1:$PORT\""; echo "workers = $W"
echo "[admin]"; echo 'listen = ""'
echo "[plugins]"; echo 'dir = ""'; echo 'cache_dir = ""'
echo "[pools.base]"; echo 'backends = ["127.0.0.1:9"]'
for i in $(seq 0 $((N-1))); do s=${strategies[$((i % 8))]}; echo "[pools.p$i]"; echo "strategy = \"$s\""; echo 'backends = ["127.0.0.1:9", "127.0.0.1:10", "127.0.0.1:11", "127.0.0.1:12"]'; done
echo "[[routes]]"; echo 'pool = "base"'
} > veer-$W-$N.toml
"$BIN" run --config veer-$W-$N.toml 2>/dev/null &
pid=$!
for i in $(seq 50); do curl -s -o /dev/null 127.0.0.1:$PORT/ && break; sleep 0.1; done
sleep 0.5
rss=$(awk '/VmRSS/{print $2}' /proc/$pid/status); vsz=$(awk '/VmSize/{print $2}' /proc/$pid/status)
kill $pid; wait $pid 2>/dev/null || true
echo "$W $N $rss $vsz"
