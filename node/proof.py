"""Light-client check that a transaction is committed: the Merkle path to the block's tx root and
the block's commit certificate against the genesis validator keys. Nothing the answering validator
says is trusted beyond what these two checks prove."""

from __future__ import annotations

from collections.abc import Sequence

from node import merkle
from node.block import Block, BlockError, verify_cert


class ProofError(ValueError):
    pass


def verify_inclusion(txid: bytes, index: int, tx_count: int, path: Sequence[bytes], block_raw: bytes,
                     validators: Sequence[bytes], chain_id: str) -> Block:
    """Return the block if `txid` is at `index` of a block certified by 2f+1 of `validators`."""
    try:
        block = Block.decode(block_raw)
    except BlockError as exc:
        raise ProofError(f"block does not decode: {exc}") from None
    if block.header.chain_id != chain_id:
        raise ProofError("block is from another chain")
    if tx_count != len(block.txs) or not 0 <= index < tx_count or block.tx_ids[index] != txid:
        raise ProofError("the transaction is not at that index of the block")
    if not verify_cert(block, validators):
        raise ProofError("commit certificate does not carry 2f+1 valid validator signatures")
    if not merkle.verify(txid, index, tx_count, path, block.header.tx_root):
        raise ProofError("Merkle path does not lead to the block's transaction root")
    return block
