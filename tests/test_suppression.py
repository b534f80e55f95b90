"""Small-cell suppression (pure pandas, no Spark): primary cells, complements so that no
suppressed cell comes back from a row, column or hierarchy total, k from configuration."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from jobs.config import ConfigError
from jobs.publish.settings import SuppressionRule, load_publish
from jobs.publish.suppression import (
    SUPPRESSED,
    SuppressionError,
    equations,
    primary,
    recoverable,
    suppress,
    verify,
)
from tests.conftest import make_settings

GRAINS = ["district_code", "sex"]
RULE = SuppressionRule(k=10, count_columns=["numerator"])
# The tests' own labels: what is published is one marker for every suppressed cell.
PRIMARY, COMPLEMENTARY = "primary", "complementary"


def explained(table: pd.DataFrame, grains: list[str], rule: SuppressionRule) -> pd.DataFrame:
    """``suppress(table)`` as published (one marker, asserted), with the marker replaced by the
    tests' labels: primary where the count is small, complementary otherwise."""
    out = suppress(table, grains, rule)
    assert set(out[SUPPRESSED].dropna()) <= {SUPPRESSED}  # never a word saying which is small
    label = out[SUPPRESSED].where(out[SUPPRESSED].isna(), COMPLEMENTARY)
    label[primary(table, rule) & out[SUPPRESSED].notna()] = PRIMARY
    return out.assign(**{SUPPRESSED: label})


def district_by_sex(cells: dict[tuple[str, str], int]) -> pd.DataFrame:
    """A two-way table with its row, column and grand totals, in the long format of gold
    (null = all)."""
    districts = sorted({d for d, _ in cells})
    sexes = sorted({s for _, s in cells})
    rows = [(d, s, n) for (d, s), n in cells.items()]
    rows += [(d, None, sum(n for (dd, _), n in cells.items() if dd == d)) for d in districts]
    rows += [(None, s, sum(n for (_, ss), n in cells.items() if ss == s)) for s in sexes]
    rows += [(None, None, sum(cells.values()))]
    out = pd.DataFrame(rows, columns=[*GRAINS, "numerator"])
    out["value"] = out["numerator"] / 2.0
    return out


def reasons(table: pd.DataFrame) -> dict[tuple, str]:
    """(district, sex) -> reason, for the suppressed cells."""
    hidden = table[table[SUPPRESSED].notna()]
    return {(None if pd.isna(d) else d, None if pd.isna(s) else s): r
            for d, s, r in hidden[[*GRAINS, SUPPRESSED]].itertuples(index=False)}


def cell(table: pd.DataFrame, district: str | None, sex: str | None) -> pd.Series:
    d = table["district_code"].isna() if district is None else table["district_code"] == district
    s = table["sex"].isna() if sex is None else table["sex"] == sex
    return table[d & s].iloc[0]


TABLE = district_by_sex({("D1", "female"): 20, ("D1", "male"): 3,
                         ("D2", "female"): 25, ("D2", "male"): 15,
                         ("D3", "female"): 12, ("D3", "male"): 30})


def test_primary_alone_is_recoverable_from_totals_complements_protect_it():
    out = explained(TABLE, GRAINS, RULE)
    # Primary suppression alone: the one small cell comes back as its row total minus the
    # other cell of the row (and as its column total minus the others).
    naive = TABLE.assign(**{SUPPRESSED: out[SUPPRESSED].where(out[SUPPRESSED] == PRIMARY)})
    assert naive[SUPPRESSED].eq(PRIMARY).sum() == 1
    d1_male = cell(naive, "D1", "male").name
    assert recoverable(naive, GRAINS) == [d1_male, d1_male]  # by row and by column
    published = naive.loc[naive[SUPPRESSED].isna()]
    row_total = published[(published["district_code"] == "D1") & published["sex"].isna()]
    other = published[(published["district_code"] == "D1") & (published["sex"] == "female")]
    assert row_total["numerator"].iloc[0] - other["numerator"].iloc[0] == 3

    # With complements nothing comes back from any row, column or grand total.
    assert recoverable(out, GRAINS) == []
    assert cell(out, "D1", "male")[SUPPRESSED] == PRIMARY
    # Row D1 needs a second cell (female, the only one); column male its smallest other cell.
    assert cell(out, "D1", "female")[SUPPRESSED] == COMPLEMENTARY
    assert cell(out, "D2", "male")[SUPPRESSED] == COMPLEMENTARY
    # Every row and column holding a suppressed cell holds at least two (or its total).
    for total, members in equations(out[GRAINS]):
        hidden = out.loc[[total, *members], SUPPRESSED].notna().sum()
        assert hidden != 1
    # Numerator and rate of every suppressed cell are blank, the others untouched.
    hidden = out[SUPPRESSED].notna()
    assert out.loc[hidden, ["numerator", "value"]].isna().all().all()
    pd.testing.assert_frame_equal(out.loc[~hidden, ["numerator", "value"]],
                                  TABLE.loc[~hidden, ["numerator", "value"]].astype(float))
    # The grand total is still published: the complements are cells, not totals.
    assert pd.isna(cell(out, None, None)[SUPPRESSED])


