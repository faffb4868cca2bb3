"""Bitswap 1.2.0 as a pure state machine: messages in, messages out (no sockets, no clock).

``Engine`` holds both halves of one node's bitswap state:

- the server ledger: what each peer wants from us. A want we cannot answer yet stays in the
  ledger and is answered (block for want-block, HAVE for want-have) once ``blocks_added`` tells
  the engine we hold it; that is how a replica that is still fetching serves peers that asked
  early. DONT_HAVE goes out only when the peer asked for it (``sendDontHave``).
- the client side: which blocks we want from whom. A received block is matched by multihash to
  our wants; a block nobody asked for that is not a recent duplicate is reported as ``unwanted``
  (a corrupted block hashes to a CID nobody wants, so this is how a lying peer shows up).

Replies are returned as ``(peer, Message)`` pairs; the adapter sends each on its own outbound
stream to that peer (bitswap never answers on the asker's stream). ``get_block`` is the only
way the engine looks at storage and must return None for blocks it does not (validly) hold.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .bitswap_pb import DONT_HAVE, HAVE, MAX_ENTRIES, MAX_MESSAGE, WANT_BLOCK, WANT_HAVE, Entry, Message
from .cid import Cid

MAX_BLOCK = 2 * 1024 * 1024  # blocks we send or accept (kubo and Helia allow at least this)
MAX_WANTS_PER_PEER = 8192  # ledger entries kept per peer; the oldest go first
SEND_BUDGET = MAX_MESSAGE - 64 * 1024  # bytes of blocks per outgoing message
REPLY_BUDGET = 16 * 1024 * 1024  # bytes of blocks read to answer one message (the adapter may pass less)
RECENT = 16384  # multihashes we wanted and got, so late duplicates are not counted as bad


@dataclass
class Received:
    """What one inbound message meant for us (besides the replies)."""

    replies: list[tuple[str, Message]] = field(default_factory=list)
    blocks: list[tuple[Cid, bytes]] = field(default_factory=list)  # blocks we wanted
    presences: list[tuple[Cid, int]] = field(default_factory=list)  # HAVE / DONT_HAVE for our wants
    unwanted: int = 0  # blocks that match no want of ours (corrupt or unsolicited)
    duplicates: int = 0
    oversized: int = 0
    bad_wants: int = 0


class Engine:
    def __init__(self, get_block: Callable[[Cid], bytes | None], *, max_block: int = MAX_BLOCK,
                 max_wants_per_peer: int = MAX_WANTS_PER_PEER,
                 has_block: Callable[[Cid], bool] | None = None) -> None:
        self.get_block = get_block
        # a want-have needs no bytes: a cheaper presence check when the store has one
        self.has_block = has_block or (lambda cid: get_block(cid) is not None)
        self.max_block = max_block
        self.max_wants = max_wants_per_peer
        # server: peer -> cid bytes -> Entry, and multihash -> {(peer, cid bytes)} for blocks_added
        self.ledger: dict[str, OrderedDict[bytes, Entry]] = {}
        self._by_mh: dict[bytes, set[tuple[str, bytes]]] = {}
        # client: multihash -> {peer: want type}
        self.wants: dict[bytes, dict[str, int]] = {}
        self._want_cid: dict[bytes, Cid] = {}
        self._recent: OrderedDict[bytes, None] = OrderedDict()

    # ---- client side ---------------------------------------------------------------------------
    def want(self, cids: Cid | Iterable[Cid], peers: Iterable[str], want_type: int = WANT_BLOCK,
             send_dont_have: bool = True) -> list[tuple[str, Message]]:
        """Ask ``peers`` for ``cids``, one message per peer (a want already pending at a peer is
        not re-sent; a want-block supersedes a want-have)."""
        cids = [cids] if isinstance(cids, Cid) else list(cids)
        peers = list(peers)
        per_peer: dict[str, list[Entry]] = {}
        for cid in cids:
            mh = cid.multihash
            asked = self.wants.setdefault(mh, {})
            self._want_cid.setdefault(mh, cid)
            for p in peers:
                if asked.get(p) == WANT_BLOCK or asked.get(p) == want_type:
                    continue
                asked[p] = want_type
                per_peer.setdefault(p, []).append(Entry(cid, 1, False, want_type, send_dont_have))
        return _per_peer(per_peer)

    def cancel(self, cids: Cid | Iterable[Cid], peers: Iterable[str] | None = None) -> list[tuple[str, Message]]:
        """Withdraw our wants (from ``peers``, or from everyone we asked), one message per peer."""
        cids = [cids] if isinstance(cids, Cid) else list(cids)
        only = None if peers is None else set(peers)
        per_peer: dict[str, list[Entry]] = {}
        for cid in cids:
            mh = cid.multihash
            asked = self.wants.get(mh)
            if not asked:
                continue
            for p in [p for p in asked if only is None or p in only]:
                del asked[p]
                per_peer.setdefault(p, []).append(Entry(self._want_cid.get(mh, cid), 1, True))
            # a block already on its way when we withdrew the want is late, not corrupt: counted as
            # a duplicate (its peer stays usable), as a block we hold is
            self._recent[mh] = None
            if not asked:
                self.wants.pop(mh, None)
                self._want_cid.pop(mh, None)
        while len(self._recent) > RECENT:
            self._recent.popitem(last=False)
        return _per_peer(per_peer)

    def got(self, cids: Cid | Iterable[Cid]) -> list[tuple[str, Message]]:
        """We hold ``cids`` now: cancel our want-blocks at the peers still asked. Want-haves stay:
        they ask "tell me when you hold it" (how replicas learn who holds a blob)."""
        cids = [cids] if isinstance(cids, Cid) else list(cids)
        for cid in cids:
            self._recent[cid.multihash] = None
        while len(self._recent) > RECENT:
            self._recent.popitem(last=False)
        out = []
        for cid in cids:
            asked = self.wants.get(cid.multihash, {})
            blocks = [p for p, t in asked.items() if t == WANT_BLOCK]
            if blocks:
                out += self.cancel(cid, blocks)
        return out

    # ---- inbound ---------------------------------------------------------------------------------
    def receive(self, peer: str, msg: Message, send_budget: int = REPLY_BUDGET) -> Received:
        """What `msg` brings and what to answer; at most `send_budget` bytes of blocks are read for
        the answer (the adapter passes what is left of the peer's send queue)."""
        r = Received()
        self._receive_wants(peer, msg, r, send_budget)
        for cid, data in msg.blocks:
            mh = cid.multihash
            if len(data) > self.max_block:
                r.oversized += 1
            elif mh in self.wants:
                r.blocks.append((self._want_cid.get(mh, cid), data))
                self._answered(mh, peer)
            elif mh in self._recent:
                r.duplicates += 1
            else:
                r.unwanted += 1
        for cid, kind in msg.presences:
            asked = self.wants.get(cid.multihash)
            if asked is not None and peer in asked:
                if kind == DONT_HAVE or asked[peer] == WANT_HAVE:
                    self._answered(cid.multihash, peer)  # that peer dropped the want from its ledger
                r.presences.append((cid, kind))
        return r

    def _answered(self, mh: bytes, peer: str) -> None:
        """`peer` answered our want of `mh`; once no peer is asked the want goes (every block fetched
        left one behind, for the life of the node: a review), and a late copy counts as a duplicate."""
        asked = self.wants.get(mh)
        if asked is None:
            return
        asked.pop(peer, None)
        if not asked:
            del self.wants[mh]
            self._want_cid.pop(mh, None)
            self._recent[mh] = None
            while len(self._recent) > RECENT:
                self._recent.popitem(last=False)

    def _receive_wants(self, peer: str, msg: Message, r: Received, budget: int) -> None:
        """Each entry once (a message repeating one held 1 MiB CID 99,800 times had as many read and
        buffered, 100 GiB); blocks read for the answer stop at `budget` bytes, the rest answered HAVE
        (the peer asks again once it has read what came)."""
        book = self.ledger.get(peer)
        if msg.full and book:
            for key in list(book):
                self._drop(peer, key)
        if not msg.entries:
            return
        book = self.ledger.setdefault(peer, OrderedDict())
        blocks: list[tuple[Cid, bytes]] = []
        presences: list[tuple[Cid, int]] = []
        seen: set[tuple[bytes, int, bool]] = set()
        for e in msg.entries:
            key = e.cid.to_bytes()
            if (key, e.want_type, e.cancel) in seen:
                continue
            seen.add((key, e.want_type, e.cancel))
            if e.cancel:
                self._drop(peer, key)
                continue
            if e.want_type == WANT_BLOCK and budget > 0:
                data = self.get_block(e.cid)
                held = data is not None
                budget -= len(data) if data is not None else 0
            else:
                data, held = None, self.has_block(e.cid)
            if held:
                self._drop(peer, key)
                if data is not None:
                    blocks.append((e.cid, data))
                else:
                    presences.append((e.cid, HAVE))
                continue
            if e.send_dont_have:
                presences.append((e.cid, DONT_HAVE))
            book[key] = e  # answered when we get the block
            book.move_to_end(key)
            self._by_mh.setdefault(e.cid.multihash, set()).add((peer, key))
            while len(book) > self.max_wants:
                self._drop(peer, next(iter(book)))
        r.replies.extend((peer, m) for m in pack(blocks, presences))

    def _drop(self, peer: str, key: bytes) -> None:
        book = self.ledger.get(peer)
        e = book.pop(key, None) if book else None
        if e is not None:
            s = self._by_mh.get(e.cid.multihash)
            if s is not None:
                s.discard((peer, key))
                if not s:
                    del self._by_mh[e.cid.multihash]

    # ---- server side -------------------------------------------------------------------------
    def blocks_added(self, cids: Iterable[Cid]) -> list[tuple[str, Message]]:
        """We now hold ``cids``: answer every ledger want waiting for them."""
        per_peer: dict[str, tuple[list[tuple[Cid, bytes]], list[tuple[Cid, int]]]] = {}
        for cid in cids:
            waiting = self._by_mh.get(cid.multihash)
            if not waiting:
                continue
            for peer, key in list(waiting):
                e = self.ledger[peer][key]
                data = self.get_block(e.cid) if e.want_type == WANT_BLOCK else None
                if data is None and (e.want_type == WANT_BLOCK or not self.has_block(e.cid)):
                    continue
                self._drop(peer, key)
                blocks, presences = per_peer.setdefault(peer, ([], []))
                if data is not None:
                    blocks.append((e.cid, data))
                else:
                    presences.append((e.cid, HAVE))
        return [(p, m) for p, (b, h) in per_peer.items() for m in pack(b, h)]

    def peer_gone(self, peer: str) -> None:
        """A peer disconnected: its wantlist is void (it resends the full list on reconnect)."""
        for key in list(self.ledger.get(peer, ())):
            self._drop(peer, key)
        self.ledger.pop(peer, None)
        for mh in [mh for mh, asked in self.wants.items() if peer in asked]:
            self._answered(mh, peer)  # a want no peer is asked for any more goes (they piled up)

    def wanted_by(self, peer: str) -> list[Cid]:
        return [e.cid for e in self.ledger.get(peer, {}).values()]


def merge(replies: list[tuple[str, Message]]) -> list[tuple[str, Message]]:
    """Coalesce messages per peer (entries and presences together; blocks re-packed)."""
    per: dict[str, Message] = {}
    for peer, m in replies:
        acc = per.setdefault(peer, Message())
        acc.entries += m.entries
        acc.full = acc.full or m.full
        acc.blocks += m.blocks
        acc.presences += m.presences
    out = []
    for peer, m in per.items():
        msgs = pack(m.blocks, m.presences)
        if m.entries or m.full:
            if msgs:
                msgs[0].entries, msgs[0].full = m.entries, m.full
            else:
                msgs = [Message(entries=m.entries, full=m.full)]
        out += [(peer, x) for x in msgs]
    return out


def _per_peer(entries: dict[str, list[Entry]]) -> list[tuple[str, Message]]:
    """Each peer's entries in messages of at most MAX_ENTRIES (what a receiver decodes)."""
    return [(p, Message(entries=es[i:i + MAX_ENTRIES])) for p, es in entries.items()
            for i in range(0, len(es), MAX_ENTRIES)]


def pack(blocks: list[tuple[Cid, bytes]], presences: list[tuple[Cid, int]]) -> list[Message]:
    """Split blocks into messages under the 4 MiB message cap (one block per message at worst);
    presences ride on the first message, MAX_ENTRIES to a message."""
    out = [Message(presences=presences[i:i + MAX_ENTRIES]) for i in range(MAX_ENTRIES, len(presences), MAX_ENTRIES)]
    cur = Message(presences=list(presences[:MAX_ENTRIES]))
    size = 0
    for cid, data in blocks:
        if cur.blocks and size + len(data) > SEND_BUDGET:
            out.append(cur)
            cur, size = Message(), 0
        cur.blocks.append((cid, data))
        size += len(data)
    if not cur.empty():
        out.append(cur)
    return out
