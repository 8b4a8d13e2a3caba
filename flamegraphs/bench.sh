#!/usr/bin/env bash
# One side-by-side measurement: start a fresh server, run one wsgate-load scenario against it with
# --server-pid and --json, append the JSON line (tagged) to flamegraphs/results/results.jsonl, stop
# the server. Used for every row of docs/benchmarks.md.
#
#   flamegraphs/bench.sh SERVER CORES LABEL SCENARIO SCHEME [wsgate-load args...]
#     SERVER  wsgate | tokio-hub
#     CORES   1: server pinned to CPU 0 (taskset -c 0, wsgate --cores 1 / tokio-hub --threads 1),
#                load generator pinned to CPU 1 (taskset -c 1)
#             2: wsgate --cores 2 / tokio-hub --threads 2, nothing pinned (generator shares the CPUs)
#     LABEL   free text stored with the result (row name)
#     SCENARIO echo | fanout | idle | storm
#     SCHEME  ws | wss
#
# Binaries: target/release/{wsgate,tokio-hub,wsgate-load} from
#   cargo build --release -p wsgate -p wsgate-load -p tokio-hub
# SERVER_ARGS: extra flags for wsgate (e.g. "--driver epoll"); stored in the result as server_args.
# Before each run it waits (up to QUIET_WAIT s, default 300) until no rustc/cargo process is running
# and records the 1-minute load average and whether a build was running ("noisy") in the result.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
# BIN: where the three binaries are. The runs in docs/benchmarks.md used a frozen copy of target/release
# (/tmp/wsgate-bench-bin, copied right after the build) so that other builds in the shared target/
# could not swap a binary between rows.
BIN=${BIN:-$ROOT/target/release}
[ -z "${BIN_SET:-}" ] && [ -x /tmp/wsgate-bench-bin/wsgate ] && BIN=/tmp/wsgate-bench-bin
OUT=${OUT:-$ROOT/flamegraphs/results/results.jsonl}
QUIET_WAIT=${QUIET_WAIT:-300}
mkdir -p "$(dirname "$OUT")"

server=$1 cores=$2 label=$3 scenario=$4 scheme=$5
shift 5

# fresh ports per run (TIME_WAIT from the previous run cannot collide)
base=$(( 10000 + (RANDOM % 2000) * 10 ))
wsport=$base wssport=$((base + 1))

# wait for a quiet machine
noisy=false
for ((i = 0; i < QUIET_WAIT; i++)); do
    if ! pgrep -x rustc >/dev/null && ! pgrep -x cargo >/dev/null && ! pgrep -x cargo-fuzz >/dev/null; then break; fi
    sleep 1
done
if pgrep -x rustc >/dev/null || pgrep -x cargo >/dev/null || pgrep -x cargo-fuzz >/dev/null; then noisy=true; fi
load1=$(cut -d' ' -f1 /proc/loadavg)
# the busiest processes right before the run (instantaneous, second top sample)
busy=$(top -bn2 -d0.3 | awk '/^top -/{n++} n==2 && $1 ~ /^[0-9]+$/ && $9+0 >= 10 {printf "%s:%s%% ", $12, $9}')

if [ "$cores" = 1 ]; then srv_pin=(taskset -c 0); gen_pin=(taskset -c 1); else srv_pin=(); gen_pin=(); fi

case $server in
wsgate) "${srv_pin[@]}" "$BIN/wsgate" --ws 127.0.0.1:$wsport --wss 127.0.0.1:$wssport --cores "$cores" ${SERVER_ARGS:-} \
            >/tmp/bench-server.log 2>&1 &
        ;;
tokio-hub) "${srv_pin[@]}" "$BIN/tokio-hub" --ws 127.0.0.1:$wsport --wss 127.0.0.1:$wssport --threads "$cores" \
            >/tmp/bench-server.log 2>&1 &
        ;;
*) echo "unknown server $server" >&2; exit 2 ;;
esac
spid=$!
trap 'kill $spid 2>/dev/null; sleep 0.5; kill -9 $spid 2>/dev/null' EXIT
for ((i = 0; i < 100; i++)); do
    curl -s -o /dev/null "http://127.0.0.1:$wsport/healthz" && break
    sleep 0.1
done

case $scheme in
ws) url=ws://127.0.0.1:$wsport ;;
wss) url=wss://127.0.0.1:$wssport; set -- "$@" --insecure ;;
esac
[ "$scenario" = echo ] && url=$url/echo || url=$url/ws

cmd=("${gen_pin[@]}" "$BIN/wsgate-load" "$scenario" --url "$url" --server-pid "$spid" --json --quiet "$@")
echo "+ ${cmd[*]}" >&2
line=$(timeout 300 "${cmd[@]}" 2>/tmp/bench-load.err | tail -1)
rc=$?
if ! jq -e . >/dev/null 2>&1 <<<"$line"; then
    line='{}'
    echo "no JSON from wsgate-load; stderr:" >&2; tail -5 /tmp/bench-load.err >&2
fi
alive=true; kill -0 $spid 2>/dev/null || alive=false
noisy_after=false
if pgrep -x rustc >/dev/null || pgrep -x cargo >/dev/null || pgrep -x cargo-fuzz >/dev/null; then noisy_after=true; fi
jq -c --arg server "$server" --argjson cores "$cores" --arg lbl "$label" --arg scheme "$scheme" \
    --argjson noisy "$noisy" --argjson noisy_after "$noisy_after" --arg load1 "$load1" --arg busy "$busy" --argjson server_alive "$alive" \
    --arg cmd "${cmd[*]}" --arg sargs "${SERVER_ARGS:-}" --arg date "$(date -u +%FT%TZ)" \
    '{"label":$lbl, server:$server, cores:$cores, server_args:$sargs, scheme:$scheme, date:$date, load1:($load1|tonumber),
      noisy_build_running:$noisy, noisy_build_after:$noisy_after, busy_before:$busy, server_alive_after:$server_alive, cmd:$cmd} + .' <<<"$line" | tee -a "$OUT" |
    jq -c '{"label":.["label"],server,cores,scheme,ok,ops_per_s,lat:.latency_us,hs:.handshake_latency_us,scpu:.server_cpu_us_per_op,
            spct:.server_cpu_pct,cpct:.client_cpu_pct,lost,errors,connected,kib:.server_rss_kib_per_conn,noisy:.noisy_build_running,noisy_after:.noisy_build_after,load1,busy:.busy_before}'
