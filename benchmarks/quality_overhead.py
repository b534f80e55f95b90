"""What the quality checks cost on a full-scale day, beside the stages whose tables they check.

    .venv/bin/python benchmarks/quality_overhead.py --lake /tmp/healthlake-bench-er-full \\
        --date 2024-04-15 --driver-memory 14g

Runs on a lake another benchmark prepared and kept: `entity_resolution.py --full-city` leaves
one extract day of the 2.44 M-resident city ingested, standardised and resolved, with the seconds
of each stage in prepared.json and resolution.json. `healthlake quality` then validates the
tables that lake holds (ops.ingest_log, ops.feed_counts, bronze.*, silver_std.*,
silver.person_link) for the day, and the quality seconds are set against the seconds of ingest,
standardisation and entity resolution (the goal: under 25 %).
Updates the section "Data quality: overhead on a full-city day" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, peak_rss_gib, update_doc  # noqa: E402
from jobs.config import environ_under, load  # noqa: E402

SECTION = "Data quality: overhead on a full-city day"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lake", default="/tmp/healthlake-bench-er-full")
    ap.add_argument("--date", default="2024-04-15")
    ap.add_argument("--driver-memory", default="14g")
    args = ap.parse_args()
    root = Path(args.lake)
    day = dt.date.fromisoformat(args.date)
    stages = json.loads((root / "prepared.json").read_text())["seconds"]
    resolution = json.loads((root / "resolution.json").read_text())
    stages = {"ingest": stages["ingest"], "standardise": stages["standardise"],
              "resolve": resolution["er_seconds"]}

    from jobs.quality import job
    from jobs.spark import get_spark

    env = environ_under(root) | {"HEALTHLAKE_HMAC_KEY": "benchmark-key-not-for-production"}
    settings = load(environ=env)
    spark = get_spark(settings, app_name="benchmark-quality",
                      extra_conf={"spark.driver.memory": args.driver_memory})
    tables = ["ops.ingest_log", "ops.feed_counts", "silver.person_link",
              *sorted(t for t in settings.tables if t.startswith(("bronze.", "silver_std.")))]
    t0 = time.perf_counter()
    result = job.run(spark, settings, day, tables=tables)
    seconds = time.perf_counter() - t0
    pipeline = sum(stages.values())
    rows = {t: spark.read.format("delta").load(str(settings.table_path(t)))
            .where(f"extract_date = DATE'{day}'").count() for t in tables
            if settings.table_path(t).exists()}
    per_suite = "\n".join(f"| {name} | {rows.get(name, '-'):,} | {text} |"
                          for name, text in sorted(result["suites"].items()))
    body = f"""Command: `.venv/bin/python benchmarks/quality_overhead.py --lake {root} --date {day}
--driver-memory {args.driver_memory}` on the lake `benchmarks/entity_resolution.py --full-city
--days 1` prepared (one extract day of 2.44 M residents). Machine: {machine()}.

| | seconds |
|---|---:|
| ingest + standardise + entity resolution of the day (as recorded there) | {pipeline:,.0f} |
| `healthlake quality` of the tables they wrote ({len(result['suites'])} suites) | {seconds:,.0f} |
| **overhead** | **{100 * seconds / pipeline:.1f} %** (goal: under 25 %) |

Quality steps: {json.dumps(result['seconds_by_step'])}; peak JVM resident memory
{peak_rss_gib(children=True):.1f} GiB. Failures: {len(result['failed_fail'])} fail,
{len(result['failed_warn'])} warn{': ' + '; '.join(result['failed_warn'])[:600]
                                   if result['failed_warn'] else ''}.

| suite | rows of the day | result |
|---|---:|---|
{per_suite}
"""
    update_doc(SECTION, body)
    print(body)


if __name__ == "__main__":
    main()
