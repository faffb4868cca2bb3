"""The one parser of the validators' libp2p addresses (`/ip4/HOST/tcp/PORT/p2p/PEER_ID`): the
peer id the transport authenticates, and the host and port a validator listens on."""

from __future__ import annotations

import ipaddress
import re

import multiaddr


def split_peer(addr: str) -> tuple[str, str]:
    """(transport address, peer id) of `.../p2p/<peer id>`; ValueError without a peer id."""
    head, sep, pid = addr.rpartition("/p2p/")
    if not sep or not pid or not head:
        raise ValueError(f"peer address without /p2p/<peer id>: {addr!r}")
    return head, pid


def peer_id(addr: str) -> str:
    return split_peer(addr)[1]


_PROTOS = ("ip4", "ip6", "dns4")  # a name under /dns6 or /dns may resolve to IPv6 alone: its validator listens on IPv4
# a DNS name: labels of letters, digits and inner hyphens, 253 characters at most
_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*",
                   re.IGNORECASE)


def _host_ok(proto: str, host: str) -> bool:
    if proto in ("ip4", "ip6"):
        return is_ip(host) and ipaddress.ip_address(host).version == (4 if proto == "ip4" else 6)
    return _NAME.fullmatch(host) is not None and not host.replace(".", "").isdigit()


def host_port(addr: str) -> tuple[str, int]:
    """(host, port) of `/ip4|ip6|dns4/HOST/tcp/PORT`, optionally followed by `/p2p/<peer id>` and
    nothing else, its host valid for its protocol, and taken by libp2p's parser (which checks the
    peer id); ValueError otherwise. Every validator dials
    every genesis address at start with libp2p's own parser: an address it refuses (a stray
    segment, a name under /ip4, a bracketed IPv6 address, a port over 65535) would stop them all."""
    parts = addr.split("/") if isinstance(addr, str) else []
    if len(parts) not in (5, 7) or parts[0] or parts[1] not in _PROTOS or parts[3] != "tcp" \
            or (len(parts) == 7 and (parts[5] != "p2p" or not parts[6])):
        raise ValueError(f"not a /ip4|ip6|dns4/HOST/tcp/PORT[/p2p/<peer id>] address: {addr!r}")
    if not _host_ok(parts[1], parts[2]):
        raise ValueError(f"{parts[2]!r} is not a valid /{parts[1]} host in {addr!r}")
    if not (parts[4].isascii() and parts[4].isdigit() and int(parts[4]) < 65536):
        raise ValueError(f"bad port in {addr!r}")
    try:  # and what libp2p's own parser says, which every validator runs over it (a peer id that is no multihash)
        multiaddr.Multiaddr(addr)
    except ValueError as exc:
        raise ValueError(f"libp2p refuses {addr!r}: {exc}") from None
    return parts[2], int(parts[4])


def advertisable(addr: str) -> str:
    """`addr` (a genesis p2p entry) if others can dial it: not 0.0.0.0 or :: (every peer would dial
    itself); ValueError otherwise."""
    host, _ = host_port(addr)
    if is_ip(host) and ipaddress.ip_address(host).is_unspecified:
        raise ValueError(f"{addr!r}: {host} means every interface of a listener; advertise an address others "
                         "reach this host at")
    return addr


def is_ip(host: str) -> bool:
    """An IPv4 or IPv6 address, without a zone (`fe80::1%eth0`: libp2p's parser refuses it)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return "%" not in host


def ip_of(addr: object) -> str | None:
    """The IP address of an `/ip4/...` or `/ip6/...` multiaddr (a string or a parsed one); None for a
    name (`/dns4/...`) or anything else."""
    parts = str(addr).split("/")
    return parts[2] if len(parts) > 2 and parts[1] in ("ip4", "ip6") and is_ip(parts[2]) else None


def tcp_addr(host: str, port: int) -> str:
    """`/ip4/HOST/tcp/PORT` for an IPv4 address, `/ip6/...` for an IPv6 one (with or without its
    brackets), `/dns4/...` for a host name; ValueError for anything else."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    proto = ("ip6" if ":" in bare else "ip4") if is_ip(bare) else "dns4"
    addr = f"/{proto}/{bare}/tcp/{port}"
    host_port(addr)
    return addr
