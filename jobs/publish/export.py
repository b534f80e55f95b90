"""`healthlake export`: gold tables and metrics as CSV, XLSX or Parquet for publication, with
small cells suppressed and a header saying what, when, which definitions and which rule.

A NAME is a metric of the catalogue (conf/base/metrics.yaml: its rows of the gold table it is
written to) or a gold table of ``publish.tables`` (all of it; ``gold.metric_value`` one table per
metric). ``--period`` is a year ``2024``, quarter ``2024Q2``, month ``2024-04`` or day
``2024-04-15``, matched against each table as ``publish.tables`` says; it may be given several
times (``--period 2024 --period 2024-04``): one export of every period, each sheet holding the
rows of all of them, checked as one release.

* CSV: the header as leading ``# key: value`` lines (``pd.read_csv(path, comment="#")``), then
  the rows with the gold table's column names; one file per table.
* Parquet: the header as JSON in the file's metadata (key ``healthlake``); one file per table.
* XLSX: one workbook; a sheet "说明 About" with the header and every definition, then one sheet
  per table with readable column names (中文 English) and the title above them.

Suppressed cells are blank and column ``suppressed`` marks them all alike. Everything one export
publishes is checked as one system (:mod:`jobs.publish.release`): the metric cells of every
sheet and period together, and the index tables blanked where they derive from a suppressed
cell. Reading and the Delta version are at the edges (:func:`run`); the rest is pandas.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import pandas as pd

from jobs import audit
from jobs.config import ConfigError, Settings
from jobs.gold.catalogue import Metric, MetricCatalogue, load_catalogue
from jobs.gold.metrics import GRAIN_COLUMNS, Period
from jobs.publish import release
from jobs.publish.settings import PublishedTable, PublishSettings, exports_root, load_publish
from jobs.publish.suppression import SUPPRESSED, blank, suppress, verify

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

FORMATS = ("csv", "xlsx", "parquet")
METADATA_KEY = b"healthlake"
ABOUT_SHEET = "说明 About"
PERIOD_COLUMNS = ["metric_id", "period_type", "period"]
_SHEET_FORBIDDEN = re.compile(r"[\[\]:*?/\\]")


def parse_period(text: str) -> Period:
    """'2024' | '2024Q2' | '2024-04' | '2024-04-15' -> a Period (a day is its own period)."""
    text = text.strip()
    if m := re.fullmatch(r"(\d{4})", text):
        return Period.year(int(m[1]))
    if m := re.fullmatch(r"(\d{4})Q([1-4])", text):
        return Period.quarter(int(m[1]), int(m[2]))
    if m := re.fullmatch(r"(\d{4})-(\d{2})", text):
        if 1 <= int(m[2]) <= 12:
            return Period.month(int(m[1]), int(m[2]))
    try:
        day = dt.date.fromisoformat(text)
        return Period("day", day.isoformat(), day, day)
    except ValueError:
        pass
    raise ConfigError(f"not a period: {text!r} (a year 2024, quarter 2024Q2, month 2024-04 or "
                      "day 2024-04-15)")


@dataclass(frozen=True)
class Selection:
    """What a NAME asks for: a gold table, and the metric of it when the name is a metric."""

    name: str
    table: str
    metric_id: str | None = None


def resolve_name(name: str, catalogue: MetricCatalogue, spec: PublishSettings) -> Selection:
    """A gold table of ``publish.tables`` or a metric of the catalogue written to one."""
    if name in spec.tables:
        return Selection(name, name)
    metric = catalogue.metrics.get(name)
    if metric is not None and metric.output_table in spec.tables:
        return Selection(name, metric.output_table, name)
    raise ConfigError(f"{name!r} is neither a published gold table ({', '.join(spec.tables)}) "
                      "nor a metric of the catalogue (healthlake metrics-doc lists them)")


def period_filter(table: PublishedTable, period: Period) -> str:
    """The SQL condition selecting a table's rows of ``period`` (a clear error when the table
    has no such period)."""
    column = f"`{table.period_column}`"
    if table.period_kind == "label":
        if period.type == "day":
            raise ConfigError("this table has yearly, quarterly and monthly periods, no days")
        return f"{column} = '{period.label}'"
    if table.period_kind == "year":
        if period.type != "year":
            raise ConfigError(f"this table is yearly: give a year, not {period.label!r}")
        return f"{column} = {period.start.year}"
    return f"{column} BETWEEN DATE'{period.start}' AND DATE'{period.end}'"


@dataclass
class Sheet:
    """One published table: a metric's rows or a whole gold table."""

    name: str
    source_table: str
    rows: pd.DataFrame
    metric: Metric | None = None
    suppressed: bool = False

    @property
    def title(self) -> str:
        if self.metric is not None:
            return f"{self.metric.name_zh} {self.metric.name_en}"
        return self.name


