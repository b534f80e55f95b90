"""Gold population-health and service-use metrics (gold.metric_value), yearly, from the curated
silver tables and the reference population; every number is a catalogue entry
(conf/base/metrics.yaml, :mod:`jobs.gold.catalogue`).

Long format, one row per metric, period and combination of grains: ``metric_id``,
``period_type`` ('year', 'quarter' or 'month'), ``period`` ('2024', '2024Q2', '2024-04'),
the grain columns of :data:`GRAIN_COLUMNS` (null
means "all": a row with every grain null is the city), ``numerator``, ``denominator``, ``value``
(percent x100, per-1,000 x1000, counts as they are).

Population denominators come from reference/population.csv (by district, age band and sex),
never from the registry. Residents' grains (district, age band, sex) come from the golden record's
exact attributes, ``restricted.person_attributes`` (``silver.person`` publishes them generalised;
the read is audited); ages are at the end of the period. A run recomputes exactly the periods a day
touched (the years, quarters and months of the events that arrived), each metric at the period
types its catalogue entry lists, replacing their rows in one commit.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobs.config import Settings
from jobs.gold.catalogue import MetricCatalogue, load_catalogue
from jobs.lake import read_table, table_exists, union_all, write_table
from jobs.spark import parallel_jobs
from jobs.timing import Stopwatch

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)

GRAIN_COLUMNS = ["district_code", "town_code", "institution_id", "tier", "to_tier", "channel",
                 "condition", "icd10_category", "age_band", "sex"]
RESIDENT_DIMS = ["district_code", "age_band", "sex"]
ADULT_AGE = 18
# Share of the 15-19 band aged 18 or 19 (ages spread evenly within the band).
ADULT_SHARE_OF_BAND = {"15-19": 0.4}
CHANNEL_OF_ENCOUNTER = {"online": "online", "home_care": "home_care"}  # anything else: on_site
# The resident electronic health record (居民电子健康档案) is kept by primary care, where basic
# public health services are delivered; a hospital's patient registration is not one.
EHR_TIERS = ("township", "village")


@dataclass(frozen=True, order=True)
class Period:
    """A calendar year, quarter or month: ``type`` 'year' | 'quarter' | 'month', ``label``
    '2024' | '2024Q2' | '2024-04', first and last day."""

    type: str
    label: str
    start: dt.date
    end: dt.date

    @classmethod
    def year(cls, year: int) -> Period:
        return cls("year", str(year), dt.date(year, 1, 1), dt.date(year, 12, 31))

    @classmethod
    def quarter(cls, year: int, quarter: int) -> Period:
        start = dt.date(year, 3 * quarter - 2, 1)
        return cls("quarter", f"{year}Q{quarter}", start, _month_end(year, 3 * quarter))

    @classmethod
    def month(cls, year: int, month: int) -> Period:
        return cls("month", f"{year}-{month:02d}", dt.date(year, month, 1),
                   _month_end(year, month))

    @classmethod
    def containing(cls, day: dt.date) -> list[Period]:
        """The year, quarter and month a day falls in."""
        return [cls.year(day.year), cls.quarter(day.year, (day.month - 1) // 3 + 1),
                cls.month(day.year, day.month)]


def _month_end(year: int, month: int) -> dt.date:
    first_of_next = dt.date(year + month // 12, month % 12 + 1, 1)
    return first_of_next - dt.timedelta(days=1)


@dataclass(frozen=True)
class Inputs:
    """Everything one period's metrics read, as DataFrames (I/O done by :func:`read_tables`)."""

    period: Period
    persons: DataFrame          # person_id, sex, district_code, town_code, age, age_band
    population: DataFrame       # district_code, age_band, sex, population (double)
    encounters: DataFrame
    followups: DataFrame
    health_records: DataFrame
    lab_results: DataFrame
    referrals: DataFrame
    institutions: DataFrame
    standard_weights: dict[str, float]


# -- building blocks ----------------------------------------------------------------------------


