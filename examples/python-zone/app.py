"""A Veer strategy in Python: requests with an `x-prefer` header naming a
backend's `zone` label go to that zone's backends first, in turn; the others
follow. Other requests go round the pool in turn.

componentize-py makes a new `Strategy` object for each call: state lives in
the module."""
from wit_world import exports
from wit_world.imports import veer_balancer_types as types
from componentize_py_types import Err

backends = []  # (id, zone) for each backend, by id
turn = 0


class Strategy(exports.Strategy):
    def info(self) -> types.PluginInfo:
        return types.PluginInfo("py-zone", "0.1.0", types.Capabilities(0))

    def init(self, config: str) -> None:
        if config.strip() not in ("{}", ""):
            raise Err("py-zone takes no configuration")

    def set_backends(self, given) -> None:
        global backends
        backends = [(b.id, dict(b.labels).get("zone")) for b in given]

    def select(self, request):
        global turn
        turn += 1
        order = []
        zone = request.header("x-prefer")
        if zone is not None:
            here = [i for (i, z) in backends if z == zone]
            if here:
                start = turn % len(here)
                order = here[start:] + here[:start]
        n = len(backends)
        for k in range(n):
            i = backends[(turn + k) % n][0]
            if i not in order:
                order.append(i)
        return order

    def on_outcome(self, outcome) -> None:
        pass

    def export_state(self) -> bytes:
        return b""

    def import_state(self, state: bytes) -> None:
        pass
