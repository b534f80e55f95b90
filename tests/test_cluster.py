"""The unchanged pipeline on a Spark standalone cluster (a master and two workers on loopback,
started from pyspark's own distribution by :mod:`jobs.cluster`, as `make cluster` does), chosen
by configuration alone (``HEALTHLAKE_SPARK__MASTER=spark://...``): its gold tables equal those
the local run leaves for the same landed day."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from jobs.background import free_port
from tests.conftest import SMALL_DAYS, lake_like, make_settings, settings_env

GOLD = ("gold.dq_scorecard", "gold.metric_value", "gold.index_indicator", "gold.index_score")
# One driver for the whole day, as `healthlake demo` does; prints the master it ran against.
PIPELINE = """
import datetime as dt, sys
from jobs.config import load
from jobs.spark import get_spark
from tests.conftest import run_pipeline_day
settings = load()
spark = get_spark(settings, app_name="healthlake-cluster-test")
run_pipeline_day(spark, settings, dt.date.fromisoformat(sys.argv[1]), quality=False)
print("MASTER", spark.sparkContext.master)
"""

pytestmark = pytest.mark.cluster


def test_the_pipeline_on_a_standalone_cluster_leaves_the_local_runs_gold(
        spark, small_city, small_city_cli_day1, tmp_path):
    from jobs.cluster import LocalCluster
    from jobs.lake import fingerprint

    day = SMALL_DAYS[0]
    ports = {"HEALTHLAKE_CLUSTER__HOME": str(tmp_path / "standalone"),
             "HEALTHLAKE_CLUSTER__MASTER_PORT": str(free_port()),
             "HEALTHLAKE_CLUSTER__MASTER_WEBUI_PORT": str(free_port()),
             "HEALTHLAKE_CLUSTER__WORKER_WEBUI_PORT": str(free_port())}
    lake = lake_like(small_city, tmp_path / "lake", **ports)
    cluster = LocalCluster.from_settings(lake)
    assert cluster.start()["alive_workers"] == 2
    try:
        env = settings_env(tmp_path / "lake", **ports, HEALTHLAKE_SPARK__MASTER=cluster.master_url)
        done = subprocess.run([sys.executable, "-c", PIPELINE, day.isoformat()], env=env,
                              capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert f"MASTER {cluster.master_url}" in done.stdout
        with urllib.request.urlopen(f"{cluster.ui}/json/", timeout=10) as r:
            master = json.load(r)
        apps = [a for a in master["completedapps"] if a["name"] == "healthlake-cluster-test"]
        assert apps and apps[0]["cores"] >= 2, "the day ran on the workers' executors"
    finally:
        cluster.stop()
    assert cluster.status()["running"] is False

    on_cluster = fingerprint(spark, make_settings(tmp_path / "lake"))
    local = fingerprint(spark, small_city_cli_day1)
    assert {t: on_cluster.get(t) for t in GOLD} == {t: local.get(t) for t in GOLD}
    assert all(on_cluster[t][0] > 0 for t in ("gold.metric_value", "gold.index_score"))
