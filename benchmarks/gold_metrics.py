"""Each gold metric's time on its own, on a lake a pipeline run left, its inputs cached first.

    .venv/bin/python benchmarks/gold_metrics.py --lake-root /work/bench-full --periods 2024 2024-05

Where gold's time goes, metric by metric: the curated tables are read and cached as
`healthlake gold` caches them (their caching timed apart), then every metric function (or group
computed together) of each period runs alone and is materialised. Reads the lake, writes nothing
to it. Updates the section "Gold metrics, one by one" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, publish  # noqa: E402


def main() -> None:
    from jobs.config import environ_under, load
    from jobs.gold import metrics as M
    from jobs.gold.catalogue import load_catalogue
    from jobs.publish.export import parse_period
    from jobs.spark import get_spark

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lake-root", type=Path, required=True,
                    help="--out of a benchmarks/city_pipeline.py run")
    ap.add_argument("--periods", nargs="+", default=["2024", "2024-05"],
                    help="year 2024, quarter 2024Q2, month 2024-05")
    args = ap.parse_args()
    settings = load(environ=environ_under(args.lake_root))
    spark = get_spark(settings, app_name="benchmark-gold-metrics")
    catalogue = load_catalogue(settings)
    caching = []
    tables = {}
    for name, df in M.read_tables(spark, settings).items():
        t0 = time.perf_counter()
        tables[name] = df.cache()
        n = tables[name].count()
        caching.append((name, n, round(time.perf_counter() - t0, 1)))
    timed = []
    for label in args.periods:
        p = parse_period(label)
        inputs = M.inputs_for(tables, catalogue, p)
        for name, fn in M.functions_for(catalogue, p.type):
            t0 = time.perf_counter()
            rows = fn(inputs).localCheckpoint().count()
            timed.append((label, name, rows, round(time.perf_counter() - t0, 1)))
            print(timed[-1], flush=True)
    lines = [f"Command: `.venv/bin/python benchmarks/gold_metrics.py --lake-root {args.lake_root} "
             f"--periods {' '.join(args.periods)}`  ",
             f"Machine: {machine()}; default configuration, one SparkSession.", "",
             "| input, cached | rows | s |", "|---|---:|---:|",
             *(f"| {n} | {rows:,} | {s} |" for n, rows, s in caching), "",
             "| period | metric (or group) | rows | s |", "|---|---|---:|---:|",
             *(f"| {p} | {n} | {rows:,} | {s} |" for p, n, rows, s in timed)]
    for label in args.periods:
        total = round(sum(s for p, _, _, s in timed if p == label), 1)
        lines.append(f"| {label} | **all, one after the other** | | **{total}** |")
    publish("Gold metrics, one by one", lines)


if __name__ == "__main__":
    main()
