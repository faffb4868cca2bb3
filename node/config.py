"""The node configuration file (TOML) beside `medchain node`'s flags.

Precedence, highest first: command-line flags, environment variables (MEDCHAIN_P2P_MODE,
MEDCHAIN_LOG_FORMAT, MEDCHAIN_LMDB_MAP_GB, MEDCHAIN_DISK_RESERVE_MB, MEDCHAIN_LMDB_WRITEMAP,
MEDCHAIN_MAX_QUEUE_S, MEDCHAIN_MEMPOOL_MB), the file, then defaults (the
genesis gives the API and p2p addresses a validator advertises, and by default listens on). Every
setting is optional; unknown sections or keys and wrong types are refused with the file and key
named, so a typo never passes silently. See deploy/node.toml for a commented example.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.multiaddr import is_ip

# section -> key -> (type, meaning); the one description of the file, also used for its errors
SCHEMA: dict[str, dict[str, tuple[type | tuple[type, ...], str]]] = {
    "": {"home": (str, "the validator's home: key, genesis, ledger, block store")},
    "api": {"listen": (str, "HOST:PORT the HTTP API listens on (default: the genesis address)"),
            "ready_file": (str, "write the API URL here once serving")},
    "p2p": {"listen": (str, "HOST:PORT the libp2p host listens on (default: the advertised genesis address)"),
            "mode": (str, "direct or gossipsub"),
            "ipfs_peers": (list, "external IPFS peers (multiaddrs with /p2p/ID) for bitswap"),
            "gate": (bool, "accept connections only from the peers' addresses, before any handshake "
                     "(default true; false for a peer whose outgoing address is not the one it advertises)")},
    "log": {"format": (str, "text or json"), "level": (str, "debug, info, warning or error")},
    "metrics": {"listen": (str, "HOST:PORT of a separate /metrics listener (it is also on the API)")},
    "limits": {"lmdb_map_gb": ((int, float), "LMDB map size of the ledger and block store, GiB"),
               "disk_reserve_mb": ((int, float), "free disk kept for committing the network's blocks, MiB"),
               "lmdb_writemap": (bool, "write the LMDB maps in place: less anonymous memory, and data files "
                                 "that are sparse files the size of the map (node/mapfile.py)"),
               "max_queue_s": ((int, float), "clients' transactions are taken on while the pool holds less "
                               "than this many seconds of the chain's work (beyond: 503, Retry-After)"),
               "mempool_mb": ((int, float), "bytes of pending transactions the pool holds, MiB (beyond: 503, "
                              "Retry-After; one client IP takes at most its share)")},
}
P2P_MODES = ("direct", "gossipsub")
MIN_MEMPOOL_MB = 9  # a full block's byte budget (node/block.py TXS_MAX_BYTES) must fit in the pool
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the setting."""


@dataclass
class NodeSettings:
    home: Path | None = None
    api_host: str | None = None  # None: the host, or port, of this validator's genesis API address
    api_port: int | None = None
    ready_file: str | None = None
    p2p_listen: str | None = None
    p2p_mode: str = "direct"
    ipfs_peers: list[str] = field(default_factory=list)
    p2p_gate: bool = True
    log_format: str = "text"
    log_level: str = "info"
    metrics_listen: str | None = None
    lmdb_map_gb: float | None = None
    disk_reserve_mb: float | None = None
    lmdb_writemap: bool | None = None
    max_queue_s: float | None = None
    mempool_mb: float | None = None


