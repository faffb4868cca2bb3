"""Every stateless refusal of a transaction says why, exactly (node/tx/model.py). The refusal is
what a client sees (400 with the reason); a test that only expects *some* refusal passes when the
check it aims at is gone but another, for another reason, fires."""

from __future__ import annotations

import pytest

from node.tx import DATA_TYPES, Tx, TxError
from node.tx.model import (
    BREAK_GLASS_REASONS,
    KIND_GRANT,
    KIND_POLICY,
    KIND_PROFILE,
    KIND_READ,
    KIND_WRITE,
    MAX_CHAIN_ID,
    MAX_CID,
    MAX_KEYS_PER_GRANT,
    MAX_NAME,
    MAX_SEALED,
    U63,
    data_type_id,
    data_type_name,
)
from node.wire import encode
from tests.test_tx import ALICE, CHAIN, OK, SEALED, raw_tx

RELEASE = 0x13
CRED = [ALICE.public_key, 5, bytes(64)]

A32 = bytes(32)
GRANT, PROFILE, POLICY, WRITE, READ = KIND_GRANT, KIND_PROFILE, KIND_POLICY, KIND_WRITE, KIND_READ


def refused(kind: int, fields: list, why: str, **kw: object) -> None:
    with pytest.raises(TxError) as exc:
        Tx.decode(raw_tx(kind, fields, **kw), CHAIN)
    assert str(exc.value) == why


def uint(what: str, hi: int = U63) -> str:
    return f"{what} must be an integer in [0, {hi}]"


def with_(kind: int, i: int, value: object) -> list:
    f = list(OK[kind])
    f[i] = value
    return f


