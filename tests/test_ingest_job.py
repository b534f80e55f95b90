"""The Spark ingest job on a small hand-made landing zone: reconciliation, missing and unlisted
files, duplicates under another name, identical re-runs and out-of-order days."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest

from jobs.ingest import job as ingest
from jobs.lake import fingerprint, read_table
from tests.conftest import WHEN, make_settings
from tests.test_readers import csv_lines, line

D1, D2 = dt.date(2024, 4, 15), dt.date(2024, 4, 16)


def deliver(landing: Path, day: dt.date, inst: str, files: dict[str, bytes],
            listed: dict[str, int] | None = None, unlisted: tuple[str, ...] = ()) -> None:
    """Write files and a manifest (rows counted from the text unless ``listed`` says)."""
    folder = landing / day.isoformat() / inst
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        if name in unlisted:
            continue
        rows = (listed or {}).get(name, data.decode("utf-8").count("\n") - 1)
        entries.append({"feed": "resident_registry", "file": name, "rows": rows,
                        "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})
    manifest = {"institution_id": inst, "extract_date": day.isoformat(), "profile": "district",
                "files": entries}
    (folder / "_manifest.json").write_text(json.dumps(manifest))


def registry_csv(*ids: str, bad_date: str | None = None) -> bytes:
    rows = [line("district", record_id=i) for i in ids]
    if bad_date:
        rows.append(line("district", record_id="BAD", birth_date=bad_date))
    return ("\n".join(csv_lines("district", rows)) + "\n").encode("utf-8")


@pytest.fixture
def lake(tmp_path):
    return make_settings(tmp_path)


def snapshot(spark, settings, table: str) -> list[tuple]:
    df = read_table(spark, settings, table)
    cols = [c for c in df.columns if c not in ("run_id", "ingested_at", "read_ms")]
    return sorted(tuple(str(v) for v in r) for r in df.select(*cols).collect())


def test_day_with_faults_reconciles_and_reruns_identically(spark, lake):
    day1 = registry_csv("A1", "A2", bad_date="2024-02-30")
    deliver(lake.landing_root, D1, "I1", {"resident_registry.csv": day1,
                                          "resident_registry_extra.csv": registry_csv("Z1")},
            unlisted=("resident_registry_extra.csv",))
    deliver(lake.landing_root, D1, "I2", {"resident_registry.csv": registry_csv("B1")})
    # I2 also lists a file that never arrived
    manifest = lake.landing_root / "2024-04-15/I2/_manifest.json"
    m = json.loads(manifest.read_text())
    m["files"].append({"feed": "resident_registry", "file": "lost.csv", "rows": 7,
                       "sha256": "f" * 64, "bytes": 10})
    manifest.write_text(json.dumps(m))

    summary = ingest.run(spark, lake, D1)
    assert summary["reconciled"] and summary["rows_in"] == 5
    assert summary["rows_loaded"] == 3 and summary["rows_quarantined"] == 2
    bronze = read_table(spark, lake, "bronze.resident_registry")
    assert sorted(r.record_id for r in bronze.collect()) == ["A1", "A2", "B1"]
    q = {(r.rule_id, r.source_line) for r in read_table(spark, lake,
                                                        "quarantine.resident_registry").collect()}
    assert q == {("R_FORM", 4), ("F_UNLISTED", None)}
    logs = {r.source_file: r for r in read_table(spark, lake, "ops.ingest_log").collect()}
    lost = logs["2024-04-15/I2/lost.csv"]
    assert lost.status == "missing" and lost.rows_in is None and lost.manifest_rows == 7
    assert logs["2024-04-15/I1/resident_registry_extra.csv"].status == "quarantined"

    before = {t: snapshot(spark, lake, t) for t in
              ("bronze.resident_registry", "quarantine.resident_registry", "ops.ingest_log")}
    ingest.run(spark, lake, D1)
    after = {t: snapshot(spark, lake, t) for t in before}
    assert after == before


def test_redelivered_file_under_another_name_adds_nothing_in_any_order(spark, tmp_path):
    def lake_with_days(root: Path):
        settings = make_settings(root)
        data = registry_csv("A1", "A2")
        deliver(settings.landing_root, D1, "I1", {"resident_registry.csv": data})
        deliver(settings.landing_root, D2, "I1", {"resident_registry_resend.csv": data,
                                                  "resident_registry.csv": registry_csv("A3")})
        return settings

    in_order = lake_with_days(tmp_path / "in_order")
    ingest.run(spark, in_order, D1)
    ingest.run(spark, in_order, D2)
    ids = sorted(r.record_id for r in read_table(spark, in_order,
                                                 "bronze.resident_registry").collect())
    assert ids == ["A1", "A2", "A3"]
    logs = {r.source_file: r for r in read_table(spark, in_order, "ops.ingest_log").collect()}
    resend = logs["2024-04-16/I1/resident_registry_resend.csv"]
    assert resend.status == "duplicate"
    assert resend.duplicate_of == "2024-04-15/I1/resident_registry.csv"

    backfill = lake_with_days(tmp_path / "backfill")
    ingest.run(spark, backfill, D2)  # the later day first
    ingest.run(spark, backfill, D1)
    assert snapshot(spark, backfill, "bronze.resident_registry") == \
        snapshot(spark, in_order, "bronze.resident_registry")
    # The log too: the later day's copy is logged as the duplicate it is in either order.
    log = ("ops.ingest_log",)
    assert fingerprint(spark, backfill, WHEN, log) == fingerprint(spark, in_order, WHEN, log)


def test_day_without_landing_folder_is_logged_as_empty(spark, lake):
    summary = ingest.run(spark, lake, dt.date(2024, 1, 1))
    assert summary["files"] == 0 and summary["reconciled"] and summary["rows_in"] == 0
    assert read_table(spark, lake, "ops.ingest_log").count() == 0


def lake_with_day(root: Path):
    """A lake with one institution's day: a registry with a bad row, an unlisted encounters
    file (quarantined whole) and a file of no feed (the unrecognised pseudo-feed)."""
    settings = make_settings(root)
    deliver(settings.landing_root, D1, "I1",
            {"resident_registry.csv": registry_csv("A1", bad_date="2024-13-01"),
             "encounters.csv": b"visit_id\nV1\n",
             "notes.txt": b"not a feed\n"},
            unlisted=("encounters.csv", "notes.txt"))
    return settings


DAY_TABLES = ("bronze.resident_registry", "quarantine.resident_registry",
              "quarantine.encounters", "ops.ingest_log")


def test_ingest_feed_by_feed_leaves_what_one_whole_run_leaves(spark, tmp_path):
    """A feed can be ingested alone (`healthlake ingest --feed`): the feeds one by one leave the
    same tables as one run over the day, and re-running one feed changes nothing."""
    from jobs.contracts import UNRECOGNISED, feed_choices

    tables = DAY_TABLES
    whole = lake_with_day(tmp_path / "whole")
    ingest.run(spark, whole, D1)
    by_feed = lake_with_day(tmp_path / "by_feed")
    # One DAG run, one time: every feed's task logs its run's start as when it saw the files.
    started = dt.datetime(2024, 4, 16, 0, 5, tzinfo=dt.UTC)
    summaries = {f: ingest.run(spark, by_feed, D1, [f], started) for f in feed_choices()}
    seen = {r.ingested_at for r in read_table(spark, by_feed, "ops.ingest_log").collect()}
    assert seen == {started.replace(tzinfo=None)}
    assert summaries[UNRECOGNISED]["files_by_status"] == {"unknown_feed": 1}
    assert summaries["encounters"]["files_by_status"] == {"quarantined": 1}
    expected = {t: snapshot(spark, whole, t) for t in tables}
    assert {t: snapshot(spark, by_feed, t) for t in tables} == expected

    ingest.run(spark, by_feed, D1, ["resident_registry"])
    assert {t: snapshot(spark, by_feed, t) for t in tables} == expected
    with pytest.raises(ValueError, match="unknown feed"):
        ingest.run(spark, by_feed, D1, ["registry"])


def test_feeds_read_ahead_without_spark_then_one_commit_leave_what_one_run_leaves(spark,
                                                                                  tmp_path):
    """The daily DAG reads each feed in a plain-Python task (`healthlake ingest-read`) and
    commits once: the commit loads the staged reads instead of reading the files again, leaves
    the tables one run leaves, and empties the day's staging area. A file no read task staged
    (here the encounters) is read by the commit itself."""
    import pyarrow.parquet as pq

    whole = lake_with_day(tmp_path / "whole")
    ingest.run(spark, whole, D1)
    ahead = lake_with_day(tmp_path / "ahead")
    read = ingest.read_ahead(ahead, D1, ["resident_registry"])
    assert read["files"] == 1 and read["rows_in"] == read["rows_loaded"] + read["rows_quarantined"]
    assert ingest.read_ahead(ahead, D1, ["resident_registry"]) == read  # safe to re-run
    staging = ingest.staging_dir(ahead, D1.isoformat())
    (staged,) = staging.glob("*.parquet")
    file_row = pq.read_table(staged).to_pandas().query("kind == 'file'").iloc[0]
    # A read the commit does not load (say, of a file found to duplicate one loaded earlier):
    # the day's commit leaves no raw rows behind in staging either.
    (staging / "not-loaded.parquet").write_bytes(b"")

    ingest.run(spark, ahead, D1)
    assert {t: snapshot(spark, ahead, t) for t in DAY_TABLES} == \
        {t: snapshot(spark, whole, t) for t in DAY_TABLES}
    logged = read_table(spark, ahead, "ops.ingest_log").where(
        "source_file LIKE '%resident_registry%'").first()
    assert logged["read_ms"] == file_row["read_ms"]  # the staged read, not a second one
    assert not staging.exists()


def test_ingest_read_command_runs_without_spark(tmp_path):
    """The DAG's read tasks run `healthlake ingest-read` in plain Python: no JVM, no pyspark."""
    import shlex
    import subprocess
    import sys

    from jobs.orchestration import daily_python_command, entrypoint
    from tests.conftest import settings_env

    lake_with_day(tmp_path)
    command = daily_python_command("ingest-read", dt.datetime(2024, 4, 14, 16, tzinfo=dt.UTC),
                                   "--feed", "resident_registry")
    assert shlex.split(command) == [sys.executable, str(entrypoint()), "ingest-read", "--date",
                                    D1.isoformat(), "--feed", "resident_registry"]
    check = ("import runpy, sys\nsys.argv = sys.argv[1:]\nrc = 0\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as e:\n    rc = e.code\n"
             "assert 'pyspark' not in sys.modules, 'pyspark was imported'\nsys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", check, str(entrypoint()), "--json",
                           *shlex.split(command)[2:]], env=settings_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)[D1.isoformat()]
    assert summary["feeds"] == ["resident_registry"] and summary["files"] == 1
