"""State transfer from a certified checkpoint, in process: real LMDB ledgers serve their pinned state
in chunks (node/statesync.py's server), and the client proves what it gets before installing it.
The request-response transport is the one stand-in (a function call per request); the libp2p path is
covered by the devnet test in tests/test_snapshot_join.py."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from node import merkle, statesync
from node.block import Block, Header, vote_digest
from node.checkpoint import (
    MAX_CHUNK_KEYS,
    MAX_STATE_KEYS,
    PAIR_OVERHEAD,
    Checkpoint,
    CheckpointError,
    StateAssembler,
    check_block,
    decode_chunk,
    encode_chunk,
)
from node.crypto.keys import Identity
from node.genesis import Genesis, ValidatorInfo
from node.ledger import Ledger
from node.metrics import Metrics
from node.p2p import peer_id_from_secret
from node.state import keys, smt
from node.state.records import Receipt
from node.statesync import CheckpointClient, CheckpointServer, StateSyncError, decode_offer, decode_request
from node.verify import check_stored_state
from node.wire import decode, encode

CHAIN = "medchain-test-state"
IDS = [Identity.from_seed(b"statesync-%d" % i) for i in range(4)]
KEYS = [i.public_key for i in IDS]
# the validators' libp2p peer ids in the genesis (real ones: genesis checks them as libp2p parses
# them); the tests name the servers peer1..peer3 (this validator is peer0)
PIDS = [peer_id_from_secret(i.p2p_secret) for i in IDS]
NAME_OF = {pid: f"peer{j}" for j, pid in enumerate(PIDS)}
HEIGHT = 60


def certified(state: dict[bytes, bytes], signers=(0, 1, 2), height: int = HEIGHT) -> Block:
    root, _ = smt.update({}.get, state)
    h = Header(CHAIN, height, bytes(32), 0, height, 1_700_000_000_000, merkle.root([]), root, 0)
    unsigned = Block(h, ())
    digest = vote_digest(CHAIN, 0, height, unsigned.hash)
    return Block(h, (), tuple((i, IDS[i].sign(digest)) for i in signers), 0)


def make_state(n: int = 9000) -> dict[bytes, bytes]:
    return {b"k" + os.urandom(16): os.urandom(200) for _ in range(n)}


def serving_ledger(path: Path, block: Block, state: dict[bytes, bytes]) -> Ledger:
    led = Ledger(path, genesis_root=bytes(32))
    _, nodes = smt.update({}.get, state)
    led.install_base(block, state, nodes)
    return led


class Liar(CheckpointServer):
    """Serves its (honest) pinned state with one value changed in every chunk after the first."""

    async def serve(self, peer: str, raw: bytes) -> bytes:
        out = await super().serve(peer, raw)
        kind, _, after = decode_request(raw)
        if kind == 1 and after:
            pairs = decode(out, 1 << 24)
            if pairs:
                pairs[-1][1] = b"forged"
            out = encode(pairs)
        return out


class Net:
    """Requests go straight to the peers' servers (a P2PError-like failure for a refusal)."""

    def __init__(self, servers: dict[str, CheckpointServer]) -> None:
        self.servers = servers
        self.requests = 0

    async def request(self, peer: str, proto: str, payload: bytes, timeout: float, max_response: int) -> bytes:
        assert proto == statesync.PROTOCOL
        self.requests += 1
        out = await self.servers[NAME_OF[peer]].serve("me", payload)
        if len(out) > max_response:
            raise RuntimeError(f"response over {max_response} bytes")
        return out


