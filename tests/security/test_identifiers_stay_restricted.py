"""No identifier outside the restricted root (issue 26, item 4): Spark's and Splink's
checkpoints, the spill of the session and `healthlake match`'s working files live in private
run folders under the restricted zone and go when the job ends; landing, late deliveries and
ground truth are closed to other accounts; `healthlake privacy-scan` looks through every folder
the pipeline writes and fails on a private folder others can open."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from jobs.config import PROJECT_ROOT, load
from tests.conftest import settings_env

# A specification for `healthlake match` on restricted.identity: what an analyst with the
# pipeline's account might run to find duplicate local patients.
IDENTITY_SPEC = {
    "unique_id_column": "lp_id",
    "threshold_match_probability": 0.95,
    "deterministic_rules": [["national_id"]],
    "blocking_rules": [["birth_date"]],
    "comparisons": [{"function": "ExactMatch", "column": "name"},
                    {"function": "ExactMatch", "column": "phone"}],
    "training": {"prior_rules": [["name", "birth_date"]], "u_max_pairs": 20000, "seed": 7,
                 "em_blocking_rules": [["birth_date"]]},
}


def _inside(path: str | Path, root: Path) -> bool:
    return Path(str(path).removeprefix("file:")).resolve().is_relative_to(root.resolve())


def _checkpoint_dir(spark) -> str:
    return spark.sparkContext._jsc.sc().getCheckpointDir().get()


def _open_to_others(path: Path) -> bool:
    return bool(stat.S_IMODE(path.stat().st_mode) & 0o077)


def test_landing_late_deliveries_and_ground_truth_are_closed_to_other_accounts(
        settings, ingested_city):
    """The generator made the roots 0700 before writing and every file and folder under them
    readable by its owner only."""
    for root in (settings.landing_root, settings.ground_truth_root,
                 settings.late_deliveries_root):
        assert root.is_dir() and stat.S_IMODE(root.stat().st_mode) == 0o700, root
        opened = [p for p in root.rglob("*") if _open_to_others(p)]
        assert not opened, f"{len(opened)} paths under {root} others can read, e.g. {opened[:3]}"
    assert any(settings.landing_root.rglob("*.csv")), "the city landed files"


def test_checkpoints_spill_and_match_files_stay_in_the_restricted_root(
        spark, settings, lake_root, gold_lake, tmp_path, monkeypatch):
    """After the session city's resolution, curation and gold: the session checkpoints and
    spills under <restricted>/_scratch; `healthlake match` on restricted.identity checkpoints
    into its own folder there, which is gone afterwards; its read and its write are audited; a
    copy outside the restricted zone is refused; no checkpoint or spill folder anywhere else
    under the lake, and no identifier in the curated and ops zones' files."""
    from jobs import cli, privacy
    from jobs.match import engine
    from jobs.operations import private_roots

    scratch = settings.local_dir("restricted") / "_scratch"
    assert _inside(_checkpoint_dir(spark), scratch), _checkpoint_dir(spark)
    assert _inside(spark.sparkContext.getConf().get("spark.local.dir"), scratch)
    assert stat.S_IMODE(scratch.stat().st_mode) == 0o700

    for k, v in settings_env(lake_root).items():
        monkeypatch.setenv(k, v)
    from jobs import audit

    audit._pending.clear()  # reads by earlier jobs of this process: not the match command's
    spec = tmp_path / "identity-match.yaml"
    spec.write_text(json.dumps(IDENTITY_SPEC), encoding="utf-8")
    identity = settings.table_path("restricted.identity")
    during = {}
    real_dedupe = engine.dedupe

    def observed_dedupe(spark_, df, spec_, model):
        during["checkpoints"] = _checkpoint_dir(spark_)
        return real_dedupe(spark_, df, spec_, model)

    monkeypatch.setattr(engine, "dedupe", observed_dedupe)
    outside = tmp_path / "identity-copy.csv"
    argv = ["match", "--config", str(spec), "--input", str(identity)]
    assert cli.main([*argv, "--output", str(outside)]) == 1
    assert not outside.exists() and "checkpoints" not in during, "refused before any work"

    inside = settings.local_dir("restricted") / "analyses" / "identity-matches.parquet"
    assert cli.main([*argv, "--output", str(inside)]) == 0
    used = Path(during["checkpoints"].removeprefix("file:"))  # <job folder>/checkpoints/<uuid>
    job_folder = next((p for p in used.parents if p.name.startswith("match-")), used)
    assert _inside(job_folder, scratch) and job_folder != used, used
    assert not job_folder.exists(), "the match job's folder is removed when it ends"
    assert _inside(_checkpoint_dir(spark), scratch), "back to the session's folder"

    log = (spark.read.format("delta").load(settings.table_location("ops.audit_log"))
           .where("command LIKE 'healthlake match%'").toPandas())
    read = log[log["action"] == "read_restricted"]
    assert list(read["target"]) == ["restricted.identity"]
    version = max(int(p.stem) for p in (identity / "_delta_log").glob("*.json"))
    assert read["table_version"].iloc[0] == version
    assert read["rows"].iloc[0] == spark.read.format("delta").load(str(identity)).count()
    wrote = log[log["action"] == "write"]
    assert list(wrote["target"]) == [str(inside)] and wrote["rows"].iloc[0] == read["rows"].iloc[0]

    restricted = settings.local_dir("restricted").resolve()
    left = [p for p in lake_root.rglob("*") if p.is_dir()
            and (p.name.startswith(("blockmgr-", "spark-", "rdd-", "match-"))
                 or "checkpoint" in p.name) and not p.resolve().is_relative_to(restricted)]
    assert not left, f"working folders outside the restricted root: {left[:5]}"
    known = privacy.known_values(settings.ground_truth_root / "persons.parquet")
    private = list(private_roots(settings).values())
    for zone in ("curated", "ops"):
        hits = privacy.scan_folder(settings.local_dir(zone), known, private)
        assert not hits, f"identifiers in the {zone} zone's files: {list(hits.items())[:3]}"


