"""Gold metrics: exact figures on hand-made inputs, then the generated city's gold layer
(scorecard, metrics, index) recomputed from the curated tables and checked against a pandas
computation of the same definitions and against the generator's ground truth."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from jobs.gold import metrics as M
from jobs.lake import read_table
from tests.conftest import ER_DAYS


def _persons(spark, rows):
    df = spark.createDataFrame(rows, "person_id string, sex string, district_code string, "
                                     "town_code string, birth_date date")
    return M.persons_at(df, dt.date(2024, 12, 31))


def _population(spark, rows):
    return spark.createDataFrame(rows, "district_code string, age_band string, sex string, "
                                       "population double")


def test_age_bands_and_adult_population(spark):
    from pyspark.sql import functions as F

    ages = spark.createDataFrame([(a,) for a in (0, 4, 5, 17, 18, 84, 85, 101)], "age int")
    got = [r["b"] for r in ages.select(M.age_band(F.col("age")).alias("b")).collect()]
    assert got == ["0-4", "0-4", "5-9", "15-19", "15-19", "80-84", "85+", "85+"]
    pop = _population(spark, [("D1", "10-14", "male", 100.0), ("D1", "15-19", "male", 100.0),
                              ("D1", "20-24", "male", 100.0)])
    adult = {r["age_band"]: r["population"] for r in M.adult_population(pop).collect()}
    assert adult == {"15-19": 40.0, "20-24": 100.0}


def test_rates_over_the_reference_population_for_every_cube_cell(spark):
    persons = _persons(spark, [("p1", "male", "D1", "T1", dt.date(1980, 1, 1)),
                               ("p2", "female", "D1", "T1", dt.date(1980, 6, 1)),
                               ("p3", "female", "D2", "T2", dt.date(1950, 1, 1))])
    pop = _population(spark, [("D1", "40-44", "male", 50.0), ("D1", "40-44", "female", 50.0),
                              ("D2", "70-74", "female", 100.0)])
    seen = persons.where("person_id != 'p2'")
    twice = seen.unionByName(persons.where("person_id = 'p1'"))  # p1 counts once
    out = M.over_population(twice, pop, "m", M.Period.year(2024)).toPandas()
    city = out[out[["district_code", "age_band", "sex"]].isna().all(axis=1)].iloc[0]
    assert (city["numerator"], city["denominator"], city["value"]) == (2, 200, 1.0)
    d1f = out[(out["district_code"] == "D1") & (out["sex"] == "female")
              & out["age_band"].isna()].iloc[0]
    assert (d1f["numerator"], d1f["denominator"], d1f["value"]) == (0, 50, 0.0)
    assert out["denominator"].gt(0).all()  # every populated cube cell, zero counts included
    assert set(out.columns) >= {"metric_id", "period_type", "period", *M.GRAIN_COLUMNS}


def test_age_standardisation_equals_crude_when_the_structure_is_the_standard(spark):
    from pyspark.sql import functions as F

    # Two adult bands with the standard's relative weights; prevalences 10 % and 30 %.
    weights = {"0-4": 0.5, "40-44": 0.25, "70-74": 0.25}
    persons, pop = [], []
    for band, n, year in (("40-44", 100, 1982), ("70-74", 100, 1952)):
        pop.append(("D1", band, "male", float(n)))
        persons += [(f"{band}-{i}", "male", "D1", "T1", dt.date(year, 1, 1)) for i in range(n)]
    ppl = _persons(spark, persons)
    enc = spark.createDataFrame(
        [(p, "hypertension", dt.datetime(2024, 3, 1)) for p in
         [f"40-44-{i}" for i in range(10)] + [f"70-74-{i}" for i in range(30)]],
        "person_id string, condition_family string, visit_at timestamp")
    empty_fu = spark.createDataFrame([], "person_id string, condition string, "
                                         "followup_at timestamp")
    inputs = M.Inputs(M.Period.year(2024), ppl, _population(spark, pop), enc, empty_fu, None,
                      None, None, None, weights)
    std = M.prevalence_age_standardised(inputs, "hypertension").where(
        F.col("district_code").isNull() & F.col("sex").isNull()).first()
    crude = M.prevalence_crude(inputs, "hypertension").where(
        F.col("district_code").isNull() & F.col("sex").isNull()
        & F.col("age_band").isNull()).first()
    assert crude["value"] == pytest.approx(20.0)
    assert std["value"] == pytest.approx(20.0)


@pytest.fixture(scope="module")
def gold_city(spark, settings, resolved_city):
    from jobs.gold import job

    # The periods the days touched but one: the quarter, covered by hand-made inputs below.
    touched = {p for d in ER_DAYS for p in M.periods_touched(spark, settings, d)}
    assert {p.label for p in touched} == {"2024", "2024Q2", "2024-04"}
    summary = job.run_days(spark, settings, ER_DAYS,
                           periods=[p for p in touched if p.type != "quarter"])
    return {**resolved_city, "gold": summary}


def _gold(spark, settings) -> dict[str, pd.DataFrame]:
    return {t: read_table(spark, settings, f"gold.{t}").toPandas()
            for t in ("metric_value", "dq_scorecard", "index_indicator", "index_score")}


def test_every_implemented_metric_is_written_and_catalogued(spark, settings, gold_city):
    from jobs.gold.catalogue import load_catalogue

    got = read_table(spark, settings, "gold.metric_value").toPandas()
    assert set(got["metric_id"]) == set(M.metric_ids())
    assert set(M.metric_ids()) <= set(load_catalogue(settings).metrics)
    assert set(got["period"]) == {"2024", "2024-04"}
    catalogue = load_catalogue(settings)
    for period_type, ids in got.groupby("period_type")["metric_id"]:
        assert set(ids) == set(M.metrics_for(catalogue, period_type)), period_type
    assert set(got.loc[got["period_type"] == "month", "metric_id"]) >= {
        "visits_per_1000", "online_visit_share", "ehr_coverage", "referrals_up"}


def test_periods_and_a_quarter_counts_only_its_own_events(spark):
    assert M.Period.quarter(2024, 2) == M.Period("quarter", "2024Q2", dt.date(2024, 4, 1),
                                                 dt.date(2024, 6, 30))
    assert M.Period.month(2024, 2).end == dt.date(2024, 2, 29)
    assert M.Period.month(2024, 12).end == dt.date(2024, 12, 31)
    assert [p.label for p in M.Period.containing(dt.date(2024, 11, 5))] == [
        "2024", "2024Q4", "2024-11"]
    ppl = _persons(spark, [("a", "male", "D1", "T1", dt.date(1980, 1, 1))])
    enc = spark.createDataFrame(
        [("a", "outpatient", "municipal", dt.datetime(2024, m, 10)) for m in (1, 3, 4)],
        "person_id string, encounter_type string, tier string, visit_at timestamp")
    pop = _population(spark, [("D1", "40-44", "male", 100.0)])
    for period, n in ((M.Period.quarter(2024, 1), 2), (M.Period.month(2024, 4), 1),
                      (M.Period.year(2024), 3)):
        inputs = M.Inputs(period, ppl, pop, enc, None, None, None, None, None, {})
        city = M.visits_per_1000(inputs).where(
            " AND ".join(f"{c} IS NULL" for c in M.GRAIN_COLUMNS)).first()
        assert (city["period_type"], city["period"], city["numerator"]) == (
            period.type, period.label, n)
        assert city["value"] == pytest.approx(1000 * n / 100)


def test_city_figures_match_a_pandas_computation(spark, settings, gold_city):
    got = read_table(spark, settings, "gold.metric_value").toPandas()
    got = got[got["period"] == "2024"]
    city = got[got[M.GRAIN_COLUMNS].isna().all(axis=1)].set_index("metric_id")
    pop = pd.read_csv(settings.reference_root / "population.csv")
    records = read_table(spark, settings, "silver.health_record").toPandas()
    records = records[records["tier"].isin(M.EHR_TIERS)]
    persons = read_table(spark, settings, "silver.person").toPandas()
    with_record = persons["person_id"].isin(records["person_id"]).sum()
    assert city.loc["ehr_coverage", "numerator"] == with_record
    assert city.loc["ehr_coverage", "denominator"] == pop["population"].sum()
    enc = read_table(spark, settings, "silver.encounter").toPandas()
    enc = enc[pd.to_datetime(enc["visit_at"]).dt.year == 2024]
    assert city.loc["online_visit_share", "value"] == pytest.approx(
        100 * (enc["encounter_type"] == "online").mean())
    visits = enc[enc["person_id"].isin(persons["person_id"])]
    assert city.loc["visits_per_1000", "numerator"] == len(visits)
    assert city.loc["visits_per_1000", "value"] == pytest.approx(
        1000 * len(visits) / pop["population"].sum())
    every = read_table(spark, settings, "gold.metric_value").toPandas()
    april = every[(every["period"] == "2024-04") & (every["metric_id"] == "visits_per_1000")
                  & every[M.GRAIN_COLUMNS].isna().all(axis=1)]
    assert april["numerator"].iloc[0] == (pd.to_datetime(visits["visit_at"]).dt.month == 4).sum()
    assert 0 < city.loc["hypertension_prevalence_crude", "value"] < 60
    referrals = read_table(spark, settings, "silver.referral").toPandas()
    referrals = referrals[pd.to_datetime(referrals["referred_at"]).dt.year == 2024]
    for direction in ("up", "down"):
        assert city.loc[f"referrals_{direction}", "numerator"] == (
            referrals["direction"] == direction).sum()
    dx = got[(got["metric_id"] == "diagnosis_count") & got["district_code"].isna()]
    assert dx["numerator"].sum() == visits["icd10_3char"].notna().sum()


def test_recomputing_is_safe(spark, settings, gold_city):
    from jobs.gold import index, scorecard

    before = _gold(spark, settings)
    scorecard.run(spark, settings, ER_DAYS[-1])
    M.run(spark, settings, ER_DAYS[-1], [M.Period.month(2024, 4)])
    index.run(spark, settings, [2024])
    after = _gold(spark, settings)
    for name, frame in before.items():
        frame = frame.sort_values(list(frame.columns), na_position="first")
        again = after[name].sort_values(list(frame.columns), na_position="first")
        pd.testing.assert_frame_equal(again.reset_index(drop=True), frame.reset_index(drop=True),
                                      obj=name)


# -- against the generator's ground truth ------------------------------------------------------


def _truth_rows(settings, feed: str) -> pd.DataFrame:
    """Ground-truth records of a feed over the resolved days, with each institution's tier."""
    records = pd.read_parquet(settings.ground_truth_root / "records")
    records = records[(records["feed"] == feed)
                      & records["extract_date"].astype(str).isin([d.isoformat() for d in ER_DAYS])]
    inst = pd.read_csv(settings.reference_root / "institutions.csv", dtype=str)
    return records.merge(inst[["institution_id", "tier"]], on="institution_id")


