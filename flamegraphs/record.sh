#!/usr/bin/env bash
# Record a CPU flamegraph of wsgate (1 core) under one wsgate-load scenario.
#
#   flamegraphs/record.sh echo|echo-wss|fanout|fanout-1k|storm-ws|storm-wss [SECONDS]   (default 10 s of sampling)
#
# NAME: output name (default: the scenario); SERVER_ARGS: extra gateway flags (e.g. a --config file
# selecting wss_io = "buffered" for a before/after pair).
#
# Output: flamegraphs/<scenario>.svg (inferno) and flamegraphs/<scenario>.folded (collapsed stacks,
# what the percentages in docs/benchmarks.md are computed from), plus the load generator's JSON line
# in flamegraphs/results/flame-<scenario>.json.
#
# Needs: perf (Debian linux-perf; no hardware counters needed, it samples cpu-clock),
#        inferno (cargo install inferno: inferno-collapse-perf, inferno-flamegraph),
#        kernel.perf_event_paranoid <= 2 (or root).
# Bounded: every step runs under `timeout`; the gateway and the load generator are killed on exit.
set -euo pipefail
scenario=${1:?usage: record.sh echo|echo-wss|fanout|fanout-1k|storm-ws|storm-wss [SECONDS]}
secs=${2:-10}
cd "$(dirname "$0")/.."
ROOT=$PWD
PROF_TARGET=${PROF_TARGET:-/work/target-prof}
OUTDIR=$ROOT/flamegraphs
TMP=$(mktemp -d /tmp/wsgate-flame.XXXXXX)
mkdir -p "$OUTDIR/results"

# 1. binaries: the gateway with frame pointers (perf walks the stack with them), the generator normally
#    (SKIP_BUILD=1 uses the binaries already there, e.g. to profile exactly what was benchmarked)
if [ -z "${SKIP_BUILD:-}" ]; then
    timeout 1800 env RUSTFLAGS="-C force-frame-pointers=yes" CARGO_TARGET_DIR="$PROF_TARGET" \
        cargo build --release -p wsgate
    timeout 1800 cargo build --release -p wsgate-load
fi
GW=$PROF_TARGET/release/wsgate
LOAD=${LOAD:-$ROOT/target/release/wsgate-load}

spid='' lpid=''
cleanup() {
    [ -n "$lpid" ] && kill "$lpid" 2>/dev/null || true
    [ -n "$spid" ] && kill "$spid" 2>/dev/null || true
    sleep 0.5
    [ -n "$lpid" ] && kill -9 "$lpid" 2>/dev/null || true
    [ -n "$spid" ] && kill -9 "$spid" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

# 2. the gateway: 1 core, pinned to CPU 0; the generator gets CPU 1
base=$((10000 + (RANDOM % 2000) * 10))
taskset -c 0 "$GW" --ws 127.0.0.1:$base --wss 127.0.0.1:$((base + 1)) --cores 1 ${SERVER_ARGS:-} >"$TMP/gw.log" 2>&1 &
spid=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$base/healthz" && break; sleep 0.1; done

# 3. the load: runs warm-up + sampling + 3 s, sampling starts after the warm-up
case $scenario in
echo)
    warm=2
    args=(echo --url ws://127.0.0.1:$base/echo --connections 100 --payload 512) ;;
echo-wss)
    warm=2
    args=(echo --url wss://127.0.0.1:$((base + 1))/echo --insecure --connections 100 --payload 512) ;;
fanout)
    warm=12   # 10,000 subscribers connect and subscribe first
    args=(fanout --url ws://127.0.0.1:$base/ws --subscribers 10000 --topics 1 --publishers 1 --rate 0
          --payload 128 --procs 2 --source-ips 127.0.0.2-127.0.0.9) ;;
fanout-1k)
    warm=12   # 10,000 subscribers on 1,000 topics (10 each)
    args=(fanout --url ws://127.0.0.1:$base/ws --subscribers 10000 --topics 1000 --publishers 1 --rate 0
          --payload 128 --procs 2 --source-ips 127.0.0.2-127.0.0.9) ;;
storm-ws)
    warm=2
    args=(storm --url ws://127.0.0.1:$base/ws --connections 8 --source-ips 127.0.0.2-127.0.0.9) ;;
storm-wss)
    warm=2
    args=(storm --url wss://127.0.0.1:$((base + 1))/ws --insecure --connections 8
          --source-ips 127.0.0.2-127.0.0.9) ;;
*) echo "unknown scenario $scenario (echo|echo-wss|fanout|fanout-1k|storm-ws|storm-wss)" >&2; exit 2 ;;
esac
taskset -c 1 "$LOAD" "${args[@]}" --duration $((secs + warm + 3)) --server-pid "$spid" --json --quiet \
    >"$TMP/load.out" 2>"$TMP/load.err" &
lpid=$!
sleep "$warm"

# 4. sample the gateway (all its threads) with call stacks
timeout $((secs + 30)) perf record -e cpu-clock -F 997 -g -p "$spid" -o "$TMP/perf.data" -- sleep "$secs" \
    2>"$TMP/perf.err"
for _ in $(seq 600); do kill -0 "$lpid" 2>/dev/null || break; sleep 0.5; done   # at most 5 min
wait "$lpid" || true
lpid=''
name=${NAME:-$scenario}
tail -1 "$TMP/load.out" >"$OUTDIR/results/flame-$name.json" || true

# 5. render
timeout 600 perf script -i "$TMP/perf.data" 2>/dev/null | inferno-collapse-perf --all >"$OUTDIR/$name.folded"
inferno-flamegraph --title "wsgate 1 core: $name (cpu-clock, $secs s)" \
    <"$OUTDIR/$name.folded" >"$OUTDIR/$name.svg"
echo "wrote $OUTDIR/$name.svg ($(wc -l <"$OUTDIR/$name.folded") distinct stacks)"
