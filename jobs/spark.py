"""The one SparkSession factory, and the offline cache of Delta Lake's jars.

Delta's Python wheel carries no JVM code: its jar comes from Maven Central. ``resolve_jars``
fetches it once through Spark's own Ivy resolver into ``<cache_root>/ivy`` and copies the jars
into ``spark.jars_dir``; every later session loads those files with ``spark.jars`` and needs no
network (tests, Airflow tasks, air-gapped clusters).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from jobs import operations
from jobs.config import ConfigError, Settings

log = logging.getLogger(__name__)

DELTA_SQL_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def jars_dir(settings: Settings) -> Path:
    return settings.path(settings.spark.jars_dir)


def cached_jars(settings: Settings) -> list[Path]:
    """The Delta jars (and their dependencies) in the local cache; error if not resolved yet."""
    directory = jars_dir(settings)
    jars = sorted(directory.glob("*.jar"))
    wanted = [p.split(":")[1] for p in settings.spark.delta_packages]
    missing = [a for a in wanted if not any(j.name.startswith(a + "-") for j in jars)]
    if missing:
        raise ConfigError(
            f"Delta jars {missing} are not in {directory}: run `make jars` (or `healthlake jars`) "
            "once with access to Maven Central")
    return jars


def splink_jar() -> Path | None:
    """The Jaro-Winkler & co. UDF jar bundled in the splink wheel, when splink is installed."""
    try:
        import splink
    except ImportError:
        return None
    jar = Path(splink.__file__).parent / "internals/files/spark_jars"
    found = sorted(jar.glob("scala-udf-similarity-*_spark4.x.jar"))
    return found[-1] if found else None


def _python_env() -> None:
    # Executors and the driver must run this interpreter (the venv's), also on a cluster.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


def get_spark(settings: Settings, app_name: str | None = None, extra_conf: dict | None = None):
    """Build (or return the running) SparkSession with Delta, the cached jars and our settings.

    One per process: jobs, Airflow tasks and the test session all come through here.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    _python_env()
    jars = [str(j) for j in cached_jars(settings)]
    if (sj := splink_jar()) is not None:
        jars.append(str(sj))
    builder = (
        SparkSession.builder.master(settings.spark.master)
        .appName(app_name or settings.spark.app_name)
        .config("spark.jars", ",".join(jars))
        .config("spark.sql.extensions", DELTA_SQL_EXTENSION)
        .config("spark.sql.catalog.spark_catalog", DELTA_CATALOG)
    )
    conf = dict(settings.spark.conf)
    if "spark.sql.warehouse.dir" in conf:
        conf["spark.sql.warehouse.dir"] = str(settings.path(conf["spark.sql.warehouse.dir"]))
    conf.update(extra_conf or {})
    scratch = _session_scratch(settings)
    if scratch is not None and "spark.local.dir" not in conf:
        # Spill, shuffle and broadcast files of jobs that touch identifiers: set before the JVM
        # starts, inside the restricted zone (a local master's; a cluster's executors spill
        # where their workers' SPARK_LOCAL_DIRS say).
        conf["spark.local.dir"] = str(operations.private_dir(scratch / "spill"))
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if scratch is not None:
        _scratch["session"] = scratch
        _scratch["configured"] = bool(settings.spark.checkpoint_dir)
        _scratch["checkpoints"] = checkpoint_dir(settings, scratch)
        spark.sparkContext.setCheckpointDir(_scratch["checkpoints"])
    return spark


# This process's session scratch folder and the checkpoint folder its session uses between
# jobs (see :func:`job_scratch`).
_scratch: dict[str, object] = {}


def _session_scratch(settings: Settings) -> Path | None:
    """The session's private folder under ``<restricted>/_scratch`` (stale folders of dead runs
    removed first), removed when the process ends; None for an account that cannot write the
    restricted zone (an analyst's: it reads no identifiers, so Spark's defaults serve)."""
    restricted = settings.local_dir("restricted")
    probe = restricted if restricted.exists() else restricted.parent
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        return None
    folder = operations.run_scratch(settings, "session")
    atexit.register(operations.remove_scratch, folder)
    return folder


def checkpoint_dir(settings: Settings, scratch: Path) -> str:
    """Where a session or job checkpoints: ``spark.checkpoint_dir`` when configured (inside the
    restricted zone, checked by the configuration), else ``<scratch>/checkpoints``."""
    configured = settings.spark.checkpoint_dir
    if configured:
        return configured if "://" in configured else str(settings.path(configured))
    return str(operations.private_dir(scratch / "checkpoints"))


