"""The data-quality scorecard's transforms on small hand-made tables: timeliness, completeness,
quarantine, invalid identity numbers, duplicates; the institution's whole day beside its feeds."""

from __future__ import annotations

import datetime as dt

import pytest

from jobs.gold import scorecard as S

D1, D2 = dt.date(2024, 4, 15), dt.date(2024, 4, 16)
T0 = dt.datetime(2024, 4, 16, 2, 0)
LATER = dt.datetime(2024, 4, 16, 9, 0)
LOG_DDL = ("extract_date date, institution_id string, feed string, status string, "
           "rows_in long, rows_quarantined long, manifest_rows long, ingested_at timestamp")


@pytest.fixture(scope="module")
def institutions(spark):
    return spark.createDataFrame([("A", "440402", "township"), ("B", "440402", "village"),
                                  ("C", "440403", "village"), ("E", "440404", "municipal")],
                                 "institution_id string, district_code string, tier string")


def rows(df, **where) -> dict:
    out = {}
    for r in df.collect():
        if all(r[k] == v for k, v in where.items()):
            out[(r["institution_id"], r["feed"])] = (r["numerator"], r["denominator"],
                                                     r["value"], r["delivery_status"])
    return out


def test_on_time_late_and_missing(spark, institutions):
    log = spark.createDataFrame([
        (D2, "A", "encounters", "loaded", 10, 0, 10, T0),
        (D2, "A", "referrals", "loaded", 2, 0, 2, T0),
        (D2, "B", "encounters", "loaded", 5, 0, 5, T0),
        (D2, "B", "referrals", "loaded", 1, 0, 1, LATER),      # came after the first run
        (D2, "C", "encounters", "missing", None, None, 3, T0),  # listed, never came
        (D1, "E", "encounters", "loaded", 4, 0, 4, T0),         # another day
    ], LOG_DDL)
    got = rows(S.delivery_status(log, institutions, D2))
    assert {k[0]: v[3] for k, v in got.items()} == {"A": "on_time", "B": "late", "C": "missing",
                                                    "E": "missing"}
    assert got[("A", None)][:3] == (1, 1, 100.0)
    assert got[("B", None)][:3] == (0, 1, 0.0)


def test_completeness_counts_empty_and_absent_columns(spark, institutions):
    bronze = spark.createDataFrame([(D2, "A", "x1", "", "v"), (D2, "A", "x2", None, " "),
                                    (D2, "B", "x3", "y", "z")],
                                   "extract_date date, institution_id string, k string, "
                                   "y string, z string")
    # Contract: k, y, z and w (w never sent: empty in every row).
    got = rows(S.completeness({"encounters": bronze}, {"encounters": ["k", "y", "z", "w"]},
                              institutions))
    assert got[("A", "encounters")][:2] == (3, 8)   # x1, v, x2 filled of 2 x 4
    assert got[("B", "encounters")][:2] == (3, 4)
    assert got[("A", None)][:2] == (3, 8)           # the institution's whole day


def test_quarantine_rate_adds_ingest_and_silver_rejections(spark, institutions):
    log = spark.createDataFrame([
        (D2, "A", "encounters", "loaded", 100, 3, 100, T0),
        (D2, "A", "lab_results", "quarantined", 20, 20, 20, T0),   # a whole file rejected
        (D2, "A", "referrals", "duplicate", None, None, 7, T0),    # not received again
    ], LOG_DDL)
    rejected = spark.createDataFrame(
        [(D2, "A", "encounters", "f.csv", 5), (D2, "A", "encounters", "f.csv", 5),
         (D2, "A", "encounters", "f.csv", 9)],
        "extract_date date, institution_id string, feed string, source_file string, "
        "source_line int")
    got = rows(S.quarantine_rate(log, rejected, institutions))
    assert got[("A", "encounters")][:2] == (5, 100)   # 3 at ingest + 2 rows at silver
    assert got[("A", "lab_results")][:2] == (20, 20)
    assert got[("A", None)][:2] == (25, 120)


def test_invalid_identity_numbers_among_rows_that_have_one(spark, institutions):
    std = spark.createDataFrame([(D2, "A", "110", False), (D2, "A", "x", True),
                                 (D2, "A", "", None), (D2, "A", None, None),
                                 (D2, "A", "y", True)],
                                "extract_date date, institution_id string, "
                                "national_id_raw string, is_national_id_valid boolean")
    got = rows(S.invalid_id_rate({"encounters": std}, institutions))
    assert got[("A", "encounters")][:2] == (1, 3)


def test_duplicates_repeat_an_earlier_row_or_arrive_as_a_duplicate_file(spark, institutions):
    bronze = spark.createDataFrame([
        (D1, "A", "f1", 1, "e1", "I10"),
        (D2, "A", "f2", 1, "e1", "I10"),     # sent again unchanged: duplicate
        (D2, "A", "f2", 2, "e2", "E11"),
        (D2, "A", "f2", 3, "e2", "E11"),     # twice the same day: duplicate
        (D2, "A", "f2", 4, "e3", "J06"),
        (D2, "B", "g2", 1, "e1", "I10"),     # another institution's e1: not a duplicate
        (D2, "A", "f2", 5, "e4", "I10"),
        (D1, "A", "f1", 2, "e4", "I11"),     # e4 corrected on D2: a new version, not a repeat
    ], "extract_date date, institution_id string, source_file string, source_line int, "
       "encounter_id string, diagnosis_code string")
    log = spark.createDataFrame([
        (D2, "A", "encounters", "loaded", 5, 0, 5, T0),
        (D2, "B", "encounters", "loaded", 1, 0, 1, T0),
        (D2, "A", "encounters", "duplicate", None, None, 4, T0),   # the same file again
    ], LOG_DDL)
    got = rows(S.duplicate_rate({"encounters": bronze}, log, {"encounters": ["encounter_id"]},
                                {"encounters": ["encounter_id", "diagnosis_code"]},
                                institutions, D2))
    assert got[("A", "encounters")][:2] == (2 + 4, 5 + 4)
    assert got[("B", "encounters")][:2] == (0, 1)


def test_rollup_sums_numerators_and_denominators(spark):
    card = spark.createDataFrame([
        ("m", "A", "440402", None, 1.0, 1.0), ("m", "B", "440402", None, 0.0, 1.0),
        ("m", "C", "440403", None, 1.0, 1.0), ("m", "A", "440402", "encounters", 9.0, 9.0)],
        "metric_id string, institution_id string, district_code string, feed string, "
        "numerator double, denominator double")
    got = {r["district_code"]: r["value"] for r in
           S.rollup(card, ["metric_id", "district_code"]).collect()}
    assert got == {"440402": 50.0, "440403": 100.0}