def test_what_is_published_is_verified_whatever_suppressed_it(monkeypatch, tmp_path):
    """Every export and report checks its tables as published: a small count shown, or a
    suppressed cell that totals give back, stops it before anything is written."""
    from jobs.publish import export
    from jobs.publish import suppression as S

    verify(suppress(TABLE, GRAINS, RULE), GRAINS, RULE)  # well protected: passes
    shown = TABLE.assign(**{SUPPRESSED: None})
    with pytest.raises(SuppressionError, match="under k=10 would be published"):
        verify(shown, GRAINS, RULE)
    out = explained(TABLE, GRAINS, RULE)
    naive = TABLE.assign(**{SUPPRESSED: out[SUPPRESSED].where(out[SUPPRESSED] == PRIMARY)})
    with pytest.raises(SuppressionError, match="could be recomputed"):
        verify(naive, GRAINS, RULE)

    # The export path itself: with complements switched off, it refuses.
    spec = load_publish(make_settings(tmp_path))
    rows = TABLE.assign(metric_id="m", period_type="year", period="2024")
    for c in export.GRAIN_COLUMNS:
        if c not in rows.columns:
            rows[c] = None
    export.suppress_metric_rows(rows, None, rows, spec)  # as configured: passes
    monkeypatch.setattr(S, "complementary", lambda first, sizes, eqs: first & False)
    with pytest.raises(SuppressionError):
        export.suppress_metric_rows(rows, None, rows, spec)


def test_nothing_is_suppressed_when_every_cell_reaches_k():
    table = district_by_sex({("D1", "female"): 10, ("D1", "male"): 11,
                             ("D2", "female"): 40, ("D2", "male"): 12})
    out = explained(table, GRAINS, RULE)
    assert out[SUPPRESSED].isna().all()
    pd.testing.assert_frame_equal(out.drop(columns=SUPPRESSED), table.astype(
        {"numerator": float}))


def test_k_is_configurable_and_zeros_are_published_unless_configured():
    table = district_by_sex({("D1", "female"): 0, ("D1", "male"): 12,
                             ("D2", "female"): 14, ("D2", "male"): 30})
    assert suppress(table, GRAINS, RULE)[SUPPRESSED].isna().all()
    strict = explained(table, GRAINS, dataclasses.replace(RULE, k=13))
    assert reasons(strict) == {("D1", "male"): PRIMARY, ("D1", None): PRIMARY,  # 12 < 13
                               ("D2", "male"): COMPLEMENTARY, ("D2", None): COMPLEMENTARY,
                               # the row's only other cell: a zero, but better than the total
                               ("D1", "female"): COMPLEMENTARY, ("D2", "female"): COMPLEMENTARY}
    assert recoverable(strict, GRAINS) == []
    assert not primary(table, dataclasses.replace(RULE, k=13)).iloc[0]  # 0 is not small
    zeros = explained(table, GRAINS, dataclasses.replace(RULE, suppress_zeros=True))
    assert cell(zeros, "D1", "female")[SUPPRESSED] == PRIMARY


def test_a_small_denominator_suppresses_the_cell_too():
    table = pd.DataFrame({"sex": ["female", "male", None], "numerator": [10.0, 12.0, 22.0],
                          "denominator": [11.0, 400.0, 411.0]})
    table["value"] = 100 * table["numerator"] / table["denominator"]
    out = explained(table, ["sex"], SuppressionRule(k=10))
    assert out[SUPPRESSED].isna().all()
    out = explained(table, ["sex"], SuppressionRule(k=12))
    assert list(out[SUPPRESSED].fillna("")) == [PRIMARY, COMPLEMENTARY, ""]  # 10 < 12
    assert out.loc[0, ["numerator", "denominator", "value"]].isna().all()


def test_hierarchies_protect_towns_against_the_district_and_the_city():
    rows = [("D1", "T1", 4), ("D1", "T2", 50), ("D1", None, 54),
            ("D2", "T3", 60), ("D2", None, 60), (None, None, 114)]
    table = pd.DataFrame(rows, columns=["district_code", "town_code", "numerator"])
    rule = dataclasses.replace(RULE, implied_grains={"town_code": ["district_code"]})
    out = explained(table, ["district_code", "town_code"], rule)
    assert list(out[SUPPRESSED].fillna("")) == [PRIMARY, COMPLEMENTARY, "", "", "", ""]
    # The towns of the city add up to the city as well: a relation the hierarchy adds.
    assert (5, [0, 1, 3]) in [(t, sorted(m)) for t, m in equations(
        table[["district_code", "town_code"]], rule.implied_grains)]
    assert recoverable(out, ["district_code", "town_code"], rule.implied_grains) == []
    # A small district of a single town: the district's total goes with it, and complements
    # at both levels (another district, another town of the city).
    lone = table.assign(numerator=[20, 50, 70, 6, 6, 76])
    out = explained(lone, ["district_code", "town_code"], rule)
    assert list(out[SUPPRESSED].fillna("")) == [COMPLEMENTARY, "", COMPLEMENTARY, PRIMARY,
                                                 PRIMARY, ""]
    assert recoverable(out, ["district_code", "town_code"], rule.implied_grains) == []


def test_the_configured_rule_and_its_validation(tmp_path):
    settings = make_settings(tmp_path)
    spec = load_publish(settings)
    assert spec.suppression.k == 10 and not spec.suppression.suppress_zeros
    assert "k = 10" in spec.suppression.describe()
    assert spec.label("district_code") == "区县代码 District code"
    settings = make_settings(tmp_path, HEALTHLAKE_PUBLISH__SUPPRESSION__K="5")
    assert load_publish(settings).suppression.k == 5
    with pytest.raises(ConfigError, match="publish.suppression.k"):
        load_publish(make_settings(tmp_path, HEALTHLAKE_PUBLISH__SUPPRESSION__K="1"))
    with pytest.raises(ConfigError, match="restricted zone is never open"):
        load_publish(make_settings(tmp_path,
                                   HEALTHLAKE_PUBLISH__SQL__ZONES="[curated, restricted]"))
    with pytest.raises(ConfigError, match="publish.tables.bronze.encounters"):
        load_publish(make_settings(
            tmp_path, HEALTHLAKE_PUBLISH__TABLES='{bronze.encounters: {period_kind: date, '
                                                 'period_column: extract_date}}'))