def age_band(age: Column) -> Column:
    """'0-4', ..., '80-84', '85+' (the generator's and the reference population's bands)."""
    from pyspark.sql import functions as F

    lo = F.least(F.floor(age / 5) * 5, F.lit(85)).cast("int")
    return F.when(lo >= 85, F.lit("85+")).otherwise(F.concat(lo.cast("string"), F.lit("-"),
                                                             (lo + 4).cast("string")))


def persons_at(persons: DataFrame, end_date: dt.date) -> DataFrame:
    """Residents with their age and age band on ``end_date`` (the end of the period)."""
    from pyspark.sql import functions as F

    end = F.lit(end_date)
    age = F.floor(F.months_between(end, F.col("birth_date")) / 12).cast("int")
    return persons.select("person_id", "sex", "district_code", "town_code",
                          age.alias("age")).withColumn("age_band", age_band(F.col("age")))


def adult_population(population: DataFrame) -> DataFrame:
    """The reference population aged 18+: bands below 15 out, 2/5 of 15-19."""
    from pyspark.sql import functions as F

    share = F.lit(1.0)
    for band, s in ADULT_SHARE_OF_BAND.items():
        share = F.when(F.col("age_band") == band, F.lit(s)).otherwise(share)
    young = F.split("age_band", "[-+]")[0].cast("int") < 15
    return population.where(~young).withColumn("population", F.col("population") * share)


def _percent():
    """100 x numerator / denominator, null where the denominator is 0 (nothing to rate)."""
    from pyspark.sql import functions as F

    return F.when(F.col("denominator") > 0, 100.0 * F.col("numerator") / F.col("denominator"))


def ordered_sum(values: Column) -> Column:
    """The sum of doubles added in ascending order: the same bits whatever order the rows
    arrive in (a plain sum's last digits follow the shuffle). For small groups (age bands,
    the reference population's cells)."""
    from pyspark.sql import functions as F

    return F.aggregate(F.array_sort(F.collect_list(values)), F.lit(0.0), lambda acc, x: acc + x)


def by_grouping_sets(df: DataFrame, sets: list[list[str]], *aggs: Column) -> DataFrame:
    """``aggs`` for each grouping set in one aggregation (columns outside a set are null)."""
    columns = list(dict.fromkeys(c for keys in sets for c in keys))
    # A column in every set is an attribute of each cell (null: e.g. no condition family),
    # never rolled up, so no "whole" row can collide with it.
    rolled = [c for c in columns if not all(c in keys for keys in sets)]
    flags = [grouped_flag(c) for c in rolled]
    out = df.groupingSets([tuple(keys) for keys in sets], *columns).agg(*aggs, *flags)
    return known_cells(out, rolled)


def grouped_flag(column: str) -> Column:
    from pyspark.sql import functions as F

    return F.grouping(column).alias(f"_all_{column}")


def known_cells(out: DataFrame, columns: list[str]) -> DataFrame:
    """Drop the cells of a breakdown whose grain value is unknown (null in the data): they
    would collide with the row of the whole (also null there) and count twice. Their rows still
    count in the coarser cells, e.g. a resident with no known district in the city's total."""
    from pyspark.sql import functions as F

    known = F.lit(True)
    for c in columns:
        known = known & ((F.col(f"_all_{c}") == 1) | F.col(c).isNotNull())
    return out.where(known).drop(*[f"_all_{c}" for c in columns])


def _complete(df: DataFrame, metric_id: str, period: Period) -> DataFrame:
    """Add the identity columns and every missing grain column (null = all)."""
    from pyspark.sql import functions as F

    for c in GRAIN_COLUMNS:
        if c not in df.columns:
            df = df.withColumn(c, F.lit(None).cast("string"))
    return df.select(F.lit(metric_id).alias("metric_id"), F.lit(period.type).alias("period_type"),
                     F.lit(period.label).alias("period"), *GRAIN_COLUMNS,
                     F.col("numerator").cast("double"), F.col("denominator").cast("double"),
                     F.col("value").cast("double"))


