"""Process plumbing for running validators as a service: tying a child to its parent's life,
checking that ports are free before anything is started on them, systemd's readiness protocol."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import socket
import sys

log = logging.getLogger("medchain.service")

PARENT_ENV = "MEDCHAIN_PARENT_PID"  # set by a supervisor (devnet) that wants its children to die with it
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """When MEDCHAIN_PARENT_PID is set, have the kernel send SIGTERM to this process when that parent
    dies (Linux prctl PR_SET_PDEATHSIG): a `medchain devnet` killed with SIGKILL, or crashing, then
    leaves no validator behind. If the parent is already gone (it died before the prctl), exit now.
    Elsewhere than Linux, a no-op."""
    raw = os.environ.pop(PARENT_ENV, None)  # popped: nothing this process starts inherits it
    if not raw or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
            return
    except (OSError, AttributeError) as exc:
        log.warning("cannot tie this process to its parent: %s", exc)
        return
    if os.getppid() != int(raw):
        raise SystemExit(f"parent process {raw} is gone: not starting")


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on host:port (bound with SO_REUSEADDR, as the validator's
    own sockets are, so a port in TIME_WAIT counts as free)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def busy_ports(wanted: list[tuple[str, int, str]]) -> list[str]:
    """Of (host, port, what) triples, a line for each port something already holds."""
    return [f"{what}: {host}:{port} is already in use" for host, port, what in wanted
            if port and port_in_use(host, port)]


def sd_notify(state: str) -> bool:
    """Tell systemd (Type=notify) about the service's state, e.g. READY=1 once the API serves and
    STOPPING=1 when a drain starts; a no-op (False) when not started by systemd (no NOTIFY_SOCKET)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):  # an abstract socket
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify(%s) to %s failed: %s", state, addr, exc)
        return False
    return True


def ignore_signals(*sigs: signal.Signals) -> None:
    """Ignore further stop signals while a shutdown is under way (a second Ctrl-C must not abort it)."""
    for s in sigs:
        with contextlib.suppress(ValueError, OSError):
            signal.signal(s, signal.SIG_IGN)
