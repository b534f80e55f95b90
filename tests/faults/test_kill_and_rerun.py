"""A day's jobs killed with SIGKILL mid-write, one stage at a time, on the small city's first day:

* each stage runs as the CLI does (``python -m jobs.cli <stage> --date D``, its own Spark) and
  is killed, process group and JVM, right after a random one of its Delta commits (never its
  last), so some of its tables are written and some not;
* then every table the stage writes is either as before the run or as the undisturbed run left
  it, never in between (no partial commit), the writer lock is free again, and the stage run
  again completes;
* while the killed ingest runs, a second run of the same day is refused with a clear message;
* at the end the lake equals the undisturbed run of the same files (conftest's CLI run), and
  running the whole day a third time changes nothing;
* then the day's late institution arrives, the day runs again: its rows load, the periods it
  touches are recomputed, and nothing else changes.

All of it runs in `make test` (CI); `make test-faults` runs the fault suite alone. The kills'
commits are drawn anew each run (``HEALTHLAKE_FAULT_SEED`` repeats a draw).
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.config import PROJECT_ROOT, Settings
from jobs.lake import fingerprint, read_table, table_exists, table_version
from jobs.operations import lock_path, writer_lock
from tests.conftest import (
    QUALITY_TABLES,
    SMALL_DAYS,
    TINY_SPARK,
    WHEN,
    lake_like,
    settings_env,
)

D1 = SMALL_DAYS[0]
# What each stage writes (catalogue name prefixes), in the order of the daily DAG.
STAGES = {
    "ingest": ("bronze.", "quarantine.", "ops.ingest_log"),
    "standardise": ("silver_std.", "quarantine.silver"),
    "resolve": ("restricted.identity", "restricted.person_attributes", "silver.person_link",
                "silver.person"),
    "curate": ("silver.",),
    "gold": ("gold.",),
}
KILLABLE = ("ingest", "standardise", "resolve", "gold")
SEED = int(os.environ.get("HEALTHLAKE_FAULT_SEED", time.time_ns() % 10_000))


def stage_tables(settings: Settings, stage: str) -> list[str]:
    mine = [t for t in settings.tables if t.startswith(STAGES[stage])]
    if stage == "curate":  # the silver tables resolve does not write
        mine = [t for t in mine if t not in STAGES["resolve"] and t != "quarantine.silver"]
    if stage == "ingest":
        mine = [t for t in mine if t != "quarantine.silver"]
    return mine


def only(settings: Settings, tables: list[str]) -> Settings:
    return dataclasses.replace(settings, tables={t: settings.tables[t] for t in tables})


def commits(settings: Settings, tables: list[str]) -> int:
    """Delta commits so far over ``tables`` (files of their logs)."""
    return sum(len(list((settings.table_path(t) / "_delta_log").glob("*.json")))
               for t in tables)


def run_job(spark, settings: Settings, stage: str) -> None:
    from jobs.gold import job as gold
    from jobs.ingest import job as ingest
    from jobs.silver import curate, resolve
    from jobs.silver import job as standardise

    {"ingest": ingest, "standardise": standardise, "resolve": resolve, "curate": curate,
     "gold": gold}[stage].run(spark, settings, D1)


def cli(stage: str, env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobs.cli", stage, "--date", D1.isoformat()],
                            cwd=PROJECT_ROOT, env={**os.environ, **env}, text=True,
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, **kw)


def kill_after_commits(proc: subprocess.Popen, settings: Settings, tables: list[str],
                       n: int, while_running=None, timeout: float = 900) -> int:
    """SIGKILL the process group once ``n`` new commits of ``tables`` are on disk; returns the
    commits seen when the kill landed. ``while_running(proc)`` is called once the run holds the
    lake's writer lock."""
    start, deadline = commits(settings, tables), time.monotonic() + timeout
    called = while_running is None
    while proc.poll() is None and time.monotonic() < deadline:
        if not called and lock_path(settings).is_file() and lock_path(settings).stat().st_size:
            while_running(proc)
            called = True
        if commits(settings, tables) - start >= n:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    seen = commits(settings, tables) - start
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == -signal.SIGKILL, (
        f"the run ended by itself (exit {proc.returncode}) after {seen} of the {n} commits "
        f"the kill waited for:\n{out[-3000:]}")
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # nothing of the group may outlive it
    except ProcessLookupError:
        pass
    return seen


@pytest.fixture(scope="module")
def killed_lake(small_city, tmp_path_factory):
    root = tmp_path_factory.mktemp("killed")
    lake = lake_like(small_city, root)
    env = settings_env(root, **TINY_SPARK)
    return {"lake": lake, "env": env, "kills": {}}


