"""Spark's Thrift JDBC/ODBC server over the analyst tables: `make thrift` (`healthlake thrift
start`), `make thrift-stop`, `healthlake thrift status`.

BI tools and beeline connect to ``jdbc:hive2://127.0.0.1:10000`` (``publish.thrift``) and see the
same catalogue as `healthlake sql`: a database per layer (``silver``, ``gold``, ``ops``) with the
analyst zones' tables, nothing of the restricted zone, and no reading of files by path
(``spark.sql.runSQLOnFiles`` is off for every session). The server is the one in pyspark's own
jars (``spark-hive-thriftserver``), started inside a SparkSession built like every other
(:func:`jobs.spark.get_spark`), on loopback only.

Every JDBC statement passes the analysts' SQL gate in the server process. Each JDBC connection
gets a new session (``spark.sql.hive.thriftServer.singleSession=false``), and a session built by
``SparkSession.newSession()`` takes its rules from the parent's ``SparkSessionExtensions``. Before
the server starts, :func:`install_gate` injects a check rule there: a py4j callback (a Python
object implementing ``scala.Function1``) that Spark calls with every analysed plan of every JDBC
session, in ``checkAnalysis``, before a command executes or a query reads anything. It applies
:func:`check_jdbc_plan` (the gate of `healthlake sql` on the analysed plan); a refusal raises in
the callback, py4j turns it into an exception in the JVM and the statement fails with the
reason. If the Python side is gone, every callback fails: the server refuses everything.

The file system stays the boundary underneath: on a shared deployment run the server under the
analysts' account, which cannot open the restricted zone, landing, checkpoints or the key
(tests/security/test_os_separation.py starts it so).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from jobs.background import Background, listening
from jobs.config import PROJECT_ROOT, Settings, load
from jobs.publish import gate, sql
from jobs.publish.settings import PublishSettings, load_publish

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

THRIFT_SERVER = "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2"
START_TIMEOUT_SECONDS = 300


def home(settings: Settings, spec: PublishSettings) -> Path:
    return settings.path(spec.thrift.home)


def jdbc_url(spec: PublishSettings) -> str:
    return f"jdbc:hive2://{spec.thrift.host}:{spec.thrift.port}/default"


def server_conf(settings: Settings, spec: PublishSettings) -> dict[str, str]:
    """Spark settings of the server's session: loopback, the port, no SQL on files, and Delta's
    jars on the driver's own class path (the server's session threads do not see the jars
    ``spark.jars`` adds later)."""
    from jobs.spark import cached_jars

    return {
        "spark.driver.extraClassPath": os.pathsep.join(str(j) for j in cached_jars(settings)),
        "spark.sql.runSQLOnFiles": "false",
        "hive.server2.thrift.bind.host": spec.thrift.host,
        "hive.server2.thrift.port": str(spec.thrift.port),
        "hive.server2.transport.mode": "binary",
        "spark.sql.hive.thriftServer.singleSession": "false",
    }


def serve(settings: Settings) -> None:
    """Run the server in this process until it is terminated (what `start` launches)."""
    from jobs.spark import get_spark

    spec = load_publish(settings)
    spark = get_spark(settings, app_name="healthlake-thrift",
                      extra_conf=server_conf(settings, spec))
    allowed = gate.allowed_tables(settings, spec)
    names = sql.register_tables(spark, settings, allowed)
    trail = JdbcAuditTrail(spark, settings, spec)
    install_gate(spark, lambda plan: check_jdbc_plan(plan, allowed, trail))
    server = getattr(spark._jvm, THRIFT_SERVER)
    server.startWithContext(spark._jsparkSession.sqlContext())
    log.info("Thrift JDBC server on %s with %d tables: %s", jdbc_url(spec), len(names), names)

    def stop(signum, frame):
        spark.stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        time.sleep(3600)


# -- the gate in the server process ---------------------------------------------------------


# What a JDBC client may run besides what :func:`check_jdbc_plan`'s gate allows: choosing one of
# the analyst databases (beeline and BI tools send ``use <database>`` when they connect).
SESSION_DATABASES = ("default",)
# The server fetches a statement's rows through a plan that only turns them into Java objects
# (analysed, so checked, again): what it wraps is checked.
RESULT_WRAPPERS = ("DeserializeToObject",)


def check_jdbc_plan(plan, allowed: gate.Allowed, trail: JdbcAuditTrail | None = None) -> None:
    """Refuse (raise :class:`jobs.publish.gate.RefusedQuery`) an analysed plan of a JDBC session
    that the analysts' SQL gate refuses (:func:`jobs.publish.gate.check_analysed`); besides,
    ``USE`` of an analyst database or ``default``. The statement, run or refused, is audited
    by ``trail`` before it runs."""
    while plan.getClass().getSimpleName() in RESULT_WRAPPERS:
        plan = plan.child()
    if plan.getClass().getSimpleName() == "SetCatalogAndNamespace":
        namespace = [str(n).lower() for n in _seq(plan.child().namespace())]
        if len(namespace) == 1 and namespace[0] in allowed.layers | set(SESSION_DATABASES):
            if trail is not None:
                trail.record([])
            return
    if _reads_table_logs_only(plan, allowed):
        return
    try:
        tables = gate.check_analysed(plan, allowed)
    except Exception as exc:
        if trail is not None:
            trail.record([], refused=str(exc) or type(exc).__name__)
        raise
    if trail is not None:
        trail.record(tables)


class JdbcAuditTrail:
    """One audit row per JDBC statement, run or refused, left in the ops zone's audit inbox
    from inside the check, so before the statement runs (no Spark job there; the next pipeline
    command writes the rows to ops.audit_log). The statement and its id are what the Thrift
    server sets as the job group of the thread that analyses it; a statement analysed more than
    once (its result fetched through a wrapper) is one row."""

    REMEMBERED = 10_000

    def __init__(self, spark: SparkSession, settings: Settings, spec: PublishSettings):
        self._context = spark.sparkContext
        self._settings = settings
        self._command = f"JDBC {jdbc_url(spec)}"
        self._done: dict[str, None] = {}

    def record(self, tables: list[str], refused: str | None = None) -> None:
        from jobs import audit

        statement_id = self._context.getLocalProperty("spark.jobGroup.id")
        text = self._context.getLocalProperty("spark.job.description") or ""
        if statement_id is None and refused is None:
            return  # not a client's statement (the server's own work)
        if statement_id is not None:
            if statement_id in self._done:
                return
            self._done[statement_id] = None
            while len(self._done) > self.REMEMBERED:
                del self._done[next(iter(self._done))]
        audit.leave_in_inbox(self._settings, audit.sql_row(
            self._settings, text, tables, refused=refused, command=self._command))


def _reads_table_logs_only(plan, allowed: gate.Allowed) -> bool:
    """Whether ``plan`` is one Delta builds inside the server to read an analyst table's log
    (the same session's check rule sees it): every leaf reads ``_delta_log`` files through
    Delta's own ``DeltaLogFileIndex`` under an analyst root, or is the log's cached state (an
    RDD). No SQL names such a relation, so no statement passes this way."""
    leaves = _seq(plan.collectLeaves())
    if not leaves:
        return False
    for leaf in leaves:
        kind = leaf.getClass().getSimpleName()
        if kind == "LogicalRDD":
            continue
        if kind != "LogicalRelation" or leaf.catalogTable().isDefined():
            return False
        index = leaf.relation().location()
        if index.getClass().getSimpleName() != "DeltaLogFileIndex":
            return False
        for path in _seq(index.rootPaths()):
            where = gate.location(str(path.toUri()))
            if "/_delta_log" not in where or not any(
                    where.startswith(root + "/") for root in allowed.roots):
                return False
    return True


def _seq(scala_seq) -> list:
    iterator = scala_seq.iterator()
    out = []
    while iterator.hasNext():
        out.append(iterator.next())
    return out


class _PlanCheck:
    """``scala.Function1[LogicalPlan, Unit]`` implemented in Python (py4j callback): the check
    rule Spark runs on every analysed plan of a session."""

    def __init__(self, check: Callable[[object], None]):
        self._check = check

    def apply(self, plan):
        try:
            self._check(plan)
        except Exception as exc:
            log.warning("JDBC statement refused: %s\n%s", exc, plan.treeString())
            raise
        return None

    class Java:
        implements = ["scala.Function1"]


class _CheckRuleBuilder:
    """``scala.Function1[SparkSession, Function1[LogicalPlan, Unit]]``: Spark's
    ``CheckRuleBuilder``, called once per new session; every session gets the same check."""

    def __init__(self, check: Callable[[object], None]):
        self._rule = _PlanCheck(check)

    def apply(self, session):
        return self._rule

    class Java:
        implements = ["scala.Function1"]


def install_gate(spark: SparkSession, check: Callable[[object], None]) -> None:
    """Make every session created from ``spark`` from now on (``newSession()``: one per JDBC
    connection) call ``check`` with each analysed plan before it runs; ``check`` refuses by
    raising. The py4j callback server is started for it (as pyspark does for foreachBatch).
    ``spark``'s own session state is built first, so the rule does not apply to it (the
    catalogue is registered there)."""
    from pyspark.java_gateway import ensure_callback_server_started

    ensure_callback_server_started(spark.sparkContext._gateway)
    spark._jsparkSession.sessionState()
    spark._jsparkSession.extensions().injectCheckRule(_CheckRuleBuilder(check))


def _service(settings: Settings, spec: PublishSettings) -> Background:
    return Background(home(settings, spec), "thrift")


def status(settings: Settings) -> dict:
    spec = load_publish(settings)
    service = _service(settings, spec)
    pid = service.pid()
    return {"running": pid is not None, "pid": pid, "url": jdbc_url(spec),
            "listening": listening(spec.thrift.host, spec.thrift.port),
            "log": str(service.log_file)}


def start(settings: Settings, environ: dict[str, str] | None = None) -> dict:
    """Launch :func:`serve` in the background and wait until it listens; an error with the
    log's end if it dies first."""
    spec = load_publish(settings)
    service = _service(settings, spec)
    if service.pid() is not None:
        return {**status(settings), "note": "already running"}
    if listening(spec.thrift.host, spec.thrift.port):
        raise RuntimeError(f"port {spec.thrift.port} on {spec.thrift.host} is taken by another "
                           "program: set publish.thrift.port")
    service.start([sys.executable, "-m", "jobs.publish.thrift"],
                  lambda: listening(spec.thrift.host, spec.thrift.port),
                  timeout=START_TIMEOUT_SECONDS, env=environ, cwd=PROJECT_ROOT)
    return status(settings)


def stop(settings: Settings) -> dict:
    """Terminate the server this module started (its process group, by the recorded id)."""
    spec = load_publish(settings)
    return {"stopped": _service(settings, spec).stop(), "url": jdbc_url(spec)}


def beeline(spec: PublishSettings, statement: str, timeout: float = 180) -> str:
    """Run one statement through beeline (the Hive JDBC client in pyspark's jars): what a BI
    tool sees. Returns beeline's output (CSV)."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    java = Path(os.environ["JAVA_HOME"]) / "bin/java" if os.environ.get("JAVA_HOME") else "java"
    done = subprocess.run(
        [str(java), "-cp", f"{jars}/*", "org.apache.hive.beeline.BeeLine", "-u", jdbc_url(spec),
         "--outputformat=csv2", "--silent=true", "-e", statement],
        capture_output=True, text=True, timeout=timeout)
    return done.stdout + done.stderr


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(load())
