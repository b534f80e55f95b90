"""Privacy scan: look through curated tables, and every file of every folder the pipeline
writes, for identity numbers, phones and names in clear.

A hit is any string value (or any part of one) that is

- an 18-character national ID standing alone, with a plausible birth date and a valid
  GB 11643 check character (record keys that happen to hold 18 digits are not IDs);
- a mainland mobile number (1[3-9] + 9 digits) standing alone;
- a name, phone or ID number from a list of known values (e.g. the generator's ground truth).

Used by tests on every curated table; the scan returns examples, never prints a value in full.
`healthlake privacy-scan` also reads every file of the curated and ops zones (Parquet values,
Delta logs with their min/max statistics), the cache (checkpoints, Airflow's and the Thrift
server's homes, Data Docs), the Spark warehouse, exports, reports and logs, and fails when a
folder that holds identifiers by design (restricted zone, landing, late deliveries, ground
truth, staging, scratch) can be opened by another account.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.config import Settings
from jobs.lake import read_table, table_exists

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# An 18-character ID standing alone (no letter or digit beside it: record keys and hashes that
# happen to hold 18 digits are not IDs), whose digits 7-14 are a birth date from 1900 on.
ID18 = (r"(?<![0-9A-Za-z])[1-9][0-9]{5}(19|20)[0-9]{2}(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])"
        r"[0-9]{3}[0-9Xx](?![0-9A-Za-z])")
MOBILE = r"(?<![0-9A-Za-z])1[3-9][0-9]{9}(?![0-9A-Za-z])"


def curated_tables(settings: Settings) -> list[str]:
    return sorted(n for n, t in settings.tables.items() if t.zone == "curated")


def _mask(value: str) -> str:
    return value[:3] + "*" * max(0, len(value) - 5) + value[-2:] if len(value) > 5 else "***"


def scan_frame(df: DataFrame, known: set[str] | None = None) -> list[dict]:
    """Hits in the string columns of ``df``: (column, kind, rows, masked example). One pass for
    the patterns over all columns, one join for the known values."""
    from pyspark.sql import functions as F

    from jobs.silver.standardise import check_char  # the same GB 11643 check as silver

    strings = [f.name for f in df.schema.fields if f.dataType.simpleString() == "string"]
    if not strings:
        return []
    checks = {}
    for c in strings:
        col = F.col(f"`{c}`")
        ids = F.regexp_extract_all(col, F.lit(ID18), 0)
        checks[(c, "national_id")] = F.exists(
            ids, lambda x: check_char(F.substring(x, 1, 17)) == F.upper(F.substring(x, 18, 1)))
        checks[(c, "mobile_phone")] = col.rlike(MOBILE)
    names = {key: f"h{i}" for i, key in enumerate(checks)}
    row = df.agg(*[F.count_if(cond).alias(names[k]) for k, cond in checks.items()],
                 *[F.first(F.when(cond, F.col(f"`{k[0]}`")), ignorenulls=True)
                   .alias(names[k] + "_ex") for k, cond in checks.items()]).first()
    hits = [{"column": c, "kind": kind, "rows": row[names[(c, kind)]],
             "example": _mask(row[names[(c, kind)] + "_ex"])}
            for (c, kind) in checks if row[names[(c, kind)]]]
    if known:
        known_df = df.sparkSession.createDataFrame([(k,) for k in sorted(known)], "value string")
        values = df.select(F.explode(F.array(*[
            F.struct(F.lit(c).alias("column"), F.col(f"`{c}`").alias("value"))
            for c in strings])).alias("v")).select("v.*").where("value IS NOT NULL").distinct()
        found = (values.join(F.broadcast(known_df), "value").groupBy("column")
                 .agg(F.count("*").alias("n"), F.first("value").alias("ex")).collect())
        hits += [{"column": r["column"], "kind": "known_value", "rows": r["n"],
                  "example": _mask(r["ex"])} for r in found]
    return hits


def written_curated_tables(spark: SparkSession, settings: Settings) -> list[str]:
    return [t for t in curated_tables(settings) if table_exists(spark, settings, t)]


def scan(spark: SparkSession, settings: Settings, known: set[str] | None = None,
         tables: list[str] | None = None) -> dict:
    """Scan every written curated table (or ``tables``); {table: hits} for tables with a hit."""
    out = {}
    for name in tables if tables is not None else written_curated_tables(spark, settings):
        hits = scan_frame(read_table(spark, settings, name), known)
        if hits:
            out[name] = hits
    return out


# -- published files: exports (CSV, XLSX, Parquet) and HTML reports ------------------------------

PUBLISHED_SUFFIXES = (".csv", ".xlsx", ".parquet", ".html", ".json")


def _strings_of_file(path: Path) -> tuple[list[str], bool]:
    """Every text a published file holds, and whether they are cells (XLSX, Parquet values,
    compared whole with known values) rather than documents (CSV, HTML, searched)."""
    if path.suffix == ".xlsx":
        from openpyxl import load_workbook

        book = load_workbook(path, read_only=True)
        return [str(v) for sheet in book.worksheets for row in sheet.iter_rows(values_only=True)
                for v in row if v is not None], True
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        out = [v.decode("utf-8", "replace") for v in meta.values()]
        for column in table.columns:
            out += [str(v) for v in column.to_pylist() if v is not None]
        return out, True
    return [path.read_text(encoding="utf-8", errors="replace")], False


def scan_text(values: list[str], known: set[str] | None = None, cells: bool = True
              ) -> dict[str, list[str]]:
    """Hits among plain strings (the Python twin of :func:`scan_frame`): kind -> masked examples.
    A national ID counts only with a valid GB 11643 check character, as in the tables. Cells are
    compared whole with the known values; documents (``cells=False``) are searched for them."""
    import re

    from jobs.identity import is_valid_id18

    ids, mobiles = re.compile(ID18), re.compile(MOBILE)
    hits: dict[str, list[str]] = {}
    for text in values:
        for m in ids.finditer(text):
            if is_valid_id18(m.group(0).upper()):
                hits.setdefault("national_id", []).append(_mask(m.group(0)))
        for m in mobiles.finditer(text):
            hits.setdefault("mobile_phone", []).append(_mask(m.group(0)))
        if not known:
            continue
        if cells:
            found = [text] if text in known else []
        else:
            found = [v for v in known if v and v in text]
        if found:
            hits.setdefault("known_value", []).extend(_mask(v) for v in found)
    return hits


def scan_files(root: Path, known: set[str] | None = None) -> dict[str, dict[str, list[str]]]:
    """Scan every published file under ``root``; {file: {kind: examples}} for files with a hit."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.suffix in PUBLISHED_SUFFIXES):
        strings, cells = _strings_of_file(path)
        hits = scan_text(strings, known, cells)
        if hits:
            out[str(path.relative_to(root))] = {k: v[:3] for k, v in hits.items()}
    return out


