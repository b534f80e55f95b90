"""The whole pipeline on a generated city: an initial load of several days, then one incremental
day, every stage timed, with peak memory. The scaling runs are this command at other sizes.

    .venv/bin/python benchmarks/city_pipeline.py --residents 2000 --days 3
    .venv/bin/python benchmarks/city_pipeline.py --full-city --days 31   # 30 days, then one

1. Generates the city (kept under --out and reused when it is already there) into a fresh lake.
2. Initial load: days 1 .. K-1, each stage over the whole range before the next, as
   `healthlake <stage> --date D1 --until D(K-1)` runs them: ingest, standardise, train-model
   (once, on day 1: what a city does on its initial load), resolve, curate, quality, gold.
3. Incremental day: day K through every stage, as the daily DAG runs it.

One SparkSession with the default configuration (conf/base; the CLI starts one per command, which
adds a JVM start per stage); after each step what it left cached or checkpointed is released, as
its own process would release it by ending (``jobs.spark.release_cached``). Updates the section
"Pipeline: <who>, <K> days" of docs/benchmarks.md.

A full city's 31 days take longer than one sitting. ``--resume`` keeps the lake and goes on
from ``progress.json`` under --out: every stage's day (gold's range, train-model) is recorded
with its seconds once it has committed, so a run that was stopped repeats at most the day it
was in (every stage replaces its day, so repeating it is safe) and the table adds up the
recorded seconds, with the number of sittings. Each job's own summary (seconds by step,
counts) is appended to ``jobs.log`` under --out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, peak_rss_gib, publish  # noqa: E402

START = dt.date(2024, 4, 15)
SECTION = "Pipeline"


def stages(settings) -> list[tuple[str, bool, object]]:
    """(stage, by_day, run(spark, days)) in the order of the daily DAG; a stage ``by_day`` is
    run (and recorded) one day at a time, the others once over the phase's days."""
    from jobs.gold import job as gold
    from jobs.ingest import job as ingest
    from jobs.quality import job as quality
    from jobs.silver import curate, resolve
    from jobs.silver import job as standardise

    def each(job):
        return lambda spark, days: [job.run(spark, settings, d) for d in days]

    def train(spark, days):
        if not settings.path(settings.matching["model"]["model_file"]).exists():
            return resolve.train_model(spark, settings, days[0], days[0])
        return None

    def persons(spark, days):
        return resolve.refresh_persons(spark, settings, resolve.load_matching_params(settings))

    # `healthlake resolve --date D1 --until DK` (resolve.run_days): the days in order, then
    # silver.person once; recorded as each day, then "resolve-persons", summed as resolve.
    def resolve_one(spark, days):
        return [resolve.run_days(spark, settings, [d], refresh=False) for d in days]

    return [("ingest", True, each(ingest)), ("standardise", True, each(standardise)),
            ("train-model", False, train), ("resolve", True, resolve_one),
            ("resolve-persons", False, persons),
            ("curate", True, each(curate)), ("quality", True, each(quality)),
            ("gold", False, lambda spark, days: gold.run_days(spark, settings, days))]


class Progress:
    """What has run, with its seconds, in ``progress.json``: written after every step, so a
    stopped run goes on where it was (``--resume``)."""

    def __init__(self, path: Path, params: dict, resume: bool):
        self.path = path
        old = json.loads(path.read_text()) if resume and path.exists() else {}
        if old.get("params") not in (None, params):
            raise SystemExit(f"{path} is of another run ({old['params']}): drop --resume")
        self.data = {"params": params, "done": old.get("done", {}),
                     "sittings": old.get("sittings", 0) + 1,
                     "peak_gib": old.get("peak_gib", {"driver": 0.0, "jvm": 0.0})}

    def seconds(self, key: str) -> float | None:
        return self.data["done"].get(key)

    def record(self, key: str, seconds: float) -> None:
        self.data["done"][key] = seconds
        peak = self.data["peak_gib"]
        peak["driver"] = max(peak["driver"], round(peak_rss_gib(), 2))
        peak["jvm"] = max(peak["jvm"], round(peak_rss_gib(children=True), 2))
        self.path.write_text(json.dumps(self.data, indent=1))


