"""The synthetic city generator: reproducible bytes, contract-shaped files, truthful ground truth.

One small run (the configured demo scale: ~5,000 residents, 3 days) is generated once per
module and read back independently of the generator's own code paths: files are parsed from
their bytes, and every anomaly found in them must be one the ground truth recorded (and vice
versa).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from jobs.config import ConfigError, load
from jobs.contracts import load_contracts
from jobs.generate import deliver_late, generate
from jobs.generate.params import load_params
from jobs.identity import is_valid_id18, normalise_id

BAD_CHECK = {"transposed_id", "invalid_check_char"}


def _settings(root: Path, **extra: str):
    env = {
        "HEALTHLAKE_PATHS__LANDING_ROOT": str(root / "landing"),
        "HEALTHLAKE_PATHS__GROUND_TRUTH_ROOT": str(root / "truth"),
        "HEALTHLAKE_PATHS__LATE_DELIVERIES_ROOT": str(root / "late"),
        "HEALTHLAKE_PATHS__REFERENCE_ROOT": str(root / "reference"),
        **extra,
    }
    return load(environ=env)


def _tree_hashes(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                out[str(p.relative_to(root.parent))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("city")
    settings = _settings(root)
    summary = generate(settings)
    truth = settings.ground_truth_root
    records = pd.read_parquet(truth / "records")
    faults = pd.read_parquet(truth / "faults")
    return settings, summary, records, faults


def _read_rows(path: Path, profile_name: str) -> tuple[list[str], list[list[str]], list[bytes]]:
    """Header, rows (as text fields) and raw lines of a delivered file, parsed from bytes."""
    profile = load_contracts().profiles[profile_name]
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    if profile.format == "xlsx":
        wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True)
        rows = [["" if v is None else str(v) for v in r] for r in wb.worksheets[0].iter_rows(
            values_only=True)]
        header = rows[0]
        while header and header[-1] == "":  # read-only sheets pad rows to the widest one
            header = header[:-1]
        return header, rows[1:], []
    raw = data.split(b"\n")[:-1]
    if profile.format == "jsonl":
        return [], [[line.decode("utf-8")] for line in raw], raw
    text_lines = [line.decode(profile.encoding, errors="replace") for line in raw]
    # Line by line, as ingest must: an unclosed quote may not swallow the following lines.
    parsed = [next(csv.reader([line], delimiter=profile.delimiter)) for line in text_lines]
    return parsed[0], parsed[1:], raw[1:]


def _file_faulted(faults: pd.DataFrame) -> set[tuple[str, str, str]]:
    """(institution, file, date) of every file the ground truth says is damaged as a whole."""
    ff = faults[faults["line"].isna() & faults["file"].notna()]
    return set(zip(ff["institution_id"], ff["file"], ff["extract_date"], strict=True))


# --------------------------------------------------------------------------------------------


def test_summary_has_every_fault_kind(run) -> None:
    _, summary, _, faults = run
    expected = {"wrong_field_count", "broken_quoting", "impossible_date", "empty_required",
                "undecodable_bytes", "broken_json", "truncated_file", "redelivered_file",
                "renamed_column", "wrong_encoding", "zero_byte_file", "half_written_gzip",
                "missing_file", "unlisted_file", "late_institution", "missing_institution"}
    assert set(summary["faults"]) == expected
    assert set(faults["kind"]) == expected
    assert summary["rows"]["resident_registry"] > 4000
    assert faults["expected_handling"].notna().all()


def test_same_seed_same_bytes_other_seed_other_bytes(run, tmp_path: Path) -> None:
    settings, *_ = run
    first = _tree_hashes(settings.landing_root, settings.late_deliveries_root)
    again = _settings(tmp_path / "again")
    generate(again)
    second = _tree_hashes(again.landing_root, again.late_deliveries_root)
    assert first == second
    other = _settings(tmp_path / "other")
    generate(other, seed=7, days=1)
    third = _tree_hashes(other.landing_root, other.late_deliveries_root)
    common = set(first) & set(third)
    assert common and any(first[k] != third[k] for k in common)


def test_rerun_is_idempotent(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    generate(settings, residents=800, days=1)
    before = _tree_hashes(settings.landing_root)
    (settings.landing_root / "2024-04-15" / "stale.txt").write_text("x")
    generate(settings, residents=800, days=1)
    assert _tree_hashes(settings.landing_root) == before


def test_manifests_match_files_except_recorded_faults(run) -> None:
    settings, _, _, faults = run
    damaged = {"truncated_file", "zero_byte_file", "half_written_gzip", "missing_file"}
    recorded = {(r.extract_date, r.institution_id, r.file): r.kind
                for r in faults.itertuples() if r.kind in damaged | {"unlisted_file"}}
    seen = set()
    for manifest_path in settings.landing_root.rglob("_manifest.json"):
        m = json.loads(manifest_path.read_text(encoding="utf-8"))
        folder = manifest_path.parent
        listed = {f["file"] for f in m["files"]}
        for f in m["files"]:
            key = (m["extract_date"], m["institution_id"], f["file"])
            path = folder / f["file"]
            ok = path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == f["sha256"]
            if ok:
                assert key not in recorded, key
                assert path.stat().st_size == f["bytes"]
            else:
                assert recorded.get(key) in damaged, key
                seen.add(key)
        for extra in folder.iterdir():
            if extra.name != "_manifest.json" and extra.name not in listed:
                key = (m["extract_date"], m["institution_id"], extra.name)
                assert recorded.get(key) == "unlisted_file", key
                seen.add(key)
    # Every recorded damage was found (the late institution's files are not in landing).
    late = set(faults.loc[faults["kind"] == "late_institution", "institution_id"])
    assert {k for k in recorded if k[1] not in late} <= seen


def test_file_faults_are_what_they_claim(run) -> None:
    settings, _, _, faults = run
    for r in faults[faults["line"].isna() & faults["file"].notna()].itertuples():
        path = settings.landing_root / r.extract_date / r.institution_id / r.file
        if not path.parent.exists():
            path = settings.late_deliveries_root / r.extract_date / r.institution_id / r.file
        if r.kind == "missing_file":
            assert not path.exists()
        elif r.kind == "zero_byte_file":
            assert path.stat().st_size == 0
        elif r.kind == "half_written_gzip":
            with pytest.raises((EOFError, OSError)):
                gzip.decompress(path.read_bytes())
        elif r.kind == "wrong_encoding":
            header = path.read_bytes().decode("utf-8").splitlines()[0]
            assert "身份证号" in header or "姓名" in header
        elif r.kind == "renamed_column":
            data = path.read_bytes()
            data = gzip.decompress(data) if r.file.endswith(".gz") else data
            if r.file.endswith(".xlsx"):
                head = [c.value for c in next(openpyxl.load_workbook(io.BytesIO(data)).worksheets[
                    0].iter_rows(max_row=1))]
                text = ",".join(head)
            else:
                text = data.decode("utf-8", errors="replace") + data.decode("gb18030", "replace")
            assert r.detail.split(" sent as ")[1] in text
        elif r.kind == "redelivered_file":
            src_day, inst, src_name = r.detail.removeprefix("same bytes as ").split("/")
            src = settings.landing_root / src_day / inst / src_name
            assert src.read_bytes() == path.read_bytes()


def test_every_malformed_line_is_recorded(run) -> None:
    """Scan delivered CSV/TSV/JSONL/XLSX files for anomalies; they must equal the row faults."""
    settings, _, records, faults = run
    contracts = load_contracts()
    inst = pd.read_csv(settings.reference_root / "institutions.csv", dtype=str)
    profile_of = dict(zip(inst["institution_id"], inst["profile"], strict=True))
    file_faulted = _file_faulted(faults)
    row_faults = faults[faults["line"].notna()]
    expected = {(r.extract_date, r.institution_id, r.file, int(r.line)) for r in
                row_faults.itertuples()}
    impossible = re.compile(r"2024[-/]13[-/]45")
    found = set()
    for m_path in settings.landing_root.rglob("_manifest.json"):
        m = json.loads(m_path.read_text(encoding="utf-8"))
        pname = profile_of[m["institution_id"]]
        for f in m["files"]:
            path = m_path.parent / f["file"]
            if (m["institution_id"], f["file"], m["extract_date"]) in file_faulted:
                continue
            contract = contracts.feed(f["feed"])
            required = [contract.source_columns(pname)[c.name] for c in contract.columns
                        if c.required]
            header, rows, raw = _read_rows(path, pname)
            first = 1 if pname == "municipal" else 2  # physical line / sheet row of row 1
            for i, row in enumerate(rows, start=first):
                bad = False
                if pname == "municipal":
                    try:
                        obj = json.loads(row[0])
                        bad = any(obj.get(h) in (None, "") for h in required)
                        bad |= bool(impossible.search(row[0]))
                    except json.JSONDecodeError:
                        bad = True
                else:
                    bad = len(row) != len(header) and any(row[len(header):])
                    bad |= len(row) < len(header)
                    values = dict(zip(header, row, strict=False))
                    bad |= any(values.get(h, "") == "" for h in required)
                    bad |= any(impossible.search(v) for v in row)
                    bad |= any(v.startswith('"') for v in row)
                    if raw:
                        try:
                            raw[i - first].decode(load_contracts().profiles[pname].encoding)
                        except UnicodeDecodeError:
                            bad = True
                if bad:
                    found.add((m["extract_date"], m["institution_id"], f["file"], i))
    late = set(faults.loc[faults["kind"] == "late_institution", "institution_id"])
    expected = {e for e in expected if e[1] not in late}
    assert found == expected
    assert len(expected) >= 6


def test_identity_numbers_valid_unless_recorded(run) -> None:
    settings, _, records, faults = run
    inst = pd.read_csv(settings.reference_root / "institutions.csv", dtype=str)
    profile_of = dict(zip(inst["institution_id"], inst["profile"], strict=True))
    contracts = load_contracts()
    rec = records.set_index(["extract_date", "institution_id", "file", "line"]).sort_index()
    file_faulted = _file_faulted(faults)
    checked = invalid = 0
    for m_path in settings.landing_root.rglob("_manifest.json"):
        m = json.loads(m_path.read_text(encoding="utf-8"))
        pname = profile_of[m["institution_id"]]
        for f in m["files"]:
            if f["feed"] == "institution_survey":
                continue
            path = m_path.parent / f["file"]
            if (m["institution_id"], f["file"], m["extract_date"]) in file_faulted or not f["rows"]:
                continue
            truth = rec.loc[(m["extract_date"], m["institution_id"], f["file"])]
            id_header = contracts.feed(f["feed"]).source_columns(pname)["national_id"]
            header, rows, _ = _read_rows(path, pname)
            first = 1 if pname == "municipal" else 2
            for i, row in enumerate(rows, start=first):
                t = truth.loc[i]
                if pd.notna(t["row_fault"]):
                    continue
                raw = json.loads(row[0]).get(id_header) if pname == "municipal" else dict(
                    zip(header, row, strict=False))[id_header]
                s = normalise_id(raw)
                if len(s) != 18:
                    continue
                checked += 1
                if not is_valid_id18(s):
                    invalid += 1
                    assert set(t["variations"].split(",")) & BAD_CHECK, (f["file"], i, raw)
    assert checked > 3000 and invalid > 0


def test_ground_truth_links_every_row_to_a_person(run) -> None:
    settings, _, records, _ = run
    persons = pd.read_parquet(settings.ground_truth_root / "persons.parquet")
    clinical = records[records["feed"] != "institution_survey"]
    assert clinical["person_key"].notna().all()
    assert set(clinical["person_key"].astype(int)) <= set(persons["person_key"])
    reg = records[(records["feed"] == "resident_registry") & records["file_fault"].isna()]
    per_person = reg.groupby("person_key")["institution_id"].nunique()
    assert (per_person > 1).sum() > 500  # the same resident at several institutions
    varied = reg[reg["variations"] != ""]
    kinds = {k for v in varied["variations"] for k in v.split(",")}
    assert {"homophone_name", "transposed_id", "missing_id", "legacy_id15",
            "fullwidth_digits", "embedded_spaces", "changed_phone"} <= kinds
    # Every line of every written file is in the ground truth exactly once.
    assert not records.duplicated(["extract_date", "institution_id", "file", "line"]).any()


def test_population_and_reference(run) -> None:
    settings, summary, _, _ = run
    pop = pd.read_parquet(settings.ground_truth_root / "population.parquet")
    assert pop["population"].sum() == summary["residents"]
    assert (pop["hypertension"] <= pop["population"]).all()
    ref = settings.reference_root
    areas = pd.read_csv(ref / "areas.csv", dtype=str)
    assert {"440402", "440403", "440404"} <= set(areas["code"])
    assert areas.loc[areas["level"] == "community", "code"].str.len().eq(12).all()
    assert "横琴" in set(areas["zone"].dropna())
    inst = pd.read_csv(ref / "institutions.csv", dtype=str)
    assert {"municipal", "district", "township", "village_xlsx", "village_csv"} <= set(
        inst["profile"])
    assert (inst["compression"] == "gzip").any()
    stats = pd.read_csv(ref / "population.csv")
    assert stats["population"].sum() == summary["residents"]


def test_township_files_are_gb18030_and_xlsx_opens(run) -> None:
    settings, _, records, faults = run
    faulted = set(faults["file"].dropna() + "@" + faults["institution_id"])
    n_gb = n_xlsx = 0
    for path in settings.landing_root.rglob("ZHT*/*.csv"):
        if f"{path.name}@{path.parent.name}" in faulted:
            continue
        header = path.read_bytes().split(b"\n")[0].decode("gb18030")
        assert re.search(r"[\u4e00-\u9fff]", header)
        with pytest.raises(UnicodeDecodeError):
            path.read_bytes().split(b"\n")[0].decode("utf-8")
        n_gb += 1
    for path in settings.landing_root.rglob("*.xlsx"):
        if f"{path.name}@{path.parent.name}" in faulted:
            continue
        wb = openpyxl.load_workbook(path, read_only=True)
        header = next(wb.worksheets[0].iter_rows(max_row=1, values_only=True))
        assert "姓名" in header or "调查期" in header
        n_xlsx += 1
    assert n_gb and n_xlsx


def test_late_institution_arrives_only_with_deliver_late(run, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    generate(settings)
    faults = pd.read_parquet(settings.ground_truth_root / "faults")
    late = faults[faults["kind"] == "late_institution"].iloc[0]
    in_landing = settings.landing_root / late.extract_date / late.institution_id
    held = settings.late_deliveries_root / late.extract_date / late.institution_id
    assert not in_landing.exists() and (held / "_manifest.json").exists()
    moved = deliver_late(settings, late.extract_date)
    assert in_landing in moved and (in_landing / "_manifest.json").exists()
    assert not held.exists()
    assert deliver_late(settings, late.extract_date) == []
    missing = faults[faults["kind"] == "missing_institution"].iloc[0]
    assert not (settings.landing_root / missing.extract_date / missing.institution_id).exists()


def test_configuration_errors_name_the_key(tmp_path: Path) -> None:
    bad = _settings(tmp_path, HEALTHLAKE_GENERATOR__FAULTS__ROW_RATES__BROKEN_JSN="0.1")
    with pytest.raises(ConfigError, match="broken_jsn"):
        load_params(bad)
    bad = _settings(tmp_path, HEALTHLAKE_GENERATOR__FAULTS__FILE_RATES__ZERO_BYTE_FILE="1.5")
    with pytest.raises(ConfigError, match="file_rates"):
        load_params(bad)
