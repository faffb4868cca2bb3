"""Start and stop real validator processes on 127.0.0.1 (used by the demo, benchmarks and tests).

`supervised()` is how a command that owns its validators runs them (`medchain devnet`, `demo`,
`loadtest`, `faults`): ports checked free first, each validator tied to this process's life
(PR_SET_PDEATHSIG, node/service.py), and SIGTERM, SIGINT or SIGHUP stopping them all before the
command ends, so none outlives it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from node.crypto.keys import Identity
from node.genesis import Genesis, IssuerInfo, Params, init_home, new_chain_id
from node.multiaddr import host_port
from node.p2p import swarmkey
from node.ports import free_ports
from node.service import PARENT_ENV, busy_ports, ignore_signals

# A load generator is a whole fleet behind one address: the genesis parameters that lift the
# per-client-IP limits for it, so a benchmark measures the validators, not the limiter
ONE_ADDRESS_FLEET: dict[str, float] = {"client_tx_rate": 1e7, "client_tx_burst": 1e7, "client_mempool_share": 1.0}


@dataclass
class NodeProcess:
    home: Path
    port: int
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    env: dict = field(default_factory=dict)
    chain_id: str = ""  # when set, wait_ready checks the API answering is this validator of this chain
    index: int = -1
    # the kernel stops the validator when the thread that launched it ends (node/service.py): launch a
    # supervised one from the main thread (an asyncio worker thread ends when its loop shuts down)
    die_with_parent: bool = False
    host: str = "127.0.0.1"  # where its API is reached
    prefix: list[str] = field(default_factory=list)  # run it under this, e.g. ["ip", "netns", "exec", NS]
    args: list[str] = field(default_factory=list)  # more `medchain node` flags (--config, --p2p-listen...)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> NodeProcess:
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> None:
        self.log_path = self.log_path or self.home / "node.log"  # set it to keep the log off a full home
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        env = {**os.environ, **self.env}
        if self.die_with_parent:
            env[PARENT_ENV] = str(os.getpid())
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "node.cli", "node", "--home", str(self.home), "--port", str(self.port),
             *self.args],
            stdout=logf, stderr=subprocess.STDOUT, env=env,
            # a supervised validator is stopped by its supervisor only: a terminal's Ctrl-C (sent to the
            # whole foreground process group) reaches the supervisor, which then stops each validator once
            process_group=0 if self.die_with_parent else None)
        logf.close()

    def wait_ready(self, timeout: float = 20.0) -> NodeProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"validator exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/v1/status", timeout=1) as resp:
                    st = json.loads(resp.read())
            except (OSError, ValueError):
                time.sleep(0.05)
                continue
            if self.chain_id and (st.get("chain_id"), st.get("validator_index")) != (self.chain_id, self.index):
                # another process holds our port (an orphan of another network, say): never report it as ours
                self.kill()
                raise RuntimeError(f"{self.url} answers as validator {st.get('validator_index')} of chain "
                                   f"{st.get('chain_id')}, not as validator {self.index} of {self.chain_id}: "
                                   f"port {self.port} is taken by another process")
            return self
        self.kill()
        raise TimeoutError(f"validator did not come up: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> int | None:
        return self.stop(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets but does nothing (a hung or descheduled validator)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def cpu_seconds(self) -> float:
        """User + system CPU of the live process, from /proc."""
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            parts = fh.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


DEV_ISSUER_FILE = "issuer_key.json"


def dev_issuer(home: Path) -> Identity:
    """The credential issuer of the local network whose validator home is `home`."""
    return Identity.load(Path(home).parent / DEV_ISSUER_FILE)


def make_network(root: Path, validators: int = 1, chain_id: str | None = None,
                 params: Params | None = None, p2p_mode: str = "direct",
                 base_port: int | None = None, private_network: bool = False) -> list[NodeProcess]:
    """Homes for a local network: API ports base_port+i and libp2p ports base_port+1000+i, or free ports."""
    if base_port:
        ports = [base_port + i for i in range(validators)]
        p2p_ports = [base_port + 1000 + i for i in range(validators)]
    else:
        both = free_ports(2 * validators)
        ports, p2p_ports = both[:validators], both[validators:]
    p2p = [f"127.0.0.1:{p}" for p in p2p_ports] if validators > 1 else None
    chain_id = chain_id or new_chain_id()
    # a local network's own credential issuer (DEV_ISSUER_FILE in the root), so its staff can be
    # made clinicians: `medchain issuer credential --key ROOT/issuer_key.json ...`
    issuer = Identity.generate()
    root.mkdir(parents=True, exist_ok=True)
    issuer.save(root / DEV_ISSUER_FILE)
    homes = init_home(root, chain_id, [f"127.0.0.1:{p}" for p in ports], int(time.time() * 1000),
                      params, p2p, (IssuerInfo("local network issuer", issuer.public_key.hex()),))
    if private_network:
        key = swarmkey.new_key()
        for h in homes:
            swarmkey.write(h, key)
    return [NodeProcess(h, p, env={"MEDCHAIN_P2P_MODE": p2p_mode}, chain_id=chain_id, index=i)
            for i, (h, p) in enumerate(zip(homes, ports, strict=True))]


def start_all(nodes: list[NodeProcess], timeout: float = 30.0) -> None:
    """Start every validator process, then wait until each API answers; if one fails, stop them all
    (a half-started network must not outlive its caller)."""
    try:
        for n in nodes:
            n.launch()
        for n in nodes:
            n.wait_ready(timeout)
    except BaseException:
        for n in nodes:
            n.kill()
        raise


def stop_all(nodes: list[NodeProcess], sig: int = signal.SIGTERM, timeout: float = 15.0) -> list[int | None]:
    """Signal every running validator at once, wait for all (up to `timeout` in total), SIGKILL any
    still running after it; their exit codes (None: never started)."""
    live = [n for n in nodes if n.proc is not None and n.proc.poll() is None]
    for n in live:
        n.proc.send_signal(sig)
    deadline = time.monotonic() + timeout
    for n in live:
        try:
            n.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            n.proc.kill()
            n.proc.wait()
    return [None if n.proc is None else n.proc.returncode for n in nodes]


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Stopped(SystemExit):
    """A stop signal reached a supervisor (see `supervised`). A SystemExit (exit status 128 + the
    signal's number), so no `except Exception` on the way up swallows it and asyncio.run re-raises it
    at once; the `with supervised(...)` it crosses stops the validators."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


class PortsTaken(RuntimeError):
    """Something already listens on a port a validator of the network would use."""


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


def network_ports(nodes: list[NodeProcess]) -> list[tuple[str, int, str]]:
    """(host, port, what) for every API and libp2p port of the network's validators (its genesis)."""
    gen = Genesis.load(nodes[0].home / "genesis.json")
    out = []
    for i, v in enumerate(gen.validators):
        host, port = v.api.rsplit(":", 1)
        out.append((host, int(port), f"validator {i} API"))
        if v.p2p:
            out.append((*host_port(v.p2p), f"validator {i} libp2p"))
    return out


@contextmanager
def supervised(nodes: list[NodeProcess], timeout: float = 30.0) -> Iterator[list[NodeProcess]]:
    """Start `nodes` for the body of the `with` and stop them all when it ends, however it ends.

    - PortsTaken (nothing started) if an API or libp2p port is already in use;
    - each validator dies with this process, even one killed by SIGKILL (PR_SET_PDEATHSIG);
    - SIGTERM, SIGINT and SIGHUP raise Stopped in the body; then every validator is signalled at
      once and waited for (SIGKILL after a grace), and further signals are ignored until that is done.
    Main thread only (signal handlers), as a command's body is."""
    old = {s: signal.signal(s, _raise_stopped) for s in STOP_SIGNALS}
    try:
        busy = busy_ports(network_ports(nodes))
        if busy:
            raise PortsTaken("; ".join(busy))
        for n in nodes:
            n.die_with_parent = True
        start_all(nodes, timeout)
        yield nodes
    except Stopped as exc:
        print(f"{exc.name}: stopping {len(nodes)} validator(s)", file=sys.stderr, flush=True)
        raise
    finally:
        ignore_signals(*STOP_SIGNALS)  # the cleanup below must run to its end
        stop_all(nodes)
        for s, h in old.items():
            signal.signal(s, h)