CASES = [
    # grants
    (GRANT, [A32, [1], 0], "grant takes 4 fields: staff, types, expiry_ms, keys"),
    (GRANT, with_(GRANT, 0, bytes(33)), "staff address must be 32..32 bytes"),
    (GRANT, with_(GRANT, 0, bytes(31)), "staff address must be 32..32 bytes"),
    (GRANT, with_(GRANT, 0, "a" * 32), "staff address must be 32..32 bytes"),
    (GRANT, with_(GRANT, 1, 1), "types must be a list of data types"),
    (GRANT, with_(GRANT, 1, [1, 2, 3, 4, 5, 1]), "types must be a list of data types"),
    (GRANT, [A32, [2, 1], 0, []], "types must be sorted and unique"),
    (GRANT, [A32, [1, 1], 0, []], "types must be sorted and unique"),
    (GRANT, [A32, [9], 0, []], "unknown data type 9"),
    (GRANT, [A32, [True], 0, []], "unknown data type True"),
    (GRANT, [A32, [1], -1, []], uint("expiry_ms")),
    (GRANT, [A32, [1], 0, b"keys"], f"keys must be a list of at most {MAX_KEYS_PER_GRANT}"),
    (GRANT, [A32, [1], 0, [[1, 0, SEALED]] * (MAX_KEYS_PER_GRANT + 1)],
     f"keys must be a list of at most {MAX_KEYS_PER_GRANT}"),
    (GRANT, [A32, [1], 0, [[1, 0]]], "each sealed key is [type, epoch, sealed]"),
    (GRANT, [A32, [1], 0, [b"k"]], "each sealed key is [type, epoch, sealed]"),
    (GRANT, [A32, [1], 0, [[2, 0, SEALED]]], "a sealed key for a type that is not granted"),
    (GRANT, [A32, [1], 0, [[1, 2**32, SEALED]]], uint("epoch", 2**32 - 1)),
    (GRANT, [A32, [1], 0, [[1, 0, b""]]], f"sealed key must be 1..{MAX_SEALED} bytes"),
    (GRANT, [A32, [1], 0, [[1, 0, bytes(MAX_SEALED + 1)]]], f"sealed key must be 1..{MAX_SEALED} bytes"),
    # profiles
    (PROFILE, ["n", "r", "o"], "profile takes 4 fields: name, role, org, x25519_public (and a clinician credential)"),
    (PROFILE, [*OK[PROFILE], CRED, 1], "profile takes 4 fields: name, role, org, x25519_public (and a clinician credential)"),
    (PROFILE, [*OK[PROFILE], CRED[:2]], "a credential is [issuer public key, not_after_ms, signature]"),
    (PROFILE, [*OK[PROFILE], b"cred"], "a credential is [issuer public key, not_after_ms, signature]"),
    (PROFILE, [*OK[PROFILE], [bytes(32), 5, bytes(64)]], "credential issuer must be 33..33 bytes"),
    (PROFILE, [*OK[PROFILE], [b"\x02" + bytes(32), 5, bytes(64)]],
     "credential issuer is not a valid compressed secp256k1 public key"),
    (PROFILE, [*OK[PROFILE], [ALICE.public_key, -1, bytes(64)]], uint("credential not_after_ms")),
    (PROFILE, [*OK[PROFILE], [ALICE.public_key, 5, bytes(63)]], "credential signature must be 64..64 bytes"),
    # releases
    (RELEASE, [A32, 1, 5], "release takes 4 fields: staff, type, expiry_ms, keys"),
    (RELEASE, [bytes(31), 1, 5, [[0, SEALED]]], "staff address must be 32..32 bytes"),
    (RELEASE, [A32, 9, 5, [[0, SEALED]]], "unknown data type 9"),
    (RELEASE, [A32, 1, -5, [[0, SEALED]]], uint("expiry_ms")),
    (RELEASE, [A32, 1, 5, [[0, SEALED]] * (MAX_KEYS_PER_GRANT + 1)], f"keys must be a list of at most {MAX_KEYS_PER_GRANT}"),
    (RELEASE, [A32, 1, 5, [[1, 0, SEALED]]], "each released key is [epoch, sealed]"),
    (RELEASE, [A32, 1, 5, [[2**32, SEALED]]], uint("epoch", 2**32 - 1)),
    (RELEASE, [A32, 1, 5, [[0, b""]]], f"sealed key must be 1..{MAX_SEALED} bytes"),
    (RELEASE, [A32, 1, 5, [[2, SEALED], [1, SEALED]]], "released epochs must be sorted and unique"),
    (RELEASE, [A32, 1, 5, [[1, SEALED], [1, SEALED]]], "released epochs must be sorted and unique"),
    (RELEASE, [A32, 1, 5, []], "a release carries keys and an expiry; an end of a release carries neither"),
    (RELEASE, [A32, 1, 0, [[1, SEALED]]], "a release carries keys and an expiry; an end of a release carries neither"),
    (PROFILE, with_(PROFILE, 0, "x" * (MAX_NAME + 1)), f"name must be a string of at most {MAX_NAME} bytes"),
    (PROFILE, with_(PROFILE, 0, "é" * 33), f"name must be a string of at most {MAX_NAME} bytes"),  # bytes, not chars
    (PROFILE, with_(PROFILE, 1, b"r"), f"role must be a string of at most {MAX_NAME} bytes"),
    (PROFILE, with_(PROFILE, 2, 7), f"org must be a string of at most {MAX_NAME} bytes"),
    (PROFILE, with_(PROFILE, 3, bytes(31)), "x25519 public key must be 32..32 bytes"),
    # policy
    (POLICY, [], "policy takes 1 field: break_glass (true or false)"),
    (POLICY, [1], "policy takes 1 field: break_glass (true or false)"),
    (POLICY, [True, True], "policy takes 1 field: break_glass (true or false)"),
    # writes
    (WRITE, OK[WRITE][:5], "write takes 6 fields: type, cid, size, epoch, t_start_ms, t_end_ms"),
    (WRITE, with_(WRITE, 0, 0), "unknown data type 0"),
    (WRITE, with_(WRITE, 1, b"c"), f"cid must be 2..{MAX_CID} bytes"),
    (WRITE, with_(WRITE, 1, bytes(MAX_CID + 1)), f"cid must be 2..{MAX_CID} bytes"),
    (WRITE, with_(WRITE, 1, bytes(MAX_CID)),
     "cid: a write names a binary CIDv1, raw or dag-pb, with a sha2-256 digest (36 bytes)"),
    (WRITE, with_(WRITE, 1, b"\x12\x20" + bytes(32)),  # a CIDv0
     "cid: a write names a binary CIDv1, raw or dag-pb, with a sha2-256 digest (36 bytes)"),
    (WRITE, with_(WRITE, 2, (1 << 40) + 1), uint("size", 1 << 40)),
    (WRITE, with_(WRITE, 3, 2**32), uint("epoch", 2**32 - 1)),
    (WRITE, with_(WRITE, 4, -1), uint("t_start_ms")),
    (WRITE, with_(WRITE, 5, True), uint("t_end_ms")),
    (WRITE, [1, b"cid", 10, 0, 5, 4], "t_end_ms before t_start_ms"),
    # reads
    (READ, [A32, 1, b""], "read takes 5 fields: patient, type, cid, t_from_ms, t_to_ms (and a break-glass reason)"),
    (READ, [A32, 1, b"", 0, 5, "ETREAT", 1],
     "read takes 5 fields: patient, type, cid, t_from_ms, t_to_ms (and a break-glass reason)"),
    (READ, [A32, 1, b"", 0, 5, "BTG"], "read takes 5 fields, or 6 with a break-glass reason: one of "
                                       f"{', '.join(BREAK_GLASS_REASONS)} (HL7 v3-ActReason)"),
    (READ, [bytes(33), 1, b"", 0, 5], "patient address must be 32..32 bytes"),
    (READ, [A32, 6, b"", 0, 5], "unknown data type 6"),
    (READ, [A32, 1, bytes(MAX_CID + 1), 0, 5], f"cid must be 0..{MAX_CID} bytes"),
    (READ, [A32, 1, b"", -1, 5], uint("t_from_ms")),
    (READ, [A32, 1, b"", 0, U63 + 1], uint("t_to_ms")),
    (READ, [A32, 1, b"", 6, 5], "t_to_ms before t_from_ms"),
]


