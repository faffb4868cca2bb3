"""Ports for local networks are chosen below the kernel's ephemeral range, where no outgoing
connection's automatic local port can take one between its choice and its listener (a validator
of a full test run failed to start with "port busy" that way)."""

from __future__ import annotations

import socket

from node import ports


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    got = ports.free_ports(40)
    assert len(set(got)) == 40
    assert all(ports.LOWEST <= p < ports._ephemeral_low() for p in got)
    for p in got:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_with_no_room_below_the_range_the_kernel_chooses(monkeypatch) -> None:
    monkeypatch.setattr(ports, "_ephemeral_low", lambda: ports.LOWEST + 10)
    got = ports.free_ports(5)
    assert len(set(got)) == 5 and all(p >= ports.LOWEST + 10 for p in got)
