"""The gold metric catalogue (conf/base/metrics.yaml): it loads, every metric is explained, a
mistake names its key, and docs/metric-catalogue.md is what the catalogue renders. No Spark."""

from __future__ import annotations

import dataclasses
import shutil
import typing
from pathlib import Path

import pytest

from jobs.config import PROJECT_ROOT, ConfigError, load
from jobs.gold.catalogue import (
    DEFAULT_OUTPUT,
    GRAIN_MEANING,
    Grain,
    band_bounds,
    load_catalogue,
    render_markdown,
)

BASE = PROJECT_ROOT / "conf" / "base"


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    """A copy of the committed conf/base (no conf/local, no environment) to break on purpose."""
    shutil.copytree(BASE, tmp_path / "conf" / "base")
    return tmp_path / "conf"


def write_local(conf_dir: Path, text: str) -> None:
    (conf_dir / "local").mkdir(exist_ok=True)
    (conf_dir / "local" / "metrics.yaml").write_text(text, encoding="utf-8")


def committed_catalogue(conf_dir: Path):
    return load_catalogue(load(conf_dir, environ={}))


def test_committed_catalogue_loads_and_covers_the_brief(conf_dir):
    catalogue = committed_catalogue(conf_dir)
    required = {
        "hypertension_prevalence_crude", "hypertension_prevalence_age_std",
        "diabetes_prevalence_crude", "diabetes_prevalence_age_std", "ehr_coverage",
        "ehr_dynamic_use_rate", "hypertension_management_rate",
        "hypertension_standardised_management_rate", "hypertension_control_rate",
        "diabetes_management_rate", "diabetes_standardised_management_rate",
        "diabetes_control_rate", "elderly_health_management_rate", "visits_per_1000",
        "diagnosis_count", "referrals_up", "referrals_down", "digital_referral_share",
        "mutual_recognition_rate", "dq_on_time_delivery_rate", "dq_completeness_rate",
        "dq_quarantine_rate", "dq_invalid_id_rate", "dq_duplicate_rate",
    }
    assert required <= set(catalogue.metrics)
    assert len(catalogue.by_kind("informatization_indicator")) >= 6
    assert {"tier", "channel"} <= set(catalogue.metric("visits_per_1000").grains)
    assert {"institution", "day"} <= set(catalogue.metric("dq_quarantine_rate").grains)
    for mid in ("hypertension_control_rate", "diabetes_control_rate"):
        assert catalogue.metric(mid).on_target
    assert catalogue.metric("hypertension_prevalence_age_std").standardisation == "age"


def test_every_metric_has_both_names_and_a_definition(conf_dir):
    for mid, m in committed_catalogue(conf_dir).metrics.items():
        assert m.name_zh.strip() and m.name_en.strip(), mid
        assert len(m.definition.split()) >= 8, f"{mid}: the definition is not a sentence"
        assert m.numerator.strip(), mid


def test_population_denominators_come_from_the_reference_population(conf_dir):
    catalogue = committed_catalogue(conf_dir)
    for mid in ("hypertension_prevalence_crude", "ehr_coverage", "visits_per_1000",
                "elderly_health_management_rate"):
        m = catalogue.metric(mid)
        assert m.uses_population, mid
        assert not {"town", "institution"} & set(m.grains), mid
    assert catalogue.metric("visits_per_1000").denominator is None


def test_standard_population_bands_are_the_generators_and_sum_to_one(conf_dir):
    from jobs.generate.population import age_band

    catalogue = committed_catalogue(conf_dir)
    ages = list(range(0, 100))
    generator_bands = list(dict.fromkeys(age_band(ages)))
    assert catalogue.age_bands == generator_bands
    assert abs(sum(catalogue.standard_population.values()) - 1) <= 0.001
    assert band_bounds("15-19") == (15, 19) and band_bounds("85+") == (85, None)


def test_every_grain_has_a_meaning():
    assert set(GRAIN_MEANING) == set(typing.get_args(Grain))


def test_misspelt_grain_names_its_key_and_file(conf_dir):
    write_local(conf_dir, "metrics:\n  ehr_coverage:\n    grains: [city, distrct]\n")
    with pytest.raises(ConfigError) as exc:
        committed_catalogue(conf_dir)
    message = str(exc.value)
    assert "'metrics.ehr_coverage.grains'" in message
    assert "distrct" in message and "conf/local/metrics.yaml" in message


