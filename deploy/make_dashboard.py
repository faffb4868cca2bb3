"""Writes deploy/grafana-dashboard.json (run from the repository root: python deploy/make_dashboard.py).
The panels use the metric names node/metrics.py exports; tests/test_deploy.py checks each against a
running network's /metrics."""

from __future__ import annotations

import json
from pathlib import Path

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
SEL = 'job="medchain", instance=~"$instance"'

PANELS = [  # (title, unit, [(expr, legend)], kind)
    ("Block height", "none", [(f"medchain_block_height{{{SEL}}}", "{{instance}}")], "timeseries"),
    ("Committed transactions/s", "ops", [(f"sum by (instance) (rate(medchain_tx_committed_total{{{SEL}}}[1m]))",
                                          "{{instance}}")], "timeseries"),
    ("Commit latency (admission to commit)", "s", [
        (f"histogram_quantile({q}, sum by (le) (rate(medchain_commit_latency_seconds_bucket{{{SEL}}}[1m])))", f"p{p}")
        for q, p in ((0.5, 50), (0.95, 95), (0.99, 99))], "timeseries"),
    ("Admitted and refused transactions/s", "ops", [
        (f"sum by (instance) (rate(medchain_tx_admitted_total{{{SEL}}}[1m]))", "admitted {{instance}}"),
        (f"sum by (reason) (rate(medchain_tx_rejected_total{{{SEL}}}[1m]))", "refused: {{reason}}")], "timeseries"),
    ("Mempool", "none", [(f"medchain_mempool_transactions{{{SEL}}}", "{{instance}}"),
                         (f"max(medchain_mempool_capacity{{{SEL}}})", "capacity"),
                         (f"sum by (instance) (rate(medchain_mempool_evictions_total{{{SEL}}}[5m]))",
                          "evicted/s {{instance}}")], "timeseries"),
    ("Mempool bytes (limits.mempool_mb)", "bytes", [(f"medchain_mempool_bytes{{{SEL}}}", "{{instance}}"),
                                                   (f"max(medchain_mempool_max_bytes{{{SEL}}})", "bound")],
     "timeseries"),
    ("Connected validator peers", "none", [(f"medchain_peers{{{SEL}}}", "{{instance}}")], "timeseries"),
    ("Validators up", "none", [(f'sum(up{{{SEL}}})', "up")], "stat"),
    ("PBFT view and view changes", "none", [(f"medchain_view{{{SEL}}}", "view {{instance}}"),
                                            (f"medchain_view_changing{{{SEL}}}", "changing {{instance}}"),
                                            (f"increase(medchain_view_changes_total{{{SEL}}}[5m])",
                                             "changes/5m {{instance}}")], "timeseries"),
    ("Stable checkpoint and state transfer", "none", [
        (f"medchain_stable_checkpoint{{{SEL}}}", "checkpoint {{instance}}"),
        (f"increase(medchain_state_transfer_blocks_total{{{SEL}}}[5m])", "blocks fetched/5m {{instance}}")],
     "timeseries"),
    ("Checkpoint state transfer", "none", [
        (f"increase(medchain_state_transfer_started_total{{{SEL}}}[1h])", "started/h {{instance}}"),
        (f"increase(medchain_state_transfer_installed_total{{{SEL}}}[1h])", "installed/h {{instance}}"),
        (f"sum by (reason) (increase(medchain_state_transfer_refused_total{{{SEL}}}[1h]))", "refused/h: {{reason}}")],
     "timeseries"),
    ("Checkpoint state received", "Bps", [
        (f"rate(medchain_state_transfer_received_bytes_total{{{SEL}}}[1m])", "{{instance}}")], "timeseries"),
    ("Consensus stage waiting on the ledger (s/s; near 1: the bottleneck)", "none", [
        (f"sum by (instance, step) (rate(medchain_consensus_wait_seconds_total{{{SEL}}}[1m]))",
         "{{step}} {{instance}}")], "timeseries"),
    ("p2p messages/s by type", "ops", [
        (f"sum by (direction, type) (rate(medchain_p2p_messages_by_type_total{{{SEL}}}[1m]))",
         "{{direction}} {{type}}")], "timeseries"),
    ("p2p messages/s", "ops", [(f"sum by (instance, direction) (rate(medchain_p2p_messages_total{{{SEL}}}[1m]))",
                                "{{direction}} {{instance}}")], "timeseries"),
    ("HTTP requests/s by status", "reqps", [
        (f"sum by (status) (rate(medchain_http_requests_total{{{SEL}}}[1m]))", "{{status}}")], "timeseries"),
    ("Throttled/s by scope", "ops", [(f"sum by (scope) (rate(medchain_throttled_total{{{SEL}}}[1m]))",
                                      "{{scope}}")], "timeseries"),
    ("Blobs", "none", [(f"medchain_blobs_held{{{SEL}}}", "held {{instance}}"),
                       (f"sum by (instance) (rate(medchain_sidecars_stored_total{{{SEL}}}[1m]))",
                        "sidecars stored/s {{instance}}"),
                       (f"sum by (instance) (increase(medchain_uploads_collected_total{{{SEL}}}[1h]))",
                        "uploads collected/h {{instance}}")], "timeseries"),
    ("Byzantine evidence held", "none", [(f"max(medchain_consensus_evidence{{{SEL}}})", "evidence")], "stat"),
    ("Blob integrity failures", "none", [(f"sum(medchain_blob_integrity_failures_total{{{SEL}}})", "failures")],
     "stat"),
    ("Native crypto in use", "none", [(f"min(medchain_native_crypto{{{SEL}}})", "native")], "stat"),
]


def dashboard() -> dict:
    panels = []
    for i, (title, unit, targets, kind) in enumerate(PANELS):
        w, h = (6, 4) if kind == "stat" else (12, 8)
        panels.append({
            "id": i + 1, "type": kind, "title": title, "datasource": DS,
            "gridPos": {"x": 0, "y": 0, "w": w, "h": h},  # Grafana packs them in order
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"datasource": DS, "expr": e, "legendFormat": lg, "refId": chr(65 + k)}
                        for k, (e, lg) in enumerate(targets)],
        })
    x = y = 0
    for p in panels:  # a simple left-to-right layout, 24 columns wide
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > 24:
            x, y = 0, y + 8
        p["gridPos"].update(x=x, y=y)
        x += w
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                      "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "title": "medchain validators", "uid": "medchain-validators", "schemaVersion": 39, "version": 1,
        "editable": True, "refresh": "10s", "time": {"from": "now-1h", "to": "now"}, "tags": ["medchain"],
        "templating": {"list": [
            {"name": "DS_PROMETHEUS", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "instance", "type": "query", "datasource": DS, "label": "validator",
             "query": 'label_values(medchain_block_height{job="medchain"}, instance)', "refresh": 2,
             "includeAll": True, "multi": True, "current": {"text": "All", "value": "$__all"}}]},
        "panels": panels,
    }


def render() -> str:
    """The dashboard as JSON, one panel per line, so a change shows as a readable diff."""
    d = dashboard()
    panels = ",\n  ".join(json.dumps(p) for p in d.pop("panels"))
    head = json.dumps(d, indent=1)[:-2]
    return f'{head},\n "panels": [\n  {panels}\n ]\n}}\n'


if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "grafana-dashboard.json"
    out.write_text(render())
    print(f"wrote {out}")