def test_sigkill_mid_write_in_each_stage_leaves_no_partial_table_and_the_rerun_completes(
        spark, killed_lake, small_city_cli_day1, tally):
    lake, env = killed_lake["lake"], killed_lake["env"]
    reference = small_city_cli_day1
    rng = random.Random(SEED)
    refused = {}

    def second_run_of_the_day(_):
        second = cli("ingest", {**env, "HEALTHLAKE_OPERATIONS__LOCK_WAIT_SECONDS": "0"})
        refused["out"] = second.communicate(timeout=120)[0]
        refused["code"] = second.returncode

    for stage in STAGES:
        tables = stage_tables(lake, stage)
        if stage not in KILLABLE:
            run_job(spark, lake, stage)
            continue
        with tally(f"sigkill:{stage}"):
            before = fingerprint(spark, only(lake, tables), WHEN)
            after = fingerprint(spark, only(reference, tables), WHEN)
            n_commits = commits(reference, tables)  # the undisturbed run's commits, this stage
            assert n_commits >= 2, (stage, n_commits)
            kill_at = rng.randint(1, n_commits - 1)
            seen = kill_after_commits(
                cli(stage, env), lake, tables, kill_at,
                second_run_of_the_day if stage == "ingest" else None)
            killed_lake["kills"][stage] = {"after_commit": kill_at, "of": n_commits,
                                           "seen": seen, "seed": SEED}
            now = fingerprint(spark, only(lake, tables), WHEN)
            partial = {t: now[t] for t in now
                       if now[t] not in (before.get(t, (0, 0)), after.get(t), (0, 0))}
            assert not partial, (stage, killed_lake["kills"][stage], partial)
            assert seen >= kill_at and any(now.get(t) == after.get(t) for t in tables)
            with writer_lock(lake, "the test", wait_seconds=0):
                pass  # SIGKILL released the lock: the next run needs no clean-up
            run_job(spark, lake, stage)
    with tally("second_run_while_one_writes"):
        assert refused["code"] == 4, refused
        assert "is being written by `healthlake ingest --date 2024-04-15`" in refused["out"]
        assert "did nothing" in refused["out"]

    got, want = fingerprint(spark, lake, WHEN), fingerprint(spark, reference, WHEN)
    for name in QUALITY_TABLES:
        want.pop(name, None)
    assert got == want, {t: (got.get(t), want.get(t)) for t in set(got) | set(want)
                         if got.get(t) != want.get(t)}
    tally.note("sigkill points", killed_lake["kills"])


def test_the_day_run_a_third_time_changes_nothing(spark, killed_lake, tally):
    lake = killed_lake["lake"]
    assert killed_lake["kills"], "runs after the kill test"
    with tally("same_day_third_run"):
        before = fingerprint(spark, lake, WHEN)
        # The log's times too: a re-run keeps when each file was first seen.
        log_before = fingerprint(spark, only(lake, ["ops.ingest_log"]), ("run_id", "read_ms"))
        for stage in STAGES:
            run_job(spark, lake, stage)
        assert fingerprint(spark, lake, WHEN) == before
        assert fingerprint(spark, only(lake, ["ops.ingest_log"]), ("run_id", "read_ms")) \
            == log_before


def test_a_late_institution_loads_on_the_next_run_and_its_periods_are_recomputed(
        spark, killed_lake, tally):
    from jobs.generate import deliver_late

    lake = killed_lake["lake"]
    with tally("late_institution"):
        before = fingerprint(spark, lake, WHEN)
        metric_version = table_version(lake, "gold.metric_value")
        log_before = read_table(spark, lake, "ops.ingest_log").toPandas()
        moved = deliver_late(lake, D1)
        assert moved, "the small city holds back one institution's first day"
        late = {Path(p).name for p in moved}
        for stage in STAGES:
            run_job(spark, lake, stage)
        log = read_table(spark, lake, "ops.ingest_log").toPandas()
        theirs = log[log["institution_id"].isin(late)]
        assert (theirs["status"] == "loaded").any()
        assert theirs["ingested_at"].min() > log_before["ingested_at"].max()  # seen late
        rest = log[~log["institution_id"].isin(late)].drop(columns=["run_id", "read_ms"])
        kept = log_before[~log_before["institution_id"].isin(late)].drop(
            columns=["run_id", "read_ms"])
        assert sorted(map(str, rest.itertuples(index=False))) == \
            sorted(map(str, kept.itertuples(index=False)))
        loaded = int(theirs["rows_loaded"].sum())
        assert loaded > 0
        feeds = [t for t in lake.tables
                 if t.startswith("bronze.") and table_exists(spark, lake, t)]
        assert sum(read_table(spark, lake, t).where(
            f"institution_id IN ({', '.join(repr(i) for i in late)})").count()
            for t in feeds) == loaded
        after = fingerprint(spark, lake, WHEN)
        changed = {t for t in after if after[t] != before.get(t)}
        # Its rows reach every layer they belong to (on this first day the late village clinic
        # sends its institution survey), the index built on them, and the day's scorecard, which
        # now calls it late rather than missing.
        assert {"ops.ingest_log", "bronze.institution_survey", "silver.institution_survey",
                "gold.dq_scorecard", "gold.index_indicator"} <= changed, changed
        status = {r["delivery_status"] for r in read_table(spark, lake, "gold.dq_scorecard")
                  .where(f"institution_id IN ({', '.join(repr(i) for i in late)})")
                  .where("delivery_status IS NOT NULL").collect()}
        assert status == {"late"}, status
        # The periods of the day were recomputed (a new commit), even where no value changed.
        assert table_version(lake, "gold.metric_value") > metric_version