def main() -> None:
    from jobs.config import environ_under, load
    from jobs.generate import generate
    from jobs.lake import read_table
    from jobs.spark import get_spark, release_cached

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = ap.add_mutually_exclusive_group(required=True)
    size.add_argument("--residents", type=int)
    size.add_argument("--full-city", action="store_true")
    ap.add_argument("--days", type=int, required=True,
                    help="extract days in all: the initial load is all but the last")
    ap.add_argument("--out", default="/tmp/healthlake-bench-pipeline")
    ap.add_argument("--resume", action="store_true",
                    help="keep the lake and go on from progress.json (a stopped run)")
    args = ap.parse_args()
    if args.days < 2:
        ap.error("--days must be at least 2: an initial load and an incremental day")
    started = time.perf_counter()
    root = Path(args.out)
    env = environ_under(root) | {
        "HEALTHLAKE_HMAC_KEY": "benchmark-key-not-for-production",
        # The city's own model, trained on its first day by the initial load.
        "HEALTHLAKE_MATCHING__MODEL__MODEL_FILE": str(root / "residents-match-model.json")}
    settings = load(environ=env)
    marker = root / "generated.json"
    want = {"residents": args.residents, "full_city": args.full_city, "days": args.days}
    generated_s = None
    if not (marker.exists() and json.loads(marker.read_text())["params"] == want):
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        summary = generate(settings, residents=args.residents, full_city=args.full_city,
                           start_date=START, days=args.days)
        generated_s = round(time.perf_counter() - t0, 1)
        marker.write_text(json.dumps({"params": want, "summary": summary}, default=str))
    progress = Progress(root / "progress.json", want, args.resume)
    # Each job's own summary (its seconds by step, its counts) goes to jobs.log beside it.
    handler = logging.FileHandler(root / "jobs.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger("jobs").addHandler(handler)
    logging.getLogger("jobs").setLevel(logging.INFO)
    if progress.data["sittings"] == 1:  # a run from nothing (or --resume with nothing done)
        shutil.rmtree(root / "lake", ignore_errors=True)
        (root / "residents-match-model.json").unlink(missing_ok=True)
    generated = json.loads(marker.read_text())["summary"]
    spark = get_spark(settings, app_name="benchmark-pipeline")
    days = [START + dt.timedelta(days=i) for i in range(args.days)]
    seconds: dict[str, dict[str, float]] = {"initial": {}, "incremental": {}}
    for phase, phase_days in (("initial", days[:-1]), ("incremental", days[-1:])):
        for name, by_day, run in stages(settings):
            steps = ([(f"{phase}/{name}/{d}", [d]) for d in phase_days] if by_day
                     else [(f"{phase}/{name}", phase_days)])
            for key, step_days in steps:
                if progress.seconds(key) is None:
                    t0 = time.perf_counter()
                    run(spark, step_days)
                    progress.record(key, round(time.perf_counter() - t0, 1))
                    release_cached(spark)  # what the step's own process would drop at its end
                    print(f"[{time.strftime('%H:%M:%S')}] {key}: {progress.seconds(key)} s",
                          flush=True)
            stage = name.removesuffix("-persons")
            seconds[phase][stage] = round(seconds[phase].get(stage, 0.0)
                                          + sum(progress.seconds(k) for k, _ in steps), 1)
    log = [v or 0 for v in read_table(spark, settings, "ops.ingest_log").groupBy().sum(
        "rows_in", "rows_loaded", "rows_quarantined").first()]
    persons = read_table(spark, settings, "silver.person").count()
    who = ("full city (2.44 M residents)" if args.full_city
           else f"{args.residents:,} residents")
    cmd = ("`.venv/bin/python benchmarks/city_pipeline.py "
           + ("--full-city" if args.full_city else f"--residents {args.residents}")
           + f" --days {args.days}`")
    total = {k: round(sum(v.values()), 1) for k, v in seconds.items()}
    lines = [
        f"Command: {cmd} (run {dt.date.today()})  ", f"Machine: {machine()}; Spark as "
        "configured in conf/base (default configuration), one session for the run.  ",
        f"Data: {who}, {args.days} extract days from {START}; files generated "
        + (f"in {generated_s} s" if generated_s is not None else "earlier (reused)")
        + f"; rows in {log[0]:,}, loaded {log[1]:,}, quarantined {log[2]:,}; "
        f"{persons:,} persons ({generated.get('residents', '?')} residents generated).  ",
        f"Peak memory: driver {progress.data['peak_gib']['driver']:.1f} GiB, Spark JVM "
        f"{progress.data['peak_gib']['jvm']:.1f} GiB. "
        + (f"Whole run {round(time.perf_counter() - started, 1)} s."
           if progress.data["sittings"] == 1 else
           f"Run in {progress.data['sittings']} sittings (`--resume`); the seconds are those "
           "recorded per stage and day, a stopped day's are its finished re-run's."),
        "",
        f"| stage | initial load, days 1 to {args.days - 1} (s) | incremental day "
        f"{args.days} (s) |",
        "|---|---:|---:|",
        *(f"| {name} | {seconds['initial'][name]} | {seconds['incremental'][name]} |"
          for name in seconds["initial"]),
        f"| **total** | **{total['initial']}** | **{total['incremental']}** |",
    ]
    publish(f"{SECTION}: {who}, {args.days} days", lines)


if __name__ == "__main__":
    main()