def _hostport(value: str, where: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{where}: {value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def read_file(path: Path) -> dict[str, Any]:
    """The file's settings as {"section.key": value} (top-level keys bare), checked against SCHEMA."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            if key not in SCHEMA or not key:
                raise ConfigError(f"{path}: unknown section [{key}] (known: "
                                  f"{', '.join(f'[{s}]' for s in SCHEMA if s)})")
            items, prefix = value.items(), f"{key}."
        else:
            items, prefix = [(key, value)], ""
        section = prefix.rstrip(".")
        for k, v in items:
            if k not in SCHEMA[section]:
                where = f"[{section}] {k}" if section else k
                raise ConfigError(f"{path}: unknown setting {where} (known: {', '.join(SCHEMA[section])})")
            kind, _ = SCHEMA[section][k]
            if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):
                want = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
                raise ConfigError(f"{path}: {prefix}{k} must be a {want}, not {type(v).__name__} ({v!r})")
            out[prefix + k] = v
    return out


def _check(s: NodeSettings, where: str) -> NodeSettings:
    if s.p2p_mode not in P2P_MODES:
        raise ConfigError(f"{where}: p2p.mode {s.p2p_mode!r}: one of {', '.join(P2P_MODES)}")
    if s.log_format not in LOG_FORMATS:
        raise ConfigError(f"{where}: log.format {s.log_format!r}: one of {', '.join(LOG_FORMATS)}")
    if s.log_level not in LOG_LEVELS:
        raise ConfigError(f"{where}: log.level {s.log_level!r}: one of {', '.join(LOG_LEVELS)}")
    for name in ("p2p_listen", "metrics_listen"):
        value = getattr(s, name)
        if value is not None:
            host, _ = _hostport(value, f"{where}: {name.replace('_', '.')}")
            if name == "p2p_listen" and not is_ip(host):  # libp2p binds an address, not a name
                raise ConfigError(f"{where}: p2p.listen {value!r}: the host must be an IP address (0.0.0.0 or :: "
                                  "for every interface)")
    if not all(isinstance(p, str) and "/p2p/" in p for p in s.ipfs_peers):
        raise ConfigError(f"{where}: p2p.ipfs_peers: multiaddrs ending in /p2p/<peer id>")
    for name in ("lmdb_map_gb", "disk_reserve_mb", "max_queue_s", "mempool_mb"):
        value = getattr(s, name)
        if value is not None and value < 0:
            raise ConfigError(f"{where}: limits.{name} must not be negative")
        if value is not None and value > _MOST[name]:
            raise ConfigError(f"{where}: limits.{name} must be at most {_MOST[name]:g}")
    if s.max_queue_s is not None and not s.max_queue_s > 0:
        raise ConfigError(f"{where}: limits.max_queue_s must be above 0")
    if s.mempool_mb is not None and not s.mempool_mb >= MIN_MEMPOOL_MB:
        raise ConfigError(f"{where}: limits.mempool_mb must be at least {MIN_MEMPOOL_MB} (a block's worth)")
    return s


def resolve(args: argparse.Namespace, env: dict[str, str] | None = None) -> NodeSettings:
    """Settings for `medchain node` from its flags (args), the environment, the file (args.config)."""
    env = dict(os.environ) if env is None else env
    f = read_file(Path(args.config)) if getattr(args, "config", None) else {}
    where = str(args.config) if getattr(args, "config", None) else "command line"

    def pick(flag: Any, env_key: str | None, file_key: str, default: Any) -> Any:
        if flag is not None:
            return flag
        if env_key and env.get(env_key):
            return env[env_key]
        return f.get(file_key, default)

    def named(env_key: str, file_key: str) -> str:
        """Where a value came from, for its error: the environment wins over the file."""
        return f"environment {env_key}" if env.get(env_key) else f"{where}: {file_key}"

    def num(env_key: str, file_key: str) -> float | None:
        return _num(pick(None, env_key, file_key, None), named(env_key, file_key))

    api_host, api_port = _hostport(f["api.listen"], f"{where}: api.listen") if "api.listen" in f else (None, None)
    home = pick(args.home, None, "home", None)
    s = NodeSettings(
        home=Path(home) if home else None,
        api_host=args.host if args.host is not None else api_host,
        api_port=args.port if args.port is not None else api_port,
        ready_file=pick(args.ready_file, None, "api.ready_file", None),
        p2p_listen=pick(getattr(args, "p2p_listen", None), None, "p2p.listen", None),
        p2p_mode=pick(getattr(args, "p2p_mode", None), "MEDCHAIN_P2P_MODE", "p2p.mode", "direct"),
        ipfs_peers=list(args.ipfs_peer or f.get("p2p.ipfs_peers", [])),
        p2p_gate=f.get("p2p.gate", True),
        log_format="json" if getattr(args, "log_json", False) else pick(None, "MEDCHAIN_LOG_FORMAT", "log.format",
                                                                         "text"),
        log_level=pick(getattr(args, "log_level", None), None, "log.level", "info"),
        metrics_listen=pick(getattr(args, "metrics_listen", None), None, "metrics.listen", None),
        lmdb_map_gb=num("MEDCHAIN_LMDB_MAP_GB", "limits.lmdb_map_gb"),
        disk_reserve_mb=num("MEDCHAIN_DISK_RESERVE_MB", "limits.disk_reserve_mb"),
        lmdb_writemap=_flag(pick(None, "MEDCHAIN_LMDB_WRITEMAP", "limits.lmdb_writemap", None),
                            named("MEDCHAIN_LMDB_WRITEMAP", "limits.lmdb_writemap")),
        max_queue_s=num("MEDCHAIN_MAX_QUEUE_S", "limits.max_queue_s"),
        mempool_mb=num("MEDCHAIN_MEMPOOL_MB", "limits.mempool_mb"),
    )
    if s.home is None:
        raise ConfigError(f"{where}: no home: pass --home DIR or set home = \"DIR\" in the configuration file")
    for value, env_key, allowed in ((s.p2p_mode, "MEDCHAIN_P2P_MODE", P2P_MODES),
                                    (s.log_format, "MEDCHAIN_LOG_FORMAT", LOG_FORMATS)):
        if value == env.get(env_key) and value not in allowed:  # not the file's to answer for
            raise ConfigError(f"environment {env_key} {value!r}: one of {', '.join(allowed)}")
    return _check(s, where)


# what each limit may be at most: beyond, a map or a reserve no disk holds, a queue no client waits
_MOST = {"lmdb_map_gb": 1 << 20, "disk_reserve_mb": 1 << 30, "max_queue_s": 1e12, "mempool_mb": 1 << 20}


def _num(v: Any, what: str = "") -> float | None:
    """A finite number (TOML and float() take inf and nan, which passed every range check below and
    then crashed the node at start, or answered every submission 500: a review)."""
    if v is None:
        return None
    try:
        f = float(v)
    except (ValueError, TypeError):
        raise ConfigError(f"{what}{': ' if what else ''}{v!r} is not a number") from None
    if not math.isfinite(f):
        raise ConfigError(f"{what}{': ' if what else ''}{v!r} is not a finite number")
    return f


def _flag(v: Any, what: str = "") -> bool | None:
    """A boolean from the file (true/false) or the environment (1/0)."""
    if v is None or isinstance(v, bool):
        return v
    if v not in ("0", "1"):
        raise ConfigError(f"{what}{': ' if what else ''}{v!r} is not 1 or 0")
    return v == "1"


def apply_environment(s: NodeSettings) -> None:
    """Hand the settings read through the environment (storage.py, the p2p mode) to the validator,
    and the log format to the logger."""
    os.environ["MEDCHAIN_P2P_MODE"] = s.p2p_mode
    if s.lmdb_map_gb is not None:
        os.environ["MEDCHAIN_LMDB_MAP_GB"] = repr(s.lmdb_map_gb)
    if s.disk_reserve_mb is not None:
        os.environ["MEDCHAIN_DISK_RESERVE_MB"] = repr(s.disk_reserve_mb)
    if s.lmdb_writemap is not None:
        os.environ["MEDCHAIN_LMDB_WRITEMAP"] = "1" if s.lmdb_writemap else "0"
    if s.max_queue_s is not None:
        os.environ["MEDCHAIN_MAX_QUEUE_S"] = repr(s.max_queue_s)
    if s.mempool_mb is not None:
        os.environ["MEDCHAIN_MEMPOOL_MB"] = repr(s.mempool_mb)
    from node.logs import configure
    configure(getattr(logging, s.log_level.upper()), s.log_format == "json")


def _env_number(name: str, default: float, ok: Callable[[float], bool], unit: str, must: str) -> float:
    """A number the validator reads from the environment (set from the file by apply_environment)."""
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: a number of {unit}") from None
    if not math.isfinite(value) or not ok(value):
        raise ConfigError(f"{name}={raw!r}: must be {must}")
    return value


def max_queue_s() -> float:
    """limits.max_queue_s as the validator reads it (MEDCHAIN_MAX_QUEUE_S; node/backlog.py)."""
    from node.backlog import MAX_WAIT_S
    return _env_number("MEDCHAIN_MAX_QUEUE_S", MAX_WAIT_S, lambda v: v > 0, "seconds", "above 0")


def mempool_bytes() -> int:
    """limits.mempool_mb in bytes as the validator reads it (MEDCHAIN_MEMPOOL_MB; node/mempool.py)."""
    from node.mempool import MAX_TX_POOL_BYTES
    mib = _env_number("MEDCHAIN_MEMPOOL_MB", MAX_TX_POOL_BYTES / 2**20, lambda v: v >= MIN_MEMPOOL_MB, "MiB",
                      f"at least {MIN_MEMPOOL_MB} (a block's worth)")
    return int(mib * 2**20)
