"""Key rules and an audit that cannot be skipped (issue 26, items 7 and 8): a key of at least
32 bytes from any source, never inside a folder the pipeline writes or publishes, created
private from the start; every audit row written while the lake's writer lock is held."""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from jobs.config import PROJECT_ROOT, ConfigError, load
from tests.conftest import settings_env


def _env_without_key(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in settings_env(root).items() if k != "HEALTHLAKE_HMAC_KEY"}
    return env | {
        "HEALTHLAKE_PATHS__CACHE_ROOT": str(root / "cache"),
        "HEALTHLAKE_PUBLISH__EXPORTS_ROOT": str(root / "exports"),
        "HEALTHLAKE_PUBLISH__REPORTS_ROOT": str(root / "reports"),
        "HEALTHLAKE_ORCHESTRATION__LOCAL_AIRFLOW__HOME": str(root / "cache" / "airflow"),
    } | extra


def _key_file(path: Path, value: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def test_a_key_shorter_than_32_bytes_is_refused_from_the_environment_and_from_a_file(tmp_path):
    short, enough = "k" * 31, "k" * 32
    env = _env_without_key(tmp_path)
    for value in ("x", short):
        with pytest.raises(ConfigError, match="at least 32"):
            load(environ=env | {"HEALTHLAKE_HMAC_KEY": value}).secret("hmac_key")
    assert load(environ=env | {"HEALTHLAKE_HMAC_KEY": enough}).secret("hmac_key") == enough

    key = _key_file(tmp_path / "secrets" / "hmac_key", short)
    from_file = env | {"HEALTHLAKE_SECRETS__HMAC_KEY__FILE": str(key)}
    with pytest.raises(ConfigError, match="at least 32"):
        load(environ=from_file).secret("hmac_key")
    _key_file(key, "é" * 16)  # 16 characters, 32 bytes in UTF-8: bytes count
    assert load(environ=from_file).secret("hmac_key") == "é" * 16


def test_a_key_file_inside_any_folder_the_pipeline_writes_is_refused(tmp_path):
    env = _env_without_key(tmp_path)
    settings = load(environ=env)
    written = settings.written_roots()
    for what in ("exports", "reports", "cache", "airflow_home", "landing", "ground_truth",
                 "late_deliveries", "reference", "spark_warehouse", "zone curated", "zone ops",
                 "zone restricted"):
        key = _key_file(written[what] / "keys" / "hmac_key", "k" * 64)
        with pytest.raises(ConfigError, match="inside") as refused:
            load(environ=env | {"HEALTHLAKE_SECRETS__HMAC_KEY__FILE": str(key)}).secret(
                "hmac_key")
        assert what in str(refused.value), refused.value
        shutil.rmtree(key.parent)
    outside = _key_file(tmp_path / "secrets" / "hmac_key", "k" * 64)
    assert load(environ=env | {"HEALTHLAKE_SECRETS__HMAC_KEY__FILE": str(outside)}).secret(
        "hmac_key") == "k" * 64


def test_the_makefile_creates_the_key_private_from_its_first_byte(tmp_path):
    """`make .secrets/hmac_key` under a permissive umask: the file the key is written to is
    0600 while it is written (the fake interpreter looks at its own stdout), not only after."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    shutil.copy(PROJECT_ROOT / "Makefile", tmp_path / "Makefile")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    python = fake_bin / "python"
    python.write_text("#!/bin/sh\n"
                      f"stat -L -c %a /proc/self/fd/1 > {tmp_path}/mode-while-writing\n"
                      "echo " + "a" * 64 + "\n")
    python.chmod(0o755)
    done = subprocess.run(["make", "-s", f"BIN={fake_bin}", ".secrets/hmac_key"], cwd=tmp_path,
                          capture_output=True, text=True, preexec_fn=lambda: os.umask(0))
    assert done.returncode == 0, done.stderr
    key = tmp_path / ".secrets" / "hmac_key"
    assert (tmp_path / "mode-while-writing").read_text().strip() == "600"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert len(key.read_text().strip()) == 64


def _lock_is_taken(settings) -> bool:
    """Whether another open file description cannot take the writer lock now."""
    from jobs.operations import lock_path

    fd = os.open(lock_path(settings), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


@pytest.mark.parametrize("command", ["check", "export"])
def test_a_command_s_audit_rows_are_written_while_it_holds_the_writer_lock(
        spark, tmp_path, monkeypatch, command):
    """A writer's rows go in before it releases its lock; a command that writes nothing else
    (an export) takes the lock for its rows. Observed where the rows are saved."""
    from pyspark.sql import DataFrameWriter

    from jobs import audit, cli

    env = settings_env(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = load(environ=env)
    audit_table = settings.table_location("ops.audit_log")
    seen = []
    real_save = DataFrameWriter.save

    def observing_save(self, path=None, *args, **kwargs):
        if path == audit_table:
            seen.append(_lock_is_taken(settings))
        return real_save(self, path, *args, **kwargs)

    def fake_command(settings_, args):
        audit.record_export(tmp_path / "published.csv", 3, command=command)
        return {}

    monkeypatch.setattr(DataFrameWriter, "save", observing_save)
    monkeypatch.setitem(cli.COMMANDS, command, (fake_command, "fake"))
    argv = [command] if command == "check" else [command, "m", "--period", "2024"]
    assert cli.main(argv) == 0
    assert seen == [True], "the audit rows were written outside the writer lock"
    assert not _lock_is_taken(settings), "the lock is released after the command"
    rows = spark.read.format("delta").load(settings.table_location("ops.audit_log")).collect()
    assert [(r["action"], r["target"], r["rows"]) for r in rows] == [
        ("export", str(tmp_path / "published.csv"), 3)]


def test_rows_an_analyst_account_leaves_in_the_inbox_reach_the_audit_log_under_its_own_name(
        spark, tmp_path):
    """An account that may not write ops.audit_log leaves its row in the ops zone's inbox (1733:
    anyone adds, nobody else lists); the next command's flush writes it, inside the lock, under
    the name of the file's owner whatever the row claims, and empties the inbox."""
    import json
    import pwd

    from jobs import audit
    from jobs.operations import secure_zones

    settings = load(environ=settings_env(tmp_path))
    secure_zones(settings)
    inbox = audit.inbox_dir(settings)
    assert stat.S_IMODE(inbox.stat().st_mode) == 0o1733
    audit._pending.clear()
    row = {"at": "2026-12-07 09:00:00.000001", "os_user": "root", "host": "h",
           "command": "healthlake sql 'SELECT 1'", "action": "sql_query", "target": "-",
           "table_version": None, "rows": 1, "detail": json.dumps({"query": "SELECT 1"})}
    left = inbox / "20261207T090000-1-forged.json"
    left.write_text(json.dumps(row) + "\n", encoding="utf-8")
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(left, nobody, -1)

    assert audit.flush(spark, settings, "healthlake gold --date 2024-04-15") == 1
    assert not list(inbox.iterdir())
    got = spark.read.format("delta").load(settings.table_location("ops.audit_log")).collect()
    assert len(got) == 1 and got[0]["os_user"] == "nobody" and got[0]["action"] == "sql_query"
    detail = json.loads(got[0]["detail"])
    assert detail["claimed_os_user"] == "root" and detail["query"] == "SELECT 1"
