"""One release checked as one system: everything published in one request (every sheet and file
of an export, a year with its months, the report) is audited together with linear programming.

Per cube (:mod:`jobs.publish.suppression`) small cells and their complements are blanked. An
attacker may still combine every published number with every additive relation he can know:
the totals of a cube along each grain, a year and its months, the same count printed in two
metrics. :func:`relations` generates those candidates from the true (unsuppressed) values and
keeps the ones that hold exactly -- the relations an attacker could use, whatever he knows.
:func:`audit` then bounds every hidden small count (numerator or denominator 1 .. k-1, what
the rule protects) with ``scipy.optimize.linprog`` (HiGHS): minimise and maximise it subject to
every kept relation, the published cells as constants, every hidden count >= 0 and a numerator
<= its denominator where that holds for the whole metric. One whose interval is narrower than k
(or exact) is exposed. :func:`protect` first applies one-relation rules (:func:`widen`: the
hidden part of a total must reach k; the cubes' complements), then suppresses, for each exposed
count, one more published cell of the nearest relation that has one (the smallest count that
reaches k, else the largest) and audits again, until nothing is exposed. The system is split
into connected components (counts linked by some relation), and LPs that push every open count
away from its true value settle most counts at once, so the audit stays fast.

A hidden count of k or more may come back: it is publishable by the rule itself.

Residual risks (documented in README "Publishing"): the LP is continuous (an integer program
can narrow an interval by less than one); relations outside the release (earlier releases,
outside knowledge, a rate standardised by age) are not known to it; a value that is not a
count (an age-standardised rate) is judged by its crude counts only.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from jobs.publish.settings import SuppressionRule
from jobs.publish.suppression import SUPPRESSED, SuppressionError, complementary, equations

log = logging.getLogger(__name__)

CUBE = ["metric_id", "period_type", "period"]
Ref = tuple[object, str]  # (row index, count column)


@dataclass
class Relation:
    """sum(coef * count) == 0 in the true values."""

    terms: list[tuple[Ref, float]]
    kind: str


@dataclass
class System:
    """The relations of a release and the inequalities (numerator <= denominator)."""

    equal: list[Relation] = field(default_factory=list)
    at_most: list[tuple[Ref, Ref]] = field(default_factory=list)  # a <= b


def _value(truth: pd.DataFrame, ref: Ref) -> float:
    v = truth.at[ref[0], ref[1]]
    return float("nan") if pd.isna(v) else float(v)


def _holds(truth: pd.DataFrame, terms: list[tuple[Ref, float]]) -> bool:
    values = [_value(truth, r) * c for r, c in terms]
    if any(np.isnan(values)):
        return False
    return abs(sum(values)) < 1e-6 * (1 + sum(abs(v) for v in values))


def period_bounds(label: str) -> tuple[str, str, str]:
    """(type, first month, last month) of '2024' | '2024Q2' | '2024-04' as 'YYYY-MM'."""
    label = str(label)
    if len(label) == 4:
        return "year", f"{label}-01", f"{label}-12"
    if "Q" in label:
        year, q = label.split("Q")
        first = 3 * int(q) - 2
        return "quarter", f"{year}-{first:02d}", f"{year}-{first + 2:02d}"
    return "month", label[:7], label[:7]


_FINER = {"year": ("quarter", "month"), "quarter": ("month",), "month": ()}


def relations(rows: pd.DataFrame, grain_columns: list[str], rule: SuppressionRule) -> System:
    """Every candidate relation of the release's metric rows that holds exactly in the true
    values: cube totals along each grain (with implied grains), a period = the finer periods
    of the release inside it (per finer type), a count equal to another metric's count for
    the same period and grains wherever both exist; and numerator <= denominator."""
    system = System()
    counts = [c for c in rule.count_columns if c in rows.columns]
    grains = [c for c in grain_columns if c in rows.columns]
    keyed = rows.assign(_key=[tuple(None if pd.isna(v) else v for v in r)
                              for r in rows[grains].itertuples(index=False, name=None)])
    # 1. within each cube: a total = the sum of its cells along one grain
    for _, cube in keyed.groupby(CUBE, sort=False, dropna=False):
        for total, members in equations(cube[grains], rule.implied_grains):
            for c in counts:
                terms = [((total, c), -1.0)] + [((m, c), 1.0) for m in members]
                if _holds(rows, terms):
                    system.equal.append(Relation(terms, "total"))
    # 2. across periods: a year (quarter) = its quarters or months published with it
    by_cube = {key: dict(zip(cube["_key"], cube.index, strict=True))
               for key, cube in keyed.groupby(CUBE, sort=False, dropna=False)}
    periods = {(m, p): period_bounds(p) for m, _, p in by_cube}
    for (metric, _, period), cells in by_cube.items():
        kind, first, last = periods[(metric, period)]
        for finer in _FINER.get(kind, ()):
            parts = [by_cube[(m, t, p)] for (m, t, p) in by_cube
                     if m == metric and periods[(m, p)][0] == finer
                     and first <= periods[(m, p)][1] and periods[(m, p)][2] <= last]
            if not parts:
                continue
            for key, total in cells.items():
                for c in counts:
                    terms = [((total, c), -1.0)] + [((part[key], c), 1.0) for part in parts
                                                    if key in part]
                    if _holds(rows, terms):
                        system.equal.append(Relation(terms, "period"))
    # 3. shared counts: metric A's count = metric B's count for every common period and key
    long = []
    for c in counts:
        part = keyed[["metric_id", "period", "_key", c]].rename(columns={c: "count"})
        long.append(part.assign(column=c, row=keyed.index).dropna(subset=["count"]))
    long = pd.concat(long, ignore_index=True) if long else pd.DataFrame()
    series = {name: g for name, g in long.groupby(["metric_id", "column"], sort=True)}
    names = list(series)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = series[a].merge(series[b], on=["period", "_key"], suffixes=("_a", "_b"))
            if both.empty or not (both["count_a"] > 0).any():
                continue
            if not np.allclose(both["count_a"], both["count_b"]):
                continue
            for ra, rb in zip(both["row_a"], both["row_b"], strict=True):
                system.equal.append(Relation([((ra, a[1]), 1.0), ((rb, b[1]), -1.0)],
                                             "shared"))
    # 4. numerator <= denominator, where it holds for every row of the metric
    if {"numerator", "denominator"} <= set(rows.columns):
        for _, metric in rows.groupby("metric_id", sort=False):
            n, d = metric["numerator"], metric["denominator"]
            known = n.notna() & d.notna()
            if known.any() and (n[known] <= d[known]).all():
                system.at_most += [((i, "numerator"), (i, "denominator"))
                                   for i in metric.index[known]]
    return system


def area_keys(rows: pd.DataFrame, grain_columns: list[str]) -> pd.Series:
    """(period, grains) of each row: where a count sits, whatever the metric."""
    grains = [c for c in grain_columns if c in rows.columns]
    return pd.Series([(str(p), tuple(None if pd.isna(v) else v for v in r))
                      for p, r in zip(rows["period"], rows[grains].itertuples(
                          index=False, name=None), strict=True)], index=rows.index)


def published_counts(rows: pd.DataFrame, hidden: pd.Series, counts: list[str],
                     grain_columns: list[str]) -> set[tuple[tuple, float]]:
    """((period, grains), count) of every count shown in the release."""
    keys = area_keys(rows, grain_columns)
    shown = rows.index[~hidden]
    return {(keys[i], float(rows.at[i, c])) for c in counts for i in shown
            if not pd.isna(rows.at[i, c])}


@dataclass
class Exposure:
    """A hidden count an attacker bounds to [low, high] with high - low < k."""

    ref: Ref
    low: float
    high: float
    true: float


def audit(truth: pd.DataFrame, hidden: pd.Series, system: System, rule: SuppressionRule,
          grain_columns: list[str], only: set[Ref] | None = None) -> list[Exposure]:
    """Hidden small counts that the published cells and the relations bound to an interval
    narrower than k. ``truth`` holds the true counts, ``hidden`` marks suppressed rows;
    ``only``: check these counts alone (suppressing more only widens the others' intervals)."""
    counts = [c for c in rule.count_columns if c in truth.columns]
    hidden = hidden.reindex(truth.index, fill_value=False)
    published = published_counts(truth, hidden, counts, grain_columns)
    keys = area_keys(truth, grain_columns)
    hidden_rows = set(truth.index[hidden])
    variables = [(i, c) for i in truth.index[hidden] for c in counts
                 if not pd.isna(truth.at[i, c])]
    if not variables:
        return []
    position = {v: n for n, v in enumerate(variables)}
    parent = list(range(len(variables)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    # substitute the published cells: each relation becomes sum(coef * var) == constant
    rows_eq: list[tuple[dict[int, float], float]] = []
    for rel in system.equal:
        coefs: dict[int, float] = defaultdict(float)
        constant = 0.0
        for ref, coef in rel.terms:
            if ref[0] in hidden_rows and ref in position:
                coefs[position[ref]] += coef
            else:
                constant -= coef * _value(truth, ref)
        coefs = {k: v for k, v in coefs.items() if v != 0}
        if not coefs:
            continue
        rows_eq.append((coefs, constant))
        first, *others = coefs
        for o in others:
            parent[find(o)] = find(first)
    rows_ub: list[tuple[dict[int, float], float]] = []
    for a, b in system.at_most:
        ha, hb = a in position, b in position
        if not (ha or hb):
            continue
        coefs, constant = {}, 0.0
        if ha:
            coefs[position[a]] = 1.0
        else:
            constant -= _value(truth, a)
        if hb:
            coefs[position[b]] = coefs.get(position[b], 0.0) - 1.0
        else:
            constant += _value(truth, b)
        rows_ub.append((coefs, constant))
        if ha and hb:
            parent[find(position[a])] = find(position[b])

    components: dict[int, list[int]] = defaultdict(list)
    for n in range(len(variables)):
        components[find(n)].append(n)
    eq_of: dict[int, list[int]] = defaultdict(list)
    for r, (coefs, _) in enumerate(rows_eq):
        eq_of[find(next(iter(coefs)))].append(r)
    ub_of: dict[int, list[int]] = defaultdict(list)
    for r, (coefs, _) in enumerate(rows_ub):
        ub_of[find(next(iter(coefs)))].append(r)

    exposed: list[Exposure] = []
    for root, members in components.items():
        if not eq_of[root]:
            continue  # no equation: only bounded below by 0 (and by a <= b), never exposed
        local = {v: n for n, v in enumerate(members)}
        a_eq, b_eq = _matrix([rows_eq[i] for i in eq_of[root]], local)
        a_ub, b_ub = _matrix([rows_ub[i] for i in ub_of[root]], local)
        true = np.array([_value(truth, variables[v]) for v in members])
        check = [local[v] for v in members if sensitive(true[local[v]], rule)
                 and (only is None or variables[v] in only)
                 and (keys[variables[v][0]], true[local[v]]) not in published]
        if not check:
            continue
        for n, lo, hi in narrow(a_eq, b_eq, a_ub, b_ub, true, check, rule.k):
            exposed.append(Exposure(variables[members[n]], lo, hi, float(true[n])))
    return exposed


def sensitive(count: float, rule: SuppressionRule) -> bool:
    """A count the rule protects: 1 .. k-1 (0 .. k-1 with ``suppress_zeros``). A hidden count of
    k or more is publishable by the rule itself; what must not come back is a small one."""
    return (0 if rule.suppress_zeros else 0.5) <= count < rule.k


def _matrix(rows: list[tuple[dict[int, float], float]], local: dict[int, int]):
    """Sparse A and b of rows ``({variable: coefficient}, constant)``; (None, None) if empty."""
    from scipy.sparse import csr_matrix

    if not rows:
        return None, None
    data, row_of, col_of = [], [], []
    for r, (coefs, _) in enumerate(rows):
        for v, coef in coefs.items():
            data.append(coef)
            row_of.append(r)
            col_of.append(local[v])
    a = csr_matrix((data, (row_of, col_of)), shape=(len(rows), len(local)))
    return a, np.array([constant for _, constant in rows])


def narrow(a_eq, b_eq, a_ub, b_ub, true: np.ndarray, check: list[int], k: int
           ) -> list[tuple[int, float, float]]:
    """(variable, min, max) of the variables in ``check`` whose range over {x >= 0: A_eq x =
    b_eq, A_ub x <= b_ub} is narrower than k. ``true`` is a feasible point (the true counts):
    a variable is safe as soon as some feasible point lies k or more away from it, so LPs that
    push every unresolved variable up settle most at once; the rest get their own maximum (and
    minimum), each solution settling the others it moves far enough."""
    from scipy.optimize import linprog

    def solve(c, upper=None):
        res = linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq,
                      bounds=(0, upper), method="highs")
        return res if res.status == 0 else None

    open_ = set(check)
    cap = float(np.nansum(np.abs(true))) * 10 + 10 * k  # a bounded box holding the truth
    while open_:  # push them all up (a small count cannot go k below its true value)
        c = np.zeros(len(true))
        c[list(open_)] = -1.0
        res = solve(c, cap)
        if res is None:
            break
        moved = {n for n in open_ if abs(res.x[n] - true[n]) >= k - 1e-6}
        open_ -= moved
        if not moved:
            break
    out = []

    def settle(res) -> None:  # any solution found also settles the counts it moves far
        if res is not None:
            open_.difference_update([m for m in open_ if abs(res.x[m] - true[m]) >= k - 1e-6])

    while open_:
        n = min(open_)
        open_.discard(n)
        c = np.zeros(len(true))
        c[n] = 1.0
        high = solve(-c)  # a small count is safe once its maximum is k above it
        settle(high)
        hi = -high.fun if high is not None else float("inf")
        if hi - true[n] >= k - 1e-6:
            continue
        low = solve(c)
        settle(low)
        lo = low.fun if low is not None else 0.0
        if hi - lo < k - 1e-6:
            out.append((n, lo, hi))
    return out


def _choose(exposure: Exposure, system: System, by_row: dict[object, list[int]],
            truth: pd.DataFrame, hidden: pd.Series, k: int) -> object | None:
    """A published cell to suppress for an exposed count: from the nearest relations (through
    suppressed cells) that hold a published non-zero cell, the smallest that reaches k, else
    the largest (a zero protects nothing)."""
    seen_rows, frontier = {exposure.ref[0]}, [exposure.ref[0]]
    seen_relations: set[int] = set()
    while frontier:
        candidates: dict[object, float] = {}
        next_rows = []
        for row in frontier:
            for n in by_row.get(row, []):
                if n in seen_relations:
                    continue
                seen_relations.add(n)
                for (other, column), _ in system.equal[n].terms:
                    if hidden[other]:
                        if other not in seen_rows:
                            seen_rows.add(other)
                            next_rows.append(other)
                    elif (size := _value(truth, (other, column))) > 0:
                        candidates[other] = max(candidates.get(other, 0.0), size)
        if candidates:
            big = [r for r, size in candidates.items() if size >= k]
            if big:
                return min(big, key=lambda r: (candidates[r], str(r)))
            return max(candidates, key=lambda r: (candidates[r], str(r)))
        frontier = next_rows
    return None


def widen(system: System, truth: pd.DataFrame, hidden: pd.Series, rule: SuppressionRule
          ) -> set:
    """One relation at a time, before any LP: where the hidden terms of a total or period
    relation all sit on one side, their sum is known (the other side is published); if that
    sum is below k, or a single term is hidden, published terms of the relation are added,
    smallest first among those that are not zero, until the hidden sum reaches k. Returns the
    rows to hide."""
    add: set = set()
    for rel in system.equal:
        if rel.kind == "shared":
            continue  # the same count printed elsewhere is public, not a disclosure
        hidden_terms = [(r, c) for r, c in rel.terms if hidden[r[0]] or r[0] in add]
        if not hidden_terms or len({c > 0 for _, c in hidden_terms}) > 1:
            continue
        k = rule.k
        total = sum(_value(truth, r) for r, _ in hidden_terms)
        if (len(hidden_terms) > 1 and total >= k) or not any(
                sensitive(_value(truth, r), rule) for r, _ in hidden_terms):
            continue
        sign = hidden_terms[0][1] > 0
        shown = sorted(((_value(truth, r), r[0]) for r, c in rel.terms
                        if (c > 0) == sign and not hidden[r[0]] and r[0] not in add
                        and _value(truth, r) > 0), key=lambda t: (t[0], str(t[1])))
        if not shown:  # only the other side is left: hide it, the relation says nothing then
            shown = [(0.0, r[0]) for r, c in rel.terms if (c > 0) != sign
                     and not hidden[r[0]] and r[0] not in add]
        need = k - total
        for size, row in shown:
            add.add(row)
            need -= size
            if need <= 0 and len(hidden_terms) >= 1:
                break
    return add


def protect(truth: pd.DataFrame, hidden: pd.Series, grain_columns: list[str],
            rule: SuppressionRule, max_rounds: int = 50) -> tuple[pd.Series, dict]:
    """More suppression until :func:`audit` finds nothing exposed: returns the hidden mask and
    figures (rounds, cells added, seconds). ``truth``: the release's metric rows with their
    true counts; ``hidden``: the cubes' primary and complementary cells."""
    started = time.perf_counter()
    system = relations(truth, grain_columns, rule)
    counts = [c for c in rule.count_columns if c in truth.columns]
    hidden = hidden.copy()
    added = 0
    sizes = pd.to_numeric(truth[counts[0]], errors="coerce").fillna(0.0)
    grains = [c for c in grain_columns if c in truth.columns]
    cubes = [(cube.index, equations(cube[grains], rule.implied_grains))
             for _, cube in truth.groupby(CUBE, sort=False, dropna=False)]
    def settle() -> int:
        """The one-relation rules (:func:`widen`, the cubes' complements) to a fixed point."""
        n = 0
        while True:
            more = widen(system, truth, hidden, rule)
            hidden[list(more)] = True
            for cube, eqs in cubes:
                extra = complementary(hidden[cube], sizes[cube], eqs)
                more |= set(extra[extra].index)
                hidden[extra[extra].index] = True
            n += len(more)
            if not more:
                return n

    added += settle()
    by_row: dict[object, list[int]] = defaultdict(list)
    for n, rel in enumerate(system.equal):
        for (row, _), _ in rel.terms:
            by_row[row].append(n)
    rounds, only = 0, None
    while exposed := audit(truth, hidden, system, rule, grain_columns, only):
        rounds += 1
        if rounds > max_rounds:
            raise SuppressionError(f"suppression did not settle in {max_rounds} rounds")
        more = {_choose(e, system, by_row, truth, hidden, rule.k) for e in exposed} - {None}
        if not more:
            raise SuppressionError(f"{len(exposed)} suppressed count(s) can be recomputed and "
                                   "no published cell of their relations can protect them")
        log.info("round %d: %d exposed, %d cells added", rounds, len(exposed), len(more))
        hidden[list(more)] = True
        added += len(more) + settle()
        # a cell suppressed more turns a constant into a variable: intervals only widen, so
        # only the counts exposed so far need checking again (new ones are published cells: 0
        # or k and more, never small)
        only = {e.ref for e in exposed}
    figures = {"rounds": rounds, "cells_added": added, "relations": len(system.equal),
               "seconds": round(time.perf_counter() - started, 2)}
    log.info("release audit: %s", figures)
    return hidden, figures


# -- the index: values derived from metric cells ------------------------------------------------

METRIC_TABLE = "gold.metric_value"
INDEX_TABLES = ("gold.index_indicator", "gold.index_score")
INDEX_BLANKED = ["raw_value", "normalised"]
SCORE_BLANKED = ["score", "rank", "previous_score", "change"]
OTHER_GRAINS = ["town_code", "to_tier", "channel", "condition", "icd10_category", "age_band",
                "sex"]


def index_source_metrics(settings) -> list[str]:
    """The metrics whose area values the index's indicators print (conf/base/index.yaml)."""
    indicators = (settings.index or {}).get("indicators", {})
    return sorted({i["metric"] for i in indicators.values() if i.get("metric")})


def _area_cell(metrics: pd.DataFrame) -> pd.DataFrame:
    """Metric rows of an area as the index reads them (jobs/gold/index.py metric_values): the
    city, a district or an institution, no other grain; with area_level and area_code."""
    rows = metrics[(metrics["period_type"] == "year")]
    for c in OTHER_GRAINS:
        if c in rows.columns:
            rows = rows[rows[c].isna()]
    inst = rows["institution_id"].notna()
    district = rows["district_code"].notna() & ~inst & rows["tier"].isna()
    city = rows["district_code"].isna() & ~inst & rows["tier"].isna()
    parts = [rows[city].assign(area_level="city", area_code=None),
             rows[district].assign(area_level="district", area_code=rows["district_code"]),
             rows[inst].assign(area_level="institution", area_code=rows["institution_id"])]
    return pd.concat(parts)[["metric_id", "period", "area_level", "area_code", SUPPRESSED]]


def blank_indicators(indicators: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """``gold.index_indicator`` rows with raw_value and normalised blanked (and the marker set)
    where the metric cell they are computed from (same metric, year and area) is suppressed in
    the release's published metric rows; survey and data-quality indicators are kept."""
    out = indicators.copy()
    hidden = pd.Series(False, index=out.index)
    if len(out) and len(published):
        cells = _area_cell(published)
        cells = cells[cells[SUPPRESSED].notna()]
        gone = {(m, str(p), lvl, None if lvl == "city" else str(code))
                for m, p, lvl, code in cells[["metric_id", "period", "area_level",
                                              "area_code"]].itertuples(index=False)}
        metric = out["source"].astype(str).str.removeprefix("metric:")
        hidden = pd.Series([(m, str(y), lvl, None if lvl == "city" else str(code)) in gone
                            for m, y, lvl, code in zip(metric, out["year"], out["area_level"],
                                                       out["area_code"], strict=True)],
                           index=out.index)
        hidden &= out["source"].astype(str).str.startswith("metric:")
    for c in INDEX_BLANKED:
        if c in out.columns:
            out[c] = out[c].astype("float64").where(~hidden)
    out[SUPPRESSED] = pd.Series(None, index=out.index, dtype=object).where(~hidden, SUPPRESSED)
    return out


def blank_scores(scores: pd.DataFrame, indicators: pd.DataFrame | None) -> pd.DataFrame:
    """``gold.index_score`` rows blanked where they would give a blanked indicator back: a
    sub-index is a weighted sum of its indicators, so a sub-index holding a blanked indicator
    goes, and the total (a weighted mean of the sub-indices) with it; rank, previous score and
    change of a blanked score too."""
    out = scores.copy()
    hidden = pd.Series(False, index=out.index)
    if indicators is not None and len(indicators) and len(out):
        gone = indicators[indicators[SUPPRESSED].notna()]
        subs = {(int(y), lvl, str(code), sub) for y, lvl, code, sub in gone[
            ["year", "area_level", "area_code", "sub_index"]].itertuples(index=False)}
        areas = {key[:3] for key in subs}
        hidden = pd.Series([(int(y), lvl, str(code), name) in subs
                            or (name == "total" and (int(y), lvl, str(code)) in areas)
                            for y, lvl, code, name in out[["year", "area_level", "area_code",
                                                           "index_name"]].itertuples(index=False)],
                           index=out.index)
    for c in SCORE_BLANKED:
        if c in out.columns:
            out[c] = out[c].astype("float64").where(~hidden)
    out[SUPPRESSED] = pd.Series(None, index=out.index, dtype=object).where(~hidden, SUPPRESSED)
    return out
