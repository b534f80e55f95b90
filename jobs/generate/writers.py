"""Serialise canonical frames the way each source profile sends them, malformations included.

Formatting goes through the contracts: headers are ``contract.source_columns(profile)``, sex
codes ``profile.code_for_sex``, dates and timestamps the profile's formats, encodings and
delimiters the profile's. Output is bytes, deterministic for the same input (gzip with mtime 0
and no file name; XLSX with fixed document properties).
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json

import numpy as np
import pandas as pd
import xlsxwriter

from jobs.contracts import FeedContract, SourceProfile

UNDECODABLE = "\ue000UNDECODABLE\ue000"   # placeholder replaced by bytes invalid in GB18030
BAD_GB18030 = b"\xff\xfe"


def _fmt_time(values: pd.Series, fmt: str) -> np.ndarray:
    s = pd.to_datetime(values)
    out = s.dt.strftime(fmt).to_numpy(object)
    out[s.isna().to_numpy()] = None
    return out


def format_frame(frame: pd.DataFrame, contract: FeedContract, profile: SourceProfile,
                 boolean_codes: list[str]) -> dict[str, np.ndarray]:
    """Canonical typed columns -> text columns (None for missing), in contract order."""
    out: dict[str, np.ndarray] = {}
    for col in contract.columns:
        v = frame[col.name] if col.name in frame else pd.Series([None] * len(frame))
        if col.form == "date":
            text = _fmt_time(v, profile.date_format)
        elif col.form == "timestamp":
            text = _fmt_time(v, profile.timestamp_format)
        elif col.form == "sex":
            codes = {s: profile.code_for_sex(s) for s in ("male", "female", "unknown")}
            text = v.map(codes).to_numpy(object)
        elif col.form == "boolean":
            text = np.where(v.to_numpy(bool), boolean_codes[0], boolean_codes[1]).astype(object)
        elif col.form == "integer":
            num = pd.to_numeric(v, errors="coerce")
            text = num.astype("Int64").astype(str).to_numpy(object)
            text[num.isna().to_numpy()] = None
        elif col.form == "decimal":
            num = pd.to_numeric(v, errors="coerce")
            text = num.map(lambda x: f"{x:.2f}".rstrip("0").rstrip(".")).to_numpy(object)
            text[num.isna().to_numpy()] = None
        else:
            text = v.astype(object).to_numpy(object)
            text = np.where(pd.isna(text), None, text).astype(object)
            if len(text):
                text = np.array([None if t is None else str(t) for t in text], dtype=object)
        out[col.name] = text
    return out


def impossible(fmt: str) -> str:
    """A date in the profile's pattern that cannot exist: month 13, day 45."""
    return (fmt.replace("%Y", "2024").replace("%m", "13").replace("%d", "45")
            .replace("%H", "10").replace("%M", "30").replace("%S", "00"))


def apply_row_fault(cols: dict[str, np.ndarray], i: int, kind: str, contract: FeedContract,
                    profile: SourceProfile, profile_name: str) -> str:
    """Damage row ``i`` in place (text level, before serialisation); return a detail message.

    broken_quoting, wrong_field_count, broken_json and undecodable_bytes are finished by the
    serialiser (they concern the line, not a value), marked here through sentinels.
    """
    if kind == "impossible_date":
        col = next((c for c in contract.columns if c.form == "date"), None) or next(
            c for c in contract.columns if c.form == "timestamp")
        fmt = profile.date_format if col.form == "date" else profile.timestamp_format
        cols[col.name][i] = impossible(fmt)
        return f"{col.sources[profile_name]} = {impossible(fmt)}"
    if kind == "empty_required":
        col = next(c for c in contract.columns
                   if c.required and c.name not in contract.key and c.name != "change_type")
        cols[col.name][i] = None
        return f"required {col.sources[profile_name]} is empty"
    text_col = "name" if "name" in cols else contract.columns[1].name
    if kind == "undecodable_bytes":
        cols[text_col][i] = f"{cols[text_col][i] or ''}{UNDECODABLE}"
        return f"bytes {BAD_GB18030!r} in {text_col}"
    if kind == "broken_quoting":
        cols[text_col][i] = f'"{cols[text_col][i] or ""}'
        return f"unclosed quote in {text_col}"
    if kind in ("wrong_field_count", "broken_json"):
        return {"wrong_field_count": "one extra field", "broken_json": "line cut mid-object"}[kind]
    raise ValueError(f"unknown row fault {kind!r}")


def serialise(cols: dict[str, np.ndarray], headers: list[str], profile: SourceProfile,
              line_faults: dict[int, str], xlsx_created: dt.datetime,
              numeric: set[str]) -> bytes:
    """Text columns -> file bytes in the profile's format (before any compression)."""
    names = list(cols)
    n = len(cols[names[0]]) if names else 0
    if profile.format == "xlsx":
        return _xlsx(cols, headers, n, line_faults, xlsx_created, numeric)
    if profile.format == "jsonl":
        frame = pd.DataFrame({h: cols[c] for h, c in zip(headers, names, strict=True)})
        text = frame.to_json(orient="records", lines=True, force_ascii=False) if n else ""
        lines = text.rstrip("\n").split("\n") if n else []
        for i, kind in line_faults.items():
            if kind == "broken_json":
                lines[i] = lines[i][: len(lines[i]) // 2]
        return ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8")
    d = profile.delimiter
    values = [np.where(pd.isna(cols[c]), "", cols[c]).astype(object) for c in names]
    lines = list(map(d.join, zip(*values, strict=True))) if n else []
    for i, kind in line_faults.items():
        if kind == "wrong_field_count":
            lines[i] = lines[i] + d + "EXTRA"
    text = d.join(headers) + "\n" + "".join(line + "\n" for line in lines)
    data = text.encode(profile.encoding)
    return data.replace(UNDECODABLE.encode(profile.encoding), BAD_GB18030)


def _xlsx(cols: dict[str, np.ndarray], headers: list[str], n: int, line_faults: dict[int, str],
          created: dt.datetime, numeric: set[str]) -> bytes:
    buf = io.BytesIO()
    wb = xlsxwriter.Workbook(buf, {"in_memory": True, "strings_to_numbers": False})
    wb.set_properties({"created": created, "author": "healthlake", "title": ""})
    ws = wb.add_worksheet("Sheet1")
    ws.write_row(0, 0, headers)
    names = list(cols)
    columns = []
    for c in names:
        v = cols[c]
        if c in numeric:
            num = pd.to_numeric(pd.Series(v), errors="coerce")
            columns.append(np.where(num.isna(), None, num.to_numpy(object)))
        else:
            columns.append(v)
    for r, row in enumerate(zip(*columns, strict=True)):
        ws.write_row(r + 1, 0, [("" if x is None else x) for x in row])
        if line_faults.get(r) == "wrong_field_count":
            ws.write(r + 1, len(headers), "EXTRA")
    wb.close()
    return buf.getvalue()


def gzip_bytes(data: bytes, level: int) -> bytes:
    """Gzip without a file name or timestamp in the header, so bytes are reproducible."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=level) as gz:
        gz.write(data)
    return buf.getvalue()


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=False) + "\n").encode()
