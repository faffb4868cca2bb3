"""deploy/: the Grafana dashboard names only metrics a running network exports (and is what
deploy/make_dashboard.py writes), the systemd unit verifies and its Type=notify is honoured by a
real validator (READY=1 once serving, STOPPING=1 on SIGTERM), the Prometheus config names /metrics."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from devices.net.localnet import make_network
from tests.conftest import running_network

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_dashboard_is_generated_and_uses_real_metric_names(tmp_path: Path) -> None:
    sys.path.insert(0, str(DEPLOY))
    try:
        import make_dashboard
    finally:
        sys.path.remove(str(DEPLOY))
    text = (DEPLOY / "grafana-dashboard.json").read_text()
    assert text == make_dashboard.render(), "run python deploy/make_dashboard.py"
    used = set(re.findall(r"\b(medchain_[a-z0-9_]+)", text))
    with running_network(tmp_path, 4) as nodes:
        exported = urllib.request.urlopen(nodes[0].url + "/metrics", timeout=5).read().decode()
    # a series (or, for a labelled counter nobody has incremented yet, its HELP line) for each name
    names = set(re.findall(r"^(?:# HELP )?(medchain_[a-z0-9_]+)", exported, re.M))
    assert used and used <= names, sorted(used - names)
    assert "medchain_p2p_messages_by_type_total" in used
    prom = (DEPLOY / "prometheus.yml").read_text()
    assert "metrics_path: /metrics" in prom and "job_name: medchain" in prom  # the dashboard's job label


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (DEPLOY / "medchain.service").read_text()
    assert "Type=notify" in unit and "Restart=on-failure" in unit and "KillSignal=SIGTERM" in unit
    exe = Path(sys.executable).parent / "medchain"
    local = tmp_path / "medchain.service"
    local.write_text(unit.replace("/opt/medchain/.venv/bin/medchain", str(exe)))
    p = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr


def test_validator_speaks_systemd_notify(tmp_path: Path) -> None:
    (node,) = make_network(tmp_path, 1)
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(30)
        node.env["NOTIFY_SOCKET"] = str(sock_path)
        node.start()
        try:
            ready = sock.recv(4096).decode()
            assert ready.startswith("READY=1") and node.url.split("//")[1] in ready, ready
            node.proc.send_signal(signal.SIGTERM)
            assert sock.recv(4096).decode() == "STOPPING=1"
            assert node.proc.wait(30) == 0
        finally:
            node.stop()
