"""The PBFT replica's one state object: every field the normal case, the view change and crash
recovery read or write, the phase it is in, and why it ignored what it ignored.

The roles (node/consensus/replica.py: the normal case; viewchange.py: leaving and entering views;
recovery.py: the consensus log) are objects that share this one `ReplicaState`; none keeps state of
its own, so what the replica knows is read here, in one place (indy-plenum's shared consensus data).

Phases (`Phase`):

    NORMAL ──view timer ran out──▶ SUSPECTING ──2f+1 suspect / proof / f+1 ahead──▶ VIEW_CHANGE
      ▲   ◀──a block is delivered──┘                                                  │
      └───────────────────────── the NEW-VIEW is installed ───────────────────────────┘

(any phase may move to VIEW_CHANGE: on proof that the primary equivocated, or when f+1 replicas moved
to later views; a replica restarted in the middle of a view change starts in VIEW_CHANGE.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from node.block import Block, Header, max_faulty, quorum
from node.consensus.messages import Checkpoint, Message, NewView, PrePrepare, ViewChange

Signer = Callable[[bytes], bytes]
Verifier = Callable[[int, bytes, bytes], bool]  # (validator index, digest, sig) -> ok
M = TypeVar("M", bound=Message)
# evidence records kept per (kind, validator): one validator filing junk about itself (a STATUS's view
# is its own choice) filled the log, and a real equivocation was then never recorded (a review);
# in all at most n times the kinds times this
MAX_EVIDENCE = 8
Votes = tuple[tuple[int, bytes], ...]  # (validator index, signature), sorted by index


class Phase(Enum):
    NORMAL = "normal"  # in a view, ordering blocks
    SUSPECTING = "suspecting"  # in a view whose timer ran out: SUSPECT goes out with each heartbeat
    VIEW_CHANGE = "view-change"  # sent (or owes) a VIEW-CHANGE for `view`: waiting for its NEW-VIEW


class Ignored(Enum):
    """Why a message was dropped (counted per reason in ReplicaState.ignored)."""

    BAD_SENDER = "bad-sender"  # not another validator's index
    OLD_VIEW = "old-view"  # a phase message of a view we left
    FUTURE_VIEW = "future-view"  # a phase message of a view we are not in yet
    VIEW_CHANGING = "view-changing"  # a phase message while we wait for a NEW-VIEW (and cannot keep it)
    OUTSIDE_WINDOW = "outside-window"  # a sequence at or below the delivered one, or beyond the window
    BAD_SIGNATURE = "bad-signature"
    UNKNOWN_TYPE = "unknown-type"
    NOT_PRIMARY = "not-primary"  # a pre-prepare from a replica that is not the view's primary
    MALFORMED = "malformed"  # a block or header that does not match the message carrying it
    TOO_LARGE = "too-large"  # a fresh proposal whose transactions pass the block byte budget
    BELOW_FLOOR = "below-floor"  # a pre-prepare at or below the new view's base (committed already)
    NOT_FIXED = "not-fixed"  # a pre-prepare other than the block the new view decided for that sequence
    EQUIVOCATION = "equivocation"  # a second block for one sequence from the primary
    INVALID_BLOCK = "invalid-block"  # the driver answered Execute: it did not execute here (or not yet)
    PRIMARY_PREPARE = "primary-prepare"  # the primary's pre-prepare stands for its prepare
    CONFLICTING_VOTE = "conflicting-vote"  # a second vote for another digest from one validator
    EARLY_VOTES_FULL = "early-votes-full"  # too many digests voted for before the pre-prepare
    WRONG_DIGEST = "wrong-digest"  # a vote for another block than the one we prepared
    BAD_CERTIFICATE = "bad-certificate"  # a certified block whose 2f+1 commits do not verify
    BAD_VIEW_CHANGE = "bad-view-change"  # a VIEW-CHANGE whose certificates do not hold
    BAD_NEW_VIEW = "bad-new-view"  # a NEW-VIEW whose view changes do not hold


@dataclass(frozen=True)
class PreparedCert:
    seq: int
    view: int
    header: Header
    pp_sig: bytes  # the view's primary signed the pre-prepare
    prepares: Votes  # 2f prepares from other replicas

    @property
    def digest(self) -> bytes:
        return self.header.hash

    def wire(self) -> list[object]:
        return [self.seq, self.view, self.header.encode(), self.pp_sig, [list(p) for p in self.prepares]]


@dataclass(frozen=True)
class ViewChangeInfo:
    msg: ViewChange
    last_seq: int
    last_hash: bytes
    prepared: dict[int, PreparedCert]
    blocks: dict[bytes, Block]  # digest -> block, for the prepared certificates it carried
    cert_view: int = 0  # the certificate of the last committed block (last_seq, last_hash)
    cert: Votes = ()


@dataclass
class Instance:
    """One sequence number in the current view."""

    digest: bytes = b""  # the block's hash, once the pre-prepare is in (read only then)
    block: Block | None = None
    pp_sig: bytes = bytes(64)
    executing: PrePrepare | None = None  # the pre-prepare whose block the driver was asked to execute
    prepares: dict[int, bytes] = field(default_factory=dict)
    commits: dict[int, bytes] = field(default_factory=dict)
    sent_commit: bool = False
    committed: bool = False
    early: dict[tuple[bool, bytes], dict[int, bytes]] = field(default_factory=dict)  # votes before the pre-prepare
    seen: dict[tuple[int, int], tuple[bytes, bytes]] = field(default_factory=dict)  # (tag, sender) -> (digest, sig)
    mine: list[Message] = field(default_factory=list)  # what this replica sent, for retransmission
    sent_at: int = 0
    backoff: int = 0  # ms until the next retransmission; doubles each time, so slow rounds are not flooded


@dataclass(eq=False)
class ReplicaState:
    # ---- who we are and the rules (fixed for the replica's life) ----
    chain_id: str
    n: int
    index: int
    sign: Signer
    verify: Verifier
    window: int
    checkpoint_interval: int
    view_timeout_ms: int
    retransmit_ms: int
    status_ms: int
    catchup_batch: int
    push_gap_max: int | None  # a peer further behind pulls by state transfer instead (None: push all)
    f: int = 0
    q: int = 0
    # ---- the view ----
    view: int = 0
    phase: Phase = Phase.NORMAL
    new_view_msg: NewView | None = None  # the NEW-VIEW that installed `view`
    fixed: dict[int, bytes] = field(default_factory=dict)  # seq -> digest the current view must re-propose there
    floor: int = 0  # the new view's base: committed at or below (by a certificate), never re-proposed
    view_changes: int = 0  # views entered through a new view
    # ---- the log: delivered, in flight, prepared ----
    stable: int = 0  # low watermark h: the last stable checkpoint (or where we started)
    last_delivered: int = 0
    last_hash: bytes = bytes(32)
    last_cert: tuple[int, Votes] = (0, ())  # (cert_view, cert) of the last delivered block, for view changes
    next_seq: int = 1
    log: dict[int, Instance] = field(default_factory=dict)
    certified: dict[int, Block] = field(default_factory=dict)  # certified blocks that arrived ahead of their turn
    prepared: dict[int, tuple[PreparedCert, Block]] = field(default_factory=dict)  # highest-view prepared, above delivered
    # ---- checkpoints ----
    checkpoints: dict[int, dict[bytes, dict[int, bytes]]] = field(default_factory=dict)  # seq -> root -> sender -> sig
    own_checkpoint: Checkpoint | None = None
    peer_stable: int = 0  # highest checkpoint 2f+1 others agree on (above ours: we are behind)
    # ---- view change ----
    vcs: dict[int, dict[int, ViewChangeInfo]] = field(default_factory=dict)  # view -> sender -> checked view change
    own_vc: ViewChange | None = None
    vc_sent_at: int = -(10**12)
    vc_started: int = 0
    vc_attempt: int = 0  # view changes since the last delivery: the timeout doubles with each
    early_view: list[Message] = field(default_factory=list)  # messages of the view we wait to enter, replayed in it
    early_keys: set[tuple[int, int, int]] = field(default_factory=set)  # their (tag, sender, seq): one each
    early_bytes: int = 0  # the transaction bytes of their blocks (replica.EARLY_BLOCK_BYTES)
    suspects: dict[int, int] = field(default_factory=dict)  # validator -> when its SUSPECT for our view last came
    round_ema: float = 0.0  # moving average of the time between deliveries while work waited (ms)
    progress_at: int = 0
    progress_seq: int = 0  # the last delivery that carried transactions (a SUSPECT from below it is stale)
    nv_sent: dict[int, int] = field(default_factory=dict)  # validator -> when we last relayed our NEW-VIEW to it
    nv_answered: dict[int, int] = field(default_factory=dict)  # validator -> when we last answered its VIEW-CHANGE
    bad_new_views: set[int] = field(default_factory=set)  # views above ours whose primary sent a NEW-VIEW that failed
    # ---- peers and time ----
    now_ms: int = 0
    last_status: int = -(10**12)
    heard: dict[int, int] = field(default_factory=dict)  # validator -> when we last got a valid message from it
    peer_delivered: dict[int, int] = field(default_factory=dict)
    catchup_sent: dict[int, int] = field(default_factory=dict)
    # ---- what went wrong ----
    evidence: list[dict[str, Any]] = field(default_factory=list)
    evidence_keys: set[tuple[str, int, int, int]] = field(default_factory=set)
    evidence_count: Counter[tuple[str, int]] = field(default_factory=Counter)
    ignored: Counter[Ignored] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.f = max_faulty(self.n)
        self.q = quorum(self.n)

    @property
    def primary(self) -> int:
        return self.view % self.n

    @property
    def is_primary(self) -> bool:
        return self.primary == self.index

    @property
    def changing(self) -> bool:
        """Waiting for the NEW-VIEW of `view` (nothing of the view is ordered meanwhile)."""
        return self.phase is Phase.VIEW_CHANGE

    @property
    def suspecting(self) -> bool:
        return self.phase is Phase.SUSPECTING

    def behind_by(self) -> int:
        """How far the f+1-th most advanced peer is ahead of us (a lower bound no liar can inflate)."""
        ahead = sorted(self.peer_delivered.values(), reverse=True)
        if len(ahead) <= self.f:
            return 0
        return max(0, ahead[self.f] - self.last_delivered, self.peer_stable - self.last_delivered)

    def ignore(self, reason: Ignored) -> None:
        self.ignored[reason] += 1

    def make(self, cls: type[M], seq: int, digest: bytes, **kw: Any) -> M:
        """Our own message of the current view, signed."""
        tmp = cls(self.view, seq, digest, self.index, bytes(64), **kw)
        return cls(self.view, seq, digest, self.index, self.sign(tmp.signing_digest(self.chain_id)), **kw)

    def add_evidence(self, kind: str, who: int, tag: int, view: int, seq: int,
                     a: tuple[bytes, bytes], b: tuple[bytes, bytes]) -> None:
        """Keep two conflicting signed statements of one validator (self-verifying), once, the first
        MAX_EVIDENCE of each kind per validator."""
        key = (kind, who, view, seq)
        if key in self.evidence_keys or self.evidence_count[kind, who] >= MAX_EVIDENCE:
            return
        self.evidence_keys.add(key)
        self.evidence_count[kind, who] += 1
        self.evidence.append({"kind": kind, "validator": who, "tag": tag, "view": view, "seq": seq,
                              "digests": [a[0].hex(), b[0].hex()], "sigs": [a[1].hex(), b[1].hex()]})