class PrivacyError(RuntimeError):
    """An identifier in clear was found in a curated table or a published file."""


IDENTIFYING_COLUMNS = ("national_id", "name", "phone", "address")


def known_values(path: Path) -> set[str]:
    """Values to look for as they are: the identifying columns of a Parquet file (the
    generator's ``persons.parquet``: ID numbers, names, phones, addresses; never its district
    codes or ages, which published tables rightly hold) or a text file, one value a line."""
    if path.suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        columns = [c for c in IDENTIFYING_COLUMNS if c in frame.columns]
        if not columns:
            raise ValueError(f"{path} has none of the columns {IDENTIFYING_COLUMNS}")
        return {str(v) for c in columns for v in frame[c].dropna() if str(v).strip()}
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()}


# -- every folder the pipeline writes ----------------------------------------------------------

# Downloaded artefacts and binary formats that hold no text of ours.
SKIPPED_SUFFIXES = (".jar", ".zip", ".tgz", ".gz", ".whl", ".class", ".pyc", ".so", ".crc",
                    ".png", ".jpg", ".jpeg", ".gif", ".ico", ".woff", ".woff2", ".ttf", ".eot")
# A larger file is read up to this many bytes (text) or skipped (Parquet would not be).
MAX_TEXT_BYTES = 64 * 2**20
CJK_RUN = r"[\u3400-\u9fff]{2,}"


def scanned_folders(settings: Settings) -> dict[str, Path]:
    """Every folder the pipeline writes or publishes (:meth:`Settings.written_roots`) that may
    hold no identifier: all but the private ones (restricted zone, landing, late deliveries,
    ground truth, staging, scratch), whose modes :func:`open_private_folders` checks instead."""
    from jobs.operations import private_roots

    private = [p.resolve() for p in private_roots(settings).values()]
    return {what: root for what, root in settings.written_roots().items()
            if not any(root.resolve().is_relative_to(p) for p in private)}