def over_population(facts: DataFrame, population: DataFrame, metric_id: str, period: Period,
                    scale: float = 100.0, extra_dims: tuple[str, ...] = ()) -> DataFrame:
    """Count distinct persons (or rows, when ``facts`` has no person_id) per cube of the resident
    dimensions (and ``extra_dims``), over the reference population of the same residents.

    A person has one district, age band and sex (silver.person's), so the persons of a cell are
    counted as rows once each person is one row: a plain count rolls up without shuffling every
    cube cell's person ids (a distinct count in a cube does, eight times the persons)."""
    from pyspark.sql import functions as F

    dims = RESIDENT_DIMS + list(extra_dims)
    if "person_id" in facts.columns:
        if extra_dims:
            raise ValueError("persons are counted by the resident dimensions only; drop "
                             f"person_id to count rows by {extra_dims}")
        facts = facts.select(*dims, "person_id").dropDuplicates(["person_id"])
    count = F.count("*").alias("numerator")
    num = known_cells(facts.cube(*dims).agg(count, *[grouped_flag(c) for c in dims]), dims)
    den = known_cells(population.cube(*RESIDENT_DIMS).agg(
        ordered_sum(F.col("population")).alias("denominator"),  # 2/5 of a band: not whole
        *[grouped_flag(c) for c in RESIDENT_DIMS]),
        RESIDENT_DIMS)
    on = [num[c].eqNullSafe(den[c]) for c in RESIDENT_DIMS]
    joined = den.join(num, on, "left").select(
        *[den[c] for c in RESIDENT_DIMS], *[num[c] for c in extra_dims],
        F.coalesce(num["numerator"], F.lit(0)).alias("numerator"), "denominator")
    if extra_dims:  # population cells with no event at all in an extra grain are absent
        joined = joined.where(F.col("numerator") > 0)
    return _complete(joined.withColumn(
        "value", F.when(F.col("denominator") > 0, scale * F.col("numerator")
                        / F.col("denominator"))), metric_id, period)


def share_by_institution(rows: DataFrame, flag: Column, institutions: DataFrame, metric_id: str,
                         period: Period) -> DataFrame:
    """Percent of ``rows`` with ``flag``, for the city, each district, tier and institution (the
    institution's own district and tier)."""
    from pyspark.sql import functions as F

    r = (rows.join(institutions.select("institution_id", "district_code",
                                       F.col("tier").alias("_tier")), "institution_id", "left")
         .withColumn("tier", F.coalesce(F.col("_tier"), F.col("tier")) if "tier" in rows.columns
                     else F.col("_tier")))
    agg = [F.count_if(flag).alias("numerator"), F.count("*").alias("denominator")]
    sets = [[], ["district_code"], ["tier"], ["institution_id", "district_code", "tier"]]
    out = by_grouping_sets(r, sets, *agg)
    return _complete(out.withColumn("value", _percent()), metric_id, period)


def person_rates(facts: DataFrame, numerator: Column, denominator: Column, metric_id: str,
                 period: Period) -> DataFrame:
    """Percent of persons with ``numerator`` among those with ``denominator`` (both boolean
    columns of ``facts``, one row per person with its district, town, age band and sex), for
    the city, each district and town, crossed with age band and sex."""
    from pyspark.sql import functions as F

    agg = [F.count_if(numerator & denominator).alias("numerator"),
           F.count_if(denominator).alias("denominator")]
    sets = [geo + demo for geo in ([], ["district_code"], ["district_code", "town_code"])
            for demo in ([], ["age_band"], ["sex"], ["age_band", "sex"])]
    out = by_grouping_sets(facts, sets, *agg)
    # Cells without anyone in the denominator are left out, except the city's row: a metric
    # nobody qualified for in the period is published as 0 / 0 (value null), not silently missing.
    city = F.lit(True)
    for c in ("district_code", "town_code", "age_band", "sex"):
        city = city & F.col(c).isNull()
    out = out.where((F.col("denominator") > 0) | city)
    value = F.when(F.col("denominator") > 0, 100.0 * F.col("numerator") / F.col("denominator"))
    return _complete(out.withColumn("value", value), metric_id, period)


