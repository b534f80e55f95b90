"""SQL for analysts: `healthlake sql`, `healthlake tables` and the Thrift JDBC server's catalogue.

Every catalogued table of the analyst zones (``publish.sql.zones``: curated, ops) is registered
under its own name (``silver.person``, ``gold.index_score``): a database per layer, an external
Delta table per catalogued table, pointing at the lake (no data is copied or written). The
restricted zone (landing copies, bronze, quarantine, silver_std, restricted.identity) is never
registered, and a query is refused before it runs when it

* names a restricted table (``bronze.encounters``, ``restricted.identity``, ...);
* reads files by path (``delta.`/lake/...```, ``parquet.`...```): tables are queried by name, and
  Spark's own ``spark.sql.runSQLOnFiles`` is switched off as well;
* is not a query (only SELECT / WITH / VALUES / TABLE / FROM / SHOW / DESCRIBE / EXPLAIN: no DDL,
  no writes, no SET), or holds more than one statement;

and, after Spark has planned it, when any file it would read lies outside the analyst zones.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from jobs.config import URI, Settings, TableSpec
from jobs.publish.settings import RESTRICTED_ZONE, PublishSettings, load_publish

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

READ_ONLY_STATEMENTS = ("select", "with", "values", "table", "from", "show", "describe", "desc",
                        "explain")
OUTPUT_FORMATS = ("table", "csv", "json")
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_STRINGS = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", re.S)
_PATH_READ = re.compile(r"\b\w+\s*\.\s*`[^`]*[/\\][^`]*`")


class RefusedQuery(ValueError):
    """A query analysts may not run, with the reason in words."""


@dataclass(frozen=True)
class AnalystCatalogue:
    """The tables analysts see, and the roots their files may lie under."""

    tables: dict[str, TableSpec]
    roots: tuple[str, ...]          # zone locations (see location())
    restricted: dict[str, TableSpec]
    restricted_root: str


def analyst_catalogue(settings: Settings, spec: PublishSettings) -> AnalystCatalogue:
    zones = [z for z in spec.sql.zones if z != RESTRICTED_ZONE]
    return AnalystCatalogue(
        tables={n: t for n, t in settings.tables.items() if t.zone in zones},
        roots=tuple(location(settings.zone_location(z)) for z in zones),
        restricted={n: t for n, t in settings.tables.items() if t.zone == RESTRICTED_ZONE},
        restricted_root=location(settings.zone_location(RESTRICTED_ZONE)))


def location(where: str) -> str:
    """A file's or a zone's location in one form to compare: a local path (or ``file:`` URI)
    as its resolved absolute path, any other URI (hdfs://, s3a:// ...) as it is."""
    if URI.match(where) and not where.startswith("file:"):
        return where.rstrip("/")
    return Path(re.sub(r"^file:(//)?", "", where)).resolve().as_posix()


# -- the checks (pure) --------------------------------------------------------------------------


def check_query(text: str, catalogue: AnalystCatalogue) -> str:
    """The query without comments, or :class:`RefusedQuery` saying why it may not run."""
    code = _COMMENTS.sub(" ", text).strip().rstrip(";").strip()
    if not code:
        raise RefusedQuery("empty query")
    bare = _STRINGS.sub("''", code)
    if ";" in bare:
        raise RefusedQuery("one statement at a time")
    first = bare.split(None, 1)[0].lower().lstrip("(")
    if first not in READ_ONLY_STATEMENTS:
        raise RefusedQuery(f"only queries are allowed ({', '.join(READ_ONLY_STATEMENTS)}), "
                           f"not {first.upper()}: the lake is read-only here")
    namespaces = sorted({n.partition(".")[0] for n in catalogue.restricted}
                        - {n.partition(".")[0] for n in catalogue.tables})
    pattern = re.compile(r"(?<![\w.])`?(" + "|".join(map(re.escape, namespaces))
                         + r")`?\s*\.\s*`?(\w+)`?", re.I)
    for match in pattern.finditer(bare):
        name = f"{match[1].lower()}.{match[2].lower()}"
        raise RefusedQuery(
            f"{name} is in the restricted zone (identifiers in clear, rows as received): it is "
            "not open to analysts. Query the curated tables (`healthlake tables` lists them)")
    if _PATH_READ.search(bare) or catalogue.restricted_root in code:
        raise RefusedQuery("files are not read by path here: query the catalogued tables by "
                           "name (`healthlake tables` lists them)")
    return code


def check_files(files: list[str], catalogue: AnalystCatalogue) -> None:
    """Every file a planned query reads lies under an analyst zone."""
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
         spec: PublishSettings | None = None) -> DataFrame:
    """Check, register and plan a query (nothing is read yet)."""
    spec = spec or load_publish(settings)
    catalogue = analyst_catalogue(settings, spec)
    code = check_query(text, catalogue)
    register_tables(spark, settings, catalogue)
    df = spark.sql(code)
    check_files(df.inputFiles(), catalogue)
    return df


def query(spark: SparkSession, settings: Settings, text: str, limit: int | None = None
          ) -> tuple[pd.DataFrame, bool]:
    """Run an analyst's query: (rows, whether more rows exist than ``limit``)."""
    df = plan(spark, settings, text)
    if limit is None:
        return df.toPandas(), False
    rows = df.limit(limit + 1).toPandas()
    return rows.head(limit), len(rows) > limit


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
