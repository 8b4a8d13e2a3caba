#!/usr/bin/env bash
# The headline rows (docs/benchmarks.md) for wsgate and the tokio-hub baseline on a many-core machine:
# the server pinned to one CPU (SERVER_CPU, default 0), the load generator's processes to GEN_CPUS
# (default 1-12), so the generator never shares the server's CPU. Binaries from $D (wsgate,
# wsgate-load, tokio-hub); one JSON line per run appended to $OUT/headline.jsonl.
#
#   D=target/device/release OUT=/tmp/out loadtest/device-headline.sh
set -u
D=${D:-target/release}
OUT=${OUT:-/tmp}
SERVER_CPU=${SERVER_CPU:-0} GEN_CPUS=${GEN_CPUS:-1-12} PROCS=${PROCS:-4} SECS=${SECS:-6}
IDLE=${IDLE:-19000} SUBS=${SUBS:-10000}
# SERVERS: which servers to run; ROWS: a regex of the row names to run (default: all).
SERVERS=${SERVERS:-"wsgate tokio-hub"} ROWS=${ROWS:-.}
RES=$OUT/headline.jsonl
SRC="--source-ips 127.0.0.2-127.0.0.9"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "machine: $(nproc) cpus, $(uname -r), nofile $(ulimit -n)"
port=7100
run() { # run SERVER ROW SCENARIO SCHEME ARGS...
    local server=$1 row=$2 scenario=$3 scheme=$4 spid url line
    shift 4
    [[ $row =~ $ROWS ]] || return 0
    port=$((port + 2))
    case $server in
    wsgate) taskset -c "$SERVER_CPU" "$D/wsgate" --ws 127.0.0.1:$port --wss 127.0.0.1:$((port + 1)) --cores 1 --admin off >/dev/null 2>&1 & ;;
    tokio-hub) taskset -c "$SERVER_CPU" "$D/tokio-hub" --ws 127.0.0.1:$port --wss 127.0.0.1:$((port + 1)) --threads 1 >/dev/null 2>&1 & ;;
    esac
    spid=$!
    for ((i = 0; i < 100; i++)); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
    if [ "$scheme" = wss ]; then url=wss://127.0.0.1:$((port + 1)); set -- "$@" --insecure; else url=ws://127.0.0.1:$port; fi
    [ "$scenario" = echo ] && url=$url/echo || url=$url/ws
    line=$(timeout 90 taskset -c "$GEN_CPUS" "$D/wsgate-load" "$scenario" --url "$url" --server-pid $spid --json --quiet "$@" 2>/dev/null | tail -1)
    kill $spid 2>/dev/null; sleep 0.3; kill -9 $spid 2>/dev/null
    [ -z "$line" ] && line='{}'
    echo "{\"server\":\"$server\",\"row\":\"$row\",\"report\":$line}" >>"$RES"
    echo "$server $row: $(echo "$line" | grep -o '"ops_per_s":[0-9.]*'), $(echo "$line" | grep -o '"server_cpu_us_per_op":[0-9.]*'), $(echo "$line" | grep -o '"server_rss_kib[a-z_]*":[0-9]*' | tr '\n' ' ')"
}
for server in $SERVERS; do
    run $server echo-ws echo ws --connections 100 --payload 512 --duration "$SECS" --procs "$PROCS"
    run $server echo-wss echo wss --connections 100 --payload 512 --duration "$SECS" --procs "$PROCS"
    run $server fanout-10k-max fanout ws --subscribers "$SUBS" --topics 1 --publishers 1 --payload 128 --duration "$SECS" --procs "$PROCS" $SRC --rate 0
    run $server fanout-1k-max fanout ws --subscribers "$SUBS" --topics 1000 --publishers 1 --payload 128 --duration "$SECS" --procs "$PROCS" $SRC --rate 0
    run $server storm-ws storm ws --connections 8 --duration "$SECS" $SRC
    run $server storm-wss storm wss --connections 8 --duration "$SECS" $SRC
    run $server idle-ws idle ws --connections "$IDLE" --ramp 5000 --hold 4 --procs "$PROCS" $SRC
    run $server idle-wss idle wss --connections "$IDLE" --ramp 5000 --hold 4 --procs "$PROCS" $SRC
done
