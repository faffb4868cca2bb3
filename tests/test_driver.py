"""The driver's consensus task (node/validator.py) over a real LMDB ledger, without the network."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from node import clock
from node.genesis import Params, init_home
from node.validator import Validator


def test_a_block_built_for_a_view_the_replica_left_is_not_proposed(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The producer builds a block in view 0, then the replica leaves view 0 (a view change, or a
    validator restarted into a view the others left) before the consensus task takes the block: it
    is dropped with an INFO line, not handed to the replica, which would refuse it with an error and
    a traceback in the log."""
    homes = init_home(tmp_path, "driver-test", [f"127.0.0.1:{9000 + i}" for i in range(4)],
                      int(time.time() * 1000), Params(), p2p=[f"127.0.0.1:{9100 + i}" for i in range(4)])
    v = Validator(homes[0])  # validator 0: the primary of view 0
    try:
        async def go() -> None:
            task = asyncio.create_task(v._consensus())
            ex = await v.pipeline.build(v.pipeline.build_tip(), [], 0, v.index, clock.now_ms())
            v.replica.start_view_change(1)
            await v._inbox.put(("propose", ex.block))
            for _ in range(100):
                await asyncio.sleep(0.01)
                if v._inbox.empty():
                    break
            await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        with caplog.at_level(logging.INFO, logger="medchain.validator"):
            asyncio.run(go())
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
        assert "block 1 built for view 0 not proposed: the replica is in view 1 (changing)" in caplog.text
        assert v.replica.in_flight() == 0 and v.replica.view == 1
    finally:
        v.pipeline.close()
        v.admission.close()
        v.ledger.close()
        v.blobs.close()
