"""What the Airflow DAGs need from the project, as plain Python (no Airflow, no Spark imports).

* **Which extract date a run processes.** The daily DAG's timetable has one data interval per
  local day in Asia/Shanghai: ``[D 00:00, D+1 00:00)`` local; the run starts when the interval
  ends, at local midnight of D+1, and its logical date is the interval's start, local midnight of
  D. That run processes ``landing/D/``. Airflow stores the logical date in UTC
  (``2024-04-15T00:00+08:00`` is ``2024-04-14T16:00Z``), so ``ds`` is the *previous* day: the
  extract date is always the logical date converted to the configured time zone
  (:func:`extract_date_of`), never ``ds``.
* **How a task runs a job.** Every task runs the ``healthlake`` CLI through ``spark-submit``
  against the configured master (:func:`spark_submit_argv`), with the same jars and Spark
  settings as :func:`jobs.spark.get_spark` would use, so a DAG drives a cluster by configuration.
* **The orchestration settings** (``orchestration`` section, conf/base/orchestration.yaml).
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from jobs.config import Settings, build_dataclass, require

# The Airflow Asset the daily DAG's gold task updates (the index report DAG is scheduled on it).
# "x-" marks a scheme of our own: Airflow normalises no such URI.
GOLD_ASSET_NAME = "healthlake_gold"
GOLD_ASSET_URI = "x-healthlake://curated/gold"

MANIFEST = "_manifest.json"  # the same name jobs.ingest.plan reads
MIN_VACUUM_RETENTION_HOURS = 168  # 7 days: readers and time travel keep working over a week
_LOCAL_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class LocalAirflowSettings:
    """``orchestration.local_airflow``: where `make airflow` keeps its state and listens."""

    home: str = ".cache/airflow"
    host: str = "127.0.0.1"
    port: int = 28080
    user: str = "admin"


@dataclass(frozen=True)
class OrchestrationSettings:
    """The ``orchestration`` section: waiting, retries, the Delta pool, maintenance."""

    start_date: str = "2024-01-01"
    manifests_cutoff_local_time: str = "06:00"
    manifests_poll_seconds: int = 300
    retries: int = 3
    retry_delay_minutes: int = 5
    retry_backoff_multiplier: float = 2.0
    max_retry_delay_minutes: int = 60
    delta_pool: str = "healthlake_delta"
    vacuum_retention_hours: int = MIN_VACUUM_RETENTION_HOURS
    maintenance_zorder_by: dict[str, list[str]] = field(default_factory=dict)
    local_airflow: LocalAirflowSettings = field(default_factory=lambda: LocalAirflowSettings())

    @property
    def first_extract_date(self) -> dt.date:
        return dt.date.fromisoformat(self.start_date)

    @property
    def cutoff_time(self) -> dt.time:
        hours, minutes = self.manifests_cutoff_local_time.split(":")
        return dt.time(int(hours), int(minutes))


def orchestration_settings(settings: Settings) -> OrchestrationSettings:
    """The validated ``orchestration`` section; a wrong value names its key and file."""
    o = settings.origins
    orch = build_dataclass(OrchestrationSettings, settings.orchestration, "orchestration", o)
    try:
        dt.date.fromisoformat(orch.start_date)
        valid_start = True
    except ValueError:
        valid_start = False
    require(valid_start, "orchestration.start_date", o, "expected a date, YYYY-MM-DD")
    require(bool(_LOCAL_TIME.match(orch.manifests_cutoff_local_time)),
            "orchestration.manifests_cutoff_local_time", o, "expected a local time, HH:MM")
    require(orch.manifests_poll_seconds > 0, "orchestration.manifests_poll_seconds", o,
            "must be positive")
    require(orch.retries >= 0, "orchestration.retries", o, "must not be negative")
    require(orch.retry_backoff_multiplier >= 1, "orchestration.retry_backoff_multiplier", o,
            "must be at least 1 (1 means a constant delay)")
    require(orch.vacuum_retention_hours >= MIN_VACUUM_RETENTION_HOURS,
            "orchestration.vacuum_retention_hours", o,
            f"must be at least {MIN_VACUUM_RETENTION_HOURS} (7 days)")
    require(bool(orch.delta_pool.strip()), "orchestration.delta_pool", o, "must not be empty")
    for table, columns in orch.maintenance_zorder_by.items():
        key = f"orchestration.maintenance_zorder_by.{table}"
        require(table in settings.tables, key, o, "not a table of the catalogue")
        require(bool(columns), key, o, "name at least one column")
    require(0 < orch.local_airflow.port < 65536, "orchestration.local_airflow.port", o,
            "expected a TCP port")
    return orch


def task_defaults(orch: OrchestrationSettings) -> dict:
    """``default_args`` of every healthlake task: retries with exponential back-off."""
    return {
        "retries": orch.retries,
        "retry_delay": dt.timedelta(minutes=orch.retry_delay_minutes),
        "retry_exponential_backoff": orch.retry_backoff_multiplier,
        "max_retry_delay": dt.timedelta(minutes=orch.max_retry_delay_minutes),
    }


def dag_arguments(orch: OrchestrationSettings, timezone: str, doc_md: str | None,
                  tags: list[str]) -> dict:
    """What every healthlake DAG shares: start (the first extract date, local midnight), no
    catch-up, one run at a time, the task defaults, its docs and tags."""
    import pendulum

    first = orch.first_extract_date
    return {"start_date": pendulum.datetime(first.year, first.month, first.day, tz=timezone),
            "catchup": False, "max_active_runs": 1, "default_args": task_defaults(orch),
            "doc_md": doc_md, "tags": ["healthlake", *tags]}


# -- dates --------------------------------------------------------------------------------


def extract_date_of(logical_date: dt.datetime | None, timezone: str = "Asia/Shanghai") -> dt.date:
    """The extract date a daily run processes: its logical date's calendar day in ``timezone``.

    ``2024-04-15T16:00Z`` (local midnight of 2024-04-16) -> 2024-04-16, whereas its ``ds`` is
    2024-04-15. A naive datetime is refused: it could be either day.
    """
    if logical_date is None:
        raise ValueError("this run has no logical date: trigger it with one "
                         "(logical_date=2024-04-15T00:00:00+08:00 for extract date 2024-04-15)")
    if logical_date.tzinfo is None or logical_date.utcoffset() is None:
        raise ValueError(f"logical date {logical_date} has no time zone")
    return logical_date.astimezone(ZoneInfo(timezone)).date()


def manifests_cutoff(extract_date: dt.date, cutoff: dt.time,
                     timezone: str = "Asia/Shanghai") -> dt.datetime:
    """When the run for ``extract_date`` stops waiting: ``cutoff`` local time on the next day."""
    next_day = extract_date + dt.timedelta(days=1)
    return dt.datetime.combine(next_day, cutoff, tzinfo=ZoneInfo(timezone))


def report_extract_dates(event_extract_dates: list[str],
                         logical_date: dt.datetime | None,
                         timezone: str = "Asia/Shanghai") -> list[dt.date]:
    """Extract dates an index-report run refreshes the years of.

    Triggered by the gold asset: the extract dates its events carry. On its monthly schedule:
    the last day of the month before the logical date's local month.
    """
    if event_extract_dates:
        return sorted({dt.date.fromisoformat(d) for d in event_extract_dates})
    first_of_month = extract_date_of(logical_date, timezone).replace(day=1)
    return [first_of_month - dt.timedelta(days=1)]


# -- landing ------------------------------------------------------------------------------


def missing_manifests(landing_root: Path, extract_date: dt.date,
                      expected_institutions: list[str]) -> list[str]:
    """Institutions of ``expected_institutions`` with no ``landing/<date>/<id>/_manifest.json``."""
    day_dir = Path(landing_root) / extract_date.isoformat()
    return [i for i in expected_institutions if not (day_dir / i / MANIFEST).is_file()]


# -- spark-submit -------------------------------------------------------------------------


def entrypoint() -> Path:
    """The application file spark-submit runs (it calls the healthlake CLI)."""
    return Path(__file__).resolve().parent / "entrypoint.py"


def spark_submit_argv(settings: Settings, cli_args: list[str],
                      python: str | None = None) -> list[str]:
    """``spark-submit`` running ``healthlake <cli_args>`` against the configured master.

    spark-submit starts the driver's JVM itself, so whatever must be known at JVM start (the
    Delta and Splink jars, driver memory, the Delta extension) goes on its command line rather
    than through the session builder. ``python`` (default: this interpreter, the project's venv)
    runs the driver and the executors.
    """
    from jobs.spark import DELTA_CATALOG, DELTA_SQL_EXTENSION, cached_jars, splink_jar

    python = python or sys.executable
    jars = [str(j) for j in cached_jars(settings)]
    if (sj := splink_jar()) is not None:
        jars.append(str(sj))
    conf = {
        "spark.sql.extensions": DELTA_SQL_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        "spark.pyspark.python": python,
        "spark.pyspark.driver.python": python,
        **settings.spark.conf,
    }
    if "spark.sql.warehouse.dir" in conf:
        conf["spark.sql.warehouse.dir"] = str(settings.path(conf["spark.sql.warehouse.dir"]))
    argv = [str(Path(python).parent / "spark-submit"),
            "--master", settings.spark.master,
            "--name", f"healthlake-{cli_args[0]}",
            "--jars", ",".join(jars)]
    for key, value in conf.items():
        argv += ["--conf", f"{key}={value}"]
    return [*argv, str(entrypoint()), *cli_args]


def spark_home() -> str:
    """The Spark installation spark-submit needs: this interpreter's pyspark package (found
    without importing it). Set explicitly, so a task does not depend on which ``python3``
    comes first on the worker's PATH."""
    import importlib.util

    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        raise RuntimeError(f"pyspark is not installed for {sys.executable}")
    return str(Path(spec.origin).parent)


