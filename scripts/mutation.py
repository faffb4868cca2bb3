"""Mutation testing of the security core with mutmut 3 (`make mutation`; not part of `make test`).

For each module: a fresh copy of the tracked tree (plus the built native extensions) under
build/mutation/<module>/, mutmut run there with only that module's fast test files. mutmut records
which of those tests reach each function and runs only them against that function's mutants.
Prints a score per module: killed / (mutants - known equivalents), where the known equivalents
are the mutant names listed in docs/TESTING.md. Survivors' diffs go to survivors.txt beside the run.

    python scripts/mutation.py                      # every module below, smallest first
    python scripts/mutation.py node/crypto/seal.py  # some of them

Of node/api/blobs.py only the blob authorisation (`read_covers`) is mutated (ONLY below).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "mutation"
DOC = ROOT / "docs" / "TESTING.md"

# module -> the fast test files that exercise it (no validator processes: those take seconds per
# run, and mutmut's per-test selection keeps the unit tests that reach a function anyway). The
# simulated-network soak of tests/test_consensus.py is left out too: a mutant that breaks liveness
# makes it run to its tick limit, about 2 minutes of CPU per mutant before the timeout.
MODULES: dict[str, list[str]] = {
    "node/crypto/seal.py": ["tests/test_crypto_core.py", "tests/test_tx.py", "tests/test_state.py"],
    "devices/patient/envelope.py": ["tests/test_envelope.py", "tests/test_privacy.py::test_padding_sizes_and_round_trip"],
    "node/crypto/aead.py": ["tests/test_crypto_core.py", "tests/test_vectors.py", "tests/test_native.py"],
    "node/crypto/ecdsa.py": ["tests/test_crypto_core.py", "tests/test_vectors.py", "tests/test_native.py", "tests/test_tx.py"],
    "node/crypto/keys.py": ["tests/test_crypto_core.py", "tests/test_tx.py", "tests/test_state.py", "tests/test_native.py"],
    "node/consensus/messages.py": ["tests/test_consensus_messages.py", "tests/test_viewchange.py"],
    "node/block.py": ["tests/test_block.py", "tests/test_tx.py", "tests/test_viewchange.py"],
    "node/state/machine.py": ["tests/test_state.py", "tests/test_break_glass.py", "tests/test_emergency_access.py",
                              "tests/test_smt.py"],
    "node/tx/credential.py": ["tests/test_emergency_access.py", "tests/test_tx.py"],
    "node/tx/model.py": ["tests/test_tx_reasons.py", "tests/test_tx.py", "tests/test_state.py", "tests/test_break_glass.py",
                         "tests/test_emergency_access.py"],
    "node/consensus/viewchange.py": [
        "tests/test_viewchange.py",
        *(f"tests/test_consensus.py::{t}" for t in (  # the replica-level evidence tests, not the soak
            "test_equivocating_pre_prepare_is_evidence_and_starts_a_view_change",
            "test_prepare_carrying_another_pre_prepare_proves_equivocation",
            "test_prepares_for_other_digest_do_not_count"))],
    # the light client's checks (what a phone or staff client acts on) and the state proofs under them
    "node/proof.py": ["tests/test_proof.py"],
    "node/state/smt.py": ["tests/test_smt.py", "tests/test_proof.py"],
    "node/sidecar.py": ["tests/test_sidecar_codec.py"],
    "node/merkle.py": ["tests/test_merkle.py", "tests/test_proof.py"],
    # state transfer's checks of a peer's checkpoint (the running-network snapshot test is left out:
    # 11 s per mutant that reaches it)
    "node/checkpoint.py": ["tests/test_checkpoint.py", "tests/test_statesync.py",
                           "tests/test_snapshot.py::test_a_damaged_forged_or_foreign_snapshot_is_refused",
                           "tests/test_snapshot.py::test_restore_into_a_fresh_home_verifies_and_commits"],
    "devices/load/follow.py": ["tests/test_proof.py"],
    # the genesis every node and client checks certificates against (its loading and refusals)
    "node/genesis.py": ["tests/test_genesis.py"],
    # of replication, what a peer's blobs-held message does here (the rest runs in validator processes)
    "node/replication.py": [f"tests/test_replication.py::{t}" for t in (
        "test_a_peer_s_blobs_held_message_is_recorded_and_its_question_answered",
        "test_a_peer_may_have_only_so_many_heights_answered_a_second",
        "test_without_a_head_any_height_a_message_can_hold_is_taken",
        "test_a_valid_message_up_to_64_kib_is_read_and_a_bad_one_is_logged",
        "test_what_waits_for_a_peer_that_stays_down_is_bounded",
        "test_a_malformed_blobs_held_message_is_dropped", "test_a_peer_whose_stream_is_down_is_told_in_a_later_round",
        "test_announcements_beyond_one_message_go_in_the_next_round",
        "test_a_fresh_commit_is_not_asked_about_an_old_or_unseen_height_is")],
    # the PBFT replica: its normal case, votes and certificates, the state it keeps, its recovery
    "node/consensus/replica.py": ["tests/test_consensus.py", "tests/test_replica_edges.py", "tests/test_viewchange.py",
                                  "tests/test_consensus_messages.py", "tests/test_recovery_records.py"],
    "node/consensus/state.py": ["tests/test_consensus.py", "tests/test_viewchange.py", "tests/test_consensus_messages.py",
                                "tests/test_recovery_records.py"],
    "node/consensus/recovery.py": ["tests/test_consensus.py", "tests/test_viewchange.py", "tests/test_recovery.py",
                                   "tests/test_recovery_records.py"],
    # admission under hostile load: the bounded, origin-fair pool and the per-sender checks before it
    "node/mempool.py": ["tests/test_mempool.py", "tests/test_mempool_limits.py", "tests/test_backlog.py",
                        "tests/test_driver.py"],
    "node/admission.py": ["tests/test_admission.py", "tests/test_mempool.py", "tests/test_backlog.py", "tests/test_driver.py"],
    # the censorship watch (its own tests and the hand-scheduled network's; the real-validator ones left out)
    "node/consensus/censor.py": [f"tests/test_censorship.py::{t}" for t in (
        "test_only_blocks_proposed_after_the_grace_with_room_left_count_as_skips",
        "test_the_watch_ends_with_the_transaction_and_a_new_view_gives_the_grace_from_its_start",
        "test_the_grace_runs_from_arrival_so_a_changing_front_restarts_no_clock",
        "test_the_grace_follows_the_pace_of_watched_transactions_within_bounds",
        "test_a_vote_for_a_far_sequence_does_not_move_the_horizon",
        "test_a_primary_leaving_one_transaction_out_of_blocks_with_room_loses_its_view",
        "test_without_the_watch_the_censor_keeps_its_seat_for_ever",
        "test_a_primary_whose_blocks_are_full_is_not_suspected",
        "test_the_watch_s_edges_a_block_at_its_byte_limit_a_first_view_above_zero_and_skips_counted_afresh",
        "test_the_pace_counts_from_the_grace_s_start_never_below_zero_nor_above_8x_the_grace",
        "test_a_full_block_proposed_while_the_block_that_moved_its_senders_was_in_flight_is_no_skip",
        "test_a_full_block_is_a_skip_when_most_of_it_is_of_senders_placed_late_or_not_held",
        "test_a_primary_filling_its_blocks_with_senders_no_replica_holds_loses_its_view",
        "test_full_blocks_mostly_of_senders_placed_before_the_watched_one_are_not_skips")]
    + ["tests/test_liveness.py", "tests/test_consensus.py"],
    # the backlog bound: what a validator takes on at the chain's current rate
    "node/backlog.py": [f"tests/test_backlog.py::{t}" for t in (
        "test_a_fresh_chain_takes_the_floor_and_a_busy_one_its_rate_times_the_wait",
        "test_a_stalled_chain_takes_on_less_and_less", "test_retry_after_is_half_the_wait_within_bounds",
        "test_nonsense_bounds_are_refused",
        "test_at_the_bound_a_client_is_refused_not_evicted_for_and_a_light_client_still_gets_in",
        "test_the_rate_moves_by_the_half_life_once_a_window_has_passed_and_each_window_counts_afresh",
        "test_the_current_rate_decays_by_the_half_life_only_after_two_windows_idle",
        "test_the_status_reports_the_rate_the_bound_and_what_was_taken_on_and_refused")]
    + ["tests/test_mempool.py", "tests/test_admission.py"],
    "node/api/blobs.py": [f"tests/test_blob_auth.py::test_read_covers_{t}" for t in (
        "serves_the_blobs_a_committed_read_allows", "refuses_each_case_for_its_own_reason",
        "applies_the_patient_s_policy_and_the_emergency_window_now")],
}
# modules mutated only in part (mutmut's mutant-name pattern): of the API, the blob authorisation; its
# handlers run in a validator process, where mutmut cannot see which test reaches them
ONLY = {"node/api/blobs.py": "node.api.blobs.x_read_covers__mutmut_*",
        # of replication, the handling of a peer's blobs-held message
        "node/replication.py": "node.replication.xǁReplicatorǁon_held__mutmut_*",
        # of the follower, the check of each block (the rest is its polling loop, over HTTP)
        "devices/load/follow.py": "devices.load.follow.xǁFollowerǁcheck__mutmut_*"}
# pytest -k for every module: the tests that start validator processes are left out
DESELECT = "not end_to_end and not break_glass_cli"
MUTANT = re.compile(r"`((?:node|devices)\.[\w.]+__mutmut_\d+)`")
KILLED = {1, 3, 36, 24, -24, 152, 255}  # a failing test, pytest's internal error, or a timeout


def equivalents() -> set[str]:
    """Mutant names docs/TESTING.md lists as equivalent (each with its reason there)."""
    return set(MUTANT.findall(DOC.read_text())) if DOC.is_file() else set()


def prepare(module: str, tests: list[str], work: Path) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / rel)
    for so in (ROOT / "native").glob("*.so"):  # the built extensions, so the native paths are tested too
        shutil.copy2(so, work / "native" / so.name)
    sel = "\n    ".join([*tests, "-k", DESELECT, "-p", "no:cacheprovider", "--hypothesis-profile=mutation"])
    # a mutant that makes the tests 4x slower than measured (+1 s) counts as caught (a timeout)
    (work / "setup.cfg").write_text(
        f"[mutmut]\nsource_paths = {module}\npytest_add_cli_args_test_selection =\n    {sel}\n"
        "also_copy =\n    node\n    devices\n    native\n    tests\ntimeout_multiplier = 2\n")


def run_module(module: str, children: int, equiv: set[str]) -> dict:
    work = OUT / module.replace("/", "_").removesuffix(".py")
    prepare(module, MODULES[module], work)
    env = dict(os.environ)
    env.setdefault("MEDCHAIN_VECTORS", str(ROOT.parent / "shared" / "vectors"))
    mutmut = Path(sys.executable).with_name("mutmut")
    with open(work / "mutmut.log", "w") as log:
        subprocess.run([str(mutmut), "run", "--max-children", str(children), *filter(None, [ONLY.get(module)])],
                       cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    meta = work / "mutants" / (module + ".meta")
    if not meta.is_file():
        return {"module": module, "error": f"mutmut produced no results: see {work / 'mutmut.log'}"}
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    if module in ONLY:
        codes = {k: c for k, c in codes.items() if fnmatch.fnmatchcase(k, ONLY[module])}
    status = Counter()
    survivors, stale = [], []
    for name, code in sorted(codes.items()):
        if name in equiv and code not in (1, 3):  # a timeout under load says nothing against the judgement
            status["equivalent"] += 1
        elif code in KILLED:
            status["killed"] += 1
            status["timeout"] += code not in (1, 3)  # caught, but by the CPU limit: spurious under load?
            if name in equiv:
                stale.append(name)  # a test fails on it: the equivalence was wrong or its name is stale
        else:
            status["survived" if code == 0 else "no tests" if code in (5, 33) else f"exit {code}"] += 1
            survivors.append(name)
    with open(work / "survivors.txt", "w") as f:
        for name in survivors:
            f.write(subprocess.run([str(mutmut), "show", name], cwd=work, env=env, capture_output=True,
                                   text=True, check=False).stdout + "\n")
    counted = len(codes) - status["equivalent"]
    return {"module": module, "mutants": len(codes), **status, "stale": stale,
            "score": 100.0 * status["killed"] / counted if counted else 100.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help=f"default: all of {', '.join(MODULES)}")
    ap.add_argument("--children", type=int, default=2, help="parallel mutmut workers")
    args = ap.parse_args()
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        ap.error(f"no test map for {unknown}: add them to MODULES in {Path(__file__).name}")
    equiv = equivalents()
    rows = []
    for module in args.modules or list(MODULES):
        r = run_module(module, args.children, equiv)
        rows.append(r)
        if "error" in r:
            print(f"{module:32} ERROR {r['error']}", flush=True)
            continue
        print(f"{module:32} {r['score']:5.1f}%  killed {r.get('killed', 0):3} of {r['mutants']:3}"
              f" ({r.get('timeout', 0)} by timeout)  equivalent {r.get('equivalent', 0):2}"
              f"  survived {r.get('survived', 0):2}"
              f"  no tests {r.get('no tests', 0):2}  (survivors: {OUT.relative_to(ROOT)}/"
              f"{module.replace('/', '_').removesuffix('.py')}/survivors.txt)", flush=True)
        for name in r["stale"]:
            print(f"    listed as equivalent in {DOC.relative_to(ROOT)} but killed: {name}", flush=True)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
