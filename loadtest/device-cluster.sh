#!/usr/bin/env bash
# Cluster fan-out scaling on a many-core machine: one node vs two clustered nodes (Redis bus) vs one
# node with both nodes' cores, same load generator, every run bounded. Binaries come from $D
# (wsgate, wsgate-load, redis-server, lib/ for redis-server's shared libraries), results go to
# $OUT/cluster-scaling.jsonl, one JSON line per run (wsgate-load's report + label/cpus).
#
#   D=target/device OUT=/tmp/out loadtest/device-cluster.sh
#
# CPU sets (taskset lists) default to a 16-core machine: node A 0-3, node B 4-7, Redis 15, the
# load generator 8-14. Override with A_CPUS, B_CPUS, AB_CPUS, REDIS_CPU, GEN_CPUS, NODE_CORES.
set -u
D=${D:-target/device}
OUT=${OUT:-/tmp}
A_CPUS=${A_CPUS:-0-3} B_CPUS=${B_CPUS:-4-7} AB_CPUS=${AB_CPUS:-0-7}
REDIS_CPU=${REDIS_CPU:-15} GEN_CPUS=${GEN_CPUS:-8-14} NODE_CORES=${NODE_CORES:-4}
SUBS=${SUBS:-16000} PROCS=${PROCS:-4} DURATION=${DURATION:-8}
RES=$OUT/cluster-scaling.jsonl
tmp=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null; sleep 0.3; kill -9 "${pids[@]}" 2>/dev/null; pids=(); }
trap 'cleanup; rm -rf "$tmp"' EXIT
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "machine: $(nproc) cpus, $(uname -r), nofile $(ulimit -n)"

LD_LIBRARY_PATH=$D/lib taskset -c "$REDIS_CPU" "$D/redis-server" --port 6399 --bind 127.0.0.1 --save '' --appendonly no >"$tmp/redis.log" 2>&1 &
rpid=$!
sleep 0.5
kill -0 $rpid || { echo "redis-server did not start:"; cat "$tmp/redis.log"; exit 1; }

node() { # node NAME CPUS CORES PORT CLUSTER(0|1)
    {
        printf 'cores = %s\npin_cores = false\n[admin]\nlisten = "off"\n' "$3"
        [ "$5" = 1 ] && printf '[cluster]\nredis_url = "redis://127.0.0.1:6399"\nnode_id = "%s"\n' "$1"
    } >"$tmp/$1.toml"
    taskset -c "$2" "$D/wsgate" --config "$tmp/$1.toml" --ws 127.0.0.1:$4 --wss off >"$tmp/$1.log" 2>&1 &
    pids+=($!)
    for ((i = 0; i < 100; i++)); do
        (exec 3<>/dev/tcp/127.0.0.1/$4) 2>/dev/null && return 0
        sleep 0.05
    done
    echo "node $1 did not start"; cat "$tmp/$1.log"; return 1
}

run() { # run LABEL URLS PIDS RATE
    local line
    line=$(timeout 120 taskset -c "$GEN_CPUS" "$D/wsgate-load" fanout --url "$2" --server-pid "$3" \
        --subscribers "$SUBS" --topics 1 --publishers 1 --rate "$4" --payload 128 \
        --duration "$DURATION" --procs "$PROCS" --source-ips 127.0.0.2-127.0.0.9 --json --quiet 2>"$tmp/load.err" | tail -1)
    if [ -z "$line" ]; then echo "$1: no report"; tail -3 "$tmp/load.err"; return; fi
    echo "{\"label\":\"$1\",\"rate\":$4,\"node_cpus\":\"$5\",\"report\":$line}" >>"$RES"
    echo "$1 rate=$4: $(echo "$line" | grep -o '"deliveries_per_s":[0-9.]*'), $(echo "$line" | grep -o '"lost":[0-9]*'), $(echo "$line" | grep -o '"server_cpu_us_per_op":[0-9.]*'), $(echo "$line" | grep -o '"p99":[0-9]*' | head -1)"
}

for rate in 0 50; do
    node one "$A_CPUS" "$NODE_CORES" 7001 0 || exit 1
    run "1 node x $NODE_CORES cores, no cluster" ws://127.0.0.1:7001/ws "${pids[-1]}" $rate "$A_CPUS"
    cleanup
    node one8 "$AB_CPUS" $((NODE_CORES * 2)) 7002 0 || exit 1
    run "1 node x $((NODE_CORES * 2)) cores, no cluster" ws://127.0.0.1:7002/ws "${pids[-1]}" $rate "$AB_CPUS"
    cleanup
    node a "$A_CPUS" "$NODE_CORES" 7003 1 || exit 1
    node b "$B_CPUS" "$NODE_CORES" 7004 1 || exit 1
    run "2 nodes x $NODE_CORES cores, Redis bus" ws://127.0.0.1:7003/ws,ws://127.0.0.1:7004/ws "${pids[-2]},${pids[-1]}" $rate "$A_CPUS+$B_CPUS"
    cleanup
done
kill $rpid
