"""One day of the daily DAG, task by task, on a small generated city: each task's command as the
DAG builds it (the feeds' reads in plain Python, every other task a spark-submit), run one after
the other, timed. What the live Airflow tests pay per day, without Airflow around it.

    .venv/bin/python benchmarks/dag_day_tasks.py --root /tmp/dagday [--residents 300]

The city (two days, seed of conf) is generated under --root once and reused; the lake under it
is removed first, so every run times the first day on an empty lake. Spark settings are the live
test's (``tests.conftest.TINY_SPARK``: local[2], 1 GiB driver, C1 JIT with a full code
cache). Updates the section "Daily DAG, task by task" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, update_doc  # noqa: E402

SECTION = "Daily DAG, task by task"


def day_tasks(logical_date: dt.datetime) -> list[tuple[str, str]]:
    """(task id, shell command) of one daily run, in the DAG's order."""
    from jobs.contracts import load_contracts
    from jobs.orchestration import daily_job_command, daily_python_command

    def spark(cmd: str, *args: str) -> str:
        return daily_job_command(cmd, logical_date, *args)

    tasks = [(f"ingest.{feed}", daily_python_command("ingest-read", logical_date, "--feed", feed))
             for feed in sorted(load_contracts().feeds)]
    return tasks + [
        ("ingest.commit", spark("ingest")),
        ("check_bronze", spark("quality", "--layer", "ops", "--layer", "bronze")),
        ("standardise", spark("standardise")),
        ("resolve", spark("resolve")),
        ("curate", spark("curate")),
        ("check_silver", spark("quality", "--layer", "silver_std", "--layer", "silver")),
        ("gold", spark("gold")),
        ("check_gold", spark("quality", "--layer", "gold")),
    ]


def main() -> None:
    from jobs.generate import generate
    from tests.conftest import TINY_SPARK, make_settings, settings_env
    from tests.test_airflow_live import logical_date

    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--residents", type=int, default=300)
    args = parser.parse_args()
    root = Path(args.root)
    day = dt.date(2024, 4, 15)
    if not (root / "landing").exists():
        generate(make_settings(root, **TINY_SPARK), residents=args.residents, start_date=day,
                 days=2)
    shutil.rmtree(root / "lake", ignore_errors=True)
    env = {**os.environ, **settings_env(root, **TINY_SPARK)}
    os.environ.update(env)  # the command builders load the configuration from the environment
    rows, total = [], 0.0
    for task, command in day_tasks(dt.datetime.fromisoformat(logical_date(day))):
        started = time.perf_counter()
        done = subprocess.run(command, shell=True, env=env, cwd=ROOT, capture_output=True,
                              text=True)
        seconds = time.perf_counter() - started
        if done.returncode:
            sys.exit(f"{task} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        print(f"{task:28} {seconds:7.1f} s", flush=True)
        rows.append(f"| `{task}` | {seconds:.1f} |")
        total += seconds
    body = "\n".join([
        f"Command: `.venv/bin/python benchmarks/dag_day_tasks.py --root {root} --residents "
        f"{args.residents}` ({dt.date.today()}; {machine()}; nothing else running).",
        "",
        f"The first day ({day}) of a {args.residents}-resident city on an empty lake, each task's "
        "command as `healthlake_daily` builds it, one after the other, with the live test's "
        "Spark settings (local[2], 1 GiB driver, C1 JIT with a full code cache).",
        "",
        "| task | seconds |", "|---|---:|", *rows, f"| **day** | **{total:.0f}** |",
    ])
    update_doc(SECTION, body)
    print(f"day: {total:.0f} s")


if __name__ == "__main__":
    main()
