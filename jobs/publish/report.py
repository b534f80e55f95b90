"""`healthlake report --year Y`: one self-contained HTML file for the year.

Sections: the informatization index and its sub-indices by district (ranks, change on last
year); trends over the years (the index, and the city's key metrics); chronic-disease prevalence
and control by district, age and sex; service use by tier and channel; the data-quality
scorecard. Every chart (inline SVG, :mod:`jobs.publish.charts`) has its numbers and the
definitions of what it shows beside it. Metric cells are suppressed as in exports, every
year's metrics of the report checked as one release (:func:`jobs.publish.export.suppress_release`),
and index scores that would give a suppressed cell back are blanked (all shown as '*').

No script, stylesheet, font or image is fetched: the file opens offline. Reading is at the edge
(:func:`load_data`); :func:`render` is a pure function of the data.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple
from zoneinfo import ZoneInfo

import pandas as pd

from jobs import audit
from jobs.config import Settings
from jobs.gold.catalogue import MetricCatalogue, band_bounds, load_catalogue
from jobs.gold.metrics import GRAIN_COLUMNS
from jobs.publish import charts, release
from jobs.publish.export import suppress_release
from jobs.publish.settings import PublishSettings, load_publish, reports_root
from jobs.publish.suppression import SUPPRESSED

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

DQ_METRICS = ["dq_on_time_delivery_rate", "dq_completeness_rate", "dq_quarantine_rate",
              "dq_invalid_id_rate", "dq_duplicate_rate"]
_UNIT_LABEL = {"percent": "%", "per_1000": "‰ (per 1,000)", "count": "count",
               "index_0_100": "score 0-100", "ratio": "ratio"}


class Cell(NamedTuple):
    """A published number: its value, or why it is not shown (suppressed / no data)."""

    value: float | None
    suppressed: str | None = None

    @property
    def shown(self) -> float | None:
        return None if self.value is None or math.isnan(self.value) else self.value


class MetricLookup:
    """Cells of gold.metric_value by metric, period and grains (the others null)."""

    def __init__(self, rows: pd.DataFrame):
        self._cells: dict[tuple, Cell] = {}
        grains = [c for c in GRAIN_COLUMNS if c in rows.columns]
        for record in rows.to_dict("records"):
            key = (record["metric_id"], str(record["period"]),
                   tuple(None if pd.isna(record.get(g)) else record.get(g)
                         for g in GRAIN_COLUMNS))
            reason = record.get(SUPPRESSED)
            value = record.get("value")
            self._cells[key] = Cell(None if pd.isna(value) else float(value),
                                    None if pd.isna(reason) else reason)
        self.grains = grains

    def get(self, metric_id: str, period: object, **grains: object) -> Cell:
        key = (metric_id, str(period), tuple(grains.get(g) for g in GRAIN_COLUMNS))
        return self._cells.get(key, Cell(None))


@dataclass
class ReportData:
    """What the report shows, read from gold (yearly metric rows already suppressed)."""

    year: int
    metrics: pd.DataFrame        # gold.metric_value, period_type year, years <= year
    index_scores: pd.DataFrame   # gold.index_score, years <= year
    dq: pd.DataFrame             # metric_id, level (city/district/tier), code, num, den, value
    versions: dict[str, int | None] = field(default_factory=dict)
    generated_at: dt.datetime | None = None


@dataclass
class Panel:
    """One chart with its numbers and its definitions."""

    id: str
    title: str
    svg: str
    table: str
    metrics: list[str]
    note: str = ""


# -- helpers ------------------------------------------------------------------------------------


def _fmt(value: float | None, unit: str = "percent") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit == "count":
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def _td(cell: Cell, unit: str) -> str:
    if cell.suppressed:
        return '<td class="suppressed" title="suppressed">*</td>'
    return f'<td class="num">{_fmt(cell.shown, unit)}</td>'


def numbers_table(columns: Sequence[str], rows: Sequence[tuple[str, Sequence[Cell]]],
                  units: Sequence[str]) -> str:
    """An HTML table: a label column, then one column per series."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        f"<tr><th scope=\"row\">{html.escape(label)}</th>"
        + "".join(_td(c, u) for c, u in zip(cells, units, strict=True)) + "</tr>"
        for label, cells in rows)
    return f'<table class="numbers"><thead><tr><th></th>{head}</tr></thead><tbody>{body}' \
           "</tbody></table>"


