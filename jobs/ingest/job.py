"""Bronze ingest of one extract date: landing -> bronze.<feed>, quarantine.<feed>, ops.ingest_log.

The plan (which files, duplicates, missing ones) is made on the driver; the files are read in
Spark tasks by the pure reader (:mod:`jobs.ingest.readers`) through ``mapInArrow``, so a cluster
reads them in parallel; files already read ahead by ``healthlake ingest-read`` (the daily DAG's
per-feed tasks, plain Python, no Spark) are taken from the staging area instead, and removed
once loaded. Every table is then written with one atomic Delta commit that replaces
the extract date's partition: re-running a day gives identical tables, and a run killed half-way
leaves each table either before or after its commit, never in between. ``ops.ingest_log`` is
written last and says which files a day's run completed.

A run can take only some feeds (``feeds=["encounters"]``, ``healthlake ingest --feed``). The
day's plan is always made whole (so a file
duplicated under another feed's name is judged the same way by every feed's run) and then cut
to the feeds asked for; only their tables and their rows of ``ops.ingest_log`` are replaced.
Files that belong to no feed contract go with the pseudo-feed ``unrecognised``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

import pyarrow as pa

from jobs.config import Settings
from jobs.contracts import UNRECOGNISED, check_feeds, load_contracts
from jobs.ingest.plan import (
    DayPlan,
    PlannedFile,
    load_institutions,
    mark_duplicates_of_loaded,
    plan_day,
)
from jobs.ingest.readers import FileOutcome, LandedFile, read_landed_file
from jobs.lake import read_table, table_exists, union_all, write_table
from jobs.spark import parallel_jobs

log = logging.getLogger(__name__)

LINEAGE = ["extract_date", "institution_id", "tier", "source_profile", "source_file",
           "source_line", "source_sha256", "ingest_id"]

READ_FIELDS = [
    ("kind", pa.string()),            # bronze | quarantine | file
    ("feed", pa.string()),
    ("extract_date", pa.string()),
    ("institution_id", pa.string()),
    ("tier", pa.string()),
    ("source_profile", pa.string()),
    ("source_file", pa.string()),
    ("source_line", pa.int32()),
    ("source_sha256", pa.string()),
    ("ingest_id", pa.string()),
    # here, per feed: values_<feed>, a struct of the feed's columns (see read_schema)
    ("extra_columns", pa.map_(pa.string(), pa.string())),
    ("rule_id", pa.string()),
    ("scope", pa.string()),
    ("message", pa.string()),
    ("raw_text", pa.string()),
    ("rows_in", pa.int64()),
    ("rows_loaded", pa.int64()),
    ("rows_quarantined", pa.int64()),
    ("status", pa.string()),
    ("unknown_columns", pa.string()),
    ("missing_optional_columns", pa.string()),
    ("n_bytes", pa.int64()),
    ("read_ms", pa.int64()),
]


@cache
def read_schema() -> pa.Schema:
    """What reading files gives: bronze, quarantine and file rows in one table, each bronze row
    with its values in its feed's struct (``values_<feed>``, the contract's columns as strings),
    the other feeds' structs null. Per-feed columns let each feed's write read only its own."""
    feeds = load_contracts().feeds
    at = [name for name, _ in READ_FIELDS].index("ingest_id") + 1
    values = [(values_column(feed), pa.struct([(c, pa.string()) for c in contract.column_names]))
              for feed, contract in sorted(feeds.items())]
    return pa.schema(READ_FIELDS[:at] + values + READ_FIELDS[at:])


def values_column(feed: str) -> str:
    return f"values_{feed}"

INGEST_LOG_COLUMNS = [
    "extract_date", "institution_id", "tier", "feed", "source_file", "sha256", "n_bytes",
    "manifest_rows", "rows_in", "rows_loaded", "rows_quarantined", "status", "rule_id", "message",
    "duplicate_of", "unknown_columns", "missing_optional_columns", "read_ms", "run_id",
    "ingested_at",
]
INGEST_LOG_DDL = (
    "extract_date date, institution_id string, tier string, feed string, source_file string, "
    "sha256 string, n_bytes long, manifest_rows long, rows_in long, rows_loaded long, "
    "rows_quarantined long, status string, rule_id string, message string, duplicate_of string, "
    "unknown_columns string, missing_optional_columns string, read_ms long, run_id string, "
    "ingested_at timestamp")
QUARANTINE_DDL = (
    "extract_date date, institution_id string, tier string, source_profile string, "
    "source_file string, source_line int, source_sha256 string, ingest_id string, "
    "rule_id string, scope string, message string, raw_text string")


class ReconciliationError(RuntimeError):
    """Rows in != rows loaded + rows quarantined for some file: the run must not pass."""


def ingest_id_of(extract_date: str, source_file: str, sha256: str) -> str:
    """Deterministic id of one load of one file: identical on every re-run."""
    return hashlib.sha256(f"{extract_date}|{source_file}|{sha256}".encode()).hexdigest()[:16]


# -- reading in Spark tasks ------------------------------------------------------------------


def outcome_to_arrow(f: LandedFile, out: FileOutcome, read_ms: int) -> pa.RecordBatch:
    """One file's outcome as rows of :func:`read_schema`: its bronze rows (built columnar, as
    millions of rows pass here), then its quarantine rows, then one file row with the counts."""
    schema = read_schema()
    iid = ingest_id_of(f.extract_date, f.source_file, out.sha256)
    common = {"feed": f.feed, "extract_date": f.extract_date, "institution_id": f.institution_id,
              "tier": f.tier, "source_profile": f.profile, "source_file": f.source_file,
              "source_sha256": out.sha256, "ingest_id": iid}
    n_b = out.rows_loaded
    small: dict[str, list] = {name: [] for name in schema.names}  # quarantine + file rows
    for q in out.quarantine:
        for name in small:
            small[name].append(q.get(name))
    small["kind"] = ["quarantine"] * len(out.quarantine)
    file_row = {
        "kind": "file", "rows_in": out.rows_in, "rows_loaded": out.rows_loaded,
        "rows_quarantined": out.rows_quarantined, "status": out.status,
        "rule_id": out.file_rule, "unknown_columns": ",".join(out.unknown_columns) or None,
        "missing_optional_columns": ",".join(out.missing_optional_columns) or None,
        "n_bytes": out.n_bytes, "read_ms": read_ms}
    for name in small:
        small[name].append(file_row.get(name))
    n_small = len(small["kind"])
    for k, v in common.items():
        small[k] = [v] * n_small
    small_batch = pa.RecordBatch.from_pydict(small, schema=schema)
    if not n_b:
        return small_batch
    b = out.bronze
    big = {name: pa.nulls(n_b, schema.field(name).type) for name in schema.names}
    for k, v in common.items():
        big[k] = pa.repeat(pa.scalar(v, pa.string()), n_b)
    big["kind"] = pa.repeat(pa.scalar("bronze", pa.string()), n_b)
    values = schema.field(values_column(f.feed)).type
    big[values_column(f.feed)] = pa.StructArray.from_arrays(
        [b.column(v.name).combine_chunks() for v in values], fields=list(values))
    big["extra_columns"] = b.column("extra_columns").combine_chunks()
    big["source_line"] = b.column("source_line").combine_chunks()
    big_batch = pa.RecordBatch.from_pydict(big, schema=schema)
    return pa.Table.from_batches([big_batch, small_batch]).combine_chunks().to_batches()[0]


def read_one(f: LandedFile, contracts) -> tuple[pa.RecordBatch, FileOutcome]:
    """One landed file read by the pure reader: its :func:`read_schema` rows and outcome."""
    started = time.perf_counter()
    out = read_landed_file(f, contracts.feed(f.feed), contracts.profiles[f.profile])
    return outcome_to_arrow(f, out, int((time.perf_counter() - started) * 1000)), out


def read_files_in_task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: each input row is a LandedFile; yields :func:`read_schema` batches."""
    contracts = load_contracts()
    for batch in batches:
        for task in batch.to_pylist():
            yield read_one(LandedFile(**task), contracts)[0]


