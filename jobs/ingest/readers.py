"""Read one landed file into the canonical bronze shape, and say exactly what was rejected.

Pure Python + pyarrow, no Spark: the ingest job runs :func:`read_landed_file` inside Spark tasks
(one task reads many files), and tests call it directly. Every data line of a file ends up either
as a bronze row (canonical column names, values as received, as strings) or as a quarantine row
(rule id, message, line, raw text); a file that cannot be trusted as a whole is quarantined with
one file-level row. Nothing is dropped silently: ``rows_in`` counts the data lines independently
and the job checks ``rows_in == loaded + quarantined``.

Records are one per physical line (the contracts' sources do not put newlines inside values), so
a broken quote damages only its own line.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from jobs.contracts import FeedContract, SourceProfile
from jobs.ingest.rules import rule

# Encodings tried to explain a file that does not decode as its contract says.
CANDIDATE_ENCODINGS = ("utf-8-sig", "gb18030", "utf-16")
# What ``errors="surrogateescape"`` makes of a byte that does not decode.
ESCAPED_BYTE = re.compile("[\udc80-\udcff]")

FORM_PATTERNS = {
    "phone": re.compile(r"^\+?\d[\d\- ]{5,18}\d$"),
    "area_code": re.compile(r"^\d{6}(\d{3}(\d{3})?)?$"),
    "icd10": re.compile(r"^[A-Z]\d{2}(\.[0-9A-Za-z]{1,4})?$"),
    "integer": re.compile(r"^[+-]?\d+$"),
    "decimal": re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$"),
}
# An identity number: 15 to 18 digits or X once spaces are gone, full-width digits and x counting
# as their ASCII selves. Loose on purpose: a mistyped number (check character moved, digits
# swapped) is still a resident's record; silver validates the check character and flags it.
ID_NUMBER_LOOSE = "^[0-9Xx０-９ｘＸ]{15,18}$"
# strftime directives of the sources' date formats: the part each gives, its digits.
DATETIME_PARTS = {"%Y": ("year", 4), "%m": ("month", 2), "%d": ("day", 2), "%H": ("hour", 2),
                  "%M": ("minute", 2), "%S": ("second", 2)}
BOOLEAN_VALUES = {"0", "1", "true", "false", "y", "n", "yes", "no", "是", "否"}


@dataclass(frozen=True)
class LandedFile:
    """One file to read, with what the plan already knows about it."""

    path: str                      # absolute path
    source_file: str               # path relative to the landing root (lineage)
    feed: str
    institution_id: str
    tier: str
    profile: str
    extract_date: str              # YYYY-MM-DD, the landing folder's date
    manifest_rows: int | None = None
    manifest_sha256: str | None = None
    listed: bool = True


@dataclass
class FileOutcome:
    """What one file became: bronze rows, quarantine rows, and counts for ops.ingest_log."""

    bronze: pa.Table | None
    quarantine: list[dict] = field(default_factory=list)
    rows_in: int = 0
    sha256: str = ""
    n_bytes: int = 0
    status: str = "loaded"                 # loaded | quarantined
    file_rule: str | None = None
    unknown_columns: list[str] = field(default_factory=list)
    missing_optional_columns: list[str] = field(default_factory=list)

    @property
    def rows_loaded(self) -> int:
        return 0 if self.bronze is None else self.bronze.num_rows

    @property
    def rows_quarantined(self) -> int:
        if self.file_rule:
            return self.rows_in
        return len(self.quarantine)


class _FileRejected(Exception):
    def __init__(self, rule_id: str, message: str, rows_in: int = 0, raw: str = ""):
        super().__init__(message)
        self.rule_id, self.message, self.rows_in, self.raw = rule_id, message, rows_in, raw


@dataclass
class _Parsed:
    """The good rows of a file, columnar, before mapping to canonical names."""

    header: list[str]
    columns: list[pa.Array]      # one string array per header column, good rows only
    lines: list[int]             # line number of each good row
    raw_of: Callable[[int], str]  # raw text of the good row at a position (for quarantine)
    rejected: list[tuple[int, str, str, str]]  # (line, rule_id, message, raw)
    rows_in: int

    @classmethod
    def from_rows(cls, header: list[str], rows: list[list[str]], lines: list[int],
                  raws: list[str], rejected: list, rows_in: int) -> _Parsed:
        columns = [pa.array(list(col), pa.string()) for col in zip(*rows, strict=True)] \
            if rows else [pa.array([], pa.string()) for _ in header]
        return cls(header, columns, lines, raws.__getitem__, sorted(rejected), rows_in)


# --------------------------------------------------------------------------------------------


def read_landed_file(f: LandedFile, contract: FeedContract, profile: SourceProfile) -> FileOutcome:
    """Read, check and canonicalise one file. Never raises for bad data: it reports it."""
    oversized = _oversized(f, profile)
    if oversized:
        return oversized
    data = Path(f.path).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    out = FileOutcome(bronze=None, sha256=sha, n_bytes=len(data))
    try:
        if not data and _empty_as_promised(f, sha):
            out.rows_in = 0  # an institution with nothing to send may send an empty file
            out.bronze = pa.table({c: pa.array([], pa.string()) for c in contract.column_names}
                                  | {"extra_columns": pa.array([], pa.map_(pa.string(),
                                                                            pa.string())),
                                     "source_line": pa.array([], pa.int32())})
            return out
        if not data:
            raise _FileRejected("F_EMPTY", f"{f.source_file} is empty (0 bytes)")
        if f.manifest_sha256 and sha != f.manifest_sha256:
            _decompress(data, f)  # a half-written gzip is the better diagnosis
            rows = _count_lines_safely(data, f, profile)
            raise _FileRejected(
                "F_CHECKSUM", f"sha256 {sha[:12]}… differs from the manifest's "
                f"{f.manifest_sha256[:12]}… ({rows} data rows found, manifest says "
                f"{f.manifest_rows}): truncated or altered in transit", rows)
        if not f.listed:
            rows = _count_lines_safely(data, f, profile)
            raise _FileRejected("F_UNLISTED", f"{f.source_file} is not listed in _manifest.json; "
                                "not loaded until the institution re-sends its manifest", rows)
        parsed = _parse(data, f, contract, profile)
        if f.manifest_rows is not None and parsed.rows_in != f.manifest_rows:
            raise _FileRejected("F_ROW_COUNT", f"{parsed.rows_in} data rows, manifest says "
                                f"{f.manifest_rows}", parsed.rows_in)
        _canonicalise(parsed, f, contract, profile, out)
    except _FileRejected as rej:
        out.status, out.file_rule, out.rows_in = "quarantined", rej.rule_id, rej.rows_in
        out.bronze = None
        out.quarantine = [_qrow(f, sha, None, rej.rule_id, rej.message, rej.raw or _head(data))]
    return out


def _oversized(f: LandedFile, profile: SourceProfile) -> FileOutcome | None:
    """A file over the profile's size limit, quarantined without reading it (its head only)."""
    size = Path(f.path).stat().st_size
    if size <= profile.max_file_mib * 2**20:
        return None
    digest = hashlib.sha256()
    with open(f.path, "rb") as fh:  # hashed in chunks, never held in memory
        head = fh.read(300)
        digest.update(head)
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    sha = digest.hexdigest()
    out = FileOutcome(bronze=None, sha256=sha, n_bytes=size, status="quarantined",
                      file_rule="F_OVERSIZED", rows_in=0)
    out.quarantine = [_qrow(f, sha, None, "F_OVERSIZED",
                            f"{f.source_file} is {size / 2**20:,.0f} MiB, over the "
                            f"{profile.max_file_mib} MiB its source profile allows; not read "
                            f"(the manifest lists {f.manifest_rows} rows)", _head(head))]
    return out