@pytest.mark.parametrize("override, key, words", [
    ("metrics:\n  ehr_coverage:\n    unit: percentage\n", "metrics.ehr_coverage.unit",
     "percentage"),
    ("metrics:\n  ehr_coverage:\n    direction: up\n", "metrics.ehr_coverage.direction", "up"),
    ("metrics:\n  ehr_coverage:\n    kind: health\n", "metrics.ehr_coverage.kind", "health"),
    ("metrics:\n  ehr_coverage:\n    reference_data: [populaton]\n",
     "metrics.ehr_coverage.reference_data", "populaton"),
    ("metrics:\n  ehr_coverage:\n    source_tables: [silver.health_records]\n",
     "metrics.ehr_coverage.source_tables", "silver.health_records"),
    ("metrics:\n  ehr_coverage:\n    output_table: silver.person\n",
     "metrics.ehr_coverage.output_table", "gold table"),
    ("metrics:\n  ehr_coverage:\n    grains: [city, town]\n", "metrics.ehr_coverage.grains",
     "reference population"),
    ("metrics:\n  ehr_coverage:\n    denominator: null\n", "metrics.ehr_coverage.denominator",
     "needs a denominator"),
    ("metrics:\n  visits_per_1000:\n    reference_data: []\n",
     "metrics.visits_per_1000.reference_data", "per 1,000"),
    ("metrics:\n  diagnosis_count:\n    denominator: encounters\n",
     "metrics.diagnosis_count.denominator", "count"),
    ("metrics:\n  hypertension_prevalence_age_std:\n    grains: [city, age_band]\n",
     "metrics.hypertension_prevalence_age_std.grains", "age_band"),
    ("metrics:\n  idx_ehr_coverage:\n    derived_from: [ehr_coverag]\n",
     "metrics.idx_ehr_coverage.derived_from", "ehr_coverag"),
    ("metrics:\n  ehr_coverage:\n    sub_index: governance\n", "metrics.ehr_coverage.sub_index",
     "informatization"),
    ("metrics:\n  ehr_coverage:\n    colour: red\n", "metrics.ehr_coverage.colour",
     "unknown key"),
    ("standard_population:\n  \"0-4\": 0.5\n", "standard_population", "sum to"),
    ("standard_population:\n  \"90+\": 0.0\n", "standard_population.85+", "open-ended"),
])
def test_mistakes_name_their_key(conf_dir, override, key, words):
    write_local(conf_dir, override)
    with pytest.raises(ConfigError) as exc:
        committed_catalogue(conf_dir)
    assert f"'{key}" in str(exc.value) and words in str(exc.value)


def test_a_band_missing_from_the_middle_is_a_gap(conf_dir):
    settings = load(conf_dir, environ={})
    weights = {k: v for k, v in settings.standard_population.items() if k != "40-44"}
    weights["45-49"] += settings.standard_population["40-44"]
    with pytest.raises(ConfigError, match="'standard_population.45-49'.*without gap"):
        load_catalogue(dataclasses.replace(settings, standard_population=weights))


def test_metric_ids_are_snake_case(conf_dir):
    settings = load(conf_dir, environ={})
    metrics = {("EHR-coverage" if k == "ehr_coverage" else k): v
               for k, v in settings.metrics.items()}
    with pytest.raises(ConfigError, match="'metrics.EHR-coverage'.*snake_case"):
        load_catalogue(dataclasses.replace(settings, metrics=metrics))


def test_document_is_current(conf_dir):
    """docs/metric-catalogue.md is generated: regenerate with `healthlake metrics-doc`."""
    expected = render_markdown(committed_catalogue(conf_dir))
    assert DEFAULT_OUTPUT.read_text(encoding="utf-8") == expected, \
        "docs/metric-catalogue.md is stale: run `healthlake metrics-doc`"
    assert "do not edit by hand" in expected and "`healthlake metrics-doc`" in expected
    for mid in committed_catalogue(conf_dir).metrics:
        assert f"### {mid}\n" in expected