def managed(inputs: Inputs, condition: str) -> DataFrame:
    """Per adult diagnosed by the end of the period: follow-ups in the period, and whether the
    latest one is on target (BP < 140/90, < 150/90 from 65; fasting glucose < 7.0 mmol/L)."""
    from pyspark.sql import functions as F

    fu = _in_period(inputs.followups.where(F.col("condition") == condition), "followup_at",
                  inputs.period)
    # Two follow-ups at the same minute: the institution's and follow-up's ids break the tie,
    # so the latest is the same one whatever order the rows arrive in.
    latest = F.max_by(F.struct("systolic_bp", "diastolic_bp", "fasting_glucose"),
                      F.struct("followup_at", "institution_id", "followup_id"))
    per_person = fu.groupBy("person_id").agg(F.count("*").alias("n_followups"),
                                             latest.alias("last"))
    people = (diagnosed(inputs, condition).join(inputs.persons, "person_id")
              .where(F.col("age") >= ADULT_AGE).join(per_person, "person_id", "left"))
    if condition == "hypertension":
        sbp_target = F.when(F.col("age") >= 65, 150).otherwise(140)
        on_target = (F.col("last.systolic_bp") < sbp_target) & (F.col("last.diastolic_bp") < 90)
    else:
        on_target = F.col("last.fasting_glucose") < 7.0
    return people.select(
        "person_id", "district_code", "town_code", "age_band", "sex",
        F.lit(True).alias("is_diagnosed"),
        (F.coalesce(F.col("n_followups"), F.lit(0)) >= 1).alias("is_managed"),
        (F.coalesce(F.col("n_followups"), F.lit(0)) >= 4).alias("is_standard"),
        F.coalesce(on_target, F.lit(False)).alias("is_on_target"))


def management_rates(inputs: Inputs, condition: str) -> DataFrame:
    """Management, standardised-management and control rates of a condition."""
    from pyspark.sql import functions as F

    facts = managed(inputs, condition).cache()
    return (person_rates(facts, F.col("is_managed"), F.col("is_diagnosed"),
                         f"{condition}_management_rate", inputs.period)
            .unionByName(person_rates(facts, F.col("is_standard"), F.col("is_managed"),
                                      f"{condition}_standardised_management_rate", inputs.period))
            .unionByName(person_rates(facts, F.col("is_on_target"), F.col("is_managed"),
                                      f"{condition}_control_rate", inputs.period)))


def elderly_health_management_rate(inputs: Inputs) -> DataFrame:
    """Residents 65+ with a general health examination (ICD-10 Z00) in the period, over the
    reference population aged 65+."""
    from pyspark.sql import functions as F

    checked = (_in_period(inputs.encounters, "visit_at", inputs.period)
               .where(F.col("icd10_3char") == "Z00").select("person_id").distinct()
               .join(inputs.persons, "person_id").where(F.col("age") >= 65))
    old = F.split("age_band", "[-+]")[0].cast("int") >= 65
    return over_population(checked, inputs.population.where(old),
                           "elderly_health_management_rate", inputs.period)


def counts(rows: DataFrame, grouping_sets: list[list[str]], metric_id: str, period: Period
           ) -> DataFrame:
    """Row counts for each grouping set (a count has no denominator)."""
    from pyspark.sql import functions as F

    out = by_grouping_sets(rows, grouping_sets, F.count("*").alias("numerator"))
    out = out.withColumn("denominator", F.lit(None).cast("double"))
    return _complete(out.withColumn("value", F.col("numerator")), metric_id, period)


def diagnosis_count(inputs: Inputs) -> DataFrame:
    """Encounters of the period by ICD-10 category (with its condition family) and the patient's
    district and town: the top diagnoses by area are the largest rows."""
    from pyspark.sql import functions as F

    rows = (_in_period(inputs.encounters, "visit_at", inputs.period)
            .where(F.col("icd10_3char").isNotNull())
            .select("person_id", F.col("icd10_3char").alias("icd10_category"),
                    F.col("condition_family").alias("condition"))
            .join(inputs.persons.select("person_id", "district_code", "town_code"), "person_id"))
    dx = ["icd10_category", "condition"]
    return counts(rows, [dx, ["district_code", *dx], ["district_code", "town_code", *dx]],
                  "diagnosis_count", inputs.period)


