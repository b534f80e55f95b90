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
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from jobs.contracts import FeedContract, SourceProfile
from jobs.ingest.rules import rule

# Encodings tried to explain a file that does not decode as its contract says.
CANDIDATE_ENCODINGS = ("utf-8-sig", "gb18030", "utf-16")
FULLWIDTH = str.maketrans("０１２３４５６７８９ｘＸ", "0123456789xX")

FORM_PATTERNS = {
    # Loose on purpose: a mistyped number (check character moved, digits swapped) is still a
    # resident's record; silver validates the check character and flags it, bronze keeps it.
    "id_number": re.compile(r"^[0-9Xx]{15,18}$"),
    "phone": re.compile(r"^\+?\d[\d\- ]{5,18}\d$"),
    "area_code": re.compile(r"^\d{6}(\d{3}(\d{3})?)?$"),
    "icd10": re.compile(r"^[A-Z]\d{2}(\.[0-9A-Za-z]{1,4})?$"),
    "integer": re.compile(r"^[+-]?\d+$"),
    "decimal": re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$"),
}
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
                bad.append((i, "R_DECODE", f"bytes {chunk[exc.start:exc.end]!r} at offset "
                            f"{exc.start} are not valid {encoding}",
                            chunk.decode(encoding, errors="backslashreplace")))
    numbered = [(i, ln.rstrip("\r")) for i, ln in enumerate(lines, start=1)]
    return numbered, bad


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
    """pyarrow's C++ parser for the common case: no quotes, no blank lines, clean encoding.

    Returns None whenever a line-by-line look is needed (a quote may be broken, bytes may not
    decode, the header may be wrong): the careful path then decides, line by line.
    """
    if b'"' in raw or b"\n\n" in raw or b"\r" in raw:
        return None
    try:
        text = raw.decode(profile.encoding)
    except UnicodeDecodeError:
        return None
    if not _header_fits(text, profile, expected):
        return None
    text = text.lstrip("\ufeff")
    rejected: list[tuple[int, str, str, str]] = []

    def on_invalid(row) -> str:
        rejected.append((row.number, "R_FIELDS",
                         f"{row.actual_columns} fields, header has {row.expected_columns}",
                         row.text))
        return "skip"

    header = [h.strip() for h in text.split("\n", 1)[0].split(profile.delimiter)]
    if len(set(header)) != len(header) or "" in header:
        return None  # pyarrow needs distinct names; the careful path reports this file
    table = pacsv.read_csv(
        io.BytesIO(text.encode("utf-8")),
        read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 26),
        parse_options=pacsv.ParseOptions(delimiter=profile.delimiter, quote_char=False,
                                         newlines_in_values=False, ignore_empty_lines=True,
                                         invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            column_types={h: pa.string() for h in header}, strings_can_be_null=False))
    if any(n is None for n, *_ in rejected):
        return None
    n_lines = table.num_rows + len(rejected)
    bad_lines = {n for n, *_ in rejected}
    lines = [i for i in range(2, n_lines + 2) if i not in bad_lines]
    text_lines: list[str] = []

    def raw_of(pos: int) -> str:
        if not text_lines:
            text_lines.extend(text.split("\n"))
        return text_lines[lines[pos] - 1]

    columns = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c
               for c in table.columns]
    return _Parsed(header, columns, lines, raw_of, sorted(rejected), n_lines)


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
    width = len(header)
    for i, ln in content[1:]:
        rows_in += 1
        if '"' in ln:
            if ln.count('"') % 2:
                rejected.append((i, "R_QUOTING", "unbalanced quotes", ln))
                continue
            try:
                fields = next(csv.reader([ln], delimiter=delim, strict=True))
            except csv.Error as exc:
                rejected.append((i, "R_QUOTING", f"cannot parse quoting: {exc}", ln))
                continue
        else:
            fields = ln.split(delim)
        if len(fields) != width:
            rejected.append((i, "R_FIELDS", f"{len(fields)} fields, header has {width}", ln))
            continue
        rows.append(fields)
        lines.append(i)
        raws.append(ln)
    return _Parsed.from_rows(header, rows, lines, raws, rejected, rows_in)


def _parse_jsonl(numbered: list[tuple[int, str]], bad: list[tuple]) -> _Parsed:
    header: dict[str, None] = {}
    objects, lines, raws, rejected = [], [], [], list(bad)
    rows_in = len(bad)
    for i, ln in numbered:
        if not ln.strip():
            continue
        rows_in += 1
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError as exc:
            rejected.append((i, "R_JSON", f"not valid JSON: {exc.msg} at column {exc.colno}", ln))
            continue
        if not isinstance(obj, dict):
            rejected.append((i, "R_JSON", f"a JSON {type(obj).__name__}, not an object", ln))
            continue
        for k in obj:
            header.setdefault(k, None)
        objects.append(obj)
        lines.append(i)
        raws.append(ln)
    cols = list(header)
    rows = [[_json_text(o.get(c)) for c in cols] for o in objects]
    return _Parsed.from_rows(cols, rows, lines, raws, rejected, rows_in)


def _json_text(v) -> str:
    if v is None:
        return ""
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


def _xlsx_rows(data: bytes) -> list[tuple]:
    from openpyxl import load_workbook

    try:
        wb = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        ws = wb.worksheets[0]
        rows = [tuple(r) for r in ws.iter_rows(values_only=True)]
        wb.close()
        return rows
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
        header.pop()  # read-only sheets pad every row to the sheet's widest row
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
    if form == "id_number":
        cleaned = pa.array([v.translate(FULLWIDTH).replace(" ", "").replace("\u3000", "")
                            for v in arr.to_pylist()], pa.string())
        return pc.invert(pc.match_substring_regex(cleaned, FORM_PATTERNS["id_number"].pattern))
    if form in FORM_PATTERNS:
        return pc.invert(pc.match_substring_regex(arr, FORM_PATTERNS[form].pattern))
    return None


def _bad_datetime(arr: pa.Array, fmt: str):
    """Not parseable with ``fmt``, or not a real calendar value (2024-02-30 parses as 03-01:
    formatting the parsed value back must give the text that was sent)."""
    parsed = pc.strptime(arr, format=fmt, unit="s", error_is_null=True)
    round_trip = pc.strftime(parsed, format=fmt)
    return pc.fill_null(pc.not_equal(round_trip, arr), True)


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