@dataclass
class Export:
    """The sheets of one export (one release: every period of it) and the header every file
    carries."""

    periods: list[Period]
    sheets: list[Sheet]
    header: dict[str, str] = field(default_factory=dict)
    audit: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "+".join(p.label for p in self.periods)


# -- pure transforms ----------------------------------------------------------------------------


def order_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Totals first, then cells, by grain (stable across runs). A metric's sheet leaves out the
    grain columns it has no value in (:func:`build_sheets`)."""
    keys = [c for c in [*PERIOD_COLUMNS, *GRAIN_COLUMNS, "year", "area_level", "area_code",
                        "index_name", "indicator_id", "extract_date", "institution_id", "feed"]
            if c in rows.columns]
    keys = list(dict.fromkeys(keys))
    return rows.sort_values(keys, na_position="first", kind="stable").reset_index(drop=True)


def suppress_metric_rows(rows: pd.DataFrame, metric: Metric | None, all_rows: pd.DataFrame,
                         spec: PublishSettings) -> pd.DataFrame:
    """Suppress one metric's rows of ``gold.metric_value``, cube by cube (period). An
    age-standardised rate has no counts of its own: it is judged by its crude rate's counts
    (``derived_from``) for the same area and sex."""
    rule = spec.suppression
    parts = []
    for _, cube in rows.groupby(["period_type", "period"], sort=False, dropna=False):
        counts = cube
        if metric is not None and metric.standardisation and metric.derived_from:
            crude = all_rows[(all_rows["metric_id"] == metric.derived_from[0])
                             & all_rows["age_band"].isna()]
            keys = ["period_type", "period", *[g for g in GRAIN_COLUMNS if g != "age_band"]]
            counts = cube[keys].merge(crude[keys + rule.count_columns], on=keys, how="left")
            counts.index = cube.index
        done = suppress(cube, GRAIN_COLUMNS, rule, counts)
        verify(done, GRAIN_COLUMNS, rule, counts)  # as published, whatever suppress() did
        parts.append(done)
    if not parts:
        return rows.assign(**{SUPPRESSED: pd.Series(dtype=object)})
    return pd.concat(parts)


def suppress_release(rows: pd.DataFrame, catalogue: MetricCatalogue, spec: PublishSettings
                     ) -> tuple[pd.DataFrame, dict]:
    """Every metric row a release publishes (``gold.metric_value``: every metric and period of
    it, true values, unique index), suppressed cube by cube and then audited as one system
    (:func:`jobs.publish.release.protect`) until no suppressed count can be worked out. Returns
    the rows as published (same index) and the audit's figures."""
    rule = spec.suppression
    if rows.empty:
        return rows.assign(**{SUPPRESSED: pd.Series(dtype=object)}), {}
    parts = [suppress_metric_rows(mine, catalogue.metrics.get(mid), rows, spec)
             for mid, mine in rows.groupby("metric_id", sort=False)]
    hidden = pd.concat(parts)[SUPPRESSED].notna().reindex(rows.index, fill_value=False)
    # counts of persons only: an age-standardised rate's numerator and denominator are weights
    # (it is judged by its crude counts, above)
    standardised = {m for m, metric in catalogue.metrics.items() if metric.standardisation}
    counted = ~rows["metric_id"].isin(standardised)
    protected, figures = release.protect(rows[counted], hidden[counted], GRAIN_COLUMNS, rule)
    hidden[protected.index] = protected
    return blank(rows, hidden, rule), figures