def read_files(spark, files: list[LandedFile]):
    """A DataFrame of :func:`read_schema` for the files, read in parallel Spark tasks."""
    from pyspark.sql.types import StructType

    rows = [asdict(f) for f in files]
    task_schema = ("path string, source_file string, feed string, institution_id string, "
                   "tier string, profile string, extract_date string, manifest_rows long, "
                   "manifest_sha256 string, listed boolean")
    n_tasks = max(1, min(len(rows), spark.sparkContext.defaultParallelism * 4))
    tasks = spark.createDataFrame(rows, task_schema).repartition(n_tasks)
    schema = StructType.fromDDL(_read_ddl())
    return tasks.mapInArrow(read_files_in_task, schema)


def _read_ddl() -> str:
    types = {pa.string(): "string", pa.int32(): "int", pa.int64(): "long"}

    def ddl(t: pa.DataType) -> str:
        if pa.types.is_map(t):
            return "map<string,string>"
        if pa.types.is_struct(t):
            return "struct<" + ",".join(f"`{f.name}`:{ddl(f.type)}" for f in t) + ">"
        return types[t]

    return ", ".join(f"`{fld.name}` {ddl(fld.type)}" for fld in read_schema())


# -- read ahead, without Spark (the daily DAG's per-feed tasks) ---------------------------------


