"""Privacy scan: look through curated tables for identity numbers, phones and names in clear.

A hit is any string value (or any part of one) that is

- an 18-character national ID with a valid GB 11643 check character;
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

ID18 = r"(?<![0-9])[1-9][0-9]{16}[0-9Xx](?![0-9])"
MOBILE = r"(?<![0-9])1[3-9][0-9]{9}(?![0-9])"


def curated_tables(settings: Settings) -> list[str]:
    return sorted(n for n, t in settings.tables.items() if t.zone == "curated")


def _mask(value: str) -> str:
    return value[:3] + "*" * max(0, len(value) - 5) + value[-2:] if len(value) > 5 else "***"


def scan_frame(df: DataFrame, known: set[str] | None = None, limit: int = 5) -> list[dict]:
    """Hits in every string column of ``df``: (column, kind, masked example, count)."""
    from pyspark.sql import functions as F

    from jobs.silver.standardise import check_char  # the same GB 11643 check as silver

    hits = []
    strings = [f.name for f in df.schema.fields if f.dataType.simpleString() == "string"]
    known_df = None
    if known:
        known_df = df.sparkSession.createDataFrame([(k,) for k in sorted(known)], "value string")
    for c in strings:
        col = F.col(f"`{c}`")
        ids = F.regexp_extract_all(col, F.lit(ID18), 0)
        valid_ids = F.filter(ids, lambda x: check_char(F.substring(x, 1, 17))
                             == F.upper(F.substring(x, 18, 1)))
        checks = {
            "national_id": F.size(valid_ids) > 0,
            "mobile_phone": col.rlike(MOBILE),
        }
        row = df.agg(*[F.count_if(cond).alias(k) for k, cond in checks.items()],
                     *[F.first(F.when(cond, col), ignorenulls=True).alias(f"{k}_ex")
                       for k, cond in checks.items()]).first()
        for kind in checks:
            if row[kind]:
                hits.append({"column": c, "kind": kind, "rows": row[kind],
                             "example": _mask(row[f"{kind}_ex"])})
        if known_df is not None:
            found = (df.select(col.alias("value")).where(col.isNotNull()).distinct()
                     .join(known_df, "value").limit(limit).collect())
            if found:
                hits.append({"column": c, "kind": "known_value", "rows": len(found),
                             "example": _mask(found[0]["value"])})
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