def _empty_as_promised(f: LandedFile, sha: str) -> bool:
    return f.listed and f.manifest_rows == 0 and f.manifest_sha256 in (None, sha)


def _qrow(f: LandedFile, sha: str, line: int | None, rule_id: str, message: str, raw: str) -> dict:
    return {"rule_id": rule_id, "scope": rule(rule_id).scope, "message": message,
            "source_line": line, "raw_text": raw[:4000], "source_sha256": sha}


def _head(data: bytes, n: int = 300) -> str:
    return data[:n].decode("utf-8", errors="backslashreplace")


# -- opening and decoding ---------------------------------------------------------------------


def _decompress(data: bytes, f: LandedFile) -> bytes:
    if not f.path.endswith(".gz"):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise _FileRejected("F_UNREADABLE", f"gzip stream is broken: {exc}") from None


def _count_lines_safely(data: bytes, f: LandedFile, profile: SourceProfile) -> int:
    """Data rows in a file we will not load (for the ingest log); 0 if it cannot be opened."""
    try:
        if profile.format == "xlsx":
            return max(len(_xlsx_rows(data)) - 1, 0)
        return _count_plain(_decompress(data, f), has_header=profile.format != "jsonl")
    except _FileRejected:
        return 0
    except Exception:  # noqa: BLE001 - counting is best effort for a file already rejected
        return 0