def staging_dir(settings: Settings, extract_date: str) -> Path:
    """Where ``healthlake ingest-read`` leaves a day's files read ahead of the commit: in the
    restricted zone, as they hold raw values; emptied by the commit that loads them."""
    return settings.local_dir("restricted") / "_staging" / "ingest" / extract_date


def staged_path(settings: Settings, p: PlannedFile) -> Path:
    """A planned file's read-ahead result, named after its load (date, file and content) and
    the read schema: a file delivered again with other bytes, or staged by a version of
    healthlake that read into another schema, is never taken from an old read."""
    f = p.landed
    load = ingest_id_of(f.extract_date, f.source_file, p.sha256)
    schema_tag = hashlib.sha256(str(read_schema()).encode()).hexdigest()[:8]
    return staging_dir(settings, f.extract_date) / f"{load}.{schema_tag}.parquet"


def read_ahead(settings: Settings, extract_date: dt.date, feeds: list[str]) -> dict:
    """``healthlake ingest-read --date D --feed F``: read and check the feeds' landed files of
    the day with the pure reader, in this process (no Spark, no lake write), and leave each
    file's rows, quarantine rows and counts (:func:`read_schema`) in staging. The commit
    (``healthlake ingest --date D``) takes them from there instead of reading the files again,
    so the daily DAG reads feeds side by side and starts Spark once. Safe to re-run."""
    import pyarrow.parquet as pq

    from jobs.operations import secure_zones

    day = extract_date.isoformat()
    contracts = load_contracts()
    check_feeds(feeds, contracts)
    secure_zones(settings)  # the staging area holds raw values: the restricted root's mode first
    institutions = load_institutions(settings.reference_root)
    plan = plan_day(settings.landing_root, day, contracts, institutions)
    files = [p for p in plan.to_read() if feed_of_file(p, contracts) in feeds]
    staging_dir(settings, day).mkdir(parents=True, exist_ok=True, mode=0o700)
    by_status: Counter = Counter()
    rows = Counter()
    for p in files:
        batch, out = read_one(p.landed, contracts)
        target = staged_path(settings, p)
        partial = target.with_suffix(".partial")
        pq.write_table(pa.Table.from_batches([batch], schema=read_schema()), partial)
        partial.replace(target)  # a reader never sees half a file
        by_status[out.status] += 1
        rows.update(rows_in=out.rows_in, rows_loaded=out.rows_loaded,
                    rows_quarantined=out.rows_quarantined)
    summary = {"extract_date": day, "feeds": feeds, "files": len(files),
               "files_by_status": dict(sorted(by_status.items())),
               **{k: rows[k] for k in ("rows_in", "rows_loaded", "rows_quarantined")},
               "staged_in": str(staging_dir(settings, day))}
    log.info("ingest-read %s: %s", day, summary)
    return summary


def read_planned(spark, settings: Settings, planned: list[PlannedFile]):
    """:func:`read_schema` rows of the planned files: those ``ingest-read`` staged, from the staging
    area; the others read now, in Spark tasks. Returns the DataFrame and the staged paths."""
    from pyspark.sql.types import StructType

    paths = [(p, staged_path(settings, p)) for p in planned]
    ready = [path for _, path in paths if path.exists()]
    rest = [p.landed for p, path in paths if path not in ready]
    parts = []
    if ready:
        parts.append(spark.read.schema(StructType.fromDDL(_read_ddl()))
                     .parquet(*[str(r) for r in ready]))
    if rest:
        parts.append(read_files(spark, rest))
    return union_all(parts), ready


