"""Data-quality scorecard (gold.dq_scorecard): per institution and extract day, how well the
institution delivered - timeliness, completeness, validity (quarantine, invalid identity
numbers) and duplicates. Every number is a catalogue entry (``dq_*`` in conf/base/metrics.yaml).

One row per metric, extract date, institution and feed (``feed`` null: the institution's whole
day), with ``numerator``, ``denominator`` and ``value`` in percent. Roll-ups to a district, the
city, a month or a year are sums of numerators over sums of denominators
(:func:`rollup`), which is how the informatization index reads it.

Timeliness reads ``ops.ingest_log``, whose ``ingested_at`` is when a run of the day first saw
each file: an institution is ``on_time`` when all its files of the day were there at the day's
first run, ``late`` when some came at a later run, ``missing`` when a file (or the whole
delivery) is still absent. Expected institutions come from the register (silver.institution).
"""

from __future__ import annotations

import datetime as dt
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from jobs.config import Settings
from jobs.contracts import load_contracts
from jobs.lake import read_table, table_exists, union_all, write_table
from jobs.spark import parallel_jobs
from jobs.timing import Stopwatch

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

SCORECARD_COLUMNS = ["metric_id", "extract_date", "institution_id", "district_code", "tier",
                     "feed", "delivery_status", "numerator", "denominator", "value"]
METRIC_IDS = ["dq_on_time_delivery_rate", "dq_completeness_rate", "dq_quarantine_rate",
              "dq_invalid_id_rate", "dq_duplicate_rate"]
# Lineage columns bronze adds to every feed: not part of what the institution sent.
LINEAGE = {"extract_date", "institution_id", "tier", "source_profile", "source_file",
           "source_line", "source_sha256", "ingest_id", "extra_columns"}
RECEIVED = ("loaded", "quarantined")


