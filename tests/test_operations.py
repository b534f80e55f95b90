"""Operating the lake safely, without Spark: one writer at a time (and a killed writer never
leaves the lake locked), zone roots that another account cannot open, and a secret key that
must stay outside the lake and private to its owner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from jobs.config import PROJECT_ROOT, ConfigError
from jobs.operations import LakeBusy, secure_zones, writer_lock
from tests.conftest import make_settings

HOLD = """
import sys, time
from jobs.config import load
from jobs.operations import writer_lock
with writer_lock(load(), "healthlake ingest --date 2024-04-15"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_waits_for_the_first_then_goes_on(tmp_path):
    lake = make_settings(tmp_path)
    released = threading.Event()

    def first():
        with writer_lock(lake, "healthlake gold --date 2024-04-15", wait_seconds=0):
            held.set()
            time.sleep(1.5)
        released.set()

    held = threading.Event()
    thread = threading.Thread(target=first)
    thread.start()
    assert held.wait(10)
    started = time.monotonic()
    with writer_lock(lake, "healthlake ingest --date 2024-04-16", wait_seconds=30) as holder:
        assert released.is_set() and time.monotonic() - started >= 0.5
        assert holder["command"] == "healthlake ingest --date 2024-04-16"
    thread.join()


def test_a_second_writer_refuses_naming_the_run_that_holds_the_lake(tmp_path):
    lake = make_settings(tmp_path)
    with writer_lock(lake, "healthlake resolve --date 2024-04-15", wait_seconds=0):
        with pytest.raises(LakeBusy) as busy:
            with writer_lock(lake, "healthlake resolve --date 2024-04-15", wait_seconds=0.3):
                pytest.fail("two writers at once")
    message = str(busy.value)
    assert "being written by `healthlake resolve --date 2024-04-15`" in message
    assert f"pid {os.getpid()}" in message and "did nothing" in message


def test_a_writer_killed_with_sigkill_leaves_the_lake_unlocked(tmp_path):
    from tests.conftest import settings_env

    env = {**os.environ, **settings_env(tmp_path)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD], cwd=PROJECT_ROOT, env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lake = make_settings(tmp_path)
        with pytest.raises(LakeBusy, match="healthlake ingest --date 2024-04-15"):
            with writer_lock(lake, "x", wait_seconds=0):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        with writer_lock(lake, "healthlake ingest --date 2024-04-15", wait_seconds=0):
            pass  # the kernel dropped the dead run's lock: no stale lock to clear by hand
    finally:
        holder.kill()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another account")
def test_another_account_reads_the_curated_zone_but_cannot_open_the_restricted_one():
    """As an analyst's account (here: nobody), the curated zone is readable and the restricted
    zone cannot even be listed, whatever tool asks: Spark, pandas or cat."""
    root = Path(tempfile.mkdtemp(prefix="healthlake-zones-", dir="/tmp"))
    try:
        os.chmod(root, 0o755)
        lake = make_settings(root)
        assert secure_zones(lake) == {"restricted": "0700", "curated": "0755", "ops": "0755"}
        identity = lake.zone_root("restricted") / "identity" / "part-0.parquet"
        person = lake.zone_root("curated") / "silver" / "person" / "part-0.parquet"
        for f in (identity, person):
            f.parent.mkdir(parents=True)
            f.write_bytes(b"PAR1")
            os.chmod(f.parent, 0o755)
            os.chmod(f, 0o644)  # Spark writes files readable by all: the zone root decides

        def as_nobody(*argv: str) -> subprocess.CompletedProcess:
            return subprocess.run(["runuser", "-u", "nobody", "--", *argv], capture_output=True,
                                  text=True)

        assert as_nobody("cat", str(person)).returncode == 0
        for denied in (as_nobody("cat", str(identity)),
                       as_nobody("ls", str(lake.zone_root("restricted")))):
            assert denied.returncode != 0 and "Permission denied" in denied.stderr
        assert oct(lake.zone_root("restricted").stat().st_mode & 0o777) == "0o700"
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=True)


def test_the_key_file_must_be_private_and_outside_the_lake(tmp_path):
    from tests.conftest import settings_env

    def with_key_file(path: Path):
        env = {k: v for k, v in settings_env(tmp_path).items() if k != "HEALTHLAKE_HMAC_KEY"}
        from jobs.config import load

        return load(environ={**env, "HEALTHLAKE_SECRETS__HMAC_KEY__FILE": str(path)})

    inside = tmp_path / "key-in-lake"
    lake = make_settings(tmp_path)
    leaked = lake.zone_root("curated") / "hmac_key"
    leaked.parent.mkdir(parents=True)
    leaked.write_text("k" * 64)
    leaked.chmod(0o600)
    with pytest.raises(ConfigError, match="inside the lake"):
        with_key_file(leaked).secret("hmac_key")

    inside.write_text("k" * 64)
    inside.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        with_key_file(inside).secret("hmac_key")
    inside.chmod(0o600)
    assert with_key_file(inside).secret("hmac_key") == "k" * 64


def test_healthlake_config_shows_where_secrets_come_from_never_their_value(capsys,
                                                                           monkeypatch,
                                                                           tmp_path):
    from jobs import cli
    from tests.conftest import TEST_SECRET, settings_env

    for k, v in settings_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    assert cli.main(["config"]) == 0
    out = capsys.readouterr()
    assert "HEALTHLAKE_HMAC_KEY" in out.out
    assert TEST_SECRET not in out.out + out.err
