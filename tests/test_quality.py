"""Data quality with Great Expectations: suites load and are checked, broken batches fail the
right expectation with a readable message, clean ones pass, results land in ops.dq_results and
the Data Docs open offline in headless Chromium."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest

from jobs.config import ConfigError
from jobs.quality import QualityError
from tests.conftest import ER_DAYS, make_settings

DAY = dt.date(2024, 4, 20)


# -- suites as configuration ---------------------------------------------------------------


def test_every_bronze_silver_and_gold_table_has_its_suite(settings):
    from jobs.quality.spec import load_suites

    suites = {s.name: s for s in load_suites(settings)}
    tables = {t for t in settings.tables
              if t.partition(".")[0] in ("bronze", "silver_std", "silver", "gold")}
    assert tables <= set(suites), f"tables without a suite: {sorted(tables - set(suites))}"
    assert all(s.table == name for name, s in suites.items())
    thresholds = suites["silver.chronic_followup"].expectations
    assert any(e.kwargs.get("min_value") == {"$PARAMETER": "systolic_bp_min"} for e in thresholds)


def test_a_wrong_suite_is_refused_naming_its_file(tmp_path):
    from jobs.quality.spec import load_suites

    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "silver.encounter.yaml").write_text(
        "table: silver.encounter\nexpectations:\n"
        "  - expect_column_values_to_be_purple: {column: person_id}\n")
    s = make_settings(tmp_path, HEALTHLAKE_QUALITY__SUITES_DIR=str(suites))
    with pytest.raises(ConfigError, match=r"silver.encounter.yaml.*expect_column_values_to_be_"
                                          r"purple.*not a Great Expectations expectation"):
        load_suites(s)
    (suites / "silver.encounter.yaml").write_text(
        "table: silver.encounter\nexpectations:\n"
        "  - expect_column_values_to_be_between: {column: total_fee, min_value: $no_such}\n")
    with pytest.raises(ConfigError, match="threshold 'no_such' is not in quality.thresholds"):
        load_suites(s)
    (suites / "silver.encounter.yaml").write_text(
        "table: silver.encounters_typo\nexpectations: []\n")
    with pytest.raises(ConfigError, match="must be the suite's name"):
        load_suites(s)


# -- broken and clean batches --------------------------------------------------------------


@pytest.fixture(scope="module")
def small_lake(tmp_path_factory):
    return make_settings(tmp_path_factory.mktemp("quality"))


INSTITUTIONS = [("ZHM0001", "市人民医院", "municipal", "440402", "440402001001"),
                ("ZHV0001", "村卫生室", "village", "440403", "440403101001")]
PERSONS = [("P" + "a" * 24, "female", dt.date(1950, 3, 1), "440402", "440402001001", "ZHM0001", 1),
           ("P" + "b" * 24, "male", dt.date(1990, 7, 9), "440403", "440403101001", "ZHV0001", 2)]
ENCOUNTERS = [("ZHM0001", "E1", "P" + "a" * 24, "I10", "hypertension"),
              ("ZHM0001", "E2", "P" + "b" * 24, "J06", None),
              ("ZHV0001", "E3", "P" + "b" * 24, "E11", "diabetes")]


def write_clinical(spark, s, institutions, persons, encounters):
    from jobs.lake import write_table

    write_table(spark.createDataFrame(institutions, "institution_id string, institution_name "
                                      "string, tier string, district_code string, area_code "
                                      "string"), s, "silver.institution", mode="overwrite")
    people = spark.createDataFrame(persons, "person_id string, sex string, birth_date date, "
                                   "district_code string, area_code string, "
                                   "primary_institution_id string, n_local_records long")
    write_table(people.select("person_id", "sex", "birth_date", "district_code", "area_code"), s,
                "restricted.person_attributes", mode="overwrite")
    write_table(people.select("person_id", "primary_institution_id", "n_local_records"), s,
                "silver.person", mode="overwrite")  # what has_person looks up
    rows = [(i, e, DAY, p, "municipal" if i.startswith("ZHM") else "village",
             dt.datetime(2024, 4, 20, 9, 30), "outpatient", icd, fam, 35.5)
            for i, e, p, icd, fam in encounters]
    write_table(spark.createDataFrame(rows, "institution_id string, encounter_id string, "
                                      "extract_date date, person_id string, tier string, "
                                      "visit_at timestamp, encounter_type string, icd10_3char "
                                      "string, condition_family string, total_fee double"),
                s, "silver.encounter", mode="overwrite")


CLINICAL = ["silver.institution", "restricted.person_attributes", "silver.encounter"]


def test_clean_batches_pass_and_are_recorded(spark, small_lake):
    from jobs.quality import job

    write_clinical(spark, small_lake, INSTITUTIONS, PERSONS, ENCOUNTERS)
    result = job.run(spark, small_lake, DAY, tables=CLINICAL)
    assert result["failed_fail"] == [] and result["failed_warn"] == []
    assert set(result["suites"]) == set(CLINICAL)
    recorded = spark.read.format("delta").load(
        str(small_lake.table_path("ops.dq_results"))).where(f"run_id = '{result['run_id']}'")
    assert recorded.where("NOT success").count() == 0
    assert recorded.select("suite").distinct().count() == 3


def test_broken_batches_fail_the_right_expectation_with_offending_keys(spark, small_lake):
    from jobs.lake import read_table
    from jobs.quality import job

    orphan = "P" + "c" * 24
    encounters = ENCOUNTERS + [("ZHM0001", "E1", "P" + "a" * 24, "I10", "hypertension"),  # dup
                               ("ZHV0001", "E9", orphan, "J06", None)]                   # orphan
    persons = PERSONS + [("P" + "d" * 24, "male", dt.date(1980, 1, 1), "440499",
                          "440499001001", "ZHM0001", 1)]                          # unknown area
    write_clinical(spark, small_lake, INSTITUTIONS, persons, encounters)
    with pytest.raises(QualityError) as failed:
        job.run(spark, small_lake, DAY, tables=CLINICAL)
    message = str(failed.value)
    lines = {line.split(" failed:")[0].strip(): line for line in message.splitlines()
             if " failed:" in line}
    dup = lines["silver.encounter: expect_compound_columns_to_be_unique:institution_id,"
                "encounter_id [fail]"]
    assert "2 of 5 rows unexpected" in dup and "encounter_id=E1" in dup
    orphaned = lines["silver.encounter: expect_column_values_to_be_in_set:has_person [fail]"]
    assert "1 of 5 rows unexpected" in orphaned and "encounter_id=E9" in orphaned
    area = lines["restricted.person_attributes: expect_column_values_to_be_in_set:"
                 "district_code [fail]"]
    assert f"person_id={'P' + 'd' * 24}" in area and "440499" in area
    assert ("restricted.person_attributes: expect_column_values_to_match_regex:area_code "
            "[fail]") in lines
    assert not any(k.startswith("silver.institution") for k in lines)  # clean table passes
    results = read_table(spark, small_lake, "ops.dq_results").where("NOT success")
    per_institution = {(r["expectation_id"], r["institution_id"]): r["unexpected_count"]
                       for r in results.where("institution_id IS NOT NULL").collect()}
    assert per_institution[("expect_column_values_to_be_in_set:has_person", "ZHV0001")] == 1


def test_a_collapsed_institution_and_a_bronze_log_mismatch(spark, small_lake):
    from jobs.lake import read_table, write_table
    from jobs.quality import job

    log_rows, bronze_rows = [], []
    for back in range(10, -1, -1):
        day = DAY - dt.timedelta(days=back)
        volumes = {"ZHM0001": 100, "ZHD0001": 100, "ZHT0001": 80}
        if back == 0:
            volumes = {"ZHM0001": 5, "ZHD0001": 100}  # ZHM0001 collapses, ZHT0001 sends nothing
        for inst, n in volumes.items():
            log_rows.append((day, inst, "encounters", f"{day}/{inst}/encounters.csv", "loaded",
                             n, n, 0))
            if back == 0:
                bronze_rows += [(day, inst)] * (n - 1 if inst == "ZHD0001" else n)
    write_table(spark.createDataFrame(log_rows, "extract_date date, institution_id string, feed "
                                      "string, source_file string, status string, rows_in long, "
                                      "rows_loaded long, rows_quarantined long"),
                small_lake, "ops.ingest_log", mode="overwrite")
    write_table(spark.createDataFrame(bronze_rows, "extract_date date, institution_id string"),
                small_lake, "bronze.encounters", mode="overwrite")
    with pytest.raises(QualityError, match=r"ops.feed_counts: expect_column_pair_values_to_be_"
                                           r"equal:rows_in_bronze,rows_loaded \[fail\].*"
                                           r"institution_id=ZHD0001"):
        job.run(spark, small_lake, DAY, tables=["ops.feed_counts"])
    counts = {r["institution_id"]: r for r in read_table(spark, small_lake, "ops.feed_counts")
              .where(f"extract_date = DATE'{DAY}'").collect()}
    assert counts["ZHM0001"]["ratio_to_recent"] == pytest.approx(0.05)
    assert counts["ZHT0001"]["n_files"] == 0 and counts["ZHT0001"]["days_since_delivery"] == 1
    assert counts["ZHD0001"]["rows_in_bronze"] == 99

    bronze_rows.append((DAY, "ZHD0001"))  # bronze now agrees with the log: only warnings remain
    write_table(spark.createDataFrame(bronze_rows, "extract_date date, institution_id string"),
                small_lake, "bronze.encounters", mode="overwrite")
    result = job.run(spark, small_lake, DAY, tables=["ops.feed_counts"])
    assert result["failed_fail"] == []
    (collapse,) = [w for w in result["failed_warn"] if "ratio_to_recent" in w]
    assert "institution_id=ZHM0001" in collapse and "ZHD0001" not in collapse


def test_data_docs_open_offline_in_headless_chromium(spark, small_lake, tmp_path):
    from jobs.quality.job import data_docs_index

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "headless Chromium is needed (make test installs Debian's chromium)"
    index = data_docs_index(small_lake)
    assert index.exists()
    assert "https://" not in "".join(
        line for line in index.read_text().splitlines() if "<script" in line or "<link" in line)
    browse = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
              "--virtual-time-budget=5000"]
    dom = subprocess.run([*browse, "--dump-dom", index.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    rows = dom.count("<tr")
    assert rows > 3, "the index's table of validation results was not drawn"
    for suite in CLINICAL:
        assert suite in dom
    shot = tmp_path / "data-docs.png"
    subprocess.run([*browse, f"--screenshot={shot}", "--window-size=1280,900", index.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000


# -- the generated city --------------------------------------------------------------------


def test_the_generated_city_passes_its_suites(spark, settings, resolved_city):
    from jobs.quality import job

    result = job.run(spark, settings, ER_DAYS[1], layers=["ops", "bronze", "silver_std",
                                                           "silver"])
    assert result["failed_fail"] == []
    assert len(result["suites"]) >= 20
    assert Path(result["data_docs"]).exists()
