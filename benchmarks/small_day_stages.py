"""Standardise and gold of one day on a small lake, twice (cold, then warm), and whether the
re-runs left every table as it was.

    .venv/bin/python benchmarks/small_day_stages.py --root LAKE_ROOT --date 2024-04-15

LAKE_ROOT is a lake laid out as the tests lay theirs (``tests.conftest.make_settings``), for
example a copy of the fault suite's 300-resident lake after a day has run. The tuning pass of
issue 9 used it to keep or drop changes to the small-data cost of these jobs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    from jobs.gold import job as gold
    from jobs.lake import RUN_COLUMNS, fingerprint
    from jobs.silver import job as standardise
    from jobs.spark import get_spark
    from tests.conftest import make_settings

    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--date", type=dt.date.fromisoformat, required=True)
    args = parser.parse_args()
    settings = make_settings(Path(args.root))
    spark = get_spark(settings, app_name="bench-small-day",
                      extra_conf={"spark.default.parallelism": "2",
                                  "spark.databricks.delta.snapshotPartitions": "1"})
    when = (*RUN_COLUMNS, "ingested_at")
    before = fingerprint(spark, settings, when)
    for run in ("cold", "warm"):
        for name, job in (("standardise", standardise), ("gold", gold)):
            started = time.perf_counter()
            job.run(spark, settings, args.date)
            print(f"{run} {name}: {time.perf_counter() - started:.1f} s", flush=True)
    after = fingerprint(spark, settings, when)
    print("tables unchanged by the re-runs:", before == after)


if __name__ == "__main__":
    main()
