"""What a state transfer leaves in the joining validator's memory.

In one process: a real LMDB ledger holding a certified checkpoint of N keys serves it (node/statesync.py's
server, through the in-process transport of tests/test_statesync.py) and a validator's state-transfer
client fetches, proves and installs it into its own LMDB ledger. Prints the process's anonymous memory
before and after, and the installed ledger's size. The client streams the chunks to a snapshot file
and installs it from a process of its own (node/snapshot.py install_main), so what it keeps should not
grow with N; installed in-process, LMDB keeps a malloc'd copy of every page the install wrote. The
installer's own peak RSS is printed too: it streams the state into its LMDB transaction
(node/checkpoint.py StateAssembler), so it should not grow with N past LMDB's dirty-page list.

    .venv/bin/python bench/state_transfer_memory.py [--keys 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from node.statesync import CheckpointClient, CheckpointServer
from tests import test_statesync as harness


def anon_mb() -> float:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon"):
                return int(line.split()[1]) / 1024
    return 0.0


def main(keys: int) -> None:
    os.environ["MEDCHAIN_STATE_SYNC_BLOCKS"] = "10"
    tmp = Path(tempfile.mkdtemp(prefix="medchain-xfer-mem-"))
    start = anon_mb()
    state = harness.make_state(keys)
    source = harness.serving_ledger(tmp / "source", harness.certified(state), state)
    server = CheckpointServer(source)
    del state
    host = harness.validator_host(tmp, {f"peer{j}": server for j in (1, 2, 3)})
    client = CheckpointClient(host)
    ok = asyncio.run(client.run())
    server.close()
    source.close()  # the serving side's own LMDB copy goes with its environment
    after = anon_mb()
    size = (tmp / "mine" / "ledger" / "data.mdb").stat().st_blocks * 512 / 2**20  # a sparse file (node/mapfile.py)
    installer = client.stats.get("installer_peak_mb")  # its VmHWM (ru_maxrss keeps ours from the fork)
    print(f"state transfer of {keys} keys: installed {ok}; anonymous memory {start:.0f} MB at the start, "
          f"{after:.0f} MB once installed and the source closed: {after - start:+.0f} MB kept "
          f"(installed ledger {size:.0f} MB); the installer process's peak RSS {installer} MB")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=200_000)
    main(ap.parse_args().keys)
