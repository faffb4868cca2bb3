"""A network assembled the way separate operators build it: no secret ever leaves its host.

1. Each operator, on its own host: `medchain operator init --home DIR --api HOST:PORT --p2p HOST:PORT`
   makes the validator's key (DIR/node_key.json, mode 0600) and writes its public part
   (DIR/validator.json: signing key, libp2p peer id, advertised API and p2p addresses, signed with
   the validator's key and with the libp2p key of that peer id, so a coordinator knows the operator
   holds both: a part naming another operator's peer id is refused), to send to the coordinator.
2. The coordinator: `medchain genesis new --out G`, `medchain genesis add-validator G PART` per part
   (each signature checked; duplicate keys and addresses refused), `medchain genesis finalize G`,
   which writes the genesis hash into G and prints it. G and the hash go to every operator.
3. Each operator: `medchain operator install-genesis --home DIR G --expect-hash HASH` checks the
   file against its own hash and the one the coordinator announced, that this validator is in it,
   with the addresses its part gave, then installs it as DIR/genesis.json. `medchain node` checks
   the hash again at every start (node/genesis.py load_checked).

`medchain init --validators N` stays the one-person shortcut for a local network (node/genesis.py
init_home); both write the same files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from node.block import max_faulty
from node.crypto import ecdsa
from node.crypto.keys import Identity
from node.files import hold_home, write_durably
from node.genesis import (
    DRAFT_FIELD,
    HASH_FIELD,
    Genesis,
    IssuerInfo,
    Params,
    ValidatorInfo,
    load_checked,
    new_chain_id,
    parse_issuer,
)
from node.multiaddr import advertisable, host_port, split_peer, tcp_addr

PART_KIND = "medchain-validator-part/v1"
PART_FILE = "validator.json"
KEY_FILE = "node_key.json"
_SIGNED = ("kind", "name", "public_key", "peer_id", "api", "p2p")


def _hostport(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} {value!r}: expected HOST:PORT")
    return host, int(port)


def _part_digest(part: dict[str, Any]) -> bytes:
    body = json.dumps({k: part[k] for k in _SIGNED}, sort_keys=True, separators=(",", ":"))
    return ecdsa.sha256(b"medchain/validator-part/v1" + body.encode())


def make_part(ident: Identity, api: str, p2p: str, name: str = "") -> dict[str, Any]:
    """The public part of a validator: what the coordinator needs, signed with the validator's key."""
    from node.p2p import peer_id_from_secret
    _hostport(api, "API address")
    host, port = _hostport(p2p, "p2p address")
    from node.p2p.identity import key_pair_from_secret
    pid = peer_id_from_secret(ident.p2p_secret)
    part = {"kind": PART_KIND, "name": name, "public_key": ident.public_key.hex(), "peer_id": pid, "api": api,
            "p2p": advertisable(f"{tcp_addr(host, port)}/p2p/{pid}")}
    digest = _part_digest(part)
    return {**part, "signature": ident.sign(digest).hex(),
            "p2p_signature": key_pair_from_secret(ident.p2p_secret).private_key.sign(digest).hex()}


def check_part(part: dict[str, Any], source: str = "part") -> ValidatorInfo:
    """A public part's genesis entry, once its shape and signature check; ValueError saying what is wrong."""
    if not isinstance(part, dict) or part.get("kind") != PART_KIND:
        raise ValueError(f"{source}: not a validator part ({PART_KIND}); make one with `medchain operator init`")
    missing = [k for k in (*_SIGNED, "signature", "p2p_signature") if not isinstance(part.get(k), str)]
    if missing:
        raise ValueError(f"{source}: missing or not a string: {', '.join(missing)}")
    try:
        pub, sig = bytes.fromhex(part["public_key"]), bytes.fromhex(part["signature"])
    except ValueError:
        raise ValueError(f"{source}: public_key and signature must be hex") from None
    if len(pub) != 33 or not ecdsa.valid_pubkey(pub):
        raise ValueError(f"{source}: public_key is not a compressed secp256k1 public key")
    if not ecdsa.verify(pub, _part_digest(part), sig):
        raise ValueError(f"{source}: bad signature: the part was changed after its operator signed it")
    _hostport(part["api"], f"{source}: API address")
    advertisable(part["p2p"])
    if split_peer(part["p2p"])[1] != part["peer_id"]:
        raise ValueError(f"{source}: the p2p address does not end in /p2p/{part['peer_id']}")
    if not _p2p_signed(part["peer_id"], _part_digest(part), part["p2p_signature"]):
        raise ValueError(f"{source}: the part is not signed by the libp2p key of peer id {part['peer_id']}: its "
                         "operator must hold that key (anyone can copy another operator's public part)")
    return ValidatorInfo(pub.hex(), part["api"], part["p2p"])  # the key as one spelling: duplicates compare


