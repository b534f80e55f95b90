"""`healthlake gold`: the gold layer for a day or a range of days, in dependency order.

1. the data-quality scorecard of each extract date (gold.dq_scorecard);
2. the metrics of every period (year, quarter, month) those days touched (gold.metric_value):
   periods of the events that arrived and of the extract dates themselves
   (:func:`jobs.gold.metrics.periods_touched`);
3. the informatization index of the years among them (gold.index_indicator, gold.index_score),
   which reads both.

Each table is replaced for exactly the dates or periods recomputed, so re-running is safe and a
late file brings back just the periods it belongs to. A backfill (days before ones already
resolved) also recomputes the later days' scorecards and periods: resolving it resolved them
again.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

from jobs.config import Settings
from jobs.gold import index, metrics, scorecard
from jobs.silver.resolve import later_days

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


def run_days(spark: SparkSession, settings: Settings, days: list[dt.date],
             year: int | None = None, periods: list[metrics.Period] | None = None) -> dict:
    """Scorecards of ``days``, then metrics and index of the periods they touched (or of the
    whole ``year``: the year, its quarters and months; or exactly ``periods``)."""
    # A backfill: resolving it resolved the later days again, and its ingest may have taken
    # files from them (a copy delivered on both days belongs to the earlier).
    touched = [*days, *later_days(spark, settings, max(days))]
    cards = {d.isoformat(): scorecard.run(spark, settings, d) for d in touched}
    if year is not None:
        periods = metrics.periods_of_year(year)
    elif periods is None:
        periods = sorted({p for d in touched for p in metrics.periods_touched(spark, settings, d)})
    computed = metrics.run(spark, settings, days[-1], periods)
    years = computed["years"]
    idx = index.run(spark, settings, years)
    return {"scorecard": cards, "metrics": computed, "index": idx, "years": years}


def run(spark: SparkSession, settings: Settings, extract_date: dt.date) -> dict:
    """One extract date (what the daily DAG runs)."""
    return run_days(spark, settings, [extract_date])
