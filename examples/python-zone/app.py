"""A Veer strategy in Python: requests with an `x-prefer` header naming a
backend's `zone` label go to that zone's backends first, in turn; the others
follow. Other requests go round the pool in turn.

Written against Veer's Python SDK (`sdk/python/veer_sdk`), which keeps one
`PyZone` for the life of the plugin instance and turns its exceptions into
the contract's errors."""
import veer_sdk


class PyZone(veer_sdk.Strategy):
    NAME = "py-zone"
    VERSION = "0.1.0"

    def __init__(self, config):
        if config:
            raise ValueError("py-zone takes no configuration")
        self.backends = []  # (id, zone) for each backend, by id
        self.turn = 0

    def set_backends(self, backends):
        self.backends = [(b.id, b.labels.get("zone")) for b in backends]

    def select(self, request):
        self.turn += 1
        order = []
        zone = request.header("x-prefer")
        if zone is not None:
            here = [i for (i, z) in self.backends if z == zone]
            if here:
                start = self.turn % len(here)
                order = here[start:] + here[:start]
        n = len(self.backends)
        for k in range(n):
            i = self.backends[(self.turn + k) % n][0]
            if i not in order:
                order.append(i)
        return order


Strategy = veer_sdk.export(PyZone)
