"""Native unit tests of the strategy, with Veer's FakeHost: no Wasm needed.

    PYTHONPATH=../../sdk/python python3 -m unittest -v
"""
import unittest

from app import PyZone
from veer_sdk.testing import FakeHost, FakeRequest, backends


def zoned(*zones):
    pool = backends(len(zones))
    for b, zone in zip(pool, zones):
        b.labels["zone"] = zone
    return pool


class PyZoneTest(unittest.TestCase):
    def test_a_preferred_zone_comes_first_in_turn_and_the_others_follow(self):
        with FakeHost():
            s = PyZone({})
            s.set_backends(zoned("a", "b", "b"))
            first = [s.select(FakeRequest(headers={"x-prefer": "b"})) for _ in range(4)]
        self.assertEqual([o[0] for o in first], [2, 1, 2, 1])
        for order in first:
            self.assertEqual(sorted(order), [0, 1, 2], "every backend stays a fallback")
            self.assertEqual(order[2], 0, "zone a only after zone b")

    def test_without_a_preference_requests_go_round_in_turn(self):
        with FakeHost():
            s = PyZone({})
            s.set_backends(zoned("a", "b", "c"))
            firsts = [s.select(FakeRequest())[0] for _ in range(6)]
        self.assertEqual(firsts, [1, 2, 0, 1, 2, 0])

    def test_an_unknown_zone_is_the_same_as_no_preference(self):
        with FakeHost():
            s = PyZone({})
            s.set_backends(zoned("a", "b"))
            self.assertEqual(s.select(FakeRequest(headers={"x-prefer": "z"})), [1, 0])

    def test_a_configuration_is_refused_with_a_reason(self):
        with self.assertRaisesRegex(ValueError, "takes no configuration"):
            PyZone({"zone": "a"})


if __name__ == "__main__":
    unittest.main()
