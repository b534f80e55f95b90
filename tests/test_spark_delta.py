"""The session factory: Delta tables written through the catalogue read back, partitions replace
atomically, and a missing jar cache is a clear error."""

from __future__ import annotations

import pytest
from chispa import assert_df_equality

from jobs import check
from jobs.config import ConfigError
from jobs.lake import read_table, table_exists, write_table
from jobs.spark import cached_jars
from tests.conftest import make_settings


def test_factory_session_has_delta_and_the_configured_settings(spark):
    assert spark.conf.get("spark.sql.extensions") == "io.delta.sql.DeltaSparkSessionExtension"
    assert spark.conf.get("spark.sql.session.timeZone") == "Asia/Shanghai"
    assert spark.conf.get("spark.sql.shuffle.partitions") == "2"
    assert "delta-spark_4.1_2.13" in spark.conf.get("spark.jars")


def test_smoke_check_round_trips_a_delta_table(spark, settings):
    result = check.run(spark, settings)
    assert result["rows_round_trip"] == 3
    assert result["delta_operation"] == "WRITE"
    assert (settings.table_path("ops.smoke_check") / "_delta_log").is_dir()


def test_replace_where_rewrites_one_partition_only(spark, tmp_path):
    settings = make_settings(tmp_path)  # its own lake: ops.ingest_log gets a toy schema here
    schema = "extract_date string, file string, n_rows int"
    day1 = spark.createDataFrame([("2024-04-15", "a.csv", 3), ("2024-04-15", "b.csv", 4)], schema)
    day2 = spark.createDataFrame([("2024-04-16", "c.csv", 5)], schema)
    write_table(day1, settings, "ops.ingest_log", mode="overwrite")
    write_table(day2, settings, "ops.ingest_log")
    rerun = spark.createDataFrame([("2024-04-15", "a.csv", 30)], schema)
    write_table(rerun, settings, "ops.ingest_log", replace_where="extract_date = '2024-04-15'")
    expected = spark.createDataFrame([("2024-04-15", "a.csv", 30), ("2024-04-16", "c.csv", 5)],
                                     schema)
    assert_df_equality(read_table(spark, settings, "ops.ingest_log"), expected,
                       ignore_row_order=True, ignore_column_order=True)
    assert (settings.table_path("ops.ingest_log") / "extract_date=2024-04-16").is_dir()


def test_reading_a_table_never_written_is_a_clear_error(spark, tmp_path):
    settings = make_settings(tmp_path)
    assert not table_exists(spark, settings, "bronze.referrals")
    with pytest.raises(FileNotFoundError, match="bronze.referrals has not been written"):
        read_table(spark, settings, "bronze.referrals")


def test_missing_jar_cache_says_how_to_fix_it(tmp_path):
    settings = make_settings(tmp_path, HEALTHLAKE_SPARK__JARS_DIR=str(tmp_path / "nojars"))
    with pytest.raises(ConfigError, match="run `make jars`"):
        cached_jars(settings)
