"""The fleet's model: its configuration, one emulated phone's state, and what the proxy keeps about
each transaction it sends (devices/load/fleet.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from devices.patient import envelope
from devices.wearable.ble import LinkParams
from node.crypto.keys import Identity
from node.tx import Tx, data_type_id

KINDS = ["heart_rate", "spo2", "body_temperature", "blood_pressure", "glucose"]
ALL_TYPES = tuple(sorted(data_type_id(k) for k in KINDS))
HISTORY_EPOCHS = 12  # as devices/patient/phone.py: past key epochs a grant carries
PHONE_KINDS = ("write", "grant")  # signed by a phone, in its one nonce run


@dataclass
class FleetConfig:
    wearables: int = 50
    phones: int = 10
    seconds: float = 5.0
    window_s: float = 10.0  # natural mode: how long a phone collects one type before it writes
    rate: float = 0.0  # open loop: windows per second over the fleet (0: natural windows)
    closed: bool = False  # closed loop: one write in flight per phone
    reads: float = 0.0  # staff reads per second (open loop)
    read_fetch: float = 1.0  # fraction of committed reads whose blob is fetched and decrypted
    grants: float = 0.0  # grant changes / revokes per second (open loop)
    staff: int = 2
    link: LinkParams = field(default_factory=LinkParams)
    tick_ms: float = 20.0
    # a proxy lane holds its first queued transaction this long before it posts, so one POST carries
    # a few ticks' worth: each POST costs the proxy and the validator ~0.2 ms whatever it carries
    linger_ms: float = 40.0
    # concurrent uploads over the fleet: 2,000 real phones would each have their own connection, so
    # a slow validator must not throttle the offered load through a small client pool
    uploads_in_flight: int = 512
    seed: int = 1
    drain_timeout: float = 300.0  # after the run: how long to wait for every transaction to commit


@dataclass
class Meta:
    kind: str  # write | read | grant | profile
    owner: int  # phone index (write, grant) or staff index (read, profile)
    t_sched: float  # when the workload asked for it (monotonic)
    t_sent: float = 0.0
    dtype: int = 0
    cid: bytes = b""  # binary CID (its text form only when a staff read fetches it)
    n: int = 0  # readings in the window
    digest: bytes = b""  # SHA-256 of the window's plaintext (compared after decryption)
    body: object = None
    tx: Tx | None = None
    tries: int = 0
    readings: list | None = None
    blob: bytes = b""
    epoch: int = 0
    t0: int = 0
    t1: int = 0
    patient: int = -1  # reads: the phone whose data is read
    done: bool = False  # committed or refused
    final: bool = False  # the end-of-run flush of partial windows: counted, but not in rate or latency
    overloaded: bool = False  # refused with 429/503 and sent again: counted once in the send rate


class FleetPhone:
    """One emulated phone's state in the fleet: its keys, nonce, key epochs, buffers and grants."""

    __slots__ = ("addr", "blocked", "bufs", "chain_epochs", "chain_types", "cids", "clinician", "epochs", "granted",
                 "grants_changed", "ident", "keys", "master",
                 "nonce", "outstanding", "resync", "v")

    def take_epochs(self, acct: dict) -> None:
        """The key epochs of an account answer (NodeClient.account) as the phone's own, never below
        those the followed blocks set (proven with the genesis): a validator answering an older epoch
        would have the next windows sealed under a key a revoked clinician holds."""
        epochs = {data_type_id(k): v for k, v in acct["epochs"].items()}
        for d, e in self.chain_epochs.items():
            epochs[d] = max(epochs.get(d, 0), e)
        self.epochs = epochs

    def data_key(self, dtype: int, epoch: int) -> bytes:
        k = self.keys.get((dtype, epoch))
        if k is None:
            k = self.keys[(dtype, epoch)] = envelope.data_key(self.master, dtype, epoch)
        return k

    def __init__(self, ident: Identity, v: int, clinician: int, chain_id: str) -> None:
        self.ident, self.addr, self.v, self.clinician = ident, ident.address, v, clinician
        self.master = envelope.master_secret(ident.secret, chain_id)
        self.keys: dict[tuple[int, int], bytes] = {}  # (dtype, epoch) -> data key, derived once
        self.nonce = 1  # nonces start at 1
        self.epochs: dict[int, int] = {}
        self.bufs: dict[int, list[envelope.Reading]] = {}
        self.granted: tuple[int, ...] = ()
        self.grants_changed = 0.0  # when a grant change of this phone last committed (monotonic)
        self.cids: list[tuple[int, bytes, int]] = []  # committed (dtype, cid, epoch), for staff reads
        self.blocked = False  # a grant change is in flight: hold writes until it commits
        self.outstanding = 0
        self.resync = False
        # the phone's key epochs as the follower's blocks set them, in chain order: a committed grant
        # that takes a type away from the types of the one before rotates that type (the phone grants
        # to one clinician only; node/state/machine.py)
        self.chain_types: tuple[int, ...] = ()
        self.chain_epochs: dict[int, int] = {}
