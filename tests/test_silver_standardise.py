"""Silver standardisation: each standardising expression on tiny inline DataFrames (a failure case
beside every happy path), the feed transform's reject / null / flag split, and one small
generated city standardised end to end against the generator's ground truth."""

from __future__ import annotations

import datetime as dt
import random

import pandas as pd
import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from jobs.config import ConfigError
from jobs.contracts import load_contracts
from jobs.identity import canonical_id
from jobs.silver import job as silver
from jobs.silver import standardise as S
from jobs.silver.params import SilverParams, check_params, load_silver_params

PROFILES = load_contracts().profiles
AREAS = S.AreaReference(codes=frozenset({"440402", "440402001", "440402001001", "440403"}),
                        district_codes=frozenset({"440402", "440403"}),
                        zones={"440402001001": "横琴"})


@pytest.fixture(scope="module")
def params(settings) -> SilverParams:
    return load_silver_params(settings)


@pytest.fixture(scope="module")
def ctx(params) -> silver.StdContext:
    return silver.StdContext(params=params, profiles=PROFILES, areas=AREAS)


def _one_col(spark, values, name="v"):
    return spark.createDataFrame([(v,) for v in values], f"{name} string")


# -- identity numbers ------------------------------------------------------------------------


def test_national_id_is_cleaned_upgraded_and_an_invalid_one_flagged_not_dropped(spark):
    rows = [
        ("34052419800101001X", "34052419800101001X", True, "valid"),
        ("34052419800101001x", "34052419800101001X", True, "valid"),             # lower-case x
        ("３４０５２４ 1980０101　001X", "34052419800101001X", True, "valid"),  # full-width
        ("340524800101001", "34052419800101001X", True, "upgraded_from_15"),
        ("340524198001010010", None, False, "bad_check_char"),                 # wrong check char
        ("3405241980", None, False, "bad_form"),
        ("", None, False, "missing"),
        (None, None, False, "missing"),
    ]
    df = spark.createDataFrame([(r[0],) for r in rows], "v string")
    got = df.select("v", S.normalise_national_id(F.col("v")).alias("n")).select(
        "v", "n.national_id", "n.is_national_id_valid", "n.national_id_status").collect()
    assert [(r.v, r.national_id, r.is_national_id_valid, r.national_id_status) for r in got] \
        == rows
    bad = df.where(F.col("v") == "340524198001010010").select(
        S.normalise_national_id(F.col("v")).alias("n")).first().n
    assert bad.national_id_clean == "340524198001010010"  # kept for matching
    ok = df.limit(1).select(S.normalise_national_id(F.col("v")).alias("n")).first().n
    assert ok.id_birth_date == dt.date(1980, 1, 1) and ok.id_sex == "male"


def test_national_id_matches_the_python_reference_on_random_mutations(spark):
    rng = random.Random(7)
    values = []
    for _ in range(300):
        first17 = f"{rng.choice([440402, 440403, 340524])}{rng.randint(1930, 2020)}" \
                  f"{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
        good = first17 + "10X98765432"[sum(int(d) * w for d, w in zip(
            first17, (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2), strict=True)) % 11]
        kind = rng.randrange(5)
        values.append([good, good.lower(), good[:6] + good[8:17], good[:17] + "7",
                       good[:10] + " " + good[10:]][kind])
    got = _one_col(spark, values).select(
        "v", S.normalise_national_id(F.col("v"))["national_id"].alias("n")).collect()
    assert {r.v: r.n for r in got} == {v: canonical_id(v) for v in values}


# -- names -----------------------------------------------------------------------------------


def test_names_are_trimmed_half_width_and_get_a_pinyin_key(spark):
    df = _one_col(spark, ["  张 三 ", "章三", "ＬＩ　Ｍｉｎｇ", "阿卜杜•买买提", "   ", None])
    got = (df.select(S.normalise_name(F.col("v")).alias("name"))
           .select("name", S.name_pinyin_key(F.col("name")).alias("key")).collect())
    assert [(r.name, r.key) for r in got] == [
        ("张三", "zhangsan"), ("章三", "zhangsan"), ("LI Ming", "liming"),
        ("阿卜杜·买买提", "abodumaimaiti"), (None, None), (None, None)]


