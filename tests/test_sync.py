"""State transfer's wire form: requests and responses are checked before anything is trusted."""

from __future__ import annotations

import pytest

from node.block import GENESIS_PREV, Block, Header
from node.sync import MAX_BLOCKS, SyncError, decode_request, decode_response, encode_request
from node.wire import encode


def test_request_round_trip_and_limits():
    assert decode_request(encode_request(5, 64)) == (5, 64)
    for bad in (encode([0, 1]), encode([1, 0]), encode([1, MAX_BLOCKS + 1]), encode([1]), encode([True, 1]),
                encode(["1", 1]), b"\xc1", b"", encode([1, 1]) + b"\x00", encode(list(range(40)))):
        with pytest.raises(SyncError):
            decode_request(bad)


def test_response_must_hold_decodable_blocks():
    h = Header("c", 1, GENESIS_PREV, 0, 1, 1, bytes(32), bytes(32), 0)
    b = Block(h, ())
    assert decode_response(encode([b.encode()])) == [b]
    for bad in (encode(1), encode([1]), encode([b"junk"]), encode([b.encode()] * (MAX_BLOCKS + 1)), b"\xc1"):
        with pytest.raises(SyncError):
            decode_response(bad)
