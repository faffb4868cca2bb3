"""The deterministic simulated network for the PBFT tests and the soak benchmark: seeded, replayable.

Shared by tests/test_consensus.py, tests/test_viewchange.py and bench/test_consensus_soak.py."""

from __future__ import annotations

import random

from node import merkle
from node.block import GENESIS_PREV, Block, Header, quorum, verify_cert
from node.consensus import (
    Broadcast,
    Catchup,
    Deliver,
    Execute,
    Persist,
    PrePrepare,
    Replica,
    Send,
    ViewChanged,
    decode_message,
)
from node.consensus.recovery import decode_record
from node.crypto import ecdsa
from node.crypto.keys import Identity

CHAIN = "pbft-test"
T0 = 1_700_000_000_000
IDS = [Identity.from_seed(b"validator-%d" % i) for i in range(8)]  # index 7 is never a validator


def pubs(n):
    return [IDS[i].public_key for i in range(n)]


class Driven(Replica):
    """A replica with the smallest driver: each Execute is answered at once, `check_block(block)`
    standing for the execution (the protocol tests around it need no ledger). The raw contract,
    Execute out and `executed` in, is tested on a plain Replica in tests/test_consensus.py."""

    def __init__(self, *args, check_block=None, **kw):
        super().__init__(*args, **kw)
        self.check_block = check_block or (lambda b: True)

    def drive(self, acts):
        out = []
        for a in acts:
            if isinstance(a, Execute):
                out += self.drive(self.executed(a.seq, a.block.hash, self.check_block(a.block)))
            else:
                out.append(a)
        return out

    def on_message(self, msg):
        return self.drive(super().on_message(msg))

    def tick(self, now_ms, pending=False):
        return self.drive(super().tick(now_ms, pending))

    def offer_certified(self, b, digest=None, seq=None):
        return self.drive(super().offer_certified(b, digest, seq))


def raw_replica(n, i, **kw):
    keys = pubs(n)
    return Replica(CHAIN, n, i, IDS[i].sign, lambda idx, d, s: ecdsa.verify(keys[idx], d, s), **kw)


def make_replica(n, i, **kw):
    keys = pubs(n)
    return Driven(CHAIN, n, i, IDS[i].sign, lambda idx, d, s: ecdsa.verify(keys[idx], d, s), **kw)


def make_block(seq, n=4, view=0, txs=(), prev=GENESIS_PREV, proposer=None, salt=b""):
    txs = tuple(txs)
    h = Header(CHAIN, seq, prev, view, seq, T0 + seq, merkle.root([ecdsa.sha256(t) for t in txs]),
               ecdsa.sha256(b"state-%d" % seq + salt), view % n if proposer is None else proposer)
    return Block(h, txs)


def signed(cls, sender, view, seq, digest, signer=None, **kw):
    tmp = cls(view, seq, digest, sender, bytes(64), **kw)
    sig = IDS[sender if signer is None else signer].sign(tmp.signing_digest(CHAIN))
    return cls(view, seq, digest, sender, sig, **kw)


def pre_prepare(block, sender=None):
    h = block.header
    return signed(PrePrepare, h.proposer if sender is None else sender, h.view, h.seq, block.hash, block=block)


def sent(actions, cls):
    return [a.msg for a in actions if isinstance(a, Broadcast) and isinstance(a.msg, cls)]


def delivered(actions):
    return [a for a in actions if isinstance(a, Deliver)]


def recover_replica(n, i, ledger, view, nv, log, now, **kw):
    """A fresh replica from what survives a crash, reloaded as node/validator.py does: the delivered
    blocks (the ledger), the persisted view and its NEW-VIEW, then the consensus-log records."""
    last = ledger[-1] if ledger else None
    block_view = last.cert_view if last else 0
    view = max(view, block_view)
    r = make_replica(n, i, last_delivered=len(ledger), last_hash=last.hash if last else GENESIS_PREV,
                     last_cert=(last.cert_view, last.cert) if last else (0, ()), view=view,
                     awaiting_new_view=view > block_view, **kw)
    r.state.now_ms = now
    if nv is not None:
        awaited = r.changing
        assert r.reinstall(decode_message(nv)) or not awaited
    for seq, raw in sorted(log.items()):
        if seq > r.last_delivered:
            r.restore_record(seq, decode_record(raw))
    r.resume_view_change()
    return r