def _decode_lines(raw: bytes, f: LandedFile, profile: SourceProfile,
                  expected_header: set[str]) -> tuple[list[tuple[int, str]], list[tuple]]:
    """Split into (line number, text) and undecodable lines; detect a wrong whole-file encoding."""
    encoding = profile.encoding
    try:
        text = raw.decode(encoding)
        if profile.format == "csv" and not _header_fits(text, profile, expected_header):
            _explain_encoding(raw, profile, expected_header)
        lines = text.split("\n")
        bad: list[tuple] = []
    except UnicodeDecodeError:
        _explain_encoding(raw, profile, expected_header)
        lines, bad = [], []
        for i, chunk in enumerate(raw.split(b"\n"), start=1):
            try:
                lines.append(chunk.decode(encoding) if i > 1 or encoding != "utf-8-sig"
                             else chunk.decode("utf-8-sig"))
            except UnicodeDecodeError as exc:
                lines.append("")  # keeps numbering; reported below
                bad.append(_undecodable(i, chunk, exc, encoding))
    numbered = [(i, ln.rstrip("\r")) for i, ln in enumerate(lines, start=1)]
    return numbered, bad


def _undecodable(line: int, chunk: bytes, exc: UnicodeDecodeError, encoding: str) -> tuple:
    return (line, "R_DECODE", f"bytes {chunk[exc.start:exc.end]!r} at offset {exc.start} are "
            f"not valid {encoding}", chunk.decode(encoding, errors="backslashreplace"))


