#!/usr/bin/env python3
"""A real gRPC peer (the `grpcio` package) for Veer's integration tests.

No generated code: the service `veer.test.Echo` is served with grpc's generic
handlers, messages are raw bytes (identity serializers).

  Unary  echoes the request; trailing metadata `x-served-by: <server id>`.
  Fail   aborts with NOT_FOUND, details "no such thing", trailing metadata
         `x-why: because` (all of it in HTTP/2 trailers).
  Chat   bidirectional stream: each message comes back prefixed `echo:` as
         soon as it arrives.
  Slow   answers after 5 s (for client deadlines).

Modes:
  server PORTFILE [--id ID]   insecure (h2c) server on 127.0.0.1:0; writes its
                              port to PORTFILE (temp file, then rename) and
                              serves until killed (or --lifetime seconds).
  client TARGET [--served-by ID]
                              TARGET like 127.0.0.1:PORT, plaintext h2c. Runs
                              the checks, one line each: `unary ok 200`,
                              `fail ok`, `chat ok 1000`, `deadline ok`.

Exit status is non-zero, with a message on stderr, on any mismatch. Every
call has a deadline. The client ignores http_proxy/https_proxy.
"""

import argparse
import os
import queue
import random
import sys
import threading
import time
from concurrent import futures

try:
    import grpc
except ImportError as e:  # pragma: no cover - reported to the test
    sys.exit(f"grpc_peer.py: cannot import grpc ({e}); pip install grpcio")

SERVICE = "veer.test.Echo"
UNARY_CALLS = 200
CHAT_MESSAGES = 1000
SLOW_SECONDS = 5.0
CALL_TIMEOUT = 10.0
CHAT_TIMEOUT = 60.0
DEADLINE = 0.5


def identity(b):
    return b


def fail(message):
    print(f"grpc_peer.py: FAIL: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def write_port(path, port):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- server ---------------------------------------------------------------


def make_handler(server_id):
    def unary(request, context):
        context.set_trailing_metadata((("x-served-by", server_id),))
        return request

    def fail_call(request, context):
        context.set_trailing_metadata((("x-why", "because"),))
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    def chat(request_iterator, context):
        for message in request_iterator:
            yield b"echo:" + message

    def slow(request, context):
        # Stops early when the client gives up (deadline, cancel).
        deadline = time.monotonic() + SLOW_SECONDS
        while time.monotonic() < deadline:
            if not context.is_active():
                return b""
            time.sleep(0.05)
        return b"slow:" + request

    def rpc(kind, f):
        return kind(f, request_deserializer=identity, response_serializer=identity)

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": rpc(grpc.unary_unary_rpc_method_handler, unary),
            "Fail": rpc(grpc.unary_unary_rpc_method_handler, fail_call),
            "Chat": rpc(grpc.stream_stream_rpc_method_handler, chat),
            "Slow": rpc(grpc.unary_unary_rpc_method_handler, slow),
        },
    )