class HandNode:
    """One replica of a hand-scheduled network, with the driver's persistence (ledger, view, NEW-VIEW,
    consensus-log records) so that crashes and restarts are modelled exactly."""

    def __init__(self, n, i):
        self.n, self.i = n, i
        self.ledger = []
        self.disk_view, self.disk_nv, self.disk_log = 0, None, {}
        self.r = make_replica(n, i)

    def handle(self, acts, net):
        for a in acts:
            if isinstance(a, Deliver):
                self.ledger.append(a.block)
                self.disk_log.pop(a.seq, None)
            elif isinstance(a, ViewChanged):
                self.disk_view, self.disk_nv = a.view, a.new_view
            elif isinstance(a, Persist):
                self.disk_log[a.seq] = a.record
            elif isinstance(a, Broadcast):
                net.pending += [(self.i, d, a.msg) for d in range(self.n) if d != self.i]
            elif isinstance(a, Send):
                net.pending.append((self.i, a.to, a.msg))
            elif isinstance(a, Catchup):
                for s in range(a.first, a.last + 1):
                    net.pending.append((self.i, a.to, self.r.certified_message(self.ledger[s - 1])))

    def restart(self, now):
        self.r = recover_replica(self.n, self.i, self.ledger, self.disk_view, self.disk_nv, self.disk_log, now)


class HandNet:
    """Messages wait in `pending` as (src, dst, msg) until a test delivers or drops them by predicate."""

    def __init__(self, n):
        self.n, self.now, self.pending = n, 0, []
        self.nodes = [HandNode(n, i) for i in range(n)]

    def deliver(self, pred, limit=10**6):
        k = 0
        while k < limit:
            idx = next((j for j, (s, d, m) in enumerate(self.pending) if pred(s, d, m)), None)
            if idx is None:
                return k
            s, d, m = self.pending.pop(idx)
            self.inject(d, m)
            k += 1
        return k

    def inject(self, dst, msg):
        node = self.nodes[dst]
        node.handle(node.r.on_message(decode_message(msg.encode())), self)

    def drop(self, pred):
        self.pending = [p for p in self.pending if not pred(*p)]

    def tick(self, who, dt=100, pending=True):
        self.now += dt
        for i in who:
            self.nodes[i].handle(self.nodes[i].r.tick(self.now, pending=pending), self)

    def propose_all(self, who):
        for i in who:
            r = self.nodes[i].r
            if r.can_propose() and r.next_seq == r.last_delivered + 1:
                b = make_block(r.next_seq, view=r.view, proposer=i, prev=r.last_hash, txs=[b"t%d" % r.next_seq])
                self.nodes[i].handle(r.propose(b), self)

    def assert_no_fork(self):
        chains = [[b.hash for b in nd.ledger] for nd in self.nodes]
        for a in chains:
            for b in chains:
                k = min(len(a), len(b))
                assert a[:k] == b[:k], "fork"


