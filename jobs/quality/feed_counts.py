"""ops.feed_counts: per institution, feed and extract date, what arrived and how it compares.

One row per (extract_date, institution_id, feed) for every pair seen in the recent history
window, so an institution that sent nothing today still has a row (zero files, zero rows):

* files and rows as ops.ingest_log accounts for them (in, loaded, quarantined, missing files);
* rows actually in bronze (row-count reconciliation of bronze against the log);
* the recent history: days delivered, median rows loaded a day, last delivery; the ratio of
  today's rows to that median (a broken source collapses or multiplies) and days since the last
  delivery (freshness).

The quality suite quality/ops.feed_counts.yaml judges it; data engineers read it as the per-run
count of each institution's delivery.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from jobs.config import Settings
from jobs.lake import read_table, table_exists, write_table
from jobs.quality.spec import FeedCountsSettings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

TABLE = "ops.feed_counts"
DELIVERED = ("loaded", "quarantined")


def transform(log: DataFrame, bronze_counts: DataFrame, day: dt.date,
              params: FeedCountsSettings) -> DataFrame:
    """``log``: ops.ingest_log rows of the window ``[day - history_days, day]``;
    ``bronze_counts``: (institution_id, feed, rows_in_bronze) of ``day``."""
    from pyspark.sql import functions as F

    start = day - dt.timedelta(days=params.history_days)
    delivered = F.col("status").isin(*DELIVERED)
    per_day = (log.where(F.col("feed").isNotNull()
                         & F.col("extract_date").between(F.lit(start), F.lit(day)))
               .groupBy("extract_date", "institution_id", "feed")
               .agg(F.sum(delivered.cast("int")).alias("n_files"),
                    F.sum((F.col("status") == "missing").cast("int")).alias("n_files_missing"),
                    F.count(F.lit(1)).alias("n_files_listed"),
                    F.sum(F.coalesce("rows_in", F.lit(0))).alias("rows_in"),
                    F.sum(F.coalesce("rows_loaded", F.lit(0))).alias("rows_loaded"),
                    F.sum(F.coalesce("rows_quarantined", F.lit(0))).alias("rows_quarantined")))
    history = (per_day.where(F.col("extract_date") < F.lit(day))
               .groupBy("institution_id", "feed")
               .agg(F.sum((F.col("n_files") > 0).cast("int")).alias("recent_days_delivered"),
                    F.percentile_approx(F.when(F.col("n_files") > 0, F.col("rows_loaded")),
                                        0.5).alias("recent_median_rows"),
                    F.max(F.when(F.col("n_files") > 0, F.col("extract_date")))
                    .alias("last_delivery_before")))
    today = per_day.where(F.col("extract_date") == F.lit(day)).drop("extract_date")
    pairs = per_day.select("institution_id", "feed").distinct()
    judged = ((F.col("recent_days_delivered") >= params.min_history_days)
              & (F.col("recent_median_rows") >= params.min_recent_median_rows))
    last = F.when(F.col("n_files") > 0, F.lit(day)).otherwise(F.col("last_delivery_before"))
    zero = F.lit(0).cast("long")
    return (pairs.join(today, ["institution_id", "feed"], "left")
            .join(history, ["institution_id", "feed"], "left")
            .join(bronze_counts, ["institution_id", "feed"], "left")
            .select(
                F.lit(day).alias("extract_date"), "institution_id", "feed",
                *[F.coalesce(c, zero).cast("long").alias(c) for c in (
                    "n_files", "n_files_missing", "n_files_listed", "rows_in", "rows_loaded",
                    "rows_quarantined", "rows_in_bronze")],
                F.coalesce("recent_days_delivered", zero).cast("int")
                .alias("recent_days_delivered"),
                F.col("recent_median_rows").cast("long").alias("recent_median_rows"),
                last.alias("last_delivery_date"))
            .withColumn("n_files", F.col("n_files").cast("int"))
            .withColumn("days_since_delivery",
                        F.datediff(F.lit(day), F.col("last_delivery_date")))
            .withColumn("ratio_to_recent",
                        F.when(judged, F.round(F.col("rows_loaded")
                                               / F.col("recent_median_rows"), 3))))


def run(spark: SparkSession, settings: Settings, day: dt.date,
        params: FeedCountsSettings) -> dict:
    """Recompute the day's rows of ops.feed_counts (replaces that day: safe to re-run)."""
    from pyspark.sql import functions as F

    if not table_exists(spark, settings, "ops.ingest_log"):
        return {"table": TABLE, "rows": 0, "note": "ops.ingest_log not written yet"}
    log = read_table(spark, settings, "ops.ingest_log").where(
        F.col("extract_date") >= F.lit(day - dt.timedelta(days=params.history_days)))
    bronze = []
    for name in sorted(t for t in settings.tables if t.startswith("bronze.")):
        if table_exists(spark, settings, name):
            bronze.append(read_table(spark, settings, name)
                          .where(F.col("extract_date") == F.lit(day))
                          .groupBy("institution_id").count()
                          .select("institution_id", F.lit(name.partition(".")[2]).alias("feed"),
                                  F.col("count").alias("rows_in_bronze")))
    schema = "institution_id string, feed string, rows_in_bronze long"
    bronze_counts = spark.createDataFrame([], schema)
    for df in bronze:
        bronze_counts = bronze_counts.unionByName(df)
    out = transform(log, bronze_counts, day, params)
    write_table(out, settings, TABLE, replace_where=f"extract_date = DATE'{day}'")
    return {"table": TABLE, "rows": read_table(spark, settings, TABLE)
            .where(F.col("extract_date") == F.lit(day)).count()}
