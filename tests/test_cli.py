"""The command line: configuration errors exit 2 with a message naming the key."""

from __future__ import annotations

import json

from jobs.cli import main
from tests.conftest import settings_env


def test_config_command_prints_validated_settings(tmp_path, monkeypatch, capsys):
    for key, value in settings_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    assert main(["--json", "config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["timezone"] == "Asia/Shanghai"
    assert shown["landing_root"] == str(tmp_path / "landing")
    assert "test-hmac-key" not in json.dumps(shown)  # secrets are shown by reference only


def test_bad_configuration_exits_2_and_names_the_key(monkeypatch, capsys):
    monkeypatch.setenv("HEALTHLAKE_SPARK__MASTR", "local[1]")
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert "spark.mastr" in err and "HEALTHLAKE_SPARK__MASTR" in err
