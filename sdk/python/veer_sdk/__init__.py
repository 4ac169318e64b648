"""Veer's SDK for strategies written in Python (``veer:balancer@0.3.0``,
built into a component with componentize-py).

It mirrors the Rust SDK (``sdk/``): subclass :class:`Strategy`, export it with
one line, unit-test it natively with :mod:`veer_sdk.testing`::

    import veer_sdk

    class First(veer_sdk.Strategy):
        NAME = "first"
        VERSION = "0.1.0"

        def __init__(self, config):
            self.ids = []

        def set_backends(self, backends):
            self.ids = [b.id for b in backends]

        def select(self, request):
            return self.ids

    Strategy = veer_sdk.export(First)   # the name componentize-py looks for

Build (from the folder holding the module; ``-p`` adds this SDK)::

    componentize-py -d wit/0.3.0 -w balancer componentize \\
        -p . -p sdk/python app -o first.wasm

What the SDK takes care of:

- componentize-py makes a new export object for every call; :func:`export`
  keeps *one* instance of your class for the life of the plugin instance,
  so state lives in ``self`` as in Rust;
- ``init``'s JSON is parsed into a ``dict`` for ``__init__``; raise
  ``ValueError`` to refuse a configuration (the message reaches the
  operator next to the pool's name);
- backends arrive as :class:`Backend` with ``labels`` as a ``dict``;
- raise :class:`Refuse` or :class:`Defer` from ``select`` to reject a
  request (a 503 that never leaks, or the pool's failure policy);
- :data:`host` reaches the real host inside Veer and a
  :class:`veer_sdk.testing.FakeHost` in tests;
- an exception escaping a call is one log line with its type, message and
  place before the call traps (the host then counts a plugin failure and
  the pool's failure policy serves the request).
"""

import ipaddress
import json
import sys

__all__ = [
    "Backend", "Defer", "HAND_OVER", "MAX_CANDIDATES", "OUTCOMES",
    "PEAK_LATENCY", "Refuse", "Strategy", "client_ip", "export", "host",
    "method_name",
]

#: Capabilities (``Strategy.CAPABILITIES``, combined with ``|``): call
#: ``on_outcome`` after every attempt.
OUTCOMES = 1
#: Hand state from the version being replaced (``export_state``) to the new
#: one (``import_state``); both versions must ask.
HAND_OVER = 2
#: Keep ``latency_peak_ewma_us`` in the live stats (0 otherwise).
PEAK_LATENCY = 4

#: The host reads at most this many ids of an answer.
MAX_CANDIDATES = 1024


class Refuse(Exception):
    """No backend of this pool may serve this request: the client gets a
    503 with this reason, and the request is never sent elsewhere."""


class Defer(Exception):
    """The strategy cannot decide for this request: the pool's failure
    policy serves it, and it counts as a plugin failure."""


class Backend:
    """One backend of the pool, as ``set_backends`` gets it."""

    __slots__ = ("id", "address", "weight", "labels")

    def __init__(self, id, address, weight=1, labels=None):
        #: The id ``select`` answers with: dense from 0, in configuration order.
        self.id = id
        #: The address the host connects to, e.g. ``10.0.0.7:8080``.
        self.address = address
        #: Relative weight, at least 1.
        self.weight = weight
        #: Labels from the configuration, e.g. ``{"zone": "eu-1"}``.
        self.labels = dict(labels or {})

    def __repr__(self):
        return f"Backend({self.id!r}, {self.address!r}, {self.weight!r}, {self.labels!r})"

    def __eq__(self, other):
        return isinstance(other, Backend) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)


class Strategy:
    """A load-balancing strategy: subclass it and override what you need.

    ``select`` gets the request handle, with ``method()``, ``authority()``,
    ``path()``, ``query()``, ``client()``, ``header(name)``,
    ``header_all(name)``, ``cookie(name)``, ``query_param(name)`` and
    ``tls()``; see :func:`method_name` and :func:`client_ip` for the first
    and the client address as plain Python values.
    """

    #: The name users give in a pool's ``strategy`` key: lowercase letters,
    #: digits and ``-``.
    NAME = ""
    #: This plugin's version.
    VERSION = "0.1.0"
    #: Optional host calls: ``OUTCOMES | HAND_OVER | PEAK_LATENCY``, or 0.
    CAPABILITIES = 0

    def __init__(self, config):
        """Builds the strategy from the pool's ``strategy_config`` (a dict).
        Raise ``ValueError`` to refuse it: say what is wrong and what is
        accepted."""

    def set_backends(self, backends):
        """Replaces the backend set (a list of :class:`Backend`, never
        empty); never called per request."""

    def select(self, request):
        """Answers the backend ids for one request, best first (at most
        :data:`MAX_CANDIDATES` are read). Raise :class:`Refuse` or
        :class:`Defer` to name none."""
        raise NotImplementedError

    def on_outcome(self, outcome):
        """How an attempt went (``backend``, ``attempt``, ``status``,
        ``latency_us``, ``failure``); only with :data:`OUTCOMES`."""

    def export_state(self):
        """State for the version replacing this one (bytes, at most 1 MiB);
        only with :data:`HAND_OVER`."""
        return b""

    def import_state(self, state):
        """State from the version this one replaces. Raise ``ValueError``
        for state it cannot read: it then starts cold."""


