"""Genesis: the chain id, the validator set and the chain parameters, as JSON in a node's home."""

from __future__ import annotations

import json
import logging
import math
import secrets
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from node.crypto import ecdsa
from node.crypto.keys import Identity
from node.files import write_durably
from node.multiaddr import host_port, peer_id, tcp_addr
from node.state import genesis_state_root
from node.state.rules import Rules
from node.tx.model import MAX_CHAIN_ID


@dataclass(frozen=True)
class ValidatorInfo:
    public_key: str  # hex, 33-byte compressed secp256k1
    api: str  # host:port of the HTTP API
    p2p: str = ""  # libp2p multiaddr (the consensus issue fills it in)


@dataclass(frozen=True)
class IssuerInfo:
    """An organisation whose credentials make a staff member a clinician who may break the glass."""

    name: str
    public_key: str  # hex, 33-byte compressed secp256k1


@dataclass(frozen=True)
class Params:
    block_max_txs: int = 2000
    block_interval_ms: int = 20  # how long a batch may wait to fill
    sender_rate: float = 200.0  # per-sender token bucket, transactions per second
    sender_burst: float = 400.0
    mempool_capacity: int = 200_000
    max_blob_bytes: int = 2 * 1024 * 1024
    request_skew_ms: int = 30_000  # signed blob requests older or newer than this are refused
    view_timeout_ms: int = 2000  # no delivery for this long while work waits: change view (doubles per try)
    pbft_window: int = 64  # sequence numbers above the stable checkpoint; a checkpoint every window/4 blocks
    client_rate: float = 2000.0  # API requests per second per client IP
    client_burst: float = 4000.0
    # transactions per second per client IP (POST /v1/tx and /v1/txs): a phone proxy batching a
    # thousand phones' windows needs a few hundred; the burst holds two full 4096-transaction batches
    client_tx_rate: float = 2000.0
    client_tx_burst: float = 8192.0
    client_mempool_share: float = 0.5  # of mempool_capacity one client IP may hold pending (1: no cap)
    client_body_bytes: int = 8 * 1024 * 1024  # request-body bytes in flight per client IP (beyond: 429)
    server_body_bytes: int = 64 * 1024 * 1024  # request-body bytes in flight overall (beyond: 503)
    body_timeout_ms: int = 30_000  # a request body must arrive within this (408 and close)
    idle_timeout_ms: int = 10_000  # a connection without a complete request for this long is closed
    client_max_conns: int = 1024  # open connections per client IP; more are refused (503, closed)
    peer_forward_bytes: float = 8 * 1024 * 1024  # forwarded tx batches, bytes/s per validator peer (burst 2x)
    upload_grace_s: float = 600.0  # a standalone upload no committed write names within this is collected
    # emergency (break-glass) reads per 24 h: per staff member, per credential issuer, per patient
    break_glass_per_staff: int = 3
    break_glass_per_issuer: int = 30
    break_glass_per_patient: int = 6

    def __post_init__(self) -> None:
        """Every parameter of its declared type and in range: a genesis is read by every node and
        client, and a string where a number belongs would otherwise fail later, somewhere else."""
        for f in fields(self):
            v = getattr(self, f.name)
            # a float parameter may be written as an int ("sender_rate": 1000)
            is_int = f.type in ("int", int)
            ok = type(v) is int if is_int else type(v) in (int, float) and math.isfinite(v)
            if not ok:
                raise ValueError(f"genesis parameter {f.name}: {v!r} is not {'an int' if is_int else 'a number'}")
            zero = f.name in _MAY_BE_ZERO
            if v < 0 or (v == 0 and not zero):
                raise ValueError(f"genesis parameter {f.name}: {v!r} must be {'at least 0' if zero else 'positive'}")
            lo, hi = _BOUNDS.get(f.name, (None, None))
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                raise ValueError(f"genesis parameter {f.name}: {v!r} is outside [{lo if lo is not None else 0}, "
                                 f"{hi if hi is not None else 'no limit'}]")
        if self.client_mempool_share > 1:
            raise ValueError(f"genesis parameter client_mempool_share: {self.client_mempool_share!r} is a share, at most 1")


# parameters for which 0 means something (propose without waiting, collect an unreferenced upload
# at once, no break-glass reads); every other parameter is positive
_MAY_BE_ZERO = frozenset({"block_interval_ms", "upload_grace_s", "break_glass_per_staff", "break_glass_per_issuer",
                          "break_glass_per_patient"})
