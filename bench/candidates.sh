# Veer as a candidate of the shared side-by-side benchmark (../shared/bench).
#
#   cargo build --release
#   EXTRA_CANDIDATES=$PWD/bench/candidates.sh ../shared/bench/run.sh \
#     --candidates direct,nginx:1,haproxy:1,veer:1 --repeat 3
#
# Round robin here is the built-in Wasm plugin: every request pays a plugin
# call, as it would in production.
VEER_BIN=${VEER_BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release/veer}

# The backends as a TOML array body: "a", "b", "c".
_veer_backends() {
  [[ -x $VEER_BIN ]] || { echo "missing $VEER_BIN: run cargo build --release" >&2; exit 1; }
  local b list=""
  for b in $BACKENDS; do list+="\"$b\", "; done
  echo "${list%, }"
}

# Writes $RUNDIR/veer.toml: plain listener line $1, extra sections $2.
_veer_config() {
  local list; list=$(_veer_backends) || exit 1
  cat > "$RUNDIR/veer.toml" <<TOML
[server]
$1
workers = $WORKERS

[plugins]
dir = ""
# No compiled-plugin cache: every start compiles alike. (instr.sh subtracts
# two runs; a cold cache in the first and a warm one in the second made the
# difference understate a request by ~20,000 instructions.)
cache_dir = ""

[admin]
listen = ""   # no fixed port to clash with a candidate still exiting
$2
[pools.bench]
strategy = "round-robin"
backends = [$list]
max_idle_per_backend = 128
TOML
}

cand_veer() {
  _veer_config "listen = \"127.0.0.1:$PORT\"" ""
  RUST_LOG=warn exec "$VEER_BIN" run --config "$RUNDIR/veer.toml"
}

# Veer terminating TLS (HTTPS listener on $PORT; the plain listener on a free
# port nobody uses). Loaded over https:// by the harness (name ends in -tls).
cand_veer_tls() {
  _veer_config 'listen = "127.0.0.1:0"' "
[tls]
listen = \"127.0.0.1:$PORT\"
certificates = [{ cert = \"$TLS_CERT\", key = \"$TLS_KEY\" }]
"
  RUST_LOG=warn exec "$VEER_BIN" run --config "$RUNDIR/veer.toml"
}

# Veer with the access log on (JSON, every request, to a file): its cost is
# this candidate's CPU per request over `veer`'s, measured in the same run.
cand_veer_log() {
  _veer_config "listen = \"127.0.0.1:$PORT\"" "
[access_log]
enabled = true
format = \"json\"
output = \"$RUNDIR/access.log\"
"
  RUST_LOG=warn exec "$VEER_BIN" run --config "$RUNDIR/veer.toml"
}

# The same with the text format (the default).
cand_veer_log_text() {
  _veer_config "listen = \"127.0.0.1:$PORT\"" "
[access_log]
enabled = true
output = \"$RUNDIR/access.log\"
"
  RUST_LOG=warn exec "$VEER_BIN" run --config "$RUNDIR/veer.toml"
}
