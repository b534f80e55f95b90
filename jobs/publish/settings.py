"""The ``publish`` section (conf/base/publish.yaml), typed and validated like every other one.

Pure Python: no Spark. Loaded by every publishing entry point before any work starts, so a
misspelt table, zone or column stops the run with the key and the file named.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from jobs.config import ConfigError, Settings, build_dataclass, require

RESTRICTED_ZONE = "restricted"


@dataclass(frozen=True)
class SuppressionRule:
    """Small-cell suppression: counts 1 .. k-1 (0 .. k-1 with ``suppress_zeros``) in any of
    ``count_columns`` are suppressed, then complements until nothing is recoverable from
    totals; a suppressed cell's ``blank_columns`` are emptied."""

    k: int = 10
    suppress_zeros: bool = False
    count_columns: list[str] = field(default_factory=lambda: ["numerator", "denominator"])
    blank_columns: list[str] = field(
        default_factory=lambda: ["numerator", "denominator", "value"])
    implied_grains: dict[str, list[str]] = field(default_factory=dict)

    def describe(self) -> str:
        """The rule in one sentence, for export headers and the report."""
        lowest = 0 if self.suppress_zeros else 1
        return (f"small-cell suppression, k = {self.k}: a cell whose "
                f"{' or '.join(self.count_columns)} counts {lowest} to {self.k - 1} is "
                "suppressed, then further cells until no suppressed count can be worked out, "
                "exactly or closer than k, from everything published together (this file and "
                "every other file of the same export: totals along every grain, a year and its "
                "months, the same count in two metrics; checked by linear programming); "
                f"{', '.join(self.blank_columns)} of a suppressed cell are left blank and "
                "column 'suppressed' marks every such cell alike; index values computed from a "
                "suppressed cell are blanked with it. Not protected: combining separate "
                "exports or outside knowledge (README, Publishing)")

    def floor(self, k: int | None) -> SuppressionRule:
        """This rule with ``k`` when given: a k below the configured one is refused."""
        if k is None:
            return self
        if k < self.k:
            raise ConfigError(f"--k {k} is below the configured k = {self.k} "
                              "(publish.suppression.k): a smaller k is never allowed")
        return replace(self, k=k)


@dataclass(frozen=True)
class PublishedTable:
    """How ``--period`` selects a gold table's rows, and which column names its metric."""

    period_kind: Literal["label", "year", "date"]
    period_column: str
    metric_column: str | None = None
    suppress: bool = False


DENIED_FUNCTIONS = ["reflect", "java_method", "try_reflect", "input_file_name",
                    "input_file_block_start", "input_file_block_length"]
TABLE_FUNCTIONS = ["range", "explode", "explode_outer", "inline", "inline_outer", "posexplode",
                   "posexplode_outer", "stack", "json_tuple"]


@dataclass(frozen=True)
class SqlSettings:
    """The analysts' SQL (jobs/publish/gate.py): every table of ``zones`` and the listed
    ``ops_tables``; functions refused by name; the table-valued functions allowed."""

    zones: list[str] = field(default_factory=lambda: ["curated"])
    ops_tables: list[str] = field(default_factory=list)
    max_rows: int = 200
    denied_functions: list[str] = field(default_factory=lambda: list(DENIED_FUNCTIONS))
    table_functions: list[str] = field(default_factory=lambda: list(TABLE_FUNCTIONS))


@dataclass(frozen=True)
class ThriftSettings:
    host: str = "127.0.0.1"
    port: int = 10000
    home: str = ".cache/thrift"


@dataclass(frozen=True)
class ReportSettings:
    title_zh: str = "全民健康信息化与居民健康报告"
    title_en: str = "Health informatization and population health report"
    trend_metrics: list[str] = field(default_factory=list)
    # column -> code -> readable label, in display order
    value_labels: dict[str, dict[str, str]] = field(default_factory=dict)

    def label(self, column: str, code: object) -> str:
        return self.value_labels.get(column, {}).get(str(code), str(code))

    def order(self, column: str) -> list[str]:
        return list(self.value_labels.get(column, {}))


@dataclass(frozen=True)
class PublishSettings:
    exports_root: str
    reports_root: str
    suppression: SuppressionRule
    tables: dict[str, PublishedTable]
    sql: SqlSettings = field(default_factory=SqlSettings)
    thrift: ThriftSettings = field(default_factory=ThriftSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    # column -> [中文, English]
    columns: dict[str, list[str]] = field(default_factory=dict)

    def label(self, column: str) -> str:
        """'区县代码 District code' for a known column, the column itself otherwise."""
        names = self.columns.get(column)
        return f"{names[0]} {names[1]}" if names else column


def load_publish(settings: Settings) -> PublishSettings:
    """Validate ``settings.publish`` against the table catalogue and the zones."""
    o = settings.origins
    spec: PublishSettings = build_dataclass(PublishSettings, settings.publish, "publish", o)
    rule = spec.suppression
    require(rule.k >= 2, "publish.suppression.k", o, "k must be at least 2")
    require(bool(rule.count_columns), "publish.suppression.count_columns", o,
            "name at least one count column")
    for name in spec.tables:
        known = name in settings.tables and name.startswith("gold.")
        require(known and settings.tables[name].zone != RESTRICTED_ZONE, f"publish.tables.{name}",
                o, "not a gold table of the curated zone (conf/base/catalog.yaml)")
    for zone in spec.sql.zones:
        require(zone in settings.paths.zones, "publish.sql.zones", o,
                f"unknown zone {zone!r} (paths.zones: {', '.join(settings.paths.zones)})")
        require(zone != RESTRICTED_ZONE, "publish.sql.zones", o,
                "the restricted zone is never open to analysts")
    for name in spec.sql.ops_tables:
        require(name in settings.tables and settings.tables[name].zone == "ops",
                "publish.sql.ops_tables", o, f"{name!r} is not a table of the ops zone "
                "(conf/base/catalog.yaml)")
    for name in DENIED_FUNCTIONS:
        require(name in [f.lower() for f in spec.sql.denied_functions],
                "publish.sql.denied_functions", o, f"{name} reaches the engine: it stays denied")
    for column, names in spec.columns.items():
        require(len(names) == 2 and all(n.strip() for n in names), f"publish.columns.{column}",
                o, "give [中文, English]")
    for metric in spec.report.trend_metrics:
        require(metric in settings.metrics, "publish.report.trend_metrics", o,
                f"{metric!r} is not a metric of the catalogue (conf/base/metrics.yaml)")
    require(spec.thrift.host in ("127.0.0.1", "localhost", "::1"), "publish.thrift.host", o,
            "the Thrift server listens on loopback only")
    return spec


def exports_root(settings: Settings, spec: PublishSettings) -> Path:
    return settings.path(spec.exports_root)


def reports_root(settings: Settings, spec: PublishSettings) -> Path:
    return settings.path(spec.reports_root)