def _p2p_signed(peer_id: str, digest: bytes, sig_hex: str) -> bool:
    """Whether `sig_hex` is a signature of `digest` by the key the peer id names (an Ed25519 peer id
    carries its public key)."""
    from libp2p.peer.id import ID
    try:
        pub = ID.from_base58(peer_id).extract_public_key()
        return pub is not None and bool(pub.verify(digest, bytes.fromhex(sig_hex)))
    except Exception:  # noqa: BLE001 - a malformed id, key or signature: not signed
        return False


# ---- the operator's host ------------------------------------------------------------------------

def operator_init(home: Path, api: str, p2p: str, name: str = "") -> dict[str, Any]:
    """Make a validator's key in `home` (never overwriting one) and write its public part there."""
    key = home / KEY_FILE
    if key.exists():
        raise FileExistsError(f"{key} exists: this home has its key already (its part: {home / PART_FILE})")
    if not home.exists():  # an existing directory (a mistyped --home /srv) keeps its permissions
        home.mkdir(parents=True)
        os.chmod(home, 0o700)  # the key file is 0600; the home keeps its ledger and swarm key too
    ident = Identity.generate()
    part = make_part(ident, api, p2p, name)
    ident.save(key)
    (home / PART_FILE).write_text(json.dumps(part, indent=1) + "\n")
    return part


def install_genesis(home: Path, genesis_path: Path, expect_hash: str | None = None,
                    force: bool = False) -> tuple[Genesis, int]:
    """Check a finished genesis against this home's key and public part, then install it."""
    gen = load_checked(genesis_path)
    if expect_hash is not None and expect_hash.lower() != gen.hash.hex():
        raise ValueError(f"{genesis_path} hashes to {gen.hash.hex()}, not the {expect_hash} you were given: "
                         "do not install it; ask your coordinator")
    if json.loads(genesis_path.read_text()).get(HASH_FIELD) is None:
        raise ValueError(f"{genesis_path} records no hash: run `medchain genesis finalize` on it first")
    me = Identity.load(home / KEY_FILE)
    index = gen.index_of(me.public_key)
    part_file = home / PART_FILE
    if part_file.exists():
        mine = check_part(json.loads(part_file.read_text()), str(part_file))
        if gen.validators[index] != mine:
            raise ValueError(f"the genesis lists this validator as {gen.validators[index]}, but its part says "
                             f"{mine}: the coordinator used another part of this key")
    dest = home / "genesis.json"
    try:
        old: Genesis | None = Genesis.load(dest) if dest.exists() else None
    except ValueError:  # damaged, or refused by a newer release's checks: --force may replace it
        if not force:
            raise
        old = None
    if old is not None and old.hash == gen.hash:
        return gen, index  # installed already (a configuration tool running it again, a validator running on it)
    lock = hold_home(home)  # not under a running validator
    try:
        if dest.exists():
            chain = old.chain_id if old is not None else "unknown: its genesis does not load"
            if not force:
                raise FileExistsError(f"{dest} holds another genesis (chain {chain}); a home runs one "
                                      "network: use a new home, or --force if it has no ledger yet")
            if (home / "ledger" / "data.mdb").exists():
                raise FileExistsError(f"{home / 'ledger'} holds the ledger of chain {chain}: a home runs one "
                                      "network; move that ledger away first (even --force keeps it)")
        # what was checked is what is installed (reading the file again, a local writer could swap it between)
        write_durably(dest, json.dumps(gen.document(), indent=1) + "\n")
    finally:
        os.close(lock)
    return gen, index


# ---- the coordinator ----------------------------------------------------------------------------

def _read_draft(path: Path) -> dict[str, Any]:
    d = json.loads(path.read_text())
    if not d.get(DRAFT_FIELD):
        raise ValueError(f"{path} is finalized (hash {d.get(HASH_FIELD)}): a finished genesis is not changed; "
                         "start a new one with `medchain genesis new`")
    return d


def _write(path: Path, d: dict[str, Any]) -> None:
    write_durably(path, json.dumps(d, indent=1) + "\n")


