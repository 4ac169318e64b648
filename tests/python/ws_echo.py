#!/usr/bin/env python3
"""A real WebSocket peer (the `websockets` package) for Veer's integration tests.

Modes:
  server PORTFILE        echo server on 127.0.0.1:0; writes its port to PORTFILE
                         (atomically: temp file, then rename) and serves until
                         killed (or for at most --lifetime seconds).
  client URL N           sends N unique messages (text and binary, 0..64 KiB),
                         checks every echo; prints `ok N`.
  idle URL SECONDS       one message and its echo, then waits idle; prints
                         `closed after X.Y s` when the peer closes, or
                         `still open` after SECONDS. Exit 0 either way.

Exit status is non-zero, with a message on stderr, on any failure. Every wait
is bounded. Neither side sends keepalive pings (ping_interval=None), so an
idle connection is really idle, and the client ignores HTTP(S)_PROXY.
"""

import argparse
import asyncio
import os
import random
import sys
import time

try:
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed
except ImportError as e:  # pragma: no cover - reported to the test
    sys.exit(f"ws_echo.py: cannot import websockets ({e}); pip install websockets")

MAX_SIZE = 64 * 1024
# Per-step bound: opening, one send, one echo.
STEP_TIMEOUT = 10.0


def fail(message):
    print(f"ws_echo.py: FAIL: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def write_port(path, port):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


async def echo(ws):
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass


async def run_server(portfile, lifetime):
    async with serve(
        echo,
        "127.0.0.1",
        0,
        ping_interval=None,
        max_size=4 * MAX_SIZE,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        write_port(portfile, port)
        print(f"listening on 127.0.0.1:{port}", flush=True)
        await asyncio.sleep(lifetime)


def message(i, rng):
    """Message i: unique (its index is in it), text or binary, 0..64 KiB."""
    # A few fixed sizes at the edges (empty-ish, frame-length boundaries,
    # the maximum), the rest random.
    edges = [0, 1, 125, 126, 127, 65535, 65536 - 32, MAX_SIZE - 32]
    size = edges[i] if i < len(edges) else rng.randrange(0, MAX_SIZE - 32)
    tag = f"#{i:06d}:"
    if i % 2 == 0:
        filler = "".join(rng.choices("abcdefghijklmnopqrstuvwxyzé€ ", k=size // 4))
        return tag + filler
    return tag.encode() + rng.randbytes(size)


async def open_client(url):
    return await asyncio.wait_for(
        connect(
            url,
            ping_interval=None,
            proxy=None,
            max_size=4 * MAX_SIZE,
            open_timeout=STEP_TIMEOUT,
            close_timeout=2,
        ),
        STEP_TIMEOUT,
    )


async def round_trip(ws, i, sent):
    try:
        await asyncio.wait_for(ws.send(sent), STEP_TIMEOUT)
        got = await asyncio.wait_for(ws.recv(), STEP_TIMEOUT)
    except asyncio.TimeoutError:
        fail(f"message {i}: no echo within {STEP_TIMEOUT} s")
    except ConnectionClosed as e:
        fail(f"message {i}: connection closed ({e})")
    if type(got) is not type(sent):
        fail(f"message {i}: sent {type(sent).__name__}, echo is {type(got).__name__}")
    if got != sent:
        fail(f"message {i}: echo differs (sent {len(sent)}, got {len(got)}; "
             f"starts {got[:16]!r} vs {sent[:16]!r})")


async def run_client(url, n):
    rng = random.Random(0x7EE5)
    try:
        ws = await open_client(url)
    except Exception as e:
        fail(f"cannot connect to {url}: {type(e).__name__}: {e}")
    try:
        for i in range(n):
            await round_trip(ws, i, message(i, rng))
    finally:
        try:
            await asyncio.wait_for(ws.close(), 5)
        except Exception:
            pass
    print(f"ok {n}", flush=True)


async def run_idle(url, seconds):
    try:
        ws = await open_client(url)
    except Exception as e:
        fail(f"cannot connect to {url}: {type(e).__name__}: {e}")
    await round_trip(ws, 0, "hello, then silence")
    started = time.monotonic()
    try:
        got = await asyncio.wait_for(ws.recv(), seconds)
        fail(f"unexpected message while idle: {got!r}")
    except asyncio.TimeoutError:
        print("still open", flush=True)
        try:
            await asyncio.wait_for(ws.close(), 5)
        except Exception:
            pass
    except ConnectionClosed:
        print(f"closed after {time.monotonic() - started:.1f} s", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("portfile")
    s.add_argument("--lifetime", type=float, default=600.0,
                   help="exit after this many seconds (a forgotten server ends by itself)")
    c = sub.add_parser("client")
    c.add_argument("url")
    c.add_argument("n", type=int)
    i = sub.add_parser("idle")
    i.add_argument("url")
    i.add_argument("seconds", type=float)
    args = parser.parse_args()
    if args.mode == "server":
        asyncio.run(run_server(args.portfile, args.lifetime))
    elif args.mode == "client":
        asyncio.run(run_client(args.url, args.n))
    else:
        asyncio.run(run_idle(args.url, args.seconds))


if __name__ == "__main__":
    main()