def district_labels(settings: Settings) -> dict[str, str]:
    """District code -> '香洲区 Xiangzhou' (conf city.districts)."""
    return {str(d["code"]): f"{d.get('name', d['code'])} {d.get('name_en', '')}".strip()
            for d in settings.city.get("districts", [])}


def suppress_all(rows: pd.DataFrame, catalogue: MetricCatalogue, spec: PublishSettings
                 ) -> pd.DataFrame:
    """Every metric's cells of the report suppressed as one release, as in exports."""
    return suppress_release(rows.reset_index(drop=True), catalogue, spec)[0]


# -- the panels (pure) ----------------------------------------------------------------------------


class Builder:
    """Builds the panels of one year from the data, the catalogue and the labels."""

    def __init__(self, data: ReportData, catalogue: MetricCatalogue, spec: PublishSettings,
                 districts: dict[str, str], city_name: str):
        self.data, self.catalogue, self.spec = data, catalogue, spec
        self.labels = spec.report
        self.districts, self.city_name = districts, city_name
        self.cells = MetricLookup(data.metrics)
        self.year = data.year

    def name(self, metric_id: str) -> str:
        m = self.catalogue.metrics.get(metric_id)
        return f"{m.name_zh} {m.name_en}" if m else metric_id

    def short(self, metric_id: str) -> str:
        """The Chinese name, for legends (the tables beside give both)."""
        m = self.catalogue.metrics.get(metric_id)
        return m.name_zh if m else metric_id

    def unit(self, metric_id: str) -> str:
        m = self.catalogue.metrics.get(metric_id)
        return m.unit if m else "percent"

    def areas(self) -> list[tuple[str | None, str]]:
        return [(None, self.city_name)] + list(self.districts.items())

    # a generic panel: categories x metrics (grouped bars), one cell getter
    def metric_bars(self, pid: str, title: str, metrics: list[str],
                    categories: list[tuple[dict, str]], note: str = "") -> Panel:
        cells = {m: [self.cells.get(m, self.year, **grains) for grains, _ in categories]
                 for m in metrics}
        unit = self.unit(metrics[0])
        svg = charts.bar_chart([label for _, label in categories],
                               {self.short(m): [c.shown for c in cells[m]] for m in metrics},
                               title, _UNIT_LABEL.get(unit, unit),
                               {self.short(m): [bool(c.suppressed) for c in cells[m]]
                                for m in metrics})
        rows = [(label, [cells[m][i] for m in metrics])
                for i, (_, label) in enumerate(categories)]
        table = numbers_table([self.name(m) for m in metrics], rows,
                              [self.unit(m) for m in metrics])
        return Panel(pid, title, svg, table, metrics, note)

    def by_age_and_sex(self, pid: str, title: str, metrics: list[str]) -> Panel:
        """City values by age band (x) for each metric and sex (lines)."""
        present = self.data.metrics[self.data.metrics["metric_id"].isin(metrics)
                                    & (self.data.metrics["period"].astype(str)
                                       == str(self.year))]["age_band"].dropna().unique()
        bands = sorted(present, key=lambda b: band_bounds(b)[0])
        sexes = self.labels.order("sex") or ["male", "female"]
        series, columns, per_band = {}, [], {b: [] for b in bands}
        for m in metrics:
            for sex in sexes:
                sex_label = self.labels.label("sex", sex)
                cells = [self.cells.get(m, self.year, age_band=b, sex=sex) for b in bands]
                series[f"{self.short(m)} · {sex_label}"] = [c.shown for c in cells]
                columns.append(f"{self.name(m)} · {sex_label}")
                for b, c in zip(bands, cells, strict=True):
                    per_band[b].append(c)
        unit = self.unit(metrics[0])
        svg = charts.line_chart(bands, series, title, _UNIT_LABEL.get(unit, unit))
        table = numbers_table(columns, [(b, per_band[b]) for b in bands],
                              [self.unit(m) for m in metrics for _ in sexes])
        return Panel(pid, title, svg, table, metrics, "City residents; age at the end of the "
                                                      "year.")

    # -- sections --------------------------------------------------------------------------
    def index_by_district(self) -> Panel:
        scores = self.data.index_scores
        now = scores[(scores["year"] == self.year)
                     & scores["area_level"].isin(["city", "district"])]
        names = self.labels.order("index_name") or ["total", "governance", "construction",
                                                     "application"]
        areas = self.areas()

        def score(code, level, index_name) -> pd.Series | None:
            sel = now[(now["area_level"] == level) & (now["index_name"] == index_name)]
            if code is not None:
                sel = sel[sel["area_code"].astype(str) == code]
            return sel.iloc[0] if len(sel) else None

        def level(code):
            return "city" if code is None else "district"

        series = {self.labels.label("index_name", n): [
            _shown(score(code, level(code), n), "score") for code, _ in areas] for n in names}
        title = f"信息化发展指数 Informatization index by district, {self.year}"
        svg = charts.bar_chart([label for _, label in areas], series, title, "score 0-100",
                               {name: [False] * len(areas) for name in series})
        columns = [self.labels.label("index_name", n) for n in names] + [
            "排名 Rank", "较上年 Change"]
        rows = []
        for code, label in areas:
            total = score(code, level(code), "total")
            cells = [_cell(score(code, level(code), n), "score") for n in names]
            rank = _cell(total, "rank") if code is not None else Cell(None)
            cells += [rank, _cell(total, "change")]
            rows.append((label, cells))
        units = ["index_0_100"] * len(names) + ["count", "index_0_100"]
        note = ("Ranks among the districts (1 = highest total). Change: points against the "
                "previous year's published total ('—' when the lake holds no earlier year).")
        return Panel("index-by-district", title, svg, numbers_table(columns, rows, units),
                     ["informatization_index"], note)

    def index_trend(self) -> Panel:
        scores = self.data.index_scores
        total = scores[(scores["index_name"] == "total")
                       & scores["area_level"].isin(["city", "district"])]
        years = sorted(int(y) for y in total["year"].unique())
        areas = self.areas()

        def value(code, year):
            sel = total[(total["year"] == year)
                        & ((total["area_level"] == "city") if code is None
                           else (total["area_code"].astype(str) == code))]
            return _cell(sel.iloc[0] if len(sel) else None, "score")

        series = {label: [value(code, y).shown for y in years] for code, label in areas}
        title = "信息化发展指数历年趋势 Informatization index over the years"
        svg = charts.line_chart([str(y) for y in years], series, title, "score 0-100")
        rows = [(str(y), [value(code, y) for code, _ in areas]) for y in years]
        table = numbers_table([label for _, label in areas], rows,
                              ["index_0_100"] * len(areas))
        note = "" if len(years) > 1 else "The lake holds one year of the index so far."
        return Panel("index-trend", title, svg, table, ["informatization_index"], note)

    def metric_trend(self) -> Panel:
        metrics = self.labels.trend_metrics
        years = sorted({int(p) for p in self.data.metrics["period"].astype(str)
                        if p.isdigit()})
        series = {self.short(m): [self.cells.get(m, y).shown for y in years] for m in metrics}
        title = "主要指标历年趋势 Key metrics of the city over the years"
        svg = charts.line_chart([str(y) for y in years], series, title, "%")
        rows = [(str(y), [self.cells.get(m, y) for m in metrics]) for y in years]
        table = numbers_table([self.name(m) for m in metrics], rows,
                              [self.unit(m) for m in metrics])
        return Panel("metric-trend", title, svg, table, metrics)

    def district_categories(self) -> list[tuple[dict, str]]:
        return [({} if code is None else {"district_code": code}, label)
                for code, label in self.areas()]

    def chronic_disease(self) -> list[Panel]:
        y = self.year
        return [
            self.metric_bars("prevalence-by-district",
                             f"慢性病患病率 Prevalence by district (age-standardised), {y}",
                             ["hypertension_prevalence_age_std", "diabetes_prevalence_age_std"],
                             self.district_categories(),
                             "Adults 18+, standardised to the 2020 census age structure."),
            self.by_age_and_sex("prevalence-by-age-sex",
                                f"慢性病患病率 Prevalence by age and sex (crude), {y}",
                                ["hypertension_prevalence_crude", "diabetes_prevalence_crude"]),
            self.metric_bars("control-by-district",
                             f"慢性病管理与控制 Management and control by district, {y}",
                             ["hypertension_management_rate", "hypertension_control_rate",
                              "diabetes_management_rate", "diabetes_control_rate"],
                             self.district_categories()),
            self.by_age_and_sex("control-by-age-sex",
                                f"慢性病控制率 Control rate by age and sex, {y}",
                                ["hypertension_control_rate", "diabetes_control_rate"]),
        ]

    def service_use(self) -> list[Panel]:
        y = self.year
        tiers = self.labels.order("tier") or ["municipal", "district", "township", "village"]
        channels = [c for c in self.labels.order("channel") if c in ("on_site", "online",
                                                                     "home_care")]
        cats = [({"tier": t}, self.labels.label("tier", t)) for t in tiers]
        series_cells = {c: [self.cells.get("visits_per_1000", y, tier=t, channel=c)
                            for t in tiers] for c in channels}
        title = f"每千人口诊疗人次 Visits per 1,000 residents by tier and channel, {y}"
        svg = charts.bar_chart([label for _, label in cats],
                               {self.labels.label("channel", c): [x.shown for x in cells]
                                for c, cells in series_cells.items()},
                               title, _UNIT_LABEL["per_1000"],
                               {self.labels.label("channel", c): [bool(x.suppressed)
                                                                  for x in cells]
                                for c, cells in series_cells.items()})
        rows = [(label, [series_cells[c][i] for c in channels])
                for i, (_, label) in enumerate(cats)]
        visits = Panel("visits-by-tier-channel", title, svg,
                       numbers_table([self.labels.label("channel", c) for c in channels], rows,
                                     ["per_1000"] * len(channels)),
                       ["visits_per_1000"], "Tier of the institution visited; city residents.")
        referrals = self.metric_bars(
            "referrals-by-tier", f"双向转诊 Referrals by the sender's tier, {y}",
            ["referrals_up", "referrals_down"], cats,
            "Counts of referrals sent in the year; the digital share is in the exports.")
        online = self.metric_bars(
            "online-share-by-tier", f"线上服务 Online visits and digital referrals by tier, {y}",
            ["online_visit_share", "digital_referral_share"], cats,
            "Tier of the institution providing the service.")
        return [visits, referrals, online]

    def data_quality(self) -> Panel:
        dq = self.data.dq
        metrics = [m for m in DQ_METRICS if m in self.catalogue.metrics]
        areas = self.areas()
        tiers = self.labels.order("tier") or ["municipal", "district", "township", "village"]
        rows_spec = ([("city", None, label) if code is None else ("district", code, label)
                      for code, label in areas]
                     + [("tier", t, self.labels.label("tier", t)) for t in tiers])

        def value(m, level, code) -> Cell:
            sel = dq[(dq["metric_id"] == m) & (dq["level"] == level)]
            if code is not None:
                sel = sel[sel["code"].astype(str) == code]
            return Cell(_shown(sel.iloc[0] if len(sel) else None, "value"))

        cells = {m: [value(m, lvl, code) for lvl, code, _ in rows_spec] for m in metrics}
        n_areas = len(areas)
        title = f"数据质量评分卡 Data-quality scorecard by district, {self.year}"
        svg = charts.bar_chart([label for _, label in areas],
                               {self.short(m): [c.shown for c in cells[m][:n_areas]]
                                for m in metrics}, title, "%",
                               {self.short(m): [False] * n_areas for m in metrics})
        rows = [(label, [cells[m][i] for m in metrics])
                for i, (_, _, label) in enumerate(rows_spec)]
        table = numbers_table([self.name(m) for m in metrics], rows, ["percent"] * len(metrics))
        return Panel("dq-by-district", title, svg, table, metrics,
                     "Institutions' extracts of the year, summed numerators over summed "
                     "denominators; districts and tiers are the institutions'. Counts of files "
                     "and rows, not of persons: nothing is suppressed.")