def test_delivery_status_matches_the_generators_faults(spark, settings, gold_city):
    card = _gold(spark, settings)["dq_scorecard"]
    card = card[card["metric_id"] == "dq_on_time_delivery_rate"]
    log = read_table(spark, settings, "ops.ingest_log").toPandas()
    faults = gold_city["faults"]
    for day in ER_DAYS:
        got = card[card["extract_date"] == day].set_index("institution_id")["delivery_status"]
        f = faults[faults["extract_date"].astype(str) == day.isoformat()]
        expected = {i: "on_time" for i in got.index}
        for kind, inst in zip(f["kind"], f["institution_id"], strict=True):
            if kind in ("missing_institution", "missing_file"):
                expected[inst] = "missing"
            elif kind == "late_institution":  # late once delivered and re-ingested
                delivered = ((log["extract_date"] == day) & (log["institution_id"] == inst)).any()
                expected[inst] = "late" if delivered else "missing"
        assert got.to_dict() == expected, day
        assert len(got) == len(pd.read_csv(settings.reference_root / "institutions.csv"))


def test_ehr_coverage_matches_the_ground_truth(spark, settings, gold_city):
    mv = _gold(spark, settings)["metric_value"].query("period == '2024'")
    cov = mv[(mv["metric_id"] == "ehr_coverage") & mv["age_band"].isna() & mv["sex"].isna()]
    # True persons with a primary-care registry record that reached bronze.
    truth = _truth_rows(settings, "resident_registry")
    bronze = read_table(spark, settings, "bronze.resident_registry").toPandas()
    loaded = truth.merge(bronze[["institution_id", "record_id"]].drop_duplicates(),
                         left_on=["institution_id", "record_key"],
                         right_on=["institution_id", "record_id"])
    ehr = loaded[loaded["tier"].isin(M.EHR_TIERS)]
    persons = pd.read_parquet(settings.ground_truth_root / "persons.parquet")
    with_ehr = persons[persons["person_key"].isin(ehr["person_key"])]
    # Primary-care records are the EHRs the generator gave, and the few created these days.
    assert with_ehr["has_ehr"].mean() > 0.99
    population = pd.read_parquet(settings.ground_truth_root / "population.parquet")
    city = cov[cov["district_code"].isna()].iloc[0]
    assert city["denominator"] == population["population"].sum()
    # Exact but for entity-resolution errors (a split person counts twice, a false merge once).
    assert city["numerator"] == pytest.approx(len(with_ehr), rel=0.005)
    for district, n in with_ehr.groupby("district_code").size().items():
        row = cov[cov["district_code"] == district].iloc[0]
        assert row["numerator"] == pytest.approx(n, rel=0.01, abs=2), district


