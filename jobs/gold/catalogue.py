"""The metric catalogue of the gold layer and its document, docs/metric-catalogue.md.

Every number gold publishes is defined once, in the ``metrics`` and ``standard_population``
sections (conf/base/metrics.yaml): names in Chinese and English, a plain definition, numerator,
denominator, unit, grains, direction, kind, source tables and the gold table it is written to.
The jobs that compute the metrics and the people who read the tables share that one meaning.

Validated like every other section (:func:`jobs.config.build_dataclass` for keys, types and the
allowed words; :func:`jobs.config.require` for the rest), so a misspelt grain or an uncatalogued
table stops the run at start with the key and the file named. Pure Python: no Spark.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from jobs.config import PROJECT_ROOT, ConfigError, Settings, build_dataclass, load, require

DEFAULT_OUTPUT = PROJECT_ROOT / "docs" / "metric-catalogue.md"

Unit = Literal["percent", "per_1000", "count", "index_0_100", "ratio"]
Grain = Literal["city", "district", "town", "institution", "year", "quarter", "month", "day",
                "age_band", "sex", "tier", "to_tier", "channel", "condition", "icd10_category",
                "feed"]
Direction = Literal["higher_is_better", "higher_is_worse", "neutral"]
Kind = Literal["population_health", "service_use", "data_quality", "informatization_indicator"]
SubIndex = Literal["governance", "construction", "application"]

# What each grain column means in the gold tables (rendered into the document).
GRAIN_MEANING: dict[str, str] = {
    "city": "the whole city",
    "district": "district (区); where the resident lives for metrics about residents, where the "
                "institution is for metrics about institutions (each definition says which)",
    "town": "town or street (镇/街道), by the same rule as district",
    "institution": "one health institution (`institution_id`)",
    "year": "calendar year",
    "quarter": "calendar quarter (not annualised)",
    "month": "calendar month (not annualised)",
    "day": "extract date (data-quality metrics)",
    "age_band": "5-year age band at the end of the period: 0-4, 5-9, ..., 80-84, 85+",
    "sex": "male or female",
    "tier": "tier of the institution: municipal, district, township, village",
    "to_tier": "tier of the institution receiving a referral",
    "channel": "how a service was delivered: on_site, online or home_care for visits; digital "
               "or paper for referrals",
    "condition": "condition family of a diagnosis (hypertension, diabetes, ...: "
                 "silver.condition_families)",
    "icd10_category": "ICD-10 three-character category of a diagnosis (I10, E11, ...)",
    "feed": "the extract feed (resident_registry, encounters, lab_results, referrals, "
            "chronic_followups, institution_survey)",
}

KIND_TITLES: dict[str, str] = {
    "population_health": "Population health",
    "service_use": "Service use",
    "data_quality": "Data quality (per institution and extract day)",
    "informatization_indicator": "Health-informatization index",
}

GRAINS: tuple[str, ...] = typing.get_args(Grain)
# Files the bureau holds under paths.reference_root (written by the generator for the demo).
REFERENCE_FILES = {"population": "reference/population.csv", "areas": "reference/areas.csv",
                   "institutions": "reference/institutions.csv"}

# The reference population is by district, age band and sex: nothing finer exists for it.
_POPULATION_GRAINS_MISSING = ("town", "institution")
_METRIC_ID = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_CJK = re.compile(r"[\u4e00-\u9fff]")
_BAND = re.compile(r"^(\d+)-(\d+)$|^(\d+)\+$")
WEIGHT_TOLERANCE = 0.001


@dataclass(frozen=True)
class Metric:
    """One published metric, as configured under ``metrics.<metric_id>``."""

    name_zh: str
    name_en: str
    definition: str
    numerator: str
    denominator: str | None
    unit: Unit
    # Lists of words are checked by check_catalogue, so an error names the list's key (and its
    # file: the loader records origins per key, not per list item).
    grains: list[str]
    direction: Direction
    kind: Kind
    source_tables: list[str]
    output_table: str
    reference_data: list[str] = field(default_factory=list)
    standardisation: Literal["age"] | None = None
    on_target: str | None = None
    derived_from: list[str] = field(default_factory=list)
    sub_index: SubIndex | None = None
    notes: str | None = None

    @property
    def uses_population(self) -> bool:
        return "population" in self.reference_data


@dataclass(frozen=True)
class MetricCatalogue:
    """Every metric by id (in configuration order) and the standard population's weights."""

    metrics: dict[str, Metric]
    standard_population: dict[str, float] = field(default_factory=dict)

    def metric(self, metric_id: str) -> Metric:
        try:
            return self.metrics[metric_id]
        except KeyError:
            raise ConfigError(f"unknown metric {metric_id!r}; the catalogue has: "
                              f"{', '.join(self.metrics)}") from None

    def by_kind(self, kind: str) -> dict[str, Metric]:
        return {k: m for k, m in self.metrics.items() if m.kind == kind}

    @property
    def age_bands(self) -> list[str]:
        """The standard population's bands, youngest first."""
        return list(self.standard_population)


