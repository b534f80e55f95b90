"""Airflow on this machine, for development and the end-to-end test: ``airflow standalone``
(SQLite metadata, API server and UI, scheduler, DAG processor, triggerer) on loopback with the
project's DAGs, and a small client of Airflow's REST API.

    healthlake airflow start     # or: make airflow
    healthlake airflow status
    healthlake airflow stop

Everything Airflow keeps (``airflow.cfg``, the SQLite database, logs, the generated password)
lives under ``orchestration.local_airflow.home`` (default ``.cache/airflow``); the DAGs are read
from ``dags/`` of this checkout. Tasks inherit this process's environment, so ``HEALTHLAKE_*``
variables set when Airflow starts (lake paths, Spark settings, the HMAC key) reach every job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from jobs.background import Background
from jobs.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DAGS_FOLDER = ROOT / "dags"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"


@dataclass(frozen=True)
class LocalAirflow:
    """Where a local Airflow keeps its state and where it listens."""

    home: Path
    host: str = "127.0.0.1"
    port: int = 28080
    user: str = "admin"
    delta_pool: str = "healthlake_delta"

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalAirflow:
        from jobs.orchestration import orchestration_settings

        orch = orchestration_settings(settings)
        local = orch.local_airflow
        return cls(home=settings.path(local.home), host=local.host, port=local.port,
                   user=local.user, delta_pool=orch.delta_pool)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def _service(self) -> Background:
        return Background(self.home, "standalone")

    @property
    def pid_file(self) -> Path:
        return self._service.pid_file

    @property
    def log_file(self) -> Path:
        return self._service.log_file

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment Airflow's processes (and so every task) run with."""
        env = dict(os.environ if base is None else base)
        venv_bin = str(Path(sys.executable).parent)
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.user}:admin",
            "AIRFLOW__API__HOST": self.host,
            "AIRFLOW__API__PORT": str(self.port),
            # Tasks reach the API server's execution API here (the default assumes port 8080).
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API__BASE_URL": self.url,
            # New DAGs start paused: nothing runs until someone unpauses it.
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
            # Airflow's subprocesses call `airflow`, and tasks `spark-submit`: the venv first.
            "PATH": venv_bin + os.pathsep + env.get("PATH", ""),
        })
        return env

    def _airflow(self, *args: str, env: dict[str, str]) -> None:
        subprocess.run([str(Path(sys.executable).parent / "airflow"), *args], env=env,
                       check=True, stdout=subprocess.DEVNULL)

    def prepare(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """Migrate the metadata database and create the Delta pool; the environment to run
        Airflow (``start``, or ``dag.test()`` in a subprocess) with."""
        self.home.mkdir(parents=True, exist_ok=True)
        env = self.env(env)
        self._airflow("db", "migrate", env=env)
        self._airflow("pools", "set", self.delta_pool, "1",
                      "healthlake: one Delta writer at a time", env=env)
        return env

    def running_pid(self) -> int | None:
        return self._service.pid()

    def start(self, env: dict[str, str] | None = None, timeout: float = 240) -> AirflowApi:
        """Migrate the metadata database, create the Delta pool, start ``airflow standalone``
        in its own process group and wait until its API answers and the DAGs are parsed."""
        if self.running_pid():
            raise RuntimeError(f"Airflow already runs from {self.home} (pid "
                               f"{self.running_pid()}): `healthlake airflow stop` first")
        env = self.prepare(env)
        self._service.start([str(Path(sys.executable).parent / "airflow"), "standalone"],
                            self._ready, timeout=timeout, env=env, cwd=self.home)
        return self.api()

    def _ready(self) -> bool:
        """Healthy, the login generated, and the daily DAG parsed."""
        if not (self._healthy() and (self.home / PASSWORDS_FILE).is_file()):
            return False
        try:
            return self.api().dag_ids() >= {"healthlake_daily"}
        except (OSError, ValueError, KeyError):
            return False

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as r:
                health = json.load(r)
        except (OSError, ValueError):
            return False
        return all((health.get(part) or {}).get("status") == "healthy"
                   for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"))

    def password(self) -> str:
        return json.loads((self.home / PASSWORDS_FILE).read_text())[self.user]

    def api(self) -> AirflowApi:
        return AirflowApi(self.url, self.user, self.password())

    def stop(self, timeout: float = 60) -> bool:
        """Stop the standalone process group; True if something was running."""
        return self._service.stop(timeout) is not None

    def status(self) -> dict:
        pid = self.running_pid()
        status = {"running": pid is not None, "pid": pid, "home": str(self.home),
                  "ui": self.url, "healthy": pid is not None and self._healthy()}
        if (self.home / PASSWORDS_FILE).is_file():
            status["login"] = f"{self.user} / {self.password()}"
        return status


class AirflowApi:
    """The few calls of Airflow's REST API (v2) that operating the pipeline needs."""

    def __init__(self, base_url: str, user: str, password: str):
        self.base_url = base_url.rstrip("/")
        self.token = self._call("POST", "/auth/token",
                                {"username": user, "password": password},
                                auth=False)["access_token"]

    def _call(self, method: str, path: str, body: dict | None = None, auth: bool = True):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{method} {path}: HTTP {e.code}: {e.read().decode()[:500]}"
                               ) from None

    def dag_ids(self) -> set[str]:
        return {d["dag_id"] for d in self._call("GET", "/api/v2/dags?limit=100")["dags"]}

    def unpause(self, dag_id: str) -> None:
        self._call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, logical_date: str, run_id: str | None = None) -> str:
        """Start a run for ``logical_date`` (ISO, with offset: ``2024-04-15T00:00:00+08:00``)."""
        body = {"logical_date": logical_date, "conf": {}}
        if run_id:
            body["dag_run_id"] = run_id
        return self._call("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def run_for(self, dag_id: str, logical_date: str) -> str | None:
        """The run id of the DAG's run for ``logical_date``, if there is one."""
        when = urllib.parse.quote(logical_date)
        runs = self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns?logical_date_gte={when}"
                                 f"&logical_date_lte={when}")["dag_runs"]
        return runs[0]["dag_run_id"] if runs else None

    def clear(self, dag_id: str, run_id: str) -> None:
        """Clear every task of a run, so the scheduler runs it again from the start."""
        self._call("POST", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/clear", {"dry_run": False})

    def run_day(self, dag_id: str, logical_date: str) -> str:
        """Trigger the run for ``logical_date``; if it ran before, clear it instead (Airflow
        keeps one run per logical date, so running a day again is clearing its run)."""
        run_id = self.run_for(dag_id, logical_date)
        if run_id is None:
            return self.trigger(dag_id, logical_date)
        self.clear(dag_id, run_id)
        return run_id

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def wait(self, dag_id: str, run_id: str, timeout: float = 1800, poll: float = 5) -> str:
        """Wait until the run ends; its final state (``success`` or ``failed``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run_state(dag_id, run_id)
            if state in ("success", "failed"):
                return state
            time.sleep(poll)
        raise TimeoutError(f"{dag_id} {run_id} still {state} after {timeout:.0f} s")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        tis = self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {t["task_id"]: t["state"] for t in tis["task_instances"]}
