"""Bronze ingest throughput beside pyarrow's CSV parse of the same files, in the same run.

    .venv/bin/python benchmarks/ingest_throughput.py --full-city
    .venv/bin/python benchmarks/ingest_throughput.py --residents 200000

1. Generates one extract day (kept under --out and reused when it is already there).
2. pyarrow: parses every CSV file of that day (each with its encoding and delimiter, all columns
   as strings, pyarrow's threads on all cores) - the floor for reading those bytes at all.
3. healthlake: `jobs.ingest.job.run` on a landing view that holds exactly the CSV institutions
   (same files), into a fresh lake: reading, checks, quarantine, reconciliation, Delta commits.
4. healthlake on the whole day (JSON Lines, XLSX too), for the full picture.
Reports MB/s of each and the ratio healthlake / pyarrow on the same CSV bytes, and updates the
section "Bronze ingest throughput" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine, peak_rss_gib, update_doc  # noqa: E402
from jobs.config import environ_under, load  # noqa: E402
from jobs.contracts import load_contracts  # noqa: E402

SECTION = "Bronze ingest throughput"
DAY = dt.date(2024, 4, 15)


def generate_once(root: Path, residents: int | None, full_city: bool) -> dict:
    """Generate the day unless this exact one is already there."""
    from jobs.generate import generate

    marker = root / "generated.json"
    want = {"residents": residents, "full_city": full_city, "day": DAY.isoformat()}
    if marker.exists() and json.loads(marker.read_text())["params"] == want:
        return json.loads(marker.read_text())["summary"]
    shutil.rmtree(root, ignore_errors=True)
    settings = load(environ=environ_under(root))
    summary = generate(settings, residents=residents, full_city=full_city, start_date=DAY, days=1)
    marker.write_text(json.dumps({"params": want, "summary": summary}, default=str))
    return summary


def csv_institutions(root: Path) -> dict[str, str]:
    """institution_id -> profile, for institutions that deliver CSV."""
    contracts = load_contracts()
    with (root / "reference" / "institutions.csv").open(encoding="utf-8") as fh:
        rows = [line.rstrip("\n").split(",") for line in fh]
    head = rows[0]
    i_id, i_prof = head.index("institution_id"), head.index("profile")
    return {r[i_id]: r[i_prof] for r in rows[1:]
            if contracts.profiles[r[i_prof]].format == "csv"}


def _read_csv(path: Path, profile_name: str) -> pa.Table:
    p = load_contracts().profiles[profile_name]
    header = path.read_bytes().split(b"\n", 1)[0].decode(p.encoding).lstrip("\ufeff")
    names = header.split(p.delimiter)
    return pacsv.read_csv(
        path, read_options=pacsv.ReadOptions(encoding=p.encoding, use_threads=True),
        # no quoting: these sources do not quote, and one broken quote would make pyarrow
        # swallow thousands of following lines (it does: 12,289 of 31,059 in one file)
        parse_options=pacsv.ParseOptions(delimiter=p.delimiter, quote_char=False,
                                         invalid_row_handler=lambda row: "skip"),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}))


def parses(path: Path, profile_name: str) -> bool:
    """Files pyarrow cannot read at all (wrong encoding, cut short) stay out of both sides."""
    try:
        _read_csv(path, profile_name)
        return path.stat().st_size > 0
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return False


def pyarrow_parse(files: list[tuple[Path, str]]) -> tuple[float, int, int]:
    """Seconds, bytes and rows for pyarrow to parse the files (strings, multi-threaded)."""
    n_bytes = n_rows = 0
    t0 = time.perf_counter()
    for path, profile_name in files:
        n_rows += _read_csv(path, profile_name).num_rows
        n_bytes += path.stat().st_size
    return time.perf_counter() - t0, n_bytes, n_rows


def ingest(spark, landing: Path, lake: Path, reference: Path) -> tuple[float, dict]:
    from jobs.ingest import job

    env = environ_under(lake)
    env["HEALTHLAKE_PATHS__LANDING_ROOT"] = str(landing)
    env["HEALTHLAKE_PATHS__REFERENCE_ROOT"] = str(reference)
    shutil.rmtree(lake, ignore_errors=True)
    settings = load(environ=env)
    t0 = time.perf_counter()
    summary = job.run(spark, settings, DAY)
    return time.perf_counter() - t0, summary


def _row(what: str, files: int, n_bytes: int, rows: int, seconds: float) -> str:
    mb = n_bytes / 2**20
    return f"| {what} | {files} | {mb:,.1f} | {rows:,} | {seconds:,.1f} | {mb / seconds:,.1f} |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full-city", action="store_true", help="2,439,585 residents")
    ap.add_argument("--residents", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("/tmp/healthlake-bench-ingest"))
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)
    from jobs.spark import get_spark

    root = args.out
    t0 = time.perf_counter()
    gen = generate_once(root / "city", args.residents, args.full_city)
    print(f"generated {sum(gen['rows'].values()):,} rows in {time.perf_counter() - t0:.0f} s")
    city = root / "city"
    day_dir = city / "landing" / DAY.isoformat()
    csv_inst = csv_institutions(city)
    view = root / "csv_landing" / DAY.isoformat()
    shutil.rmtree(view.parent, ignore_errors=True)
    files = []
    for inst_dir in sorted(day_dir.iterdir()):
        if inst_dir.name not in csv_inst:
            continue
        manifest = json.loads((inst_dir / "_manifest.json").read_text(encoding="utf-8"))
        keep = []
        for entry in manifest["files"]:
            path = inst_dir / entry["file"]
            if path.suffix in (".csv", ".tsv") and path.is_file() and \
                    parses(path, csv_inst[inst_dir.name]):
                keep.append(entry)
                files.append((path, csv_inst[inst_dir.name]))
        (view / inst_dir.name).mkdir(parents=True)
        for entry in keep:
            (view / inst_dir.name / entry["file"]).symlink_to(inst_dir / entry["file"])
        (view / inst_dir.name / "_manifest.json").write_text(
            json.dumps({**manifest, "files": keep}), encoding="utf-8")

    spark = get_spark(load(environ=environ_under(root / "lake")), app_name="bench-ingest")
    # warm the JVM and Delta once (on one institution) so no figure pays start-up
    warm = root / "warm_landing" / DAY.isoformat()
    shutil.rmtree(warm.parent, ignore_errors=True)
    warm.mkdir(parents=True)
    first = sorted(view.iterdir())[0]
    (warm / first.name).symlink_to(first)
    ingest(spark, warm.parent, root / "warmup_lake", city / "reference")

    pa_s, pa_bytes, pa_rows = pyarrow_parse(files)
    hl_s, hl = ingest(spark, view.parent, root / "lake_csv", city / "reference")
    all_bytes = sum(p.stat().st_size for p in day_dir.rglob("*") if p.is_file())
    full_s, full = ingest(spark, day_dir.parent, root / "lake_all", city / "reference")
    ratio = hl_s / pa_s
    body = f"""
Command: `.venv/bin/python benchmarks/ingest_throughput.py {' '.join(argv or sys.argv[1:])}`
(run {dt.date.today()}). Machine: {machine()}; Spark local[*], default configuration.
Day: {gen['residents']:,} residents, {gen['institutions']} institutions, first extract day
(every institution's registry snapshot plus the day's clinical feeds).

| what | files | MB | rows | seconds | MB/s |
|---|---|---|---|---|---|
{_row("pyarrow `read_csv`, CSV files (strings, all cores)", len(files), pa_bytes, pa_rows, pa_s)}
{_row("healthlake ingest, same CSV files", len(files), pa_bytes, hl["rows_in"], hl_s)}
{_row("healthlake ingest, whole day (JSONL, gzip, XLSX too)", full["files"], all_bytes,
      full["rows_in"], full_s)}

**Ratio on the same CSV bytes: healthlake takes {ratio:.1f}x pyarrow's parse time** (goal: within
3x). Steps of the CSV run (s): {hl['seconds_by_step']}; whole day: {full['seconds_by_step']}.
Peak RSS: Python driver {peak_rss_gib():.1f} GiB.
"""
    print(body)
    if not args.no_doc:
        update_doc(SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
