"""Async HTTP client for a validator's API (used by phones, staff, the CLI and load generators)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import msgpack

from node.crypto.keys import Identity
from node.ipfs.cid import Cid
from node.ipfs.unixfs import import_bytes, is_blob
from node.sidecar import encode_submission, item_obj
from node.tx.requests import blob_request_digest, blob_upload_digest

log = logging.getLogger("medchain.client")
RETRY_FOR = 60.0  # how long a read keeps retrying a validator that answers 429/503
MAX_DOWNLOAD = 1 << 30  # a blob of unknown size is read up to this (the genesis bound on max_blob_bytes)
# a JSON answer is read up to this: the largest honest ones (a batch's 4,096 results, a page of 1,000
# entries with ?proof=1) are a few MiB; a liar's endless body is cut here, not buffered to the end
MAX_JSON = 16 * 1024 * 1024


async def read_capped(resp: aiohttp.ClientResponse, cap: int, what: str) -> bytes:
    """The answer's body, ApiError (502) once it passes `cap` bytes."""
    data = bytearray()
    async for chunk in resp.content.iter_chunked(1 << 16):
        data += chunk
        if len(data) > cap:
            raise ApiError(502, f"{resp.url.origin()} answered more than {cap} bytes for {what}")
    return bytes(data)


async def json_answer(resp: aiohttp.ClientResponse) -> Any:
    """The answer's JSON, read within MAX_JSON; ApiError (502) for a body that is no JSON (a liar's
    deep nesting is a RecursionError in the parser, not a crash of the caller)."""
    raw = await read_capped(resp, MAX_JSON, resp.url.path)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(502, f"{resp.url.origin()} answered {resp.url.path} with no JSON: {str(exc)[:80]}") from None


def retry_after(value: object, default: float = 1.0) -> float:
    """A validator's Retry-After (a header or a batch result's field) as seconds to wait: `default`
    when it is absent, 0 or not a finite positive number (no spinning), and at most RETRY_FOR. A liar's `nan` made
    asyncio.sleep wait for ever (and every deadline comparison false), `1e9` paused a lane for good."""
    try:
        wait = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return min(wait, RETRY_FOR) if math.isfinite(wait) and wait > 0 else default