def remove_staged(settings: Settings, day: str, loaded: list[Path], whole_day: bool) -> None:
    """After the commit: the read-ahead files it loaded; after a whole day's, all of the day's
    (a file read ahead and then found a duplicate of one loaded earlier is not kept either)."""
    import shutil

    folder = staging_dir(settings, day)
    if whole_day:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for path in loaded:
        path.unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


# -- pure transforms ----------------------------------------------------------------------------


def bronze_rows(read_df, feed: str, columns: list[str]):
    """The feed's bronze rows: canonical columns as received, extra columns, lineage."""
    from pyspark.sql import functions as F

    rows = read_df.where((F.col("kind") == "bronze") & (F.col("feed") == feed))
    return rows.select(
        *[F.col(values_column(feed))[c].alias(c) for c in columns],
        "extra_columns",
        F.to_date("extract_date").alias("extract_date"),
        *[c for c in LINEAGE if c != "extract_date"],
    )


def quarantine_rows(read_df, feed: str):
    from pyspark.sql import functions as F

    rows = read_df.where((F.col("kind") == "quarantine") & (F.col("feed") == feed))
    return rows.select(
        F.to_date("extract_date").alias("extract_date"),
        *[c for c in LINEAGE if c != "extract_date"],
        "rule_id", "scope", "message", "raw_text")


def file_results(read_df) -> dict[str, dict]:
    """One dict per file: the reader's own counts and status, and the rows actually produced
    (bronze rows, row-level quarantine rows), in one Spark job."""
    from pyspark.sql import functions as F

    def of_file(col: str):
        return F.max(F.when(F.col("kind") == "file", F.col(col))).alias(col)

    rows = read_df.groupBy("source_file").agg(
        F.sum(F.when(F.col("kind") == "bronze", 1).otherwise(0)).alias("n_bronze"),
        F.sum(F.when((F.col("kind") == "quarantine") & (F.col("scope") == "row"), 1)
              .otherwise(0)).alias("n_quarantine_rows"),
        *[of_file(c) for c in ("feed", "source_sha256", "rows_in", "rows_loaded",
                               "rows_quarantined", "status", "rule_id", "unknown_columns",
                               "missing_optional_columns", "n_bytes", "read_ms")],
    ).collect()
    return {r["source_file"]: r.asDict() for r in rows}


def reconcile(results: dict[str, dict]) -> list[dict]:
    """Files where rows in != rows loaded + rows quarantined (counting what was produced)."""
    bad = []
    for r in results.values():
        if r["status"] == "quarantined":
            ok = r["rows_in"] == r["rows_quarantined"] and r["n_bronze"] == 0
        else:
            ok = r["rows_in"] == r["n_bronze"] + r["n_quarantine_rows"] \
                and r["rows_loaded"] == r["n_bronze"]
        if not ok:
            bad.append(r)
    return bad


# -- the job ----------------------------------------------------------------------------------


def feed_of_file(p, contracts) -> str:
    """The feed whose run takes the planned file: its own, or ``unrecognised``."""
    return p.landed.feed if p.landed.feed in contracts.feeds else UNRECOGNISED


def log_predicate(day: str, feeds: list[str] | None, contracts) -> str:
    """The rows of ops.ingest_log a run over ``feeds`` (None: all) replaces."""
    where = f"extract_date = DATE'{day}'"
    if feeds is None:
        return where

    def listed(names) -> str:
        return ", ".join(f"'{n}'" for n in sorted(names))

    parts = []
    if named := set(feeds) - {UNRECOGNISED}:
        parts.append(f"feed IN ({listed(named)})")
    if UNRECOGNISED in feeds:
        parts.append(f"feed IS NULL OR feed NOT IN ({listed(contracts.feeds)})")
    return f"{where} AND ({' OR '.join(parts)})"