def test_prevalence_counts_the_truly_diagnosed_adults_seen(spark, settings, gold_city):
    mv = _gold(spark, settings)["metric_value"].query("period == '2024'")
    city = mv[(mv["metric_id"] == "hypertension_prevalence_crude")
              & mv[M.GRAIN_COLUMNS].isna().all(axis=1)].iloc[0]
    encounters = read_table(spark, settings, "silver.encounter").toPandas()
    followups = read_table(spark, settings, "silver.chronic_followup").toPandas()
    seen = pd.concat([
        _truth_rows(settings, "encounters").merge(
            encounters[encounters["condition_family"] == "hypertension"],
            left_on=["institution_id", "record_key"], right_on=["institution_id",
                                                                "encounter_id"]),
        _truth_rows(settings, "chronic_followups").merge(
            followups[followups["condition"] == "hypertension"],
            left_on=["institution_id", "record_key"], right_on=["institution_id",
                                                                "followup_id"])])
    persons = pd.read_parquet(settings.ground_truth_root / "persons.parquet")
    seen = persons[persons["person_key"].isin(seen["person_key"])]
    adult = seen[(pd.Timestamp("2024-12-31") - seen["birth_date"]).dt.days >= 18 * 365.25]
    # Only residents the generator diagnosed get hypertension codes and follow-ups.
    assert seen["hypertension_diagnosed"].all()
    assert city["numerator"] == pytest.approx(len(adult), rel=0.01, abs=2)
    # Diagnosed prevalence seen in two days of data is at most the true diagnosed prevalence.
    truly = persons[(persons["age"] >= 18)]
    assert city["value"] <= 100 * truly["hypertension_diagnosed"].mean() + 1