def load_catalogue(settings: Settings) -> MetricCatalogue:
    """Validate ``settings.metrics`` and ``settings.standard_population`` into a catalogue."""
    o = settings.origins
    metrics = build_dataclass(dict[str, Metric], settings.metrics, "metrics", o)
    weights = build_dataclass(dict[str, float], settings.standard_population,
                              "standard_population", o)
    return check_catalogue(MetricCatalogue(metrics, weights), set(settings.tables), o)


def check_catalogue(catalogue: MetricCatalogue, tables: set[str],
                    origins: dict[str, str] | None = None) -> MetricCatalogue:
    """The checks types cannot express: names, tables, denominators, references, weights."""
    origins = origins or {}

    def check(ok: bool, key: str, message: str) -> None:
        require(ok, key, origins, message)

    check(bool(catalogue.metrics), "metrics", "the catalogue defines no metric")
    for mid, m in catalogue.metrics.items():
        key = f"metrics.{mid}"
        check(bool(_METRIC_ID.match(mid)), key, "metric ids are snake_case (a-z, 0-9, _)")
        check(bool(_CJK.search(m.name_zh)), f"{key}.name_zh", "the Chinese name has no Chinese")
        for name in ("name_en", "definition", "numerator"):
            check(bool(getattr(m, name).strip()), f"{key}.{name}", "must not be empty")
        check(bool(m.grains), f"{key}.grains", "a metric needs at least one grain")
        for g in m.grains:
            check(g in GRAINS, f"{key}.grains",
                  f"unknown grain {g!r} (allowed: {', '.join(GRAINS)})")
        check(len(set(m.grains)) == len(m.grains), f"{key}.grains", "a grain is listed twice")
        check(bool(m.source_tables), f"{key}.source_tables", "a metric needs a source table")
        for table in m.source_tables:
            check(table in tables, f"{key}.source_tables",
                  f"table {table!r} is not in the table catalogue (conf/base/catalog.yaml)")
        check(m.output_table in tables and m.output_table.startswith("gold."),
              f"{key}.output_table",
              f"{m.output_table!r} is not a gold table of the catalogue (conf/base/catalog.yaml)")
        for ref in m.reference_data:
            check(ref in REFERENCE_FILES, f"{key}.reference_data",
                  f"unknown reference file {ref!r} (allowed: {', '.join(REFERENCE_FILES)})")
        _check_denominator(m, key, check)
        if m.standardisation == "age":
            check(m.uses_population, f"{key}.reference_data",
                  "age standardisation needs the reference population (reference_data: "
                  "[population])")
            check("age_band" not in m.grains, f"{key}.grains",
                  "an age-standardised metric has no age_band grain")
            check(bool(catalogue.standard_population), "standard_population",
                  f"metric {mid} is age-standardised but no standard population is configured")
        for ref in m.derived_from:
            check(ref in catalogue.metrics and ref != mid, f"{key}.derived_from",
                  f"{ref!r} is not another metric of the catalogue")
        check(m.sub_index is None or m.kind == "informatization_indicator", f"{key}.sub_index",
              "only informatization indicators belong to a sub-index")
        check(m.on_target is None or bool(m.on_target.strip()), f"{key}.on_target",
              "must not be empty (leave it out instead)")
    if catalogue.standard_population:
        _check_standard_population(catalogue.standard_population, check)
    return catalogue


def _check_denominator(m: Metric, key: str, check) -> None:
    has = m.denominator is not None and bool(m.denominator.strip())
    if m.unit in ("percent", "ratio"):
        check(has, f"{key}.denominator", f"a {m.unit} needs a denominator")
    if m.unit == "count":
        check(m.denominator is None, f"{key}.denominator", "a count has no denominator (null)")
    if m.unit == "per_1000" and not has:
        check(m.uses_population, f"{key}.reference_data",
              "a rate per 1,000 without a denominator is per 1,000 residents: it needs "
              "reference_data: [population]")
    if m.uses_population:
        finer = [g for g in m.grains if g in _POPULATION_GRAINS_MISSING]
        check(not finer, f"{key}.grains",
              f"the reference population is by district, age band and sex; no {finer} grain")


def _check_standard_population(weights: dict[str, float], check) -> None:
    key = "standard_population"
    expected_lo = 0
    bands = list(weights)
    for i, band in enumerate(bands):
        match = _BAND.match(band)
        check(bool(match), f"{key}.{band}", "age bands are 'lo-hi' or 'lo+' (e.g. 0-4, 85+)")
        lo = int(match.group(1) or match.group(3))
        check(lo == expected_lo, f"{key}.{band}",
              f"bands must run from 0 without gap or overlap, youngest first (expected a band "
              f"starting at {expected_lo})")
        is_open = match.group(3) is not None
        check(is_open == (i == len(bands) - 1), f"{key}.{band}",
              "the last band, and only the last, is open-ended ('85+')")
        if not is_open:
            expected_lo = int(match.group(2)) + 1
            check(expected_lo > lo, f"{key}.{band}", "a band's end is before its start")
        check(weights[band] >= 0, f"{key}.{band}", "weights cannot be negative")
    total = sum(weights.values())
    check(abs(total - 1.0) <= WEIGHT_TOLERANCE, key,
          f"weights sum to {total:.4f}, not 1 (within {WEIGHT_TOLERANCE})")