def _header_fits(text: str, profile: SourceProfile, expected: set[str]) -> bool:
    first = text.split("\n", 1)[0].lstrip("\ufeff").rstrip("\r")
    found = {h.strip().strip('"') for h in first.split(profile.delimiter)}
    return len(found & expected) >= max(1, len(expected) // 2)


def _explain_encoding(raw: bytes, profile: SourceProfile, expected: set[str]) -> None:
    """Raise F_ENCODING if another encoding turns the header into the contract's header."""
    head = raw.split(b"\n", 1)[0]
    for candidate in CANDIDATE_ENCODINGS:
        if candidate.replace("-sig", "") == profile.encoding.replace("-sig", ""):
            continue
        try:
            text = head.decode(candidate)
        except UnicodeDecodeError:
            continue
        if _header_fits(text, profile, expected):
            raise _FileRejected(
                "F_ENCODING", f"file is encoded as {candidate}, but its source contract says "
                f"{profile.encoding}; not loaded, to avoid mojibake", _count_plain(raw))


def _count_plain(raw: bytes, has_header: bool = True) -> int:
    """Non-blank lines of a text file, less its header line."""
    return max(len([ln for ln in raw.split(b"\n") if ln.strip()]) - int(has_header), 0)


# -- parsing per format ------------------------------------------------------------------------


def _parse(data: bytes, f: LandedFile, contract: FeedContract, profile: SourceProfile) -> _Parsed:
    expected = set(contract.source_columns(f.profile).values())
    if profile.format == "xlsx":
        return _parse_xlsx(data, contract, profile)
    raw = _decompress(data, f)
    if not raw.strip() and not (profile.format == "jsonl" and f.manifest_rows == 0):
        raise _FileRejected("F_EMPTY", f"{f.source_file} holds no data after decompression")
    if profile.format == "csv" and (fast := _parse_clean_csv(raw, profile, expected)):
        return fast
    numbered, bad = _decode_lines(raw, f, profile, expected)
    if profile.format == "jsonl":
        return _parse_jsonl(numbered, bad)
    return _parse_csv(numbered, bad, profile)


def _parse_clean_csv(raw: bytes, profile: SourceProfile, expected: set[str]) -> _Parsed | None:
    """pyarrow's C++ parser for every line that needs no second look, the rest line by line.

    A line holding a quote character goes through :func:`_split_line` (a broken quote damages
    only its own line; pyarrow would run on into the following lines), blank lines are skipped
    as the careful path skips them, and the rows come out in line order. Returns None when the
    whole file needs the careful path: a header that does not fit or is quoted, a carriage
    return that is not part of a line end, bytes that do not decode in a file with line ends of
    both kinds. A line whose bytes do not decode is quarantined as the careful path does.
    """
    crlf = b"\r" in raw
    if crlf:
        raw = raw.replace(b"\r\n", b"\n")
        if b"\r" in raw:
            return None
    encoding = profile.encoding
    try:
        text = raw.decode(encoding)
        undecodable: list[int] = []
    except UnicodeDecodeError:
        _explain_encoding(raw, profile, expected)  # a whole file in another encoding: rejected
        if crlf:
            return None
        try:  # each undecodable byte becomes one lone surrogate, found again below
            text = raw.decode(encoding, errors="surrogateescape")
        except UnicodeDecodeError:
            return None
        undecodable = _lines_holding(text, ESCAPED_BYTE)
        if undecodable[:1] == [0]:
            return None
    if not _header_fits(text, profile, expected):
        return None
    all_lines = text.lstrip("\ufeff").split("\n")
    header_text, delim = all_lines[0], profile.delimiter
    if '"' in header_text or not header_text.strip():
        return None
    header = [h.strip() for h in header_text.split(delim)]
    if len(set(header)) != len(header) or "" in header:
        return None  # pyarrow needs distinct names; the careful path reports this file
    rejected: list[tuple[int, str, str, str]] = []
    for i in undecodable:
        chunk = all_lines[i].encode(encoding, errors="surrogateescape")
        try:
            chunk.decode(encoding)
        except UnicodeDecodeError as exc:
            rejected.append(_undecodable(i + 1, chunk, exc, encoding))
    skip = set(undecodable)
    special = [i for i, ln in enumerate(all_lines)
               if i and (not ln or ln.isspace() or '"' in ln or i in skip)]
    kept = np.delete(np.arange(len(all_lines)), special)  # 0-based, header first

    def on_invalid(row) -> str:
        line = None if row.number is None else int(kept[row.number - 1]) + 1
        rejected.append((line, "R_FIELDS",
                         f"{row.actual_columns} fields, header has {row.expected_columns}",
                         row.text))
        return "skip"

    # (pyarrow reads a lone header only when a line end follows it)
    clean = ("\n".join(all_lines[i] for i in kept) if special else text.lstrip("\ufeff")) + "\n"
    table = pacsv.read_csv(
        io.BytesIO(clean.encode("utf-8")),
        read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 26),
        parse_options=pacsv.ParseOptions(delimiter=delim, quote_char=False,
                                         newlines_in_values=False, ignore_empty_lines=True,
                                         invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            column_types={h: pa.string() for h in header}, strings_can_be_null=False))
    if any(n is None for n, *_ in rejected):
        return None
    bad_lines = {n for n, *_ in rejected}
    lines = [int(i) + 1 for i in kept[1:] if int(i) + 1 not in bad_lines]
    columns = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c
               for c in table.columns]
    quoted = [i for i in special if '"' in all_lines[i] and i not in skip]
    if quoted:
        rows, quoted_lines = [], []
        for i in quoted:
            fields = _split_line(all_lines[i], delim, len(header))
            if isinstance(fields, tuple):
                rejected.append((i + 1, *fields, all_lines[i]))
            else:
                rows.append(fields)
                quoted_lines.append(i + 1)
        if rows:
            order = pa.array(np.argsort(np.asarray(lines + quoted_lines), kind="stable"))
            columns = [pa.concat_arrays([col, pa.array(list(extra), pa.string())]).take(order)
                       for col, extra in zip(columns, zip(*rows, strict=True), strict=True)]
            lines = sorted(lines + quoted_lines)
    return _Parsed(header, columns, lines, lambda pos: all_lines[lines[pos] - 1],
                   sorted(rejected), len(kept) - 1 + len(quoted) + len(undecodable))


def _lines_holding(text: str, pattern: re.Pattern) -> list[int]:
    """0-based numbers of the lines of ``text`` where ``pattern`` matches, each once."""
    found: list[int] = []
    line, pos = 0, 0
    for m in pattern.finditer(text):
        line += text.count("\n", pos, m.start())
        pos = m.start()
        if found[-1:] != [line]:
            found.append(line)
    return found


