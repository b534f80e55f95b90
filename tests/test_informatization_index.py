"""The informatization index on a hand-worked example (normalisation, weights, scores, ranks,
change), and configuration alone changing it: a weight, and a whole new indicator."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from jobs.config import PROJECT_ROOT, ConfigError
from jobs.gold import index as I
from tests.conftest import settings_env

NAN = float("nan")


def spec(normalisation="bounds", weighting="expert") -> I.IndexSpec:
    ind = {
        "a": I.Indicator("data_governance", "governance", "higher_is_better", [0, 100], 3.0),
        "b": I.Indicator("data_governance", "governance", "higher_is_worse", [0, 10], 1.0),
        "c": I.Indicator("infrastructure", "construction", "higher_is_better", [0, 8], 1.0),
        "d": I.Indicator("business_coordination", "application", "higher_is_better", [50, 100],
                         1.0),
    }
    return I.IndexSpec(normalisation, weighting,
                       {"governance": 0.5, "construction": 0.25, "application": 0.25}, ind)


def raw(year=2024) -> pd.DataFrame:
    values = {("city", "C"): {"a": 70, "b": 3.5, "c": 6, "d": NAN},
              ("district", "D1"): {"a": 80, "b": 2, "c": 4, "d": 75},
              ("district", "D2"): {"a": 60, "b": 5, "c": 8, "d": 40}}
    return pd.DataFrame([(year, level, code, code, i, float(v))
                         for (level, code), vals in values.items() for i, v in vals.items()],
                        columns=["year", "area_level", "area_code", "area_name", "indicator_id",
                                 "raw_value"])


def table(df: pd.DataFrame, column: str) -> dict:
    return {(r.area_code, r.indicator_id if "indicator_id" in df else r.index_name):
            getattr(r, column) for r in df.itertuples()}


def test_bounds_normalisation_reverses_worse_indicators_and_clips():
    n = table(I.normalise(raw(), spec()), "normalised")
    assert n[("D1", "a")] == pytest.approx(0.8)
    assert n[("D1", "b")] == pytest.approx(0.8)      # (10 - 2) / 10: fewer is better
    assert n[("D2", "d")] == 0.0                      # 40 is below the lower bound 50
    assert n[("C", "c")] == pytest.approx(0.75)
    assert math.isnan(n[("C", "d")])                  # no value stays no value


def test_across_areas_normalisation_uses_the_districts_range():
    n = table(I.normalise(raw(), spec("across_areas")), "normalised")
    assert (n[("D1", "a")], n[("D2", "a")], n[("C", "a")]) == pytest.approx((1.0, 0.0, 0.5))
    assert (n[("D1", "b")], n[("D2", "b")], n[("C", "b")]) == pytest.approx((1.0, 0.0, 0.5))


def test_expert_weights_scores_ranks_and_change_by_hand():
    previous = pd.DataFrame({"year": [2023], "area_level": ["district"], "area_code": ["D1"],
                             "index_name": ["total"], "score": [60.0]})
    ind, scores = I.compute(raw(), spec(), previous)
    w = table(ind, "weight")
    assert (w[("D1", "a")], w[("D1", "b")], w[("D1", "c")]) == pytest.approx((0.75, 0.25, 1.0))
    s = table(scores, "score")
    # D1: governance 100 (0.75 x 0.8 + 0.25 x 0.8) = 80, construction 50, application 50,
    #     total 0.5 x 80 + 0.25 x 50 + 0.25 x 50 = 65.
    assert (s[("D1", "governance")], s[("D1", "construction")], s[("D1", "application")],
            s[("D1", "total")]) == pytest.approx((80, 50, 50, 65))
    # D2: governance 100 (0.75 x 0.6 + 0.25 x 0.5) = 57.5, construction 100, application 0,
    #     total 28.75 + 25 + 0 = 53.75.
    assert (s[("D2", "governance")], s[("D2", "total")]) == pytest.approx((57.5, 53.75))
    # The city has no application indicator: total over the two sub-indices it has,
    # (0.5 x 68.75 + 0.25 x 75) / 0.75.
    assert math.isnan(s[("C", "application")])
    assert s[("C", "total")] == pytest.approx((0.5 * 68.75 + 0.25 * 75) / 0.75)
    rank = table(scores, "rank")
    assert (rank[("D1", "total")], rank[("D2", "total")], rank[("C", "total")]) == (1, 2, 1)
    change = table(scores, "change")
    assert change[("D1", "total")] == pytest.approx(5.0)
    assert math.isnan(change[("D2", "total")])


def test_entropy_weights_by_hand():
    # Governance over the districts: a is 0.8 and 0.6, b is 0.8 and 0.5 (normalised).
    # e_a = -(4/7 ln 4/7 + 3/7 ln 3/7) / ln 2 = 0.985228; e_b = 0.961237;
    # w_a = (1 - e_a) / (2 - e_a - e_b) = 0.275928, w_b = 0.724072.
    ind, scores = I.compute(raw(), spec(weighting="entropy"))
    w = table(ind, "weight")
    assert (w[("D1", "a")], w[("D1", "b")]) == pytest.approx((0.275928, 0.724072), abs=1e-6)
    assert (w[("C", "a")], w[("C", "b")]) == pytest.approx((0.275928, 0.724072), abs=1e-6)
    s = table(scores, "score")
    assert s[("D2", "governance")] == pytest.approx(100 * (0.275928 * 0.6 + 0.724072 * 0.5),
                                                    abs=1e-4)


def test_entropy_gives_equal_weights_when_nothing_varies():
    w = I.entropy_weights(pd.DataFrame({"x": [0.5, 0.5], "y": [0.2, 0.2]}))
    assert w.to_dict() == {"x": 0.5, "y": 0.5}


# -- configuration alone changes the index ---------------------------------------------------


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    shutil.copytree(PROJECT_ROOT / "conf" / "base", tmp_path / "conf" / "base")
    (tmp_path / "conf" / "local").mkdir()
    return tmp_path / "conf"


def _load(conf_dir: Path, tmp_path: Path):
    from jobs.config import load

    return load(conf_dir, environ=settings_env(tmp_path))


SURVEYS = [("I1", "D1", "2024Q1", True, 5, "4A", 10, 2, 100, 300.0),
           ("I1", "D1", "2023Q4", False, 3, "3", 4, 1, 100, 10.0),
           ("I2", "D1", "2024Q1", False, 2, "2", 2, 1, 50, 20.0),
           ("I3", "D2", "2024Q1", True, 6, "5A", 20, 6, 200, 900.0)]


def _survey_index(spark, settings) -> pd.DataFrame:
    """The index of three institutions from survey indicators only (data indicators absent)."""
    surveys = spark.createDataFrame(
        [s[:1] + s[2:] for s in SURVEYS],
        "institution_id string, survey_period string, has_5g_link boolean, emr_level int, "
        "interop_level string, n_online_services int, n_it_staff int, n_staff int, "
        "it_budget_wan_yuan double")
    institutions = spark.createDataFrame(sorted({(s[0], s[1]) for s in SURVEYS}),
                                         "institution_id string, district_code string")
    spec = I.load_index(settings)
    raw = I.survey_values(surveys, institutions, spec, 2024)
    raw = raw.assign(year=2024, area_name=raw["area_code"])
    return raw, spec


def test_survey_indicators_take_each_institutions_latest_answer(spark, conf_dir, tmp_path):
    raw, _ = _survey_index(spark, _load(conf_dir, tmp_path))
    v = table(raw, "raw_value")
    assert v[("I1", "idx_emr_level")] == 5               # 2024Q1, not 2023Q4
    assert v[("D1", "idx_emr_level")] == pytest.approx(3.5)
    assert v[("440400", "idx_5g_link_share")] == pytest.approx(200 / 3)
    assert v[("D1", "idx_interop_level")] == pytest.approx((5 + 2) / 2)   # 4A = 5, 2 = 2
    assert v[("D1", "idx_it_staff_ratio")] == pytest.approx(100 * 3 / 150)


def test_changing_a_weight_in_configuration_changes_the_index(spark, conf_dir, tmp_path):
    raw, spec = _survey_index(spark, _load(conf_dir, tmp_path))
    before = table(I.compute(raw, spec)[1], "score")
    (conf_dir / "local" / "index.yaml").write_text(
        "index:\n  indicators:\n    idx_emr_level:\n      weight: 5.0\n")
    raw, spec = _survey_index(spark, _load(conf_dir, tmp_path))
    assert spec.indicators["idx_emr_level"].weight == 5.0
    after = table(I.compute(raw, spec)[1], "score")
    assert after[("D1", "construction")] != pytest.approx(before[("D1", "construction")])
    assert after[("D1", "application")] == pytest.approx(before[("D1", "application")])


def test_adding_an_indicator_in_configuration_changes_the_index(spark, conf_dir, tmp_path):
    raw, spec = _survey_index(spark, _load(conf_dir, tmp_path))
    before = table(I.compute(raw, spec)[1], "score")
    (conf_dir / "local" / "metrics.yaml").write_text("""