def run(spark, settings: Settings, extract_date: dt.date, feeds: list[str] | None = None,
        run_started_at: dt.datetime | None = None) -> dict:
    """Ingest one extract date into bronze, quarantine and ops.ingest_log: every feed, or only
    ``feeds`` (names from :func:`jobs.contracts.feed_choices`).

    ``run_started_at`` (default: now) is the time this run of the day saw the files, written as
    ``ingested_at`` for files no earlier run saw. The daily DAG passes its run's start, so a
    cleared and re-run task keeps its run's time: the scorecard calls a file late when it was
    first seen after the day's first run."""
    from pyspark import StorageLevel

    day = extract_date.isoformat()
    run_id = uuid.uuid4().hex[:12]
    started = time.perf_counter()
    contracts = load_contracts()
    if feeds is not None:
        check_feeds(feeds, contracts)
    institutions = load_institutions(settings.reference_root)
    plan = plan_day(settings.landing_root, day, contracts, institutions)
    if feeds is not None:
        plan.files = [p for p in plan.files if feed_of_file(p, contracts) in feeds]
    history = _ingest_history(spark, settings, day)
    superseded = mark_duplicates_of_loaded(plan, history.loaded_elsewhere)

    timings = {"plan": _lap(started)}

    to_read = plan.to_read()
    read_df = None
    staged: list[Path] = []
    file_stats: dict[str, dict] = {}
    if to_read:
        read_df, staged = read_planned(spark, settings, to_read)
        read_df = read_df.persist(StorageLevel.MEMORY_AND_DISK)
        file_stats = file_results(read_df)
        timings["read"] = _lap(started, timings)
        mismatches = reconcile(file_stats)
        if mismatches:
            read_df.unpersist()
            raise ReconciliationError(
                f"{day}: rows in != loaded + quarantined for {len(mismatches)} file(s): "
                f"{mismatches[:5]}; nothing was written")
    where = f"extract_date = DATE'{day}'"
    writes = []
    for feed, contract in sorted(contracts.feeds.items()):
        if feeds is not None and feed not in feeds:
            continue
        # Only tables that get rows now, or held rows of this day before, need a commit.
        if _feed_has(file_stats, feed, "bronze") or (feed, "bronze") in history.written:
            bronze = (bronze_rows(read_df, feed, contract.column_names) if read_df is not None
                      else _empty(spark, contract.column_names))
            writes.append((bronze, f"bronze.{feed}"))
        if _feed_has(file_stats, feed, "quarantine") or (feed, "quarantine") in history.written:
            quarantine = (quarantine_rows(read_df, feed) if read_df is not None
                          else spark.createDataFrame([], QUARANTINE_DDL))
            writes.append((quarantine, f"quarantine.{feed}"))
    # Each table is its own Delta commit; committing several tables at once hides Delta's
    # per-commit latency (snapshot, commit, checkpoint jobs), which dominates small days.
    # Commits mostly wait on I/O and scheduling: a few per core.
    with ThreadPoolExecutor(max_workers=parallel_jobs(spark, per_core=2, most=6)) as pool:
        for future in [pool.submit(write_table, df, settings, name, replace_where=where)
                       for df, name in writes]:
            future.result()
    timings["write"] = _lap(started, timings)
    if superseded:
        _remove_superseded(spark, settings, superseded, day)
    log_df = spark.createDataFrame(
        _ingest_log_rows(plan, file_stats, run_id, history.first_seen, run_started_at),
        INGEST_LOG_DDL)
    write_table(log_df, settings, "ops.ingest_log",
                replace_where=log_predicate(day, feeds, contracts))
    timings["log"] = _lap(started, timings)
    if read_df is not None:
        read_df.unpersist()
    remove_staged(settings, day, staged, whole_day=feeds is None)
    summary = _summary(plan, file_stats, day, time.perf_counter() - started)
    if feeds is not None:
        summary = {"feeds": feeds, **summary}
    summary["seconds_by_step"] = timings
    log.info("ingest %s: %s", day, summary)
    return summary


def _lap(started: float, done: dict[str, float] | None = None) -> float:
    """Seconds since ``started`` not yet accounted to earlier steps."""
    return round(time.perf_counter() - started - sum((done or {}).values()), 1)


def _empty(spark, columns: list[str]):
    ddl = ", ".join(f"`{c}` string" for c in columns)
    ddl += (", extra_columns map<string,string>, extract_date date, institution_id string, "
            "tier string, source_profile string, source_file string, source_line int, "
            "source_sha256 string, ingest_id string")
    return spark.createDataFrame([], ddl)


