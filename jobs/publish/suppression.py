"""Small-cell suppression with complementary suppression, on pandas tables of aggregates.

A published table (one metric and period of ``gold.metric_value``) is a cube: rows whose grain
columns are null are totals over those grains ("all"). Two steps:

1. **Primary**: a cell whose count (numerator or denominator, :class:`SuppressionRule`) is
   1 .. k-1 is suppressed. Zeros are published unless ``suppress_zeros``: statistical offices
   protect small groups of people, and "nobody" is none (a zero next to a small denominator is
   caught by the denominator).
2. **Complementary**: every *equation* of the cube -- a total and the cells that add up to it
   along one grain (the districts of the city, the towns of a district, the sexes of an age
   band) -- that holds exactly one suppressed member would give it back by subtraction, so
   another member is suppressed: the smallest non-zero cell, else a zero cell, else the total.
   Repeated until no equation holds exactly one (a fixed point; it ends, since every pass
   suppresses at least one more cell of a finite table).

Grains that a finer grain determines (a town's district, an institution's district and tier:
``implied_grains``) make the equations of hierarchies: the towns of the city add up to the city
as the towns of a district add up to the district.

Every suppressed cell carries the same marker (column ``suppressed`` = 'suppressed'): a word
saying which cells are small would tell the reader their count is 1 .. k-1.

This is one cube at a time. A release (every sheet of an export, a year with its months, the
report) is then audited as one system by :mod:`jobs.publish.release` (linear programming over
every relation that holds), which suppresses more where cubes together give a cell back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from itertools import chain, combinations

import pandas as pd

from jobs.publish.settings import SuppressionRule


class SuppressionError(RuntimeError):
    """A table about to be published shows a small count or lets one be recomputed."""


SUPPRESSED = "suppressed"  # the column, and its one value for every suppressed cell


def primary(counts: pd.DataFrame, rule: SuppressionRule) -> pd.Series:
    """True where any count column is small: 1 .. k-1 (0 .. k-1 with ``suppress_zeros``)."""
    lowest = 0 if rule.suppress_zeros else 0.5  # counts may be fractional (2/5 of a band)
    small = pd.Series(False, index=counts.index)
    for column in rule.count_columns:
        if column in counts.columns:
            n = pd.to_numeric(counts[column], errors="coerce")
            small |= (n >= lowest) & (n < rule.k)
    return small


def equations(grains: pd.DataFrame, implied: dict[str, list[str]] | None = None
              ) -> list[tuple[object, list[object]]]:
    """The additive relations of a cube: ``(total's index, [cells' indices])`` for every total
    row and every grain its cells add one value of (with the grains that grain implies)."""
    implied = implied or {}
    columns = list(grains.columns)
    position = {c: i for i, c in enumerate(columns)}
    keys = [tuple(None if pd.isna(v) else v for v in row)
            for row in grains.itertuples(index=False, name=None)]
    row_of = dict(zip(keys, grains.index, strict=True))
    cells: dict[tuple[object, str], list[object]] = defaultdict(list)
    for key, index in zip(keys, grains.index, strict=True):
        for grain in (c for c in columns if key[position[c]] is not None):
            coarser = [g for g in implied.get(grain, []) if g in position
                       and key[position[g]] is not None]
            for dropped in _subsets(coarser):
                parent = list(key)
                for g in (grain, *dropped):
                    parent[position[g]] = None
                total = row_of.get(tuple(parent))
                if total is not None:
                    cells[(total, grain)].append(index)
    return [(total, members) for (total, _), members in cells.items()]


def _subsets(items: Sequence[str]) -> Iterable[tuple[str, ...]]:
    return chain.from_iterable(combinations(items, n) for n in range(len(items) + 1))


def complementary(suppressed: pd.Series, sizes: pd.Series,
                  relations: list[tuple[object, list[object]]]) -> pd.Series:
    """Suppress complements until no relation holds exactly one suppressed member; returns the
    complements only."""
    done = set(suppressed[suppressed].index)
    added: set[object] = set()
    changed = True
    while changed:
        changed = False
        for total, members in relations:
            hidden = [m for m in (total, *members) if m in done]
            if len(hidden) != 1:
                continue
            candidates = [m for m in members if m not in done]
            # the smallest non-zero cell, else a zero cell, else the total
            candidates.sort(key=lambda m: (sizes[m] == 0, sizes[m], str(m)))
            choice = candidates[0] if candidates else total
            done.add(choice)
            added.add(choice)
            changed = True
    return pd.Series(suppressed.index.isin(list(added)), index=suppressed.index)


def suppress(table: pd.DataFrame, grain_columns: list[str], rule: SuppressionRule,
             counts: pd.DataFrame | None = None) -> pd.DataFrame:
    """``table`` (one cube: one metric and period) with small cells and their complements
    blanked and column ``suppressed`` = 'suppressed' | null (one marker for both).

    ``counts`` (aligned with ``table``) holds the counts checked against k when they are not the
    table's own count columns (an age-standardised rate is judged by its crude counts)."""
    counts = table if counts is None else counts
    first = primary(counts, rule)
    sizes = pd.to_numeric(counts[rule.count_columns[0]], errors="coerce").fillna(0.0)
    grains = table[[c for c in grain_columns if c in table.columns]]
    more = complementary(first, sizes, equations(grains, rule.implied_grains))
    return blank(table, first | more, rule)


def blank(table: pd.DataFrame, hidden: pd.Series, rule: SuppressionRule) -> pd.DataFrame:
    """``table`` with the ``blank_columns`` of ``hidden`` rows emptied and the marker set."""
    out = table.copy()
    for column in rule.blank_columns:
        if column in out.columns:
            out[column] = out[column].astype("float64").where(~hidden)
    out[SUPPRESSED] = pd.Series(None, index=table.index, dtype=object).where(~hidden,
                                                                            SUPPRESSED)
    return out


def recoverable(table: pd.DataFrame, grain_columns: list[str],
                implied: dict[str, list[str]] | None = None) -> list[object]:
    """Indices of suppressed cells that some relation gives back by subtraction (it holds no
    other suppressed member): empty for a well-protected table. For tests and checks."""
    hidden = table[SUPPRESSED].notna()
    grains = table[[c for c in grain_columns if c in table.columns]]
    out = []
    for total, members in equations(grains, implied):
        inside = [m for m in (total, *members) if hidden[m]]
        if len(inside) == 1:
            out.append(inside[0])
    return out


def verify(table: pd.DataFrame, grain_columns: list[str], rule: SuppressionRule,
           counts: pd.DataFrame | None = None) -> None:
    """Check a suppressed table as it will be published, independently of how it was
    suppressed: no shown cell has a count of 1 .. k-1 and no suppressed cell can be recomputed
    by subtraction. Every export and report calls it; :class:`SuppressionError` otherwise."""
    counts = table if counts is None else counts
    shown = table[SUPPRESSED].isna()
    small = primary(counts, rule) & shown
    if small.any():
        raise SuppressionError(
            f"{int(small.sum())} cell(s) with a count under k={rule.k} would be published "
            f"(rows {list(table.index[small])[:5]}): nothing was written")
    back = recoverable(table, grain_columns, rule.implied_grains)
    if back:
        raise SuppressionError(
            f"{len(back)} suppressed cell(s) could be recomputed from the published totals "
            f"(rows {back[:5]}): nothing was written")
