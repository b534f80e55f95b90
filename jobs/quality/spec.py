"""Quality suites as configuration: quality/<table>.yaml (one per table, named after it) and the
``quality`` section (conf/base/quality.yaml: thresholds, severities, history windows).

A suite file says which rows of its table one validation looks at, which derived columns it
adds (referential lookups, SQL expressions) and its expectations, each written as Great
Expectations names them::

    table: silver.encounter
    day_column: extract_date          # validate the rows of the extract date (omit: whole table)
    key: [institution_id, encounter_id]
    lookups:                          # one boolean column per lookup: is the key in that table?
      has_person: {table: silver.person, by: [person_id]}
      has_target: {table: silver.institution, by: {to_institution_id: institution_id}}
    derive:                           # Spark SQL; {extract_date} is the day validated
      age_years: "floor(months_between({extract_date}, birth_date) / 12)"
    expectations:
      - expect_column_values_to_not_be_null: {column: person_id}
      - expect_column_values_to_be_between: {column: sbp, min_value: $sbp_min}
        severity: warn                # fail (stop the run) or warn; default from conf

``$name`` is a threshold of ``quality.thresholds`` (a Great Expectations suite parameter), so a
threshold changes in configuration, never in a suite. ``quality.severity`` overrides a suite's
choice between fail and warn, per suite or per expectation (``<suite>/<expectation id>``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from jobs.config import ConfigError, Settings, build_dataclass, require

QUALITY_DIR = Path(__file__).resolve().parents[2] / "quality"
Severity = Literal["fail", "warn"]
_SUITE_KEYS = {"table", "description", "day_column", "key", "lookups", "derive", "expectations"}


@dataclass(frozen=True)
class FeedCountsSettings:
    """How ops.feed_counts judges an institution's day against its recent history."""

    history_days: int = 28
    min_history_days: int = 5
    # Institutions whose recent median is below this many rows a day are too small to judge.
    min_recent_median_rows: int = 20


@dataclass(frozen=True)
class QualitySettings:
    """The ``quality`` section."""

    suites_dir: str = ""
    default_severity: Severity = "fail"
    severity: dict[str, Severity] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    examples: int = 5
    feed_counts: FeedCountsSettings = field(default_factory=FeedCountsSettings)
    data_docs: bool = True
    data_docs_recent_results: int = 500


@dataclass(frozen=True)
class Expectation:
    """One expectation of a suite: its Great Expectations type and arguments, and severity."""

    id: str
    type: str
    kwargs: dict[str, Any]
    severity: Severity


@dataclass(frozen=True)
class Lookup:
    """Is the row's key in ``table``? ``by``: (batch column, that table's column) pairs."""

    table: str
    by: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Suite:
    """A table's suite, as read from quality/<table>.yaml."""

    name: str
    table: str
    source: str
    description: str
    day_column: str | None
    key: tuple[str, ...]
    lookups: dict[str, Lookup]
    derive: dict[str, str]
    expectations: tuple[Expectation, ...]

    @property
    def layer(self) -> str:
        return self.table.partition(".")[0]


def quality_settings(settings: Settings) -> QualitySettings:
    o = settings.origins
    q = build_dataclass(QualitySettings, settings.quality, "quality", o)
    require(q.examples >= 1, "quality.examples", o, "must be at least 1")
    fc = q.feed_counts
    require(fc.history_days >= fc.min_history_days >= 1, "quality.feed_counts", o,
            "needs history_days >= min_history_days >= 1")
    return q


def suites_dir(settings: Settings, q: QualitySettings | None = None) -> Path:
    q = q or quality_settings(settings)
    return settings.path(q.suites_dir) if q.suites_dir else QUALITY_DIR


def expectation_id(kind: str, kwargs: dict[str, Any]) -> str:
    """``expect_column_values_to_be_between:sbp``: stable, readable, unique within a suite."""
    columns = kwargs.get("column") or kwargs.get("column_list") or [
        kwargs.get(k) for k in ("column_A", "column_B") if kwargs.get(k)]
    if isinstance(columns, (list, tuple)):
        columns = ",".join(columns)
    return f"{kind}:{columns}" if columns else kind