def _split_line(ln: str, delim: str, width: int) -> list[str] | tuple[str, str]:
    """One data line's fields, or (rule, message) when its quoting or field count is wrong."""
    if '"' in ln:
        if ln.count('"') % 2:
            return "R_QUOTING", "unbalanced quotes"
        try:
            fields = next(csv.reader([ln], delimiter=delim, strict=True))
        except csv.Error as exc:
            return "R_QUOTING", f"cannot parse quoting: {exc}"
    else:
        fields = ln.split(delim)
    if len(fields) != width:
        return "R_FIELDS", f"{len(fields)} fields, header has {width}"
    return fields


def _parse_csv(numbered: list[tuple[int, str]], bad: list[tuple],
               profile: SourceProfile) -> _Parsed:
    delim = profile.delimiter
    content = [(i, ln) for i, ln in numbered if ln.strip()]
    if not content:
        raise _FileRejected("F_EMPTY", "no header line")
    header_line, header_text = content[0]
    header = [h.strip().strip('"') for h in next(csv.reader([header_text.lstrip("\ufeff")],
                                                           delimiter=delim))]
    rows, lines, raws, rejected = [], [], [], list(bad)
    rows_in = len(bad)
    for i, ln in content[1:]:
        rows_in += 1
        fields = _split_line(ln, delim, len(header))
        if isinstance(fields, tuple):
            rejected.append((i, *fields, ln))
            continue
        rows.append(fields)
        lines.append(i)
        raws.append(ln)
    return _Parsed.from_rows(header, rows, lines, raws, rejected, rows_in)


def _parse_jsonl(numbered: list[tuple[int, str]], bad: list[tuple]) -> _Parsed:
    header: dict[str, None] = {}
    objects, lines, raws, rejected = [], [], [], list(bad)
    rows_in = len(bad)
    decode = json.JSONDecoder().decode
    for i, ln in numbered:
        if not ln or ln.isspace():
            continue
        rows_in += 1
        try:
            obj = decode(ln)
        except json.JSONDecodeError as exc:
            rejected.append((i, "R_JSON", f"not valid JSON: {exc.msg} at column {exc.colno}", ln))
            continue
        if not isinstance(obj, dict):
            rejected.append((i, "R_JSON", f"a JSON {type(obj).__name__}, not an object", ln))
            continue
        if obj.keys() != header.keys():  # a key not seen before (columns in order of first use)
            header.update(dict.fromkeys(obj))
        objects.append(obj)
        lines.append(i)
        raws.append(ln)
    columns = [_json_column([o.get(c) for o in objects]) for c in header]
    return _Parsed(list(header), columns, lines, raws.__getitem__, sorted(rejected), rows_in)


def _json_column(values: list) -> pa.Array:
    """One key's values as text: strings as sent, null or absent as "", anything else as JSON."""
    try:
        return pc.fill_null(pa.array(values, pa.string()), "")
    except (pa.ArrowTypeError, pa.ArrowInvalid):  # a number, a boolean, an object ...
        return pa.array([_json_text(v) for v in values], pa.string())


def _json_text(v) -> str:
    if v is None:
        return ""
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


def _xlsx_rows(data: bytes) -> list[list]:
    """The first sheet's cells, row by row (as a rectangle: short rows padded with "")."""
    from python_calamine import CalamineWorkbook

    try:
        sheet = CalamineWorkbook.from_filelike(io.BytesIO(data)).get_sheet_by_index(0)
        return sheet.to_python(skip_empty_area=False)
    except Exception as exc:  # noqa: BLE001 - any failure to open a workbook is the file's fault
        raise _FileRejected("F_UNREADABLE", f"workbook cannot be opened: {exc}") from None


