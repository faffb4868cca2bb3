"""Per-client limits count an IPv6 client as its /64: one host is given 2^64 addresses, so keyed by
address a single host would be 2^64 clients. A validator and its clients run in a Linux network
namespace the test creates (IPv6 loopback outside holds ::1 alone); the clients send from chosen
source addresses. Needs root and iproute2, as tests/test_netns.py; skipped with the reason otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devices.net.localnet import make_network
from node.api.limits import client_key
from node.genesis import Params
from tests.test_netns import _why_not, ip

NS = f"mc6-{os.getpid() % 100000}"
SERVER = "fd00:1::1"
SAME_64 = ("fd00:7::a", "fd00:7::b:c")  # one host's /64
OTHER_64 = "fd00:8::a"

CLIENT = r'''
import asyncio, json, sys, time
import aiohttp

url, same, other = sys.argv[1], sys.argv[2:4], sys.argv[4]

async def get(src):
    conn = aiohttp.TCPConnector(local_addr=(src, 0) if src else None, force_close=True)
    async with aiohttp.ClientSession(connector=conn) as s:
        async with s.get(url + "/v1/status") as r:
            return r.status, (await r.json()).get("error", "")

async def main():
    deadline = time.monotonic() + 20
    while True:  # ready: from the default source (the server's own address: a /64 of its own)
        try:
            ready = await get(None)
            break
        except OSError:
            assert time.monotonic() < deadline, "the validator did not come up"
            await asyncio.sleep(0.1)
    first = [await get(same[0]) for _ in range(8)]
    print(json.dumps({"ready": ready, "first": first, "sibling": await get(same[1]), "other": await get(other)}))

asyncio.run(main())
'''


def test_client_keys() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"  # a dual-stack socket's IPv4 client
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2::ffff") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key(None) == client_key("") == "unknown"
    assert client_key("not:an:address") == "not:an:address"


@pytest.mark.skipif(bool(_why_not()), reason=_why_not() or "")
def test_an_ipv6_host_is_one_client_however_many_addresses_it_uses(tmp_path: Path) -> None:
    (node,) = make_network(tmp_path, 1, params=Params(client_rate=0.1, client_burst=5))
    ip("netns", "add", NS)
    try:
        ip("-n", NS, "link", "set", "lo", "up")
        for a in (SERVER, *SAME_64, OTHER_64):
            ip("-n", NS, "addr", "add", f"{a}/128", "dev", "lo", "nodad")
        node.prefix = ["ip", "netns", "exec", NS]
        node.args = ["--host", "::"]
        node.launch()
        try:
            p = subprocess.run([*node.prefix, sys.executable, "-c", CLIENT, f"http://[{SERVER}]:{node.port}",
                                *SAME_64, OTHER_64], capture_output=True, text=True, timeout=60)
            assert p.returncode == 0, p.stderr[-3000:]
            got = json.loads(p.stdout)
        finally:
            code = node.stop()
        assert got["ready"][0] == 200
        codes = [c for c, _ in got["first"]]
        assert codes[:5] == [200] * 5 and codes[-1] == 429, got
        assert got["sibling"][0] == 429 and "client fd00:7::/64 exceeds" in got["sibling"][1], got
        assert got["other"][0] == 200, got  # another /64 is another client
        assert code == 0 and "Traceback" not in node.log_tail(1_000_000)
    finally:
        ip("netns", "del", NS, check=False)