def method_name(request):
    """The request's method as text: ``"GET"``, ``"POST"``, …"""
    method = request.method()
    kind = type(method).__name__
    if kind == "Method_Other":
        return method.value
    return kind[len("Method_"):].upper()


def client_ip(request):
    """The client's address as an :mod:`ipaddress` address."""
    parts = request.client().value
    if len(parts) == 4:
        return ipaddress.IPv4Address(bytes(parts))
    return ipaddress.IPv6Address(b"".join(p.to_bytes(2, "big") for p in parts))


class _Host:
    """What a strategy may ask the host; :data:`host` is the one instance.
    Calls go to the real host inside Veer, to a FakeHost in tests."""

    def __init__(self):
        self._backend = None

    def _target(self):
        if self._backend is None:
            from wit_world.imports import host as wasm_host
            self._backend = _WasmHost(wasm_host)
        return self._backend

    def live_stats(self, id):
        """Live stats of backend ``id`` (``in_flight``, ``latency_ewma_us``,
        ``latency_peak_ewma_us``, ``healthy``), ``None`` for an unknown id."""
        return self._target().live_stats(id)

    def all_stats(self):
        """Live stats of every backend, indexed by id."""
        return self._target().all_stats()

    def all_in_flight(self):
        """In-flight requests of every backend, indexed by id."""
        return self._target().all_in_flight()

    def set_response_header(self, name, value):
        """Adds a header to the client's response (during ``select`` only);
        raises ``ValueError`` with the host's reason when refused."""
        return self._target().set_response_header(name, value)

    def random(self):
        """A random 64-bit number from the host's seedable generator."""
        return self._target().random()

    def log(self, level, message):
        """A line in Veer's log: ``level`` is ``"debug"``, ``"info"``,
        ``"warn"`` or ``"error"``. Rate-limited: do not log per request."""
        return self._target().log(level, message)


class _WasmHost:
    def __init__(self, wasm_host):
        from wit_world.imports import veer_balancer_types as types
        self._host = wasm_host
        self._levels = {
            "debug": types.LogLevel.DEBUG, "info": types.LogLevel.INFO,
            "warn": types.LogLevel.WARN, "error": types.LogLevel.ERROR,
        }
        self.live_stats = wasm_host.live_stats
        self.all_stats = wasm_host.all_stats
        self.all_in_flight = wasm_host.all_in_flight
        self.random = wasm_host.random

    def set_response_header(self, name, value):
        from componentize_py_types import Err
        try:
            self._host.set_response_header(name, value)
        except Err as e:
            raise ValueError(e.value) from None

    def log(self, level, message):
        self._host.log(self._levels.get(level, self._levels["info"]), str(message))


#: The host, as a strategy sees it.
host = _Host()


def _report(call, error):
    """One log line for an exception escaping a call: type, message, place."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    place = f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else ""
    try:
        host.log("error", f"{call} raised {type(error).__name__}: {error}{place}")
    except Exception:
        print(f"{call} raised {type(error).__name__}: {error}{place}", file=sys.stderr)


def export(cls):
    """The class componentize-py exports, made from your :class:`Strategy`
    subclass: ``Strategy = veer_sdk.export(MyStrategy)`` in the app module.
    Outside a component build (native unit tests) it returns ``cls``."""
    try:
        from wit_world import exports
        from wit_world.imports import veer_balancer_types as types
        from componentize_py_types import Err
    except ImportError:
        return cls

    state = {"strategy": None}

    def guarded(call, f, expected=()):
        try:
            return f()
        except (Err,) + expected:
            raise
        except Exception as e:
            _report(call, e)
            raise

    class Exported(exports.Strategy):
        def info(self):
            return types.PluginInfo(cls.NAME, cls.VERSION, types.Capabilities(cls.CAPABILITIES))

        def init(self, config):
            try:
                settings = json.loads(config) if config.strip() else {}
            except ValueError as e:
                raise Err(f"the configuration is not JSON: {e}") from None
            try:
                state["strategy"] = guarded("init", lambda: cls(settings), (ValueError,))
            except ValueError as e:
                raise Err(str(e)) from None

        def set_backends(self, backends):
            given = [Backend(b.id, b.address, b.weight, b.labels) for b in backends]
            guarded("set_backends", lambda: state["strategy"].set_backends(given))

        def select(self, request):
            try:
                answer = guarded("select", lambda: state["strategy"].select(request), (Refuse, Defer))
            except Refuse as r:
                raise Err(types.Rejection_Refuse(str(r))) from None
            except Defer as d:
                raise Err(types.Rejection_Defer(str(d))) from None
            return answer if isinstance(answer, list) else list(answer)

        def on_outcome(self, outcome):
            guarded("on_outcome", lambda: state["strategy"].on_outcome(outcome))

        def export_state(self):
            return bytes(guarded("export_state", lambda: state["strategy"].export_state()))

        def import_state(self, data):
            try:
                guarded("import_state", lambda: state["strategy"].import_state(bytes(data)),
                        (ValueError,))
            except ValueError as e:
                raise Err(str(e)) from None

    Exported.__name__ = Exported.__qualname__ = "Strategy"
    return Exported