def _parse_xlsx(data: bytes, contract: FeedContract, profile: SourceProfile) -> _Parsed:
    table = _xlsx_rows(data)
    while table and all(v is None or str(v).strip() == "" for v in table[-1]):
        table.pop()
    if not table:
        raise _FileRejected("F_EMPTY", "workbook has no header row")
    header = [("" if h is None else str(h)).strip() for h in table[0]]
    while header and header[-1] == "":
        header.pop()  # every row comes padded to the sheet's widest row
    rows, lines, raws, rejected = [], [], [], []
    rows_in = 0
    for i, values in enumerate(table[1:], start=2):  # sheet row numbers; row 1 is the header
        if all(v is None or str(v).strip() == "" for v in values):
            continue
        rows_in += 1
        fields = [_cell_text(v, profile) for v in values]
        while len(fields) > len(header) and fields[-1] == "":
            fields.pop()
        if len(fields) > len(header):
            rejected.append((i, "R_FIELDS", f"{len(fields)} cells, header has {len(header)}",
                             "\t".join(fields)))
            continue
        fields += [""] * (len(header) - len(fields))
        rows.append(fields)
        lines.append(i)
        raws.append("\t".join(fields))
    return _Parsed.from_rows(header, rows, lines, raws, rejected, rows_in)


def _cell_text(v, profile: SourceProfile) -> str:
    if v is None:
        return ""
    if isinstance(v, dt.datetime):
        if v.time() == dt.time(0):
            return v.strftime(profile.date_format)
        return v.strftime(profile.timestamp_format)
    if isinstance(v, dt.date):
        return v.strftime(profile.date_format)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


# -- mapping to canonical columns and checking value forms ------------------------------------


def _canonicalise(p: _Parsed, f: LandedFile, contract: FeedContract, profile: SourceProfile,
                  out: FileOutcome) -> None:
    mapping = contract.source_columns(f.profile)          # canonical -> source header
    present = set(p.header)
    missing = [c for c in contract.columns if mapping[c.name] not in present]
    unknown = [h for h in p.header if h not in set(mapping.values())]
    missing_required = [c for c in missing if c.required]
    if not p.header and p.rows_in == 0:
        missing = missing_required = []  # an empty JSON Lines file names no columns at all
    if missing_required or (missing and unknown):
        names = ", ".join(f"'{mapping[c.name]}' ({c.name})" for c in missing)
        hint = f"; unknown column(s) {', '.join(repr(u) for u in unknown)} present - renamed?" \
            if unknown else ""
        raise _FileRejected("F_COLUMNS", f"expected column(s) {names} missing{hint}",
                            p.rows_in, "\t".join(p.header))
    out.unknown_columns = unknown
    out.missing_optional_columns = [c.name for c in missing]
    index = {h: k for k, h in enumerate(p.header)}
    n = len(p.lines)

    columns: dict[str, pa.Array] = {}
    for c in contract.columns:
        k = index.get(mapping[c.name])
        columns[c.name] = pc.utf8_trim_whitespace(p.columns[k]) if k is not None \
            else pa.array([""] * n, pa.string())
    failures = _form_failures(columns, contract, profile, mapping)

    rejected = list(p.rejected)
    for pos, (rule_id, message) in failures.items():
        rejected.append((p.lines[pos], rule_id, message, p.raw_of(pos)))
    good = np.setdiff1d(np.arange(n, dtype=np.int64), np.fromiter(failures, np.int64,
                                                                  len(failures)))
    out.rows_in = p.rows_in
    out.quarantine = [_qrow(f, out.sha256, line, rid, msg, raw)
                      for line, rid, msg, raw in sorted(rejected)]
    take = pa.array(good, pa.int64())
    data = {name: arr.take(take) for name, arr in columns.items()}
    extra_values = {h: p.columns[index[h]].take(take).to_pylist() for h in unknown}
    data["extra_columns"] = pa.array(
        [[(h, extra_values[h][j]) for h in unknown if extra_values[h][j] != ""]
         for j in range(len(good))] if unknown else [[]] * len(good),
        pa.map_(pa.string(), pa.string()))
    data["source_line"] = pa.array(np.asarray(p.lines, dtype=np.int32)[good], pa.int32())
    out.bronze = pa.table(data)


def _form_failures(columns: dict[str, pa.Array], contract: FeedContract, profile: SourceProfile,
                   mapping: dict[str, str]) -> dict[int, tuple[str, str]]:
    """Row position -> (rule, message) for the first failing column of each failing row."""
    failures: dict[int, tuple[str, str]] = {}
    for c in contract.columns:
        arr = columns[c.name]
        empty = pc.equal(arr, "")
        if c.required:
            for pos in pc.indices_nonzero(empty).to_pylist():
                failures.setdefault(pos, ("R_REQUIRED", f"required column '{mapping[c.name]}' "
                                          f"({c.name}) is empty"))
        bad = _bad_form(arr, c.form, c.values, profile)
        if bad is None:
            continue
        bad = pc.and_(bad, pc.invert(empty))
        for pos in pc.indices_nonzero(bad).to_pylist():
            failures.setdefault(pos, ("R_FORM", f"column '{mapping[c.name]}' ({c.name}): "
                                      f"{arr[pos].as_py()!r} is not {_form_text(c, profile)}"))
    return failures


