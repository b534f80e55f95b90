"""SQL for analysts: `healthlake sql`, `healthlake tables`, the notebooks' helper and the Thrift
JDBC server's catalogue.

The tables analysts see (``publish.sql``: every catalogued table of ``zones``, curated, and the
listed ``ops_tables``, ops.ingest_log) are registered under their own names (``silver.person``,
``gold.index_score``): a database per layer, an external Delta table per catalogued table,
pointing at the lake (no data is copied or written). The restricted zone (landing copies,
bronze, quarantine, silver_std, restricted.identity) and the unlisted ops tables (the audit
log ...) are never registered.

Every query goes through :mod:`jobs.publish.gate` before anything runs: Spark parses and
analyses it, and only a read-only query whose every relation is an allowed table by name, with
no reflection, input-file or user-defined function, passes (plus DESCRIBE / SHOW of the analyst
tables and EXPLAIN of a query). Then, after Spark has planned it, every file it would read must
lie under the analyst tables' roots. Every query, run or refused, leaves a row in
``ops.audit_log`` (:func:`jobs.audit.record_sql`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pandas as pd

from jobs.config import Settings
from jobs.publish.gate import (  # noqa: F401  (RefusedQuery and location are used from here)
    Allowed,
    RefusedQuery,
    allowed_tables,
    check_sql,
    location,
)
from jobs.publish.settings import PublishSettings, load_publish

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

OUTPUT_FORMATS = ("table", "csv", "json")

# The analyst catalogue is the gate's allowed set.
AnalystCatalogue = Allowed
analyst_catalogue = allowed_tables


def check_files(files: list[str], catalogue: Allowed) -> None:
    """Every file a planned query reads lies under an analyst table's root."""
    for uri in files:
        where = location(uri)
        if not any(where == root or where.startswith(root + "/") for root in catalogue.roots):
            raise RefusedQuery(f"the query would read {where}, outside the analyst zones")


def format_result(rows: pd.DataFrame, fmt: str, truncated: bool = False) -> str:
    """A result as an aligned table, CSV or JSON (records)."""
    if fmt == "csv":
        return rows.to_csv(index=False)
    if fmt == "json":
        return json.dumps(json.loads(rows.to_json(orient="records", date_format="iso")),
                          ensure_ascii=False, indent=2)
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r} (one of {', '.join(OUTPUT_FORMATS)})")
    if rows.empty:
        return "(no rows)" if len(rows.columns) else "(done)"
    text = rows.to_string(index=False, na_rep="NULL")
    note = f"\n({len(rows)} rows shown; more not shown)" if truncated else f"\n({len(rows)} rows)"
    return text + note


# -- Spark ------------------------------------------------------------------------------------


def register_tables(spark: SparkSession, settings: Settings, catalogue: AnalystCatalogue
                    ) -> list[str]:
    """A database per layer and an external Delta table per written analyst table; returns
    the names registered. Reads only the tables' logs: nothing is written to the lake."""
    from jobs.lake import table_exists

    spark.conf.set("spark.sql.runSQLOnFiles", "false")
    names = []
    for name in sorted(catalogue.tables):
        if not table_exists(spark, settings, name):
            continue
        layer, _, table = name.partition(".")
        where = location(settings.table_location(name)).replace("'", "\\'")
        spark.sql(f"CREATE DATABASE IF NOT EXISTS `{layer}`")
        spark.sql(f"CREATE TABLE IF NOT EXISTS `{layer}`.`{table}` USING delta "
                  f"LOCATION '{where}'")
        names.append(name)
    return names


def plan(spark: SparkSession, settings: Settings, text: str,
         spec: PublishSettings | None = None) -> tuple[DataFrame, list[str]]:
    """Register the analyst tables, check a query through the gate and plan it (nothing is
    read yet); returns the DataFrame and the tables it reads."""
    spec = spec or load_publish(settings)
    catalogue = analyst_catalogue(settings, spec)
    register_tables(spark, settings, catalogue)
    checked = check_sql(spark, text, catalogue)
    df = spark.sql(checked.code)  # a query (lazy), or an allowed DESCRIBE / SHOW / EXPLAIN
    check_files(df.inputFiles(), catalogue)
    return df, checked.tables


def query(spark: SparkSession, settings: Settings, text: str, limit: int | None = None
          ) -> tuple[pd.DataFrame, bool]:
    """Run an analyst's query: (rows, whether more rows exist than ``limit``). Every query,
    run or refused, leaves one row in ops.audit_log."""
    from jobs import audit

    try:
        df, read = plan(spark, settings, text)
    except RefusedQuery as refused:
        audit.record_sql(spark, settings, text, refused=str(refused))
        raise
    if limit is None:
        rows, more = df.toPandas(), False
    else:
        rows = df.limit(limit + 1).toPandas()
        rows, more = rows.head(limit), len(rows) > limit
    audit.record_sql(spark, settings, text, tables=read, rows=len(rows))
    return rows, more


def tables(spark: SparkSession, settings: Settings) -> list[dict]:
    """Every analyst table: name, zone, description, columns (name type), row count (null when
    not written yet)."""
    from jobs.lake import read_table, table_exists

    catalogue = analyst_catalogue(settings, load_publish(settings))
    out = []
    for name, spec in sorted(catalogue.tables.items()):
        entry = {"table": name, "zone": spec.zone, "description": spec.description,
                 "columns": None, "rows": None}
        if table_exists(spark, settings, name):
            df = read_table(spark, settings, name)
            entry["columns"] = ", ".join(f"{f.name} {f.dataType.simpleString()}"
                                         for f in df.schema.fields)
            entry["rows"] = df.count()
        out.append(entry)
    return out
