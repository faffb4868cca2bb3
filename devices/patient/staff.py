"""The staff client: register a profile, read permitted data (each read committed on chain), decrypt."""

from __future__ import annotations

from dataclasses import dataclass

from devices.patient import envelope
from devices.patient.client import ApiError, NodeClient
from devices.patient.commits import TxRejected, submit_proven
from devices.patient.verified_reads import VerifiedReader
from node.crypto import seal
from node.crypto.keys import Identity
from node.ipfs.cid import Cid
from node.state import Code
from node.state.records import NO_NONCE
from node.tx import Credential, Profile, Read, Tx, data_type_id


class AccessDenied(Exception):
    pass


@dataclass
class Window:
    cid: str
    epoch: int
    t_start_ms: int
    t_end_ms: int
    readings: list[envelope.Reading]
    # break-glass only: the ciphertext was fetched but no data key is sealed to us (yet), so the
    # readings are empty; the patient's phone releases keys for emergency reads (Phone.answer_break_glass)
    sealed: bool = False
    # break-glass only: why a validator refused this ciphertext (403): a key of its epoch was once
    # sealed to us and that access ended, so only the patient's release opens it again
    refused: str = ""


class Staff:
    def __init__(self, identity: Identity, client: NodeClient, chain_id: str, reader: VerifiedReader | None = None,
                 validators: list[bytes] | None = None) -> None:
        self.identity, self.client, self.chain_id = identity, client, chain_id
        self.next_nonce: int | None = None
        self.reader = reader  # when set, the data index and sealed keys are proven, not trusted
        self.reads = reader or client
        self.validators = validators  # genesis keys: when set, commits are checked by proof

    @property
    def address(self) -> bytes:
        return self.identity.address

    async def _send(self, body, timeout: float = 30.0) -> tuple[str, dict]:
        if self.next_nonce is None:  # proven through the reader: one validator's word is not taken
            acct = await (self.reader.account(self.address) if self.reader is not None
                          else self.client.account(self.address))
            self.next_nonce = acct["next_nonce"]
        tx = Tx.build(self.identity, self.chain_id, self.next_nonce, body)
        txid = tx.id.hex()
        try:
            # with a reader and the genesis keys, a refusal is raised only when every validator asked
            # refused (wait_proven's failover): one validator's 403 is no verdict
            st = await submit_proven(self.client, tx, None, timeout, self.validators, self.chain_id, self.reader)
        except Exception as exc:
            self.next_nonce = None  # whether its nonce was taken is the chain's to say
            if isinstance(exc, ApiError) and (exc.status == 403 or (exc.status == 429 and "break-glass" in exc.reason)):
                raise AccessDenied(exc.reason) from None
            raise
        # executed without taking its nonce (bad nonce, duplicate): read it again
        self.next_nonce = None if st["code"] in NO_NONCE else self.next_nonce + 1
        if st["code"] in (Code.DENIED, Code.BREAK_GLASS_OFF, Code.BREAK_GLASS_LIMIT, Code.NO_CREDENTIAL):
            raise AccessDenied(str(st.get("result", f"refused with code {st['code']}")))
        if st["code"] != 0:
            raise TxRejected(st)
        return txid, st

    async def register(self, name: str, role: str, org: str, credential: Credential | None = None) -> str:
        """Publish the profile; with a clinician credential (node/tx/credential.py) from an issuer in
        the genesis, its holder may make emergency (break-glass) reads."""
        txid, _ = await self._send(Profile(name, role, org, self.identity.box_public, credential))
        return txid

    async def read(self, patient: bytes, dtype: str | int, cid: str | None = None,
                   t_from_ms: int = 0, t_to_ms: int = 2**63 - 1, break_glass: str = "") -> list[Window]:
        """Commit a read of one CID (or a time range) and decrypt what it covers. With `break_glass`
        (a v3-ActReason code, "ETREAT") it is an emergency read that needs no grant: committed and
        shown as such in the patient's audit log, rate-limited on chain, refused if the patient opted out."""
        tid = data_type_id(dtype)
        cid_b = Cid.parse(cid).to_bytes() if cid else b""
        txid, _ = await self._send(Read(patient, tid, cid_b, t_from_ms, t_to_ms, break_glass))
        recs = (await self.reads.data(patient))["data"]
        recs = [r for r in recs if data_type_id(r["type"]) == tid and
                (r["cid"] == cid if cid else (r["t_end_ms"] >= t_from_ms and r["t_start_ms"] <= t_to_ms))]
        sealed = {(data_type_id(k["type"]), k["epoch"]): bytes.fromhex(k["sealed"])
                  for k in (await self.reads.sealed_keys(patient, self.address))["keys"]}
        out = []
        for r in recs:
            try:
                blob = await self.client.download_any(self.reader.urls if self.reader else [], self.identity,
                                                      self.chain_id, r["cid"], Cid.parse(r["cid"]).to_bytes(),
                                                      bytes.fromhex(txid), r["size"])
            except ApiError as exc:
                if not (break_glass and exc.status == 403):
                    raise
                out.append(Window(r["cid"], r["epoch"], r["t_start_ms"], r["t_end_ms"], [], refused=exc.reason))
                continue
            key_sealed = sealed.get((tid, r["epoch"]))
            if key_sealed is None and break_glass:
                out.append(Window(r["cid"], r["epoch"], r["t_start_ms"], r["t_end_ms"], [], sealed=True))
                continue
            if key_sealed is None:
                raise AccessDenied(f"no key for epoch {r['epoch']} of this data type was sealed to us")
            key = seal.unseal(self.identity.box_secret, key_sealed)
            ad = envelope.aad(self.chain_id, patient, tid, r["epoch"], r["t_start_ms"], r["t_end_ms"])
            out.append(Window(r["cid"], r["epoch"], r["t_start_ms"], r["t_end_ms"],
                              envelope.open_window(key, ad, blob)))
        return out