def _cell(row: pd.Series | None, column: str) -> Cell:
    """A score's cell: '*' when it is blanked (it would give a suppressed cell back)."""
    if row is not None and not pd.isna(row.get(SUPPRESSED)):
        return Cell(None, SUPPRESSED)
    return Cell(_shown(row, column))


def _shown(row: pd.Series | None, column: str) -> float | None:
    if row is None:
        return None
    value = row.get(column)
    return None if value is None or pd.isna(value) else float(value)


# -- the page -----------------------------------------------------------------------------------


CSS = """
body{font-family:"WenQuanYi Micro Hei","Noto Sans CJK SC","Microsoft YaHei","PingFang SC",
 sans-serif;margin:0;color:#222;background:#fafafa;line-height:1.45}
header{background:#1f5fa8;color:#fff;padding:1.2rem 2rem}
header h1{margin:0 0 .3rem;font-size:1.5rem} header p{margin:.1rem 0;font-size:.85rem}
nav{padding:.5rem 2rem;background:#e8eef6;font-size:.9rem} nav a{margin-right:1rem}
main{padding:0 2rem 2rem} section{margin-top:1.5rem}
h2{border-bottom:2px solid #1f5fa8;padding-bottom:.2rem}
.panel{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:1.2rem;
 background:#fff;border:1px solid #ddd;border-radius:6px;padding:1rem;margin:1rem 0}
figure{margin:0} figcaption{font-weight:bold;margin-bottom:.4rem}
svg.chart-svg{width:100%;height:auto}
table.numbers{border-collapse:collapse;font-size:.8rem;width:100%;margin-bottom:.6rem}
table.numbers th,table.numbers td{border:1px solid #ddd;padding:.15rem .35rem}
table.numbers thead th{background:#f0f3f8;font-weight:600}
th[scope=row]{white-space:nowrap;text-align:left} td.num{text-align:right}
td.suppressed{text-align:center;color:#a33}
.definition{font-size:.78rem;color:#444} .definition dt{font-weight:600;margin-top:.3rem}
.definition dd{margin:0 0 0 .6rem} .note{font-size:.8rem;font-style:italic;color:#555}
footer{font-size:.8rem;color:#555;padding:1rem 2rem;border-top:1px solid #ddd}
"""


