"""Issue 26, item 6: suppressed cells must not come back from a whole release.

An attacker reads an exported workbook back (every metric for a year AND its month, with
gold.index_indicator and gold.index_score in the same file) and solves every relation he can
use at once with scipy's linprog: each cube's totals along every grain (with the hierarchies
town -> district, institution -> district and tier), the year = its month, the same count
printed in two metrics. He is given exactly the candidate relations that hold in the true
values (the strongest attacker: he knows which relations are structural). A hidden small
count (1 .. k-1: what suppression protects) that he bounds to an interval narrower than k,
or exactly, is recovered; the goal is none. (A hidden count of k or more is publishable by the
rule itself: learning it discloses no small group.)

The attacker below is written from the files and the truth only (pandas, openpyxl, scipy), not
with the release audit's code, so it checks the audit rather than repeating it.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import chain, combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

GRAINS = ["district_code", "town_code", "institution_id", "tier", "to_tier", "channel",
          "condition", "icd10_category", "age_band", "sex"]
IMPLIED = {"town_code": ["district_code"], "institution_id": ["district_code", "tier"]}
COUNTS = ["numerator", "denominator"]
CUBE = ["metric_id", "period_type", "period"]
K = 10
YEAR, MONTH = "2024", "2024-04"
MARKER = "suppressed"


# -- the attacker (files in, recovered cells out) ------------------------------------------------


def read_workbook(path: Path) -> dict[str, pd.DataFrame]:
    """Every data sheet of an export workbook with its column names as in gold (the About
    sheet lists 'column, label' pairs)."""
    from openpyxl import load_workbook

    wb = load_workbook(path, read_only=True)
    about = list(wb[wb.sheetnames[0]].iter_rows(values_only=True))
    start = next(i for i, r in enumerate(about) if r and r[0] == "columns 列名")
    column_of = {label: column for column, label in about[start + 1:] if column}
    sheets = {}
    for name in wb.sheetnames[1:]:
        frame = pd.read_excel(path, sheet_name=name, header=1, dtype=object)
        sheets[name] = frame.rename(columns=column_of)
    return sheets


def metric_rows(sheets: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The metric sheets' rows in one frame: grains as text (None = all), counts as floats."""
    parts = [s for s in sheets.values() if "metric_id" in s.columns and "numerator" in s.columns]
    rows = pd.concat(parts, ignore_index=True)
    # an age-standardised rate's numerator and denominator are standard-population weights
    # (the About sheet: standardisation age), not counts of persons
    rows = rows[~rows["metric_id"].astype(str).str.endswith("_age_std")]
    for c in GRAINS:
        rows[c] = rows[c].map(lambda v: None if pd.isna(v) else str(v)) if c in rows else None
    rows["period"] = rows["period"].astype(str)
    for c in [*COUNTS, "value"]:
        rows[c] = pd.to_numeric(rows[c])
    return rows


def _key(row: pd.Series) -> tuple:
    return tuple(None if pd.isna(row[g]) else str(row[g]) for g in GRAINS)


def candidate_relations(rows: pd.DataFrame) -> dict[object, list[list[tuple]]]:
    """Every relation an attacker could try, as terms (row key, column, coefficient) summing to
    zero, a row key being (metric, period, grains); grouped: a group is usable when every
    relation of it holds (a total or a period relation is its own group; 'metric A's count is
    metric B's count' is one group over every period and grains where both are published)."""
    keys = {(m, p, _key(r)) for m, p, r in zip(rows["metric_id"], rows["period"],
                                                 (r for _, r in rows.iterrows()), strict=True)}
    relations: dict[object, list[list[tuple]]] = defaultdict(list)
    # cube totals along every grain (and the hierarchies' implied grains)
    groups: dict[tuple, list[tuple]] = defaultdict(list)
    for metric, period, key in keys:
        for g, value in zip(GRAINS, key, strict=True):
            if value is None:
                continue
            coarser = [c for c in IMPLIED.get(g, []) if key[GRAINS.index(c)] is not None]
            for dropped in chain.from_iterable(combinations(coarser, n)
                                               for n in range(len(coarser) + 1)):
                parent = list(key)
                for d in (g, *dropped):
                    parent[GRAINS.index(d)] = None
                total = (metric, period, tuple(parent))
                if total in keys:
                    groups[(total, g)].append((metric, period, key))
    for (total, _), members in groups.items():
        for c in COUNTS:
            relations[(total, c)].append([(total, c, -1.0)] + [(m, c, 1.0) for m in members])
    # the year = its month (the only month published with it)
    for metric, period, key in keys:
        if period == YEAR and (metric, MONTH, key) in keys:
            for c in COUNTS:
                relations[("period", metric, key, c)].append(
                    [((metric, YEAR, key), c, -1.0), ((metric, MONTH, key), c, 1.0)])
    # the same count in two metrics, same period and grains
    by_area: dict[tuple, list[str]] = defaultdict(list)
    for metric, period, key in keys:
        by_area[(period, key)].append(metric)
    for (period, key), metrics in by_area.items():
        refs = [((m, period, key), c) for m in sorted(metrics) for c in COUNTS]
        for i, a in enumerate(refs):
            for b in refs[i + 1:]:
                relations[("shared", a[0][0], a[1], b[0][0], b[1])].append(
                    [(a[0], a[1], 1.0), (b[0], b[1], -1.0)])
    return relations


