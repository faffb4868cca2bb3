"""A client's path to a proven commit (the phone's and the staff client's): submit, wait, and with
the genesis keys take only a commit that proves; when the client's validator does not show one in
time (down, refusing, saying "rejected" without a proof, or forging an answer), the same signed
bytes go to the others: no client trusts a single validator."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import aiohttp

from devices.patient.client import ApiError, NodeClient, retry_after
from devices.patient.verified_reads import VerifiedReader
from node.block import max_faulty, quorum
from node.proof import verify_status
from node.tx import Tx

Upload = Callable[[NodeClient], Awaitable[object]]  # puts a write's standalone blob on that validator

log = logging.getLogger("medchain.phone")
FAILOVER_S = 10.0  # not committed through its validator this long: the transaction goes to the others too


class TxRejected(Exception):
    def __init__(self, status: dict) -> None:
        super().__init__(status.get("result") or status.get("reason") or str(status))
        self.status = status


def _others(client: NodeClient, reader: VerifiedReader | None, validators: list[bytes] | None) -> list[str]:
    """The validators a transaction can fail over to: the reader's other than the client's own,
    with the genesis keys to check their answers by."""
    if reader is None or validators is None:
        return []
    return list(dict.fromkeys(u.rstrip("/") for u in reader.urls if u.rstrip("/") != client.base))


def _refuses(exc: ApiError) -> bool:
    """A refusal of a submission: a 4xx but "already pending or committed" (a 429 here: one past the
    caller's patience, or a lasting one)."""
    return 400 <= exc.status < 500 and "duplicate" not in exc.reason


def _lasting(exc: ApiError) -> bool:
    """A 429 that no short wait lifts: a staff member's emergency reads over the patient's limit
    (node/admission.py), refused until its window ends, or for good."""
    return exc.status == 429 and "break-glass" in exc.reason


def refused_for_good(exc: BaseException) -> bool:
    """Whether a refusal says the signed bytes will not be taken as they are: one (_refuses) that is
    not a wait (408, 429), nor "unknown" (404: lost, not refused), nor about a nonce another
    transaction of the sender holds or has not reached yet (those pass)."""
    return isinstance(exc, ApiError) and _refuses(exc) and exc.status not in (404, 408, 429) \
        and "nonce" not in exc.reason


def _verdict(refusals: dict[str, ApiError], home: str | None = None) -> tuple[ApiError, int]:
    """The refusal most of the validators that refused gave, and how many gave it: compared by
    status and reason with its numbers and ids blanked (honest reasons differ in them: "next is 5",
    "ends in 37 s"); the client's own validator (`home`) counts last in a tie."""
    def key(e: ApiError) -> tuple[int, str]:
        return e.status, re.sub(r"[0-9a-f]{16,}|\d+", "#", e.reason)
    order = sorted(refusals, key=lambda u: u == home)
    counts = Counter(key(refusals[u]) for u in order)
    top, n = counts.most_common(1)[0]
    return next(refusals[u] for u in order if key(refusals[u]) == top), n


async def submit_waiting(client: NodeClient, tx: Tx, sidecar: bytes | None, timeout: float,
                         fail_over: bool) -> tuple[dict | None, float, ApiError | None]:
    """Submit and wait for the commit at the client's validator: (its answer, when it went out, its
    refusal) for wait_proven. A validator that is down, unreachable or refuses it, if the client can
    `fail_over` (it has the genesis keys and a reader's validators), hands the transaction to the
    others at once: no answer, its failover timer run out. A refusal is one validator's word: a
    byzantine one saying "break-glass is off", or "busy, come back in an hour", must not decide the
    outcome; it counts as one of the 2f+1 refusals that do (_failover). Otherwise the error is raised."""
    started = time.monotonic()
    try:
        # with others to ask, a busy validator is waited on no longer than the failover timer
        patience = min(timeout, FAILOVER_S) if fail_over else timeout
        return await client.submit_and_wait(tx.raw, sidecar, min(timeout, 10), patience), started, None
    except (aiohttp.ClientError, TimeoutError, ApiError) as exc:
        if not fail_over:
            raise
        # a refusal is most often honest (the others will say the same): not worth a warning
        log.log(logging.INFO if isinstance(exc, ApiError) else logging.WARNING,
                "validator %s unreachable or refusing (%s): %s goes to the others", client.base, exc, tx.id.hex())
        return None, started, exc if isinstance(exc, ApiError) else _UNREACHABLE


# submit_waiting's "no answer at all": the transaction goes to the others at once
_UNREACHABLE = ApiError(0, "unreachable")


async def submit_proven(client: NodeClient, tx: Tx, sidecar: bytes | None, timeout: float,
                        validators: list[bytes] | None, chain_id: str, reader: VerifiedReader | None,
                        upload: Upload | None = None) -> dict:
    """Submit `tx` (a write with its sidecar) through the client's validator and return its proven
    commit (wait_proven), failing over to the others when the client has the reader and the genesis
    keys to check them by. `upload(c)`: puts a write's standalone blob on validator `c`, which a
    failover validator answering "blob not held" gets (the write's own validator may have died
    before forwarding it)."""
    answer, started, refusal = await submit_waiting(client, tx, sidecar, timeout,
                                                    bool(_others(client, reader, validators)))
    return await wait_proven(client, tx.id.hex(), timeout, validators, chain_id, reader, answer,
                             lambda: client.submit(tx.raw, sidecar), (tx.raw, sidecar), started, refusal, upload)


async def wait_proven(client: NodeClient, txid: str, timeout: float, validators: list[bytes] | None,
                      chain_id: str, reader: VerifiedReader | None, answer: dict | None = None,
                      resubmit: Callable[[], Awaitable[object]] | None = None,
                      item: tuple[bytes, bytes | None] | None = None, started: float | None = None,
                      refusal: ApiError | None = None, upload: Upload | None = None) -> dict:
    """The committed status of `txid` (TxRejected if it did not commit); with the genesis keys, its
    inclusion and result are checked against the certified header and receipt the answer carries
    (no block download), and the reader takes that height as seen. `answer`: what a submission
    with ?wait already said (asked again only if it was not committed yet); `resubmit`: send it again
    if the validator has lost it (NodeClient.wait_committed). `item`, the signed bytes and sidecar:
    with the genesis keys and a reader's validators, a transaction that has not committed through
    its validator within FAILOVER_S is sent to the others too (that validator may be one that
    answers 202 and forwards nothing, or says "rejected" without a proof, or be down: no client
    trusts a single validator). `started`: when the submission went out (time.monotonic()), if it
    already waited; `refusal`: how the client's validator refused it. ApiError: 2f+1 validators
    refused the submission, or none took it and some refused (the refusal most of them gave)."""
    others = _others(client, reader, validators) if item is not None else []
    st = answer if answer is not None and answer.get("status") == "committed" else None
    forged = st is not None and not _proves(txid, st, validators, chain_id, client.base, others)
    if forged or st is None:
        st = None
        waited = 0.0 if started is None else time.monotonic() - started
        t_end = time.monotonic() - waited + timeout
        # refused or unreachable at its submission: the others are asked at once
        first = 0.0 if refusal is not None and others else \
            max(0.0, min(timeout, FAILOVER_S) - waited) if others else timeout
        if not forged and (first > 0 or refusal is None):  # a forger, or one that refused, is not asked again
            try:
                st = await client.wait_committed(txid, first, resubmit)
            except (TimeoutError, ApiError, aiohttp.ClientError) as exc:
                if not others:
                    raise
                log.warning("transaction %s: its validator %s failed (%s)", txid, client.base, exc)
            if st is not None and st["status"] == "committed" \
                    and not _proves(txid, st, validators, chain_id, client.base, others):
                st = None
        # only a proven commit ends it here: "rejected" is that validator's word alone
        if (st is None or st["status"] != "committed") and others and item is not None and reader is not None:
            # the client's own validator refused it, or may hold it (took it, timed out after, "duplicate")
            refused = refusal is not None and _refuses(refusal)
            home = {client.base: refusal} if refused else {}
            st = await _failover(txid, item, others, reader, t_end - time.monotonic(), validators, chain_id, home,
                                 set() if refused else {client.base}, upload)
    if st is None or st["status"] != "committed":
        raise TxRejected(st or {"status": "pending"})
    if validators is not None and reader is not None:  # proven committed at this height: older state is stale now
        reader.saw_height(verify_status(bytes.fromhex(txid), st, validators, chain_id).height)
    return st


def _proves(txid: str, st: dict, validators: list[bytes] | None, chain_id: str, url: str, others: list[str]) -> bool:
    """Whether a commit answer proves (always, without the genesis keys to check it against); one
    that does not is logged when there are others to ask, raised (ProofError) when there are none."""
    if validators is None:
        return True
    try:
        verify_status(bytes.fromhex(txid), st, validators, chain_id)
    except (ValueError, KeyError, TypeError) as exc:
        if not others:
            raise
        log.warning("%s answered a commit of %s that does not prove: %s", url, txid, exc)
        return False
    return True


async def _failover(txid: str, item: tuple[bytes, bytes | None], urls: list[str], reader: VerifiedReader,
                    timeout: float, validators: list[bytes], chain_id: str, refusals: dict[str, ApiError],
                    took: set[str], upload: Upload | None = None) -> dict:
    """PBFT's client, its request not answered in time, sends it to every replica: the same signed
    bytes (never applied twice) to each other validator, then the first proven commit any of them
    shows. An answer whose proof does not check is refused and the next validator asked. A
    validator that refuses the submission for good (not "already pending or committed") holds no
    status for it; one that was down, or answers that it does not know the transaction, is sent it
    again each round, and one that was busy (429/503) once its Retry-After has passed. `refusals`:
    the client's own validator's, if it refused; `took`: it, if it may hold the transaction. Once
    2f+1 of the genesis validators refused, and f+1 of them alike, honest ones did: that refusal is
    raised (ApiError); so it is at the deadline when some refused and none took it (one down, one
    byzantine answering 202 must not turn an honest refusal into a "pending"). One that took it
    leaves the outcome open: "pending"."""
    log.info("transaction %s not committed through its validator: sending it to %d others", txid, len(urls))
    clients = [NodeClient(u, session=reader.session) for u in urls]
    q, f = quorum(len(validators)), max_faulty(len(validators))
    deadline = time.monotonic() + max(1.0, timeout)
    home = next(iter(refusals), None)
    refusals, took = dict(refusals), set(took)

    def final() -> ApiError | None:
        if len(refusals) < q:
            return None
        exc, alike = _verdict(refusals, home)
        return exc if alike > f else None

    def left() -> float:
        return max(0.5, deadline - time.monotonic())

    later: dict[str, float] = {}  # a busy validator's Retry-After: not sent to again before then
    uploaded: set[str] = set()

    async def submit(c: NodeClient) -> None:
        try:
            await c.submit(*item, retry=False)
        except ApiError as exc:
            if upload is None or c.base in uploaded or exc.status != 422 or "blob not held" not in exc.reason:
                raise
            uploaded.add(c.base)  # once: then its answer stands
            log.info("sending %s to %s: its blob first (%s)", txid, c.base, exc)
            try:
                await upload(c)
            except (TimeoutError, aiohttp.ClientError, ApiError):
                raise
            except Exception as bad:  # noqa: BLE001 - it stored something else (BlobMismatch): its refusal stands
                log.warning("uploading the blob of %s to %s: %s", txid, c.base, bad)
                raise exc from None
            await c.submit(*item, retry=False)

    async def send(c: NodeClient, limit: float) -> None:
        try:
            await asyncio.wait_for(submit(c), limit)
            took.add(c.base)
        except ApiError as exc:
            log.info("sending %s to %s: %s", txid, c.base, exc)
            if exc.status in (429, 503) and not _lasting(exc):  # busy: sent again once its Retry-After passed
                later[c.base] = time.monotonic() + retry_after(exc.retry_after)
            elif _refuses(exc):
                refusals[c.base] = exc
            elif "duplicate" in exc.reason:
                took.add(c.base)
        except (TimeoutError, aiohttp.ClientError) as exc:  # down
            log.info("sending %s to %s: %s", txid, c.base, exc)

    def unsent() -> list[NodeClient]:
        now = time.monotonic()
        return [c for c in clients if c.base not in took and c.base not in refusals and later.get(c.base, 0.0) <= now]

    try:
        await asyncio.gather(*(send(c, left()) for c in clients))
        if (verdict := final()) is not None:
            raise verdict
        last: dict = {"status": "pending"}
        while time.monotonic() < deadline:
            rejected, began = len(refusals), time.monotonic()
            # one that was down (or lost it in a restart) gets it again: with the client's own
            # validator dropping it, those may be the only way to a quorum
            await asyncio.gather(*(send(c, min(2.0, left())) for c in unsent()))
            for c in clients:
                if c.base in refusals or c.base not in took:
                    continue
                try:
                    st = await asyncio.wait_for(c.tx(txid, wait=max(1, min(2, deadline - time.monotonic()))),
                                                left() + 1)
                except ApiError as exc:
                    if exc.status == 404:  # took it, then lost it (restarted before forwarding it)
                        took.discard(c.base)
                    continue
                except (TimeoutError, aiohttp.ClientError):
                    continue
                if st["status"] == "committed":
                    if not _proves(txid, st, validators, chain_id, c.base, urls):
                        continue
                    log.warning("transaction %s committed through %s, not through its own validator", txid, c.base)
                    return st
                rejected += st["status"] == "rejected"
                last = st
            if (verdict := final()) is not None:
                raise verdict
            if rejected >= q and not refusals:  # 2f+1 dropped it: it will not commit
                return last
            if time.monotonic() - began < 0.2:  # every one down or refusing at once: no spinning
                await asyncio.sleep(0.2)
        if refusals and not took:
            raise _verdict(refusals, home)[0]
        return last
    finally:
        for c in clients:  # each closes only a session of its own (none when the reader's is shared)
            await c.close()