def definitions_html(metric_ids: list[str], catalogue: MetricCatalogue) -> str:
    parts = []
    for mid in metric_ids:
        m = catalogue.metrics.get(mid)
        if m is None:
            continue
        items = [("定义 Definition", m.definition), ("分子 Numerator", m.numerator),
                 ("分母 Denominator", m.denominator or "none")]
        if m.on_target:
            items.append(("达标 On target", m.on_target))
        body = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(' '.join(v.split()))}</dd>"
                       for k, v in items)
        parts.append(f'<div class="definition" data-metric="{html.escape(mid)}">'
                     f"<strong>{html.escape(m.name_zh)} · {html.escape(m.name_en)}</strong>"
                     f" <code>{html.escape(mid)}</code><dl>{body}</dl></div>")
    return "".join(parts)


def panel_html(panel: Panel, catalogue: MetricCatalogue) -> str:
    note = f'<p class="note">{html.escape(panel.note)}</p>' if panel.note else ""
    return (f'<div class="panel" id="panel-{panel.id}">'
            f'<figure class="chart" id="chart-{panel.id}" data-chart="{panel.id}">'
            f"<figcaption>{html.escape(panel.title)}</figcaption>{panel.svg}</figure>"
            f'<div class="beside"><div class="numbers-wrap">{panel.table}</div>{note}'
            f"{definitions_html(panel.metrics, catalogue)}</div></div>")


