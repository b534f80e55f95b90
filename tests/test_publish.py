"""Publishing on the session city's gold layer (built once for the module): exports re-read with
pandas and openpyxl equal gold except suppressed cells, the HTML report rendered by headless
Chromium, SQL refusing the restricted zone, the analyst notebooks executed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from jobs.gold import metrics as M
from jobs.lake import read_table
from jobs.publish import export, report, sql
from jobs.publish.settings import load_publish
from jobs.publish.suppression import SUPPRESSED, recoverable

YEAR = 2024
VALUES = ["numerator", "denominator", "value"]


def _gold_metrics(spark, settings) -> pd.DataFrame:
    return (read_table(spark, settings, "gold.metric_value")
            .where(f"period = '{YEAR}'").toPandas())


def _keyed(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    out = df.copy()
    for c in keys:
        out[c] = out[c].map(lambda v: "" if pd.isna(v) else str(v))
    return out.set_index(keys).sort_index()


def assert_matches_gold(exported: pd.DataFrame, gold: pd.DataFrame) -> pd.Series:
    """Same rows, published cells equal to gold, suppressed cells blank; returns the mask of
    suppressed rows."""
    grains = [c for c in M.GRAIN_COLUMNS if c in exported.columns]
    dropped = [c for c in M.GRAIN_COLUMNS if c not in exported.columns]
    assert gold[dropped].isna().all().all(), "a grain column with values was left out"
    keys = ["metric_id", "period_type", "period", *grains]
    got, want = _keyed(exported, keys), _keyed(gold, keys)
    assert got.index.equals(want.index)
    hidden = got[SUPPRESSED].notna()
    assert set(got.loc[hidden, SUPPRESSED]) <= {SUPPRESSED}  # one marker, never "primary"
    assert got.loc[hidden, VALUES].isna().all().all()
    for c in VALUES:
        pd.testing.assert_series_equal(got.loc[~hidden, c].astype(float),
                                       want.loc[~hidden, c].astype(float), check_names=False)
    assert recoverable(exported, grains, {"town_code": ["district_code"]}) == []
    return hidden


def test_xlsx_export_reread_with_pandas_and_openpyxl_equals_gold(spark, gold_lake, tmp_path):
    from openpyxl import load_workbook

    settings = gold_lake
    summary = export.run(spark, settings, ["gold.metric_value"], str(YEAR), "xlsx", tmp_path)
    (path,) = map(Path, summary["files"])
    gold = _gold_metrics(spark, settings)
    spec = load_publish(settings)
    column_of = {spec.label(c): c for c in spec.columns}

    wb = load_workbook(path, read_only=True)
    metric_ids = sorted(gold["metric_id"].unique())
    assert wb.sheetnames == [export.ABOUT_SHEET, *[m[:31] for m in metric_ids]]
    about = {}
    for row in wb[export.ABOUT_SHEET].iter_rows(min_row=2, values_only=True):
        if not row or not row[0]:
            break  # the header block ends at the first blank row
        about[row[0]] = row[1]
    assert "k = 10" in about["suppression"] and about["period"].startswith(str(YEAR))
    assert "gold.metric_value (Delta version" in about["source"]
    assert about["generated_at"][:4].isdigit()
    labels = next(wb["ehr_coverage"].iter_rows(min_row=2, max_row=2, values_only=True))
    assert "区县代码 District code" in labels and "抑制原因 Suppressed" in labels

    hidden_total = shown_total = 0
    for metric_id in metric_ids:
        sheet = pd.read_excel(path, sheet_name=metric_id[:31], header=1, dtype=str)
        sheet = sheet.rename(columns=column_of)
        for c in VALUES:
            sheet[c] = pd.to_numeric(sheet[c])
        hidden = assert_matches_gold(sheet, gold[gold["metric_id"] == metric_id])
        hidden_total += int(hidden.sum())
        shown_total += int((~hidden).sum())
    assert hidden_total > 0 and shown_total > 0  # the city has small cells and large ones
    assert summary["suppressed_cells"] and sum(summary["suppressed_cells"].values()) == \
        hidden_total


def test_csv_export_has_its_header_and_a_configurable_k(spark, gold_lake, tmp_path):
    settings = gold_lake
    summary = export.run(spark, settings, ["ehr_coverage"], str(YEAR), "csv", tmp_path, k=20)
    (path,) = map(Path, summary["files"])
    head = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.startswith("#")]
    text = "\n".join(head)
    for key in ("what", "period", "generated_at", "source", "suppression", "definition",
                "numerator", "denominator"):
        assert f"# {key}:" in text
    assert "电子健康档案建档率" in text and "k = 20" in text
    grains = {c: str for c in M.GRAIN_COLUMNS + ["period", SUPPRESSED]}
    rows = pd.read_csv(path, comment="#", dtype=grains)
    gold = _gold_metrics(spark, settings)
    assert_matches_gold(rows, gold[gold["metric_id"] == "ehr_coverage"])
    at_ten = export.run(spark, settings, ["ehr_coverage"], str(YEAR), "csv", tmp_path / "k10")
    assert summary["suppressed_cells"]["ehr_coverage"] >= \
        at_ten["suppressed_cells"]["ehr_coverage"]  # a larger k (never a smaller one) hides more


def test_parquet_export_carries_the_header_in_its_metadata(spark, gold_lake, tmp_path):
    import json

    settings = gold_lake
    summary = export.run(spark, settings, ["gold.index_score"], str(YEAR), "parquet", tmp_path)
    (path,) = map(Path, summary["files"])
    meta = json.loads(pq.read_schema(path).metadata[export.METADATA_KEY])
    # scores are blanked where they would give a suppressed metric cell back (the rule says so)
    assert "k = 10" in meta["suppression"] and meta["period"].startswith(str(YEAR))
    got = pd.read_parquet(path)
    gold = read_table(spark, settings, "gold.index_score").where(f"year = {YEAR}").toPandas()
    keys = ["area_level", "area_code", "index_name"]
    assert list(got.columns) == [*gold.columns, SUPPRESSED]
    shown = got[SUPPRESSED].isna()
    assert shown.any() and got.loc[~shown, "score"].isna().all()
    pd.testing.assert_frame_equal(_keyed(got[shown].drop(columns=SUPPRESSED), keys),
                                  _keyed(gold, keys).loc[_keyed(got[shown], keys).index],
                                  check_dtype=False)
    with pytest.raises(ValueError, match="yearly"):
        export.run(spark, settings, ["gold.index_score"], "2024-04", "csv", tmp_path)


EXPECTED_CHARTS = ["index-by-district", "index-trend", "metric-trend", "prevalence-by-district",
                   "prevalence-by-age-sex", "control-by-district", "control-by-age-sex",
                   "visits-by-tier-channel", "referrals-by-tier", "online-share-by-tier",
                   "dq-by-district"]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("chromium is not installed: `make test` installs it "
                    "(apt-get install -y chromium)")
    return found


def test_report_renders_offline_in_headless_chromium(spark, gold_lake, tmp_path):
    settings = gold_lake
    page = tmp_path / "report.html"
    summary = report.run(spark, settings, YEAR, page)
    assert summary["charts"] == len(EXPECTED_CHARTS)
    html = page.read_text(encoding="utf-8")
    # Self-contained: nothing fetched (no script, stylesheet link, image or font by URL).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<script" not in html and "<link" not in html
    assert not re.search(r"url\(\s*['\"]?(?!#)", html)  # only the SVGs' own clip paths

    browser = _chromium()
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--window-size=1400,5000"]
    shot = tmp_path / "report.png"
    subprocess.run([*common, f"--screenshot={shot}", page.as_uri()], check=True,
                   capture_output=True, timeout=180)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], check=True,
                         capture_output=True, timeout=180, text=True).stdout
    figures = dict(re.findall(r'<figure class="chart" id="chart-([\w-]+)"[^>]*>(.*?)</figure>',
                              dom, re.S))
    assert list(figures) == EXPECTED_CHARTS
    for chart_id, body in figures.items():
        assert "<svg" in body and "<path" in body, chart_id
        assert "<figcaption>" in body, chart_id
    for chart_id in EXPECTED_CHARTS:  # numbers and definitions beside every chart
        panel = dom.split(f'id="panel-{chart_id}"', 1)[1].split('class="panel"', 1)[0]
        assert '<table class="numbers">' in panel and 'class="definition"' in panel, chart_id
    assert "信息化发展指数" in dom and "Data-quality scorecard" in dom
    (tmp_path.parent / "last-report.png").write_bytes(shot.read_bytes())  # to look at


RESTRICTED_QUERIES = [
    "SELECT * FROM bronze.encounters",
    "select count(*) from restricted.identity",
    "SELECT e.* FROM gold.index_score s JOIN `silver_std`.`encounters` e ON true",
    "WITH q AS (SELECT * FROM quarantine.encounters) SELECT * FROM q",
]


@pytest.fixture
def analyst_session(spark):
    """The session, given back as the other tests expect it (sql switches off SQL on files)."""
    yield spark
    spark.conf.set("spark.sql.runSQLOnFiles", "true")


def test_sql_queries_curated_tables_by_name_and_refuses_the_restricted_zone(analyst_session,
                                                                           gold_lake):
    spark, settings = analyst_session, gold_lake
    rows, more = sql.query(spark, settings, "SELECT area_name, score FROM gold.index_score "
                                            f"WHERE year = {YEAR} AND index_name = 'total' "
                                            "AND area_level = 'district' ORDER BY area_name")
    assert len(rows) == 3 and not more
    n = sql.query(spark, settings, "SELECT count(*) AS n FROM silver.person")[0]["n"][0]
    assert n == read_table(spark, settings, "silver.person").count()
    listed = {t["table"]: t for t in sql.tables(spark, settings)}
    assert listed["silver.person"]["rows"] == n and "person_id" in listed["silver.person"][
        "columns"]
    assert "ops.ingest_log" in listed and "ops.audit_log" not in listed  # listed ops tables
    assert not [t for t in listed if t.split(".")[0] in ("bronze", "quarantine", "silver_std",
                                                         "restricted")]

    # The restricted tables exist in this lake: refused, not merely missing.
    assert settings.table_path("bronze.encounters").exists()
    for query in RESTRICTED_QUERIES:
        with pytest.raises(sql.RefusedQuery, match="restricted zone"):
            sql.query(spark, settings, query)
    path = settings.table_path("bronze.encounters")
    for query in (f"SELECT * FROM delta.`{path}`", f"SELECT * FROM parquet.`{path}`"):
        with pytest.raises(sql.RefusedQuery, match="by path"):
            sql.query(spark, settings, query)
    for query in ("DROP TABLE gold.index_score", "INSERT INTO gold.index_score SELECT * FROM "
                  "gold.index_score", "SET spark.sql.runSQLOnFiles=true", "SELECT 1; SELECT 2"):
        with pytest.raises(sql.RefusedQuery):
            sql.query(spark, settings, query)
    # Behind the text checks: Spark itself reads no file by path, and a planned query whose
    # files lie outside the analyst zones is refused.
    with pytest.raises(Exception, match="TABLE_OR_VIEW_NOT_FOUND|not found"):
        spark.sql(f"SELECT * FROM delta.`{path}`").collect()
    catalogue = sql.analyst_catalogue(settings, load_publish(settings))
    with pytest.raises(sql.RefusedQuery, match="outside the analyst zones"):
        sql.check_files(spark.read.format("delta").load(str(path)).inputFiles(), catalogue)


def test_the_sql_command_refuses_with_exit_code_3(analyst_session, gold_lake, lake_root,
                                                  monkeypatch, capsys):
    from jobs.cli import main
    from tests.conftest import settings_env

    for key, value in settings_env(lake_root).items():  # the CLI reads this lake
        monkeypatch.setenv(key, value)
    for query, reason in (("SELECT * FROM restricted.identity",
                           "restricted.identity is in the restricted zone"),
                          ("WITH x AS (SELECT 1) INSERT INTO gold.index_score SELECT * FROM x",
                           "not a query: InsertIntoStatement")):
        with pytest.raises(SystemExit) as exited:
            main(["sql", query])
        assert exited.value.code == 3
        assert reason in capsys.readouterr().err
    assert sql.format_result(pd.DataFrame({"a": [1, None]}), "json") == \
        '[\n  {\n    "a": 1.0\n  },\n  {\n    "a": null\n  }\n]'


NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_notebooks_execute_against_the_lake(gold_lake, lake_root, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    from tests.conftest import settings_env

    for key, value in settings_env(lake_root).items():  # the kernel reads this lake
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HEALTHLAKE_NOTEBOOK_YEAR", str(YEAR))
    names = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["data_quality", "informatization_index", "population_health"]
    for name in names:
        notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        assert not any(c.get("outputs") for c in notebook.cells if c.cell_type == "code"), \
            f"{name}: commit notebooks without outputs"
        NotebookClient(notebook, timeout=900, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOKS.parent)}}).execute()
        shown = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
                 if o.output_type in ("execute_result", "display_data")]
        assert shown, name
        assert any("image/svg+xml" in o.get("data", {}) for o in shown), name


def test_exports_and_restricted_reads_are_audited_in_an_append_only_table(
        spark, gold_lake, lake_root, monkeypatch, tmp_path):
    """`healthlake export` and a command that reads the restricted zone each leave a row in
    ops.audit_log (who, when, what, how many rows), which Delta refuses to change."""
    import getpass

    from delta.tables import DeltaTable

    from jobs import audit, cli
    from tests.conftest import settings_env

    for key, value in settings_env(lake_root).items():
        monkeypatch.setenv(key, value)
    audit._pending.clear()  # reads by earlier tests of this process: not this command's
    argv = ["export", "gold.index_score", "--period", str(YEAR), "--format", "csv", "--out",
            str(tmp_path)]
    assert cli.main(argv) == 0
    exported = pd.read_csv(tmp_path / "gold.index_score.csv", comment="#")
    read_table(spark, gold_lake, "restricted.identity")  # as a command reading the zone would
    audit.flush(spark, gold_lake, "healthlake resolve --date 2024-04-16")
    assert not audit.pending()

    log = read_table(spark, gold_lake, "ops.audit_log").toPandas().sort_values("at")
    # a Delta table's rows come in no order: this command's row is found by what it exported
    exports = log[(log["action"] == "export")
                  & (log["target"] == str(tmp_path / "gold.index_score.csv"))]
    assert len(exports) == 1, log[log["action"] == "export"][["target", "command"]]
    export_row = exports.iloc[0]
    assert export_row["rows"] == len(exported)
    assert export_row["command"] == "healthlake " + " ".join(argv)
    assert export_row["os_user"] == getpass.getuser() and pd.notna(export_row["at"])
    read_row = log[(log["action"] == "read_restricted")
                   & (log["target"] == "restricted.identity")].iloc[-1]
    assert read_row["rows"] == read_table(spark, gold_lake, "restricted.identity").count()
    assert read_row["table_version"] >= 0

    table = DeltaTable.forPath(spark, str(gold_lake.table_path("ops.audit_log")))
    with pytest.raises(Exception, match="append"):
        table.delete("true")
    assert len(read_table(spark, gold_lake, "ops.audit_log").toPandas()) == len(log)