def _feed_has(stats: dict[str, dict], feed: str, table: str) -> bool:
    """Whether this run puts anything in the feed's bronze or quarantine table."""
    return any(s["feed"] == feed and _file_has(s, table) for s in stats.values())


def _file_has(s: dict, table: str) -> bool:
    if table == "bronze":
        return (s["rows_loaded"] or 0) > 0
    return s["status"] == "quarantined" or (s["rows_quarantined"] or 0) > 0


@dataclass
class _History:
    """What ops.ingest_log says about earlier runs."""

    # sha256 -> (extract_date, source_file) of the first loaded copy, over other days
    loaded_elsewhere: dict[str, tuple[str, str]] = field(default_factory=dict)
    # (feed, "bronze" | "quarantine") that held rows of this day after the previous run
    written: set[tuple[str, str]] = field(default_factory=set)
    # (source_file, sha256, status is 'missing') -> when an earlier run of this day first saw it
    first_seen: dict[tuple[str, str | None, bool], dt.datetime] = field(default_factory=dict)


def _ingest_history(spark, settings: Settings, day: str) -> _History:
    history = _History()
    if not table_exists(spark, settings, "ops.ingest_log"):
        return history
    log_rows = read_table(spark, settings, "ops.ingest_log")
    for r in (log_rows.where(f"extract_date = DATE'{day}'")
              .select("source_file", "sha256", "status", "ingested_at").collect()):
        history.first_seen[(r["source_file"], r["sha256"], r["status"] == "missing")] = \
            r["ingested_at"]
    rows = (log_rows.where("status IN ('loaded', 'quarantined')")
            .select("sha256", "extract_date", "source_file", "feed", "rows_loaded",
                    "rows_quarantined", "status").collect())
    for r in rows:
        key = (r["extract_date"].isoformat(), r["source_file"])
        if key[0] == day:
            for table in ("bronze", "quarantine"):
                if _file_has(r.asDict(), table):
                    history.written.add((r["feed"], table))
        elif r["sha256"] not in history.loaded_elsewhere or \
                key < history.loaded_elsewhere[r["sha256"]]:
            history.loaded_elsewhere[r["sha256"]] = key
    return history


def _remove_superseded(spark, settings: Settings, superseded: dict[str, str], day: str) -> None:
    """Days ran out of order: a later day loaded a copy (sha256 -> this day's file) of a file
    this day holds. Remove the copy's rows from every layer that holds rows by file (bronze,
    quarantine, silver_std, the curated tables) and log it as the duplicate it is: the later day
    is left as if it had run after this one. Resolving this day resolves the later days again."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    later = F.col("extract_date") > F.lit(day).cast("date")
    log_table = DeltaTable.forPath(spark, settings.table_location("ops.ingest_log"))
    copies = [r["source_file"] for r in log_table.toDF().where(
        F.col("sha256").isin(list(superseded)) & later).select("source_file").collect()]
    curated_rows = _curated_rows_of_copies(spark, settings, superseded, later)
    for name in settings.tables:
        if name == "ops.ingest_log" or not table_exists(spark, settings, name):
            continue
        table = DeltaTable.forPath(spark, settings.table_location(name))
        columns = table.toDF().columns
        if name in curated_rows:
            keys = curated_rows[name].columns
            (table.alias("t").merge(curated_rows[name].alias("s"),
                                    " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys))
             .whenMatchedDelete().execute())
        elif "source_sha256" in columns:
            table.delete(F.col("source_sha256").isin(list(superseded)) & later)
        elif "source_file" in columns and "extract_date" in columns and copies:
            table.delete(F.col("source_file").isin(copies) & later)
    for sha, earlier in sorted(superseded.items()):
        # What the later day's log says when the days run in order.
        log_table.update(condition=(F.col("sha256") == sha) & later, set={
            "status": F.lit("duplicate"), "rows_in": F.lit(None).cast("long"),
            "rows_loaded": F.lit(0).cast("long"), "rows_quarantined": F.lit(0).cast("long"),
            "duplicate_of": F.lit(earlier), "rule_id": F.lit(None).cast("string"),
            "unknown_columns": F.lit(None).cast("string"),
            "missing_optional_columns": F.lit(None).cast("string"),
            "message": F.lit(f"same sha256 as {earlier} (loaded for {day}): not loaded again")})
    log.warning("%s: %d file(s) loaded on later days were earlier deliveries; moved to %s",
                day, len(superseded), day)


def _curated_rows_of_copies(spark, settings: Settings, superseded: dict[str, str], later
                            ) -> dict:
    """The curated tables keep no lineage (no file, line or hash): the rows a later day's copy
    put there are found by their keys and extract date in silver_std, which keeps it. Read
    (and held) before silver_std's own rows of the copies are deleted."""
    from pyspark.sql import functions as F

    from jobs.silver.curate import CURATED

    out = {}
    for feed, spec in CURATED.items():
        std = f"silver_std.{feed}"
        if not (table_exists(spark, settings, std) and table_exists(spark, settings, spec.table)):
            continue
        rows = (read_table(spark, settings, std)
                .where(F.col("source_sha256").isin(list(superseded)) & later)
                .select("institution_id", *spec.key, "extract_date").distinct()
                .localCheckpoint(eager=True))
        if rows.take(1):
            out[spec.table] = rows
    return out