def build_sheets(selection: Selection, rows: pd.DataFrame, catalogue: MetricCatalogue,
                 spec: PublishSettings) -> list[Sheet]:
    """The sheets of one NAME from its table's rows of the release (a suppressed table's rows
    already suppressed as one release: :func:`suppress_release`)."""
    table = spec.tables[selection.table]
    whole = table.metric_column is None or (selection.metric_id is None and not table.suppress)
    if whole:
        sheet = Sheet(selection.name, selection.table, order_rows(rows))
        if selection.metric_id is not None:
            sheet.metric = catalogue.metric(selection.metric_id)
        return [sheet]
    wanted = ([selection.metric_id] if selection.metric_id is not None
              else sorted(rows[table.metric_column].dropna().unique()))
    sheets = []
    for metric_id in wanted:
        mine = rows[rows[table.metric_column] == metric_id]
        metric = catalogue.metrics.get(metric_id)
        unused = [c for c in GRAIN_COLUMNS if c in mine.columns and mine[c].isna().all()]
        sheets.append(Sheet(metric_id, selection.table, order_rows(mine).drop(columns=unused),
                            metric, suppressed=table.suppress))
    return sheets


def header(export: Export, spec: PublishSettings, generated_at: dt.datetime,
           versions: dict[str, int | None]) -> dict[str, str]:
    """What, when, from which table versions, under which rule."""
    sources = ", ".join(f"{t} (Delta version {v})" if v is not None else t
                        for t, v in sorted(versions.items()))
    derived = any(s.source_table in release.INDEX_TABLES for s in export.sheets)
    rule = (spec.suppression.describe() if any(s.suppressed for s in export.sheets) or derived
            else "none: these tables hold no counts of persons")
    return {
        "what": "; ".join(s.title for s in export.sheets) or "nothing",
        "period": "; ".join(f"{p.label} ({p.start} to {p.end})" for p in export.periods),
        "generated_at": generated_at.isoformat(timespec="seconds"),
        "source": sources,
        "definitions": "the metric catalogue, conf/base/metrics.yaml (docs/metric-catalogue.md)",
        "suppression": rule,
        "produced_by": "healthlake export",
    }


def definitions(sheet: Sheet) -> dict[str, str]:
    """The catalogue entry of a sheet's metric, in words."""
    m = sheet.metric
    if m is None:
        return {}
    out = {"metric": sheet.name, "名称": m.name_zh, "name": m.name_en,
           "definition": m.definition, "numerator": m.numerator,
           "denominator": m.denominator or "none", "unit": m.unit,
           "grains": ", ".join(m.grains)}
    for key in ("on_target", "standardisation", "notes"):
        if getattr(m, key):
            out[key] = str(getattr(m, key))
    return {k: " ".join(v.split()) for k, v in out.items()}


def sheet_names(sheets: list[Sheet]) -> list[str]:
    """Excel sheet names: at most 31 characters, none of []:*?/\\, unique."""
    names: list[str] = []
    for sheet in sheets:
        base = _SHEET_FORBIDDEN.sub("_", sheet.name)[:31]
        name, i = base, 2
        while name in names or name == ABOUT_SHEET:
            suffix = f"~{i}"
            name, i = base[:31 - len(suffix)] + suffix, i + 1
        names.append(name)
    return names


# -- writers ------------------------------------------------------------------------------------


def write_csv(sheet: Sheet, head: dict[str, str], path: Path) -> Path:
    lines = [f"# {k}: {v}" for k, v in {**head, **definitions(sheet)}.items()]
    path.write_text("\n".join(lines) + "\n" + sheet.rows.to_csv(index=False), encoding="utf-8")
    return path