def test_pinyin_key_tells_different_names_apart():
    assert S.pinyin_key("王伟") != S.pinyin_key("王薇") or S.pinyin_key("王伟") == "wangwei"
    assert S.pinyin_key("李明") != S.pinyin_key("刘明")
    assert S.pinyin_key(None) is None


# -- phones ----------------------------------------------------------------------------------


def test_phones_become_digits_with_a_type(spark):
    df = _one_col(spark, ["+86 138-0013-8000", "8613800138000", "１３８００１３８０００",
                          "0756-2212345", "2212345", "12345", "23800138000", None])
    got = df.select("v", S.normalise_phone(F.col("v")).alias("p")).select("v", "p.*").collect()
    assert [(r.phone, r.phone_type) for r in got] == [
        ("13800138000", "mobile"), ("13800138000", "mobile"), ("13800138000", "mobile"),
        ("07562212345", "landline"), ("07562212345", "landline"), (None, None), (None, None),
        (None, None)]


# -- sex, dates, timestamps by source profile ------------------------------------------------


def test_sex_codes_are_read_through_each_profile(spark):
    rows = [("township", "男", "male"), ("district", "1", "male"), ("municipal", "M", "male"),
            ("municipal", "m", "male"), ("village_csv", "女", "female"),
            ("district", "9", "unknown"),
            ("district", "M", None), ("township", "1", None), ("municipal", "男", None),
            ("district", "", None)]
    df = spark.createDataFrame(rows, "profile string, v string, expected string")
    got = df.withColumn("expected", S.parse_sex(F.col("v"), F.col("profile"), PROFILES))
    assert_df_equality(got, df, ignore_row_order=True, ignore_nullable=True)


def test_strftime_formats_become_spark_patterns():
    assert S.strftime_to_spark("%Y/%m/%d") == "yyyy/M/d"
    assert S.strftime_to_spark("%Y-%m-%dT%H:%M:%S+08:00") == "yyyy-M-d'T'H:m:sXXX"
    with pytest.raises(ValueError, match="%j"):
        S.strftime_to_spark("%Y-%j")


def test_dates_parse_in_the_profile_format_and_impossible_dates_fail(spark):
    rows = [("district", "2024-02-29", dt.date(2024, 2, 29)), ("district", "2024-02-30", None),
            ("township", "2024/04/15", dt.date(2024, 4, 15)),
            ("township", "2024/4/5", dt.date(2024, 4, 5)),
            ("township", "2024-04-15", dt.date(2024, 4, 15)),        # year-first fallback
            ("district", "15/04/2024", None), ("township", "2023/02/29", None),
            ("municipal", "", None)]
    df = spark.createDataFrame(rows, "profile string, v string, expected date")
    got = df.withColumn("expected", S.parse_date(F.col("v"), F.col("profile"), PROFILES,
                                                 ["yyyy-M-d", "yyyyMMdd"]))
    assert_df_equality(got, df, ignore_row_order=True, ignore_nullable=True)


def test_timestamps_are_local_shanghai_time_or_their_own_offset(spark):
    at = int(dt.datetime(2024, 4, 15, 0, 30, tzinfo=dt.UTC).timestamp())
    rows = [("township", "2024/04/15 08:30", at), ("district", "2024-04-15 08:30:00", at),
            ("municipal", "2024-04-15T08:30:00+08:00", at),
            ("municipal", "2024-04-15T00:30:00+00:00", at),
            ("district", "2024-02-30 08:00:00", None), ("township", "2024/04/15", None)]
    df = spark.createDataFrame(rows, "profile string, v string, expected long")
    got = df.withColumn("expected", F.unix_timestamp(
        S.parse_timestamp(F.col("v"), F.col("profile"), PROFILES, "Asia/Shanghai")))
    assert_df_equality(got, df, ignore_row_order=True, ignore_nullable=True)


# -- ICD-10 ----------------------------------------------------------------------------------