def _ingest_log_rows(plan: DayPlan, stats: dict[str, dict], run_id: str,
                     first_seen: dict[tuple[str, str | None, bool], dt.datetime],
                     run_started_at: dt.datetime | None = None) -> list[tuple]:
    """The day's log. ``ingested_at`` is when a run of this day first saw the file as it is now
    (the same bytes, or missing still): a file that arrived after the day's first run has a
    later time than the rest, which is how the data-quality scorecard tells late from on time."""
    seen_now = run_started_at or dt.datetime.now(dt.UTC)
    now = (seen_now.astimezone(dt.UTC) if seen_now.tzinfo else seen_now).replace(tzinfo=None)
    out = []
    for p in plan.files:
        f = p.landed
        s = stats.get(f.source_file, {})
        rows_in = s.get("rows_in")
        seen = first_seen.get((f.source_file, p.sha256, p.status == "missing"), now)
        row = {
            "extract_date": dt.date.fromisoformat(plan.extract_date),
            "institution_id": f.institution_id, "tier": f.tier, "feed": f.feed or None,
            "source_file": f.source_file, "sha256": p.sha256, "n_bytes": p.n_bytes,
            "manifest_rows": f.manifest_rows, "rows_in": rows_in,
            "rows_loaded": s.get("rows_loaded", 0 if p.status != "missing" else None),
            "rows_quarantined": s.get("rows_quarantined", 0 if p.status != "missing" else None),
            "status": s.get("status", p.status), "rule_id": s.get("rule_id"),
            "message": p.message or None, "duplicate_of": p.duplicate_of,
            "unknown_columns": s.get("unknown_columns"),
            "missing_optional_columns": s.get("missing_optional_columns"),
            "read_ms": s.get("read_ms"), "run_id": run_id, "ingested_at": seen,
        }
        out.append(tuple(row[c] for c in INGEST_LOG_COLUMNS))
    return out


def _summary(plan: DayPlan, stats: dict[str, dict], day: str, seconds: float) -> dict:
    by_status: dict[str, int] = {}
    for p in plan.files:
        st = stats.get(p.landed.source_file, {}).get("status", p.status)
        by_status[st] = by_status.get(st, 0) + 1
    rows_in = sum(s["rows_in"] or 0 for s in stats.values())
    loaded = sum(s["rows_loaded"] or 0 for s in stats.values())
    quarantined = sum(s["rows_quarantined"] or 0 for s in stats.values())
    drift = {f: s["unknown_columns"] for f, s in stats.items() if s.get("unknown_columns")}
    if drift:
        log.warning("%s: unknown columns kept in extra_columns: %s", day, drift)
    return {
        "extract_date": day,
        "institutions": len(plan.institutions),
        "schema_drift": drift,
        "files": len(plan.files),
        "files_by_status": dict(sorted(by_status.items())),
        "rows_in": rows_in,
        "rows_loaded": loaded,
        "rows_quarantined": quarantined,
        "reconciled": rows_in == loaded + quarantined,
        "seconds": round(seconds, 1),
    }
