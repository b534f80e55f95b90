"""What the analyst notebooks (notebooks/) import: a session on the configured lake, the year's
published (suppressed) gold data as pandas, and tidy slices of it.

The notebooks show what the report and the exports publish, with the same suppression, so a
figure copied out of a notebook is safe to publish too. Ad hoc questions go through
:func:`jobs.publish.sql.query`, which sees the curated tables only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from jobs.config import Settings, load
from jobs.gold.catalogue import load_catalogue
from jobs.gold.metrics import GRAIN_COLUMNS
from jobs.publish import report
from jobs.publish.settings import load_publish

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def start(app_name: str = "healthlake-notebook") -> tuple[Settings, SparkSession]:
    """The configuration (conf/ and HEALTHLAKE_* variables) and a SparkSession on its lake."""
    from jobs.spark import get_spark

    settings = load()
    return settings, get_spark(settings, app_name=app_name)


def yearly_data(spark: SparkSession, settings: Settings, year: int, k: int | None = None
                ) -> report.ReportData:
    """The year's published data, as the report reads it: yearly metrics up to ``year`` with
    small cells suppressed (as one release), index scores blanked where they would give a
    suppressed cell back, the data-quality scorecard rolled up. ``k`` may raise the configured
    k, never lower it."""
    import dataclasses

    spec = load_publish(settings)
    spec = dataclasses.replace(spec, suppression=spec.suppression.floor(k))
    return report.load_data(spark, settings, year, spec, load_catalogue(settings))


def cells(metrics: pd.DataFrame, metric_id: str, by: list[str], period: object | None = None
          ) -> pd.DataFrame:
    """A metric's rows broken down by exactly the grains ``by`` (the others 'all'), with its
    numerator, denominator, value and suppression; one period or every period."""
    rows = metrics[metrics["metric_id"] == metric_id]
    if period is not None:
        rows = rows[rows["period"].astype(str) == str(period)]
    for grain in GRAIN_COLUMNS:
        rows = rows[rows[grain].notna()] if grain in by else rows[rows[grain].isna()]
    columns = ["period", *by, "numerator", "denominator", "value", "suppressed"]
    return rows[columns].sort_values(["period", *by]).reset_index(drop=True)


def with_district_names(frame: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Add ``district`` ('香洲区 Xiangzhou') beside ``district_code``."""
    names = report.district_labels(settings)
    out = frame.copy()
    out.insert(list(out.columns).index("district_code") + 1, "district",
               out["district_code"].map(names))
    return out