metrics:
  idx_it_budget:
    name_zh: 信息化投入（指数指标）
    name_en: IT budget (index indicator)
    definition: Mean IT spending of the area's institutions, in 10,000 yuan.
    numerator: IT spending reported in the latest survey of the year.
    denominator: Institutions with a survey answer.
    unit: ratio
    grains: [city, district, institution, year]
    direction: higher_is_better
    kind: informatization_indicator
    source_tables: [silver.institution_survey]
    sub_index: governance
    output_table: gold.index_indicator
""")
    (conf_dir / "local" / "index.yaml").write_text("""
index:
  indicators:
    idx_it_budget:
      theme: development_environment
      sub_index: governance
      survey: it_budget_wan_yuan
      aggregate: mean
      direction: higher_is_better
      bounds: [0, 1000]
      weight: 0.5
""")
    raw, spec = _survey_index(spark, _load(conf_dir, tmp_path))
    ind, scores = I.compute(raw, spec)
    v = table(ind, "raw_value")
    assert v[("I3", "idx_it_budget")] == 900.0
    after = table(scores, "score")
    # I3 had IT staff 3 per 100 (normalised 1.0); its budget 900 / 1000 lowers governance.
    assert before[("I3", "governance")] == pytest.approx(100.0)
    assert after[("I3", "governance")] == pytest.approx(100 * (0.2 * 1.0 + 0.5 * 0.9) / 0.7)


def test_an_indicator_outside_the_catalogue_is_refused(conf_dir, tmp_path):
    (conf_dir / "local" / "index.yaml").write_text(
        "index:\n  indicators:\n    idx_unknown:\n      theme: innovation\n"
        "      sub_index: construction\n      survey: emr_level\n      aggregate: mean\n"
        "      direction: higher_is_better\n      bounds: [0, 8]\n      weight: 1\n")
    with pytest.raises(ConfigError, match=r"local/index.yaml.*idx_unknown.*catalogue entry"):
        I.load_index(_load(conf_dir, tmp_path))