def referral_flows(inputs: Inputs) -> DataFrame:
    """referrals_up and referrals_down: referrals sent in the period by the sender's district,
    tier and institution, the receiver's tier and the channel."""
    from pyspark.sql import functions as F

    inst = inputs.institutions.select("institution_id", "district_code", "tier")
    to = inputs.institutions.select(F.col("institution_id").alias("to_institution_id"),
                                    F.col("tier").alias("to_tier"))
    rows = (_in_period(inputs.referrals, "referred_at", inputs.period).drop("tier")
            .join(inst, "institution_id", "left").join(to, "to_institution_id", "left"))
    sets = [[], ["district_code"], ["tier"], ["tier", "to_tier"], ["channel"],
            ["tier", "to_tier", "channel"], ["institution_id", "district_code", "tier"]]
    return (counts(rows.where(F.col("direction") == "up"), sets, "referrals_up", inputs.period)
            .unionByName(counts(rows.where(F.col("direction") == "down"), sets,
                                "referrals_down", inputs.period)))


def diagnosed(inputs: Inputs, condition: str) -> DataFrame:
    """Persons diagnosed with ``condition`` (encounter condition family or a follow-up for it)
    by the end of the period."""
    from pyspark.sql import functions as F

    end = inputs.period.end
    enc = inputs.encounters.where((F.col("condition_family") == condition)
                                  & (F.to_date("visit_at") <= F.lit(end)))
    fu = inputs.followups.where((F.col("condition") == condition)
                                & (F.to_date("followup_at") <= F.lit(end)))
    return enc.select("person_id").unionByName(fu.select("person_id")).distinct()


def _in_period(df: DataFrame, column, period: Period) -> DataFrame:
    from pyspark.sql import functions as F

    day = F.to_date(column)
    return df.where((day >= F.lit(period.start)) & (day <= F.lit(period.end)))


# -- the metrics --------------------------------------------------------------------------------


def prevalence_crude(inputs: Inputs, condition: str) -> DataFrame:
    from pyspark.sql import functions as F

    facts = (diagnosed(inputs, condition).join(inputs.persons, "person_id")
             .where(F.col("age") >= ADULT_AGE))
    return over_population(facts, adult_population(inputs.population),
                           f"{condition}_prevalence_crude", inputs.period)


def prevalence_age_standardised(inputs: Inputs, condition: str,
                                crude: DataFrame | None = None) -> DataFrame:
    """Sum over adult bands of band prevalence x standard weight, over the sum of those weights
    (the 15-19 band's weight taken at its adult share), for the city and districts by sex.
    ``crude``: the condition's :func:`prevalence_crude` of the same inputs, when already built."""
    from pyspark.sql import functions as F

    crude = crude if crude is not None else prevalence_crude(inputs, condition)
    crude = crude.where(F.col("age_band").isNotNull())
    weights = {b: w * ADULT_SHARE_OF_BAND.get(b, 1.0) for b, w in inputs.standard_weights.items()}
    # A map literal, not a DataFrame: no Python-fed RDD in a plan the JVM runs from threads.
    w = F.create_map(*[F.lit(x) for band, v in sorted(weights.items()) for x in (band, v)])
    rows = (crude.withColumn("w", w[F.col("age_band")]).where(F.col("w").isNotNull())
            .groupBy("district_code", "sex")
            .agg(ordered_sum(F.col("w") * F.coalesce(F.col("value"), F.lit(0.0)) / 100.0)
                 .alias("numerator"), ordered_sum(F.col("w")).alias("denominator")))
    return _complete(rows.withColumn("value", _percent()), f"{condition}_prevalence_age_std",
                     inputs.period)


def prevalence(inputs: Inputs, condition: str) -> DataFrame:
    """Crude and age-standardised prevalence in one plan: the standardised rates are made from
    the crude ones by age band, so the persons are counted once (one shuffle, reused)."""
    crude = prevalence_crude(inputs, condition)
    return crude.unionByName(prevalence_age_standardised(inputs, condition, crude))


