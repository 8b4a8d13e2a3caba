#!/usr/bin/env bash
# Every row of docs/benchmarks.md, twice per server, servers interleaved (wsgate, tokio-hub, wsgate,
# tokio-hub) so drift on the shared machine hits both alike. Results: flamegraphs/results/results.jsonl
# (one JSON object per run, tagged with label/server/cores/scheme and the exact command).
#
#   flamegraphs/run-all.sh [ROW...]     # no argument: every row
set -u
cd "$(dirname "$0")/.."
B=flamegraphs/bench.sh
SRC=(--source-ips 127.0.0.2-127.0.0.9)
REPS=${REPS:-2}

row() { # row LABEL CORES SCENARIO SCHEME args...
    local label=$1 cores=$2 scen=$3 scheme=$4; shift 4
    for ((r = 0; r < REPS; r++)); do
        for s in wsgate tokio-hub; do
            $B $s "$cores" "$label" "$scen" "$scheme" "$@"
        done
    done
}

ALL=("$@")
sel() { [ ${#ALL[@]} -eq 0 ] && return 0; local x; for x in "${ALL[@]}"; do [ "$x" = "$1" ] && return 0; done; return 1; }

ECHO=(--connections 100 --payload 512 --duration 10)
F10K=(--subscribers 10000 --topics 1 --publishers 1 --payload 128 --duration 10 --procs 2 "${SRC[@]}")
F1K=(--subscribers 10000 --topics 1000 --publishers 1 --payload 128 --duration 10 --procs 2 "${SRC[@]}")
IDLE=(--connections 19000 --ramp 3000 --hold 10 --procs 2 "${SRC[@]}")
STORM=(--connections 8 --duration 10 "${SRC[@]}")

sel echo-ws-1c        && row echo-ws-1c        1 echo   ws  "${ECHO[@]}"
sel echo-wss-1c       && row echo-wss-1c       1 echo   wss "${ECHO[@]}"
sel fanout-10k-100-1c && row fanout-10k-100-1c 1 fanout ws  "${F10K[@]}" --rate 100
sel fanout-10k-max-1c && row fanout-10k-max-1c 1 fanout ws  "${F10K[@]}" --rate 0
sel fanout-1k-max-1c  && row fanout-1k-max-1c  1 fanout ws  "${F1K[@]}" --rate 0
sel fanout-1k-fix-1c  && row fanout-1k-fix-1c  1 fanout ws  "${F1K[@]}" --rate "${F1K_RATE:-2000}"
sel idle-ws-1c        && row idle-ws-1c        1 idle   ws  "${IDLE[@]}"
sel idle-wss-1c       && row idle-wss-1c       1 idle   wss "${IDLE[@]}"
sel storm-ws-1c       && row storm-ws-1c       1 storm  ws  "${STORM[@]}"
sel storm-wss-1c      && row storm-wss-1c      1 storm  wss "${STORM[@]}"
sel echo-ws-2c        && row echo-ws-2c        2 echo   ws  "${ECHO[@]}"
sel echo-wss-2c       && row echo-wss-2c       2 echo   wss "${ECHO[@]}"
sel fanout-10k-max-2c && row fanout-10k-max-2c 2 fanout ws  "${F10K[@]}" --rate 0
exit 0
