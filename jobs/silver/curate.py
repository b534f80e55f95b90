"""Curated silver tables of one extract date: typed, deduplicated, linked to person_id, and with
no identity number, name, phone or address in clear (those stay in the restricted zone), no
exact quasi-identifier of a person (sex, birth date, residence area: silver.person publishes them
generalised) and no pointer back to the raw line a row came from (file, line, file hash, ingest).

Each feed's silver_std rows of the day get their ``person_id`` from ``silver.person_link`` and
are merged into the curated table on the feed's key (institution_id + the institution's own
key): the same encounter sent twice, the same day or later, is one encounter, holding the
latest version sent (``first_seen_date`` keeps when it first came). Re-running a day merges the
same rows again and changes nothing. A backfill (a day curated after later ones) also gives the
later days' rows the person ids that resolving the backfilled day gave them again.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobs.config import Settings
from jobs.lake import read_table, table_exists, write_table
from jobs.silver.resolve import later_days

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CuratedTable:
    table: str
    key: tuple[str, ...]          # with institution_id
    event_at: str                 # orders versions of one key within a day


CURATED: dict[str, CuratedTable] = {
    "resident_registry": CuratedTable("silver.health_record", ("record_id",), "updated_at"),
    "encounters": CuratedTable("silver.encounter", ("encounter_id",), "visit_at"),
    "lab_results": CuratedTable("silver.lab_result", ("lab_result_id",), "reported_at"),
    "referrals": CuratedTable("silver.referral", ("referral_id",), "referred_at"),
    "chronic_followups": CuratedTable("silver.chronic_followup", ("followup_id",),
                                      "followup_at"),
    "institution_survey": CuratedTable("silver.institution_survey", ("survey_period",),
                                       "survey_period"),
}
# Identifiers and quasi-identifiers that never leave the restricted zone. The person's sex, birth
# date and residence are in silver.person, generalised (jobs.silver.generalise); the validity of
# the ID number and of the area code stay, as quality flags.
IDENTIFYING = ["national_id", "national_id_raw", "national_id_clean", "id_birth_date", "id_sex",
               "name", "name_pinyin_key", "phone", "phone_type", "address", "patient_no", "sex",
               "birth_date", "area_code", "town_code", "district_code", "functional_zone"]
# Lineage that leads back to a raw line of a landed file: used to order versions, never written.
DROPPED_LINEAGE = ["source_file", "source_line", "source_sha256", "ingest_id"]


def curate_feed(std: DataFrame, links: DataFrame | None, spec: CuratedTable) -> DataFrame:
    """One day's silver_std rows -> curated rows: person_id joined, identifiers and the raw
    line's lineage dropped, one row per key (the latest event, then the last line sent)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = ["institution_id", *spec.key]
    if links is not None:
        std = std.join(
            links.select("institution_id", F.col("record_key").alias(spec.key[0]),
                         "extract_date", "person_id"),
            ["institution_id", spec.key[0], "extract_date"], "left")
    order = Window.partitionBy(*keys).orderBy(F.col(spec.event_at).desc_nulls_last(),
                                              F.col("source_file").desc(),
                                              F.col("source_line").desc())
    drop = [c for c in IDENTIFYING + DROPPED_LINEAGE if c in std.columns]
    return (std.withColumn("_version", F.row_number().over(order)).where("_version = 1")
            .drop("_version", *drop)
            .withColumn("first_seen_date", F.col("extract_date")))


def merge_into(spark: SparkSession, settings: Settings, rows: DataFrame, spec: CuratedTable
               ) -> None:
    """Upsert on the key: a version from the same or a later extract date replaces the stored
    one (first_seen_date kept); an older one changes only first_seen_date, to its earlier day."""
    from delta.tables import DeltaTable

    if not table_exists(spark, settings, spec.table):
        write_table(rows, settings, spec.table, mode="overwrite")
        return
    keys = ["institution_id", *spec.key]
    target = DeltaTable.forPath(spark, settings.table_location(spec.table))
    on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
    update = {f"`{c}`": f"s.`{c}`" for c in rows.columns if c != "first_seen_date"}
    update["first_seen_date"] = "least(t.first_seen_date, s.first_seen_date)"
    (target.alias("t").merge(rows.alias("s"), on)
     .whenMatchedUpdate(condition="s.extract_date >= t.extract_date", set=update)
     # An older version (a day run after later ones) still says when the key was first seen.
     .whenMatchedUpdate(condition="s.first_seen_date < t.first_seen_date",
                        set={"first_seen_date": "s.first_seen_date"})
     .whenNotMatchedInsertAll()
     .execute())