def _rate(df: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    return df.withColumn("value", F.when(F.col("denominator") > 0,
                                         100.0 * F.col("numerator") / F.col("denominator")))


def _finish(df: DataFrame, metric_id: str, institutions: DataFrame) -> DataFrame:
    """Add the metric id, the institution's district and tier and any missing column."""
    from pyspark.sql import functions as F

    df = df.join(institutions.select("institution_id", "district_code", "tier"),
                 "institution_id", "left")
    for c in ("feed", "delivery_status"):
        if c not in df.columns:
            df = df.withColumn(c, F.lit(None).cast("string"))
    return _rate(df).select(F.lit(metric_id).alias("metric_id"), "extract_date",
                            "institution_id", "district_code", "tier", "feed",
                            "delivery_status", F.col("numerator").cast("double"),
                            F.col("denominator").cast("double"), F.col("value").cast("double"))


def with_institution_total(per_feed: DataFrame) -> DataFrame:
    """Per-feed numerators and denominators plus the institution's whole day (feed null), in
    one aggregation."""
    from pyspark.sql import functions as F

    day, inst = "extract_date", "institution_id"
    return (per_feed.groupingSets([(day, inst, "feed"), (day, inst)], day, inst, "feed")
            .agg(F.sum("numerator").alias("numerator"),
                 F.sum("denominator").alias("denominator")))


# -- the metrics: pure transforms of DataFrames ---------------------------------------------------


def delivery_status(ingest_log: DataFrame, institutions: DataFrame, extract_date: dt.date
                    ) -> DataFrame:
    """On time, late or missing, per registered institution for the day (numerator 1 when on
    time, denominator 1)."""
    from pyspark.sql import functions as F

    day = ingest_log.where(F.col("extract_date") == F.lit(extract_date))
    first_run = day.agg(F.min("ingested_at").alias("first_run"))
    per_inst = (day.where(F.col("institution_id").isNotNull()).crossJoin(first_run)
                .groupBy("institution_id")
                .agg(F.count_if(F.col("status") == "missing").alias("n_missing"),
                     F.count_if(F.col("ingested_at") > F.col("first_run")).alias("n_late")))
    status = (F.when(F.col("n_missing").isNull() | (F.col("n_missing") > 0), "missing")
              .when(F.col("n_late") > 0, "late").otherwise("on_time"))
    out = (institutions.select("institution_id").join(per_inst, "institution_id", "left")
           .select("institution_id", F.lit(extract_date).alias("extract_date"),
                   status.alias("delivery_status"))
           .withColumn("numerator", (F.col("delivery_status") == "on_time").cast("int"))
           .withColumn("denominator", F.lit(1)))
    return _finish(out, "dq_on_time_delivery_rate", institutions)


def completeness(bronze: dict[str, DataFrame], contract_columns: dict[str, list[str]],
                 institutions: DataFrame) -> DataFrame:
    """Non-empty contract values over rows x contract columns, per institution and feed."""
    from pyspark.sql import functions as F

    parts = []
    for feed, df in bronze.items():
        cols = contract_columns[feed]
        filled = sum((F.when(F.trim(F.col(c).cast("string")) != "", 1).otherwise(0)
                      if c in df.columns else F.lit(0)) for c in cols)
        parts.append(df.groupBy("extract_date", "institution_id").agg(
            F.sum(filled).alias("numerator"), (F.count("*") * len(cols)).alias("denominator"))
            .withColumn("feed", F.lit(feed)))
    return _finish(with_institution_total(_union(parts)), "dq_completeness_rate", institutions)


def quarantine_rate(ingest_log: DataFrame, silver_rejected: DataFrame, institutions: DataFrame
                    ) -> DataFrame:
    """Rows quarantined at ingest or rejected by standardisation over rows received."""
    from pyspark.sql import functions as F

    received = (ingest_log.where(F.col("status").isin(*RECEIVED))
                .groupBy("extract_date", "institution_id", "feed")
                .agg(F.sum("rows_in").alias("denominator"),
                     F.sum("rows_quarantined").alias("at_ingest")))
    rejected = (silver_rejected.select("extract_date", "institution_id", "feed", "source_file",
                                       "source_line").distinct()
                .groupBy("extract_date", "institution_id", "feed")
                .agg(F.count("*").alias("at_silver")))
    out = (received.join(rejected, ["extract_date", "institution_id", "feed"], "left")
           .select("extract_date", "institution_id", "feed", "denominator",
                   (F.col("at_ingest") + F.coalesce("at_silver", F.lit(0))).alias("numerator")))
    return _finish(with_institution_total(out), "dq_quarantine_rate", institutions)


def invalid_id_rate(standardised: dict[str, DataFrame], institutions: DataFrame) -> DataFrame:
    """Rows whose non-empty identity number is invalid even after repair, over rows with one."""
    from pyspark.sql import functions as F

    parts = []
    for feed, df in standardised.items():
        if "national_id_raw" not in df.columns:
            continue
        has_id = F.trim(F.coalesce(F.col("national_id_raw"), F.lit(""))) != ""
        parts.append(df.where(has_id).groupBy("extract_date", "institution_id").agg(
            F.count_if(~F.coalesce(F.col("is_national_id_valid"), F.lit(False)))
            .alias("numerator"), F.count("*").alias("denominator"))
            .withColumn("feed", F.lit(feed)))
    return _finish(with_institution_total(_union(parts)), "dq_invalid_id_rate", institutions)


def duplicate_rate(bronze: dict[str, DataFrame], ingest_log: DataFrame, keys: dict[str, list[str]],
                   contract_columns: dict[str, list[str]], institutions: DataFrame,
                   extract_date: dt.date) -> DataFrame:
    """Rows of the day equal (institution, record key and content) to a row received earlier
    or earlier the same day, plus rows of files logged as duplicate deliveries, over rows
    received. ``bronze`` holds every day up to ``extract_date``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    parts = []
    for feed, df in bronze.items():
        content = [c for c in contract_columns[feed] if c in df.columns]
        order = Window.partitionBy("institution_id", *keys[feed], "_content").orderBy(
            "extract_date", "source_file", "source_line")
        repeats = (df.where(F.col("extract_date") <= F.lit(extract_date))
                   .withColumn("_content", F.xxhash64(*[F.col(c).cast("string") for c in content]))
                   .withColumn("_n", F.row_number().over(order))
                   .where(F.col("extract_date") == F.lit(extract_date))
                   .groupBy("extract_date", "institution_id")
                   .agg(F.count_if(F.col("_n") > 1).alias("repeated_rows")))
        parts.append(repeats.withColumn("feed", F.lit(feed)))
    day_log = ingest_log.where(F.col("extract_date") == F.lit(extract_date))
    received = (day_log.where(F.col("status").isin(*RECEIVED))
                .groupBy("extract_date", "institution_id", "feed")
                .agg(F.sum("rows_in").alias("rows_in")))
    duplicate_files = (day_log.where(F.col("status") == "duplicate")
                       .groupBy("extract_date", "institution_id", "feed")
                       .agg(F.sum(F.coalesce("rows_in", "manifest_rows")).alias("dup_rows")))
    k = ["extract_date", "institution_id", "feed"]
    out = (received.join(duplicate_files, k, "full").join(_union(parts), k, "left")
           .select(*k, (F.coalesce("repeated_rows", F.lit(0))
                        + F.coalesce("dup_rows", F.lit(0))).alias("numerator"),
                   (F.coalesce("rows_in", F.lit(0)) + F.coalesce("dup_rows", F.lit(0)))
                   .alias("denominator")))
    return _finish(with_institution_total(out), "dq_duplicate_rate", institutions)


def _union(parts: list[DataFrame]) -> DataFrame:
    return union_all(parts, allow_missing=True)


def rollup(scorecard: DataFrame, by: list[str]) -> DataFrame:
    """Sum numerators and denominators of the institution-day rows (feed null) over ``by``
    (e.g. metric_id, year, district_code) and rate them."""
    from pyspark.sql import functions as F

    return _rate(scorecard.where(F.col("feed").isNull()).groupBy(*by)
                 .agg(F.sum("numerator").alias("numerator"),
                      F.sum("denominator").alias("denominator")))


# -- the job ------------------------------------------------------------------------------------


def run(spark: SparkSession, settings: Settings, extract_date: dt.date) -> dict:
    """Recompute the scorecard of one extract date (one replaceWhere commit)."""
    from pyspark.sql import functions as F

    watch = Stopwatch()
    contracts = load_contracts()
    for name in ("ops.ingest_log", "silver.institution"):
        if not table_exists(spark, settings, name):
            raise FileNotFoundError(f"{name} has not been written: run `healthlake ingest` and "
                                    "`healthlake curate` first")
    ingest_log = read_table(spark, settings, "ops.ingest_log")
    institutions = read_table(spark, settings, "silver.institution")
    day = F.col("extract_date") == F.lit(extract_date)
    bronze_all, standardised = {}, {}
    for feed in contracts.feeds:
        if table_exists(spark, settings, f"bronze.{feed}"):
            bronze_all[feed] = read_table(spark, settings, f"bronze.{feed}")
        if table_exists(spark, settings, f"silver_std.{feed}"):
            standardised[feed] = read_table(spark, settings, f"silver_std.{feed}").where(day)
    bronze_day = {f: df.where(day) for f, df in bronze_all.items()}
    columns = {f: [c for c in contract.column_names if c not in LINEAGE]
               for f, contract in contracts.feeds.items()}
    keys = {f: c.key for f, c in contracts.feeds.items()}
    rejected = (read_table(spark, settings, "quarantine.silver")
                .where(day & (F.col("action") == "rejected"))
                if table_exists(spark, settings, "quarantine.silver") else
                spark.createDataFrame([], "extract_date date, institution_id string, feed string, "
                                          "source_file string, source_line int"))
    frames = [delivery_status(ingest_log, institutions, extract_date),
              completeness(bronze_day, columns, institutions),
              quarantine_rate(ingest_log.where(day), rejected, institutions),
              invalid_id_rate(standardised, institutions),
              duplicate_rate(bronze_all, ingest_log, keys, columns, institutions, extract_date)]
    # Small and plan-bound: each metric on its own, side by side from driver threads, kept
    # (lineage cut) until all are done, then one commit.
    with ThreadPoolExecutor(max_workers=parallel_jobs(spark)) as pool:
        out = _union(list(pool.map(lambda frame: frame.localCheckpoint(), frames))).coalesce(1)
    counts = {r["metric_id"]: r["count"] for r in out.groupBy("metric_id").count().collect()}
    write_table(out, settings, "gold.dq_scorecard",
                replace_where=f"extract_date = DATE'{extract_date.isoformat()}'")
    summary = {"extract_date": extract_date.isoformat(), "rows": dict(sorted(counts.items())),
               "seconds": watch.total}
    log.info("dq scorecard %s: %s", extract_date, summary)
    return summary