class SimNet:
    """Every Broadcast goes, encoded, to every other replica through one queue that is popped in random
    order, with random duplicates and (if lossy) drops of messages from at most f non-primary senders per
    sequence number, so that a quorum always remains. Whichever replica is the primary of an active view
    proposes; `crashed` replicas neither send nor receive, `cut` pairs cannot reach each other; time
    advances 100 ms per tick. Everything is drawn from one seeded generator: a run replays exactly."""

    def __init__(self, n, seed, lossy=False, dup=0.2, silent=(), p_any=0.0, **kw):
        self.n, self.f, self.rng = n, (n - 1) // 3, random.Random(seed)
        self.kw = {"check_block": Block.check_tx_root, **kw}
        self.replicas = [make_replica(n, i, **self.kw) for i in range(n)]
        self.queue: list[tuple[int, bytes]] = []
        self.out: list[list[Deliver]] = [[] for _ in range(n)]
        self.lossy, self.dup, self.silent = lossy, dup, set(silent)
        self.crashed: set[int] = set()
        self.paused: dict[int, list[bytes]] = {}  # SIGSTOP: no ticks, what arrives waits until it resumes
        self.cut: set[frozenset] = set()
        self.views: list[int] = [0] * n  # the view each replica persisted (ViewChanged)
        # what each replica persisted, as node/validator.py does: consensus-log records and the NEW-VIEW
        self.disk: list[dict] = [{"log": {}, "nv": None} for _ in range(n)]
        self.loss: dict[int, tuple[set[int], float]] = {}
        self.dropped, self.p_any, self.now = 0, p_any, 0

    def _loss(self, seq):
        if seq not in self.loss:
            k = self.rng.randint(0, self.f) if self.lossy else 0
            backups = [i for i in range(self.n) if i != self.replicas[0].primary]
            self.loss[seq] = (set(self.rng.sample(backups, k)) | self.silent, self.rng.choice((0.3, 1.0)))
        return self.loss[seq]

    def send(self, src, actions):
        for a in actions:
            if isinstance(a, Deliver):
                self.out[src].append(a)
                self.disk[src]["log"].pop(a.seq, None)  # the ledger commit deletes the record
                continue
            if isinstance(a, ViewChanged):
                self.views[src] = a.view
                self.disk[src]["nv"] = a.new_view
                continue
            if isinstance(a, Persist):
                self.disk[src]["log"][a.seq] = a.record
                continue
            if isinstance(a, Catchup):  # the driver reads the blocks from its ledger
                for s in range(a.first, a.last + 1):
                    self._put(src, a.to, self.replicas[src].certified_message(self.out[src][s - 1].block))
                continue
            for dst in [a.to] if isinstance(a, Send) else range(self.n):
                if dst != src:
                    self._put(src, dst, a.msg)

    def _put(self, src, dst, msg):
        lossy, p = self._loss(msg.seq)
        if src in self.crashed or dst in self.crashed or frozenset((src, dst)) in self.cut:
            self.dropped += 1
            return
        if src in self.silent or (src in lossy and self.rng.random() < p) or self.rng.random() < self.p_any:
            self.dropped += 1
            return
        raw = msg.encode()
        for _ in range(2 if self.rng.random() < self.dup else 1):
            if dst in self.paused:
                self.paused[dst].append(raw)
            else:
                self.queue.append((dst, raw))

    def step(self):
        dst, raw = self.queue.pop(self.rng.randrange(len(self.queue)))
        if dst in self.paused:
            self.paused[dst].append(raw)
        elif dst not in self.crashed:
            self.send(dst, self.replicas[dst].on_message(decode_message(raw)))

    def crash(self, i):
        self.crashed.add(i)

    def pause(self, i):
        self.paused[i] = []

    def resume(self, i):
        """SIGCONT: the overdue tick runs first, then the messages that waited (as the driver may order them)."""
        held = self.paused.pop(i)
        self.send(i, self.replicas[i].tick(self.now, pending=True))
        self.queue += [(i, raw) for raw in held]

    def restart(self, i):
        self.replicas[i] = recover_replica(self.n, i, [d.block for d in self.out[i]], self.views[i],
                                           self.disk[i]["nv"], self.disk[i]["log"], self.now, **self.kw)
        self.crashed.discard(i)

    def _propose(self, r, count):
        seq = r.next_seq
        if seq - 1 == r.last_delivered:
            prev = r.last_hash
        elif seq - 1 in r.state.log and r.state.log[seq - 1].block is not None:
            prev = r.state.log[seq - 1].block.hash
        else:
            return None
        txs = [self.rng.randbytes(self.rng.randint(1, 40)) for _ in range(self.rng.randint(0, 3))]
        b = make_block(seq, self.n, view=r.view, txs=txs, prev=prev, proposer=r.index)
        self.send(r.index, r.propose(b))
        return b

    def tick_all(self, pending=True):
        """100 ms pass for every replica that runs."""
        self.now += 100
        for i, r in enumerate(self.replicas):
            if i not in self.crashed and i not in self.paused:
                self.send(i, r.tick(self.now, pending=pending(r) if callable(pending) else pending))

    def run(self, count, pipeline=4, max_ticks=0, until=None, idle_after=False):
        """Propose up to `count` blocks while running the network; `idle_after`: work waits (the view
        timer runs) only at a replica that has not delivered `count` yet, so a finished load is quiet."""
        proposed, ticks = [], 0
        pending = (lambda r: r.last_delivered < count) if idle_after else True
        until = until or (lambda: all(len(self.out[i]) >= count for i in range(self.n) if i not in self.crashed))
        while not until():
            live = [r for i, r in enumerate(self.replicas) if i not in self.crashed and i not in self.paused]
            can = [r for r in live if r.can_propose() and r.in_flight() < pipeline and r.next_seq <= count
                   and r.index not in self.silent]
            # a tick (100 ms) about once per queue's worth of deliveries: each message takes ~one tick
            if ticks < max_ticks and (not self.queue or self.rng.random() < 1 / (1 + len(self.queue))):
                ticks += 1
                self.tick_all(pending)
            elif can and (not self.queue or self.rng.random() < 0.3):
                b = self._propose(self.rng.choice(can), count)
                if b is not None:
                    proposed.append(b)
                elif not self.queue:
                    return proposed
            elif self.queue:
                self.step()
            else:
                return proposed
        return proposed

    def check_agreement(self, proposed, replicas=None, count=None):
        """Every replica delivered the same certified blocks, each one that some primary proposed; with
        no view change (count=None) exactly the proposals, in order."""
        keys = pubs(self.n)
        replicas = [r for r in range(self.n) if r not in self.crashed] if replicas is None else replicas
        by_hash = {b.hash: b for b in proposed}
        ref = self.out[replicas[0]]
        for r in replicas:
            got = self.out[r]
            want = len(proposed) if count is None else count
            assert len(got) >= want, f"replica {r} delivered {len(got)} < {want}"
            assert [d.seq for d in got] == list(range(1, len(got) + 1)), f"replica {r}"
            n = min(len(got), len(ref))
            assert [d.block.hash for d in got[:n]] == [d.block.hash for d in ref[:n]], f"fork at replica {r}"
            if count is None:
                assert [d.block.hash for d in got] == [b.hash for b in proposed]
            prev = GENESIS_PREV
            for d in got:
                b = by_hash[d.block.hash]
                assert d.block.txs == b.txs and d.block.check_tx_root() and d.block.header.prev_hash == prev
                prev = d.block.hash
                assert verify_cert(d.block, keys)
                assert len({i for i, _ in d.block.cert}) >= quorum(self.n)
            if count is None:
                assert self.replicas[r].last_delivered == len(proposed) and self.replicas[r].state.log == {}



def chaos_run(seed, n=4, blocks=12):
    """A seeded random schedule of crashes, restarts and partitions (at most f faulty at a time) over a
    lossy, duplicating, reordering network, then healing: every replica must end with the same
    certified chain."""
    net = SimNet(n, seed, dup=0.1, p_any=0.02)  # and 2% of all messages lost
    f, rng, target = (n - 1) // 3, net.rng, 0
    for _ in range(rng.randint(2, 5)):
        target += rng.randint(1, 3)
        faulty = rng.sample(range(n), f)
        kind = rng.choice(("crash", "cut"))
        for v in faulty:
            if kind == "crash":
                net.crash(v)
            else:
                net.cut |= {frozenset((v, j)) for j in range(n) if j != v}
        net.run(target, max_ticks=200, until=lambda t=target, bad=tuple(faulty): all(
            len(net.out[i]) >= t for i in range(n) if i not in bad))
        for v in faulty:
            if v in net.crashed:
                net.restart(v)
        net.cut = set()
    net.run(blocks, max_ticks=600)
    net.check_agreement([d.block for o in net.out for d in o], count=blocks)
    return net