def spark_submit_shell(settings: Settings, cli_args: list[str]) -> str:
    """The shell line of a task: ``SPARK_HOME=... spark-submit ... healthlake <cli_args>``."""
    argv = spark_submit_argv(settings, [str(a) for a in cli_args])
    return f"SPARK_HOME={shlex.quote(spark_home())} {shlex.join(argv)}"


def spark_submit_command(cli_args: list[str]) -> str:
    """The shell command of an Airflow task: load the configuration now, at run time."""
    from jobs.config import load

    return spark_submit_shell(load(), cli_args)


def daily_job_command(command: str, logical_date: dt.datetime | None, *args: str) -> str:
    """``healthlake <command> --date <extract date of the run> [args]`` through spark-submit."""
    from jobs.config import load

    settings = load()
    day = extract_date_of(logical_date, settings.timezone)
    return spark_submit_shell(settings, [command, "--date", day.isoformat(), *args])


def daily_python_command(command: str, logical_date: dt.datetime | None, *args: str) -> str:
    """``healthlake <command> --date D [args]`` in plain Python, for the commands that start no
    Spark (``ingest-read``): no JVM to wait for."""
    from jobs.config import load

    day = extract_date_of(logical_date, load().timezone)
    return shlex.join([sys.executable, str(entrypoint()), command, "--date", day.isoformat(),
                       *args])