def open_private_folders(settings: Settings) -> dict[str, str]:
    """The folders that hold identifiers by design whose mode lets another account in (more
    than the restricted zone's configured mode gives group and others): path -> what, mode."""
    from jobs.operations import operations_settings, private_roots

    allowed = int(str(operations_settings(settings).zone_modes.get("restricted", "0700")), 8)
    out = {}
    for what, root in private_roots(settings).items():
        if root.is_dir() and root.stat().st_mode & 0o077 & ~allowed:
            out[str(root)] = f"{what}, mode {root.stat().st_mode & 0o777:o}"
    return out


class KnownIndex:
    """Known values, looked up fast: whole cells by set membership; in documents (logs, HTML,
    Delta logs' statistics) every run of 2+ Chinese characters' substrings of the lengths of
    known names (identity numbers and phones are found by their patterns anyway)."""

    def __init__(self, known: set[str]):
        import re

        self.values = known
        self._array = None
        self.cjk_lengths = sorted({len(v) for v in known if re.fullmatch(CJK_RUN, v)})
        self.cjk = re.compile(CJK_RUN)

    @property
    def array(self):
        """The known values as an Arrow array (for ``pyarrow.compute.is_in``), built once."""
        if self._array is None:
            import pyarrow as pa

            self._array = pa.array(sorted(self.values), pa.string())
        return self._array

    def in_document(self, text: str) -> list[str]:
        found = []
        for run in self.cjk.findall(text):
            if run in self.values:
                found.append(run)
                continue
            found += [run[i:i + n] for n in self.cjk_lengths for i in range(len(run) - n + 1)
                      if run[i:i + n] in self.values]
        return found