def health_records_at(inputs: Inputs) -> DataFrame:
    """Resident health records (primary care, :data:`EHR_TIERS`) existing at the end of the
    period."""
    from pyspark.sql import functions as F

    end = inputs.period.end
    return inputs.health_records.where(F.col("tier").isin(*EHR_TIERS)
                                       & (F.to_date("registered_at") <= F.lit(end)))


def ehr_coverage(inputs: Inputs) -> DataFrame:
    with_record = health_records_at(inputs).select("person_id").distinct()
    facts = with_record.join(inputs.persons, "person_id")
    return over_population(facts, inputs.population, "ehr_coverage", inputs.period)


def ehr_dynamic_use_rate(inputs: Inputs) -> DataFrame:
    """Health records used in the twelve months up to the end of the period (their person had an
    encounter, follow-up or lab result anywhere, or the record was updated), by the holding
    institution, its district and tier."""
    from pyspark.sql import functions as F

    end = inputs.period.end
    start = end - dt.timedelta(days=365)

    def used(df: DataFrame, column) -> DataFrame:
        when = F.to_date(column)
        return (df.where((when > F.lit(start)) & (when <= F.lit(end)))
                .select("person_id").distinct())

    people = (used(inputs.encounters, "visit_at")
              .unionByName(used(inputs.followups, "followup_at"))
              .unionByName(used(inputs.lab_results, F.coalesce("reported_at", "collected_at")))
              .distinct().withColumn("_active", F.lit(True)))
    updated = F.to_date("updated_at")
    records = (health_records_at(inputs).join(people, "person_id", "left")
               .withColumn("_used", F.coalesce("_active", F.lit(False))
                           | ((updated > F.lit(start)) & (updated <= F.lit(end))).eqNullSafe(True))
               .drop("district_code"))
    return share_by_institution(records, F.col("_used"), inputs.institutions,
                                "ehr_dynamic_use_rate", inputs.period)


def visits_per_1000(inputs: Inputs) -> DataFrame:
    from pyspark.sql import functions as F

    channel = F.lit("on_site")
    for etype, ch in CHANNEL_OF_ENCOUNTER.items():
        channel = F.when(F.col("encounter_type") == etype, F.lit(ch)).otherwise(channel)
    facts = (_in_period(inputs.encounters, "visit_at", inputs.period)
             .select("tier", channel.alias("channel"), "person_id")
             .join(inputs.persons.drop("tier"), "person_id").drop("person_id"))
    return over_population(facts, inputs.population, "visits_per_1000", inputs.period,
                           scale=1000.0, extra_dims=("tier", "channel"))


def online_visit_share(inputs: Inputs) -> DataFrame:
    from pyspark.sql import functions as F

    return share_by_institution(_in_period(inputs.encounters, "visit_at", inputs.period),
                                F.col("encounter_type") == "online", inputs.institutions,
                                "online_visit_share", inputs.period)


def mutual_recognition_rate(inputs: Inputs) -> DataFrame:
    from pyspark.sql import functions as F

    return share_by_institution(
        _in_period(inputs.lab_results, F.coalesce("reported_at", "collected_at"), inputs.period),
        F.coalesce(F.col("is_mutual_recognised"), F.lit(False)), inputs.institutions,
        "mutual_recognition_rate", inputs.period)


def digital_referral_share(inputs: Inputs) -> DataFrame:
    from pyspark.sql import functions as F

    return share_by_institution(_in_period(inputs.referrals, "referred_at", inputs.period),
                                F.col("channel") == "digital", inputs.institutions,
                                "digital_referral_share", inputs.period)


# Metrics computed together (one scan of their inputs) and the ids they produce.
METRIC_GROUPS: dict[str, tuple[Callable[[Inputs], DataFrame], tuple[str, ...]]] = {
    condition: (lambda i, c=condition: management_rates(i, c),
                (f"{condition}_management_rate", f"{condition}_standardised_management_rate",
                 f"{condition}_control_rate"))
    for condition in ("hypertension", "diabetes")
} | {
    f"{condition}_prevalence": (lambda i, c=condition: prevalence(i, c),
                                (f"{condition}_prevalence_crude",
                                 f"{condition}_prevalence_age_std"))
    for condition in ("hypertension", "diabetes")
} | {"referral_flows": (referral_flows, ("referrals_up", "referrals_down"))}