def run_server(portfile, server_id, lifetime):
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16), handlers=(make_handler(server_id),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    if not port:
        fail("could not bind 127.0.0.1:0")
    server.start()
    write_port(portfile, port)
    print(f"listening on 127.0.0.1:{port} as {server_id}", flush=True)
    server.wait_for_termination(timeout=lifetime)
    server.stop(grace=0)


# --- client ---------------------------------------------------------------


def method(channel, kind, name):
    return getattr(channel, kind)(
        f"/{SERVICE}/{name}", request_serializer=identity, response_deserializer=identity
    )


def describe(e):
    return f"{e.code()} {e.details()!r}"


def check_unary(channel, served_by):
    unary = method(channel, "unary_unary", "Unary")
    rng = random.Random(0x6B9C)
    for i in range(UNARY_CALLS):
        # Unique, sizes 0..64 KiB (a few edge sizes first).
        edges = [0, 1, 16383, 16384, 16385, 65535]
        size = edges[i] if i < len(edges) else rng.randrange(0, 64 * 1024)
        request = f"#{i:04d}:".encode() + rng.randbytes(size)
        try:
            response, call = unary.with_call(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            fail(f"unary call {i} ({len(request)} bytes) failed: {describe(e)}")
        if response != request:
            fail(f"unary call {i}: echo differs (sent {len(request)}, got {len(response)})")
        trailers = dict(call.trailing_metadata() or ())
        if not trailers.get("x-served-by"):
            fail(f"unary call {i}: no x-served-by in trailing metadata {trailers}")
        if served_by is not None and trailers["x-served-by"] != served_by:
            fail(f"unary call {i}: x-served-by {trailers['x-served-by']!r}, expected {served_by!r}")
    print(f"unary ok {UNARY_CALLS}", flush=True)


def check_fail(channel):
    fail_method = method(channel, "unary_unary", "Fail")
    try:
        response = fail_method(b"anything", timeout=CALL_TIMEOUT)
        fail(f"Fail succeeded with {response!r}")
    except grpc.RpcError as e:
        code, details = e.code(), e.details()
        trailers = dict(e.trailing_metadata() or ())
    if code != grpc.StatusCode.NOT_FOUND:
        fail(f"Fail: code {code} (details {details!r}), expected NOT_FOUND")
    if details != "no such thing":
        fail(f"Fail: details {details!r}, expected 'no such thing'")
    if trailers.get("x-why") != "because":
        fail(f"Fail: trailing metadata {trailers}, expected x-why=because")
    print("fail ok", flush=True)


def check_chat(channel):
    """Lock-step: message i+1 is only sent once echo i has arrived, so a proxy
    that buffered either direction of the stream would stall (and hit the
    deadline) rather than pass."""
    chat = method(channel, "stream_stream", "Chat")
    outbox = queue.Queue()
    done = object()

    def requests():
        while True:
            item = outbox.get()
            if item is done:
                return
            yield item

    call = chat(requests(), timeout=CHAT_TIMEOUT)
    received = 0
    try:
        for i in range(CHAT_MESSAGES):
            sent = f"chat {i:05d} ".encode() + b"." * (i % 97)
            outbox.put(sent)
            got = next(call)
            if got != b"echo:" + sent:
                fail(f"chat message {i}: got {got[:40]!r}, expected {(b'echo:' + sent)[:40]!r}")
            received += 1
        outbox.put(done)
        rest = list(call)
        if rest:
            fail(f"chat: {len(rest)} unexpected messages after the last echo")
        if call.code() != grpc.StatusCode.OK:
            fail(f"chat ended with {call.code()} {call.details()!r}")
    except StopIteration:
        fail(f"chat: the stream ended after {received} echoes ({call.code()} {call.details()!r})")
    except grpc.RpcError as e:
        fail(f"chat failed after {received} of {CHAT_MESSAGES} echoes: {describe(e)}")
    finally:
        outbox.put(done)
    print(f"chat ok {received}", flush=True)


def check_deadline(channel):
    slow = method(channel, "unary_unary", "Slow")
    started = time.monotonic()
    try:
        response = slow(b"zzz", timeout=DEADLINE)
        fail(f"Slow answered {response!r} despite a {DEADLINE} s deadline")
    except grpc.RpcError as e:
        elapsed = time.monotonic() - started
        if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            fail(f"Slow: {describe(e)} after {elapsed:.2f} s, expected DEADLINE_EXCEEDED")
    if elapsed > SLOW_SECONDS - 1:
        fail(f"Slow: DEADLINE_EXCEEDED only after {elapsed:.2f} s (deadline {DEADLINE} s)")
    print("deadline ok", flush=True)


def run_client(target, served_by):
    options = [
        # Never through an HTTP CONNECT proxy from the environment.
        ("grpc.enable_http_proxy", 0),
        ("grpc.enable_retries", 0),
    ]
    with grpc.insecure_channel(target, options=options) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT)
        except grpc.FutureTimeoutError:
            fail(f"could not connect to {target} within {CALL_TIMEOUT} s")
        check_unary(channel, served_by)
        check_fail(channel)
        check_chat(channel)
        check_deadline(channel)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("portfile")
    s.add_argument("--id", default=f"grpc-peer-{os.getpid()}")
    s.add_argument("--lifetime", type=float, default=600.0,
                   help="exit after this many seconds (a forgotten server ends by itself)")
    c = sub.add_parser("client")
    c.add_argument("target")
    c.add_argument("--served-by", default=None,
                   help="expect this server id in every Unary's x-served-by trailer")
    args = parser.parse_args()
    if args.mode == "server":
        run_server(args.portfile, args.id, args.lifetime)
    else:
        run_client(args.target, args.served_by)


if __name__ == "__main__":
    main()
