"""Unit-test a Python strategy natively (plain ``python3 -m unittest``, no
Wasm): :class:`FakeHost` answers what the real host would (live stats,
randomness, logs, response headers) and :class:`FakeRequest` makes requests
with the same methods as the real request handle::

    from veer_sdk.testing import FakeHost, FakeRequest, backends

    with FakeHost(seed=7) as host:
        s = MyStrategy({})
        s.set_backends(backends(3))
        assert s.select(FakeRequest("GET", "/", headers={"x-zone": "a"})) == [0, 1, 2]
        assert host.logs == []
"""

import ipaddress
import random as _random

import veer_sdk
from veer_sdk import Backend

__all__ = ["BackendStats", "FakeHost", "FakeRequest", "backends"]

_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


def backends(n, labels=None):
    """``n`` backends: ids ``0..n``, addresses ``10.0.0.<id>:80``, weight 1,
    the same ``labels`` each (none by default)."""
    return [Backend(i, f"10.0.0.{i}:80", 1, labels) for i in range(n)]


class BackendStats:
    """Live stats of one backend, as ``host.live_stats`` answers them."""

    def __init__(self, in_flight=0, latency_ewma_us=0, latency_peak_ewma_us=0, healthy=True):
        self.in_flight = in_flight
        self.latency_ewma_us = latency_ewma_us
        self.latency_peak_ewma_us = latency_peak_ewma_us
        self.healthy = healthy

    def __repr__(self):
        return (f"BackendStats(in_flight={self.in_flight}, latency_ewma_us={self.latency_ewma_us}, "
                f"latency_peak_ewma_us={self.latency_peak_ewma_us}, healthy={self.healthy})")


def _method(name):
    """A method value shaped like componentize-py's (``Method_Get``, …)."""
    upper = name.upper()
    if upper in _METHODS:
        return type("Method_" + upper.capitalize(), (), {})()
    other = type("Method_Other", (), {})()
    other.value = name
    return other


class _Address:
    """An address shaped like componentize-py's (`.value`: 4 octets or 8 groups)."""

    def __init__(self, ip):
        ip = ipaddress.ip_address(ip)
        if ip.version == 4:
            self.value = tuple(ip.packed)
        else:
            p = ip.packed
            self.value = tuple(int.from_bytes(p[i:i + 2], "big") for i in range(0, 16, 2))


class FakeRequest:
    """A made-up request with the real handle's methods. ``target`` is a
    path with an optional ``?query``; headers and cookies are dicts (a
    header may map to a list for repeats)."""

    def __init__(self, method="GET", target="/", headers=None, cookies=None,
                 authority="example.com", client="192.0.2.1", tls=None):
        self._method = method
        self._path, _, self._query = target.partition("?")
        self._headers = {k.lower(): (v if isinstance(v, list) else [v])
                         for k, v in (headers or {}).items()}
        if cookies:
            self._headers.setdefault("cookie", []).append(
                "; ".join(f"{k}={v}" for k, v in cookies.items()))
        self._authority = authority
        self._client = client
        self._tls = tls

    def method(self):
        return _method(self._method)

    def authority(self):
        return self._authority

    def path(self):
        return self._path

    def query(self):
        return self._query

    def client(self):
        return _Address(self._client)

    def header(self, name):
        values = self._headers.get(name.lower())
        return values[0] if values else None

    def header_all(self, name):
        return list(self._headers.get(name.lower(), []))

    def cookie(self, name):
        for line in self._headers.get("cookie", []):
            for pair in line.split(";"):
                key, eq, value = pair.strip().partition("=")
                if eq and key == name:
                    return value
        return None

    def query_param(self, name):
        for pair in self._query.split("&") if self._query else []:
            key, _, value = pair.partition("=")
            if key == name:
                return value
        return None

    def tls(self):
        return self._tls


class FakeHost:
    """The host for native tests, installed as :data:`veer_sdk.host` while
    it is open (``with FakeHost(...) as host:``). ``stats`` is a list of
    :class:`BackendStats` by id; ``seed`` makes ``random`` reproducible."""

    def __init__(self, stats=None, seed=1):
        self.stats = list(stats or [])
        #: ``(level, message)`` of every ``host.log`` call.
        self.logs = []
        #: ``(name, value)`` of every accepted ``set_response_header``.
        self.response_headers = []
        self._random = _random.Random(seed)
        self._before = None

    def __enter__(self):
        self._before = veer_sdk.host._backend
        veer_sdk.host._backend = self
        return self

    def __exit__(self, *exc):
        veer_sdk.host._backend = self._before
        return False

    def live_stats(self, id):
        return self.stats[id] if 0 <= id < len(self.stats) else None

    def all_stats(self):
        return list(self.stats)

    def all_in_flight(self):
        return [s.in_flight for s in self.stats]

    def set_response_header(self, name, value):
        if len(self.response_headers) >= 8:
            raise ValueError("more than 8 response headers for one request")
        if name.lower() in ("connection", "transfer-encoding", "content-length", "keep-alive",
                            "upgrade", "te", "trailer", "proxy-connection"):
            raise ValueError(f"{name} is not a header a plugin may set")
        self.response_headers.append((name, value))

    def random(self):
        return self._random.getrandbits(64)

    def log(self, level, message):
        self.logs.append((level, str(message)))
