"""Bronze ingest of a generated city, scored against the generator's ground truth: every injected
fault is caught by the right rule at the right line, nothing else is rejected, every row is
accounted for, a late delivery loads on a re-run, and an interrupted run leaves nothing
half-done."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from jobs.generate import deliver_late
from jobs.ingest import job as ingest
from jobs.ingest.report import all_quarantine
from jobs.lake import read_table
from tests.conftest import CITY_DAYS

DAYS = CITY_DAYS
ROW_RULE = {"wrong_field_count": "R_FIELDS", "broken_quoting": "R_QUOTING",
            "impossible_date": "R_FORM", "empty_required": "R_REQUIRED",
            "undecodable_bytes": "R_DECODE", "broken_json": "R_JSON"}
FILE_RULE = {"renamed_column": "F_COLUMNS", "zero_byte_file": "F_EMPTY",
             "wrong_encoding": "F_ENCODING", "half_written_gzip": "F_UNREADABLE",
             "truncated_file": "F_CHECKSUM", "unlisted_file": "F_UNLISTED"}


@pytest.fixture(scope="module")
def city(ingested_city):
    return ingested_city


def _with_parts(df: pd.DataFrame) -> pd.DataFrame:
    parts = df["source_file"].str.split("/", expand=True)
    return df.assign(day=parts[0], inst=parts[1], file=parts[2])


def test_every_injected_fault_is_caught_by_the_right_rule_and_nothing_else(spark, settings, city):
    q = _with_parts(all_quarantine(spark, settings).toPandas())
    log = _with_parts(read_table(spark, settings, "ops.ingest_log").toPandas())
    explained = set()
    for f in city["faults"].itertuples():
        day = str(f.extract_date)[:10]
        at = (q.day == day) & (q.inst == f.institution_id) & (q.file == f.file)
        where = f"{f.kind} {day}/{f.institution_id}/{f.file}:{f.line}"
        if f.kind in ROW_RULE:
            hit = q[at & (q.source_line == f.line)]
            assert list(hit.rule_id) == [ROW_RULE[f.kind]], where
        elif f.kind in FILE_RULE:
            hit = q[at & (q.scope == "file")]
            assert list(hit.rule_id) == [FILE_RULE[f.kind]], where
        else:
            hit = q.iloc[0:0]
            mine = log[(log.day == day) & (log.institution_id == f.institution_id)]
            if f.kind == "redelivered_file":
                assert (mine.status == "duplicate").sum() == 1, where
            elif f.kind == "missing_file":
                row = mine[mine.file == f.file]
                assert list(row.status) == ["missing"] and row.rows_in.isna().all(), where
            else:  # late_institution, missing_institution: nothing of theirs that day
                assert mine.empty, where
        explained.update(hit.index)
    unexplained = q.drop(index=list(explained))
    assert unexplained.empty, unexplained[["source_file", "source_line", "rule_id", "message"]]
    assert set(city["faults"].kind) >= set(ROW_RULE) | set(FILE_RULE)


def test_every_row_is_accounted_for(spark, settings, city):
    for run in city["runs"].values():
        assert run["reconciled"] and run["rows_in"] == run["rows_loaded"] + run["rows_quarantined"]
    log = read_table(spark, settings, "ops.ingest_log").toPandas()
    read = log[log.rows_in.notna()]
    assert (read.rows_in == read.rows_loaded + read.rows_quarantined).all()
    # bronze holds exactly the ground truth's rows that carry no fault, in files loaded
    records = city["records"]
    late = set(city["faults"].query("kind == 'late_institution'").institution_id)
    clean = records[records.row_fault.isna() & records.file_fault.isna()
                    & ~records.institution_id.isin(late)]
    for feed, expected in clean.groupby("feed"):
        bronze = read_table(spark, settings, f"bronze.{feed}").toPandas()
        got = _with_parts(bronze)
        key = {"resident_registry": "record_id", "encounters": "encounter_id",
               "lab_results": "lab_result_id", "referrals": "referral_id",
               "chronic_followups": "followup_id", "institution_survey": "survey_period"}[feed]
        got_keys = sorted(zip(got.day, got.inst, got[key].astype(str), got.source_line,
                              strict=True))
        exp_keys = sorted(zip(expected.extract_date.astype(str).str[:10], expected.institution_id,
                              expected.record_key.astype(str), expected.line, strict=True))
        assert got_keys == exp_keys, feed


def test_bronze_keeps_values_as_received_with_lineage(spark, settings, city):
    reg = read_table(spark, settings, "bronze.resident_registry")
    township = reg.where("source_profile = 'township'").limit(1).collect()[0]
    assert "/" in township.birth_date and township.sex in ("男", "女")
    assert township.tier == "township" and township.source_file.endswith(".csv")
    district = reg.where("source_profile = 'district'").limit(1).collect()[0]
    assert district.sex in ("1", "2") and "-" in district.birth_date
    assert len(district.source_sha256) == 64 and len(district.ingest_id) == 16


def test_late_delivery_loads_on_rerun_and_changes_nothing_else(spark, settings, city):
    late = city["faults"].query("kind == 'late_institution'").iloc[0]
    day = dt.date.fromisoformat(str(late.extract_date)[:10])
    before = read_table(spark, settings, "bronze.resident_registry").toPandas()
    log_before = read_table(spark, settings, "ops.ingest_log").where(
        f"extract_date = DATE'{day}'").toPandas()
    assert deliver_late(settings, day)
    ingest.run(spark, settings, day)
    # The log keeps when each file was first seen: the late files after the day's first run.
    log_after = read_table(spark, settings, "ops.ingest_log").where(
        f"extract_date = DATE'{day}'").toPandas()
    first_run = log_before["ingested_at"].min()
    came_late = log_after["institution_id"] == late.institution_id
    assert (log_after.loc[came_late, "ingested_at"] > first_run).all()
    kept = log_before.set_index("source_file")["ingested_at"]
    assert (log_after.loc[~came_late].set_index("source_file")["ingested_at"]
            == kept.loc[log_after.loc[~came_late, "source_file"]]).all()
    after = read_table(spark, settings, "bronze.resident_registry").toPandas()
    theirs = after[after.institution_id == late.institution_id]
    assert len(theirs) > 0
    rest = after[after.institution_id != late.institution_id]
    cols = [c for c in before.columns if c != "extra_columns"]
    pd.testing.assert_frame_equal(
        rest[cols].sort_values(["source_file", "source_line"]).reset_index(drop=True),
        before[cols].sort_values(["source_file", "source_line"]).reset_index(drop=True))


def test_interrupted_run_leaves_no_partial_day_and_rerun_completes(spark, settings, city,
                                                                   monkeypatch):
    day = DAYS[1]
    tables = ["bronze.resident_registry", "bronze.encounters", "ops.ingest_log"]

    def snapshot():
        out = {}
        for t in tables:
            df = read_table(spark, settings, t).where(f"extract_date = DATE'{day}'")
            cols = [c for c in df.columns if c not in ("run_id", "ingested_at", "read_ms",
                                                       "extra_columns")]
            out[t] = sorted(map(tuple, df.select(*cols).collect()))
        return out

    before = snapshot()
    real_write = ingest.write_table
    calls = []

    def crash_on_third(df, s, name, **kw):
        calls.append(name)
        if len(calls) == 3:
            raise RuntimeError("killed")
        real_write(df, s, name, **kw)

    monkeypatch.setattr(ingest, "write_table", crash_on_third)
    with pytest.raises(RuntimeError, match="killed"):
        ingest.run(spark, settings, day)
    monkeypatch.setattr(ingest, "write_table", real_write)
    assert "ops.ingest_log" not in calls  # the log, written last, never says the day is done
    ingest.run(spark, settings, day)
    assert snapshot() == before


def test_quarantine_report_lists_rejections_and_files_that_never_loaded(spark, settings, city):
    from jobs.ingest import report

    rows = report.run(spark, settings)
    rules = {r["rule_id"] for r in rows}
    assert {"R_FORM", "R_REQUIRED", "F_CHECKSUM", "MISSING", "DUPLICATE"} <= rules
    missing = next(r for r in rows if r["rule_id"] == "MISSING")
    assert "never arrived" in missing["example"] and missing["scope"] == "file"
    log = read_table(spark, settings, "ops.ingest_log").where("status = 'missing'").collect()
    assert missing["n_rows"] == log[0].manifest_rows  # what the manifest promised
    only = report.run(spark, settings, rule="R_FORM")
    assert only and {r["rule_id"] for r in only} == {"R_FORM"}
