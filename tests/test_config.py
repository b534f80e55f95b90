"""Configuration layering and validation: errors name the key and the file it came from."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from jobs.config import PROJECT_ROOT, ConfigError, load

BASE = PROJECT_ROOT / "conf" / "base"


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    """A copy of the committed conf/base to break on purpose."""
    shutil.copytree(BASE, tmp_path / "conf" / "base")
    return tmp_path / "conf"


def write_local(conf_dir: Path, name: str, text: str) -> None:
    (conf_dir / "local").mkdir(exist_ok=True)
    (conf_dir / "local" / name).write_text(text, encoding="utf-8")


def test_committed_configuration_loads_with_defaults(conf_dir):
    settings = load(conf_dir, environ={})
    assert settings.timezone == "Asia/Shanghai"
    assert settings.spark.master == "local[*]"
    assert settings.table("bronze.encounters").partition_by == ["extract_date"]
    assert settings.table_path("bronze.encounters").parts[-3:] == ("restricted", "bronze",
                                                                   "encounters")


def test_local_overrides_base_and_environment_overrides_local(conf_dir):
    write_local(conf_dir, "settings.yaml", "spark:\n  master: local[2]\ntimezone: Asia/Macau\n")
    assert load(conf_dir, environ={}).spark.master == "local[2]"
    settings = load(conf_dir, environ={"HEALTHLAKE_SPARK__MASTER": "spark://127.0.0.1:7077"})
    assert settings.spark.master == "spark://127.0.0.1:7077"
    assert settings.timezone == "Asia/Macau"
    # the untouched keys of a section survive a partial override
    assert settings.spark.conf["spark.sql.session.timeZone"] == "Asia/Shanghai"


def test_environment_sets_case_sensitive_spark_keys(conf_dir):
    """Variable names are upper case; Spark's keys are not: an existing key is matched whatever
    its case, a new one goes in as a mapping (with per-key variables beside it), and a key set
    both as a value and as a mapping is refused."""
    settings = load(conf_dir, environ={
        "HEALTHLAKE_SPARK__CONF__SPARK.DATABRICKS.DELTA.SNAPSHOTPARTITIONS": "1"})
    assert settings.spark.conf["spark.databricks.delta.snapshotPartitions"] == "1"
    assert "spark.databricks.delta.snapshotpartitions" not in settings.spark.conf
    settings = load(conf_dir, environ={
        "HEALTHLAKE_SPARK__CONF": "{spark.driver.extraJavaOptions: -XX:+UseSerialGC}"})
    assert settings.spark.conf["spark.driver.extraJavaOptions"] == "-XX:+UseSerialGC"
    settings = load(conf_dir, environ={
        "HEALTHLAKE_SPARK__CONF": "{spark.driver.extraJavaOptions: -XX:+UseSerialGC}",
        "HEALTHLAKE_SPARK__CONF__SPARK.SQL.SHUFFLE.PARTITIONS": "2"})
    assert settings.spark.conf["spark.driver.extraJavaOptions"] == "-XX:+UseSerialGC"
    assert settings.spark.conf["spark.sql.shuffle.partitions"] == "2"
    with pytest.raises(ConfigError, match="sets whole"):
        load(conf_dir, environ={"HEALTHLAKE_SPARK__MASTER": "local[2]",
                                "HEALTHLAKE_SPARK__MASTER__X": "2"})


def test_unknown_key_names_the_key_and_the_file(conf_dir):
    write_local(conf_dir, "settings.yaml", "spark:\n  mastr: local[2]\n")
    with pytest.raises(ConfigError) as err:
        load(conf_dir, environ={})
    assert "spark.mastr" in str(err.value)
    assert "local/settings.yaml" in str(err.value)
    assert "unknown key" in str(err.value)


def test_unknown_key_from_environment_names_the_variable(conf_dir):
    with pytest.raises(ConfigError) as err:
        load(conf_dir, environ={"HEALTHLAKE_PATHS__LANDNG_ROOT": "/x"})
    assert "paths.landng_root" in str(err.value)
    assert "HEALTHLAKE_PATHS__LANDNG_ROOT" in str(err.value)


def test_wrong_type_names_the_key(conf_dir):
    write_local(conf_dir, "catalog.yaml",
                "tables:\n  gold.x:\n    zone: curated\n    path: gold/x\n"
                "    description: d\n    partition_by: year\n")
    with pytest.raises(ConfigError, match=r"tables\.gold\.x\.partition_by.*expected a list"):
        load(conf_dir, environ={})


def test_table_in_unknown_zone_is_rejected(conf_dir):
    write_local(conf_dir, "catalog.yaml",
                "tables:\n  gold.x:\n    zone: public\n    path: gold/x\n    description: d\n")
    with pytest.raises(ConfigError, match=r"tables\.gold\.x\.zone.*'public'"):
        load(conf_dir, environ={})


def test_bad_timezone_is_rejected(conf_dir):
    with pytest.raises(ConfigError, match="unknown time zone"):
        load(conf_dir, environ={"HEALTHLAKE_TIMEZONE": "Asia/Zhuhai"})


def test_missing_required_key(conf_dir):
    text = (conf_dir / "base" / "settings.yaml").read_text(encoding="utf-8")
    (conf_dir / "base" / "settings.yaml").write_text(
        text.replace("timezone: Asia/Shanghai\n", ""), encoding="utf-8")
    with pytest.raises(ConfigError, match="'timezone': required key is missing"):
        load(conf_dir, environ={})


def test_secret_from_environment_then_file_and_missing_is_an_error(conf_dir, tmp_path):
    key_file = tmp_path / "key"
    write_local(conf_dir, "settings.yaml",
                f"secrets:\n  hmac_key:\n    env: HL_TEST_KEY\n    file: {key_file}\n")
    with pytest.raises(ConfigError) as err:
        load(conf_dir, environ={}).secret("hmac_key")
    assert "HL_TEST_KEY" in str(err.value) and str(key_file) in str(err.value)
    key_file.write_text("   \n")
    key_file.chmod(0o600)  # a key file others can read is refused (tests/test_operations.py)
    with pytest.raises(ConfigError, match="missing or empty"):
        load(conf_dir, environ={}).secret("hmac_key")  # an empty secret is no secret
    key_file.write_text("from-file-" + "f" * 32 + "\n")  # keys are at least 32 bytes
    assert load(conf_dir, environ={}).secret("hmac_key") == "from-file-" + "f" * 32
    from_env = "from-env-" + "e" * 32
    assert load(conf_dir, environ={"HL_TEST_KEY": from_env}).secret("hmac_key") == from_env


def test_secret_value_is_not_in_the_settings_repr(conf_dir):
    value = "s3cr3t-value-" + "v" * 32
    settings = load(conf_dir, environ={"HEALTHLAKE_HMAC_KEY": value})
    assert settings.secret("hmac_key") == value
    assert value not in repr(settings)


def test_unknown_table_lists_the_catalogue(conf_dir):
    with pytest.raises(ConfigError, match="unknown table 'silver.nope'"):
        load(conf_dir, environ={}).table("silver.nope")


def test_invalid_yaml_names_the_file(conf_dir):
    write_local(conf_dir, "broken.yaml", "spark: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load(conf_dir, environ={})
