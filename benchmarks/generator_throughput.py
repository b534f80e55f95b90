"""Generator throughput: rows per second overall and per feed, wall time, peak RSS.

    .venv/bin/python benchmarks/generator_throughput.py --full-city
    .venv/bin/python benchmarks/generator_throughput.py --residents 50000 --days 2

Writes into a temporary directory (removed afterwards unless --keep) and updates the section
"Generator throughput" of docs/benchmarks.md with the command, the machine and the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs.config import load  # noqa: E402
from jobs.generate import generate  # noqa: E402

SECTION = "## Generator throughput"


def _machine() -> str:
    cores = os.cpu_count() or 0
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cores} cores, {mem:.0f} GiB RAM, Python {platform.python_version()}, "
            f"{platform.system()}")


def _update_doc(doc: Path, body: str) -> None:
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    block = f"{SECTION}\n\n{body.strip()}\n"
    if SECTION in text:
        text = re.sub(rf"{re.escape(SECTION)}\n.*?(?=\n## |\Z)", block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")


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
    env = {**os.environ,
           "HEALTHLAKE_PATHS__LANDING_ROOT": str(root / "landing"),
           "HEALTHLAKE_PATHS__GROUND_TRUTH_ROOT": str(root / "ground_truth"),
           "HEALTHLAKE_PATHS__LATE_DELIVERIES_ROOT": str(root / "late_deliveries"),
           "HEALTHLAKE_PATHS__REFERENCE_ROOT": str(root / "reference")}
    settings = load(environ=env)
    t0 = time.perf_counter()
    summary = generate(settings, full_city=args.full_city, residents=args.residents,
                       days=args.days)
    wall = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
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
Machine: {_machine()}; pure Python/numpy/pandas, one process, Spark not running.

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
        _update_doc(ROOT / "docs" / "benchmarks.md", body)
    if not args.keep and args.out is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