METRICS: dict[str, Callable[[Inputs], DataFrame]] = {
    "ehr_coverage": ehr_coverage,
    "ehr_dynamic_use_rate": ehr_dynamic_use_rate,
    "elderly_health_management_rate": elderly_health_management_rate,
    "visits_per_1000": visits_per_1000,
    "diagnosis_count": diagnosis_count,
    "online_visit_share": online_visit_share,
    "mutual_recognition_rate": mutual_recognition_rate,
    "digital_referral_share": digital_referral_share,
}


def metric_ids() -> list[str]:
    """Every metric id this module writes."""
    return [*METRICS, *(i for _, ids in METRIC_GROUPS.values() for i in ids)]


# -- the job ------------------------------------------------------------------------------------


# Every column of the curated tables a metric reads. The inputs are cached for all periods:
# the tables' other columns (record numbers, free text, lineage) would only fill memory.
INPUT_COLUMNS = frozenset({
    "person_id", "sex", "birth_date", "district_code", "town_code", "institution_id", "tier",
    "visit_at", "encounter_type", "icd10_3char", "condition_family",
    "condition", "followup_id", "followup_at", "systolic_bp", "diastolic_bp", "fasting_glucose",
    "registered_at", "updated_at", "reported_at", "collected_at", "is_mutual_recognised",
    "referred_at", "direction", "channel", "to_institution_id"})


def read_tables(spark: SparkSession, settings: Settings) -> dict[str, DataFrame]:
    """The curated tables (the columns of :data:`INPUT_COLUMNS` they have) and the reference
    population every period's metrics read."""
    from pyspark.sql import functions as F

    def table(name: str) -> DataFrame:
        if not table_exists(spark, settings, name):
            raise FileNotFoundError(f"{name} has not been written: run `healthlake resolve` and "
                                    "`healthlake curate` first")
        df = read_table(spark, settings, name)
        return df.select(*[c for c in df.columns if c in INPUT_COLUMNS])

    # Read by Spark itself (every column a string), not sent from pandas: cached and read by
    # concurrent jobs, it needs no Python worker.
    population = (spark.read.option("header", True)
                  .csv(str(settings.reference_root / "population.csv"))
                  .select("district_code", "age_band", "sex",
                          F.col("population").cast("double").alias("population")))
    names = {"persons": "restricted.person_attributes", "encounters": "silver.encounter",
             "followups": "silver.chronic_followup", "health_records": "silver.health_record",
             "lab_results": "silver.lab_result", "referrals": "silver.referral",
             "institutions": "silver.institution"}
    return {"population": population} | {k: table(v) for k, v in names.items()}


def inputs_for(tables: dict[str, DataFrame], catalogue: MetricCatalogue, period: Period
               ) -> Inputs:
    """One period's inputs: the tables, with residents' ages at the end of the period."""
    return Inputs(period=period, standard_weights=catalogue.standard_population,
                  **(tables | {"persons": persons_at(tables["persons"], period.end)}))


# A day's periods: its month, quarter and year (more only when events arrive for past months).
DAY_PERIODS = 3
EVENT_COLUMNS = (("silver.encounter", "visit_at"), ("silver.chronic_followup", "followup_at"),
                 ("silver.lab_result", "reported_at"), ("silver.referral", "referred_at"))


def periods_touched(spark: SparkSession, settings: Settings, extract_date: dt.date
                    ) -> list[Period]:
    """The years, quarters and months of the events (encounters, follow-ups, lab results,
    referrals) that arrived in an extract date's curated rows, and of the extract date itself.
    A health record registered years ago and sent now counts from the extract date: past
    periods' coverage stays as it was published."""
    from pyspark.sql import functions as F

    months = {(extract_date.year, extract_date.month)}
    for name, col in EVENT_COLUMNS:
        if table_exists(spark, settings, name):
            months |= {(r["y"], r["m"]) for r in read_table(spark, settings, name)
                       .where(F.col("extract_date") == F.lit(extract_date))
                       .select(F.year(col).alias("y"), F.month(col).alias("m")).distinct()
                       .collect() if r["y"]}
    return sorted({p for y, m in months for p in Period.containing(dt.date(y, m, 1))})