def test_index_scores_every_area_from_every_indicator(spark, settings, gold_city):
    from jobs.gold.index import load_index

    g = _gold(spark, settings)
    spec = load_index(settings)
    inst = pd.read_csv(settings.reference_root / "institutions.csv", dtype=str)
    scores = g["index_score"]
    total = scores[scores["index_name"] == "total"]
    assert sorted(total["area_level"].value_counts().items()) == [
        ("city", 1), ("district", 3), ("institution", len(inst))]
    assert total["score"].between(0, 100).all()
    districts = total[total["area_level"] == "district"].sort_values("score", ascending=False)
    assert districts["rank"].tolist() == [1, 2, 3]
    ind = g["index_indicator"]
    city = ind[ind["area_level"] == "city"].set_index("indicator_id")
    assert set(city.index) == set(spec.indicators)
    assert city["raw_value"].notna().all()  # the city has a value for every indicator
    mv = g["metric_value"].query("period == '2024'")
    online = mv[(mv["metric_id"] == "online_visit_share") & mv[M.GRAIN_COLUMNS].isna().all(axis=1)]
    assert city.loc["idx_online_service_share", "raw_value"] == pytest.approx(
        online["value"].iloc[0])
    surveys = read_table(spark, settings, "silver.institution_survey").toPandas()
    latest = surveys.sort_values("survey_period").groupby("institution_id").last()
    emr = ind[(ind["indicator_id"] == "idx_emr_level") & (ind["area_level"] == "institution")]
    got = emr.set_index("area_code")["raw_value"].dropna()
    assert got.to_dict() == pytest.approx(latest.loc[got.index, "emr_level"].astype(float)
                                          .to_dict())