def parse_params(pairs: list[str]) -> Params:
    """Chain parameters from NAME=VALUE pairs, each checked against Params' fields and types."""
    fields = {f.name: f for f in dataclasses.fields(Params)}
    kw: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--param {pair!r}: expected NAME=VALUE with NAME one of {', '.join(fields)}")
        kind = type(getattr(Params(), name))
        try:
            kw[name] = kind(float(raw)) if kind is int and "." not in raw and "e" not in raw.lower() else kind(raw)
        except ValueError:
            raise ValueError(f"--param {pair!r}: {name} is a number ({kind.__name__})") from None
    return Params(**kw)


def genesis_new(out: Path, chain_id: str | None, time_ms: int | None, params: Params) -> dict[str, Any]:
    if out.exists():
        raise FileExistsError(f"{out} exists")
    d = {DRAFT_FIELD: True, **Genesis(chain_id or new_chain_id(), time_ms or int(time.time() * 1000), (),
                                      params).to_json()}
    _write(out, d)
    return d


def genesis_add(path: Path, part_path: Path) -> ValidatorInfo:
    d = _read_draft(path)
    info = check_part(json.loads(part_path.read_text()), str(part_path))
    for i, v in enumerate(d["validators"]):
        same = {"public_key": v["public_key"].lower() == info.public_key, "api": v["api"] == info.api,
                "p2p address": host_port(v["p2p"]) == host_port(info.p2p),
                "libp2p peer id": split_peer(v["p2p"])[1] == split_peer(info.p2p)[1]}
        for what, alike in same.items():
            if alike:
                raise ValueError(f"{part_path}: validator {i} already has this {what}")
    d["validators"].append(dataclasses.asdict(info))
    _write(path, d)
    return info


def genesis_add_issuer(path: Path, spec: str) -> IssuerInfo:
    """List a credential issuer (NAME=PUBLIC_KEY) whose credentials make staff clinicians."""
    d = _read_draft(path)
    info = parse_issuer(spec)
    if any(i["public_key"].lower() == info.public_key.lower() for i in d.get("issuers", [])):
        raise ValueError(f"issuer key {info.public_key} is listed already")
    d.setdefault("issuers", []).append(dataclasses.asdict(info))
    _write(path, d)
    return info


def genesis_finalize(path: Path) -> Genesis:
    d = _read_draft(path)
    if not d["validators"]:
        raise ValueError(f"{path} has no validators: add their parts with `medchain genesis add-validator`")
    del d[DRAFT_FIELD]
    for i, v in enumerate(d["validators"]):  # a draft edited by hand: each must be dialable by the others
        try:
            advertisable(v.get("p2p", ""))
        except ValueError as exc:
            raise ValueError(f"{path}: validator {i}: {exc}") from None
    gen = Genesis.from_json(d, str(path))  # every check before the file changes: a refusal leaves the draft
    gen.save(path)  # with its hash
    return gen


# ---- the command line ---------------------------------------------------------------------------

