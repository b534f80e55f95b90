"""Issue 26 (items 4 and 5): curated persons are not unique by their attributes, and curated rows
lead nobody back to a raw line.

An attacker holding a resident roster (name, sex, birth date, address) joins it with the curated
tables an analyst can read. Before: exact birth date + sex + 12-digit community code made almost
every person of silver.person unique, and source_file + source_line pointed at the raw line.
"""

from __future__ import annotations

import datetime as dt
import logging

import pandas as pd

from jobs.lake import read_table, table_exists
from jobs.silver.generalise import (
    QUASI_IDENTIFIERS,
    GeneralisationLevel,
    PersonGeneralisation,
    generalise_persons,
    measure,
    published_values,
)
from jobs.silver.resolve import load_matching_params

LINEAGE = {"source_file", "source_line", "source_sha256", "ingest_id"}
# Exact quasi-identifiers of a person: never in a curated table that holds persons.
EXACT = {"birth_date", "id_birth_date", "town_code", "district_code", "functional_zone"}


def _persons(spark, rows):
    return spark.createDataFrame(
        [(pid, sex, dt.date.fromisoformat(born), f"{town}001", town, town[:6], f"I{pid}")
         for pid, sex, born, town in rows],
        "person_id string, sex string, birth_date date, area_code string, town_code string, "
        "district_code string, primary_institution_id string")


def test_small_classes_are_generalised_further_and_classes_of_k_kept(spark):
    rows = (
        # 5 women born 1980 in town 440402001: a class of 5 at the finest level, kept.
        [(f"f{i}", "female", f"1980-0{i + 1}-1{i}", "440402001") for i in range(5)]
        # 2 men born 1981 and 3 born 1983 in the same town: classes of 2 and 3 at the birth
        # year, one class of 5 in the band 1980-1984.
        + [(f"m{i}", "male", "1981-05-05", "440402001") for i in range(2)]
        + [(f"n{i}", "male", "1983-06-06", "440402001") for i in range(3)]
        # 1 woman born 1950 in town 440403101 and 4 born 1955-58 in town 440403102: small in
        # every town class, 5 in 1950-1959 of district 440403.
        + [("g0", "female", "1950-01-01", "440403101")]
        + [(f"h{i}", "female", f"195{5 + i}-02-02", "440403102") for i in range(4)]
        # One man alone everywhere: at the last level (nothing but the city) he would be
        # alone too, so the smallest class of the deepest level before (the five women of
        # 1950-1959) joins him there.
        + [("z0", "male", "2001-03-03", "440404101")])
    rules = PersonGeneralisation()  # k = 5, the configured ladder's default
    got = generalise_persons(_persons(spark, rows), rules, "440400").toPandas()
    assert "birth_date" not in got and "town_code" not in got and "district_code" not in got
    assert got["primary_institution_id"].tolist() != [] and len(got) == len(rows)
    by_id = got.set_index("person_id")

    def published(pid):
        r = by_id.loc[pid]
        return (r["sex"], r["birth_year_from"], r["birth_year_to"], r["area_level"],
                r["area_code"])

    assert {published(f"f{i}") for i in range(5)} == {
        ("female", 1980, 1980, "town", "440402001")}
    assert {published(p) for p in ["m0", "m1", "n0", "n1", "n2"]} == {
        ("male", 1980, 1984, "town", "440402001")}
    city_only = by_id.loc[["g0", "h0", "h1", "h2", "h3", "z0"]]
    assert city_only[["sex", "birth_year_from", "birth_year_to"]].isna().all().all()
    assert set(zip(city_only["area_level"], city_only["area_code"], strict=True)) == {
        ("city", "440400")}
    sizes = got.fillna("-").groupby(QUASI_IDENTIFIERS).size()
    assert len(sizes) == 3 and (sizes >= rules.k).all()
    # The same persons in another order give the same rows.
    again = generalise_persons(_persons(spark, rows[::-1]), rules, "440400").toPandas()
    pd.testing.assert_frame_equal(
        again.sort_values("person_id").reset_index(drop=True),
        got.sort_values("person_id").reset_index(drop=True))


def test_a_ladder_that_does_not_generalise_is_refused():
    bad = PersonGeneralisation(k=1, levels=[GeneralisationLevel(5, "district"),
                                            GeneralisationLevel(1, "town")])
    problems = bad.problems()
    assert any("k must be at least 2" in p for p in problems)
    assert any("levels[1] is not a generalisation" in p for p in problems)
    assert any("the last level must publish nothing but the city" in p for p in problems)
    assert PersonGeneralisation().problems() == []


def test_every_class_of_the_curated_persons_holds_k(spark, settings, resolved_city):
    rules = load_matching_params(settings).person_generalisation
    persons = read_table(spark, settings, "silver.person")
    figures = measure(persons, rules.k)
    logging.getLogger(__name__).warning("silver.person of the session city: %s", figures)
    assert figures["persons"] == read_table(
        spark, settings, "restricted.person_attributes").count()
    assert figures["classes_under_k"] == 0 and figures["smallest"] >= rules.k >= 5
    assert not {"birth_date", "town_code", "district_code"} & set(persons.columns)


def test_no_curated_table_holds_an_exact_quasi_identifier_or_a_raw_line(spark, gold_lake):
    from jobs.privacy import curated_tables

    settings = gold_lake
    written = [t for t in curated_tables(settings) if table_exists(spark, settings, t)]
    assert {"silver.person", "silver.health_record", "silver.encounter",
            "gold.metric_value"} <= set(written)
    for name in written:
        df = read_table(spark, settings, name)
        assert not LINEAGE & set(df.columns), name
        if "person_id" in df.columns:  # a table of persons' rows
            assert not EXACT & set(df.columns), name
            if "area_code" in df.columns:  # published, generalised: no 12-digit community
                assert df.where("length(area_code) = 12").count() == 0, name


def test_a_roster_join_links_no_person_uniquely(spark, settings, resolved_city):
    """The roster of every true resident (the generator's ground truth), joined with what the
    curated persons publish: on exact birth date, sex and community it finds nothing (those are
    not published); on the generalised values, at every level a roster holder could compute,
    every class a resident falls in holds at least k persons."""
    from functools import reduce

    from pyspark.sql import functions as F

    rules = load_matching_params(settings).person_generalisation
    persons = read_table(spark, settings, "silver.person")
    truth = pd.read_parquet(settings.ground_truth_root / "persons.parquet")
    roster = spark.createDataFrame(
        truth.assign(birth_date=pd.to_datetime(truth["birth_date"]).dt.date)[
            ["person_key", "sex", "birth_date", "community_code", "town_code",
             "district_code"]])
    assert "birth_date" not in persons.columns
    exact = roster.join(persons, (roster["sex"] == persons["sex"])
                        & (roster["community_code"] == persons["area_code"]))
    assert exact.count() == 0
    candidates = reduce(lambda a, b: a.unionByName(b), [
        roster.select("person_key", *published_values(level, str(settings.city["code"])))
        for level in rules.levels])
    classes = persons.groupBy(*QUASI_IDENTIFIERS).agg(F.count("*").alias("n"))
    on = reduce(lambda a, b: a & b, [candidates[c].eqNullSafe(classes[c])
                                     for c in QUASI_IDENTIFIERS])
    per_resident = (candidates.join(classes, on).groupBy("person_key")
                    .agg(F.min("n").alias("smallest")).toPandas())
    assert len(per_resident) > 0.5 * len(truth)  # most residents fall in some class
    assert (per_resident["smallest"] >= rules.k).all()