def test_management_standardised_management_and_control_rates(spark):
    from pyspark.sql import functions as F

    persons = _persons(spark, [("old", "male", "D1", "T1", dt.date(1954, 1, 1)),
                               ("mid", "female", "D1", "T1", dt.date(1974, 1, 1)),
                               ("new", "female", "D1", "T2", dt.date(1974, 1, 1)),
                               ("kid", "male", "D1", "T1", dt.date(2015, 1, 1))])
    fu = [("old", "hypertension", dt.datetime(2024, m, 1), 150 if m < 10 else 145, 85, None)
          for m in (1, 4, 7, 10)]
    fu += [("mid", "hypertension", dt.datetime(2024, 5, 1), 145, 85, None),
           ("old", "hypertension", dt.datetime(2023, 5, 1), 120, 80, None),
           ("kid", "hypertension", dt.datetime(2024, 5, 1), 110, 70, None)]
    # Curated follow-ups carry their institution and id (the tie-break of same-time visits).
    fu = [(*row, "I1", f"F{n}") for n, row in enumerate(fu)]
    followups = spark.createDataFrame(
        fu, "person_id string, condition string, followup_at timestamp, systolic_bp int, "
            "diastolic_bp int, fasting_glucose double, institution_id string, followup_id string")
    enc = spark.createDataFrame([("new", "hypertension", dt.datetime(2024, 2, 1))],
                                "person_id string, condition_family string, visit_at timestamp")
    inputs = M.Inputs(M.Period.year(2024), persons, None, enc, followups, None, None, None,
                      None, {})
    out = M.management_rates(inputs, "hypertension")
    city = {r["metric_id"]: (r["numerator"], r["denominator"]) for r in out.where(
        " AND ".join(f"{c} IS NULL" for c in M.GRAIN_COLUMNS)).collect()}
    # Adults diagnosed: old, mid, new (the child is not counted); managed: old, mid.
    assert city["hypertension_management_rate"] == (2, 3)
    assert city["hypertension_standardised_management_rate"] == (1, 2)  # old: 4 follow-ups
    assert city["hypertension_control_rate"] == (1, 2)  # old 145/85 at 70 is on target
    towns = out.where(F.col("town_code") == "T2").where("age_band IS NULL AND sex IS NULL")
    assert {r["metric_id"]: r["value"] for r in towns.collect()} == {
        "hypertension_management_rate": 0.0}
