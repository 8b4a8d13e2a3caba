#!/usr/bin/env python3
"""Protocol v1 smoke test for tokio-hub (or any server speaking protocol v1).

Usage: smoke.py [--ws ws://127.0.0.1:9080] [--wss wss://127.0.0.1:9443]   (needs `pip install websockets`)
"""
import argparse
import asyncio
import json
import ssl
import urllib.request

import websockets


async def recv_json(ws, timeout=3):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def check_echo(url, ssl_ctx):
    async with websockets.connect(url + "/echo", ssl=ssl_ctx) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01\x02")
        got = await ws.recv()
        assert got == b"\x00\x01\x02" and isinstance(got, bytes), got
        big = "x" * 200_000
        await ws.send(big)
        assert await ws.recv() == big
    print(f"echo ok ({url})")


async def check_pubsub(url, ssl_ctx):
    async with websockets.connect(url + "/ws?topics=pre,b%2Cc", ssl=ssl_ctx) as a, \
            websockets.connect(url + "/ws", ssl=ssl_ctx) as b:
        # subscribe with id -> ack
        await b.send(json.dumps({"type": "subscribe", "topic": "t1", "id": 1}))
        assert await recv_json(b) == {"type": "ack", "id": 1}
        # publish raw data (odd spacing must be preserved byte-for-byte)
        raw = '{"type":"publish","topic":"t1","data":{"k": [1,  2.50, "é"]},"id":"p1"}'
        await a.send(raw)
        assert await recv_json(a) == {"type": "ack", "id": "p1"}
        msg = await asyncio.wait_for(b.recv(), 3)
        assert msg == '{"type":"message","topic":"t1","data":{"k": [1,  2.50, "é"]}}', msg
        # ?topics= subscription (with a percent-encoded comma); publisher receives its own message
        await b.send('{"type":"publish","topic":"pre","data":1}')
        await b.send('{"type":"publish","topic":"b,c","data":"x","id":9}')
        assert await recv_json(b) == {"type": "ack", "id": 9}
        assert await recv_json(a) == {"type": "message", "topic": "pre", "data": 1}
        assert await recv_json(a) == {"type": "message", "topic": "b,c", "data": "x"}
        await a.send('{"type":"subscribe","topic":"self","id":2}')
        assert await recv_json(a) == {"type": "ack", "id": 2}
        await a.send('{"type":"publish","topic":"self","data":null,"id":3}')
        got = [await recv_json(a), await recv_json(a)]
        assert {"type": "message", "topic": "self", "data": None} in got, got
        assert {"type": "ack", "id": 3} in got, got
        # unsubscribe -> no more delivery
        await b.send('{"type":"unsubscribe","topic":"t1","id":4}')
        assert await recv_json(b) == {"type": "ack", "id": 4}
        await a.send('{"type":"publish","topic":"t1","data":0,"id":5}')
        assert await recv_json(a) == {"type": "ack", "id": 5}
        await b.send('{"type":"subscribe","topic":"z","id":6}')
        assert await recv_json(b) == {"type": "ack", "id": 6}  # nothing from t1 before it
        # errors keep the connection open
        for bad, code in [("{nope", "invalid_json"), ("[1]", "bad_request"),
                          ('{"type":"dance","id":7}', "unknown_type"),
                          ('{"type":"publish","topic":"t","id":8}', "bad_request"),
                          ('{"type":"subscribe","topic":"","id":10}', "invalid_topic")]:
            await b.send(bad)
            e = await recv_json(b)
            assert e["type"] == "error" and e["code"] == code, (bad, e)
        await b.send(b"binary")
        e = await recv_json(b)
        assert e["type"] == "error", e
        await b.send('{"type":"subscribe","topic":"ok","id":11}')
        assert await recv_json(b) == {"type": "ack", "id": 11}
    print(f"pubsub ok ({url})")


def check_health(url):
    http = url.replace("ws://", "http://").replace("wss://", "https://")
    ctx = ssl._create_unverified_context() if http.startswith("https") else None
    with urllib.request.urlopen(http + "/healthz", context=ctx, timeout=3) as r:
        assert r.status == 200 and r.read() == b"ok"
    try:
        urllib.request.urlopen(http + "/nope", context=ctx, timeout=3)
        raise AssertionError("expected 404")
    except urllib.error.HTTPError as e:
        assert e.code in (400, 404, 426), e.code
    print(f"healthz ok ({http})")


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ws", default="ws://127.0.0.1:9080")
    p.add_argument("--wss", default="wss://127.0.0.1:9443")
    a = p.parse_args()
    insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    for url, ctx in [(a.ws, None), (a.wss, insecure)]:
        if url == "off":
            continue
        check_health(url)
        await check_echo(url, ctx)
        await check_pubsub(url, ctx)
    print("all ok")


if __name__ == "__main__":
    asyncio.run(main())