def refresh_person_ids(spark: SparkSession, settings: Settings, later_links: DataFrame,
                       spec: CuratedTable, day: str) -> None:
    """Curated rows of extract dates after ``day`` take their person_id from ``later_links``
    where it changed: after a backfill, entity resolution resolved those days again.

    Only the later days the table holds rows of are merged: a range curated in order after it
    was resolved in order (an initial load) finds none, and merges nothing."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    curated = [r[0] for r in read_table(spark, settings, spec.table)
               .where(f"extract_date > DATE'{day}'").select("extract_date").distinct().collect()]
    if not curated:
        return
    target = DeltaTable.forPath(spark, settings.table_location(spec.table))
    links = (later_links.where(F.col("extract_date").isin(curated))
             .select("institution_id", F.col("record_key").alias(spec.key[0]), "extract_date",
                     "person_id"))
    (target.alias("t").merge(
        links.alias("s"), f"t.institution_id = s.institution_id AND t.`{spec.key[0]}` = "
                          f"s.`{spec.key[0]}` AND t.extract_date = s.extract_date")
     .whenMatchedUpdate(condition="NOT (t.person_id <=> s.person_id)",
                        set={"person_id": "s.person_id"})
     .execute())


def institutions(spark: SparkSession, settings: Settings) -> DataFrame:
    """silver.institution: the institution register (reference/institutions.csv), typed."""
    import pandas as pd

    ref = pd.read_csv(settings.reference_root / "institutions.csv", dtype=str)
    ref = ref.rename(columns={"name": "institution_name", "district": "district_code",
                              "town": "town_name"})
    cols = ["institution_id", "institution_name", "tier", "district_code", "town_name",
            "area_code", "profile"]
    return spark.createDataFrame(ref[cols].rename(columns={"profile": "source_profile"}))


def run(spark: SparkSession, settings: Settings, extract_date: dt.date) -> dict:
    """Merge one extract date into every curated silver table; rewrite silver.institution."""
    started = time.perf_counter()
    day = extract_date.isoformat()
    where = f"extract_date = DATE'{day}'"
    all_links = (read_table(spark, settings, "silver.person_link")
                 if table_exists(spark, settings, "silver.person_link") else None)
    links = all_links.where(where) if all_links is not None else None
    # A backfill: later days are curated already, and resolving this day resolved them again.
    backfill = bool(later_days(spark, settings, extract_date))
    later_links = all_links.where(f"extract_date > DATE'{day}'") if backfill else None
    counts = {}
    for feed, spec in CURATED.items():
        if not table_exists(spark, settings, f"silver_std.{feed}"):
            continue
        std = read_table(spark, settings, f"silver_std.{feed}").where(where)
        feed_links = links.where(f"feed = '{feed}'") if (
            links is not None and feed != "institution_survey") else None
        rows = curate_feed(std, feed_links, spec).cache()
        n_rows, n_in = rows.count(), std.count()
        if feed_links is not None:
            unlinked = rows.where("person_id IS NULL").count()
            if unlinked:
                raise RuntimeError(f"{day}: {unlinked} {feed} rows have no person_id; run "
                                   f"`healthlake resolve --date {day}` first")
        if n_rows or not table_exists(spark, settings, spec.table):
            merge_into(spark, settings, rows, spec)
        if backfill and feed_links is not None:
            refresh_person_ids(spark, settings, later_links.where(f"feed = '{feed}'"), spec,
                               day)
        rows.unpersist()
        counts[spec.table] = {"rows_in": n_in, "distinct_keys": n_rows,
                              "duplicates_merged": n_in - n_rows}
    write_table(institutions(spark, settings), settings, "silver.institution", mode="overwrite")
    summary = {"extract_date": day, "tables": counts, "later_days_person_ids_refreshed": backfill,
               "seconds": round(time.perf_counter() - started, 1)}
    log.info("curate %s: %s", day, summary)
    return summary
