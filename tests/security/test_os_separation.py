"""Operating-system separation, tried as an attacker would (issue 26): an unprivileged account
made for the test, as a deployment makes the analysts' account, runs `healthlake sql`, plain
pyspark and the Thrift JDBC server with a JDBC client. The curated zone is open to it; the
restricted zone, landing, the checkpoints and the key are not, at the file system, even when no
SQL gate stands in the way. Needs root (CI runs as root) to create and remove the account."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from jobs import audit
from jobs.config import load
from jobs.lake import read_table
from jobs.operations import scratch_root, secure_zones
from tests.conftest import TINY_SPARK, settings_env

VENV_BIN = Path(sys.executable).parent
RESTRICTED_TABLE = "bronze.encounters"


@pytest.fixture
def analyst():
    """An unprivileged system account without a home (removed at the end)."""
    if os.geteuid() != 0:
        pytest.skip("creating an unprivileged account needs root (CI runs the suite as root)")
    name = f"hl_analyst_{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def analyst_home(analyst):
    """The account's own writable folder: HOME, temporary files, Spark's warehouse and local
    dir, the Thrift server's pid and log."""
    home = Path(tempfile.mkdtemp(prefix="hl_analyst_home_"))
    shutil.chown(home, analyst)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def traversable(lake_root: Path):
    """The lake's parent folders, and those of the Python interpreter the venv links to (pyenv
    installs it under root's 0700 home here), made traversable (o+x, never o+r) as a
    deployment's are: pytest makes its temporary folders 0700 for root. Modes restored at the
    end."""
    changed = {}
    for start in (lake_root, Path(os.path.realpath(sys.executable)).parent):
        folder = start
        while folder != folder.parent:
            mode = stat.S_IMODE(folder.stat().st_mode)
            if not mode & stat.S_IXOTH and folder not in changed:
                changed[folder] = mode
                folder.chmod(mode | stat.S_IXOTH)
            folder = folder.parent
    try:
        yield
    finally:
        for folder, mode in changed.items():
            folder.chmod(mode)


def _analyst_env(lake_root: Path, home: Path, user: str, **extra: str) -> dict[str, str]:
    """What the analysts' deployment gives their processes: the lake's paths, no key, and the
    account's own folders for what Spark writes."""
    env = {k: v for k, v in settings_env(lake_root).items() if k != "HEALTHLAKE_HMAC_KEY"}
    (home / "tmp").mkdir(exist_ok=True)
    shutil.chown(home / "tmp", user)
    return env | TINY_SPARK | {
        "HOME": str(home), "TMPDIR": str(home / "tmp"), "USER": user, "LOGNAME": user,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HEALTHLAKE_SPARK__CONF__SPARK.SQL.WAREHOUSE.DIR": str(home / "warehouse"),
        "HEALTHLAKE_SPARK__CONF__SPARK.LOCAL.DIR": str(home / "tmp"),
        "HEALTHLAKE_PUBLISH__THRIFT__HOME": str(home / "thrift"),
    } | extra


def _as(user: str, argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 300
        ) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *argv], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


# Run as the analyst: `healthlake sql` in this process (one JVM for both), then plain pyspark
# and Python with no gate at all against the restricted zone, landing, checkpoints and the key.
ANALYST_SCRIPT = r"""
import contextlib, io, json, os, sys
from jobs import cli

probe = json.loads(sys.argv[1])
out = {}
for what in ("query", "restricted_query"):
    printed, errors, rc = io.StringIO(), io.StringIO(), None
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        try:
            rc = cli.main(["sql", "--format", "csv", probe[what]])
        except SystemExit as exit:
            rc = exit.code
    out[what] = {"rc": rc, "printed": printed.getvalue(), "errors": errors.getvalue()[-2000:]}

from pyspark.sql import SparkSession
spark = SparkSession.getActiveSession()
try:
    rows = spark.read.format("delta").load(probe["restricted_table"]).count()
    out["restricted_table"] = f"read {rows} rows"
except Exception as exc:
    out["restricted_table"] = f"{type(exc).__name__}: {exc}"[:1500]
for what, path in probe["paths"].items():
    try:
        if os.path.isdir(path) or not os.path.exists(path):
            os.listdir(path)
        else:
            open(path, "rb").read(1)
        out[what] = "opened"
    except OSError as exc:
        out[what] = f"{type(exc).__name__}: {exc}"
print("ANALYST " + json.dumps(out))
"""