def recovered_cells(published: pd.DataFrame, truth: pd.DataFrame, k: int = K) -> list[dict]:
    """Hidden small counts (true value 1 .. k-1) of ``published`` that the relations holding in
    ``truth`` (same metric, period and grains) bound to an interval narrower than k."""
    from scipy.optimize import linprog
    from scipy.sparse import csr_matrix

    def index(frame):
        return {(m, str(p), _key(r)): r for (_, r), m, p in
                zip(frame.iterrows(), frame["metric_id"], frame["period"], strict=True)}

    shown, true = index(published), index(truth)
    hidden = {key for key, r in shown.items() if isinstance(r["suppressed"], str)}

    def value(ref, column):
        v = true[ref][column]
        return None if pd.isna(v) else float(v)

    def holds(terms):
        values = [value(ref, c) for ref, c, _ in terms]
        return None not in values and abs(sum(
            v * coef for v, (_, _, coef) in zip(values, terms, strict=True))) < 1e-6

    relations = []
    for group in candidate_relations(published).values():
        if all(holds(terms) for terms in group):  # else useless to the attacker (or a guess)
            relations += group
    variables = [(ref, c) for ref in hidden for c in COUNTS if value(ref, c) is not None]
    position = {v: i for i, v in enumerate(variables)}
    parent = list(range(len(variables)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    equations = []
    for terms in relations:
        coefs, constant = defaultdict(float), 0.0
        for ref, c, coef in terms:
            if (ref, c) in position:
                coefs[position[(ref, c)]] += coef
            else:
                constant -= coef * float(shown[ref][c])
        coefs = {v: x for v, x in coefs.items() if x}
        if coefs:
            equations.append((coefs, constant))
            first, *others = coefs
            for o in others:
                parent[find(o)] = find(first)
    by_component = defaultdict(list)
    for n, (coefs, _) in enumerate(equations):
        by_component[find(next(iter(coefs)))].append(n)
    out = []
    for eqs in by_component.values():
        members = sorted({v for n in eqs for v in equations[n][0]})
        local = {v: i for i, v in enumerate(members)}
        entries = [(row, local[v], x) for row, n in enumerate(eqs)
                   for v, x in equations[n][0].items()]
        a = csr_matrix(([x for _, _, x in entries], ([r for r, _, _ in entries],
                                                       [c for _, c, _ in entries])),
                       shape=(len(eqs), len(members)))
        b = np.array([equations[n][1] for n in eqs])
        point = np.array([value(*variables[v]) for v in members])
        todo = {local[v] for v in members if 0.5 <= value(*variables[v]) < k}

        def solve(c, upper=None, a=a, b=b):
            res = linprog(c, A_eq=a, b_eq=b, bounds=(0, upper), method="highs")
            return res if res.status == 0 else None

        # any feasible point k away from the truth proves an interval of k: push all up, down
        for sign in (-1.0, 1.0):
            while todo:
                res = solve(np.array([sign if i in todo else 0.0 for i in range(len(point))]),
                            10 * float(point.sum()) + 10 * k)
                far = {i for i in todo if res is not None and abs(res.x[i] - point[i]) >= k}
                todo -= far
                if not far:
                    break
        for i in sorted(todo):
            c = np.zeros(len(members))
            c[i] = 1.0
            low, high = solve(c), solve(-c)
            lo = low.fun if low is not None else 0.0
            hi = -high.fun if high is not None else float("inf")
            if hi - lo < k - 1e-6:
                ref, column = variables[members[i]]
                out.append({"metric_id": ref[0], "period": ref[1], "grains": ref[2],
                            "column": column, "low": lo, "high": hi, "true": float(point[i])})
    return out


def recovered_count(recoveries: list[dict]) -> int:
    """Hidden cells (not counts) recovered."""
    return len({(r["metric_id"], r["period"], r["grains"]) for r in recoveries})


# -- the tests -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def month_lake(spark, gold_lake):
    """The session city's gold for April 2024 as well (its only month with data)."""
    from jobs.gold import job
    from jobs.gold.metrics import Period
    from tests.conftest import ER_DAYS

    job.run_days(spark, gold_lake, ER_DAYS, periods=[Period.month(2024, 4)])
    return gold_lake


@pytest.fixture(scope="module")
def year_and_month_export(spark, month_lake, tmp_path_factory):
    """One export of every metric for 2024 and 2024-04 with the index tables, as a workbook."""
    from jobs.publish import export

    out = tmp_path_factory.mktemp("release")
    summary = export.run(spark, month_lake, ["gold.metric_value", "gold.index_indicator",
                                             "gold.index_score"], [YEAR, MONTH], "xlsx", out)
    (path,) = map(Path, summary["files"])
    return summary, read_workbook(path)


def _truth(spark, settings) -> pd.DataFrame:
    from jobs.lake import read_table

    rows = (read_table(spark, settings, "gold.metric_value")
            .where(f"period IN ('{YEAR}', '{MONTH}')").toPandas())
    for c in GRAINS:
        rows[c] = rows[c].map(lambda v: None if pd.isna(v) else str(v))
    rows["period"] = rows["period"].astype(str)
    return rows


def test_no_hidden_cell_comes_back_from_a_year_and_its_month_solved_together(
        spark, month_lake, year_and_month_export):
    summary, sheets = year_and_month_export
    published = metric_rows(sheets)
    assert set(published["period"]) == {YEAR, MONTH}
    hidden = published["suppressed"].notna()
    assert hidden.sum() > 0 and (~hidden).sum() > 0
    recovered = recovered_cells(published, _truth(spark, month_lake))
    assert recovered_count(recovered) == 0, (summary["release_audit"], recovered[:5])


def test_one_marker_and_k_under_the_configured_k_is_refused(spark, month_lake,
                                                            year_and_month_export, tmp_path):
    from jobs.config import ConfigError
    from jobs.publish import analysis, export, report

    _, sheets = year_and_month_export
    for name, sheet in sheets.items():
        if "suppressed" in sheet.columns:
            assert set(sheet["suppressed"].dropna()) <= {MARKER}, name
    for call in (lambda: export.run(spark, month_lake, ["ehr_coverage"], YEAR, "csv", tmp_path,
                                    k=5),
                 lambda: report.run(spark, month_lake, int(YEAR), tmp_path / "r.html", k=2),
                 lambda: analysis.yearly_data(spark, month_lake, int(YEAR), k=9)):
        with pytest.raises(ConfigError, match="below the configured k = 10"):
            call()
    assert not list(tmp_path.iterdir())  # nothing written


def test_index_tables_print_nothing_a_metric_sheet_hides(year_and_month_export, month_lake):
    _, sheets = year_and_month_export
    published = metric_rows(sheets)
    year = published[(published["period"] == YEAR)
                     & published[[g for g in GRAINS if g not in ("district_code",
                                                                 "institution_id", "tier")]]
                     .isna().all(axis=1)]
    hidden_areas = set()
    for r in year[year["suppressed"].notna()].itertuples():
        if r.institution_id is not None:
            hidden_areas.add((r.metric_id, "institution", r.institution_id))
        elif r.tier is None:
            hidden_areas.add((r.metric_id, "district" if r.district_code else "city",
                              r.district_code))
    assert hidden_areas, "the city has small institution or district cells"
    indicators = next(s for s in sheets.values() if "indicator_id" in s.columns)
    scores = next(s for s in sheets.values() if "index_name" in s.columns)
    blanked = set()
    for r in indicators.itertuples():
        metric = str(r.source).removeprefix("metric:")
        area = None if r.area_level == "city" else str(r.area_code)
        if (metric, r.area_level, area) in hidden_areas:
            assert pd.isna(r.raw_value) and pd.isna(r.normalised), (metric, r.area_code)
            assert r.suppressed == MARKER
            blanked.add((r.area_level, str(r.area_code), r.sub_index))
    assert blanked
    # a score is a weighted sum of its indicators: none that holds a blanked one is printed
    for r in scores.itertuples():
        key = (r.area_level, str(r.area_code))
        holds = any((*key, sub) in blanked for sub in
                    ([r.index_name] if r.index_name != "total"
                     else ["governance", "construction", "application"]))
        if holds:
            assert pd.isna(r.score) and pd.isna(r.change) and r.suppressed == MARKER, key
