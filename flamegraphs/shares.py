#!/usr/bin/env python3
"""Where the samples of a collapsed (folded) perf profile go: the share of samples whose stack contains
a frame matching each pattern (inclusive: a stack counts in every row it matches), then self time
bucketed by the leaf frame (exclusive), then the top leaf frames.

    python3 flamegraphs/shares.py flamegraphs/echo.folded [more.folded ...]
"""
import re
import sys

CATS = [
    ("all syscalls (entry_SYSCALL / do_syscall)", r"entry_SYSCALL|do_syscall_64"),
    ("io_uring (io_uring_enter / io_submit_sqes / io_uring task work)", r"io_uring|io_submit_sqes|io_issue_sqe|tctx_task_work"),
    ("epoll (epoll_wait, ep_poll_callback wake-ups; monoio poll-io sits on an epoll fd)", r"epoll|ep_poll"),
    ("socket write path (tcp_sendmsg / sock_write / writev)", r"tcp_sendmsg|sock_write_iter|do_writev|vfs_writev|__sys_sendmsg|sock_sendmsg"),
    ("socket read path (tcp_recvmsg / sock_read / recv)", r"tcp_recvmsg|sock_read_iter|__sys_recvfrom|sock_recvmsg|io_recv"),
    ("loopback delivery (softirq: net_rx_action / tcp_v4_rcv)", r"net_rx_action|__netif_receive_skb|tcp_v4_rcv|do_softirq"),
    ("TCP accept/connect/close (inet_csk_accept / tcp_close / tcp_v4_syn / inet_accept)", r"inet_csk_accept|tcp_close|tcp_v4_conn_request|tcp_v4_syn_recv_sock|inet_accept|__sys_accept|io_accept|tcp_fin|tcp_rcv_state_process"),
    ("TLS (rustls)", r"rustls"),
    ("crypto (ring)", r"(^|;|<)ring::|ring_core_"),
    ("HTTP (hyper)", r"hyper::"),
    ("JSON (serde_json)", r"serde_json"),
    ("WebSocket upgrade/frames (fastwebsockets, wsgate transport codec/frames)", r"fastwebsockets|wsgate::transport::codec|wsgate::transport::frames"),
    ("unmask", r"unmask"),
    ("wsgate pubsub (topic table / deliver / outbox)", r"wsgate::pubsub|wsgate::transport::outbox|Outbox"),
    ("wsgate session (echo / pubsub handlers)", r"wsgate::session"),
    ("cross-core bus", r"wsgate::bus"),
    ("monoio runtime (scheduler, driver)", r"monoio::"),
    ("poll-io adapter (monoio into_poll_io / tokio compat)", r"poll_io|PollIo|poll::Poll"),
    ("allocator (mimalloc mi_* / _mi_)", r"\bmi_|_mi_|mimalloc"),
    ("memcpy/memmove (user + kernel copy)", r"memcpy|memmove|copy_user|copy_to_user|copy_from_user|_copy_to_iter|_copy_from_iter"),
    ("wake-ups (futex / try_to_wake_up / eventfd)", r"futex|try_to_wake_up|eventfd|wake_up"),
    ("scheduler / idle switch (schedule / finish_task_switch)", r"\bschedule\b|__schedule|finish_task_switch"),
    ("tracing/logging", r"tracing::|tracing_subscriber"),
]


def load(path):
    stacks = []
    for line in open(path):
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, n = line.rpartition(" ")
        stacks.append((stack, int(n)))
    return stacks


for path in sys.argv[1:]:
    stacks = load(path)
    total = sum(n for _, n in stacks)
    kernel = sum(n for s, n in stacks if s.split(";")[-1].endswith("_[k]"))
    print(f"\n### {path}: {total} samples; leaf frame in the kernel: {100.0 * kernel / total:.1f}%")
    print("| where (stack contains) | share of samples |")
    print("|---|---|")
    for name, pat in CATS:
        rx = re.compile(pat)
        n = sum(c for s, c in stacks if rx.search(s))
        if n:
            print(f"| {name} | {100.0 * n / total:.1f}% |")
    # self time (leaf frame), exclusive buckets: first match wins
    SELF = [
        ("kernel: TCP/IP + loopback softirq", r"tcp_|__tcp|inet_|ip_|__ip|__dev_queue|net_rx|__netif|skb|sock_|__sk|sk_|loopback|_raw_spin|__inet"),
        ("kernel: copies (_copy_from_iter/_copy_to_iter)", r"_copy_from_iter|_copy_to_iter|copy_user|clear_page"),
        ("kernel: io_uring/epoll/syscall entry/fd lookup", r"io_uring|io_|ep_|epoll|do_syscall|entry_SYSCALL|syscall_|fdget|vfs_|__fget|fput|__x64_sys"),
        ("kernel: other", r"_\[k\]$"),
        ("rustls", r"rustls"),
        ("ring (crypto)", r"^ring::|ring_core_"),
        ("hyper / http", r"hyper|httparse|http::"),
        ("serde_json", r"serde_json"),
        ("bytes refcounts (Bytes clone/drop)", r"^bytes::"),
        ("wsgate outbox / topic table / transport", r"wsgate::"),
        ("allocator (mimalloc)", r"mi_|_mi_"),
        ("memcpy/memmove/memset (libc)", r"memmove|memcpy|memset"),
        ("monoio runtime", r"monoio"),
        ("tokio (poll-io compat, tokio-rustls glue)", r"tokio"),
    ]
    buckets = {name: 0 for name, _ in SELF}
    other = 0
    for st, n in stacks:
        f = st.split(";")[-1]
        for name, pat in SELF:
            if re.search(pat, f):
                buckets[name] += n
                break
        else:
            other += n
    print("\nself time by leaf frame (exclusive):")
    print("| leaf frame | share of samples |")
    print("|---|---|")
    for name, _ in SELF:
        if buckets[name]:
            print(f"| {name} | {100.0 * buckets[name] / total:.1f}% |")
    print(f"| other user-space | {100.0 * other / total:.1f}% |")
    # top leaf functions (self time)
    leaf = {}
    for s, n in stacks:
        f = s.split(";")[-1]
        leaf[f] = leaf.get(f, 0) + n
    print("\ntop self-time frames:")
    for f, n in sorted(leaf.items(), key=lambda x: -x[1])[:15]:
        print(f"  {100.0 * n / total:5.1f}%  {f[:110]}")