def _walk_strings(value, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
        if value[:1] in "{[":  # JSON inside JSON: Delta's per-file statistics (min/max values)
            try:
                _walk_strings(json.loads(value), out)
            except ValueError:
                pass
    elif isinstance(value, dict):
        for k, v in value.items():
            _walk_strings(k, out)
            _walk_strings(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _walk_strings(v, out)


def _file_texts(path: Path, index: KnownIndex | None = None
                ) -> tuple[list[str], list[str], list[str]]:
    """A written file's (cells, documents, known values found): cells are checked against the
    patterns, documents searched, known values compared whole. For Parquet, only the values
    that may hold a pattern (eleven digits in a row) or JSON, and the known values found, both
    picked by Arrow's vectorised kernels: a whole curated table stays quick."""
    known = index.values if index is not None else set()
    if path.suffix == ".parquet":
        return _parquet_texts(path, index)
    if path.suffix == ".xlsx":
        cells = _strings_of_file(path)[0]
        return cells, [], [c for c in cells if c in known]
    with open(path, "rb") as f:
        text = f.read(MAX_TEXT_BYTES).decode("utf-8", "replace")
    cells: list[str] = []
    if path.suffix == ".json" or "\\u" in text[:1_000_000]:
        for line in text.splitlines():
            try:
                _walk_strings(json.loads(line), cells)
            except ValueError:
                continue
    return cells, [text], [c for c in cells if c in known]


def _parquet_texts(path: Path, index: KnownIndex | None
                   ) -> tuple[list[str], list[str], list[str]]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    cells = [v.decode("utf-8", "replace") for v in (table.schema.metadata or {}).values()]
    if any(pa.types.is_nested(f.type) for f in table.schema):  # Delta checkpoints: small
        _walk_strings(table.to_pylist(), cells)
        return cells, [c for c in cells if c[:1] in "{["], \
            [c for c in cells if index is not None and c in index.values]
    wanted = index.array if index is not None else pa.array([], pa.string())
    found: list[str] = []
    for column in table.columns:
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        worth = pc.or_(pc.match_substring_regex(column, "[0-9]{11}"),
                       pc.starts_with(column, "{"))
        cells += pc.filter(column, worth).to_pylist()
        if len(wanted):
            found += pc.filter(column, pc.is_in(column, value_set=wanted)).to_pylist()
    return cells, [c for c in cells if c[:1] in "{["], found


def scan_folder(root: Path, known: set[str] | None = None, skip: list[Path] = (),
                seen: set[Path] | None = None) -> dict[str, dict[str, list[str]]]:
    """Scan every file under ``root`` (Parquet values and metadata, Delta logs and their
    statistics, CSV, HTML, logs, checkpoints, databases as text), but folders of ``skip``;
    {file: {kind: masked examples}} for files with a hit."""
    import os
    import re

    from jobs.identity import is_valid_id18

    index = KnownIndex(known) if known else None
    ids, mobiles = re.compile(ID18), re.compile(MOBILE)
    skipped = {p.resolve() for p in skip}
    seen = set() if seen is None else seen
    out: dict[str, dict[str, list[str]]] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if (Path(folder) / d).resolve() not in skipped]
        for name in files:
            path = Path(folder) / name
            real = path.resolve()
            if real in seen or path.suffix in SKIPPED_SUFFIXES or not path.is_file():
                continue
            seen.add(real)
            try:
                cells, documents, found = _file_texts(path, index)
            except Exception as exc:  # an unreadable file is reported, never skipped silently
                out[str(path)] = {"unreadable": [type(exc).__name__]}
                continue
            hits: dict[str, list[str]] = {}
            for text in [*cells, *documents]:
                for m in ids.finditer(text):
                    if is_valid_id18(m.group(0).upper()):
                        hits.setdefault("national_id", []).append(_mask(m.group(0)))
                for m in mobiles.finditer(text):
                    hits.setdefault("mobile_phone", []).append(_mask(m.group(0)))
            if index is not None:
                for text in documents:
                    found += index.in_document(text)
                if found:
                    hits["known_value"] = [_mask(v) for v in found]
            if hits:
                out[str(path)] = {k: v[:3] for k, v in hits.items()}
    return out


def scan_written_folders(settings: Settings, known: set[str] | None = None,
                         extra: list[Path] = ()) -> tuple[dict[str, str], dict]:
    """Scan every folder the pipeline writes (:func:`scanned_folders`) and ``extra``;
    (folders scanned, {file: hits})."""
    from jobs.operations import private_roots

    private = list(private_roots(settings).values())
    folders = {**scanned_folders(settings), **{f"published {p}": p for p in extra}}
    seen: set[Path] = set()
    hits = {}
    for root in folders.values():
        if root.is_dir():
            hits |= scan_folder(root, known, private, seen)
    return {what: str(root) for what, root in folders.items()}, hits


def run(spark: SparkSession, settings: Settings, published_roots: list[Path],
        known: set[str] | None, everything: bool = False) -> dict:
    """Scan every curated table and every published file; PrivacyError on any hit. With
    ``everything`` (the `privacy-scan` command) every file of every folder the pipeline writes
    too, and the folders that hold identifiers by design must be closed to other accounts;
    then without ``spark`` (zones on local directories) the curated tables are read through
    their files (every Parquet file on disk, current or not) rather than by Spark."""
    import time

    started = time.perf_counter()
    if everything and spark is None:  # local zones: every table's files are read below
        scanned = [t for t in curated_tables(settings) if settings.table_path(t).is_dir()]
        tables = {}
    else:
        scanned = written_curated_tables(spark, settings)
        tables = scan(spark, settings, known, scanned)
    files, folders, open_folders = {}, {}, {}
    if everything:
        folders, files = scan_written_folders(settings, known, published_roots)
        open_folders = open_private_folders(settings)
    else:
        for root in published_roots:
            if root.is_dir():
                files |= {str(root / f): h for f, h in scan_files(root, known).items()}
    summary = {"tables_scanned": scanned,
               "published_roots": [str(r) for r in published_roots],
               **({"folders_scanned": folders} if everything else {}),
               "known_values": len(known or ()), "table_hits": tables, "file_hits": files,
               **({"open_private_folders": open_folders} if everything else {}),
               "seconds": round(time.perf_counter() - started, 1)}
    if tables or files or open_folders:
        lines = [f"{t}.{h['column']}: {h['kind']} in {h['rows']} row(s), e.g. {h['example']}"
                 for t, hits in tables.items() for h in hits]
        lines += [f"{f}: {kind}, e.g. {', '.join(ex)}" for f, kinds in files.items()
                  for kind, ex in kinds.items()]
        lines += [f"{f}: holds identifiers by design ({why}) and other accounts can open it: "
                  f"chmod 700 it" for f, why in open_folders.items()]
        raise PrivacyError("identifiers in clear found or exposed:\n  " + "\n  ".join(lines))
    return summary
