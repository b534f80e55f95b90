"""The fault-injection suite: faults real operations bring (a job killed mid-write, re-runs and
backfills, bad files, two runs at once, a late institution), injected on small generated data.

Each test adds what it injected and what the pipeline survived to one tally, printed at the end
of the run (and written to .cache/fault-tally.json): the counts per kind that a release note
quotes. "Survived" means the test's assertions held for that fault: nothing lost, nothing
duplicated, the right rule or message, tables equal to an undisturbed run.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from jobs.config import PROJECT_ROOT

INJECTED: Counter = Counter()
SURVIVED: Counter = Counter()
DETAILS: dict[str, object] = {}


class Tally:
    """``with tally("sigkill:ingest"):`` counts one injected fault, survived if the body
    (its assertions) completes."""

    def __call__(self, kind: str):
        return _Counted(kind)

    def note(self, key: str, value: object) -> None:
        """Where a fault was injected (for example the commit a kill followed), for the tally."""
        DETAILS[key] = value


class _Counted:
    def __init__(self, kind: str):
        self.kind = kind

    def __enter__(self):
        INJECTED[self.kind] += 1
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            SURVIVED[self.kind] += 1
        return False


@pytest.fixture(scope="session")
def tally() -> Tally:
    return Tally()


def pytest_terminal_summary(terminalreporter):
    if not INJECTED:
        return
    rows = {k: {"injected": INJECTED[k], "survived": SURVIVED[k]} for k in sorted(INJECTED)}
    terminalreporter.section("faults injected / survived")
    for kind, n in rows.items():
        terminalreporter.write_line(f"{kind:40s} {n['injected']:3d} injected {n['survived']:3d} "
                                    "survived")
    total_in, total_ok = sum(INJECTED.values()), sum(SURVIVED.values())
    terminalreporter.write_line(f"{'total':40s} {total_in:3d} injected {total_ok:3d} survived")
    for key, value in DETAILS.items():
        terminalreporter.write_line(f"{key}: {json.dumps(value, default=str)}")
    out = PROJECT_ROOT / ".cache" / "fault-tally.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"faults": rows, "details": DETAILS}, indent=2, default=str)
                   + "\n", encoding="utf-8")