_job_counter = itertools.count(1)


@contextmanager
def job_scratch(spark, settings: Settings, name: str) -> Iterator[Path]:
    """A job's private working folder (``<restricted>/_scratch/<run>/<name>-<n>``, 0700) for
    the body: Spark's and Splink's checkpoints go there (``setCheckpointDir``), and the job may
    write its own working files there. Removed when the body ends, also on failure; the
    session's checkpoint folder is then in use again. A long-lived session (the tests', a
    benchmark's) runs many jobs, each in its own folder; nested uses share the outer folder."""
    if "job" in _scratch:
        yield _scratch["job"]
        return
    folder = operations.run_scratch(settings, f"{name}-{next(_job_counter)}")
    sc = spark.sparkContext
    sc.setCheckpointDir(checkpoint_dir(settings, folder))
    _scratch["job"] = folder
    try:
        yield folder
    finally:
        del _scratch["job"]
        operations.remove_scratch(folder)
        if "checkpoints" in _scratch:
            sc.setCheckpointDir(_scratch["checkpoints"])


def parallel_jobs(spark, per_core: int = 1, most: int = 4) -> int:
    """How many Spark jobs a job submits side by side from its driver threads (feeds,
    table commits): at least two, so planning one overlaps running another, ``per_core`` per
    core of the session, at most ``most``."""
    return max(2, min(most, spark.sparkContext.defaultParallelism * per_core))


def release_cached(spark) -> dict:
    """Drop every block a finished job left in a long-lived session (cached tables, persisted
    and checkpointed data such as Splink's and gold's), and collect the garbage that holds them,
    as a job's own process does by ending. For drivers that run many jobs one after another
    (the tests' session, a benchmark's sitting); never while another job is running. Returns
    what was left: persisted RDDs and the MiB of them still in memory."""
    import gc

    sc = spark.sparkContext
    rdds = list(sc._jsc.getPersistentRDDs().values())
    left = {"rdds": len(rdds),
            "mib_in_memory": round(sum(i.memSize() for i in sc._jsc.sc().getRDDStorageInfo())
                                   / 2**20, 1)}
    spark.catalog.clearCache()
    for rdd in rdds:
        rdd.unpersist(False)
    gc.collect()
    sc._jvm.System.gc()
    _renew_checkpoints(sc)
    return left


def _renew_checkpoints(sc) -> None:
    """Remove what finished jobs checkpointed into the session's folder (Splink's tables hold
    identifiers) and checkpoint into a fresh one from now on."""
    session = _scratch.get("session")
    if session is None or "job" in _scratch or _scratch.get("configured"):
        return
    folder = Path(_scratch["checkpoints"])
    shutil.rmtree(folder, ignore_errors=True)
    sc.setCheckpointDir(str(operations.private_dir(folder)))


def resolve_jars(settings: Settings) -> list[Path]:
    """Fetch the configured Delta packages through Spark's Ivy once and copy them to the cache.

    Does nothing when the cache already holds them, so it is safe to call from every `make`.
    """
    try:
        return cached_jars(settings)
    except ConfigError:
        pass
    from pyspark.sql import SparkSession

    _python_env()
    ivy = settings.path(settings.paths.cache_root) / "ivy"
    log.info("resolving %s through Ivy into %s", settings.spark.delta_packages, ivy)
    spark = (
        SparkSession.builder.master("local[1]")
        .appName("healthlake-resolve-jars")
        .config("spark.jars.packages", ",".join(settings.spark.delta_packages))
        .config("spark.jars.ivy", str(ivy))
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.stop()
    target = jars_dir(settings)
    target.mkdir(parents=True, exist_ok=True)
    for jar in _not_in_spark(sorted((ivy / "jars").glob("*.jar"))):
        shutil.copy2(jar, target / jar.name.split("_", 1)[1])  # drop Ivy's "<group>_" prefix
    return cached_jars(settings)


def _artifact(jar_name: str) -> str:
    """'jackson-core-2.13.5.jar' -> 'jackson-core'."""
    return re.sub(r"-\d[\w.\-]*\.jar$", "", jar_name)


def _not_in_spark(ivy_jars: list[Path]) -> list[Path]:
    """Keep only what Spark's own distribution lacks, so no older duplicate (Jackson, Hadoop,
    Parquet) lands on the classpath beside Spark's own."""
    import pyspark

    shipped = {_artifact(j.name) for j in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    return [j for j in ivy_jars if _artifact(j.name.split("_", 1)[1]) not in shipped]
