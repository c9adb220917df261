"""The job states (app/core/status.py): one enum, the moves between states, and no bare state strings in the
service's code."""
from __future__ import annotations

import json
import re
from pathlib import Path

from app.core.status import FINAL, LIVE, MOVES, JobStatus, count_by_status, may_move, overall_status

REPO = Path(__file__).resolve().parents[2]


def test_members_are_their_stored_strings():
    assert [s.value for s in JobStatus] == ["queued", "running", "succeeded", "failed", "canceled"]
    assert JobStatus.QUEUED == "queued" and "queued" == JobStatus.QUEUED  # rows read back compare equal
    assert json.dumps({"status": JobStatus.FAILED}) == '{"status": "failed"}'
    assert f"{JobStatus.CANCELED}" == "canceled"
    assert set(FINAL) | set(LIVE) == set(JobStatus) and not set(FINAL) & set(LIVE)
    assert all(s.final for s in FINAL) and not any(s.final for s in LIVE)


def test_final_states_move_nowhere_and_every_live_state_can_end():
    assert set(MOVES) == set(JobStatus)
    assert all(MOVES[s] == frozenset() for s in FINAL)
    assert all(MOVES[s] & set(FINAL) for s in LIVE)
    assert may_move("queued", "running") and may_move("running", "queued")  # a requeue after a lost worker
    assert not may_move("succeeded", "queued") and not may_move("queued", "succeeded")


def test_counts_cover_every_state():
    assert count_by_status(["queued", "failed", "failed"]) == \
        {"queued": 1, "running": 0, "succeeded": 0, "failed": 2, "canceled": 0}
    assert overall_status([]) == "queued" and overall_status(["canceled"]) == "canceled"


# a state written or compared as a bare string: status == "queued", status="failed", "status": "running",
# .in_(("queued", ...)), in ("succeeded", ...)
BARE = re.compile(r"""(status\s*(==|!=|=|:)\s*|["']status["']\s*:\s*|\.in_\(\(|\bin \()["'](queued|running|succeeded|failed|canceled)["']""")


def test_no_bare_state_strings_in_the_service_code():
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
             for package in ("app", "workers") for path in sorted((REPO / package).rglob("*.py"))
             if path.name != "status.py"
             for number, line in enumerate(path.read_text().splitlines(), 1) if BARE.search(line)]
    assert not found, "name the state by its JobStatus member:\n" + "\n".join(found)


def test_every_transition_declares_only_allowed_moves():
    from app.core import transitions

    assert transitions.DECLARED, "the transitions module declares its moves"
    for name, pairs in transitions.DECLARED.items():
        for old, new in pairs:
            assert may_move(old, new), f"{name} moves {old} -> {new}, which MOVES does not allow"
    made = {pair for pairs in transitions.DECLARED.values() for pair in pairs}
    allowed = {(old, new) for old, targets in MOVES.items() for new in targets}
    assert made == allowed, f"moves allowed but made by no transition: {sorted(allowed - made)}"


# UPDATEs of job and run rows that change no state: a delivery flag
NOT_A_TRANSITION = {"app/services/webhooks.py": "webhook_pending"}
ROW_UPDATE = re.compile(r"update\((Job|TrainingRun)\)")


def test_only_the_transitions_module_updates_job_and_run_rows():
    found = []
    for package in ("app", "workers"):
        for path in sorted((REPO / package).rglob("*.py")):
            relative = str(path.relative_to(REPO))
            if relative == "app/core/transitions.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if ROW_UPDATE.search(line) and not (relative in NOT_A_TRANSITION
                                                    and NOT_A_TRANSITION[relative] in line):
                    found.append(f"{relative}:{number}: {line.strip()}")
    assert not found, "move a job or run through app.core.transitions:\n" + "\n".join(found)
