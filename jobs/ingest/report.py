"""`healthlake quarantine`: what was rejected, by day, institution, feed and rule, with examples,
and the files that never loaded (missing, duplicates, no manifest)."""

from __future__ import annotations

from functools import reduce

from jobs.config import Settings
from jobs.contracts import load_contracts
from jobs.lake import read_table, table_exists


def quarantine_summary(quarantine_df, ingest_log_df):
    """Counts of rejected rows per (day, institution, feed, rule) and one example message.

    A file-level rejection counts the rows the file held (from ops.ingest_log), not one row.
    """
    from pyspark.sql import functions as F

    # a file held back whole counts the rows it holds, or those its manifest promised
    file_rows = ingest_log_df.select(
        "source_file",
        F.greatest(F.coalesce("rows_quarantined", F.lit(0)),
                   F.coalesce("manifest_rows", F.lit(0))).alias("file_rows"))
    q = quarantine_df.join(file_rows, "source_file", "left").withColumn(
        "n", F.when(F.col("scope") == "file", F.coalesce("file_rows", F.lit(0))).otherwise(1))
    return (q.groupBy("extract_date", "institution_id", "feed", "rule_id", "scope")
            .agg(F.sum("n").alias("n_rows"), F.count("*").alias("n_entries"),
                 F.min(F.concat_ws(" | ", "source_file", F.col("source_line").cast("string"),
                                   "message")).alias("example"))
            .orderBy("extract_date", "institution_id", "feed", "rule_id"))


def all_quarantine(spark, settings: Settings):
    """Every quarantine.<feed> table that exists, with a feed column, as one DataFrame."""
    from pyspark.sql import functions as F

    parts = [read_table(spark, settings, f"quarantine.{feed}").withColumn("feed", F.lit(feed))
             for feed in sorted(load_contracts().feeds)
             if table_exists(spark, settings, f"quarantine.{feed}")]
    if not parts:
        return None
    return reduce(lambda a, b: a.unionByName(b), parts)


def run(spark, settings: Settings, *, date_from=None, date_to=None, institution=None,
        rule=None, feed=None) -> list[dict]:
    q = all_quarantine(spark, settings)
    if q is None or not table_exists(spark, settings, "ops.ingest_log"):
        return []
    if date_from:
        q = q.where(q.extract_date >= date_from)
    if date_to:
        q = q.where(q.extract_date <= date_to)
    if institution:
        q = q.where(q.institution_id == institution)
    if rule:
        q = q.where(q.rule_id == rule)
    if feed:
        q = q.where(q.feed == feed)
    log = read_table(spark, settings, "ops.ingest_log")
    rows = [r.asDict() for r in quarantine_summary(q, log).collect()]
    events = file_events(log, date_from, date_to, institution, feed)
    if rule:
        events = [e for e in events if e["rule_id"] == rule]
    return sorted(rows + events, key=lambda r: (str(r["extract_date"]), r["institution_id"],
                                                r["feed"] or "", r["rule_id"]))


NOT_LOADED = ("missing", "duplicate", "no_manifest", "unknown_feed")


def file_events(ingest_log_df, date_from=None, date_to=None, institution=None,
                feed=None) -> list[dict]:
    """Files that were not read at all (missing, duplicates, no manifest, unknown feed), in the
    same shape as quarantine summaries so operators see everything that did not load."""
    from pyspark.sql import functions as F

    log = ingest_log_df.where(F.col("status").isin(*NOT_LOADED))
    for column, value, op in (("extract_date", date_from, ">="), ("extract_date", date_to, "<="),
                              ("institution_id", institution, "="), ("feed", feed, "=")):
        if value:
            log = log.where(f"{column} {op} '{value}'")
    return [{"extract_date": r.extract_date, "institution_id": r.institution_id,
             "feed": r.feed, "rule_id": r.status.upper(), "scope": "file",
             "n_rows": r.manifest_rows or 0, "n_entries": 1,
             "example": f"{r.source_file} | {r.message}"}
            for r in log.orderBy("extract_date", "source_file").collect()]