def render(data: ReportData, catalogue: MetricCatalogue, spec: PublishSettings,
           districts: dict[str, str], city_name: str) -> str:
    """The whole report as one HTML document."""
    b = Builder(data, catalogue, spec, districts, city_name)
    sections = [
        ("index", "一、全民健康信息化发展指数 Health-informatization index",
         [b.index_by_district()]),
        ("trends", "二、历年趋势 Trends over the years", [b.index_trend(), b.metric_trend()]),
        ("chronic", "三、慢性病患病与控制 Chronic disease: prevalence and control",
         b.chronic_disease()),
        ("services", "四、医疗服务利用 Service use by tier and channel", b.service_use()),
        ("quality", "五、数据质量 Data quality", [b.data_quality()]),
    ]
    title = f"{city_name} {spec.report.title_zh} {data.year}"
    generated = (data.generated_at or dt.datetime.now()).isoformat(timespec="seconds")
    sources = ", ".join(f"{t} (Delta version {v})" for t, v in sorted(data.versions.items()))
    nav = "".join(f'<a href="#{sid}">{html.escape(h)}</a>' for sid, h, _ in sections)
    body = "".join(
        f'<section id="{sid}"><h2>{html.escape(heading)}</h2>'
        + "".join(panel_html(p, catalogue) for p in panels) + "</section>"
        for sid, heading, panels in sections)
    rule = html.escape(spec.suppression.describe())
    return (
        "<!DOCTYPE html>\n<html lang=\"zh-CN\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1><p>{html.escape(spec.report.title_en)}, "
        f"{data.year}</p><p>Generated {html.escape(generated)} from "
        f"{html.escape(sources)}. Definitions: the metric catalogue (conf/base/metrics.yaml)."
        f"</p></header><nav>{nav}</nav><main>{body}</main>"
        f"<footer><p><strong>* Suppressed.</strong> {rule}.</p><p>— no data for this cell in "
        "the lake.</p><p>Produced by <code>healthlake report</code>; synthetic data.</p>"
        "</footer></body></html>\n")