# Run as the analyst: beeline (the Hive JDBC client in pyspark's jars) once per statement.
JDBC_CLIENT = r"""
import json, sys
from jobs.config import load
from jobs.publish import thrift
from jobs.publish.settings import load_publish

spec = load_publish(load())
answers = {k: thrift.beeline(spec, s) for k, s in json.loads(sys.argv[1]).items()}
print("JDBC " + json.dumps(answers))
"""


def _first_file(folder: Path) -> Path | None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            return path
    return None


def test_the_analyst_account_reads_curated_tables_and_cannot_open_anything_restricted(
        spark, settings, gold_lake, lake_root, analyst, analyst_home, traversable):
    home = analyst_home
    secure_zones(settings)  # as every pipeline run does before it writes (the audit inbox too)
    inbox = audit.inbox_dir(settings)
    assert stat.S_IMODE(inbox.stat().st_mode) == 0o1733
    env = _analyst_env(lake_root, home, analyst)
    curated_count = read_table(spark, settings, "gold.index_score").count()

    # The key as `make` creates it (umask 077); the pipeline accepts no file others can read.
    key = lake_root.parent / "secrets" / "hmac_key"
    key.parent.mkdir(mode=0o700, exist_ok=True)
    old_umask = os.umask(0o077)
    try:
        key.write_text(secrets.token_hex(32) + "\n")
    finally:
        os.umask(old_umask)
    assert load(environ={k: v for k, v in settings_env(lake_root).items()
                         if k != "HEALTHLAKE_HMAC_KEY"}
                | {"HEALTHLAKE_SECRETS__HMAC_KEY__FILE": str(key)}).secret("hmac_key")

    restricted = settings.local_dir("restricted")
    landed = _first_file(settings.landing_root)
    checkpoint = _first_file(scratch_root(settings))
    assert landed is not None
    paths = {"key": str(key), "landing": str(settings.landing_root),
             "landed_file": str(landed), "restricted_zone": str(restricted),
             "checkpoints": str(scratch_root(settings)),
             "restricted_log": str(Path(settings.table_location(RESTRICTED_TABLE))
                                   / "_delta_log" / "00000000000000000000.json")}
    if checkpoint is not None:
        paths["checkpoint_file"] = str(checkpoint)
    probe = {"query": "SELECT count(*) AS n FROM gold.index_score",
             "restricted_query": "SELECT * FROM restricted.identity",
             "restricted_table": settings.table_location(RESTRICTED_TABLE), "paths": paths}

    # 1 and 2: `healthlake sql` of a curated table works, of a restricted one is refused; 3: with
    # no gate, the file system refuses the rest (one Python process, one JVM).
    done = _as(analyst, [str(VENV_BIN / "python"), "-c", ANALYST_SCRIPT, json.dumps(probe)],
               env, home)
    lines = [line for line in done.stdout.splitlines() if line.startswith("ANALYST ")]
    assert done.returncode == 0 and lines, (done.stdout + done.stderr)[-3000:]
    seen = json.loads(lines[-1].removeprefix("ANALYST "))
    assert seen["query"]["rc"] == 0, seen["query"]
    assert seen["query"]["printed"].split() == ["n", str(curated_count)], seen["query"]
    assert seen["restricted_query"]["rc"] == 3, seen["restricted_query"]
    assert "refused" in seen["restricted_query"]["errors"], seen["restricted_query"]
    assert not seen["restricted_table"].startswith("read"), seen["restricted_table"]
    for what in paths:
        assert seen[what].startswith("PermissionError"), (what, seen[what])

    # 4. The Thrift server run as the analyst, and a JDBC client as the analyst.
    port = _free_port()
    thrift_env = _analyst_env(lake_root, home, analyst, HEALTHLAKE_PUBLISH__THRIFT__PORT=str(port))
    started = _as(analyst, [str(VENV_BIN / "healthlake"), "thrift", "start"], thrift_env, home,
                  timeout=400)
    try:
        assert started.returncode == 0, (started.stdout + started.stderr)[-3000:]
        made, dumped = home / "made", home / "dumped"
        statements = {
            "tables": "SHOW TABLES IN gold",
            "count": "SELECT count(*) AS n FROM gold.index_score",
            "databases": "SHOW DATABASES",
            "restricted_by_name": f"SELECT * FROM {RESTRICTED_TABLE}",
            "restricted_by_path": f"SELECT * FROM delta.`{probe['restricted_table']}`",
            "declare_restricted": f"CREATE TABLE grab USING delta LOCATION "
                                  f"'{probe['restricted_table']}'",
            "create_as": f"CREATE TABLE made USING parquet LOCATION '{made}' AS SELECT 1 AS x",
            "directory_write": f"INSERT OVERWRITE DIRECTORY '{dumped}' USING csv "
                               f"SELECT * FROM gold.index_score",
            "reflect": "SELECT reflect('java.lang.System', 'getenv', 'HOME') AS h",
            "set": "SET spark.sql.runSQLOnFiles=true",
        }
        client = JDBC_CLIENT
        answered = _as(analyst, [str(VENV_BIN / "python"), "-c", client, json.dumps(statements)],
                       thrift_env, home)
        lines = [line for line in answered.stdout.splitlines() if line.startswith("JDBC ")]
        assert lines, (answered.stdout + answered.stderr)[-3000:]
        out = json.loads(lines[-1].removeprefix("JDBC "))
    finally:
        stopped = _as(analyst, [str(VENV_BIN / "healthlake"), "thrift", "stop"], thrift_env, home)
    assert stopped.returncode == 0, stopped.stderr[-2000:]

    assert "index_score" in out["tables"] and "metric_value" in out["tables"]
    assert f"\n{curated_count}\n" in f"\n{out['count']}\n", out["count"][-1000:]
    assert "restricted" not in out["databases"] and "bronze" not in out["databases"]
    for what in ("restricted_by_name", "restricted_by_path"):
        assert "TABLE_OR_VIEW_NOT_FOUND" in out[what], (what, out[what][-1000:])
    for what in ("declare_restricted", "create_as", "directory_write", "reflect", "set"):
        assert "RefusedQuery" in out[what], (what, out[what][-1500:])
    # The analyst could write these folders: the gate, not the file system, stopped the writes.
    assert not made.exists() and not dumped.exists()

    # Every query, run or refused, by `healthlake sql` and over JDBC, left its row in the inbox
    # under the analyst's own name; the pipeline's next command writes them to the audit log.
    audit._pending.clear()
    assert audit.flush(spark, settings, "healthlake check") >= 2 + 3
    assert not list(inbox.glob("*.json"))
    rows = read_table(spark, settings, "ops.audit_log").where(
        f"os_user = '{analyst}'").toPandas()
    said = {(r["action"], json.loads(r["detail"])["query"]) for _, r in rows.iterrows()}
    assert ("sql_query", probe["query"]) in said and (
        "sql_refused", probe["restricted_query"]) in said, said
    assert ("sql_query", statements["count"]) in said, said
    for what in ("declare_restricted", "create_as", "directory_write", "reflect", "set"):
        assert ("sql_refused", statements[what]) in said, (what, said)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

