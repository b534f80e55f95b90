"""Privacy scan: look through curated tables for identity numbers, phones and names in clear.

A hit is any string value (or any part of one) that is

- an 18-character national ID standing alone, with a plausible birth date and a valid
  GB 11643 check character (record keys that happen to hold 18 digits are not IDs);
- a mainland mobile number (1[3-9] + 9 digits) standing alone;
- a name, phone or ID number from a list of known values (e.g. the generator's ground truth).

Used by tests on every curated table; the scan returns examples, never prints a value in full.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobs.config import Settings
from jobs.lake import read_table, table_exists

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# An 18-character ID standing alone (no letter or digit beside it: record keys and hashes that
# happen to hold 18 digits are not IDs), whose digits 7-14 are a birth date from 1900 on.
ID18 = (r"(?<![0-9A-Za-z])[1-9][0-9]{5}(19|20)[0-9]{2}(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])"
        r"[0-9]{3}[0-9Xx](?![0-9A-Za-z])")
MOBILE = r"(?<![0-9A-Za-z])1[3-9][0-9]{9}(?![0-9A-Za-z])"


def curated_tables(settings: Settings) -> list[str]:
    return sorted(n for n, t in settings.tables.items() if t.zone == "curated")


def _mask(value: str) -> str:
    return value[:3] + "*" * max(0, len(value) - 5) + value[-2:] if len(value) > 5 else "***"


def scan_frame(df: DataFrame, known: set[str] | None = None) -> list[dict]:
    """Hits in the string columns of ``df``: (column, kind, rows, masked example). One pass for
    the patterns over all columns, one join for the known values."""
    from pyspark.sql import functions as F

    from jobs.silver.standardise import check_char  # the same GB 11643 check as silver

    strings = [f.name for f in df.schema.fields if f.dataType.simpleString() == "string"]
    if not strings:
        return []
    checks = {}
    for c in strings:
        col = F.col(f"`{c}`")
        ids = F.regexp_extract_all(col, F.lit(ID18), 0)
        checks[(c, "national_id")] = F.exists(
            ids, lambda x: check_char(F.substring(x, 1, 17)) == F.upper(F.substring(x, 18, 1)))
        checks[(c, "mobile_phone")] = col.rlike(MOBILE)
    names = {key: f"h{i}" for i, key in enumerate(checks)}
    row = df.agg(*[F.count_if(cond).alias(names[k]) for k, cond in checks.items()],
                 *[F.first(F.when(cond, F.col(f"`{k[0]}`")), ignorenulls=True)
                   .alias(names[k] + "_ex") for k, cond in checks.items()]).first()
    hits = [{"column": c, "kind": kind, "rows": row[names[(c, kind)]],
             "example": _mask(row[names[(c, kind)] + "_ex"])}
            for (c, kind) in checks if row[names[(c, kind)]]]
    if known:
        known_df = df.sparkSession.createDataFrame([(k,) for k in sorted(known)], "value string")
        values = df.select(F.explode(F.array(*[
            F.struct(F.lit(c).alias("column"), F.col(f"`{c}`").alias("value"))
            for c in strings])).alias("v")).select("v.*").where("value IS NOT NULL").distinct()
        found = (values.join(F.broadcast(known_df), "value").groupBy("column")
                 .agg(F.count("*").alias("n"), F.first("value").alias("ex")).collect())
        hits += [{"column": r["column"], "kind": "known_value", "rows": r["n"],
                  "example": _mask(r["ex"])} for r in found]
    return hits


def scan(spark: SparkSession, settings: Settings, known: set[str] | None = None) -> dict:
    """Scan every written curated table; {table: hits} for tables with any hit."""
    out = {}
    for name in curated_tables(settings):
        if table_exists(spark, settings, name):
            hits = scan_frame(read_table(spark, settings, name), known)
            if hits:
                out[name] = hits
    return out