def test_icd10_codes_get_their_category_and_condition_family(spark, params):
    rows = [("I10", "I10", "I10", "hypertension"),
            ("I10.x01", "I10.x01", "I10", "hypertension"),
            ("i10.X01", "I10.x01", "I10", "hypertension"),
            ("I15.0", "I15.0", "I15", "hypertension"),
            ("E11.9", "E11.9", "E11", "diabetes"), ("E119", "E11.9", "E11", "diabetes"),
            ("E14.9", "E14.9", "E14", "diabetes"),
            ("I14", "I14", "I14", None),            # no I14 in WHO ICD-10: not hypertension
            ("E15", "E15", "E15", None), ("J06.9", "J06.9", "J06", None),
            ("XYZ", None, None, None), ("1I0", None, None, None)]
    df = spark.createDataFrame(rows, "v string, code string, three string, family string")
    icd = S.normalise_icd10(F.col("v"))
    got = df.select("v", icd["code"].alias("code"), icd["icd10_3char"].alias("three"),
                    S.condition_family(icd["icd10_3char"], params.family_ranges()).alias("family"))
    assert_df_equality(got, df, ignore_row_order=True, ignore_nullable=True)


# -- area codes, booleans, enums, numbers, units ---------------------------------------------


def test_area_codes_give_district_and_town_and_unknown_codes_are_told(spark):
    df = _one_col(spark, ["440402001001", "440402999999", "440403", "440499000000", "4404", None])
    got = df.select("v", S.parse_area_code(F.col("v"), AREAS).alias("a")).select("v", "a.*")
    assert [tuple(r)[1:] for r in got.collect()] == [
        ("440402001001", "440402", "440402001", "横琴", True),
        ("440402999999", "440402", "440402999", None, False),
        ("440403", "440403", None, None, True),
        ("440499000000", None, "440499000", None, False),
        (None, None, None, None, False), (None, None, None, None, False)]


def test_booleans_enums_numbers_and_units(spark, params):
    df = _one_col(spark, ["是", "否", "1", "0", "TRUE", "false", "maybe", ""])
    got = [r.b for r in df.select(S.parse_boolean(F.col("v"), params.boolean_true,
                                                  params.boolean_false).alias("b")).collect()]
    assert got == [True, False, True, False, True, False, None, None]

    df = _one_col(spark, ["Outpatient", " home_care ", "4b", "x"])
    vals = ["outpatient", "home_care", "4B"]
    assert [r.e for r in df.select(S.parse_enum(F.col("v"), vals).alias("e")).collect()] == \
        ["outpatient", "home_care", "4B", None]

    df = _one_col(spark, ["120", "+12", "１２", "1,200", "12.5", "abc", None])
    assert [r.i for r in df.select(S.parse_integer(F.col("v")).alias("i")).collect()] == \
        [120, 12, 12, 1200, None, None, None]
    dec = _one_col(spark, ["5.456", "７.0", "1e3", "-"]).select(
        S.parse_decimal(F.col("v"), 6, 2).alias("d")).collect()
    assert [None if r.d is None else str(r.d) for r in dec] == ["5.46", "7.00", None, None]
    rng = _one_col(spark, ["50", "301", None]).select(
        S.in_range(S.parse_integer(F.col("v")), 50, 300).alias("ok")).collect()
    assert [r.ok for r in rng] == [True, False, None]

    units = _one_col(spark, ["mmol/l", "μmol/L", "×10^9/L", " ｍｍｏｌ/Ｌ ", "mg/dL", None]).select(
        S.normalise_unit(F.col("v"), params.unit_aliases).alias("u")).collect()
    assert [r.u for r in units] == ["mmol/L", "umol/L", "10^9/L", "mmol/L", "mg/dL", None]


def test_configuration_errors_name_the_key(params):
    import dataclasses

    with pytest.raises(ConfigError, match="condition_families.hypertension"):
        check_params(dataclasses.replace(params, condition_families={"hypertension": ["I15-I10"]}))
    with pytest.raises(ConfigError, match="boolean_true"):
        check_params(dataclasses.replace(params, boolean_false=["是"]))


# -- feed transforms -------------------------------------------------------------------------


