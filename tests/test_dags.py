"""The Airflow DAGs: they import, have the expected task graph, parse fast, pass ruff's AIR rules,
and process the right extract date on the time-zone edge. No Spark, no scheduler, no database:
Airflow writes only into a temporary AIRFLOW_HOME."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pendulum
import pytest

from jobs.config import ConfigError, load
from jobs.contracts import load_contracts
from jobs.orchestration import (
    extract_date_of,
    manifests_cutoff,
    missing_manifests,
    orchestration_settings,
    report_extract_dates,
    spark_submit_argv,
)

ROOT = Path(__file__).resolve().parent.parent
DAGS = ROOT / "dags"
VENV_BIN = Path(sys.executable).parent
SHANGHAI = "Asia/Shanghai"
UTC = dt.UTC

# In the task group "ingest": a read task per feed (no Spark), then one commit.
READS = [f"ingest.{feed}" for feed in sorted(load_contracts().feeds)]
EXPECTED = {
    "healthlake_daily": {
        "wait_for_manifests": [],
        **{task: ["wait_for_manifests"] for task in READS},
        "ingest.commit": READS,
        "check_bronze": ["ingest.commit"],
        "standardise": ["check_bronze"],
        "resolve": ["standardise"],
        "curate": ["resolve"],
        "check_silver": ["curate"],
        "gold": ["check_silver"],
        "check_gold": ["gold"],
    },
    "healthlake_index_report": {"refresh_year": [], "publish_year": ["refresh_year"]},
    "healthlake_maintenance": {"optimize_and_vacuum": []},
}
# Tasks that write Delta tables: each takes the one slot of the Delta pool.
WRITERS = {"ingest.commit", "check_bronze", "standardise", "resolve", "curate", "check_silver",
           "gold", "check_gold", "refresh_year", "optimize_and_vacuum"}


def _airflow_env(home: Path) -> dict[str, str]:
    return {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS)}


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    """Every DAG of dags/, parsed once by Airflow's own DagBag (AIRFLOW_HOME in a tmp dir)."""
    home = tmp_path_factory.mktemp("airflow_home")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in _airflow_env(home).items():
            mp.setenv(key, value)
        from airflow.dag_processing.dagbag import DagBag

        pool = orchestration_settings(load()).delta_pool
        yield DagBag(dag_folder=str(DAGS), known_pools={pool, "default_pool"})