def band_bounds(band: str) -> tuple[int, int | None]:
    """'15-19' -> (15, 19); '85+' -> (85, None)."""
    match = _BAND.match(band)
    if not match:
        raise ValueError(f"not an age band: {band!r}")
    if match.group(3) is not None:
        return int(match.group(3)), None
    return int(match.group(1)), int(match.group(2))


# --------------------------------------------------------------------------------------------
# The document
# --------------------------------------------------------------------------------------------


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _denominator(m: Metric) -> str:
    if m.denominator is not None and m.denominator.strip():
        return m.denominator
    if m.unit == "per_1000":
        return ("none: a rate per 1,000 residents of the reference population "
                "(reference/population.csv), never the registry")
    if m.unit == "count":
        return "none (a count)"
    return "none (a score)"


_UNITS = {"percent": "percent", "per_1000": "per 1,000", "count": "count",
          "index_0_100": "index 0-100", "ratio": "ratio"}


def render_markdown(catalogue: MetricCatalogue) -> str:
    """The metric catalogue as a markdown document (docs/metric-catalogue.md)."""
    out = ["# Metric catalogue: what gold publishes", "",
           "Generated by `healthlake metrics-doc` from the `metrics` and `standard_population` "
           "configuration (`conf/base/metrics.yaml`); do not edit by hand.", "",
           "Population denominators come from the reference population "
           "(`reference/population.csv`: district, 5-year age band, sex), never from the "
           "health-record registry: residents without a record are residents all the same. "
           "Metrics over the population therefore exist for the city and its districts only. "
           "Ages are at the end of the period; rates over a quarter or month are not "
           "annualised.", "",
           "| metric | 名称 | name | unit | grains |", "|---|---|---|---|---|"]
    ordered = [(mid, m) for kind in KIND_TITLES for mid, m in catalogue.by_kind(kind).items()]
    for mid, m in ordered:
        out.append(f"| [`{mid}`](#{mid}) | {_cell(m.name_zh)} | {_cell(m.name_en)} | "
                   f"{_UNITS[m.unit]} | {', '.join(m.grains)} |")
    for kind, title in KIND_TITLES.items():
        metrics = catalogue.by_kind(kind)
        if not metrics:
            continue
        out += ["", f"## {title}"]
        for mid, m in metrics.items():
            out += _render_metric(mid, m)
    out += ["", "## Grains", "", "| grain | meaning |", "|---|---|"]
    out += [f"| `{g}` | {_cell(text)} |" for g, text in GRAIN_MEANING.items()]
    if catalogue.standard_population:
        total = sum(catalogue.standard_population.values())
        out += ["", "## Standard population", "",
                "Weights for direct age standardisation (`standard_population`): the share of "
                "each age band in the 2020 (seventh) national census of China, approximate "
                "(from published band counts, rounded). A conf/local override standardises to "
                "another population.", "",
                "| age band | weight |", "|---|---|"]
        out += [f"| {band} | {w:.4f} |" for band, w in catalogue.standard_population.items()]
        out.append(f"| total | {total:.4f} |")
    return "\n".join(out) + "\n"


def _render_metric(mid: str, m: Metric) -> list[str]:
    sources = [f"`{t}`" for t in m.source_tables] + [
        f"`{REFERENCE_FILES[r]}`" for r in m.reference_data]
    rows = [("numerator", m.numerator), ("denominator", _denominator(m)),
            ("unit", _UNITS[m.unit]), ("grains", ", ".join(m.grains)),
            ("direction", m.direction.replace("_", " ")),
            ("sources", ", ".join(sources)), ("written to", f"`{m.output_table}`")]
    if m.standardisation:
        rows.append(("standardisation", f"{m.standardisation} (direct, standard population "
                                        "below)"))
    if m.on_target:
        rows.append(("on target", m.on_target))
    if m.derived_from:
        rows.append(("derived from", ", ".join(f"[`{d}`](#{d})" for d in m.derived_from)))
    if m.sub_index:
        rows.append(("sub-index", m.sub_index))
    if m.notes:
        rows.append(("notes", m.notes))
    return (["", f"### {mid}", "", f"**{_cell(m.name_zh)}** · {_cell(m.name_en)}", "",
             _cell(m.definition), "", "| | |", "|---|---|"]
            + [f"| {name} | {_cell(value)} |" for name, value in rows])


def write(path: Path = DEFAULT_OUTPUT, settings: Settings | None = None) -> Path:
    """Render the catalogue of ``settings`` (default: the configuration) into ``path``."""
    catalogue = load_catalogue(settings if settings is not None else load())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown(catalogue), encoding="utf-8")
    return path