def write_parquet(sheet: Sheet, head: dict[str, str], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(sheet.rows, preserve_index=False)
    meta = {**(table.schema.metadata or {}), METADATA_KEY: json.dumps(
        {**head, **definitions(sheet)}, ensure_ascii=False).encode("utf-8")}
    pq.write_table(table.replace_schema_metadata(meta), path)
    return path


def write_xlsx(export: Export, spec: PublishSettings, path: Path) -> Path:
    """One workbook: the About sheet, then a sheet per table (title row, then readable column
    names, then the rows)."""
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font

    wb = Workbook()
    about = wb.active
    about.title = ABOUT_SHEET
    bold = Font(bold=True)
    about.append(["healthlake export", ""])
    about["A1"].font = Font(bold=True, size=14)
    for key, value in export.header.items():
        about.append([key, value])
    names = sheet_names(export.sheets)
    for name, sheet in zip(names, export.sheets, strict=True):
        about.append([])
        about.append([f"sheet {name}", sheet.title])
        about.cell(about.max_row, 1).font = bold
        for key, value in definitions(sheet).items():
            about.append([key, value])
    about.append([])
    about.append(["columns 列名", ""])
    about.cell(about.max_row, 1).font = bold
    used = dict.fromkeys(c for s in export.sheets for c in s.rows.columns)
    for column in used:
        about.append([column, spec.label(column)])
    about.column_dimensions["A"].width = 28
    about.column_dimensions["B"].width = 120
    for row in about.iter_rows():
        row[1].alignment = Alignment(wrap_text=True, vertical="top")

    for name, sheet in zip(names, export.sheets, strict=True):
        ws = wb.create_sheet(name)
        ws.append([f"{sheet.title} · {export.label}"])
        ws["A1"].font = bold
        ws.append([spec.label(c) for c in sheet.rows.columns])
        for cell in ws[2]:
            cell.font = bold
        for record in sheet.rows.itertuples(index=False, name=None):
            ws.append([_excel_value(v) for v in record])
        ws.freeze_panes = "A3"
        for i, column in enumerate(sheet.rows.columns, start=1):
            width = max(len(spec.label(column)) + 2, 10)
            ws.column_dimensions[ws.cell(2, i).column_letter].width = min(width, 40)
    wb.save(path)
    return path


def _excel_value(value: object) -> object:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


# -- the job ------------------------------------------------------------------------------------


def read_rows(spark: SparkSession, settings: Settings, table: str, spec: PublishSettings,
              periods: list[Period]) -> tuple[pd.DataFrame, int | None]:
    """A table's rows of the periods it has (pandas, a fresh index) and the Delta version read;
    a clear error when it has none of them."""
    from jobs.lake import read_table, table_version

    conditions, errors = [], []
    for period in periods:
        try:
            conditions.append(f"({period_filter(spec.tables[table], period)})")
        except ConfigError as e:
            errors.append(e)
    if not conditions:
        raise errors[0]
    df = read_table(spark, settings, table).where(" OR ".join(conditions))
    return df.toPandas().reset_index(drop=True), table_version(settings, table, spark)


def release_rows(read: dict[str, tuple[pd.DataFrame, int | None]], selections: list[Selection],
                 index_sources: pd.DataFrame | None) -> pd.DataFrame:
    """The metric rows one release publishes: the metrics asked for, and the index's source
    metrics when an index table is in it (its values print theirs)."""
    parts = []
    if release.METRIC_TABLE in read and not read[release.METRIC_TABLE][0].empty:
        rows = read[release.METRIC_TABLE][0]
        if not any(s.table == release.METRIC_TABLE and s.metric_id is None for s in selections):
            rows = rows[rows["metric_id"].isin({s.metric_id for s in selections})]
        parts.append(rows)
    if index_sources is not None:
        parts.append(index_sources)
    if not parts:
        return pd.DataFrame()
    rows = pd.concat(parts, ignore_index=True)
    keys = ["metric_id", "period_type", "period", *GRAIN_COLUMNS]
    return rows.drop_duplicates([c for c in keys if c in rows.columns]).reset_index(drop=True)


def prepare(spark: SparkSession, settings: Settings, names: list[str], periods: list[Period],
            spec: PublishSettings, catalogue: MetricCatalogue) -> Export:
    """Read what the names need and build the sheets of one release: metric rows suppressed
    together, index tables blanked where they derive from a suppressed cell, the header."""
    selections = [resolve_name(n, catalogue, spec) for n in names]
    read: dict[str, tuple[pd.DataFrame, int | None]] = {}
    for table in dict.fromkeys(s.table for s in selections):
        read[table] = read_rows(spark, settings, table, spec, periods)
    sources = None
    if any(t in release.INDEX_TABLES for t in read):
        years = [p for p in periods if p.type == "year"]
        sources, version = read_rows(spark, settings, release.METRIC_TABLE, spec, years)
        sources = sources[sources["metric_id"].isin(release.index_source_metrics(settings))]
        read.setdefault(release.METRIC_TABLE, (pd.DataFrame(), version))
        if "gold.index_indicator" not in read:
            read["gold.index_indicator"] = read_rows(spark, settings, "gold.index_indicator",
                                                     spec, years)
    published, figures = suppress_release(release_rows(read, selections, sources), catalogue,
                                          spec)
    indicators = None
    if "gold.index_indicator" in read:
        indicators = release.blank_indicators(read["gold.index_indicator"][0], published)
    sheets = []
    for s in selections:
        frame = read[s.table][0]
        if s.table == release.METRIC_TABLE:
            frame = published[published["metric_id"].isin(
                frame["metric_id"] if s.metric_id is None else [s.metric_id])]
        elif s.table == "gold.index_indicator":
            frame = indicators
        elif s.table == "gold.index_score":
            frame = release.blank_scores(frame, indicators)
        sheets += build_sheets(s, frame, catalogue, spec)
    export = Export(periods, sheets, audit=figures)
    now = dt.datetime.now(ZoneInfo(settings.timezone))
    versions = {t: v for t, (_, v) in read.items()
                if any(s.table == t for s in selections) or t == release.METRIC_TABLE}
    export.header = header(export, spec, now, versions)
    return export


def write(export: Export, spec: PublishSettings, fmt: str, out_dir: Path,
          stem: str) -> list[Path]:
    """Write an export in one format: files for CSV and Parquet, one workbook for XLSX."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "xlsx":
        return [write_xlsx(export, spec, out_dir / f"{stem}.xlsx")]
    writer = write_csv if fmt == "csv" else write_parquet
    return [writer(sheet, export.header, out_dir / f"{sheet.name}.{fmt}")
            for sheet in export.sheets]


def run(spark: SparkSession, settings: Settings, names: list[str],
        period_text: str | list[str], fmt: str, out_dir: Path | None = None,
        k: int | None = None) -> dict:
    """`healthlake export NAME... --period P [--period P2 ...] --format F [--out DIR] [--k K]`:
    every period in one release, checked as one system. A ``k`` below the configured k is
    refused."""
    import dataclasses

    spec = load_publish(settings)
    spec = dataclasses.replace(spec, suppression=spec.suppression.floor(k))
    texts = [period_text] if isinstance(period_text, str) else list(period_text)
    periods = list(dict.fromkeys(parse_period(t) for t in texts))
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    catalogue = load_catalogue(settings)
    export = prepare(spark, settings, names, periods, spec, catalogue)
    target = out_dir or exports_root(settings, spec) / export.label
    stem = names[0].replace(".", "_") if len(names) == 1 else "healthlake-export"
    paths = write(export, spec, fmt, target, stem)
    rows_per_file = ([sum(len(s.rows) for s in export.sheets)] if fmt == "xlsx"
                     else [len(s.rows) for s in export.sheets])
    for path, rows in zip(paths, rows_per_file, strict=True):
        audit.record_export(path, rows, names=names, period=export.label, format=fmt,
                            source=export.header.get("source"))
    suppressed = {s.name: int(s.rows[SUPPRESSED].notna().sum()) for s in export.sheets
                  if SUPPRESSED in s.rows.columns}
    summary = {"period": export.label, "format": fmt, "files": [str(p) for p in paths],
               "tables": {s.name: len(s.rows) for s in export.sheets},
               "suppressed_cells": suppressed, "rule": export.header["suppression"],
               "release_audit": export.audit}
    log.info("export %s: %s", names, summary)
    return summary
