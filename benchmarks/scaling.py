"""How the pipeline's time grows with the city and with the days, from city_pipeline runs.

    .venv/bin/python benchmarks/scaling.py                  # runs what is missing, then reports
    .venv/bin/python benchmarks/scaling.py --report-only    # only the runs already recorded

- **Residents**: 0.25x, 0.5x, 1x and 2x the full city (2,439,585 residents; institutions scale
  with residents, as the generator builds a city), each `benchmarks/city_pipeline.py
  --residents N --days 2` under its own --out (the 1x run is the full city's own
  `--full-city --days 31` when its first two days are recorded). Compared: the per-day stages
  (ingest, standardise, resolve, curate, quality) of day 1 (every registry's snapshot) and
  day 2 (a usual day), each stage's seconds as recorded by the run's progress.json.
- **Days**: the full city's run, the same stages summed over its first 1, 7 and 30 days.

A size that is not recorded is run first (hours at 1x and 2x on 2 cores: ``--resume`` goes on
where a stopped one was). Updates the section "Scaling" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, publish  # noqa: E402

FULL_CITY = 2_439_585
START = dt.date(2024, 4, 15)
PER_DAY = ("ingest", "standardise", "resolve", "curate", "quality")
FULL_RUN = Path("/tmp/healthlake-bench-pipeline")


def recorded(out: Path) -> dict:
    path = out / "progress.json"
    return json.loads(path.read_text()) if path.exists() else {}


def day_seconds(progress: dict, day: dt.date) -> dict[str, float] | None:
    """Each per-day stage's seconds for ``day`` (initial or incremental phase), None if any is
    not recorded."""
    done = progress.get("done", {})
    out = {}
    for stage in PER_DAY:
        keys = [f"{phase}/{stage}/{day}" for phase in ("initial", "incremental")]
        found = [done[k] for k in keys if k in done]
        if not found:
            return None
        out[stage] = found[0]
    return out


def run_size(factor: float, out: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "city_pipeline.py"),
           "--residents", str(round(factor * FULL_CITY)), "--days", "2", "--out", str(out)]
    if (out / "progress.json").exists():
        cmd.append("--resume")
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    ap.add_argument("--full-run", type=Path, default=FULL_RUN,
                    help="--out of the full city's `city_pipeline.py --full-city --days 31`")
    ap.add_argument("--out-prefix", default="/tmp/healthlake-bench-scale-")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()

    days = [START, START + dt.timedelta(days=1)]
    full = recorded(args.full_run)
    by_size: dict[float, tuple[dict, dict, str]] = {}
    for factor in sorted(args.sizes):
        out = Path(f"{args.out_prefix}{factor:g}")
        if factor == 1.0:  # the full city's own run (days 1 and 2 of its 30)
            if all(day_seconds(full, d) for d in days):
                by_size[factor] = (*[day_seconds(full, d) for d in days], str(args.full_run))
            continue
        if not all(day_seconds(recorded(out), d) for d in days) and not args.report_only:
            run_size(factor, out)
        progress = recorded(out)
        if all(day_seconds(progress, d) for d in days):
            by_size[factor] = (*[day_seconds(progress, d) for d in days], str(out))

    lines = [f"Command: `.venv/bin/python benchmarks/scaling.py` (report of {dt.date.today()})  ",
             f"Machine: {machine()}; each run one SparkSession, default configuration.  ",
             "Seconds of the per-day stages (ingest, standardise, resolve, curate, quality) as "
             "each run recorded them; gold and the model's training are left out (gold runs once "
             "over a run's range, so it is not per day).", ""]
    if by_size:
        base = by_size.get(1.0)
        lines += ["| city | residents | day 1 (s) | day 2 (s) | day 1 / 1x | day 2 / 1x | run |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for factor, (d1, d2, out) in by_size.items():
            t1, t2 = round(sum(d1.values()), 1), round(sum(d2.values()), 1)
            rel = (f"{t1 / sum(base[0].values()):.2f} | {t2 / sum(base[1].values()):.2f}"
                   if base else "- | -")
            lines.append(f"| {factor:g}x | {round(factor * FULL_CITY):,} | {t1} | {t2} | {rel} "
                         f"| `{out}` |")
        lines += ["", "By stage, day 1 / day 2 (s):", "",
                  "| city | " + " | ".join(PER_DAY) + " |", "|---|" + "---:|" * len(PER_DAY)]
        for factor, (d1, d2, _) in by_size.items():
            lines.append(f"| {factor:g}x | " + " | ".join(f"{d1[s]} / {d2[s]}" for s in PER_DAY)
                         + " |")
    missing = [f"{f:g}x" for f in args.sizes if f not in by_size]
    if missing:
        lines += ["", f"Not recorded yet: {', '.join(missing)}."]

    spans = [1, 7, 30]
    per_day = [day_seconds(full, START + dt.timedelta(days=k)) for k in range(max(spans))]
    lines += ["", f"Days, full city (`{args.full_run}`):", "",
              "| days | seconds, per-day stages | per day |", "|---:|---:|---:|"]
    for n in spans:
        if all(per_day[:n]):
            total = sum(sum(d.values()) for d in per_day[:n])
            lines.append(f"| {n} | {total:,.1f} | {total / n:,.1f} |")
        else:
            lines.append(f"| {n} | not recorded yet | |")
    publish("Scaling", lines)


if __name__ == "__main__":
    main()
