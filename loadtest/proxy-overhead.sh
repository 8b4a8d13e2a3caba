#!/bin/bash
# Edge-proxy overhead: echo through a [[proxy]] route vs the same echo direct (docs/benchmarks.md,
# "Edge proxy overhead"). Gateway A serves /echo on :9100; gateway B proxies /p to A's /echo on :9200.
# Prints one line per run: name, connections, CPU seconds of A and B over the run, then wsgate-load's JSON.
# Usage: loadtest/proxy-overhead.sh [BIN_DIR]   (default: $CARGO_TARGET_DIR or target, /release)
# PIN_A, PIN_B, PIN_GEN: optional taskset CPU lists for gateway A, gateway B and the load generator;
# LOAD_ARGS: extra wsgate-load flags (e.g. "--procs 4").
set -u
BIN=${1:-${CARGO_TARGET_DIR:-target}/release}
pin() { if [ -n "$1" ]; then echo "taskset -c $1"; fi; }
DIR=$(mktemp -d)
cat > "$DIR/a.toml" <<'TOML'
cores = 1
pin_cores = false
[listen]
ws = "127.0.0.1:9100"
wss = "off"
[admin]
listen = "off"
TOML
cat > "$DIR/b.toml" <<'TOML'
cores = 1
pin_cores = false
[listen]
ws = "127.0.0.1:9200"
wss = "off"
[admin]
listen = "off"
[[proxy]]
path = "/p"
upstream = "ws://127.0.0.1:9100/echo"
TOML
$(pin "${PIN_A:-}") "$BIN/wsgate" --config "$DIR/a.toml" > "$DIR/a.log" 2>&1 & A=$!
$(pin "${PIN_B:-}") "$BIN/wsgate" --config "$DIR/b.toml" > "$DIR/b.log" 2>&1 & B=$!
trap 'kill $A $B 2>/dev/null; rm -rf "$DIR"' EXIT
sleep 1
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
run() { # name url server-pid connections
  local a0 b0 out
  a0=$(ticks $A); b0=$(ticks $B)
  out=$($(pin "${PIN_GEN:-}") "$BIN/wsgate-load" echo --url "$2" --connections "$4" --payload 512 --duration 10 \
      --server-pid "$3" ${LOAD_ARGS:-} --json --quiet 2>/dev/null | tail -1)
  echo "$1 conns=$4 A_cpu_s=$(( $(ticks $A) - a0 ))e-2 B_cpu_s=$(( $(ticks $B) - b0 ))e-2 $out"
}
for rep in 1 2; do
  run direct ws://127.0.0.1:9100/echo $A 100
  run proxied ws://127.0.0.1:9200/p $B 100
done
run direct ws://127.0.0.1:9100/echo $A 1
run proxied ws://127.0.0.1:9200/p $B 1
