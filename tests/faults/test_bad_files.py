"""Bad files in a real generated day: each kind injected into one file of the small city's first
day, the day ingested once. Each file must be quarantined with the rule that names its problem
or reported as a duplicate, never loaded wrongly; every other file must load exactly as in the
undisturbed run; and every row read is accounted for (rows in = loaded + quarantined)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from jobs.ingest import job as ingest
from jobs.lake import read_table, table_exists
from tests.conftest import SMALL_DAYS, lake_like

D1 = SMALL_DAYS[0]

# kind -> (file under landing/<D1>/, what ingest must say: a rule of quarantine or "duplicate")
FAULTS = {
    "truncated": ("ZHD0001/resident_registry.csv", "F_CHECKSUM"),
    "zero_byte": ("ZHD0002/lab_results.csv", "F_EMPTY"),
    "half_gzip": ("ZHM0001/resident_registry.jsonl.gz", "F_UNREADABLE"),
    "wrong_encoding": ("ZHT0001/resident_registry.csv", "F_ENCODING"),
    "wrong_delimiter": ("ZHD0002/resident_registry.csv", "F_COLUMNS"),
    "duplicate_under_another_name": ("ZHT0003/resident_registry_resend.csv", "duplicate"),
    "oversized": (None, "F_OVERSIZED"),  # a village file, found below
    "renamed_column": ("ZHT0002/resident_registry.csv", "F_COLUMNS"),
}


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "_manifest.json").read_text(encoding="utf-8"))


def _relist(folder: Path, name: str, data: bytes, like: str | None = None) -> None:
    """Say in the manifest what the institution's exporter saw: these bytes (its checksum taken
    after the fault, so the checksum alone cannot catch it). ``like``: list a new file as a copy
    of that entry."""
    manifest = _manifest(folder)
    entries = {e["file"]: e for e in manifest["files"]}
    entry = entries.get(name) or {**entries[like], "file": name}
    entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    if name not in entries:
        manifest["files"].append(entry)
    (folder / "_manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def inject(landing: Path) -> dict[str, str]:
    """Damage one file per kind; returns kind -> source_file (as ops.ingest_log names it)."""
    day = landing / D1.isoformat()
    files = {}
    for kind, (rel, _) in FAULTS.items():
        if kind == "oversized":
            rel = next(str(p.relative_to(day)) for p in sorted(day.glob("ZHV*/encounters.*")))
        path = day / rel
        folder = path.parent
        if kind == "truncated":  # cut mid-line in transit; the manifest has the whole file's sum
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * 0.6)])
        elif kind == "zero_byte":
            path.write_bytes(b"")
            _relist(folder, path.name, b"")
        elif kind == "half_gzip":  # the exporter died half-way through the gzip stream
            data = path.read_bytes()[: path.stat().st_size // 2]
            path.write_bytes(data)
            _relist(folder, path.name, data)
        elif kind == "wrong_encoding":  # a GB18030 township file sent as UTF-8
            data = path.read_bytes().decode("gb18030").encode("utf-8")
            path.write_bytes(data)
            _relist(folder, path.name, data)
        elif kind == "wrong_delimiter":  # semicolons where the contract says commas
            data = path.read_bytes().replace(b",", b";")
            path.write_bytes(data)
            _relist(folder, path.name, data)
        elif kind == "duplicate_under_another_name":  # yesterday's resend under a new name
            data = (folder / "resident_registry.csv").read_bytes()
            path.write_bytes(data)
            _relist(folder, path.name, data, like="resident_registry.csv")
        elif kind == "oversized":  # a whole table dumped: over the village profile's 64 MiB
            with path.open("ab") as fh:
                fh.write(b"\0" * (65 * 2**20))
            _relist(folder, path.name, path.read_bytes())
        elif kind == "renamed_column":  # the first header renamed by a new HIS version
            head, rest = path.read_bytes().decode("gb18030").split("\n", 1)
            cols = head.split(",")
            cols[0] = cols[0] + "_new"
            data = (",".join(cols) + "\n" + rest).encode("gb18030")
            path.write_bytes(data)
            _relist(folder, path.name, data)
        files[kind] = f"{D1.isoformat()}/{rel}"
    return files


@pytest.fixture(scope="module")
def damaged_day(spark, small_city, small_city_cli_day1, tmp_path_factory):
    lake = lake_like(small_city, tmp_path_factory.mktemp("bad_files"))
    files = inject(lake.landing_root)
    summary = ingest.run(spark, lake, D1)
    log = read_table(spark, lake, "ops.ingest_log").toPandas().set_index("source_file")
    undisturbed = read_table(spark, small_city_cli_day1, "ops.ingest_log").toPandas() \
        .set_index("source_file")
    return {"lake": lake, "files": files, "summary": summary, "log": log,
            "undisturbed": undisturbed}


def _bronze_rows_by_file(spark, settings) -> dict[str, int]:
    from functools import reduce

    from jobs.contracts import load_contracts

    frames = [read_table(spark, settings, f"bronze.{feed}").select("source_file")
              for feed in load_contracts().feeds
              if table_exists(spark, settings, f"bronze.{feed}")]  # feeds with rows only
    rows = reduce(lambda a, b: a.unionByName(b), frames).groupBy("source_file").count().collect()
    return {r["source_file"]: r["count"] for r in rows}


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_each_bad_file_is_caught_by_its_rule_and_never_loaded(spark, damaged_day, tally, kind):
    with tally(f"bad_file:{kind}"):
        source_file = damaged_day["files"][kind]
        expected = FAULTS[kind][1]
        row = damaged_day["log"].loc[source_file]
        if expected == "duplicate":
            assert row["status"] == "duplicate"
            assert row["duplicate_of"] == source_file.replace("_resend", "")
        else:
            assert (row["status"], row["rule_id"]) == ("quarantined", expected), row.to_dict()
            q = read_table(spark, damaged_day["lake"], f"quarantine.{row['feed']}").where(
                f"source_file = '{source_file}'").collect()
            assert [(r["rule_id"], r["scope"]) for r in q] == [(expected, "file")]
            assert q[0]["message"]
        assert row["rows_loaded"] == 0
        assert _bronze_rows_by_file(spark, damaged_day["lake"]).get(source_file, 0) == 0


def test_every_other_file_loads_as_in_the_undisturbed_run_and_rows_reconcile(spark, damaged_day):
    log, undisturbed = damaged_day["log"], damaged_day["undisturbed"]
    damaged = set(damaged_day["files"].values())
    counts = ["status", "rows_in", "rows_loaded", "rows_quarantined", "rule_id"]
    others = undisturbed.index.difference(sorted(damaged))
    pd.testing.assert_frame_equal(log.loc[others, counts], undisturbed.loc[others, counts],
                                  check_dtype=False)
    read = log[log["status"].isin(["loaded", "quarantined"])]
    assert (read["rows_in"] == read["rows_loaded"] + read["rows_quarantined"]).all()
    bronze = _bronze_rows_by_file(spark, damaged_day["lake"])
    assert sum(bronze.values()) == read["rows_loaded"].sum()
    assert all(bronze.get(f, 0) == n for f, n in read["rows_loaded"].items())
    assert damaged_day["summary"]["reconciled"]