# -- the job ------------------------------------------------------------------------------------


def load_data(spark: SparkSession, settings: Settings, year: int, spec: PublishSettings,
              catalogue: MetricCatalogue) -> ReportData:
    """Read the gold tables the report needs (yearly rows up to ``year``) and suppress."""
    from pyspark.sql import functions as F

    from jobs.gold.scorecard import rollup
    from jobs.lake import read_table, table_exists, table_version

    if not table_exists(spark, settings, "gold.metric_value"):
        raise FileNotFoundError("gold.metric_value has not been written: run `healthlake gold`")
    metrics = (read_table(spark, settings, "gold.metric_value")
               .where((F.col("period_type") == "year")
                      & (F.col("period").cast("int") <= year)).toPandas())
    if not (metrics["period"].astype(str) == str(year)).any():
        raise FileNotFoundError(f"gold.metric_value holds no yearly metrics of {year}: run "
                                f"`healthlake gold --year {year}`")
    versions = {"gold.metric_value": table_version(settings, "gold.metric_value", spark)}
    scores = pd.DataFrame(columns=["year", "area_level", "area_code", "index_name", "score",
                                   "rank", "change"])
    published = suppress_all(metrics, catalogue, spec)
    if table_exists(spark, settings, "gold.index_score"):
        scores = (read_table(spark, settings, "gold.index_score")
                  .where(F.col("year") <= year).toPandas())
        versions["gold.index_score"] = table_version(settings, "gold.index_score", spark)
        indicators = None
        if table_exists(spark, settings, "gold.index_indicator"):
            indicators = release.blank_indicators(
                read_table(spark, settings, "gold.index_indicator")
                .where(F.col("year") <= year).toPandas(), published)
        scores = release.blank_scores(scores, indicators)
    dq = pd.DataFrame(columns=["metric_id", "level", "code", "numerator", "denominator",
                               "value"])
    if table_exists(spark, settings, "gold.dq_scorecard"):
        sc = read_table(spark, settings, "gold.dq_scorecard").where(
            F.year("extract_date") == year)
        parts = [rollup(sc, ["metric_id"]).withColumn("level", F.lit("city"))
                 .withColumn("code", F.lit(None).cast("string")),
                 rollup(sc, ["metric_id", "district_code"]).withColumn("level", F.lit("district"))
                 .withColumnRenamed("district_code", "code"),
                 rollup(sc, ["metric_id", "tier"]).withColumn("level", F.lit("tier"))
                 .withColumnRenamed("tier", "code")]
        cols = ["metric_id", "level", "code", "numerator", "denominator", "value"]
        dq = pd.concat([p.select(*cols).toPandas() for p in parts], ignore_index=True)
        versions["gold.dq_scorecard"] = table_version(settings, "gold.dq_scorecard", spark)
    return ReportData(year, published, scores, dq, versions,
                      dt.datetime.now(ZoneInfo(settings.timezone)))


def run(spark: SparkSession, settings: Settings, year: int, out: Path | None = None,
        k: int | None = None) -> dict:
    """`healthlake report --year Y [--out FILE] [--k K]`: write the HTML report."""
    import dataclasses

    spec = load_publish(settings)
    spec = dataclasses.replace(spec, suppression=spec.suppression.floor(k))
    catalogue = load_catalogue(settings)
    data = load_data(spark, settings, year, spec, catalogue)
    page = render(data, catalogue, spec, district_labels(settings),
                  str(settings.city.get("name", "")))
    path = out or reports_root(settings, spec) / f"healthlake-report-{year}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    audit.record_export(path, len(data.metrics) + len(data.index_scores) + len(data.dq), year=year,
                        sources=data.versions)
    summary = {"year": year, "report": str(path), "bytes": len(page.encode("utf-8")),
               "charts": page.count('<figure class="chart"'),
               "suppressed_cells": int(data.metrics[SUPPRESSED].notna().sum())}
    log.info("report %s: %s", year, summary)
    return summary
