"""Free TCP ports for local networks (tests, `medchain devnet`, benchmarks), chosen below the
kernel's ephemeral range: a port in that range can be taken, between being chosen and being
listened on, by any outgoing connection's automatic local port (a validator failed to start with
"port busy" that way, in a full test run)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 20_000
_rng = random.SystemRandom()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default; elsewhere the range only needs to be below it


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports free on `host` now, each below the ephemeral range (kernel-chosen ones if
    that leaves too few). All stay bound until every one is chosen."""
    high = _ephemeral_low() - 1
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        tries = 0
        while len(ports) < n and high - LOWEST > 4 * n and tries < 100 * n:
            tries += 1
            p = _rng.randrange(LOWEST, high + 1)
            if p in ports:
                continue
            s = socket.socket()
            try:
                s.bind((host, p))
            except OSError:
                s.close()
                continue
            socks.append(s)
            ports.append(p)
        while len(ports) < n:  # no room below the range: let the kernel choose
            s = socket.socket()
            socks.append(s)
            s.bind((host, 0))
            ports.append(s.getsockname()[1])
        return ports
    finally:
        for s in socks:
            s.close()
