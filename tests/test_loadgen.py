"""`medchain loadtest` honours Retry-After: against one validator whose per-client and per-sender
limits are far below the offered load, every transaction still commits and none is refused."""

from __future__ import annotations

from devices.load.loadgen import run_load
from tests.conftest import run, running_network


def test_loadtest_waits_out_rate_limits_and_commits_everything(tmp_path):
    # 4 requests/s per client IP, 20 transactions/s per sender: a flood is throttled again and again
    with running_network(tmp_path, 1, client_rate=4, client_burst=4, sender_rate=20, sender_burst=20) as (nd,):
        res = run(run_load([nd.url], senders=4, per_sender=60, batch=40, lanes=2, timeout=120, kind="write"))
        throttled = nd.log_tail(10**6)
    assert res.refused == 0
    assert res.committed == res.submitted == 240
    assert "Traceback" not in throttled