KILLED_RUN = """
import os, sys, time
from jobs.config import load
from jobs.operations import run_scratch
folder = run_scratch(load(), "resolve-1")
(folder / "part-0.parquet").write_text("identifiers")
print(folder, flush=True)
time.sleep(120)
"""


def test_a_killed_run_s_scratch_folder_is_removed_by_the_next_run(tmp_path):
    from jobs.operations import run_scratch, scratch_root

    env = {**os.environ, **settings_env(tmp_path)}
    run = subprocess.Popen([sys.executable, "-c", KILLED_RUN], cwd=PROJECT_ROOT, env=env,
                           stdout=subprocess.PIPE, text=True)
    try:
        killed_folder = Path(run.stdout.readline().strip())
        settings = load(environ=settings_env(tmp_path))
        mine = run_scratch(settings, "gold-1")  # the other run lives: its folder stays
        assert killed_folder.is_dir() and mine.is_dir()
        run.send_signal(signal.SIGKILL)
        run.wait(10)
        run_scratch(settings, "gold-2")  # the next run of any job clears the dead run's folder
        assert not killed_folder.parent.exists()
        assert mine.is_dir(), "a living run's folder is never removed"
        assert stat.S_IMODE(scratch_root(settings).stat().st_mode) == 0o700
    finally:
        run.kill()


def _privacy_settings(root: Path):
    env = settings_env(root) | {
        "HEALTHLAKE_PATHS__CACHE_ROOT": str(root / "cache"),
        "HEALTHLAKE_PUBLISH__EXPORTS_ROOT": str(root / "exports"),
        "HEALTHLAKE_PUBLISH__REPORTS_ROOT": str(root / "reports"),
        "HEALTHLAKE_ORCHESTRATION__LOCAL_AIRFLOW__HOME": str(root / "cache" / "airflow"),
    }
    return load(environ=env)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_privacy_scan_reads_every_written_folder_and_checks_the_private_ones(tmp_path):
    """An identity number planted in an export, in a .cache file (an Airflow task log) and in a
    curated table's Delta log statistics (with a known name) is found; a landing folder others
    can open fails the scan. The private folders themselves are not searched (they hold
    identifiers by design)."""
    from jobs import privacy
    from jobs.identity import check_char
    from jobs.operations import secure_private_roots

    settings = _privacy_settings(tmp_path)
    secure_private_roots(settings)
    first17 = "44040419730506746"
    national_id = first17 + check_char(first17)
    known = {national_id, "林欣", "19880741116"}
    _write(settings.landing_root / "2024-04-15" / "ZHT0001" / "registry.csv",
           f"id,name\n{national_id},林欣\n")  # landing holds them: not a finding
    clean = privacy.run(None, settings, [], known, everything=True)
    assert clean["file_hits"] == {} and clean["open_private_folders"] == {}
    assert {"cache", "exports", "zone curated", "zone ops"} <= set(clean["folders_scanned"])

    export = _write(settings.path(settings.publish["exports_root"]) / "2024" / "visits.csv",
                    f"district,person\n440402,{national_id}\n")
    task_log = _write(settings.path(settings.paths.cache_root) / "airflow" / "logs" /
                      "dag_id=healthlake_daily" / "attempt=1.log",
                      f"INFO resolving record of {national_id}\n")
    stats = json.dumps({"numRecords": 3, "minValues": {"name": "林欣", "note": "x"},
                        "maxValues": {"name": "林欣"}}, ensure_ascii=True)
    delta_log = _write(settings.local_dir("curated") / "silver" / "old_person" / "_delta_log" /
                       "00000000000000000000.json",
                       json.dumps({"add": {"path": "part-0.parquet", "stats": stats}}) + "\n")
    (settings.local_dir("curated") / "silver" / "old_person" / "part-0.parquet").unlink(
        missing_ok=True)
    settings.local_dir("ops").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"person_id": ["P1"], "phone": ["19880741116"]}).to_parquet(
        settings.local_dir("ops") / "stray.parquet")
    with pytest.raises(privacy.PrivacyError) as found:
        privacy.run(None, settings, [], known, everything=True)
    message = str(found.value)
    for path in (export, task_log, delta_log, settings.local_dir("ops") / "stray.parquet"):
        assert str(path) in message, (path, message)
    assert "known_value" in message.split(str(delta_log))[1].splitlines()[0]
    assert national_id not in message, "findings are masked"
    for path in (export, task_log, delta_log, settings.local_dir("ops") / "stray.parquet"):
        path.unlink()

    settings.landing_root.chmod(0o755)
    with pytest.raises(privacy.PrivacyError, match="landing.*mode 755") as opened:
        privacy.run(None, settings, [], known, everything=True)
    assert str(settings.landing_root) in str(opened.value)
    settings.landing_root.chmod(0o700)
    assert privacy.run(None, settings, [], known, everything=True)["file_hits"] == {}