def _print(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    print(json.dumps(obj, indent=1) if args.json else text)


def operator_cmd(args: argparse.Namespace) -> int:
    home = Path(args.home)
    if args.action == "init":
        part = operator_init(home, args.api, args.p2p, args.name)
        _print(args, {"home": str(home), "part": str(home / PART_FILE), **part},
               f"wrote {home / KEY_FILE} (secret, mode 0600: never copy it off this host)\n"
               f"wrote {home / PART_FILE} (public: send it to your network's coordinator)\n"
               f"public key {part['public_key']}\npeer id    {part['peer_id']}\napi        {part['api']}\n"
               f"p2p        {part['p2p']}")
        return 0
    gen, index = install_genesis(home, Path(args.genesis), args.expect_hash, args.force)
    _print(args, {"home": str(home), "chain_id": gen.chain_id, "validator_index": index,
                  "validators": len(gen.validators), "genesis_hash": gen.hash.hex()},
           f"installed {home / 'genesis.json'}: chain {gen.chain_id}, validator {index} of "
           f"{len(gen.validators)}, genesis hash {gen.hash.hex()}\nstart it with: medchain node --home {home}")
    return 0


def genesis_cmd(args: argparse.Namespace) -> int:
    path = Path(args.genesis)
    if args.action == "new":
        d = genesis_new(path, args.chain_id, args.time_ms, parse_params(args.param))
        _print(args, {"genesis": str(path), "chain_id": d["chain_id"]},
               f"wrote draft {path}: chain {d['chain_id']}; add each operator's part with "
               f"`medchain genesis add-validator {path} PART.json`")
    elif args.action == "add-validator":
        info = genesis_add(path, Path(args.part))
        n = len(json.loads(path.read_text())["validators"])
        _print(args, {"genesis": str(path), "index": n - 1, **dataclasses.asdict(info)},
               f"validator {n - 1}: {info.public_key} api {info.api} p2p {info.p2p}")
    elif args.action == "add-issuer":
        issuer = genesis_add_issuer(path, args.issuer)
        _print(args, {"genesis": str(path), **dataclasses.asdict(issuer)},
               f"issuer {issuer.name}: {issuer.public_key}")
    elif args.action == "finalize":
        gen = genesis_finalize(path)
        n = len(gen.validators)
        f = max_faulty(n)  # the one definition (node/block.py)
        note = "" if n == 3 * f + 1 else f"\nnote: {n} validators tolerate {f} faulty, as {3 * f + 1} would"
        _print(args, {"genesis": str(path), "chain_id": gen.chain_id, "validators": n,
                      "genesis_hash": gen.hash.hex()},
               f"finalized {path}: chain {gen.chain_id}, {n} validators\ngenesis hash {gen.hash.hex()}\n"
               f"send the file and this hash to every operator{note}")
    else:  # show
        gen = load_checked(path)
        _print(args, gen.document(),
               f"chain {gen.chain_id}, {len(gen.validators)} validators, genesis hash {gen.hash.hex()}\n" +
               "\n".join(f"  {i}: {v.public_key} api {v.api} p2p {v.p2p}" for i, v in enumerate(gen.validators)))
    return 0


def register(sub: argparse._SubParsersAction, add: Any) -> None:
    p = add("operator", operator_cmd, "One operator's host: make its validator's key and public part, "
            "install the network's genesis.")
    ps = p.add_subparsers(dest="action", required=True)
    a = ps.add_parser("init", help="make the validator's key (HOME/node_key.json) and public part (HOME/validator.json)")
    a.add_argument("--api", required=True, help="HOST:PORT clients reach this validator's API at (advertised)")
    a.add_argument("--p2p", required=True, help="HOST:PORT the other validators reach its libp2p host at (advertised)")
    a.add_argument("--name", default="", help="a label for the coordinator (e.g. the hospital); not in the genesis")
    b = ps.add_parser("install-genesis", help="check a finished genesis against this home, then install it")
    b.add_argument("genesis", help="the finished genesis file from the coordinator")
    b.add_argument("--expect-hash", help="the genesis hash the coordinator announced (checked if given)")
    b.add_argument("--force", action="store_true", help="replace a different genesis already installed")
    for sp in (a, b):
        sp.add_argument("--home", required=True, help="the validator's home directory on this host")
        sp.add_argument("--json", action="store_true", help="machine-readable output")

    g = add("genesis", genesis_cmd, "The coordinator: assemble a genesis from the operators' public parts.")
    gs = g.add_subparsers(dest="action", required=True)
    n = gs.add_parser("new", help="start a draft genesis")
    n.add_argument("--out", dest="genesis", required=True, help="the draft genesis file to write")
    n.add_argument("--chain-id", help="the network's id (default: a new random one; give one only to re-make a lost draft: votes, certificates and transactions are signed over it, so two networks must never share it)")
    n.add_argument("--time-ms", type=int, help="genesis time, ms since the epoch (default: now)")
    n.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a chain parameter (node/genesis.py Params), repeatable")
    v = gs.add_parser("add-validator", help="add an operator's public part (its signature is checked)")
    v.add_argument("genesis", help="the draft genesis file")
    v.add_argument("part", help="the operator's validator.json")
    i = gs.add_parser("add-issuer", help="list a credential issuer (staff it certifies may break the glass)")
    i.add_argument("genesis", help="the draft genesis file")
    i.add_argument("issuer", metavar="NAME=PUBLIC_KEY", help="the issuer's name and compressed secp256k1 key (hex)")
    f = gs.add_parser("finalize", help="close the draft and write its hash into it")
    f.add_argument("genesis", help="the draft genesis file")
    s = gs.add_parser("show", help="print a finished genesis and check its hash")
    s.add_argument("genesis", help="the genesis file")
    for sp in (n, v, i, f, s):
        sp.add_argument("--json", action="store_true", help="machine-readable output")
