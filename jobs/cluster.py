"""A Spark standalone cluster on this machine: a master and workers from pyspark's own
distribution (``spark-class org.apache.spark.deploy.master.Master`` / ``...worker.Worker``),
on loopback, each a background process (:mod:`jobs.background`).

    healthlake cluster start      # or: make cluster
    HEALTHLAKE_SPARK__MASTER=spark://127.0.0.1:7077 healthlake demo
    healthlake cluster stop       # or: make cluster-stop

Nothing in the jobs changes: they reach whatever ``spark.master`` says. Settings in
``conf/base/cluster.yaml``; a real cluster (YARN, Kubernetes) is in docs/deployment.md.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from jobs.background import Background, listening
from jobs.config import Settings, build_dataclass, require

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


@dataclass(frozen=True)
class ClusterSettings:
    home: str = ".cache/spark-standalone"
    host: str = "127.0.0.1"
    master_port: int = 7077
    master_webui_port: int = 28180
    worker_webui_port: int = 28181
    workers: int = 2
    worker_cores: int = 1
    worker_memory: str = "2g"
    start_timeout_seconds: int = 180


def cluster_settings(settings: Settings) -> ClusterSettings:
    spec: ClusterSettings = build_dataclass(ClusterSettings, settings.cluster, "cluster",
                                            settings.origins)
    require(spec.workers >= 1, "cluster.workers", settings.origins, "at least one worker")
    require(spec.worker_cores >= 1, "cluster.worker_cores", settings.origins, "at least 1")
    return spec


@dataclass(frozen=True)
class LocalCluster:
    settings: Settings
    spec: ClusterSettings

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalCluster:
        return cls(settings, cluster_settings(settings))

    @property
    def home(self) -> Path:
        return self.settings.path(self.spec.home)

    @property
    def master_url(self) -> str:
        return f"spark://{self.spec.host}:{self.spec.master_port}"

    @property
    def ui(self) -> str:
        return f"http://{self.spec.host}:{self.spec.master_webui_port}"

    def _master(self) -> Background:
        return Background(self.home, "master")

    def _workers(self) -> list[Background]:
        return [Background(self.home, f"worker-{i}") for i in range(1, self.spec.workers + 1)]

    def _spark_class(self, *args: str) -> list[str]:
        from jobs.orchestration import spark_home

        return [str(Path(spark_home()) / "bin" / "spark-class"), *args]

    def _env(self) -> dict[str, str]:
        from jobs.orchestration import spark_home

        # The executors the workers start run this venv's Python (as the driver does).
        return {**os.environ, "SPARK_HOME": spark_home(), "SPARK_LOCAL_IP": self.spec.host,
                "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable)}

    def alive_workers(self) -> int:
        """Workers the master counts as alive (its web UI's JSON), 0 if it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.ui}/json/", timeout=5) as r:
                return int(json.load(r).get("aliveworkers", 0))
        except (OSError, ValueError):
            return 0

    def start(self) -> dict:
        """Start the master, then the workers, and wait until every worker has registered."""
        spec, env, timeout = self.spec, self._env(), self.spec.start_timeout_seconds
        master = self._master()
        if master.pid() is None and listening(spec.host, spec.master_port):
            raise RuntimeError(f"port {spec.master_port} on {spec.host} is taken by another "
                               "program: set cluster.master_port")
        master.start(self._spark_class(MASTER_CLASS, "--host", spec.host, "--port",
                                       str(spec.master_port), "--webui-port",
                                       str(spec.master_webui_port)),
                     lambda: listening(spec.host, spec.master_port), timeout=timeout, env=env)
        for i, worker in enumerate(self._workers(), start=1):
            work_dir = self.home / f"work-{i}"
            work_dir.mkdir(parents=True, exist_ok=True)
            worker.start(self._spark_class(
                WORKER_CLASS, "--host", spec.host, "--cores", str(spec.worker_cores),
                "--memory", spec.worker_memory, "--webui-port", str(spec.worker_webui_port + i),
                "--work-dir", str(work_dir), self.master_url),
                partial(listening, spec.host, spec.worker_webui_port + i), timeout=timeout,
                env=env)
        deadline = time.monotonic() + timeout
        while self.alive_workers() < spec.workers:
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"only {self.alive_workers()} of {spec.workers} workers "
                                   f"registered with {self.master_url}; logs in {self.home}")
            time.sleep(1)
        return self.status()

    def stop(self) -> dict:
        stopped = [w.stop() for w in self._workers()] + [self._master().stop()]
        return {"stopped": [pid for pid in stopped if pid is not None], "home": str(self.home)}

    def status(self) -> dict:
        master = self._master().pid()
        return {"master": self.master_url, "running": master is not None, "ui": self.ui,
                "alive_workers": self.alive_workers() if master else 0,
                "cores": self.spec.workers * self.spec.worker_cores, "home": str(self.home),
                "use": f"HEALTHLAKE_SPARK__MASTER={self.master_url} healthlake <command>"}
