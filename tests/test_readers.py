"""The file reader: every format and encoding lands in one canonical shape, and every bad line
or file is rejected with the right rule, line and raw text (no Spark needed)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
import xlsxwriter

from jobs.contracts import load_contracts
from jobs.ingest.readers import LandedFile, read_landed_file

C = load_contracts()
REG = C.feed("resident_registry")

# One valid resident per profile, as that kind of institution writes it (canonical -> value).
VALID = {
    "municipal": {"record_id": "M1", "change_type": "snapshot", "national_id": "34052419800101001X",
                  "name": "张伟", "sex": "M", "birth_date": "1980-01-01", "phone": "13800138000",
                  "address": "香洲区拱北街道", "area_code": "440402001001",
                  "registered_at": "2024-04-14T09:30:00+08:00", "updated_at": ""},
    "district": {"record_id": "D1", "change_type": "create", "national_id": "34052419800101001X",
                 "name": "张伟", "sex": "1", "birth_date": "1980-01-01", "phone": "13800138000",
                 "address": "斗门区井岸镇", "area_code": "440403100001",
                 "registered_at": "2024-04-14 09:30:00", "updated_at": ""},
    "township": {"record_id": "T1", "change_type": "snapshot", "national_id": "34052419800101001X",
                 "name": "张伟", "sex": "男", "birth_date": "1980/01/01", "phone": "13800138000",
                 "address": "金湾区三灶镇", "area_code": "440404100001",
                 "registered_at": "2024/04/14 09:30", "updated_at": ""},
}
VALID["village_csv"] = {**VALID["township"], "record_id": "V1"}
VALID["village_xlsx"] = {**VALID["township"], "record_id": "X1"}


def header(profile: str) -> list[str]:
    return list(REG.source_columns(profile).values())


def line(profile: str, **changes: str) -> list[str]:
    values = {**VALID[profile], **changes}
    return [values[c] for c in REG.column_names]


def write_text(path: Path, profile: str, lines: list[str], encoding: str | None = None) -> Path:
    p = C.profiles[profile]
    text = "\n".join(lines) + "\n"
    path.write_bytes(text.encode(encoding or p.encoding))
    return path


def csv_lines(profile: str, rows: list[list[str]]) -> list[str]:
    d = C.profiles[profile].delimiter
    return [d.join(header(profile))] + [d.join(r) for r in rows]


def landed(path: Path, profile: str, *, rows: int | None = None, sha: str | None = None,
           listed: bool = True) -> LandedFile:
    return LandedFile(path=str(path), source_file=f"2024-04-15/I1/{path.name}",
                      feed="resident_registry", institution_id="I1", tier="district",
                      profile=profile, extract_date="2024-04-15", manifest_rows=rows,
                      manifest_sha256=sha, listed=listed)


def read(path: Path, profile: str, **kw):
    out = read_landed_file(landed(path, profile, **kw), REG, C.profiles[profile])
    assert out.rows_in == out.rows_loaded + out.rows_quarantined  # reconciliation, always
    return out


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_clean_district_csv_lands_canonical_values_as_received(tmp_path):
    f = write_text(tmp_path / "resident_registry.csv", "district",
                   csv_lines("district", [line("district"), line("district", record_id="D2")]))
    out = read(f, "district", rows=2, sha=sha(f))
    assert out.status == "loaded" and out.rows_in == 2 and out.quarantine == []
    rows = out.bronze.to_pylist()
    assert rows[0]["record_id"] == "D1" and rows[0]["sex"] == "1"  # codes kept as received
    assert rows[0]["birth_date"] == "1980-01-01"
    assert [r["source_line"] for r in rows] == [2, 3]


def test_bad_rows_are_quarantined_with_rule_line_and_raw_text(tmp_path):
    rows = [
        line("district"),
        line("district", record_id="D2")[:-2],                        # line 3: too few fields
        line("district", record_id="D3", address='"香洲区,拱北'),       # line 4: broken quote
        line("district", record_id="D4", birth_date="2024-13-45"),    # line 5: impossible date
        line("district", record_id="D5", name=""),                    # line 6: required empty
        line("district", record_id="D6", sex="X"),                    # line 7: unknown sex code
        line("district", record_id="D7"),
    ]
    f = write_text(tmp_path / "resident_registry.csv", "district", csv_lines("district", rows))
    out = read(f, "district", rows=7, sha=sha(f))
    got = [(q["source_line"], q["rule_id"]) for q in out.quarantine]
    assert got == [(3, "R_FIELDS"), (4, "R_QUOTING"), (5, "R_FORM"), (6, "R_REQUIRED"),
                   (7, "R_FORM")]
    assert "2024-13-45" in out.quarantine[2]["message"]
    assert "birth_date" in out.quarantine[2]["message"]
    assert "D4" in out.quarantine[2]["raw_text"]
    assert [r["record_id"] for r in out.bronze.to_pylist()] == ["D1", "D7"]


def test_township_gb18030_with_chinese_headers_and_slash_dates(tmp_path):
    rows = [line("township"), line("township", record_id="T2", name="欧阳喆")]
    f = write_text(tmp_path / "resident_registry.csv", "township", csv_lines("township", rows))
    assert "身份证号".encode("gb18030") in f.read_bytes()
    out = read(f, "township", rows=2, sha=sha(f))
    assert out.status == "loaded"
    assert [r["name"] for r in out.bronze.to_pylist()] == ["张伟", "欧阳喆"]
    assert out.bronze.to_pylist()[0]["birth_date"] == "1980/01/01"


def test_township_file_sent_in_utf8_is_detected_never_loaded_as_mojibake(tmp_path):
    f = write_text(tmp_path / "resident_registry.csv", "township",
                   csv_lines("township", [line("township")] * 3), encoding="utf-8")
    out = read(f, "township", rows=3, sha=sha(f))
    assert out.status == "quarantined" and out.file_rule == "F_ENCODING"
    assert "utf-8" in out.quarantine[0]["message"] and out.bronze is None
    assert out.rows_in == 3 and out.rows_quarantined == 3


def test_undecodable_bytes_quarantine_only_their_line(tmp_path):
    good = csv_lines("township", [line("township"), line("township", record_id="T2")])
    data = ("\n".join(good) + "\n").encode("gb18030")
    data += ",".join(line("township", record_id="T3")).encode("gb18030").replace(
        "张".encode("gb18030"), b"\xff\xfe") + b"\n"
    f = tmp_path / "resident_registry.csv"
    f.write_bytes(data)
    out = read(f, "township", rows=3, sha=sha(f))
    assert [(q["source_line"], q["rule_id"]) for q in out.quarantine] == [(4, "R_DECODE")]
    assert out.rows_loaded == 2


def test_village_tab_separated_utf8_bom(tmp_path):
    f = write_text(tmp_path / "resident_registry.tsv", "village_csv",
                   csv_lines("village_csv", [line("village_csv")]))
    assert f.read_bytes().startswith(b"\xef\xbb\xbf")
    out = read(f, "village_csv", rows=1, sha=sha(f))
    assert out.status == "loaded" and out.bronze.to_pylist()[0]["record_id"] == "V1"


def test_municipal_gzip_jsonl_and_a_broken_json_line(tmp_path):
    names = REG.source_columns("municipal")
    objs = [{names[c]: v for c, v in VALID["municipal"].items()},
            {names[c]: v for c, v in {**VALID["municipal"], "record_id": "M2"}.items()}]
    text = json.dumps(objs[0], ensure_ascii=False) + "\n{\"recordId\": \"M9\", \n" + \
        json.dumps(objs[1], ensure_ascii=False) + "\n"
    f = tmp_path / "resident_registry.jsonl.gz"
    f.write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))
    out = read(f, "municipal", rows=3, sha=sha(f))
    assert [(q["source_line"], q["rule_id"]) for q in out.quarantine] == [(2, "R_JSON")]
    assert [r["record_id"] for r in out.bronze.to_pylist()] == ["M1", "M2"]
    assert [r["source_line"] for r in out.bronze.to_pylist()] == [1, 3]


def test_half_written_gzip_is_unreadable(tmp_path):
    f = tmp_path / "resident_registry.jsonl.gz"
    f.write_bytes(gzip.compress(b'{"recordId": "M1"}\n' * 500, mtime=0)[:40])
    out = read(f, "municipal", sha=sha(f))
    assert out.file_rule == "F_UNREADABLE" and "gzip" in out.quarantine[0]["message"]


def test_xlsx_rows_keep_sheet_row_numbers(tmp_path):
    f = tmp_path / "resident_registry.xlsx"
    wb = xlsxwriter.Workbook(str(f))
    ws = wb.add_worksheet()
    ws.write_row(0, 0, header("village_xlsx"))
    ws.write_row(1, 0, line("village_xlsx"))
    ws.write_row(2, 0, line("village_xlsx", record_id="X2", birth_date="1980-13-01"))
    wb.close()
    out = read(f, "village_xlsx", rows=2, sha=sha(f))
    assert out.bronze.to_pylist()[0]["source_line"] == 2
    assert [(q["source_line"], q["rule_id"]) for q in out.quarantine] == [(3, "R_FORM")]


def test_renamed_column_quarantines_the_file_and_names_it(tmp_path):
    lines = csv_lines("township", [line("township")])
    lines[0] = lines[0].replace("身份证号", "证件号码")
    f = write_text(tmp_path / "resident_registry.csv", "township", lines)
    out = read(f, "township", rows=1, sha=sha(f))
    assert out.file_rule == "F_COLUMNS"
    assert "身份证号" in out.quarantine[0]["message"] and "证件号码" in out.quarantine[0]["message"]


def test_unknown_extra_column_is_kept_and_reported(tmp_path):
    lines = csv_lines("district", [line("district")])
    lines[0] += ",wechat_id"
    lines[1] += ",wx_123"
    f = write_text(tmp_path / "resident_registry.csv", "district", lines)
    out = read(f, "district", rows=1, sha=sha(f))
    assert out.status == "loaded" and out.unknown_columns == ["wechat_id"]
    assert out.bronze.to_pylist()[0]["extra_columns"] == [("wechat_id", "wx_123")]


@pytest.mark.parametrize("case", ["checksum", "row_count", "empty", "unlisted"])
def test_file_level_rejections(tmp_path, case):
    f = write_text(tmp_path / "resident_registry.csv", "district",
                   csv_lines("district", [line("district")] * 4))
    kw = {"rows": 4, "sha": sha(f)}
    if case == "checksum":
        kw["sha"] = "0" * 64
    elif case == "row_count":
        kw["rows"] = 5
    elif case == "empty":
        f.write_bytes(b"")
        kw["sha"] = sha(f)
    else:
        kw = {"listed": False}
    out = read(f, "district", **kw)
    expected = {"checksum": "F_CHECKSUM", "row_count": "F_ROW_COUNT", "empty": "F_EMPTY",
                "unlisted": "F_UNLISTED"}[case]
    assert out.status == "quarantined" and out.file_rule == expected
    assert out.bronze is None and len(out.quarantine) == 1
    assert out.quarantine[0]["scope"] == "file"
    assert out.rows_in == (0 if case == "empty" else 4)


def test_data_dictionary_is_current():
    from jobs.dictionary import DEFAULT_OUTPUT, render

    assert DEFAULT_OUTPUT.read_text(encoding="utf-8") == render(C), \
        "docs/data-dictionary.md is stale: run `healthlake dictionary`"


def test_fast_and_careful_csv_paths_agree(tmp_path, monkeypatch):
    from jobs.ingest import readers

    rows = [line("township"), line("township", record_id="T2")[:-1],
            line("township", record_id="T3", birth_date="1980/02/30"),
            line("township", record_id="T4", sex=""), line("township", record_id="T5")]
    lines = csv_lines("township", rows)
    lines[0] += ",微信号"
    lines[1] += ",wx1"
    lines[2:] = [ln + "," for ln in lines[2:]]
    lines[2] = lines[2][:-1]  # short row stays short
    f = write_text(tmp_path / "resident_registry.csv", "township", lines)
    fast = read(f, "township", rows=5, sha=sha(f))
    assert readers._parse_clean_csv(f.read_bytes(), C.profiles["township"],
                                    set(header("township"))) is not None
    monkeypatch.setattr(readers, "_parse_clean_csv", lambda *a: None)
    careful = read(f, "township", rows=5, sha=sha(f))
    assert fast.quarantine == careful.quarantine
    assert fast.bronze.equals(careful.bronze)
    assert [(q["source_line"], q["rule_id"]) for q in fast.quarantine] == [
        (3, "R_FIELDS"), (4, "R_FORM"), (5, "R_REQUIRED")]
    assert fast.bronze.to_pylist()[0]["extra_columns"] == [("微信号", "wx1")]
