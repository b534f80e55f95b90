"""`healthlake check`: prove that Spark and Delta work here with the configured session.

Writes a tiny Delta table (ops.smoke_check) through the catalogue, reads it back, and reports
the versions and the Delta history, so a new machine or cluster is verified in one command.
"""

from __future__ import annotations

import time

from jobs.config import Settings
from jobs.lake import read_table, write_table


def run(spark, settings: Settings) -> dict:
    """Write three rows, read them back, compare; returns what a person wants to see."""
    from delta.tables import DeltaTable

    started = time.perf_counter()
    rows = [("440402", "香洲区", 1), ("440403", "斗门区", 2), ("440404", "金湾区", 3)]
    df = spark.createDataFrame(rows, "area_code string, area_name string, n_check int")
    write_table(df, settings, "ops.smoke_check", mode="overwrite")
    back = sorted(tuple(r) for r in read_table(spark, settings, "ops.smoke_check").collect())
    if back != sorted(rows):
        raise RuntimeError(f"Delta round trip differs: wrote {rows}, read {back}")
    path = settings.table_location("ops.smoke_check")
    history = DeltaTable.forPath(spark, path).history(1).collect()[0]
    return {
        "spark_version": spark.version,
        "master": spark.sparkContext.master,
        "table": "ops.smoke_check",
        "path": path,
        "rows_round_trip": len(back),
        "delta_version": history["version"],
        "delta_operation": history["operation"],
        "seconds": round(time.perf_counter() - started, 1),
    }
