"""Reading and writing catalogued Delta tables: the only place that turns table names into paths.

Jobs name tables (``bronze.encounters``); the catalogue in conf/base/catalog.yaml says where they
live and how they are partitioned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobs.config import Settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def table_exists(spark: SparkSession, settings: Settings, name: str) -> bool:
    from delta.tables import DeltaTable

    spec = settings.table(name)
    if not settings.zone_is_uri(spec.zone) and not settings.table_path(name).exists():
        return False  # (a quick answer on a local file system, without the JVM)
    return DeltaTable.isDeltaTable(spark, settings.table_location(name))


def table_version(settings: Settings, name: str, spark: SparkSession | None = None
                  ) -> int | None:
    """A catalogued table's latest committed Delta version; None when it has never been
    written. On a local file system from its log's file names (no Spark); a table addressed by
    URI asks Delta, through ``spark``."""
    if settings.zone_is_uri(settings.table(name).zone):
        if spark is None:
            raise ValueError(f"the version of {name} (at {settings.table_location(name)}) "
                             "needs a SparkSession")
        if not table_exists(spark, settings, name):
            return None
        from delta.tables import DeltaTable

        return DeltaTable.forPath(spark, settings.table_location(name)).history(1).first()[
            "version"]
    log_dir = settings.table_path(name) / "_delta_log"
    versions = [int(p.stem) for p in log_dir.glob("*.json") if p.stem.isdigit()]
    return max(versions) if versions else None


def read_table(spark: SparkSession, settings: Settings, name: str) -> DataFrame:
    """Read a catalogued table; a clear error if it has never been written. Reads of the
    restricted zone are recorded for the audit log (:mod:`jobs.audit`)."""
    if not table_exists(spark, settings, name):
        raise FileNotFoundError(f"table {name} has not been written yet (expected at "
                                f"{settings.table_location(name)})")
    if settings.table(name).zone == "restricted":
        from jobs import audit

        audit.record_read(settings, name, spark)
    return spark.read.format("delta").load(settings.table_location(name))


def write_table(df: DataFrame, settings: Settings, name: str, *, mode: str = "append",
                replace_where: str | None = None, replace_schema: bool = False) -> None:
    """Write to a catalogued table with its configured partitioning.

    ``replace_where`` atomically replaces just the matching rows (one Delta commit): how a job
    re-runs one extract date without touching the others. ``replace_schema`` (with
    ``mode="overwrite"``) lets a table recomputed whole take the columns its job now writes.
    """
    spec = settings.table(name)
    writer = df.write.format("delta").mode("overwrite" if replace_where else mode)
    if replace_where:
        writer = writer.option("replaceWhere", replace_where)
    if replace_schema:
        writer = writer.option("overwriteSchema", "true")
    if spec.partition_by:
        writer = writer.partitionBy(*spec.partition_by)
    writer.save(settings.table_location(name))


def union_all(frames: list[DataFrame], allow_missing: bool = False) -> DataFrame:
    """The rows of every frame, matched by column name (missing columns null when allowed)."""
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame, allowMissingColumns=allow_missing)
    return out


# Columns that say when or by which run a row was written, not what it holds.
RUN_COLUMNS = ("run_id", "read_ms", "validated_at", "seconds")
# Tables that record runs (who ran what, when), not data: no two runs leave the same rows.
RUN_LOG_TABLES = ("ops.audit_log",)


def fingerprint(spark: SparkSession, settings: Settings, ignore: tuple[str, ...] = RUN_COLUMNS,
                tables: tuple[str, ...] | None = None) -> dict[str, tuple[int, int]]:
    """Every written table of the catalogue (or of ``tables``) -> (rows, order-independent hash
    of its rows), run columns and run logs (``RUN_LOG_TABLES``) left out: two lakes (or one lake
    before and after a re-run) with the same fingerprint hold the same rows."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import MapType

    def hashable(field):
        col = F.col(f"`{field.name}`")  # Spark hashes no maps: their sorted entries instead
        return (F.to_json(F.array_sort(F.map_entries(col)))
                if isinstance(field.dataType, MapType) else col)

    out = {}
    for name in sorted(tables or settings.tables):
        if name in RUN_LOG_TABLES or not table_exists(spark, settings, name):
            continue
        df = read_table(spark, settings, name)
        cols = [hashable(f) for f in df.schema.fields if f.name not in ignore]
        row = df.agg(F.count(F.lit(1)).alias("n"),
                     F.sum(F.xxhash64(*cols).cast("decimal(38,0)")).alias("h")).first()
        out[name] = (row["n"], int(row["h"] or 0))
    return out
