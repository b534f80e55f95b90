"""The daily DAG run by Airflow itself, on a small generated city (300 residents, two days):

1. ``dag.test()`` runs day 1 end to end (every job through spark-submit, as in production) and
   leaves exactly the tables the CLI leaves for the same day;
2. a real Airflow (``airflow standalone``: scheduler, DAG processor, triggerer, API server, on
   loopback, SQLite) is driven through its REST API: day 2 succeeds and adds its rows; then day 2
   runs again and changes nothing. Airflow keeps one run per logical date, so running a day
   again is clearing its run (``POST .../dagRuns/{id}/clear``), which is what
   ``AirflowApi.run_day`` does the second time. (A day run again after later days, whose
   backfill resolves the later days anew, is the fault suite's: tests/faults/test_backfill.py.)

The slowest tests of the suite: every task starts its own Spark (about half a minute each).
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.background import free_port
from tests.conftest import (
    SMALL_DAYS,
    TEST_SECRET,
    TINY_SPARK,
    lake_like,
    make_settings,
    settings_env,
)

D1, D2 = SMALL_DAYS
DAG_TEST = """
import sys, pendulum
from dags.healthlake_daily import dag
run = dag.test(logical_date=pendulum.parse(sys.argv[1]))
sys.exit(0 if str(run.state) in ("success", "DagRunState.SUCCESS") else 1)
"""

pytestmark = pytest.mark.airflow


def logical_date(day: dt.date) -> str:
    """The logical date of the run for extract date ``day``: local midnight, Asia/Shanghai."""
    return f"{day.isoformat()}T00:00:00+08:00"


@pytest.fixture(scope="module")
def city(small_city, small_city_cli_day1, tmp_path_factory):
    """Two lakes fed the same landed files: ``dag`` (run by Airflow here) and ``cli`` (day 1 run
    by the CLI's jobs, shared with the cluster test)."""
    root = tmp_path_factory.mktemp("airflow_city")
    dag_root = root / "dag"
    lake_like(small_city, dag_root)
    # Airflow's state beside the lake, on a free port (never the checkout's .cache/airflow).
    local = {"HEALTHLAKE_ORCHESTRATION__LOCAL_AIRFLOW__HOME": str(root / "airflow"),
             "HEALTHLAKE_ORCHESTRATION__LOCAL_AIRFLOW__PORT": str(free_port())}
    env = settings_env(dag_root, **TINY_SPARK, **local)
    env.update({"AIRFLOW_HOME": str(root / "airflow"),
                # Only the runs the test triggers: no scheduled run for yesterday.
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"})
    return {"env": env, "dag": make_settings(dag_root, **TINY_SPARK, **local),
            "cli": small_city_cli_day1}


def test_dag_test_runs_a_day_end_to_end_and_leaves_the_tables_the_cli_leaves(city, spark):
    from jobs.airflow_local import LocalAirflow
    from jobs.lake import fingerprint

    env = LocalAirflow.from_settings(city["dag"]).prepare(city["env"])
    done = subprocess.run([sys.executable, "-c", DAG_TEST, logical_date(D1)], env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    cli = city["cli"]  # the same day run by the CLI's jobs (conftest.small_city_cli_day1)
    by_dag, by_cli = fingerprint(spark, city["dag"]), fingerprint(spark, cli)
    # ingested_at is when this lake's run first saw each file: not comparable across lakes.
    log_cols = ("run_id", "read_ms", "ingested_at")
    by_dag["ops.ingest_log"] = fingerprint(spark, city["dag"], log_cols)["ops.ingest_log"]
    by_cli["ops.ingest_log"] = fingerprint(spark, cli, log_cols)["ops.ingest_log"]
    assert set(by_dag) >= {"bronze.encounters", "silver_std.encounters", "silver.person",
                           "silver.encounter", "gold.dq_scorecard", "gold.metric_value",
                           "gold.index_score", "restricted.identity", "ops.ingest_log",
                           "ops.feed_counts", "ops.dq_results"}
    differing = {t: (by_dag.get(t), by_cli.get(t)) for t in set(by_dag) | set(by_cli)
                 if by_dag.get(t) != by_cli.get(t)}
    assert not differing


def test_a_real_scheduler_runs_two_days_from_the_rest_api_and_reruns_change_nothing(city, spark):
    from jobs.airflow_local import LocalAirflow
    from jobs.lake import fingerprint, read_table

    lake = city["dag"]
    local = LocalAirflow.from_settings(lake)
    assert local.home == Path(city["env"]["AIRFLOW_HOME"])  # the DB dag.test ran day 1 in
    api = local.start(env=city["env"])
    try:
        api.unpause("healthlake_daily")

        def run_day(day: dt.date) -> None:
            run_id = api.run_day("healthlake_daily", logical_date(day))
            state = api.wait("healthlake_daily", run_id, timeout=1800)
            assert state == "success", (day, api.task_states("healthlake_daily", run_id),
                                        f"task logs under {local.home}/logs")

        run_day(D2)  # day 1 is in the lake already: dag.test ran it (the test above)
        log = read_table(spark, lake, "ops.ingest_log")
        for table in ("ops.ingest_log", "silver_std.encounters", "gold.dq_scorecard"):
            days = {r["extract_date"] for r in read_table(spark, lake, table)
                    .select("extract_date").distinct().collect()}
            assert days == {D1, D2}, table
        loaded = log.where(f"extract_date = DATE'{D2}' AND status = 'loaded'").count()
        assert loaded > 0
        after_day2 = fingerprint(spark, lake)

        # Day 2 again (its run is cleared and runs anew): nothing changes, but for
        # ops.dq_results, the log of every validation, which gains the re-run's results.
        validations = after_day2.pop("ops.dq_results")[0]
        run_day(D2)
        again = fingerprint(spark, lake)
        assert again.pop("ops.dq_results")[0] > validations
        assert again == after_day2
    finally:
        local.stop()
    # The HMAC key reached every task through the environment: never Airflow's database
    # (rendered fields, XComs, DAG runs' conf) nor its task logs.
    key = TEST_SECRET.encode("utf-8")
    state = [p for p in local.home.rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in state) and any(p.suffix == ".log" for p in state)
    assert [p for p in state if key in p.read_bytes()] == []
