#!/usr/bin/env bash
# Does memory come back after a mass disconnect? Server RSS before any connection, at the peak while
# N idle connections are held, and 10 s after they all closed (1 core, pinned like bench.sh).
#
#   flamegraphs/mass-disconnect.sh SCHEME [N]        SCHEME ws|wss, N default 19000
#
# BIN: directory with wsgate and wsgate-load (default target/release); SERVER_ARGS: extra gateway
# flags; AFTER: seconds to wait after the disconnect (default 10). Prints one JSON line.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release}
scheme=${1:?usage: mass-disconnect.sh ws|wss [N]}
n=${2:-19000}
after=${AFTER:-10}
base=$((10000 + (RANDOM % 2000) * 10))
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

taskset -c 0 "$BIN/wsgate" --ws 127.0.0.1:$base --wss 127.0.0.1:$((base + 1)) --cores 1 ${SERVER_ARGS:-} \
    >/tmp/mass-disconnect-server.log 2>&1 &
spid=$!
trap 'kill $spid 2>/dev/null; sleep 0.5; kill -9 $spid 2>/dev/null' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$base/healthz" && break; sleep 0.1; done
sleep 1
before=$(rss $spid)
case $scheme in
ws) url=ws://127.0.0.1:$base/ws; extra=() ;;
wss) url=wss://127.0.0.1:$((base + 1))/ws; extra=(--insecure) ;;
esac
taskset -c 1 "$BIN/wsgate-load" idle --url "$url" "${extra[@]}" --connections "$n" --ramp 3000 --hold 10 \
    --procs 2 --source-ips 127.0.0.2-127.0.0.9 --server-pid $spid --json --quiet >/tmp/mass-disconnect-load.out 2>&1 &
lpid=$!
peak=$before
while kill -0 $lpid 2>/dev/null; do
    r=$(rss $spid); [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.5
done
closed_at=$(date +%s.%N)
sleep "$after"
final=$(rss $spid)
kib=$(tail -1 /tmp/mass-disconnect-load.out | jq -r '.server_rss_kib_per_conn // "null"' 2>/dev/null)
printf '{"scheme":"%s","connections":%s,"server_args":"%s","rss_before_kib":%s,"rss_peak_kib":%s,"rss_after_%ss_kib":%s,"kib_per_conn":%s,"load1":%s,"date":"%s"}\n' \
    "$scheme" "$n" "${SERVER_ARGS:-}" "$before" "$peak" "$after" "$final" "${kib:-null}" \
    "$(cut -d' ' -f1 /proc/loadavg)" "$(date -u +%FT%TZ)"
