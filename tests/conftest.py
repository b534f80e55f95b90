"""Shared fixtures: one settings object with every path under a temporary folder, and one
SparkSession for the whole test session, sized for tiny data (as Splink's and Delta's own test
utilities do)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from jobs.config import Settings, environ_under, load
from jobs.lake import RUN_COLUMNS

TEST_SECRET = "test-hmac-key-not-for-production"


def settings_env(root: Path, **extra: str) -> dict[str, str]:
    """Environment that points every configured path under ``root``, sized for tiny data."""
    env = {k: v for k, v in environ_under(root).items() if not k.startswith("HEALTHLAKE_")
           or k.startswith("HEALTHLAKE_PATHS__")}
    env.update({
        "HEALTHLAKE_SPARK__CONF__SPARK.SQL.SHUFFLE.PARTITIONS": "2",
        "HEALTHLAKE_SPARK__CONF__SPARK.DRIVER.MEMORY": "3g",
        "HEALTHLAKE_SPARK__CONF__SPARK.SQL.WAREHOUSE.DIR": str(root / "warehouse"),
        "HEALTHLAKE_HMAC_KEY": TEST_SECRET,
    })
    env.update(extra)
    return env


def make_settings(root: Path, **extra: str) -> Settings:
    return load(environ=settings_env(root, **extra))


@pytest.fixture(scope="session")
def lake_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("healthlake")


@pytest.fixture(scope="session")
def settings(lake_root: Path) -> Settings:
    return make_settings(lake_root)


@pytest.fixture(scope="session")
def spark(settings: Settings):
    from jobs.spark import get_spark

    session = get_spark(settings, app_name="healthlake-tests",
                        extra_conf={"spark.default.parallelism": "2",
                                    "spark.databricks.delta.snapshotPartitions": "1"})
    yield session
    session.stop()


@pytest.fixture(scope="module", autouse=True)
def release_spark_memory(request, tmp_path_factory):
    """After each module, whatever its jobs left cached or checkpointed in the session's Spark
    is released, as a job's own process would at its end: one long-lived 3g driver otherwise
    fills with earlier modules' blocks until a later job cannot get memory for its tasks
    (``UNABLE_TO_ACQUIRE_MEMORY``, seen in gold after the fault tests). What was left is
    written to spark-memory.log under the run's temporary folder."""
    yield
    from pyspark.sql import SparkSession

    from jobs.spark import release_cached

    session = SparkSession.getActiveSession()  # the session fixture's, once a test asked for it
    if session is not None:
        left = release_cached(session)
        with open(tmp_path_factory.getbasetemp() / "spark-memory.log", "a") as log:
            log.write(f"{request.module.__name__}: {left['rdds']} persisted RDDs, "
                      f"{left['mib_in_memory']} MiB in memory\n")


CITY_DAYS = [dt.date(2024, 4, 15), dt.date(2024, 4, 16), dt.date(2024, 4, 17)]


@pytest.fixture(scope="session")
def ingested_city(spark, settings):
    """A small generated city (2,000 residents, 3 days) ingested into the session lake, with its
    ground truth: shared by every test that needs real bronze data, built once."""
    import pandas as pd

    from jobs.generate import generate
    from jobs.ingest import job as ingest

    summary = generate(settings, residents=2000, start_date=CITY_DAYS[0], days=len(CITY_DAYS))
    runs = {d: ingest.run(spark, settings, d) for d in CITY_DAYS}
    truth = settings.ground_truth_root
    return {"summary": summary, "runs": runs, "days": CITY_DAYS,
            "faults": pd.read_parquet(truth / "faults"),
            "records": pd.read_parquet(truth / "records")}


ER_DAYS = CITY_DAYS[:2]  # two days show incremental linking; a third would add only minutes


@pytest.fixture(scope="session")
def resolved_city(spark, settings, ingested_city):
    """The session city's first two days standardised, resolved and curated day by day; person
    links and persons captured after the first day, to compare with what the second leaves."""
    from jobs.lake import read_table
    from jobs.silver import curate, resolve
    from jobs.silver import job as standardise

    snapshots = {}
    for day in ER_DAYS:
        standardise.run(spark, settings, day)
        resolve.run(spark, settings, day)
        curate.run(spark, settings, day)
        if day == ER_DAYS[0]:
            snapshots["links"] = person_links(spark, settings)
            snapshots["persons"] = read_table(spark, settings, "silver.person").toPandas()
            snapshots["person_attributes"] = read_table(
                spark, settings, "restricted.person_attributes").toPandas()
    return {**ingested_city, **snapshots}


