#!/usr/bin/env python3
"""Median of every (row, server) in flamegraphs/results/results.jsonl, and wsgate/tokio-hub ratios.

    python3 flamegraphs/summarize.py [results.jsonl]

Runs during which a build was running (noisy_build_running or noisy_build_after) are left out when at
least 2 quiet runs of that (row, server) exist. The median of 2 runs is their mean; --runs lists every
run used."""
import json
import statistics
import sys
from collections import defaultdict

path = next((a for a in sys.argv[1:] if not a.startswith("--")), "flamegraphs/results/results.jsonl")
show_runs = "--runs" in sys.argv
rows = defaultdict(list)
order = []
for line in open(path):
    r = json.loads(line)
    key = (r["label"], r["server"])
    if r["label"] not in order:
        order.append(r["label"])
    rows[key].append(r)


def g(r, *path):
    for p in path:
        if r is None:
            return None
        r = r.get(p)
    return r


FIELDS = [
    ("ops/s", ("ops_per_s",)),
    ("p50", ("latency_us", "p50")),
    ("p99", ("latency_us", "p99")),
    ("p99.9", ("latency_us", "p999")),
    ("hs p99", ("handshake_latency_us", "p99")),
    ("srv us/op", ("server_cpu_us_per_op",)),
    ("srv cpu%", ("server_cpu_pct",)),
    ("cli cpu%", ("client_cpu_pct",)),
    ("KiB/conn", ("server_rss_kib_per_conn",)),
    ("connected", ("connected",)),
    ("lost", ("lost",)),
    ("dup", ("duplicated",)),
    ("reord", ("reordered",)),
    ("errors", ("errors",)),
    ("pub/s", ("publishes_per_s",)),
]


def med(runs, path):
    vals = [g(r, *path) for r in runs]
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return statistics.median(vals)


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float) and v != int(v):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return f"{int(v):,}"


for label in order:
    print(f"\n## {label}")
    runs = {}
    used_noisy = False
    for s in ("wsgate", "tokio-hub"):
        allr = rows.get((label, s), [])
        quiet = [r for r in allr if not r.get("noisy_build_running") and not r.get("noisy_build_after")]
        if len(quiet) >= 2:
            runs[s] = quiet
        else:
            runs[s] = allr
            used_noisy = used_noisy or len(quiet) < len(allr)
    print("| figure | wsgate | tokio-hub | ratio |")
    print("|---|---|---|---|")
    for name, path in FIELDS:
        a, b = med(runs["wsgate"], path), med(runs["tokio-hub"], path)
        if a is None and b is None:
            continue
        ratio = f"{a / b:.2f}" if a is not None and b not in (None, 0) else "-"
        print(f"| {name} | {fmt(a)} | {fmt(b)} | {ratio} |")
    print(f"runs used: wsgate {len(runs['wsgate'])}, tokio-hub {len(runs['tokio-hub'])} "
          f"(quiet runs only when >= 2 exist; noisy runs used: {used_noisy}); "
          f"ok: {[r.get('ok') for s in runs for r in runs[s]]}")
    if show_runs:
        for s in runs:
            for r in runs[s]:
                print(f"  {s}: ops/s {r.get('ops_per_s')} p99 {g(r, 'latency_us', 'p99')} "
                      f"srv_us/op {r.get('server_cpu_us_per_op')} srv% {r.get('server_cpu_pct')} "
                      f"cli% {r.get('client_cpu_pct')} KiB/conn {r.get('server_rss_kib_per_conn')} "
                      f"lost {r.get('lost')} err {r.get('errors')} {r.get('error_messages')} "
                      f"load1 {r.get('load1')} busy '{r.get('busy_before')}'")
