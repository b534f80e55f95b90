"""Zones addressed by URI (``hdfs://``, ``s3a://`` ... here ``file://``): the lake is where the
URIs say, the local state (writer lock, Great Expectations project, staged reads) under
``paths.local_state``, and a day leaves the tables a day on local directories leaves."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from jobs.config import PROJECT_ROOT, ConfigError
from tests.conftest import SMALL_DAYS, lake_like


def uri_env(root: Path) -> dict[str, str]:
    return {f"HEALTHLAKE_PATHS__ZONES__{zone.upper()}": (root / "lake" / zone).as_uri()
            for zone in ("restricted", "curated", "ops")} | {
        "HEALTHLAKE_PATHS__LOCAL_STATE": str(root / "local-state")}


def test_uri_zones_are_located_not_pathed(tmp_path):
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, **uri_env(tmp_path))
    assert settings.zone_location("curated") == f"file://{tmp_path}/lake/curated"
    assert settings.table_location("silver.person").startswith(f"file://{tmp_path}/lake/")
    assert settings.local_dir("ops") == tmp_path / "local-state" / "ops"
    with pytest.raises(ConfigError, match="not a local directory"):
        settings.zone_root("ops")
    local = make_settings(tmp_path / "plain")  # a plain directory keeps its state inside it
    assert settings.zone_is_uri("ops") and not local.zone_is_uri("ops")
    assert local.local_dir("ops") == local.zone_root("ops")
    assert local.table_location("silver.person") == str(local.table_path("silver.person"))


def test_a_day_on_uri_zones_leaves_the_local_day_s_tables(
        spark, small_city, small_city_cli_day1, tmp_path_factory):
    from jobs.gold import job as gold
    from jobs.ingest import job as ingest
    from jobs.lake import RUN_COLUMNS, fingerprint, table_version
    from jobs.publish import sql
    from jobs.quality import job as checks
    from jobs.silver import curate, resolve
    from jobs.silver import job as standardise

    root = tmp_path_factory.mktemp("uri_zones")
    lake = lake_like(small_city, root, **uri_env(root))
    day: dt.date = SMALL_DAYS[0]
    ingest.run(spark, lake, day)
    for job in (standardise, resolve, curate, gold):
        job.run(spark, lake, day)
    checks.run(spark, lake, day, layers=["gold"])

    # every table but the quality results (only gold's checks ran here), each file's first
    # sighting (ingested_at: when this run saw it) aside
    tables = tuple(t for t in fingerprint(spark, lake) if t != "ops.dq_results")
    ignore = (*RUN_COLUMNS, "ingested_at")
    written = fingerprint(spark, lake, ignore=ignore, tables=tables)
    assert "silver.person" in written and "gold.metric_value" in written
    assert written == fingerprint(spark, small_city_cli_day1, ignore=ignore, tables=tables)
    assert (root / "lake" / "curated" / "silver" / "person" / "_delta_log").is_dir()
    assert table_version(lake, "gold.metric_value", spark) == 0
    with pytest.raises(ValueError, match="needs a SparkSession"):
        table_version(lake, "gold.metric_value")
    # local state beside, not inside, the URI zones; nothing written to a path "file:/..."
    assert (root / "local-state" / "ops" / "great_expectations").is_dir()
    assert not any(p.name.startswith("file:") for p in [*PROJECT_ROOT.iterdir(),
                                                         *Path.cwd().iterdir()])
    # analysts' SQL: tables registered at the URI locations; the restricted zone refused.
    # (One session here serves several lakes: earlier tests' registrations go first, and ours
    # after; dropping an external table leaves its files alone.)
    def unregister():
        for name in sql.analyst_catalogue(lake, sql.load_publish(lake)).tables:
            spark.sql(f"DROP TABLE IF EXISTS {name}")

    unregister()
    try:
        rows, _ = sql.query(spark, lake, "SELECT count(*) AS n FROM silver.person")
        assert int(rows.iloc[0]["n"]) == written["silver.person"][0]
        with pytest.raises(sql.RefusedQuery, match="restricted zone"):
            sql.query(spark, lake, "SELECT * FROM bronze.encounters")
    finally:
        unregister()