def test_every_dag_file_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == set(EXPECTED)
    assert not any(Path(ROOT).glob("airflow.cfg")), "Airflow must not write into the repo"


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_task_graph(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert {t: sorted(dag.get_task(t).upstream_task_ids) for t in dag.task_ids} == EXPECTED[dag_id]
    assert dag.doc_md and all(dag.get_task(t).doc_md for t in dag.task_ids)
    assert dag.catchup is False and dag.max_active_runs == 1


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_writers_share_the_delta_pool_and_retry_with_backoff(dagbag, dag_id):
    orch = orchestration_settings(load())
    for task in dagbag.dags[dag_id].tasks:
        assert task.retries == orch.retries
        assert task.retry_exponential_backoff == orch.retry_backoff_multiplier > 1
        assert task.max_retry_delay == dt.timedelta(minutes=orch.max_retry_delay_minutes)
        if task.task_id in WRITERS:
            assert task.pool == orch.delta_pool, task.task_id
        else:
            assert task.pool != orch.delta_pool, f"{task.task_id} must not hold the Delta pool"


def test_daily_dag_waits_deferred_and_gold_emits_the_asset(dagbag):
    from jobs.landing_sensor import ManifestsSensor

    dag = dagbag.dags["healthlake_daily"]
    assert isinstance(dag.get_task("wait_for_manifests"), ManifestsSensor)
    assert [a.name for a in dag.get_task("check_gold").outlets] == ["healthlake_gold"]
    report = dagbag.dags["healthlake_index_report"]  # on that asset, or monthly
    assert report.timetable.asset_condition == dag.get_task("check_gold").outlets[0]
    assert report.timetable.timetable.expression == "0 3 1 * *"


def test_daily_timetable_runs_local_midnight_for_the_previous_local_day(dagbag):
    """The run that starts at local midnight of 2024-04-16 has the data interval of 2024-04-15
    (local) and its logical date gives extract date 2024-04-15, although its ``ds`` (UTC) is
    2024-04-14."""
    from airflow.timetables.base import DataInterval
    from airflow.timetables.interval import CronDataIntervalTimetable

    sdk_timetable = dagbag.dags["healthlake_daily"].timetable
    assert (sdk_timetable.expression, str(sdk_timetable.timezone)) == ("0 0 * * *", SHANGHAI)
    timetable = CronDataIntervalTimetable(sdk_timetable.expression, sdk_timetable.timezone)
    last = DataInterval(pendulum.datetime(2024, 4, 14, tz=SHANGHAI),
                        pendulum.datetime(2024, 4, 15, tz=SHANGHAI))
    from airflow.timetables.base import TimeRestriction

    info = timetable.next_dagrun_info(
        last_automated_data_interval=last,
        restriction=TimeRestriction(earliest=None, latest=None, catchup=True))
    assert info.run_after == pendulum.datetime(2024, 4, 16, tz=SHANGHAI)
    assert info.logical_date.in_timezone("UTC").to_date_string() == "2024-04-14"  # ds: wrong
    assert extract_date_of(info.logical_date) == dt.date(2024, 4, 15)


# -- the extract-date helper and friends (pure) ---------------------------------------------


def test_extract_date_is_the_local_day_of_the_logical_date():
    local_midnight = dt.datetime(2024, 4, 15, 16, 0, tzinfo=UTC)  # 2024-04-16T00:00+08:00
    assert extract_date_of(local_midnight) == dt.date(2024, 4, 16)
    assert extract_date_of(local_midnight - dt.timedelta(seconds=1)) == dt.date(2024, 4, 15)
    assert extract_date_of(pendulum.datetime(2024, 4, 16, tz=SHANGHAI)) == dt.date(2024, 4, 16)
    assert extract_date_of(local_midnight, "UTC") == dt.date(2024, 4, 15)  # the ds trap


@pytest.mark.parametrize("bad", [None, dt.datetime(2024, 4, 16)])
def test_extract_date_needs_an_aware_logical_date(bad):
    with pytest.raises(ValueError, match="logical date"):
        extract_date_of(bad)


def test_manifests_cutoff_is_local_time_on_the_next_day():
    cutoff = manifests_cutoff(dt.date(2024, 4, 15), dt.time(6, 0))
    assert cutoff == dt.datetime(2024, 4, 15, 22, 0, tzinfo=UTC)


def test_report_dates_from_asset_events_or_the_month_just_ended():
    assert report_extract_dates(["2024-04-16", "2024-04-15", "2024-04-16"], None) == [
        dt.date(2024, 4, 15), dt.date(2024, 4, 16)]
    first_of_may = pendulum.datetime(2024, 5, 1, 3, tz=SHANGHAI)  # 2024-04-30T19:00Z
    assert report_extract_dates([], first_of_may) == [dt.date(2024, 4, 30)]
    first_of_year = pendulum.datetime(2025, 1, 1, 3, tz=SHANGHAI)
    assert report_extract_dates([], first_of_year) == [dt.date(2024, 12, 31)]


def test_the_report_dag_publishes_each_year_it_refreshes():
    from jobs.orchestration import publish_command

    command = publish_command(["2024-12-31", "2025-01-01"], None)
    steps = command.split(" && ")
    assert len(steps) == 4
    assert steps[0].endswith("export gold.metric_value gold.index_score gold.index_indicator "
                             "--period 2024 --format xlsx")
    assert steps[1].endswith("report --year 2024") and steps[3].endswith("report --year 2025")


def test_missing_manifests(tmp_path):
    (tmp_path / "2024-04-15" / "A").mkdir(parents=True)
    (tmp_path / "2024-04-15" / "A" / "_manifest.json").write_text("{}")
    (tmp_path / "2024-04-15" / "B").mkdir()  # files but no manifest yet
    assert missing_manifests(tmp_path, dt.date(2024, 4, 15), ["A", "B", "C"]) == ["B", "C"]


def test_orchestration_settings_refuse_a_short_vacuum_retention():
    env = {**os.environ, "HEALTHLAKE_ORCHESTRATION__VACUUM_RETENTION_HOURS": "24"}
    with pytest.raises(ConfigError, match="vacuum_retention_hours.*at least 168"):
        orchestration_settings(load(environ=env))


def test_spark_submit_command_targets_the_configured_master(monkeypatch):
    import jobs.spark

    monkeypatch.setattr(jobs.spark, "cached_jars", lambda s: [Path("/jars/delta-spark.jar")])
    monkeypatch.setattr(jobs.spark, "splink_jar", lambda: None)
    env = {**os.environ, "HEALTHLAKE_SPARK__MASTER": "spark://127.0.0.1:7077"}
    argv = spark_submit_argv(load(environ=env), ["ingest", "--date", "2024-04-15"],
                             python="/venv/bin/python")
    assert argv[0] == "/venv/bin/spark-submit"
    assert argv[argv.index("--master") + 1] == "spark://127.0.0.1:7077"
    assert argv[argv.index("--jars") + 1] == "/jars/delta-spark.jar"
    assert "spark.driver.memory=6g" in argv and "spark.pyspark.python=/venv/bin/python" in argv
    assert argv[-4:] == [str(ROOT / "jobs/entrypoint.py"), "ingest", "--date", "2024-04-15"]


def test_entrypoint_runs_the_cli_as_spark_submit_would():
    """spark-submit runs jobs/entrypoint.py as a script; `config` needs no Spark."""
    out = subprocess.run([sys.executable, str(ROOT / "jobs/entrypoint.py"), "--json", "config"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT / "jobs")
    assert out.returncode == 0, out.stderr
    assert '"timezone": "Asia/Shanghai"' in out.stdout


def test_maintenance_refuses_a_retention_below_7_days_before_spark_starts():
    from jobs import maintenance
    from jobs.cli import main

    with pytest.raises(ConfigError, match="below 168 h"):
        maintenance.check_retention(167)
    assert maintenance.check_retention(168) == 168
    assert main(["maintenance", "--retention-hours", "24"]) == 2


# -- the manifests wait ------------------------------------------------------------------


def _first_event(trigger):
    async def first():
        async for event in trigger.run():
            return event.payload
    return asyncio.run(asyncio.wait_for(first(), timeout=30))


def test_manifests_trigger_fires_when_all_arrived_or_at_the_cutoff(tmp_path):
    from jobs.landing_sensor import ManifestsTrigger

    day = tmp_path / "2024-04-15"
    for inst in ("A", "B"):
        (day / inst).mkdir(parents=True)
    (day / "A" / "_manifest.json").write_text("{}")
    future = (dt.datetime.now(UTC) + dt.timedelta(hours=1)).isoformat()
    past = (dt.datetime.now(UTC) - dt.timedelta(seconds=1)).isoformat()

    at_cutoff = ManifestsTrigger(str(tmp_path), "2024-04-15", ["A", "B"], past, 0.01)
    assert _first_event(at_cutoff) == {"reason": "cut-off", "missing": ["B"]}

    (day / "B" / "_manifest.json").write_text("{}")
    complete = ManifestsTrigger(str(tmp_path), "2024-04-15", ["A", "B"], future, 0.01)
    assert _first_event(complete) == {"reason": "all arrived", "missing": []}

    classpath, kwargs = complete.serialize()  # what the triggerer re-imports
    assert classpath == "jobs.landing_sensor.ManifestsTrigger"
    assert ManifestsTrigger(**kwargs).serialize() == (classpath, kwargs)


def test_manifests_sensor_defers_before_the_cutoff_and_goes_on_after_it(tmp_path, monkeypatch):
    from airflow.sdk.exceptions import TaskDeferred

    from jobs.landing_sensor import ManifestsSensor

    reference, landing = tmp_path / "reference", tmp_path / "landing"
    reference.mkdir()
    (reference / "institutions.csv").write_text("institution_id,tier,profile\nA,village,x\n")
    monkeypatch.setenv("HEALTHLAKE_PATHS__REFERENCE_ROOT", str(reference))
    monkeypatch.setenv("HEALTHLAKE_PATHS__LANDING_ROOT", str(landing))
    sensor = ManifestsSensor(task_id="wait_for_manifests")

    old_day = {"logical_date": pendulum.datetime(2024, 4, 15, tz=SHANGHAI)}
    assert sensor.execute(old_day) == {"extract_date": "2024-04-15", "n_expected": 1,
                                       "missing": ["A"], "reason": "cut-off passed"}

    today = pendulum.now(SHANGHAI).start_of("day")
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({"logical_date": today})
    assert deferred.value.trigger.expected == ["A"]
    assert deferred.value.method_name == "execute_complete"
    done = sensor.execute_complete({}, {"reason": "all arrived", "missing": []},
                                   **deferred.value.kwargs)
    assert done["missing"] == [] and done["extract_date"] == today.to_date_string()


# -- parse time and lint -------------------------------------------------------------------


@pytest.mark.parametrize("dag_file", sorted(p.name for p in DAGS.glob("*.py")))
def test_dag_file_parses_in_under_a_second(dag_file, tmp_path):
    """Time the DAG module itself (its imports of jobs and the configuration), with Airflow
    already imported, as it is in the DAG processor; a fresh process, so nothing is cached.
    CPU seconds of the parse, not wall time: the suite's own Spark jobs share these two cores."""
    code = (
        "import importlib.util, sys, time\n"
        "import pendulum, airflow.sdk, airflow.triggers.base\n"
        "import airflow.providers.standard.decorators.bash\n"
        "start = time.process_time()\n"
        f"spec = importlib.util.spec_from_file_location('dag', {str(DAGS / dag_file)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(time.process_time() - start)\n"
    )
    env = {**os.environ, **_airflow_env(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    seconds = float(out.stdout.strip().splitlines()[-1])
    assert seconds < 1.0, f"{dag_file} took {seconds:.2f} CPU s to parse"


def test_ruff_airflow_rules_pass_on_dags():
    out = subprocess.run([str(VENV_BIN / "ruff"), "check", "--select", "AIR", str(DAGS)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_maintenance_compacts_small_files_and_vacuum_keeps_the_current_version(spark, tmp_path):
    """OPTIMIZE and VACUUM on a real Delta table: four appends become one file, every row is
    still there, and VACUUM (168 h) deletes nothing a reader within the week could need."""
    from delta.tables import DeltaTable

    from jobs import maintenance
    from tests.conftest import make_settings

    settings = make_settings(tmp_path)
    path = settings.table_path("ops.smoke_check")
    for i in range(4):
        spark.createDataFrame([(i, f"row {i}")], "id int, label string").write.format(
            "delta").mode("append").save(str(path))
    files_before = len(list(path.glob("*.parquet")))
    summary = maintenance.run(spark, settings, 168)
    assert summary["ops.smoke_check"].startswith("compacted: 4 files -> 1")
    assert summary["silver.person"] == "not written yet"
    assert spark.read.format("delta").load(str(path)).count() == 4
    assert len(list(path.glob("*.parquet"))) == files_before + 1  # old files kept 7 days
    assert DeltaTable.forPath(spark, str(path)).history().count() >= 5
