"""The `medchain` command line, run as real processes against a real validator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys


def medchain(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, timeout=120)
    if ok:
        assert p.returncode == 0, p.stderr
    return p


def test_cli_flow(node, tmp_path):
    pk, sk = tmp_path / "patient.json", tmp_path / "staff.json"
    pat = json.loads(medchain("keygen", "--out", str(pk), "--json").stdout)
    doc = json.loads(medchain("keygen", "--out", str(sk), "--json").stdout)
    assert os.stat(pk).st_mode & 0o777 == 0o600
    assert medchain("keygen", "--out", str(pk), ok=False).returncode == 2

    url = ["--node", node.url, "--json"]
    genesis = ["--genesis", str(node.home / "genesis.json")]
    # without the genesis (none given, none beside the key file or here) a client trusts no answer
    bare = tmp_path / "bare" / "patient.json"
    bare.parent.mkdir()
    shutil.copy(pk, bare)
    for argv in (["patient", "audit"], ["patient", "upload", "--type", "heart_rate"], ["staff", "read", "00" * 32,
                                                                                      "--type", "glucose"]):
        p = medchain(*argv, "--key", str(bare), *url, ok=False)
        assert p.returncode == 1 and "trust anchor" in p.stderr and "--genesis FILE" in p.stderr, p.stderr
    medchain("staff", "register", "--key", str(sk), "--name", "Dr. X", "--role", "nurse", *url, *genesis)
    medchain("patient", "grant", doc["address"], "heart_rate", "spo2", "--key", str(pk), *url, *genesis)
    up = json.loads(medchain("patient", "upload", "--type", "heart_rate", "--seconds", "30", "--key", str(pk),
                             *url, *genesis).stdout)
    assert up["readings"] == 30 and up["cid"].startswith("bafkrei")
    (tmp_path / "genesis.json").write_text((node.home / "genesis.json").read_text())  # beside the keys from here on
    rd = json.loads(medchain("staff", "read", pat["address"], "--type", "heart_rate", "--key", str(sk), *url).stdout)
    assert rd["windows"] == 1 and len(rd["readings"]) == 30
    assert all(40 <= r["heart_rate"] <= 200 for r in rd["readings"]), rd["readings"][:2]

    denied = medchain("staff", "read", pat["address"], "--type", "glucose", "--key", str(sk), *url, ok=False)
    assert denied.returncode != 0 and "denied" in denied.stderr

    # without the genesis, what seals data keys to a key read from the chain is refused, not done on
    # one validator's word
    for action in (["grant", doc["address"], "heart_rate"], ["revoke", doc["address"]], ["break-glass", "release"]):
        p = medchain("patient", *action, "--key", str(bare), *url, ok=False)
        assert p.returncode == 1 and "seals your data keys" in p.stderr and "--genesis FILE" in p.stderr, p.stderr
    medchain("patient", "revoke", doc["address"], "--key", str(pk), *url, *genesis)
    audit = json.loads(medchain("patient", "audit", "--key", str(pk), *url).stdout)
    assert [(r["reader"], r["type"]) for r in audit["reads"]] == [(doc["address"], "heart_rate")]

    st = json.loads(medchain("status", "--node", node.url, "--json").stdout)
    assert st["height"] >= 5 and st["validators"] == 1
    node.stop()
    v = json.loads(medchain("verify", "--home", str(node.home), "--json").stdout)
    assert v["ok"] and v["height"] == st["height"]


def test_cli_errors_are_clear(tmp_path):
    p = medchain("status", "--node", "http://127.0.0.1:9", ok=False)
    assert p.returncode == 1 and "medchain status:" in p.stderr and "Traceback" not in p.stderr
    assert "Unclosed" not in p.stderr
    bad = tmp_path / "k.json"
    bad.write_text("{}")
    os.chmod(bad, 0o644)
    p = medchain("patient", "audit", "--key", str(bad), ok=False)
    assert p.returncode == 1 and "must be 0600" in p.stderr
    # the client's trust anchor is checked as a node checks it: a genesis edited after it was
    # finalized, or one listing a validator key twice (so that one key would count twice towards
    # every quorum), is refused before anything is sent
    from node.genesis import init_home
    home = init_home(tmp_path / "net", "medchain-cli", ["127.0.0.1:9", "127.0.0.1:10"], 0,
                     p2p=["127.0.0.1:11", "127.0.0.1:12"])[0]
    key = tmp_path / "p.json"
    medchain("keygen", "--out", str(key))
    g = json.loads((home / "genesis.json").read_text())
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps({**g, "params": {**g["params"], "block_max_txs": 1}}))
    doubled = tmp_path / "doubled.json"
    v0, v1 = g["validators"]
    doubled.write_text(json.dumps({k: v for k, v in {**g, "validators": [v0, {**v1, "public_key": v0["public_key"]}]}.items()
                                   if k != "genesis_hash"}))
    for gfile, why in ((edited, "genesis hash mismatch"), (doubled, "genesis validator 1: the key of validator 0 again")):
        p = medchain("patient", "audit", "--key", str(key), "--node", "http://127.0.0.1:9", "--genesis", str(gfile),
                     ok=False)
        assert p.returncode == 1 and why in p.stderr and "Traceback" not in p.stderr, p.stderr
    # a snapshot of a home that has no ledger yet: one line, not a traceback (a review)
    p = medchain("snapshot", "--home", str(home), "--out", str(tmp_path / "s.snap"), ok=False)
    assert p.returncode == 1 and "no ledger at" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert "usage" in medchain("--help").stdout
    for sub in ("patient", "staff", "node", "verify", "init", "keygen", "demo"):
        assert medchain(sub, "--help").returncode == 0


def test_structured_logs_are_json_lines(tmp_path):
    """Operators' log pipelines: with MEDCHAIN_LOG_FORMAT=json (or `medchain --log-json`) a validator
    writes every log record as one JSON object per line."""
    import json as _json

    from devices.net.localnet import make_network
    (node,) = make_network(tmp_path, 1)
    node.env["MEDCHAIN_LOG_FORMAT"] = "json"
    node.start()
    node.stop()
    lines = [ln for ln in node.log_tail(100_000).splitlines() if ln.strip()]
    recs = [_json.loads(ln) for ln in lines]
    assert recs and all({"time", "level", "logger", "message"} <= set(r) for r in recs)
    assert any(r["logger"] == "medchain.validator" and "validator 0 of 1" in r["message"] for r in recs)


def test_every_refusal_is_one_line_and_a_non_zero_exit(node, tmp_path):
    """A refusal a user meets prints one clear line (with --json, also an object on stdout) and
    exits 1, never a traceback: a grant to an unregistered staff member, a malformed address, a
    read without a grant, an emergency read the patient forbade, an unreachable validator."""
    pk, sk = tmp_path / "patient.json", tmp_path / "staff.json"
    pat = json.loads(medchain("keygen", "--out", str(pk), "--json").stdout)
    doc = json.loads(medchain("keygen", "--out", str(sk), "--json").stdout)
    url = ["--node", node.url]
    bare = tmp_path / "bare" / "patient.json"  # a key with no genesis beside it
    bare.parent.mkdir()
    shutil.copy(pk, bare)
    (tmp_path / "genesis.json").write_text((node.home / "genesis.json").read_text())  # beside the keys

    def refused(argv: list[str], words: str) -> None:
        for extra in ([], ["--json"]):
            p = medchain(*argv, *url, *extra, ok=False)
            assert p.returncode == 1, (argv, p.stdout, p.stderr)
            assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, (argv, p.stderr)
            assert p.stderr.startswith(f"medchain {argv[0]} {argv[1]}: ") and words in p.stderr, (argv, p.stderr)
            if extra:
                obj = json.loads(p.stdout)
                assert obj["command"] == f"{argv[0]} {argv[1]}" and words in obj["error"] and obj["kind"], obj

    genesis = ["--genesis", str(node.home / "genesis.json")]
    other = tmp_path / "other.json"  # a block on the chain: the genesis-checked reads prove against it
    medchain("keygen", "--out", str(other))
    medchain("staff", "register", "--key", str(other), "--name", "Dr. O", *url)
    refused(["patient", "grant", doc["address"], "heart_rate", "--key", str(bare)], "seals your data keys")
    refused(["patient", "audit", "--key", str(bare)], "trust anchor")
    refused(["patient", "grant", doc["address"], "heart_rate", "--key", str(pk), *genesis], "has not registered a profile")
    refused(["patient", "revoke", "zz", "--key", str(pk), *genesis], "hex")
    medchain("staff", "register", "--key", str(sk), "--name", "Dr. R", *url)
    refused(["staff", "read", pat["address"], "--type", "glucose", "--key", str(sk)], "access denied")
    refused(["staff", "read", pat["address"], "--type", "glucose", "--break-glass", "ETREAT", "--key", str(sk)],
            "no valid clinician credential")  # a self-registered profile is not a clinician
    cred = tmp_path / "cred.json"
    medchain("issuer", "credential", "--key", str(node.home.parent / "issuer_key.json"), "--staff", doc["address"],
             "--genesis", str(node.home / "genesis.json"), "--out", str(cred))
    medchain("staff", "register", "--key", str(sk), "--name", "Dr. R", "--credential", str(cred), *url)
    medchain("patient", "break-glass", "off", "--key", str(pk), *url)
    refused(["staff", "read", pat["address"], "--type", "glucose", "--break-glass", "ETREAT", "--key", str(sk)],
            "disabled emergency access")
    p = medchain("staff", "read", pat["address"], "--type", "glucose", "--key", str(sk), "--node",
                 "http://127.0.0.1:9", "--json", ok=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr and json.loads(p.stdout)["error"]