def _bronze(spark, feed, rows):
    """Bronze-shaped rows: canonical values as strings plus lineage, as ingest writes them."""
    contract = load_contracts().feed(feed)
    base = {c: "" for c in contract.column_names}
    out = []
    for i, (profile, values) in enumerate(rows, start=2):
        out.append({**base, **values, "extra_columns": {}, "extract_date": dt.date(2024, 4, 15),
                    "institution_id": "I1", "tier": profile, "source_profile": profile,
                    "source_file": f"2024-04-15/I1/{feed}.csv", "source_line": i,
                    "source_sha256": "0" * 64, "ingest_id": "x" * 16})
    return spark.createDataFrame(out, schema=silver.empty_bronze(spark, contract).schema)


def test_registry_rows_are_typed_invalid_ids_flagged_and_bad_required_values_rejected(spark, ctx):
    good = {"record_id": "R1", "change_type": "create", "national_id": "340524800101001",
            "name": " 张 三", "sex": "男", "birth_date": "1980/01/01", "phone": "138 0013 8000",
            "area_code": "440402001001", "registered_at": "2024/04/14 09:00"}
    rows = [
        ("township", good),
        ("township", {**good, "record_id": "R2", "national_id": "340524198001010010",
                      "phone": "12345"}),                                 # flagged, nulled
        ("township", {**good, "record_id": "R3", "birth_date": "1980/02/30"}),     # S_DATE
        ("district", {**good, "record_id": "R4", "sex": "男"}),                    # S_SEX
        ("township", {**good, "record_id": "R5", "area_code": "440402999999"}),   # flagged
        ("township", {**good, "record_id": "R6", "birth_date": "2030/01/01",
                      "registered_at": "yesterday"}),                     # two issues, one row
    ]
    bronze = _bronze(spark, "resident_registry", rows)
    typed, issues = silver.transform(bronze, "resident_registry", ctx)
    t = {r.record_id: r for r in typed.collect()}
    assert sorted(t) == ["R1", "R2", "R5"]
    r1 = t["R1"]
    assert (r1.national_id, r1.national_id_status, r1.name, r1.name_pinyin_key, r1.sex,
            r1.birth_date, r1.phone, r1.district_code) == (
        "34052419800101001X", "upgraded_from_15", "张三", "zhangsan", "male",
        dt.date(1980, 1, 1), "13800138000", "440402")
    # 09:00 in Shanghai; Python gets the instant as naive local time of this process
    assert r1.registered_at.astimezone(dt.UTC) == dt.datetime(2024, 4, 14, 1, 0, tzinfo=dt.UTC)
    assert (t["R2"].is_national_id_valid, t["R2"].national_id, t["R2"].national_id_raw,
            t["R2"].phone) == (False, None, "340524198001010010", None)
    assert t["R5"].is_area_code_known is False
    got = sorted((r.source_line, r.rule_id, r.column, r.value, r.action)
                 for r in issues.collect())
    assert got == [(3, "S_PHONE", "phone", "12345", "nulled"),
                   (4, "S_DATE", "birth_date", "1980/02/30", "rejected"),
                   (5, "S_SEX", "sex", "男", "rejected"),
                   # a district row must also use the district's timestamp format
                   (5, "S_TIMESTAMP", "registered_at", "2024/04/14 09:00", "rejected"),
                   (6, "S_AREA_UNKNOWN", "area_code", "440402999999", "flagged"),
                   (7, "S_DATE", "birth_date", "2030/01/01", "rejected"),
                   (7, "S_TIMESTAMP", "registered_at", "yesterday", "rejected")]


def test_followups_out_of_range_values_are_nulled_and_bad_required_values_rejected(spark, ctx):
    good = {"followup_id": "F1", "patient_no": "P1", "name": "李四", "condition": "hypertension",
            "followup_at": "2024-04-14 10:00:00", "systolic_bp": "150", "diastolic_bp": "95",
            "fasting_glucose": "6.1"}
    rows = [("district", good),
            ("district", {**good, "followup_id": "F2", "systolic_bp": "1500"}),
            ("district", {**good, "followup_id": "F3", "condition": "asthma"}),
            ("district", {**good, "followup_id": "F4", "followup_at": ""})]
    typed, issues = silver.transform(
        _bronze(spark, "chronic_followups", rows), "chronic_followups", ctx)
    t = {r.followup_id: r for r in typed.collect()}
    assert sorted(t) == ["F1", "F2"]
    assert (t["F1"].systolic_bp, str(t["F1"].fasting_glucose)) == (150, "6.10")
    assert t["F2"].systolic_bp is None and t["F2"].diastolic_bp == 95
    assert sorted((r.followup_id if False else r.source_line, r.rule_id, r.action)
                  for r in issues.collect()) == [
        (3, "S_RANGE", "nulled"), (4, "S_ENUM", "rejected"), (5, "S_REQUIRED", "rejected")]