class ApiError(Exception):
    def __init__(self, status: int, reason: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status, self.reason, self.retry_after = status, reason, retry_after


class BlobMismatch(Exception):
    """A validator answered a blob request with bytes that are not the blob the CID names."""


class NodeClient:
    def __init__(self, base_url: str, session: aiohttp.ClientSession | None = None) -> None:
        self.base = base_url.rstrip("/")
        self._validator_key: bytes | None = None
        self._last_signed_ms = 0  # the time of the last signed blob request (download)
        self._own = session is None
        self.session = session

    async def __aenter__(self) -> NodeClient:
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own and self.session is not None:
            await self.session.close()
            self.session = None

    async def _check(self, resp: aiohttp.ClientResponse) -> None:
        if resp.status >= 400:
            try:
                body = await read_capped(resp, MAX_JSON, "a refusal")
            except ApiError as exc:
                body = exc.reason.encode()
            try:
                reason = str(json.loads(body)["error"])[:1000]
            except (ValueError, RecursionError, KeyError, TypeError):
                reason = body[:200].decode(errors="replace")
            raw = resp.headers.get("Retry-After")
            raise ApiError(resp.status, reason, None if raw is None else retry_after(raw))

    async def get_json(self, path: str, *, patience: float = RETRY_FOR, **params: Any) -> dict:
        """GET a JSON document; a 429 or 503 is retried after its Retry-After (reads are idempotent),
        up to `patience` seconds in all."""
        return await self._retrying(lambda: self._get_once(path, params), patience)

    async def _get_once(self, path: str, params: dict) -> dict:
        if self.session is None:
            await self.__aenter__()
        async with self.session.get(self.base + path, params=params or None) as resp:
            await self._check(resp)
            return await json_answer(resp)

    @staticmethod
    async def _retrying(call: Callable[[], Awaitable[dict]], patience: float = RETRY_FOR) -> dict:
        """`call()`, again after the Retry-After of each 429 or 503 (1 s if none), up to `patience`
        seconds in all (a caller's own deadline: a busy validator's Retry-After of a minute must not
        hold a client with others to ask); any other refusal, or one whose wait would pass that, is raised."""
        deadline = time.monotonic() + min(patience, RETRY_FOR)
        while True:
            try:
                return await call()
            except ApiError as exc:
                wait = retry_after(exc.retry_after)
                if exc.status not in (429, 503) or time.monotonic() + wait > deadline:
                    raise
                await asyncio.sleep(wait)

    async def status(self) -> dict:
        return await self.get_json("/v1/status")

    async def genesis(self) -> dict:
        return await self.get_json("/v1/genesis")

    async def validator_key(self) -> bytes:
        """The public key of the validator behind this URL (its index in the genesis it serves): a
        signed download names it, so the request opens nothing at any other validator."""
        if self._validator_key is None:
            idx = (await self.status())["validator_index"]
            self._validator_key = bytes.fromhex((await self.genesis())["validators"][idx]["public_key"])
        return self._validator_key

    async def _post(self, path: str, body: bytes, content_type: str) -> dict:
        if self.session is None:
            await self.__aenter__()
        async with self.session.post(self.base + path, data=body, headers={"Content-Type": content_type}) as resp:
            await self._check(resp)
            return await json_answer(resp)

    async def submit(self, raw: bytes, sidecar: bytes | None = None, *, retry: bool = True) -> str:
        """One transaction; a data write may carry its ciphertext as a sidecar (node/sidecar.py). A
        429 or 503 admitted nothing: the same signed bytes are sent again after its Retry-After
        (`retry=False`: raised, for a caller that has other validators to ask meanwhile)."""
        body = encode_submission(raw, sidecar)

        def once() -> Awaitable[dict]:
            return self._post("/v1/tx", body, "application/msgpack")
        return (await (self._retrying(once) if retry else once()))["id"]

    async def submit_and_wait(self, raw: bytes, sidecar: bytes | None, wait: float,
                              patience: float = RETRY_FOR) -> dict:
        """One transaction, answered when it commits (up to `wait` seconds, at most 30): the
        answer of GET /v1/tx/{id} with its proofs, or {"id", "status": "pending"} if it has not.
        Sent again after a 429 or 503, as `submit` is."""
        body, path = encode_submission(raw, sidecar), f"/v1/tx?wait={max(1, min(30, int(wait)))}"
        return self._status(await self._retrying(lambda: self._post(path, body, "application/msgpack"), patience))

    async def submit_many(self, items: list[bytes | tuple[bytes, bytes | None]]) -> list[dict]:
        """Submit a batch of transactions or (transaction, sidecar) pairs; one result each:
        {"status": 202, "id"} or {"status", "error"}. A refusal of the whole batch is raised, not
        retried: batch senders (the fleet, the load generator) pace and count their own retries."""
        body = msgpack.packb([x if isinstance(x, bytes) else item_obj(*x) for x in items], use_bin_type=True)
        out: object = await self._post("/v1/txs", body, "application/msgpack")
        res = out.get("results") if isinstance(out, dict) else None
        if not (isinstance(res, list) and len(res) == len(items)
                and all(isinstance(r, dict) and type(r.get("status")) is int for r in res)):
            # a lane reading r["status"] must not die of what one validator chose to answer
            raise ApiError(502, f"{self.base} answered a batch of {len(items)} without a status for each")
        return res

    async def tx(self, txid: str, wait: float = 0, patience: float = RETRY_FOR) -> dict:
        return self._status(await self.get_json(f"/v1/tx/{txid}", patience=patience,
                                                **({"wait": int(wait)} if wait else {})))

    def _status(self, answer: object) -> dict:
        """A transaction's status answer, or ApiError (502) for one with no status: a caller reading
        `answer["status"]` must not die of a KeyError that a byzantine validator chose."""
        if not isinstance(answer, dict) or not isinstance(answer.get("status"), str):
            raise ApiError(502, f"{self.base} answered a status without one: {str(answer)[:100]}")
        return answer

    async def wait_committed(self, txid: str, timeout: float = 30.0,
                             resubmit: Callable[[], Awaitable[object]] | None = None) -> dict:
        """The status of `txid` once committed or rejected, or at `timeout`. An admitted transaction
        lives in the validators' memory until it commits: one that crashed before forwarding it
        answers 404 after its restart, and with `resubmit` (sending the same signed bytes again:
        never applied twice) the transaction is sent again instead of the 404 raised."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                st = await self.tx(txid, wait=max(1, min(10, left)), patience=max(0.0, left))
            except ApiError as exc:
                if exc.status != 404 or resubmit is None or left <= 0:
                    raise
                log.warning("transaction %s is unknown to %s (lost in a restart?): sending it again", txid, self.base)
                try:
                    await resubmit()
                except ApiError as again:  # e.g. committed meanwhile (its nonce is used): the status tells
                    log.info("sending %s again: %s", txid, again)
                await asyncio.sleep(min(1.0, max(0.0, left)))
                continue
            if st["status"] in ("committed", "rejected") or left <= 0:
                return st

    async def next_block(self, height: int, wait: int) -> dict | None:
        """Block `height` (JSON), long-polled up to `wait` seconds; None if it has not come. A 404
        that comes at once (the height is below this validator's checkpoint) is answered after a
        pause, so a follower calling again does not spin; other refusals raise ApiError."""
        asked = time.monotonic()
        try:
            return await self.get_json(f"/v1/blocks/{height}", wait=wait)
        except ApiError as exc:
            if exc.status != 404:
                raise
            if time.monotonic() - asked < wait / 2:
                await asyncio.sleep(0.1)
            return None

    async def block_raw(self, height: int) -> bytes:
        if self.session is None:
            await self.__aenter__()
        async with self.session.get(f"{self.base}/v1/blocks/{height}", params={"format": "msgpack"}) as resp:
            await self._check(resp)
            return await resp.read()

    async def upload(self, data: bytes, ident: Identity, chain_id: str) -> str:
        """A standalone upload (blobs too large for a sidecar), signed by the uploading patient."""
        if self.session is None:
            await self.__aenter__()
        me = await self.validator_key()
        t = int(time.time() * 1000)
        sig = ident.sign(blob_upload_digest(chain_id, me, hashlib.sha256(data).digest(), len(data), t))
        headers = {"Content-Type": "application/octet-stream", "X-Medchain-Pubkey": ident.public_key.hex(),
                   "X-Medchain-Time": str(t), "X-Medchain-Signature": sig.hex()}
        async with self.session.post(self.base + "/v1/blobs", data=data, headers=headers) as resp:
            await self._check(resp)
            cid = (await json_answer(resp))["cid"]
        mine = import_bytes(data)[0]  # the validator imports as Helia does; its answer is not taken on trust
        if cid != str(mine):
            raise BlobMismatch(f"{self.base} stored the upload as {cid}, not {mine}")
        return cid

    async def download(self, ident: Identity, chain_id: str, cid: str, cid_bytes: bytes,
                       read_txid: bytes = b"", size: int | None = None) -> bytes:
        """Fetch a blob with a request signed by `ident` (naming its committed read, for staff).
        `size`: its length as a proof gave it (a validator streaming more is cut off there, not
        read into memory to the end); else at most MAX_DOWNLOAD."""
        if self.session is None:
            await self.__aenter__()
        me = await self.validator_key()
        for attempt in range(2):
            # each request signed later than the last (one per ms at least): a validator whose record
            # of served requests is full serves a signer only requests newer than its last one
            t = self._last_signed_ms = max(int(time.time() * 1000), self._last_signed_ms + 1)
            sig = ident.sign(blob_request_digest(chain_id, me, cid_bytes, read_txid, t))
            headers = {"X-Medchain-Pubkey": ident.public_key.hex(), "X-Medchain-Time": str(t),
                       "X-Medchain-Signature": sig.hex()}
            if read_txid:
                headers["X-Medchain-Read"] = read_txid.hex()
            try:
                return await self._download_once(cid, cid_bytes, headers, size)
            except ApiError as exc:  # one signed before a later one was served: signed anew, once
                if attempt or exc.status != 401 or "sign a new one" not in exc.reason:
                    raise
        raise AssertionError("unreachable")

    async def _download_once(self, cid: str, cid_bytes: bytes, headers: dict[str, str], size: int | None) -> bytes:
        assert self.session is not None
        limit = MAX_DOWNLOAD if size is None else size
        async with self.session.get(f"{self.base}/v1/blobs/{cid}", headers=headers) as resp:
            await self._check(resp)
            try:
                data = await read_capped(resp, limit, f"blob {cid}")
            except ApiError:  # a validator streaming more than the blob's proven size: a lie about the blob
                raise BlobMismatch(f"{self.base} answered more than {limit} bytes for blob {cid}") from None
        if not is_blob(Cid.from_bytes(cid_bytes), data):  # AES-GCM alone would take another ciphertext of the window
            raise BlobMismatch(f"{self.base} answered {len(data)} bytes that are not blob {cid}")
        return data

    async def download_any(self, others: list[str], ident: Identity, chain_id: str, cid: str, cid_bytes: bytes,
                           read_txid: bytes = b"", size: int | None = None) -> bytes:
        """`download` from this validator, or, if it fails or lies, from the next of `others`; if none
        serves the blob, this validator's error is raised."""
        first: Exception | None = None
        for url in [self.base, *(u.rstrip("/") for u in others if u.rstrip("/") != self.base)]:
            c = self if url == self.base else NodeClient(url, self.session)
            try:
                return await c.download(ident, chain_id, cid, cid_bytes, read_txid, size)
            except (TimeoutError, BlobMismatch, ApiError, aiohttp.ClientError) as exc:
                first = first or exc
        assert first is not None
        raise first

    async def account(self, addr: bytes) -> dict:
        return await self.get_json(f"/v1/accounts/{addr.hex()}")

    async def audit(self, patient: bytes) -> dict:
        """The whole audit log, newest first: every page, to the end (a log of any length hides
        nothing), and every break-glass read from its own index."""
        out = await self.get_json(f"/v1/patients/{patient.hex()}/audit")
        while out["next"] is not None:
            page = await self.get_json(f"/v1/patients/{patient.hex()}/audit", before=out["next"])
            out["reads"] += page["reads"]
            out["next"] = page["next"]
        return out

    async def grants(self, patient: bytes) -> dict:
        """Every grant of the patient: every page (the API answers at most 1,000 a page)."""
        return await self._pages(f"/v1/patients/{patient.hex()}/grants", "grants")

    async def sealed_keys(self, patient: bytes, staff: bytes) -> dict:
        """Every data key sealed to `staff`: every page."""
        return await self._pages(f"/v1/patients/{patient.hex()}/keys/{staff.hex()}", "keys")

    async def _pages(self, path: str, field: str, **query: Any) -> dict:
        """A paged list (`next` the cursor to pass as `after`: its last key), read to its end into one
        answer; a cursor that does not advance is a 502 (a liar would keep the client paging)."""
        out = await self.get_json(path, **query)
        while out.get("next"):
            page = await self.get_json(path, **{**query, "after": out["next"]})
            if page.get("next") is not None and page["next"] <= out["next"]:  # keys only grow
                raise ApiError(502, f"{self.base} answered a {field} page cursor that does not advance")
            out = {**page, field: out[field] + page[field]}
        out.pop("next", None)  # the whole list: no cursor left
        return out

    async def data(self, patient: bytes, **query: Any) -> dict:
        """The patient's data index, every page of it (the API answers at most 1,000 entries a page)."""
        return await self._pages(f"/v1/patients/{patient.hex()}/data", "data", **query)