def _report_years(event_extract_dates: list[str], logical_date: dt.datetime | None,
                  settings: Settings) -> dict[int, dt.date]:
    """Each year a report run covers -> its latest extract date."""
    latest_of_year: dict[int, dt.date] = {}
    for day in report_extract_dates(event_extract_dates, logical_date, settings.timezone):
        latest_of_year[day.year] = max(day, latest_of_year.get(day.year, day))
    return dict(sorted(latest_of_year.items()))


def index_report_command(event_extract_dates: list[str],
                         logical_date: dt.datetime | None) -> str:
    """``healthlake gold --date D --year Y`` for every year the report run refreshes (D: the
    latest extract date of that year), one spark-submit after the other."""
    from jobs.config import load

    settings = load()
    return " && ".join(
        spark_submit_shell(settings, ["gold", "--date", day.isoformat(), "--year", str(year)])
        for year, day in _report_years(event_extract_dates, logical_date, settings).items())


# What the report DAG publishes each year it refreshes (exports are suppressed by publish.yaml).
PUBLISHED_TABLES = ["gold.metric_value", "gold.index_score", "gold.index_indicator"]


def publish_command(event_extract_dates: list[str], logical_date: dt.datetime | None) -> str:
    """``healthlake export <gold tables> --period Y --format xlsx`` and ``healthlake report
    --year Y`` for every year the report run refreshes."""
    from jobs.config import load

    settings = load()
    steps = []
    for year in _report_years(event_extract_dates, logical_date, settings):
        steps.append(spark_submit_shell(settings, ["export", *PUBLISHED_TABLES, "--period",
                                                   str(year), "--format", "xlsx"]))
        steps.append(spark_submit_shell(settings, ["report", "--year", str(year)]))
    return " && ".join(steps)