GOLD_YEAR = 2024


@pytest.fixture(scope="session")
def gold_lake(spark, settings, resolved_city):
    """The session city's gold layer for the year (scorecard, metrics, index): built once for
    the publishing and security tests."""
    from jobs.gold import job
    from jobs.gold.metrics import Period

    job.run_days(spark, settings, ER_DAYS, periods=[Period.year(GOLD_YEAR)])
    return settings


def person_links(spark, settings):
    """silver.person_link as pandas, in a stable order."""
    from jobs.lake import read_table

    return (read_table(spark, settings, "silver.person_link").toPandas()
            .sort_values(["extract_date", "feed", "institution_id", "record_key"])
            .reset_index(drop=True))


# -- a small city landed once, for the runners that must agree (Airflow, CLI, a cluster) --------

SMALL_DAYS = [dt.date(2024, 4, 15), dt.date(2024, 4, 16)]
SMALL_RESIDENTS = 300
# Comparing two lakes fed the same files (fingerprints): columns that say when a run happened
# or first saw a file differ by nature, and the quality gates' tables record runs, not data.
WHEN = (*RUN_COLUMNS, "ingested_at")
QUALITY_TABLES = ("ops.dq_results", "ops.feed_counts")
# Short-lived drivers (every spark-submit of the live and fault tests): the C1 compiler only,
# about a third faster here on tiny data, with the code cache the JVM has by default. C1 alone
# gets 48 MiB, and a gold run's generated code needs about 60: "Out of space in CodeCache", the
# JVM dies and the task fails (seen as exit 50 and as a gold task retried in the REST test).
SHORT_LIVED_DRIVER = ("{spark.driver.extraJavaOptions: "
                      "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m}")
# Spark settings for tiny data in every spark-submit the live and fault tests start.
TINY_SPARK = {
    "HEALTHLAKE_SPARK__CONF__SPARK.DRIVER.MEMORY": "1g",
    "HEALTHLAKE_SPARK__CONF__SPARK.DATABRICKS.DELTA.SNAPSHOTPARTITIONS": "1",
    "HEALTHLAKE_SPARK__MASTER": "local[2]",
    "HEALTHLAKE_SPARK__CONF": SHORT_LIVED_DRIVER,
}


@pytest.fixture(scope="session")
def small_city(tmp_path_factory) -> Path:
    """A 300-resident city's two extract days generated once: the landed files, reference data
    and late deliveries under the returned root (copy them with :func:`lake_like`)."""
    from jobs.generate import generate

    root = tmp_path_factory.mktemp("small_city")
    generate(make_settings(root), residents=SMALL_RESIDENTS, start_date=SMALL_DAYS[0],
             days=len(SMALL_DAYS))
    return root


def lake_like(city_root: Path, root: Path, **extra: str) -> Settings:
    """A new lake under ``root`` fed the same files as ``city_root`` (nothing ingested yet)."""
    import shutil

    for part in ("landing", "reference", "late"):
        if (city_root / part).exists():
            shutil.copytree(city_root / part, root / part)
    return make_settings(root, **extra)


def run_pipeline_day(spark, settings: Settings, day: dt.date, quality: bool = True) -> None:
    """One extract date through every job, in the order of the daily DAG (the CLI's run)."""
    from jobs.gold import job as gold
    from jobs.ingest import job as ingest
    from jobs.quality import job as checks
    from jobs.silver import curate, resolve
    from jobs.silver import job as standardise

    ingest.run(spark, settings, day)
    if quality:
        checks.run(spark, settings, day, layers=["ops", "bronze"])
    for job in (standardise, resolve, curate):
        job.run(spark, settings, day)
    if quality:
        checks.run(spark, settings, day, layers=["silver_std", "silver"])
    gold.run(spark, settings, day)
    if quality:
        checks.run(spark, settings, day, layers=["gold"])


@pytest.fixture(scope="session")
def small_city_cli_day1(spark, small_city, tmp_path_factory) -> Settings:
    """The small city's first day run by the CLI's jobs in the session's local Spark: what the
    Airflow DAG and a standalone cluster must leave too."""
    lake = lake_like(small_city, tmp_path_factory.mktemp("small_city_cli"))
    run_pipeline_day(spark, lake, SMALL_DAYS[0])
    return lake
