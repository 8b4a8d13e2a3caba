#!/usr/bin/env bash
# Fan-out across cluster nodes vs one node: starts a redis-server and NODES wsgate processes (one
# core each, clustered through that Redis; NODES=0 means one node with clustering off), runs one
# `wsgate-load fanout` spreading its connections round-robin over the nodes, and appends one JSON
# line to flamegraphs/results/cluster.jsonl: the load generator's report (its server_cpu_* figures
# sum every node over the measured window, `--server-pid A,B`) plus the CPU seconds of all nodes and
# of redis-server over the whole run, setup included (read from /proc/PID/stat). Every server-side
# process (nodes, Redis) is pinned to CPU 0 and the load generator to CPU 1, so each configuration
# gets the same single CPU for all of its server work.
#
#   flamegraphs/cluster-bench.sh NODES LABEL [wsgate-load fanout args...]
#
# Binaries: target/release/{wsgate,wsgate-load} (cargo build --release -p wsgate -p wsgate-load);
# redis-server from Debian's package.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release}
OUT=${OUT:-$PWD/flamegraphs/results/cluster.jsonl}
nodes=$1 label=$2
shift 2
mkdir -p "$(dirname "$OUT")"
tmp=$(mktemp -d)
base=$(( 20000 + (RANDOM % 1000) * 10 ))
rport=$base
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null; sleep 0.5; kill -9 "${pids[@]}" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

ticks() { awk '{ s = $0; sub(/.*\) /, "", s); split(s, f, " "); print f[12] + f[13] }' "/proc/$1/stat"; }

taskset -c 0 redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >"$tmp/redis.log" 2>&1 &
rpid=$!; pids+=("$rpid")
count=$(( nodes == 0 ? 1 : nodes ))
urls=()
npids=()
for ((n = 1; n <= count; n++)); do
    port=$((base + n))
    if [ "$nodes" = 0 ]; then
        printf '[admin]\nlisten = "off"\n' >"$tmp/n$n.toml"
    else
        printf '[admin]\nlisten = "off"\n[cluster]\nredis_url = "redis://127.0.0.1:%s"\nnode_id = "n%s"\n' "$rport" "$n" >"$tmp/n$n.toml"
    fi
    taskset -c 0 "$BIN/wsgate" --config "$tmp/n$n.toml" --ws 127.0.0.1:$port --wss off --cores 1 >"$tmp/n$n.log" 2>&1 &
    npids+=($!); pids+=($!)
    urls+=("ws://127.0.0.1:$port/ws")
done
for u in "${urls[@]}"; do
    hp=${u#ws://}; hp=${hp%/ws}
    for ((i = 0; i < 100; i++)); do curl -s -o /dev/null "http://$hp/healthz" && break; sleep 0.1; done
done
sleep 0.5
before=(); for p in "${npids[@]}" "$rpid"; do before+=("$(ticks "$p")"); done
joined=$(IFS=,; echo "${urls[*]}")
spids=$(IFS=,; echo "${npids[*]}")
cmd=(taskset -c 1 "$BIN/wsgate-load" fanout --url "$joined" --server-pid "$spids" --json --quiet "$@")
echo "+ ${cmd[*]}" >&2
line=$(timeout 300 "${cmd[@]}" 2>"$tmp/load.err" | tail -1)
after=(); for p in "${npids[@]}" "$rpid"; do after+=("$(ticks "$p")"); done
hz=$(getconf CLK_TCK)
node_cpu=0
for ((i = 0; i < ${#npids[@]}; i++)); do node_cpu=$(( node_cpu + ${after[$i]} - ${before[$i]} )); done
ri=${#npids[@]}
redis_cpu=$(( ${after[$ri]} - ${before[$ri]} ))
if ! jq -e . >/dev/null 2>&1 <<<"$line"; then
    echo "no JSON from wsgate-load; stderr:" >&2; tail -5 "$tmp/load.err" >&2; line='{}'
fi
jq -c --arg lbl "$label" --argjson nodes "$nodes" --arg commit "$(git rev-parse --short HEAD)" \
   --arg date "$(date -u +%FT%TZ)" --arg load1 "$(cut -d' ' -f1 /proc/loadavg)" \
   --argjson node_cpu_s "$(awk -v t="$node_cpu" -v h="$hz" 'BEGIN { printf "%.3f", t / h }')" \
   --argjson redis_cpu_s "$(awk -v t="$redis_cpu" -v h="$hz" 'BEGIN { printf "%.3f", t / h }')" \
   '. + {"label": $lbl, "nodes": $nodes, "commit": $commit, "date": $date, "load1": $load1,
         "nodes_cpu_s": $node_cpu_s, "redis_cpu_s": $redis_cpu_s}' <<<"$line" | tee -a "$OUT"