def load_suites(settings: Settings, tables: list[str] | None = None) -> list[Suite]:
    """Every suite of the quality folder (or those of ``tables``), validated: a wrong key, an
    unknown expectation, table or threshold is a ConfigError naming the file."""
    q = quality_settings(settings)
    folder = suites_dir(settings, q)
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise ConfigError(f"no quality suites (*.yaml) in {folder}")
    suites = [_read_suite(f, settings, q) for f in files]
    names = {s.name for s in suites}
    for key in q.severity:
        suite_name = key.partition("/")[0]
        require(suite_name in names, f"quality.severity.{key}", settings.origins,
                "names no suite of the quality folder")
    if tables:
        unknown = sorted(set(tables) - names)
        if unknown:
            raise ConfigError(f"no quality suite for {', '.join(unknown)} (suites: "
                              f"{', '.join(sorted(names))})")
        suites = [s for s in suites if s.name in tables]
    return suites


def _read_suite(file: Path, settings: Settings, q: QualitySettings) -> Suite:
    from great_expectations.expectations.registry import get_expectation_impl

    where = f"quality/{file.name}"

    def fail(message: str):
        raise ConfigError(f"{where}: {message}")

    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        fail(f"not valid YAML: {exc}")
    if not isinstance(raw, dict):
        fail("expected a mapping with table and expectations")
    unknown = sorted(set(raw) - _SUITE_KEYS)
    if unknown:
        fail(f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_SUITE_KEYS))})")
    name = file.stem
    table = raw.get("table")
    if table != name:
        fail(f"table {table!r} must be the suite's name {name!r} (one suite per table)")
    if table not in settings.tables:
        fail(f"table {table!r} is not in the catalogue (conf/base/catalog.yaml)")
    lookups = {}
    for column, spec in (raw.get("lookups") or {}).items():
        if not isinstance(spec, dict) or set(spec) != {"table", "by"}:
            fail(f"lookups.{column}: expected {{table: ..., by: [columns]}}")
        if spec["table"] not in settings.tables:
            fail(f"lookups.{column}: table {spec['table']!r} is not in the catalogue")
        by = spec["by"]
        pairs = (by.items() if isinstance(by, dict)
                 else [(c, c) for c in (by if isinstance(by, list) else [by])])
        lookups[column] = Lookup(spec["table"], tuple((str(a), str(b)) for a, b in pairs))
    expectations = []
    for i, item in enumerate(raw.get("expectations") or []):
        kinds = [k for k in (item or {}) if str(k).startswith("expect_")]
        extra = sorted(set(item or {}) - set(kinds) - {"severity", "id"})
        if len(kinds) != 1 or extra:
            fail(f"expectations[{i}]: expected one 'expect_...' key (plus severity, id)")
        kind = kinds[0]
        try:
            get_expectation_impl(kind)
        except Exception:
            fail(f"expectations[{i}]: {kind!r} is not a Great Expectations expectation")
        kwargs = _parameters(item[kind] or {}, q, lambda m, i=i: fail(f"expectations[{i}]: {m}"))
        exp_id = item.get("id") or expectation_id(kind, kwargs)
        severity = item.get("severity", q.default_severity)
        severity = q.severity.get(f"{name}/{exp_id}", q.severity.get(name, severity))
        if severity not in ("fail", "warn"):
            fail(f"expectations[{i}]: severity must be fail or warn, got {severity!r}")
        expectations.append(Expectation(exp_id, kind, kwargs, severity))
    ids = [e.id for e in expectations]
    if len(ids) != len(set(ids)):
        dup = next(x for x in ids if ids.count(x) > 1)
        fail(f"two expectations share the id {dup!r}: give one an 'id'")
    if not expectations:
        fail("a suite needs at least one expectation")
    return Suite(name=name, table=table, source=where, description=raw.get("description", ""),
                 day_column=raw.get("day_column"), key=tuple(raw.get("key") or ()),
                 lookups=lookups, derive=dict(raw.get("derive") or {}),
                 expectations=tuple(expectations))


def _parameters(kwargs: dict, q: QualitySettings, fail) -> dict:
    """``$name`` -> a suite parameter ``{"$PARAMETER": name}`` of a known threshold."""
    out = {}
    for key, value in kwargs.items():
        if isinstance(value, str) and value.startswith("$"):
            name = value[1:]
            if name not in q.thresholds:
                fail(f"{key}: threshold {name!r} is not in quality.thresholds "
                     f"(conf/base/quality.yaml)")
            value = {"$PARAMETER": name}
        out[key] = value
    return out
