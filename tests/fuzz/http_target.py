"""Fuzz target for the HTTP routes: a real validator (LMDB in a temp dir, the aiohttp app on a real
socket) with a patient, a staff member, a blob, grants and reads on chain; each input becomes one
request (route, path parameters, query, headers, body). A 500 is a crash: every refusal must be a
deliberate 4xx (or 502/503)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp

from node.api.server import serve
from node.crypto.keys import Identity
from node.genesis import IssuerInfo, Params, init_home
from node.tx import Grant, Profile, Read, SealedKey, Tx, Write
from node.tx.credential import issue
from node.validator import Validator

ROUTES = [
    ("GET", "/v1/status"), ("GET", "/v1/head"), ("GET", "/v1/genesis"), ("GET", "/metrics"), ("POST", "/v1/tx"),
    ("POST", "/v1/txs"),
    ("GET", "/v1/tx/{}"), ("GET", "/v1/blocks/{}"), ("POST", "/v1/blobs"), ("GET", "/v1/blobs/{}"),
    ("GET", "/v1/accounts/{}"), ("GET", "/v1/patients/{}/audit"), ("GET", "/v1/patients/{}/grants"),
    ("GET", "/v1/patients/{}/keys/{}"), ("GET", "/v1/patients/{}/data"), ("GET", "/{}"), ("PUT", "/v1/tx"),
]
QUERY_KEYS = ["format", "type", "from", "to", "limit", "wait", "nonce", "x"]
HEADERS = ["X-Medchain-Pubkey", "X-Medchain-Time", "X-Medchain-Signature", "X-Medchain-Read", "Content-Type"]


def _small_int(s: str) -> bool:
    """Whether the server reads `s` as an int (any size: it clamps a wait to 30 s, a real long poll)."""
    try:
        int(s)
        return True
    except ValueError:
        return False


class HttpHarness:
    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="medchain-fuzz-")
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._start(Path(self._tmp.name)))

    async def _start(self, root: Path) -> None:
        issuer = Identity.from_seed(b"fuzz-issuer")
        (home,) = init_home(root, "medchain-fuzz", ["127.0.0.1:0"], int(time.time() * 1000),
                            Params(client_rate=1e9, client_burst=1e9, sender_rate=1e6, sender_burst=1e6),
                            issuers=(IssuerInfo("fuzz", issuer.public_key.hex()),))
        self.v = v = Validator(home)
        await v.start()
        self.runner = await serve(v, "127.0.0.1", 0)
        port = self.runner.addresses[0][1]
        self.base = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        patient, staff = Identity.from_seed(b"fuzz-patient"), Identity.from_seed(b"fuzz-staff")
        blob = b"\x00" * 12 + b"ciphertext and tag..."
        cid, _ = v.blobs.put_blob(blob)  # listed as a blob: a write without a sidecar names it
        cred = issue(issuer, v.chain_id, staff.address, 2**62)
        txs = [Tx.build(staff, v.chain_id, 1, Profile("Dr Fuzz", "md", "org", staff.box_public, cred)),
               Tx.build(patient, v.chain_id, 1, Write(1, cid.to_bytes(), len(blob), 0, 1000, 2000))]
        await self._commit(txs)
        txs = [Tx.build(patient, v.chain_id, 2, Grant(staff.address, (1,), 0, (SealedKey(1, 0, b"s" * 48),))),
               Tx.build(staff, v.chain_id, 2, Read(patient.address, 2, b"", 0, 5000, "ETREAT"))]
        await self._commit(txs)
        read = Tx.build(staff, v.chain_id, 3, Read(patient.address, 1, cid.to_bytes(), 0, 0))
        await self._commit([read])
        # known-good values the fuzzer can pick for path parameters and headers
        self.words = [patient.address.hex(), staff.address.hex(), str(cid), read.id.hex(), "1", "latest",
                      staff.public_key.hex(), str(int(time.time() * 1000)), "00" * 64, "heart_rate", "msgpack"]
        self.good_txs = [read.raw]

    async def _commit(self, txs: list[Tx]) -> None:
        for r in await self.v.submit_many([(t.raw, None) for t in txs]):
            assert isinstance(r, bytes), r
        for t in txs:
            assert await self.v.wait_committed(t.id, 10), "setup transaction did not commit"

    def _word(self, part: bytes) -> str:
        if part[:1] == b"\x01" and len(part) >= 2:
            return self.words[part[1] % len(self.words)]
        return part.decode("utf-8", "replace")

    def request(self, data: bytes) -> int:
        """One request from fuzz bytes; returns the status, raising AssertionError on a server fault."""
        return self.loop.run_until_complete(self._request(data))

    async def _request(self, data: bytes) -> int:
        if len(data) < 2:
            return 0
        method, template = ROUTES[data[0] % len(ROUTES)]
        parts = data[2:].split(b"\x00")
        slots = template.count("{}")
        params = [quote(self._word(p), safe="") or "x" for p in parts[:slots]]
        path = template.format(*params, *["x"] * (slots - len(params)))
        rest = parts[template.count("{}"):]
        # a query part's first byte picks the key, the rest is the value
        query = {QUERY_KEYS[p[0] % len(QUERY_KEYS)]: self._word(p[1:])[:512] for p in rest[:data[1] % 3] if p}
        if _small_int(query.get("wait", "")):
            query["wait"] = "0"  # a real long poll of up to 30 s is not a crash, only slow
        headers = {}
        for k, p in enumerate(rest[data[1] % 3:][:data[1] // 3 % 6]):
            val = "".join(c for c in self._word(p) if 32 <= ord(c) < 127)
            headers[HEADERS[k % len(HEADERS)]] = val
        body = b"\x00".join(rest[data[1] % 3 + data[1] // 3 % 6:])
        if data[1] >= 240 and self.good_txs:  # sometimes a valid body, to reach the deeper paths
            body = self.good_txs[0] if template == "/v1/tx" else body
        async with self.session.request(method, self.base + path, params=query, headers=headers, data=body) as r:
            text = await r.text()
            assert r.status < 500 or r.status in (502, 503), f"{method} {path} {query} {headers}: {r.status} {text[:300]}"
            return r.status

    def close(self) -> None:
        async def stop() -> None:
            await self.session.close()
            await self.runner.cleanup()
            await self.v.stop()
        self.loop.run_until_complete(stop())
        self.loop.close()
        self._tmp.cleanup()