def _bad_form(arr: pa.Array, form: str, values: list[str], profile: SourceProfile):
    if form == "date":
        return _bad_datetime(arr, profile.date_format)
    if form == "timestamp":
        return _bad_datetime(arr, profile.timestamp_format)
    if form == "sex":
        return pc.invert(pc.is_in(arr, pa.array(list(profile.sex_codes), pa.string())))
    if form == "enum":
        return pc.invert(pc.is_in(arr, pa.array(values, pa.string())))
    if form == "boolean":
        return pc.invert(pc.is_in(pc.utf8_lower(arr), pa.array(sorted(BOOLEAN_VALUES))))
    if form == "id_number":  # spaces aside, full-width digits and x count as their ASCII selves
        cleaned = pc.replace_substring_regex(arr, "[ \u3000]", "")
        return pc.invert(pc.match_substring_regex(cleaned, ID_NUMBER_LOOSE))
    if form in FORM_PATTERNS:
        return pc.invert(pc.match_substring_regex(arr, FORM_PATTERNS[form].pattern))
    return None


def _bad_datetime(arr: pa.Array, fmt: str):
    """Not parseable with ``fmt``, or not a real calendar value: 2024-02-30 parses as 03-01, so
    each part the text gives (year, month, day ...) must be the parsed value's part.
    Formatting the parsed values back and comparing says the same: pyarrow's strftime costs
    about 3 us a value, the parts' checks a few more calls; small files format back."""
    parsed = pc.strptime(arr, format=fmt, unit="s", error_is_null=True)
    shape = _datetime_shape(fmt)
    if shape is None or len(arr) < 1000:  # (or a directive not in DATETIME_PARTS)
        return pc.fill_null(pc.not_equal(pc.strftime(parsed, format=fmt), arr), True)
    pattern, parts = shape
    ok = pc.match_substring_regex(arr, pattern)
    written = pc.if_else(ok, arr, pc.strftime(pa.scalar(0, pa.timestamp("s")), format=fmt))
    for part, start, stop in parts:  # the text's part (where the shape holds) = the value's
        text = pc.utf8_slice_codeunits(written, start, stop)
        ok = pc.and_(ok, pc.equal(pc.cast(text, pa.int64()), getattr(pc, part)(parsed)))
    return pc.fill_null(pc.invert(ok), True)


@cache  # one parse of each profile's format, not one per column and file
def _datetime_shape(fmt: str) -> tuple[str, list[tuple[str, int, int]]] | None:
    """The regex of the text ``fmt`` makes and where each part stands in it, as
    (part, start, stop); None if ``fmt`` holds a directive beyond DATETIME_PARTS, one twice, or
    other than ASCII text."""
    pattern, parts, at = "^", [], 0
    for literal, directive in re.findall(r"([^%]*)(%.|$)", fmt):
        if not literal.isascii() or directive in [p for p, _ in parts]:
            return None
        pattern, at = pattern + re.escape(literal), at + len(literal)
        if not directive:
            continue
        if directive not in DATETIME_PARTS:
            return None
        part, width = DATETIME_PARTS[directive]
        pattern += rf"\d{{{width}}}"
        parts.append((directive, (part, at, at + width)))
        at += width
    return pattern + "$", [where for _, where in parts]


def _form_text(c, profile: SourceProfile) -> str:
    return {
        "date": f"a date in format {profile.date_format}",
        "timestamp": f"a timestamp in format {profile.timestamp_format}",
        "sex": f"a sex code of this source ({', '.join(profile.sex_codes)})",
        "enum": f"one of {', '.join(c.values)}",
        "boolean": "a yes/no value",
        "id_number": "an identity number (15 to 18 digits or X)",
        "phone": "a phone number",
        "area_code": "an area code of 6, 9 or 12 digits",
        "icd10": "an ICD-10 code",
        "integer": "a whole number",
        "decimal": "a number",
    }.get(c.form, c.form)