def validator_host(tmp_path: Path, servers: dict[str, CheckpointServer]) -> SimpleNamespace:
    """A validator's home (its genesis file, its ledger) and what state transfer uses of the validator."""
    home = tmp_path / "mine"
    home.mkdir()
    gen = Genesis(CHAIN, 0, tuple(ValidatorInfo(k.hex(), f"127.0.0.1:{8000 + j}", f"/ip4/127.0.0.1/tcp/1/p2p/{PIDS[j]}")
                                  for j, k in enumerate(KEYS)))
    gen.save(home / "genesis.json")
    led = Ledger(home / "ledger", genesis_root=bytes(32))
    rebuilt = []

    async def in_consensus(fn):
        await fn()

    async def rebuild_from_disk():  # as the validator does: a replica built on the new head
        rebuilt.append(led.head().height)
        host.replica.last_delivered = led.head().height
        return led.head().height, 0

    host = SimpleNamespace(
        genesis=gen, home=home, index=0, ledger=led, net=Net(servers), faults=SimpleNamespace(cut=()),
        replica=SimpleNamespace(last_delivered=0, peer_delivered={1: HEIGHT, 2: HEIGHT, 3: HEIGHT}, window=8, n=4),
        chain_clock=SimpleNamespace(committed=lambda t: None), metrics=Metrics(),
        in_consensus=in_consensus, rebuild_from_disk=rebuild_from_disk, rebuilt=rebuilt)

    def behind_by() -> int:  # as ReplicaState.behind_by with f = 1: the second most advanced peer's lead
        ahead = sorted(host.replica.peer_delivered.values(), reverse=True)
        return max(0, ahead[1] - host.replica.last_delivered) if len(ahead) > 1 else 0
    host.replica.behind_by = behind_by
    return host


