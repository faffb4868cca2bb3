"""The genesis a node runs on and a client checks certificates against (node/genesis.py): what a
file must hold to load, each refusal with its whole message, and the recorded hash. Fast: no node."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from node.crypto.keys import Identity
from node.genesis import (
    _BOUNDS,
    HASH_FIELD,
    Genesis,
    IssuerInfo,
    Params,
    ValidatorInfo,
    init_home,
    load_checked,
    new_chain_id,
    parse_issuer,
)
from node.p2p import peer_id_from_secret
from node.state import genesis_state_root

IDS = [Identity.from_seed(b"genesis test %d" % i) for i in range(4)]  # the same test ids in every pytest worker
KEYS = [i.public_key.hex() for i in IDS]
PIDS = [peer_id_from_secret(i.p2p_secret) for i in IDS]


def _validator(j: int, **kw: str) -> ValidatorInfo:
    return ValidatorInfo(**{"public_key": KEYS[j], "api": f"127.0.0.1:{8000 + j}",
                            "p2p": f"/ip4/127.0.0.1/tcp/{9000 + j}/p2p/{PIDS[j]}", **kw})


def _genesis(**kw: object) -> Genesis:
    base: dict[str, object] = {"chain_id": "medchain-test", "time_ms": 1_700_000_000_000,
                               "validators": tuple(_validator(j) for j in range(4))}
    return Genesis(**{**base, **kw})  # type: ignore[arg-type]


def _file(tmp_path: Path, d: object) -> Path:
    p = tmp_path / "genesis.json"
    p.write_text(json.dumps(d))
    return p


def _refused(tmp_path: Path, d: object) -> str:
    p = _file(tmp_path, d)
    with pytest.raises(ValueError) as err:
        Genesis.load(p)
    return str(err.value).removeprefix(f"{p}: ")


# ---- a finished genesis: what it holds and how it hashes ---------------------------------------

def test_save_load_round_trip_and_hash(tmp_path: Path) -> None:
    gen = _genesis(issuers=(IssuerInfo("General Hospital", KEYS[0]),))
    p = tmp_path / "g.json"
    gen.save(p)
    d = json.loads(p.read_text())
    assert d[HASH_FIELD] == gen.hash.hex() and p.read_text().endswith("}\n")
    assert '{\n "chain_id": "medchain-test",\n' in p.read_text()  # one field a line: an operator reads it
    back = load_checked(p)
    assert back == gen and back.hash == gen.hash
    assert back.validator_keys == [bytes.fromhex(k) for k in KEYS]
    assert back.state_root == genesis_state_root("medchain-test", back.validator_keys)
    assert back.rules.issuers == frozenset({IDS[0].public_key})
    assert (back.rules.per_staff, back.rules.per_issuer, back.rules.per_patient) == (3, 30, 6)
    assert [back.index_of(bytes.fromhex(k)) for k in KEYS] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="^this node's key is not in the genesis validator set$"):
        back.index_of(Identity.generate().public_key)


def test_every_field_is_in_the_hash() -> None:
    gen = _genesis()
    changed = [
        dataclasses.replace(gen, chain_id="medchain-other"),
        dataclasses.replace(gen, time_ms=gen.time_ms + 1),
        dataclasses.replace(gen, validators=gen.validators[:3]),
        dataclasses.replace(gen, validators=(_validator(0, api="127.0.0.1:1"), *gen.validators[1:])),
        dataclasses.replace(gen, validators=(*gen.validators[1:], gen.validators[0])),  # the order is the index
        dataclasses.replace(gen, params=Params(block_max_txs=1999)),
        dataclasses.replace(gen, issuers=(IssuerInfo("x", KEYS[1]),)),
    ]
    hashes = {gen.hash, *(g.hash for g in changed)}
    assert len(hashes) == len(changed) + 1


def test_a_file_changed_after_it_was_finalized_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "g.json"
    _genesis().save(p)
    d = json.loads(p.read_text())
    d["params"]["block_max_txs"] = 1
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError) as err:
        load_checked(p)
    want = json.loads(_file(tmp_path, d).read_text())[HASH_FIELD]
    content = Genesis.load(p).hash.hex()
    assert str(err.value) == (
        f"{p}: genesis hash mismatch: the file records {want} but its content hashes to {content}; it was "
        "changed after it was finalized: get the network's genesis again and check its hash with your coordinator")


def test_a_draft_is_refused_and_a_file_without_hash_loads_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = _genesis().to_json()
    p = _file(tmp_path, {**d, "draft": True})
    with pytest.raises(ValueError) as err:
        load_checked(p)
    assert str(err.value) == f"{p} is a draft genesis: run `medchain genesis finalize` on it first"
    p = _file(tmp_path, {**d, "draft": False})  # a false draft flag is a finished file
    with caplog.at_level(logging.WARNING, logger="medchain.genesis"):
        assert load_checked(p) == _genesis()
    assert caplog.messages == [f"{p} records no hash; its content hashes to {_genesis().hash.hex()}"]
    assert [r.name for r in caplog.records] == ["medchain.genesis"]


def test_params_and_issuers_may_be_left_out(tmp_path: Path) -> None:
    d = {k: v for k, v in _genesis().to_json().items() if k not in ("params", "issuers")}
    assert Genesis.load(_file(tmp_path, d)) == _genesis()


def test_a_file_of_one_validator_needs_no_p2p_address(tmp_path: Path) -> None:
    gen = _genesis(validators=(_validator(0, p2p=""),))
    assert Genesis.load(_file(tmp_path, gen.to_json())) == gen
    # but one it gives must parse
    assert _refused(tmp_path, {**gen.to_json(), "validators": [{"public_key": KEYS[0], "api": "h:1", "p2p": "x"}]}) == \
        "genesis validator 0: not a /ip4|ip6|dns4/HOST/tcp/PORT[/p2p/<peer id>] address: 'x'"


def test_init_home_writes_the_same_genesis_to_every_home(tmp_path: Path) -> None:
    dirs = init_home(tmp_path, "medchain-x", ["127.0.0.1:1", "127.0.0.1:2"], 5,
                     p2p=["127.0.0.1:3", "127.0.0.1:4"])
    assert [d.name for d in dirs] == ["node0", "node1"]
    gens = [load_checked(d / "genesis.json") for d in dirs]
    assert gens[0] == gens[1] and gens[0].time_ms == 5 and gens[0].chain_id == "medchain-x"
    for d, v in zip(dirs, gens[0].validators, strict=True):
        ident = Identity.load(d / "node_key.json")
        assert v.public_key == ident.public_key.hex()
        assert v.p2p.endswith(f"/p2p/{peer_id_from_secret(ident.p2p_secret)}")
    assert [v.p2p.split("/p2p/")[0] for v in gens[0].validators] == ["/ip4/127.0.0.1/tcp/3", "/ip4/127.0.0.1/tcp/4"]
    with pytest.raises(ValueError, match="^a network of several validators needs p2p addresses$"):
        init_home(tmp_path / "b", "c", ["h:1", "h:2"], 0)
    (one,) = init_home(tmp_path / "one", "c", ["h:1"], 0)
    assert load_checked(one / "genesis.json").validators[0].p2p == ""
    with pytest.raises(ValueError, match="zip"):  # a p2p address for each validator, no more, no fewer
        init_home(tmp_path / "c", "c", ["h:1", "h:2"], 0, p2p=["127.0.0.1:3", "127.0.0.1:4", "127.0.0.1:5"])
    # the issuers and the parameters are written into the genesis; a home whose directories exist
    # already (made empty beforehand) is filled in
    (tmp_path / "six" / "node0").mkdir(parents=True)
    issuer = IssuerInfo("General Hospital", KEYS[3])
    dirs = init_home(tmp_path / "six", "c", ["127.0.0.1:1", "127.0.0.1:2"], 0, params=Params(block_max_txs=7),
                     p2p=["10.0.0.1:3", "10.0.0.2:4"], issuers=(issuer,))
    gen = load_checked(dirs[0] / "genesis.json")
    assert [v.p2p.split("/p2p/")[0] for v in gen.validators] == ["/ip4/10.0.0.1/tcp/3", "/ip4/10.0.0.2/tcp/4"]
    # an IPv6 host is written as /ip6 (the p2p adapter listens and dials on IPv6 too), a name as /dns4
    for k, (six, want) in enumerate((("::1:3", "/ip6/::1/tcp/3"), ("[::1]:3", "/ip6/::1/tcp/3"),
                                     ("hospital-a.example:3", "/dns4/hospital-a.example/tcp/3"))):
        (d,) = init_home(tmp_path / f"v6-{k}", "c", ["h:1"], 0, p2p=[six])
        assert load_checked(d / "genesis.json").validators[0].p2p.split("/p2p/")[0] == want
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        init_home(tmp_path / "v6-bad", "c", ["h:1"], 0, p2p=["10.0.0.1"])
    assert gen.issuers == (issuer,) and gen.params == Params(block_max_txs=7)


# ---- refusals -----------------------------------------------------------------------------------

def test_not_a_genesis_file(tmp_path: Path) -> None:
    p = tmp_path / "g.json"
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match=r"not a medchain genesis file \(not JSON: "):
        Genesis.load(p)
    p.write_text("{")
    with pytest.raises(ValueError, match=r"not a medchain genesis file \(not JSON: "):
        Genesis.load(p)
    d = _genesis().to_json()
    assert _refused(tmp_path, []) == "not a medchain genesis file (not a JSON object)"
    for checked in (Genesis.load, load_checked):  # each names the file, whatever its content
        with pytest.raises(ValueError, match=rf"^{tmp_path}/genesis.json: not a medchain genesis file \(not a JSON object\)$"):
            checked(_file(tmp_path, [1]))
    assert _refused(tmp_path, {k: v for k, v in d.items() if k != "chain_id"}) == \
        "not a medchain genesis file (KeyError: 'chain_id')"
    assert _refused(tmp_path, {**d, "validators": [{"public_key": KEYS[0]}]}).startswith(
        "not a medchain genesis file (TypeError: ")
    assert _refused(tmp_path, {**d, "validators": 4}).startswith("not a medchain genesis file (TypeError: ")
    assert _refused(tmp_path, {**d, "params": {"no_such": 1}}).startswith("not a medchain genesis file (TypeError: ")
    assert _refused(tmp_path, {**d, "params": []}).startswith("not a medchain genesis file (TypeError: ")
    assert _refused(tmp_path, {**d, "issuers": [{"name": "x"}]}).startswith("not a medchain genesis file (TypeError: ")
    assert _refused(tmp_path, {**d, "validators": []}) == "the genesis lists no validator"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("chain_id", "", "genesis chain_id: '' is not a string of 1 to 32 bytes"),
    ("chain_id", 7, "genesis chain_id: 7 is not a string of 1 to 32 bytes"),
    ("chain_id", "m" * 33, f"genesis chain_id: {'m' * 33!r} is not a string of 1 to 32 bytes"),
    ("chain_id", "é" * 17, f"genesis chain_id: {'é' * 17!r} is not a string of 1 to 32 bytes"),  # 34 bytes
    ("time_ms", "1700000000000", "genesis time_ms: '1700000000000' is not a time in ms since the epoch"),
    ("time_ms", 1.5, "genesis time_ms: 1.5 is not a time in ms since the epoch"),
    ("time_ms", True, "genesis time_ms: True is not a time in ms since the epoch"),
    ("time_ms", -1, "genesis time_ms: -1 is not a time in ms since the epoch"),
])
def test_chain_fields(tmp_path: Path, field: str, value: object, message: str) -> None:
    assert _refused(tmp_path, {**_genesis().to_json(), field: value}) == message
    assert Genesis.load(_file(tmp_path, {**_genesis().to_json(), "time_ms": 0})).time_ms == 0
    assert Genesis.load(_file(tmp_path, {**_genesis().to_json(), "chain_id": "é" * 16})).chain_id == "é" * 16


def test_a_validator_key_listed_twice_would_count_twice_and_is_refused(tmp_path: Path) -> None:
    d = _genesis().to_json()
    d["validators"][3]["public_key"] = KEYS[1]
    assert _refused(tmp_path, d) == f"genesis validator 3: the key of validator 1 again ({KEYS[1]})"
    d["validators"][3]["public_key"] = KEYS[1].upper()  # the same key, spelt otherwise
    assert _refused(tmp_path, d) == f"genesis validator 3: the key of validator 1 again ({KEYS[1].upper()})"


@pytest.mark.parametrize("key", ["", "zz", "02" + "00" * 32, KEYS[0][:-2], KEYS[0] + "00", "04" + "11" * 64])
def test_a_validator_key_that_is_not_a_compressed_secp256k1_key(tmp_path: Path, key: str) -> None:
    d = _genesis().to_json()
    d["validators"][2]["public_key"] = key
    assert _refused(tmp_path, d) == f"genesis validator 2: {key!r} is not a compressed secp256k1 public key (hex)"


def test_validator_addresses(tmp_path: Path) -> None:
    d = _genesis().to_json()
    d["validators"][2]["p2p"] = d["validators"][0]["p2p"].replace("9000", "9100")
    assert _refused(tmp_path, d) == "genesis validator 2: the libp2p peer id of validator 0 again"
    d = _genesis(validators=(_validator(0), _validator(1))).to_json()
    d["validators"][1]["p2p"] = ""  # two validators: the second needs its libp2p address too
    assert _refused(tmp_path, d) == "genesis validator 1: not a /ip4|ip6|dns4/HOST/tcp/PORT[/p2p/<peer id>] address: ''"
    d = _genesis().to_json()
    d["validators"][1]["p2p"] = ""  # several validators: each needs its libp2p address
    assert _refused(tmp_path, d) == "genesis validator 1: not a /ip4|ip6|dns4/HOST/tcp/PORT[/p2p/<peer id>] address: ''"
    d["validators"][1]["p2p"] = "/ip4/127.0.0.1/tcp/9001"
    assert _refused(tmp_path, d) == "genesis validator 1: peer address without /p2p/<peer id>: '/ip4/127.0.0.1/tcp/9001'"
    # a stray segment: libp2p refuses it when every validator dials it at start (it stopped them all)
    d["validators"][1]["p2p"] = _validator(1).p2p.replace("/p2p/", "/bogus/p2p/")
    assert _refused(tmp_path, d).startswith("genesis validator 1: not a /ip4|ip6|dns4/HOST/tcp/PORT")
    d["validators"][1]["p2p"] = 9001
    assert _refused(tmp_path, d) == "genesis validator 1: public_key, api and p2p are strings"
    d["validators"][1]["p2p"] = _validator(1).p2p
    d["validators"][1]["api"] = None
    assert _refused(tmp_path, d) == "genesis validator 1: public_key, api and p2p are strings"
    d["validators"][1]["api"] = _validator(1).api
    d["validators"][1]["public_key"] = 5
    assert _refused(tmp_path, d) == "genesis validator 1: public_key, api and p2p are strings"


def test_issuers(tmp_path: Path) -> None:
    d = _genesis(issuers=(IssuerInfo("a", KEYS[0]), IssuerInfo("b", KEYS[1]))).to_json()
    assert len(Genesis.load(_file(tmp_path, d)).issuers) == 2
    d["issuers"][1]["public_key"] = KEYS[0]
    assert _refused(tmp_path, d) == "genesis issuer 'b': its key is listed already"
    d["issuers"][1]["public_key"] = "02" + "00" * 32
    assert _refused(tmp_path, d) == f"genesis issuer 'b': {'02' + '00' * 32!r} is not a compressed secp256k1 public key (hex)"
    d["issuers"][1] = {"name": 3, "public_key": KEYS[1]}
    assert _refused(tmp_path, d) == "genesis issuer 3: the name is a non-empty string"
    d["issuers"][1] = {"name": "", "public_key": KEYS[1]}
    assert _refused(tmp_path, d) == "genesis issuer '': the name is a non-empty string"


_INTS = [f.name for f in dataclasses.fields(Params) if f.type == "int"]
_FLOATS = [f.name for f in dataclasses.fields(Params) if f.type == "float"]
_ZERO = {"block_interval_ms", "upload_grace_s", "break_glass_per_staff", "break_glass_per_issuer",
         "break_glass_per_patient"}


def test_the_parameters_are_all_ints_or_floats() -> None:
    assert sorted(_INTS + _FLOATS) == sorted(f.name for f in dataclasses.fields(Params))
    assert "block_max_txs" in _INTS and "sender_rate" in _FLOATS and "upload_grace_s" in _FLOATS


@pytest.mark.parametrize("name", _INTS)
def test_an_int_parameter(tmp_path: Path, name: str) -> None:
    d = _genesis().to_json()
    for bad in ("5", 5.0, True, None, [5]):
        d["params"] = {name: bad}
        assert _refused(tmp_path, d) == f"genesis parameter {name}: {bad!r} is not an int"
    d["params"] = {name: -1}
    assert _refused(tmp_path, d) == f"genesis parameter {name}: -1 must be {'at least 0' if name in _ZERO else 'positive'}"
    d["params"] = {name: 0}
    if name in _ZERO:
        assert getattr(Genesis.load(_file(tmp_path, d)).params, name) == 0
    else:
        assert _refused(tmp_path, d) == f"genesis parameter {name}: 0 must be positive"
    least = _BOUNDS.get(name, (None, None))[0] or 1
    d["params"] = {name: least}
    assert getattr(Genesis.load(_file(tmp_path, d)).params, name) == least


@pytest.mark.parametrize("name", _FLOATS)
def test_a_float_parameter(tmp_path: Path, name: str) -> None:
    for bad in ("5", True, None, float("inf"), float("nan"), -float("inf")):
        with pytest.raises(ValueError) as err:
            Params(**{name: bad})
        assert str(err.value) == f"genesis parameter {name}: {bad!r} is not a number"
    with pytest.raises(ValueError) as err:
        Params(**{name: -0.5})
    assert str(err.value) == f"genesis parameter {name}: -0.5 must be {'at least 0' if name in _ZERO else 'positive'}"
    if name in _ZERO:
        assert getattr(Params(**{name: 0.0}), name) == 0
    else:
        with pytest.raises(ValueError, match=f"^genesis parameter {name}: 0 must be positive$"):
            Params(**{name: 0})
    small = 0.5 if name != "client_mempool_share" and name not in _BOUNDS else 1
    assert getattr(Params(**{name: small}), name) == small  # an int where a float belongs is a number too
    assert getattr(Params(**{name: 1}), name) == 1


@pytest.mark.parametrize("name", sorted(_BOUNDS))
def test_a_bounded_parameter_is_refused_just_outside_its_bounds(name: str) -> None:
    """Values that pass the type checks yet leave a network unusable (a burst below 1: every request
    429, /healthz too), break a protocol bound, or let a blob fetch hold gigabytes (a review)."""
    lo, hi = _BOUNDS[name]
    is_int = name in _INTS
    for bad, ok in ((lo - (1 if is_int else 0.5), lo), (hi + 1 if hi is not None else None, hi)):
        if bad is None or (bad <= 0):
            continue
        with pytest.raises(ValueError, match=f"^genesis parameter {name}: .* is outside"):
            Params(**{name: bad})
        assert getattr(Params(**{name: ok}), name) == ok


def test_the_mempool_share_is_at_most_one() -> None:
    assert Params(client_mempool_share=1).client_mempool_share == 1
    with pytest.raises(ValueError) as err:
        Params(client_mempool_share=1.01)
    assert str(err.value) == "genesis parameter client_mempool_share: 1.01 is a share, at most 1"


# ---- helpers of the command line ---------------------------------------------------------------

def test_parse_issuer() -> None:
    assert parse_issuer(f"Hospital={KEYS[2].upper()}") == IssuerInfo("Hospital", KEYS[2])
    for spec in ("", "=", f"={KEYS[2]}", f"a=b={KEYS[2]}", "Hospital", "Hospital=", "Hospital=zz", "Hospital=" + "02" + "00" * 32):
        with pytest.raises(ValueError) as err:
            parse_issuer(spec)
        assert str(err.value) == f"--issuer {spec!r}: expected NAME=PUBLIC_KEY (33-byte compressed secp256k1, hex)"


def test_new_chain_ids_differ() -> None:
    a, b = new_chain_id(), new_chain_id("clinic")
    assert a.startswith("medchain-") and len(a) == len("medchain-") + 16 and int(a[9:], 16) >= 0
    assert b.startswith("clinic-") and a != new_chain_id()


def test_a_genesis_written_before_a_parameter_existed_keeps_its_hash_and_loads(tmp_path: Path) -> None:
    """A release that adds a parameter (with its default): a finished genesis of the release before
    lacks it, and its recorded hash is of what it holds. Its hash stays the file's (so its network's
    name on the p2p layer too, and every node of either release agrees on it); re-serialised with
    the new default it differed, and load_checked refused every such file. What install-genesis
    writes (`document()`) is the file's own content, so it loads again."""
    import hashlib

    d = _genesis().to_json()
    del d["params"]["block_max_txs"]  # as if the parameter came in a later release
    old = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()  # as that release recorded it
    p = _file(tmp_path, {**d, HASH_FIELD: old})
    gen = load_checked(p)
    assert gen.hash.hex() == old and gen.params.block_max_txs == Params().block_max_txs
    assert gen.network == old[:16]
    assert gen.document() == json.loads(p.read_text())
    q = tmp_path / "again.json"
    gen.save(q)
    assert load_checked(q).hash.hex() == old
    assert dataclasses.replace(gen, time_ms=gen.time_ms + 1).hash != gen.hash  # a changed copy hashes itself
