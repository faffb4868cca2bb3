"""What the sans-IO PBFT core asks its driver to do (node/consensus/replica.py returns lists of these)."""

from __future__ import annotations

from dataclasses import dataclass

from node.block import Block
from node.consensus.messages import Message


@dataclass(frozen=True)
class Broadcast:
    msg: Message


@dataclass(frozen=True)
class Send:
    to: int
    msg: Message


@dataclass(frozen=True)
class Catchup:
    """Send replica `to` the committed blocks first..last (the driver reads them from the ledger)."""

    to: int
    first: int
    last: int


@dataclass(frozen=True)
class Execute:
    """Execute `block` (a signed pre-prepare from the primary, in turn and in the window) on its parent,
    and answer with Replica.executed(seq, block.hash, ok). `fresh`: first proposed in this view, so its
    time is checked too. The replica votes for no block before that answer; asked again (the primary
    retransmits), the driver answers once more, so a request it dropped costs nothing."""

    seq: int
    block: Block
    fresh: bool


@dataclass(frozen=True)
class Deliver:
    seq: int
    block: Block  # carries its 2f+1 commit certificate
    certified: bool = False  # True when it arrived as a certified block rather than through our own votes


@dataclass(frozen=True)
class ViewChanged:
    """The replica moved to `view`: waiting for its new view (active=False) or in it (active=True).
    The driver persists the view before acting on what follows; `reproposed` are the blocks the new
    view carries over (in sequence order), which a new primary builds on."""

    view: int
    active: bool
    reproposed: tuple[Block, ...] = ()
    new_view: bytes | None = None  # the NEW-VIEW that installed it (persisted: a restart reinstalls it)


@dataclass(frozen=True)
class Persist:
    """Write this consensus-log record for `seq` durably before doing the actions after it: what this
    replica signed there, and the highest-view prepared certificate it holds (Replica.restore_record)."""

    seq: int
    record: bytes


Action = Broadcast | Send | Catchup | Execute | Deliver | ViewChanged | Persist