def test_a_lying_peer_fails_the_root_check_and_another_peer_is_used(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDCHAIN_STATE_SYNC_BLOCKS", "10")
    monkeypatch.setattr(statesync.random, "shuffle", lambda xs: None)  # peers in order: 1, 2, 3
    state = make_state()
    good = certified(state)
    liar = Liar(serving_ledger(tmp_path / "liar", good, state))
    # a peer whose head carries a certificate of only f+1 = 2 validators (not a quorum)
    weak = CheckpointServer(serving_ledger(tmp_path / "weak", certified(state, signers=(0, 1)), state))
    honest = CheckpointServer(serving_ledger(tmp_path / "honest", good, state))
    v = validator_host(tmp_path, {"peer1": liar, "peer2": weak, "peer3": honest})
    client = CheckpointClient(v)
    assert client.due()
    assert asyncio.run(client.run())
    assert client.stats["failures"] == 2 and client.stats["installed_height"] == HEIGHT
    assert client.stats["keys"] == len(state) and client.stats["installer_peak_mb"] > 0  # its own VmHWM
    m = v.metrics.registry.get_sample_value
    assert (m("medchain_state_transfer_started_total"), m("medchain_state_transfer_installed_total")) == (3, 1)
    assert [m("medchain_state_transfer_refused_total", {"reason": r}) for r in ("block", "state", "peer")] == [1, 1, 0]
    assert m("medchain_state_transfer_chunks_total") == client.stats["chunks"] >= 3
    assert m("medchain_state_transfer_received_bytes_total") > 9000 * 200
    assert m("medchain_state_transfer_installed_height") == HEIGHT
    assert v.rebuilt == [HEIGHT] and v.ledger.base_height() == HEIGHT and v.ledger.head().hash == good.hash
    assert dict(v.ledger.iter_state()) == state and check_stored_state(v.ledger) == []
    assert not client.due()  # installed: the blocks after it come by block sync
    assert sorted(p.name for p in v.home.iterdir()) == ["genesis.json", "ledger"]  # the transfer file went
    for s in (liar, weak, honest):
        s.close()
        s.ledger.close()


def test_the_liar_alone_is_never_installed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDCHAIN_STATE_SYNC_BLOCKS", "10")
    state = make_state(5000)
    liar = Liar(serving_ledger(tmp_path / "liar", certified(state), state))
    v = validator_host(tmp_path, {f"peer{j}": liar for j in (1, 2, 3)})
    client = CheckpointClient(v)
    assert not asyncio.run(client.run())
    assert "is not the state root" in client.stats["last_error"]
    refused = v.metrics.registry.get_sample_value("medchain_state_transfer_refused_total", {"reason": "state"})
    assert refused == client.stats["failures"] == 3
    assert v.ledger.head().height == 0 and v.ledger.base_height() == 0 and not list(v.ledger.iter_state())
    assert not client.due()  # it waits RETRY_S before asking again
    assert sorted(p.name for p in v.home.iterdir()) == ["genesis.json", "ledger"]  # no transfer file left
    liar.close()
    liar.ledger.close()


def test_server_pins_one_view_and_refuses_a_dropped_one(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDCHAIN_STATE_SYNC_BLOCKS", str(HEIGHT))
    state = make_state(100)
    srv = CheckpointServer(serving_ledger(tmp_path / "s", certified(state), state))
    height, raw, keys = decode_offer(asyncio.run(srv.serve("p", encode([0]))))
    assert (height, keys) == (HEIGHT, 100) and check_block(raw, CHAIN, KEYS).header.height == HEIGHT
    pairs = decode_chunk(asyncio.run(srv.serve("p", encode([1, HEIGHT, b""]))))
    assert pairs == sorted(state.items())
    assert decode_chunk(asyncio.run(srv.serve("p", encode([1, HEIGHT, pairs[-1][0]])))) == []
    with pytest.raises(StateSyncError, match="no longer held"):
        asyncio.run(srv.serve("p", encode([1, HEIGHT + 1, b""])))
    for bad in (encode([2]), encode([1, 0, b""]), encode([1, 5]), encode([1, 5, "x"]), b"\xc1", b""):
        with pytest.raises(StateSyncError):
            asyncio.run(srv.serve("p", bad))
    srv.close()
    srv.ledger.close()


class Drip(CheckpointServer):
    """Serves its honest state one pair per chunk, each answer a little late: every chunk checks, and
    without a bound on the whole transfer it would hold the newcomer's catch-up for ever."""

    async def serve(self, peer: str, raw: bytes) -> bytes:
        out = await super().serve(peer, raw)
        if decode_request(raw)[0] == 1:
            await asyncio.sleep(0.005)
            out = encode(decode(out, 1 << 24)[:1])
        return out


class Down(CheckpointServer):
    def __init__(self) -> None:
        self.asked = 0

    async def serve(self, peer: str, raw: bytes) -> bytes:
        self.asked += 1
        raise RuntimeError("not connected")


def test_a_peer_dripping_valid_chunks_is_dropped_as_too_slow_and_asked_last(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDCHAIN_STATE_SYNC_BLOCKS", "10")
    monkeypatch.setattr(statesync.random, "shuffle", lambda xs: None)  # peers in order: 1, 2, 3
    monkeypatch.setattr(statesync, "TIMEOUT_S", 0.2)  # the grace before the rate counts
    monkeypatch.setattr(statesync, "MIN_RATE", 256 << 10)  # the drip sends < 100 KB/s, an honest peer MB/s
    state = make_state(3000)
    good = certified(state)
    drip = Drip(serving_ledger(tmp_path / "drip", good, state))
    down, honest = Down(), CheckpointServer(serving_ledger(tmp_path / "honest", good, state))
    servers: dict[str, CheckpointServer] = {"peer1": drip, "peer2": down, "peer3": down}
    v = validator_host(tmp_path, servers)
    client = CheckpointClient(v)
    assert not asyncio.run(client.run())
    assert "the transfer is too slow" in client.stats["last_error"] and client.stats["failures"] == 1
    assert client.stats["chunks"] < 3000 and down.asked == 2  # dropped long before its end
    assert not client.due() and v.ledger.head().height == 0
    servers["peer3"] = honest  # the next round asks peers 2 and 3 before the one that failed
    client._next_try = 0
    assert asyncio.run(client.run())
    assert down.asked == 3 and client.stats["failures"] == 1 and v.ledger.head().hash == good.hash
    for srv in (drip, honest):
        srv.close()
        srv.ledger.close()


def test_a_transfer_is_bounded_in_rate_time_and_declared_keys() -> None:
    slow, t = statesync.too_slow, statesync.TIMEOUT_S
    slow(0, t)  # within the grace: anything goes
    slow(statesync.MIN_RATE * 10, t + 10)  # exactly the rate
    with pytest.raises(CheckpointError, match="too slow"):
        slow(statesync.MIN_RATE * 10 - 1, t + 10)
    with pytest.raises(CheckpointError, match="ran past"):
        slow(1 << 40, statesync.TRANSFER_MAX_S + 1)
    block = certified({}).encode()
    assert decode_offer(encode([HEIGHT, block, MAX_STATE_KEYS]))[2] == MAX_STATE_KEYS
    with pytest.raises(StateSyncError, match="more than the"):
        decode_offer(encode([HEIGHT, block, MAX_STATE_KEYS + 1]))


def test_a_round_that_fails_unexpectedly_still_waits_before_the_next(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDCHAIN_STATE_SYNC_BLOCKS", "10")
    state = make_state(100)
    honest = CheckpointServer(serving_ledger(tmp_path / "honest", certified(state), state))
    v = validator_host(tmp_path, {f"peer{j}": honest for j in (1, 2, 3)})

    async def in_consensus(fn):
        raise TimeoutError("the consensus task did not take the install in time")
    v.in_consensus = in_consensus
    client = CheckpointClient(v)
    assert client.due()
    with pytest.raises(TimeoutError):
        asyncio.run(client.run())
    assert not client.due()  # not asked again at once, by every peer's next heartbeat
    honest.close()
    honest.ledger.close()


def test_one_peers_offers_never_evict_the_view_another_peer_is_fetching(tmp_path: Path, monkeypatch) -> None:
    """A byzantine validator asking for an offer at every new head must not drop the view an honest
    newcomer is fetching (before, PINS views were kept in all, and the oldest went)."""
    monkeypatch.setenv("MEDCHAIN_STATE_SYNC_BLOCKS", str(HEIGHT))
    state = make_state(100)
    good = certified(state)
    srv = CheckpointServer(serving_ledger(tmp_path / "s", good, state))

    async def go() -> None:
        assert decode_offer(await srv.serve("newcomer", encode([0])))[0] == HEIGHT
        prev = good
        for h in range(HEIGHT + 1, HEIGHT + 4):  # the chain moves on; the other peer asks at each head
            nxt = Block(Header(CHAIN, h, prev.hash, 0, h, prev.header.time_ms + 1, merkle.root([]),
                               good.header.state_root, 0), ())
            srv.ledger.commit_block(nxt, {})
            prev = nxt
            assert decode_offer(await srv.serve("pest", encode([0])))[0] == h
        assert decode_chunk(await srv.serve("newcomer", encode([1, HEIGHT, b""]))) == sorted(state.items())
        with pytest.raises(StateSyncError, match="no longer held"):  # its own oldest view gave way
            await srv.serve("pest", encode([1, HEIGHT + 1, b""]))
        assert decode_chunk(await srv.serve("pest", encode([1, HEIGHT + 3, b""]))) == sorted(state.items())
        with pytest.raises(StateSyncError, match="no longer held"):  # views are per peer
            await srv.serve("newcomer", encode([1, HEIGHT + 3, b""]))
    asyncio.run(go())
    srv.close()
    srv.ledger.close()


def test_a_pinned_view_is_released_when_idle_even_if_no_request_comes(tmp_path: Path, monkeypatch) -> None:
    """A pinned view is an open LMDB read transaction: while it is open LMDB reuses no page freed
    after it, so every block's rewritten pages grow the ledger file. A network's newcomers ask for
    offers at start; the view must close after PIN_IDLE_S on its own, not at a next request that
    may never come (it stayed open for the process's life: 973 MB of ledger for 20,000 writes). A
    ledger with no block pins nothing, nor does a chain younger than the state-transfer threshold
    (cheaper to replay; every validator of a new network asks each peer at start): they answer
    their height alone."""
    monkeypatch.setattr(statesync, "PIN_IDLE_S", 0.2)
    empty = CheckpointServer(Ledger(tmp_path / "empty", genesis_root=bytes(32)))
    state = make_state(100)
    srv = CheckpointServer(serving_ledger(tmp_path / "s", certified(state), state))

    def open_readers(led: Ledger) -> int:  # reader slots holding a transaction (an idle slot shows "-")
        return sum(1 for line in led.env.readers().splitlines()[1:] if not line.rstrip().endswith("-"))

    monkeypatch.setenv("MEDCHAIN_STATE_SYNC_BLOCKS", str(HEIGHT + 1))
    assert decode_offer(asyncio.run(srv.serve("p", encode([0])))) == (HEIGHT, b"", 0)  # its height only
    assert open_readers(srv.ledger) == 0
    monkeypatch.setenv("MEDCHAIN_STATE_SYNC_BLOCKS", str(HEIGHT))

    async def go() -> tuple[int, int]:
        assert await empty.serve("p", encode([0])) == encode([0])
        await srv.serve("p", encode([0]))
        pinned = open_readers(srv.ledger)
        await asyncio.sleep(0.6)
        return pinned, open_readers(srv.ledger)

    pinned, after = asyncio.run(go())
    assert open_readers(empty.ledger) == 0
    assert pinned == 1 and after == 0
    with pytest.raises(StateSyncError, match="no longer held"):  # the released view is gone
        asyncio.run(srv.serve("p", encode([1, HEIGHT, b""])))
    # a peer asking a chunk every few seconds keeps a view only as long as a transfer may take
    monkeypatch.setattr(statesync, "TRANSFER_MAX_S", 0.5)

    async def kept_alive() -> tuple[int, int]:
        await srv.serve("p", encode([0]))
        held = []
        for _ in range(8):
            await asyncio.sleep(0.1)  # well within PIN_IDLE_S (0.2) each time
            try:
                await srv.serve("p", encode([1, HEIGHT, b""]))
                held.append(1)
            except StateSyncError:
                held.append(0)
        return sum(held), open_readers(srv.ledger)

    kept, readers = asyncio.run(kept_alive())
    assert 3 <= kept < 8 and readers == 0, (kept, readers)
    srv.close()
    srv.ledger.close()
    empty.close()
    empty.ledger.close()


def test_chunks_are_checked_in_order_and_within_limits() -> None:
    state = {b"k%04d" % i: b"v%d" % i for i in range(50)}
    cp = Checkpoint(certified(state), len(state))
    items = sorted(state.items())
    asm = StateAssembler(cp)
    asm.add(items[:20])
    with pytest.raises(CheckpointError, match="out of order or repeated"):
        asm.add(items[19:25])  # a repeated key
    with pytest.raises(CheckpointError, match="out of order"):
        StateAssembler(cp).add([items[1], items[0]])
    with pytest.raises(CheckpointError, match="empty state chunk"):
        StateAssembler(cp).add([])
    with pytest.raises(CheckpointError, match="more state pairs than"):
        StateAssembler(Checkpoint(cp.block, 10)).add(items[:11])
    with pytest.raises(CheckpointError, match="bytes before its root"):
        StateAssembler(cp, max_bytes=100 + PAIR_OVERHEAD).add(items)
    ok = StateAssembler(cp)
    ok.add(items)
    ok.finish()
    assert ok.sink.state == state
    for bad in (encode(1), encode([[b"", b"v"]]), encode([[b"k"]]), encode([["k", b"v"]]),
                encode([[b"k", b"v"]] * (MAX_CHUNK_KEYS + 1)), b"\xc1", encode([[b"k", b"v"]]) + b"\x00"):
        with pytest.raises(CheckpointError):
            decode_chunk(bad)
    assert decode_chunk(encode_chunk(items)) == items
    with pytest.raises(CheckpointError, match="another|chain"):
        check_block(cp.block.encode(), "medchain-other", KEYS)
    with pytest.raises(CheckpointError, match="does not decode"):
        check_block(b"junk", CHAIN, KEYS)


def test_only_a_fresh_validator_whose_peers_are_far_ahead_asks_for_a_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """A young network asks nobody for offers once f+1 peers have answered the first rounds (each offer
    pins a read transaction on the peer: asked by every validator every few seconds, that grew a
    24 MiB ledger disk full), f liars cannot make a validator throw its history away for a height
    that does not exist, and one that starts with a history keeps it."""
    monkeypatch.setenv("MEDCHAIN_STATE_SYNC_BLOCKS", "10")
    state = make_state(10)
    near = CheckpointServer(serving_ledger(tmp_path / "near", certified(state, height=9), state))
    v = validator_host(tmp_path, {f"peer{j}": near for j in (1, 2, 3)})
    client = CheckpointClient(v)
    v.replica.peer_delivered = {}
    assert client.due() and not asyncio.run(client.run())  # every peer answers 9: not far enough ahead
    client._next_try = 0
    v.replica.peer_delivered = {1: 500, 2: 9, 3: 9}  # one peer (maybe lying) far ahead, f+1 near
    assert not client.due()
    v.replica.peer_delivered = {1: 500, 2: 400, 3: 9}
    assert client.due()
    # up to a PBFT window (8 here) past the threshold it still counts as new: that many blocks can come
    # from its peers' queued messages before it hears how far behind it is
    v.replica.peer_delivered = {1: 500, 2: 400, 3: 400}
    v.replica.last_delivered = 17
    assert client.due()
    v.replica.last_delivered = 18  # not fresh any more: it keeps its history and replays
    assert not client.due()
    # a validator that starts with a history never asks, however far ahead its peers say they are
    (tmp_path / "old").mkdir()
    old = CheckpointClient(validator_host(tmp_path / "old", {}))
    old.v.replica.last_delivered = 18
    assert not old.due()
    old.v.replica.peer_delivered = {1: 5000, 2: 5000, 3: 5000}
    assert not old.due()
    for led in (v.ledger, old.v.ledger, near.ledger):
        led.close()
    near.close()


def test_transactions_are_located_by_their_receipts_and_one_below_the_base_is_known_but_not_held(tmp_path) -> None:
    """The ledger keeps no index of its own: tx_location reads the receipt in the state. After a
    checkpoint, a transaction executed below it is still known (so a replay is refused at admission)
    but has no location here: its block is not held."""
    old, at = os.urandom(32), os.urandom(32)
    state = {**make_state(10), keys.receipt(old): encode(Receipt(HEIGHT - 5, 3, 0)),
             keys.receipt(at): encode(Receipt(HEIGHT, 0, 0))}
    led = serving_ledger(tmp_path / "ledger", certified(state), state)
    try:
        assert led.tx_location(at) == (HEIGHT, 0)
        assert led.tx_location(old) is None and led.tx_location(os.urandom(32)) is None
        with led.snapshot() as snap:
            assert snap.has_tx(old) and snap.has_tx(at) and not snap.has_tx(os.urandom(32))
    finally:
        led.close()


def test_an_installer_past_its_time_is_killed_and_nothing_is_installed(tmp_path: Path, monkeypatch) -> None:
    """The replica waits, paused, for the installer process: one that hangs (a slow disk, a bug) is
    killed after its budget and the transfer counts as failed, instead of holding the validator."""
    monkeypatch.setenv("MEDCHAIN_STATE_SYNC_BLOCKS", "10")
    marker = f"medchain-hung-installer-{os.getpid()}-{id(tmp_path)}"
    monkeypatch.setattr(statesync, "INSTALLER", (sys.executable, "-c", f"import time; time.sleep(600)  # {marker}"))
    monkeypatch.setattr(statesync, "INSTALL_TIMEOUT_S", 1.0)
    state = make_state(2000)
    honest = CheckpointServer(serving_ledger(tmp_path / "honest", certified(state), state))
    v = validator_host(tmp_path, {f"peer{j}": honest for j in (1, 2, 3)})
    client = CheckpointClient(v)
    assert not asyncio.run(client.run())
    assert "did not finish within" in client.stats["last_error"], client.stats
    assert client.stats["failures"] == 3  # each peer's, each installer killed
    running = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, marker)]
    assert not running, "the installer outlived its budget"
    assert v.ledger.head().height == 0 and not list(v.ledger.iter_state())
    assert sorted(p.name for p in v.home.iterdir()) == ["genesis.json", "ledger"]
    honest.close()
    honest.ledger.close()


def _cmdline_has(proc: Path, marker: str) -> bool:
    try:
        return marker.encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False


def test_a_transfer_takes_at_most_a_third_of_the_disk_room_above_the_reserve(tmp_path: Path, monkeypatch) -> None:
    """A lying peer can declare and send a state that never proves: what a transfer may write before
    its root check is bounded by the home's filesystem (a third of its room above the validator's disk
    reserve: the transfer file, the tree proven apart, then the installed ledger), not only by
    MAX_STATE_BYTES. With no
    room every offer is refused before a chunk is asked for; with room for the offer's count but not
    its bytes, the transfer stops once the chunks pass it. Nothing is installed either way."""
    monkeypatch.setenv("MEDCHAIN_STATE_SYNC_BLOCKS", "10")
    state = make_state(200)
    honest = CheckpointServer(serving_ledger(tmp_path / "honest", certified(state), state))
    v = validator_host(tmp_path, {"peer1": honest, "peer2": honest, "peer3": honest})
    st = os.statvfs(v.home)
    monkeypatch.setenv("MEDCHAIN_DISK_RESERVE_MB", str(st.f_bavail * st.f_frsize // 2**20 + 1024))
    assert statesync.transfer_budget(v.home) == 0
    client = CheckpointClient(v)
    assert not asyncio.run(client.run())
    assert client.stats["failures"] == 3 and client.stats["chunks"] == 0
    assert "more than this disk has room for" in client.stats["last_error"]
    monkeypatch.delenv("MEDCHAIN_DISK_RESERVE_MB")
    assert statesync.transfer_budget(v.home) > 0
    room = len(state) * PAIR_OVERHEAD + 1000  # the count fits, the ~220 bytes of each pair do not
    monkeypatch.setattr(statesync, "transfer_budget", lambda home: room)
    client = CheckpointClient(v)
    assert not asyncio.run(client.run())
    assert f"the state passes {room} bytes before its root was checked" in client.stats["last_error"]
    assert v.ledger.head().height == 0 and not (v.home / statesync.TRANSFER_FILE).exists()


def test_a_new_validator_asks_until_f_plus_1_peers_answer_whatever_it_replayed_meanwhile(
        tmp_path: Path, monkeypatch) -> None:
    """The race CI hit: block sync (on a stable checkpoint's evidence) replayed the newcomer past its
    fresh window before f+1 heartbeats arrived, and the one round it was allowed never came. Now a
    validator that starts new asks at once, with no heartbeat heard, and again (RETRY_S apart) until
    f+1 peers have answered with their live heights, however far it replayed meanwhile."""
    monkeypatch.setenv("MEDCHAIN_STATE_SYNC_BLOCKS", "10")
    monkeypatch.setattr(statesync.random, "shuffle", lambda xs: None)  # peers in order: 1, 2, 3
    far = 600
    state = make_state(100)
    honest = CheckpointServer(serving_ledger(tmp_path / "honest", certified(state, height=far), state))
    down = Down()
    servers: dict[str, CheckpointServer] = {"peer1": down, "peer2": down, "peer3": honest}
    v = validator_host(tmp_path, servers)
    v.replica.peer_delivered = {}  # no heartbeat heard yet
    client = CheckpointClient(v)
    assert client.due()  # started new: asks at once
    v.replica.last_delivered = far + 1  # peer 3's offer is behind what it holds: not taken
    assert not asyncio.run(client.run())
    assert down.asked == 2 and client.stats["attempts"] == 0 and not client.due()  # RETRY_S apart
    client._next_try = 0
    v.replica.last_delivered = 48  # NEW_REPLAY (4) thresholds of 10 and a window of 8: it keeps that
    assert not client.due()
    v.replica.last_delivered = 40  # replayed far past its fresh window (10 + 8), one peer answered
    assert client.due()
    assert asyncio.run(client.run())
    assert client.stats["installed_height"] == far and v.ledger.head().height == far
    client._next_try = 0
    assert not client.due()  # installed: it asks nobody again
    # f+1 answers end it: a new validator whose peers are level with it stops asking
    (tmp_path / "b").mkdir()
    other = CheckpointClient(validator_host(tmp_path / "b", {f"peer{j}": honest for j in (1, 2, 3)}))
    other.v.replica.peer_delivered = {}
    assert other.due()  # it started new
    other.v.replica.last_delivered = far - 5  # and replayed to within the threshold of its peers
    assert not asyncio.run(other.run())
    other._next_try = 0
    assert other.stats["attempts"] == 0 and not other.due()
    # a far offer that fails (a forged state, here) is no answer: f+1 of them do not end the asking
    (tmp_path / "c").mkdir()
    big = make_state(5000)  # more than one chunk: the Liar forges every chunk after the first
    liar = Liar(serving_ledger(tmp_path / "liar", certified(big, height=far), big))
    lied_to = CheckpointClient(validator_host(tmp_path / "c", {f"peer{j}": liar for j in (1, 2, 3)}))
    lied_to.v.replica.peer_delivered = {}
    assert lied_to.due() and not asyncio.run(lied_to.run())
    lied_to._next_try = 0
    assert lied_to.stats["failures"] == 3 and lied_to.due()
    for led in (v.ledger, other.v.ledger, lied_to.v.ledger, honest.ledger, liar.ledger):
        led.close()
    honest.close()
    liar.close()