@pytest.mark.parametrize("kind,fields,why", CASES)
def test_each_refusal_says_exactly_why(kind: int, fields: list, why: str) -> None:
    refused(kind, fields, why)


def test_envelope_refusals_say_exactly_why() -> None:
    refused(PROFILE, OK[PROFILE], "unsupported transaction version 2", version=2)
    refused(PROFILE, OK[PROFILE], f"wrong chain id {'other'!r} (this chain is {CHAIN!r})", chain="other")
    refused(PROFILE, OK[PROFILE], f"chain id must be a string of at most {MAX_CHAIN_ID} bytes",
            chain="c" * (MAX_CHAIN_ID + 1))
    refused(PROFILE, OK[PROFILE], "nonces start at 1", nonce=0)
    for bad in (b"\x02" + bytes(32), ALICE.public_key[:32], "k" * 33):  # not on the curve, short, not bytes
        refused(PROFILE, OK[PROFILE], "sender is not a valid 33-byte compressed secp256k1 public key", pubkey=bad)
    for raw, why in ((encode([b"p"]), "a transaction is [payload, signature]"),
                     (encode(b"x"), "a transaction is [payload, signature]"),
                     (encode(["p", bytes(64)]), "payload and signature must be bytes"),
                     (encode([b"p", "s" * 64]), "payload and signature must be bytes"),
                     (encode([encode([1, PROFILE, CHAIN, ALICE.public_key]), bytes(64)]),
                      "payload is [version, kind, chain_id, sender, nonce, *fields]"),
                     (encode([encode(b"payload"), bytes(64)]), "payload is [version, kind, chain_id, sender, nonce, *fields]")):
        with pytest.raises(TxError) as exc:
            Tx.decode(raw, CHAIN)
        assert str(exc.value) == why
    refused(PROFILE, OK[PROFILE], uint("nonce"), nonce=U63 + 1)


def test_boundary_values_are_accepted() -> None:
    for kind, fields in [(GRANT, [A32, [1, 2, 3, 4, 5], U63, [[1, 2**32 - 1, b"k"]]]),  # a 1-byte sealed key
                         (GRANT, [A32, [], 0, []]),  # a revoke
                         (PROFILE, ["é" * 32, "", "x" * MAX_NAME, A32]),
                         (PROFILE, ["n", "", "", A32, [ALICE.public_key, U63, bytes(64)]]),  # any signature: checked on chain
                         (RELEASE, [A32, 5, U63, [[0, b"k"], [2**32 - 1, bytes(MAX_SEALED)]]]),
                         (RELEASE, [A32, 1, 0, []]),  # the end of a release
                         (RELEASE, [A32, 1, 5, [[e, b"k"] for e in range(MAX_KEYS_PER_GRANT)]]),
                         (WRITE, [5, b"\x01\x55\x12\x20" + bytes(32), 1 << 40, 2**32 - 1, 7, 7]),
                         (WRITE, [1, b"\x01\x70\x12\x20" + bytes(32), 0, 0, 0, U63]),
                         (READ, [A32, 1, bytes(MAX_CID), 5, 5]),
                         (READ, [A32, 1, b"", 0, U63, "ETREAT"])]:
        tx = Tx.decode(raw_tx(kind, fields), CHAIN)
        assert tx.body.fields() == fields and tx.nonce == 1 and tx.address == ALICE.address
    assert Tx.decode(raw_tx(PROFILE, OK[PROFILE], chain="c" * MAX_CHAIN_ID, nonce=U63), "c" * MAX_CHAIN_ID).nonce == U63


def test_data_type_names_and_ids() -> None:
    for name, tid in DATA_TYPES.items():
        assert data_type_id(name) == tid and data_type_id(tid) == tid and data_type_name(tid) == name
    known = ", ".join(DATA_TYPES)
    for bad in ("pulse", 0, 6, None, 1.0):
        with pytest.raises(TxError) as exc:
            data_type_id(bad)
        assert str(exc.value) == f"unknown data type {bad!r}; known: {known}"