def test_every_feed_transforms_an_empty_bronze_with_a_typed_schema(spark, ctx):
    for feed in load_contracts().feeds:
        typed, issues = silver.transform(
            silver.empty_bronze(spark, load_contracts().feed(feed)), feed, ctx)
        assert "rule_id" in issues.columns and "source_line" in typed.columns
        assert "_issues" not in typed.columns
    typed, _ = silver.transform(silver.empty_bronze(spark, load_contracts().feed("encounters")),
                                "encounters", ctx)
    types = dict(typed.dtypes)
    assert (types["visit_at"], types["birth_date"], types["total_fee"]) == (
        "timestamp", "date", "decimal(14,2)")
    assert {"icd10_3char", "condition_family", "name_pinyin_key", "is_national_id_valid"} \
        <= set(typed.columns)


# -- a generated city, end to end ------------------------------------------------------------

DAY = dt.date(2024, 4, 15)


@pytest.fixture(scope="module")
def city(spark, settings, ingested_city):
    """The session's generated and ingested city, its first day standardised."""
    return {"settings": settings, "run": silver.run(spark, settings, DAY)}


def test_city_day_reconciles_bronze_with_silver_and_quarantine(spark, city):
    from jobs.lake import read_table

    s, run = city["settings"], city["run"]
    # a feed with no bronze table yet (no referral on a small city's first day) is skipped
    assert run["reconciled"] and {"resident_registry", "encounters"} <= set(run["feeds"])
    for feed, c in run["feeds"].items():
        assert c["n_bronze"] == c["n_silver"] + c["n_rejected"], feed
        n = read_table(spark, s, f"silver_std.{feed}").where(f"extract_date = '{DAY}'").count()
        assert n == c["n_silver"], feed
    q = read_table(spark, s, "quarantine.silver").where("action = 'rejected'")
    n_rows = q.select("feed", "source_file", "source_line").distinct().groupBy("feed").count()
    assert {r["feed"]: r["count"] for r in n_rows.collect()} == \
        {f: c["n_rejected"] for f, c in run["feeds"].items() if c["n_rejected"]}


def test_city_identity_numbers_are_repaired_to_the_true_ones(spark, city):
    from jobs.lake import read_table

    s = city["settings"]
    truth = s.ground_truth_root
    records = pd.read_parquet(truth / "records").query("feed == 'resident_registry'")
    persons = pd.read_parquet(truth / "persons.parquet")
    records = records[records.extract_date.astype(str).str[:10] == DAY.isoformat()]
    reg = read_table(spark, s, "silver_std.resident_registry").where(
        f"extract_date = DATE'{DAY}'").select(
        "institution_id", "source_file", "source_line", "national_id", "is_national_id_valid",
        "national_id_status").toPandas()
    reg["file"] = reg.source_file.str.split("/").str[-1]
    m = reg.merge(records, left_on=["institution_id", "file", "source_line"],
                  right_on=["institution_id", "file", "line"], validate="1:1")
    id_col = "national_id"
    m = m.merge(persons[["person_key", id_col]].rename(columns={id_col: "true_id"}),
                on="person_key", validate="m:1")
    repairable = {"", "lowercase_x", "fullwidth_digits", "embedded_spaces", "legacy_id15",
                  "changed_phone", "homophone_name", "lookalike_name"}
    kinds = m.variations.fillna("").str.split(",")
    fixable = kinds.map(lambda k: set(k) <= repairable)
    assert len(m) == len(reg) and fixable.sum() > 0
    assert (m[fixable].national_id == m[fixable].true_id).all()
    broken = kinds.map(lambda k: "invalid_check_char" in k)
    assert (~m[broken].is_national_id_valid).all()
    assert (m[kinds.map(lambda k: "missing_id" in k)].national_id_status == "missing").all()