def periods_of_year(year: int) -> list[Period]:
    """A whole year: the year, its quarters and its months (``healthlake gold --year``)."""
    return ([Period.year(year)] + [Period.quarter(year, q) for q in range(1, 5)]
            + [Period.month(year, m) for m in range(1, 13)])


def metrics_for(catalogue: MetricCatalogue, period_type: str) -> list[str]:
    """The metric ids this module computes whose catalogue grains include the period type."""
    return [m for m in metric_ids() if period_type in catalogue.metric(m).grains]


def functions_for(catalogue: MetricCatalogue, period_type: str
                  ) -> list[tuple[str, Callable[[Inputs], DataFrame]]]:
    """(metric id or group name, function) of every metric and group computed at the period
    type (a group when any of its ids is)."""
    wanted = set(metrics_for(catalogue, period_type))
    return ([(mid, fn) for mid, fn in METRICS.items() if mid in wanted]
            + [(group, fn) for group, (fn, ids) in METRIC_GROUPS.items() if set(ids) & wanted])


def run(spark: SparkSession, settings: Settings, extract_date: dt.date,
        periods: list[Period] | None = None) -> dict:
    """Recompute gold.metric_value for the periods the extract date touched (or ``periods``):
    each metric at the period types its catalogue entry lists.

    Gold is small and plan-bound. A day touches a few periods (its month, quarter and year):
    each (period, metric) is then computed on its own, side by side from driver threads, as one
    union of a period's sub-plans took longer to plan than to run in a fresh JVM. Many periods
    (``--year``: 17) would make hundreds of small jobs: each period is then one union, one
    after the other. The input tables are cached once; every result is kept (lineage cut) until
    all are done, and the run writes them in one commit, so a job killed half-way leaves the
    table as it was, never half done."""
    watch = Stopwatch()
    catalogue = load_catalogue(settings)
    unknown = set(metric_ids()) - set(catalogue.metrics)
    if unknown:
        raise KeyError(f"metrics computed but not in the catalogue: {sorted(unknown)}")
    periods = sorted(periods or periods_touched(spark, settings, extract_date))
    tables = {name: df.cache() for name, df in read_tables(spark, settings).items()}
    few = len(periods) <= DAY_PERIODS
    work = []  # (period, metric functions computed as one plan)
    for period in periods:
        inputs = inputs_for(tables, catalogue, period)
        fns = [fn for _, fn in functions_for(catalogue, period.type)]
        work += [(inputs, [fn]) for fn in fns] if few else [(inputs, fns)] if fns else []

    def compute(job) -> DataFrame:
        inputs, fns = job
        return union_all([fn(inputs) for fn in fns]).localCheckpoint()

    with ThreadPoolExecutor(max_workers=parallel_jobs(spark) if few else 1) as pool:
        done = list(pool.map(compute, work))
    watch.lap("compute")
    rows: dict[str, dict[str, int]] = {}
    written = sorted({inputs.period for inputs, _ in work})
    if done:
        # Small: one file per metric and commit, not one per piece.
        result = union_all(done).coalesce(1)
        for r in (result.groupBy("period", "metric_id").count()
                  .orderBy("period", "metric_id").collect()):
            rows.setdefault(r["period"], {})[r["metric_id"]] = r["count"]
        write_table(result, settings, "gold.metric_value", replace_where=" OR ".join(
            f"(period_type = '{p.type}' AND period = '{p.label}')" for p in written))
        watch.lap("write")
    for df in tables.values():
        df.unpersist()
    summary = {"extract_date": extract_date.isoformat(), "periods": [p.label for p in periods],
               "years": sorted({p.start.year for p in periods}), "rows": rows,
               "seconds": watch.total, "seconds_by_step": watch.steps}
    log.info("gold metrics %s: %s", extract_date, summary)
    return summary
