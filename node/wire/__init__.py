"""Canonical msgpack codec with hard size limits."""

from node.wire.codec import (
    MAX_BLOCK_BYTES,
    MAX_TX_BYTES,
    WireError,
    check_size,
    decode,
    decode_canonical,
    encode,
    value_budget,
)

__all__ = ["MAX_BLOCK_BYTES", "MAX_TX_BYTES", "WireError", "check_size", "decode", "decode_canonical", "encode",
           "value_budget"]
