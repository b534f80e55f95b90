"""Spark's Thrift JDBC/ODBC server over the analyst tables: `make thrift` (`healthlake thrift
start`), `make thrift-stop`, `healthlake thrift status`.

BI tools and beeline connect to ``jdbc:hive2://127.0.0.1:10000`` (``publish.thrift``) and see the
same catalogue as `healthlake sql`: a database per layer (``silver``, ``gold``, ``ops``) with the
analyst zones' tables, nothing of the restricted zone, and no reading of files by path
(``spark.sql.runSQLOnFiles`` is off for every session). The server is the one in pyspark's own
jars (``spark-hive-thriftserver``), started inside a SparkSession built like every other
(:func:`jobs.spark.get_spark`), on loopback only.

JDBC sessions are not limited to queries the way `healthlake sql` is: a JDBC user could still
declare a table over a path (CREATE TABLE ... LOCATION). On a shared deployment run the server
under an account that cannot read the restricted zone (file or object-store permissions); that,
not this process, is the boundary.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jobs.background import Background, listening
from jobs.config import PROJECT_ROOT, Settings, load
from jobs.publish import sql
from jobs.publish.settings import PublishSettings, load_publish

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
    names = sql.register_tables(spark, settings, sql.analyst_catalogue(settings, spec))
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
