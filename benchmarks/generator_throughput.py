"""Generator throughput: rows per second overall and per feed, wall time, peak RSS.

    .venv/bin/python benchmarks/generator_throughput.py --full-city
    .venv/bin/python benchmarks/generator_throughput.py --residents 50000 --days 2

Writes into a temporary directory (removed afterwards unless --keep) and updates the section
"Generator throughput" of docs/benchmarks.md with the command, the machine and the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, peak_rss_gib, update_doc  # noqa: E402
from jobs.config import environ_under, load  # noqa: E402
from jobs.generate import generate  # noqa: E402

SECTION = "Generator throughput"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full-city", action="store_true", help="2,439,585 residents, one day")
    ap.add_argument("--residents", type=int, default=None)
    ap.add_argument("--days", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="output root (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args(argv)

    root = args.out or Path(tempfile.mkdtemp(prefix="healthlake-gen-"))
    settings = load(environ=environ_under(root))
    t0 = time.perf_counter()
    summary = generate(settings, full_city=args.full_city, residents=args.residents,
                       days=args.days)
    wall = time.perf_counter() - t0
    peak_gib = peak_rss_gib()
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    rows = summary["rows"]
    total = sum(rows.values())
    write_s = wall - summary["seconds"]["world"]

    secs = summary["seconds"]
    lines = [f"- {feed}: {n:,} rows, {secs.get(feed, 0):,.1f} s format+write, "
             f"{n / max(secs.get(feed, 0), 1e-9):,.0f} rows/s" for feed, n in rows.items()]
    print(f"residents {summary['residents']:,}, institutions {summary['institutions']}, "
          f"days {len(summary['dates'])}, files {summary['files']:,}, {size / 2**20:,.0f} MiB")
    print(f"wall {wall:,.1f} s (city and records {summary['seconds']['world']:,.1f} s, "
          f"days {write_s:,.1f} s); peak RSS {peak_gib:.2f} GiB")
    print(f"rows {total:,} -> {total / wall:,.0f} rows/s overall")
    print("\n".join(lines))
    if not args.no_doc:
        cmd = "python benchmarks/generator_throughput.py " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:]))
        per_feed = "\n".join(
            f"| {feed} | {n:,} | {secs.get(feed, 0):,.1f} | "
            f"{n / max(secs.get(feed, 0), 1e-9):,.0f} |" for feed, n in rows.items())
        body = f"""
Command: `.venv/bin/{cmd.strip()}` (run {dt.date.today().isoformat()}).
Machine: {machine()}; pure Python/numpy/pandas, one process, Spark not running.

| figure | value |
|---|---|
| residents | {summary['residents']:,} |
| institutions | {summary['institutions']} |
| days | {len(summary['dates'])} |
| files written | {summary['files']:,} ({size / 2**20:,.0f} MiB incl. ground truth) |
| wall time | {wall:,.1f} s |
| of which city, people, records | {summary['seconds']['world']:,.1f} s |
| of which daily files + ground truth | {write_s:,.1f} s |
| of which drawing the day's activity | {secs.get('generate', 0):,.1f} s |
| peak RSS | {peak_gib:.2f} GiB |
| rows, all feeds | {total:,} |
| rows per second, overall | {total / wall:,.0f} |

Per feed: seconds spent formatting, damaging, serialising (and compressing) that feed's files
and writing them, and the rows per second of that stage. Drawing the activity itself is
shared by the clinical feeds and counted separately above.

| feed | rows | seconds | rows/s |
|---|---|---|---|
{per_feed}

The first day of a run carries every institution's full registry snapshot, so
resident_registry dominates; later days carry only creates and updates. XLSX writing
(xlsxwriter, cell by cell) is the slowest format per row.
"""
        update_doc(SECTION, body)
    if not args.keep and args.out is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
