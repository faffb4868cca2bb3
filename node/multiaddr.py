"""The one parser of the validators' libp2p addresses (`/ip4/HOST/tcp/PORT/p2p/PEER_ID`): the
peer id the transport authenticates, and the host and port a validator listens on."""

from __future__ import annotations


def split_peer(addr: str) -> tuple[str, str]:
    """(transport address, peer id) of `.../p2p/<peer id>`; ValueError without a peer id."""
    head, sep, pid = addr.rpartition("/p2p/")
    if not sep or not pid or not head:
        raise ValueError(f"peer address without /p2p/<peer id>: {addr!r}")
    return head, pid


def peer_id(addr: str) -> str:
    return split_peer(addr)[1]


def host_port(addr: str) -> tuple[str, int]:
    """(host, port) of `/ip4/HOST/tcp/PORT[/...]`; ValueError otherwise."""
    parts = addr.split("/")
    if len(parts) < 5 or parts[1] not in ("ip4", "ip6", "dns4", "dns6", "dns") or parts[3] != "tcp":
        raise ValueError(f"not a /ip4|ip6|dns/HOST/tcp/PORT address: {addr!r}")
    try:
        return parts[2], int(parts[4])
    except ValueError:
        raise ValueError(f"bad port in {addr!r}") from None