# bounds beyond "positive": a value outside them passes the type checks and yet leaves the network
# unusable (a token bucket whose burst is below 1 never grants one: every request 429, /healthz
# included), breaks a protocol bound (a window past what a view change may carry), or lets one blob
# fetch hold gigabytes (a review of what a coordinator could put in a genesis)
_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "sender_burst": (1, None), "client_burst": (1, None), "client_tx_burst": (1, None),
    "view_timeout_ms": (100, 3_600_000), "request_skew_ms": (1000, None), "body_timeout_ms": (100, None),
    "idle_timeout_ms": (100, None), "pbft_window": (1, 65_536), "max_blob_bytes": (1, 1 << 30),
    "block_max_txs": (1, 1_000_000),
}


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    time_ms: int
    validators: tuple[ValidatorInfo, ...]
    params: Params = field(default_factory=Params)
    issuers: tuple[IssuerInfo, ...] = ()
    # the JSON object of the file it was loaded from, as written (set by load; a copy made with
    # dataclasses.replace has none and is its own content)
    source: dict | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        """What every certificate check rests on: each validator key a valid compressed secp256k1
        key and listed once (a key at two indices would sign twice, and one validator would count as
        two towards every 2f+1 quorum), each libp2p peer id listed once, each issuer key valid and
        listed once. A draft genesis (node/operator.py) may have no validators yet."""
        if not (isinstance(self.chain_id, str) and 0 < len(self.chain_id.encode()) <= MAX_CHAIN_ID):
            # every transaction signs the chain id, and one longer than this is refused (node/tx)
            raise ValueError(f"genesis chain_id: {self.chain_id!r} is not a string of 1 to {MAX_CHAIN_ID} bytes")
        if type(self.time_ms) is not int or self.time_ms < 0:
            raise ValueError(f"genesis time_ms: {self.time_ms!r} is not a time in ms since the epoch")
        seen: dict[bytes, int] = {}
        peers: dict[str, int] = {}
        for i, v in enumerate(self.validators):
            if not all(isinstance(x, str) for x in (v.public_key, v.api, v.p2p)):
                raise ValueError(f"genesis validator {i}: public_key, api and p2p are strings")
            key = _pubkey(v.public_key, f"genesis validator {i}")
            if key in seen:
                raise ValueError(f"genesis validator {i}: the key of validator {seen[key]} again ({v.public_key})")
            seen[key] = i
            if len(self.validators) > 1 or v.p2p:
                try:
                    host_port(v.p2p)
                    pid = peer_id(v.p2p)
                except ValueError as exc:
                    raise ValueError(f"genesis validator {i}: {exc}") from None
                if pid in peers:
                    raise ValueError(f"genesis validator {i}: the libp2p peer id of validator {peers[pid]} again")
                peers[pid] = i
        issuers: set[bytes] = set()
        for i in self.issuers:
            if not (isinstance(i.name, str) and i.name):
                raise ValueError(f"genesis issuer {i.name!r}: the name is a non-empty string")
            key = _pubkey(i.public_key, f"genesis issuer {i.name!r}")
            if key in issuers:
                raise ValueError(f"genesis issuer {i.name!r}: its key is listed already")
            issuers.add(key)

    @property
    def rules(self) -> Rules:
        """What the state machine needs of the genesis: the credential issuers and break-glass limits."""
        p = self.params
        return Rules(frozenset(bytes.fromhex(i.public_key) for i in self.issuers), p.break_glass_per_staff,
                     p.break_glass_per_issuer, p.break_glass_per_patient)

    @property
    def validator_keys(self) -> list[bytes]:
        return [bytes.fromhex(v.public_key) for v in self.validators]

    @property
    def state_root(self) -> bytes:
        return genesis_state_root(self.chain_id, self.validator_keys)

    @property
    def hash(self) -> bytes:
        """SHA-256 of the genesis JSON without its recorded hash: of the file as written when loaded
        from one. A release that adds a parameter (with its default) then changes no existing
        network's hash, nor its name on the p2p layer (node/p2p), nor load_checked's verdict; the
        content re-serialised would carry the new field, and every node of the new release would
        refuse its genesis."""
        return content_hash(self.source if self.source is not None else self.to_json())

    def document(self) -> dict:
        """The finished genesis as a file holds it: its content (the file's own, when loaded from
        one) and its hash."""
        return {**_content(self.source or self.to_json()), HASH_FIELD: self.hash.hex()}

    @property
    def network(self) -> str:
        """The network's name in its p2p protocol ids (node/p2p/node.py): the genesis hash, shortened.
        Validators running another genesis (other parameters under the same keys) do not connect."""
        return self.hash.hex()[:16]

    def index_of(self, public_key: bytes) -> int:
        keys = self.validator_keys
        if public_key not in keys:
            raise ValueError("this node's key is not in the genesis validator set")
        return keys.index(public_key)

    def to_json(self) -> dict:
        return {"chain_id": self.chain_id, "time_ms": self.time_ms,
                "validators": [asdict(v) for v in self.validators], "params": asdict(self.params),
                "issuers": [asdict(i) for i in self.issuers]}

    def save(self, path: str | Path) -> None:
        """Write the finished genesis with its hash beside the content (load_checked checks it), in
        one step: a crash leaves the old file or the new one, never half of it."""
        write_durably(path, json.dumps(self.document(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Genesis:
        """A genesis file a node runs on (or a client checks certificates against); ValueError naming
        the file and what is wrong. It lists at least one validator."""
        return cls.from_json(_read_json(path), str(path))

    @classmethod
    def from_json(cls, d: dict, path: str) -> Genesis:
        """load's checks of a genesis JSON object (`path`: where it comes from, for the errors)."""
        try:
            gen = cls(d["chain_id"], d["time_ms"], tuple(ValidatorInfo(**v) for v in d["validators"]),
                      Params(**d.get("params", {})), tuple(IssuerInfo(**i) for i in d.get("issuers", [])))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: not a medchain genesis file ({type(exc).__name__}: {exc})") from None
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        if not gen.validators:
            raise ValueError(f"{path}: the genesis lists no validator")
        object.__setattr__(gen, "source", d)
        return gen


HASH_FIELD = "genesis_hash"  # in a finished genesis file: the hash of everything else in it
DRAFT_FIELD = "draft"  # in a genesis still being assembled (node/operator.py): not for a node


def content_hash(d: dict) -> bytes:
    """The genesis hash of a genesis JSON object: SHA-256 of its canonical JSON (sorted keys) without
    the recorded hash and the draft mark."""
    return ecdsa.sha256(json.dumps(_content(d), sort_keys=True).encode())


def _content(d: dict) -> dict:
    """A genesis JSON object without what a file records about it (its hash, the draft mark)."""
    return {k: v for k, v in d.items() if k not in (HASH_FIELD, DRAFT_FIELD)}


def _read_json(path: str | Path) -> dict:
    try:
        d = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a medchain genesis file (not JSON: {exc})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: not a medchain genesis file (not a JSON object)")
    return d


def _pubkey(hexkey: str, what: str) -> bytes:
    try:
        key = bytes.fromhex(hexkey)
        if ecdsa.valid_pubkey(key):
            return key
    except ValueError:
        pass
    raise ValueError(f"{what}: {hexkey!r} is not a compressed secp256k1 public key (hex)")


def load_checked(path: str | Path) -> Genesis:
    """Load a genesis a node is to run on, refusing one whose recorded hash does not match its
    content (edited after it was finished, or damaged) and one still being assembled. A file without
    a hash (written before hashes were recorded) loads, with a warning."""
    path = Path(path)
    d = _read_json(path)
    if d.get(DRAFT_FIELD):
        raise ValueError(f"{path} is a draft genesis: run `medchain genesis finalize` on it first")
    gen = Genesis.load(path)
    want = d.get(HASH_FIELD)
    if want is None:
        logging.getLogger("medchain.genesis").warning("%s records no hash; its content hashes to %s",
                                                      path, gen.hash.hex())
    elif want != gen.hash.hex():
        raise ValueError(f"{path}: genesis hash mismatch: the file records {want} but its content hashes to "
                         f"{gen.hash.hex()}; it was changed after it was finalized: get the network's genesis "
                         "again and check its hash with your coordinator")
    return gen


def parse_issuer(spec: str) -> IssuerInfo:
    """NAME=PUBLIC_KEY (hex, compressed secp256k1) as given on the command line."""
    name, sep, key = spec.partition("=")
    try:
        if sep and name and ecdsa.valid_pubkey(bytes.fromhex(key)):
            return IssuerInfo(name, key.lower())
    except ValueError:
        pass
    raise ValueError(f"--issuer {spec!r}: expected NAME=PUBLIC_KEY (33-byte compressed secp256k1, hex)")


def new_chain_id(prefix: str = "medchain") -> str:
    """A chain id no other network has: every transaction signs it, so a transaction (a profile,
    a grant) signed for one network is refused by any other ("wrong chain id")."""
    return f"{prefix}-{secrets.token_hex(8)}"


def init_home(home: str | Path, chain_id: str, apis: list[str], time_ms: int,
              params: Params | None = None, p2p: list[str] | None = None,
              issuers: tuple[IssuerInfo, ...] = ()) -> list[Path]:
    """Create one home directory per validator under `home` (node0, node1, ...) with its key and
    the shared genesis file; returns the directories. `p2p` gives each validator's libp2p
    host:port (needed when there is more than one validator); `issuers` the organisations whose
    credentials let staff break the glass."""
    home = Path(home)
    idents = [Identity.generate() for _ in apis]
    addrs = [""] * len(apis)
    if p2p:
        from node.p2p import peer_id_from_secret
        for k, (ident, hp) in enumerate(zip(idents, p2p, strict=True)):
            host, _, port = hp.rpartition(":")
            if not port.isdigit():
                raise ValueError(f"p2p address {hp!r}: expected HOST:PORT")
            addrs[k] = f"{tcp_addr(host, int(port))}/p2p/{peer_id_from_secret(ident.p2p_secret)}"
    elif len(apis) > 1:
        raise ValueError("a network of several validators needs p2p addresses")
    gen = Genesis(chain_id, time_ms, tuple(ValidatorInfo(idents[k].public_key.hex(), apis[k], addrs[k])
                                           for k in range(len(apis))),
                  params or Params(), issuers)
    dirs = []
    for k, ident in enumerate(idents):
        d = home / f"node{k}"
        d.mkdir(parents=True, exist_ok=True)
        ident.save(d / "node_key.json")
        gen.save(d / "genesis.json")
        dirs.append(d)
    return dirs
