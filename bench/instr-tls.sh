#!/usr/bin/env bash
# Instructions per request over TLS: ../shared/bench/instr.sh with its client
# speaking https (h2load --h1 over TLS 1.3, curl -k for the readiness check),
# for the "-tls" candidates: nginx-tls from the shared candidates, veer-tls
# from bench/candidates.sh.
#
#   bench/instr-tls.sh [--requests N] [--candidates nginx-tls,veer-tls]
#
# Each run keeps its C connections alive (16 by default), so the handshakes
# are the same in both of instr.sh's runs and cancel out: the figure is the
# steady cost of a request on an established TLS connection. The shared
# harness is left as it is; a copy with the scheme changed runs from a
# temporary folder beside the same lib/.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
shared=${SHARED_BENCH:-$here/../../shared/bench}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tls=$tmp/tls
mkdir -p "$tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$tls/key.pem" -out "$tls/cert.pem" 2>/dev/null
cat "$tls/cert.pem" "$tls/key.pem" > "$tls/combined.pem"
export TLS_CERT=$tls/cert.pem TLS_KEY=$tls/key.pem TLS_PEM=$tls/combined.pem
cp -r "$shared/." "$tmp/bench"
sed -e 's#"http://127.0.0.1:\$PORT/"#"https://127.0.0.1:$PORT/"#g' \
    -e 's#curl -s -o#curl -sk -o#' "$shared/instr.sh" > "$tmp/bench/instr.sh"
grep -q 'https://127.0.0.1:\$PORT/' "$tmp/bench/instr.sh" ||
  { echo "instr.sh changed shape: its client URL was not found" >&2; exit 2; }
out=/tmp/proxybench/instr-tls-$(date +%Y%m%d-%H%M%S)
args=()
while (($#)); do
  case $1 in
    --out) out=$2; shift 2;;
    *) args+=("$1"); shift;;
  esac
done
[[ " ${args[*]-} " == *" --candidates "* ]] || args+=(--candidates nginx-tls,veer-tls)
EXTRA_CANDIDATES=$here/candidates.sh${EXTRA_CANDIDATES:+:$EXTRA_CANDIDATES} \
  bash "$tmp/bench/instr.sh" --out "$out" "${args[@]}" | grep -v 'vs nginx\|nan'
# The shared summary divides by a candidate named nginx; here it is nginx-tls.
awk -F'\t' 'NR > 1 { v[$1] = $4; order[++n] = $1 }
  END { printf "%-14s%12s%14s\n", "candidate", "instr/req", "vs nginx-tls"
        for (i = 1; i <= n; i++) printf "%-14s%12d%14.2f\n", order[i], v[order[i]], v["nginx-tls"] ? v[order[i]] / v["nginx-tls"] : 0 }' \
  "$out/results.tsv"
