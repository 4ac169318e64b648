"""Tests of the Python SDK itself: `python3 -m unittest -v` in this folder."""
import ipaddress
import unittest

import veer_sdk
from veer_sdk.testing import BackendStats, FakeHost, FakeRequest, backends


class Least(veer_sdk.Strategy):
    NAME = "least"
    CAPABILITIES = veer_sdk.OUTCOMES | veer_sdk.PEAK_LATENCY

    def __init__(self, config):
        self.ids = []

    def set_backends(self, given):
        self.ids = [b.id for b in given]

    def select(self, request):
        if request.header("x-version") == "v9":
            raise veer_sdk.Refuse("no backend runs v9")
        load = veer_sdk.host.all_in_flight()
        return sorted(self.ids, key=lambda i: load[i])


class FakeRequestTest(unittest.TestCase):
    def test_a_fake_request_answers_like_the_handle(self):
        r = FakeRequest("POST", "/a/b?x=1&flag&x=2", headers={"X-Zone": "eu", "accept": ["a", "b"]},
                        cookies={"session": "s1", "theme": "dark"}, client="2001:db8::7")
        self.assertEqual(veer_sdk.method_name(r), "POST")
        self.assertEqual((r.path(), r.query()), ("/a/b", "x=1&flag&x=2"))
        self.assertEqual(r.header("x-zone"), "eu")
        self.assertEqual(r.header_all("Accept"), ["a", "b"])
        self.assertIsNone(r.header("x-missing"))
        self.assertEqual((r.cookie("theme"), r.cookie("nope")), ("dark", None))
        self.assertEqual((r.query_param("x"), r.query_param("flag"), r.query_param("y")), ("1", "", None))
        self.assertEqual(veer_sdk.client_ip(r), ipaddress.ip_address("2001:db8::7"))
        self.assertEqual(veer_sdk.client_ip(FakeRequest()), ipaddress.ip_address("192.0.2.1"))
        self.assertEqual(veer_sdk.method_name(FakeRequest("PURGE")), "PURGE")


class FakeHostTest(unittest.TestCase):
    def test_live_stats_come_from_the_fake_host_while_it_is_open(self):
        with FakeHost(stats=[BackendStats(in_flight=5), BackendStats(), BackendStats(in_flight=2)]):
            s = Least({})
            s.set_backends(backends(3))
            self.assertEqual(s.select(FakeRequest()), [1, 2, 0])
        with self.assertRaises(Exception, msg="closed: no host outside Veer"):
            veer_sdk.host.all_in_flight()

    def test_a_refusal_is_an_exception_with_its_reason(self):
        with FakeHost(stats=[BackendStats()]):
            s = Least({})
            s.set_backends(backends(1))
            with self.assertRaisesRegex(veer_sdk.Refuse, "v9"):
                s.select(FakeRequest(headers={"x-version": "v9"}))

    def test_randomness_is_reproducible_by_seed_and_logs_are_kept(self):
        with FakeHost(seed=3) as a:
            first = [veer_sdk.host.random() for _ in range(3)]
            veer_sdk.host.log("warn", "hello")
        with FakeHost(seed=3):
            again = [veer_sdk.host.random() for _ in range(3)]
        self.assertEqual(first, again)
        self.assertTrue(all(0 <= x < 2 ** 64 for x in first))
        self.assertEqual(a.logs, [("warn", "hello")])

    def test_response_headers_are_checked_like_the_host_does(self):
        with FakeHost() as host:
            veer_sdk.host.set_response_header("set-cookie", "b=1")
            with self.assertRaises(ValueError):
                veer_sdk.host.set_response_header("connection", "close")
        self.assertEqual(host.response_headers, [("set-cookie", "b=1")])


class ExportTest(unittest.TestCase):
    def test_outside_a_component_build_export_gives_the_class_back(self):
        self.assertIs(veer_sdk.export(Least), Least)

    def test_capabilities_have_the_wit_flag_values(self):
        self.assertEqual((veer_sdk.OUTCOMES, veer_sdk.HAND_OVER, veer_sdk.PEAK_LATENCY), (1, 2, 4))


if __name__ == "__main__":
    unittest.main()
