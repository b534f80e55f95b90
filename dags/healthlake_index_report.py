"""
### healthlake_index_report: the year's metrics and informatization index, refreshed

`refresh_year` runs `healthlake gold --date D --year Y` (through spark-submit, like every
healthlake task): the metrics of the whole year Y (the year, its quarters and months) and the
informatization index, for the year of each extract date D it is given.

It runs when the daily DAG's `gold` task updates the asset `healthlake_gold` (the asset event
carries the extract date; late files can change any period of that year), and on the 1st of
each month at 03:00 Asia/Shanghai for the month just ended. Writes Delta tables, so it takes the
Delta pool's one slot. `publish_year` then writes, for each of those years, the suppressed
XLSX workbook of the gold tables (`healthlake export gold.metric_value gold.index_score
gold.index_indicator --period Y --format xlsx`, under `publish.exports_root`) and the HTML report
(`healthlake report --year Y`, under `publish.reports_root`).
"""

from __future__ import annotations

from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable, task

from jobs.config import load
from jobs.orchestration import (
    GOLD_ASSET_NAME,
    GOLD_ASSET_URI,
    dag_arguments,
    index_report_command,
    orchestration_settings,
    publish_command,
)

SETTINGS = load()
ORCH = orchestration_settings(SETTINGS)
TZ = SETTINGS.timezone
GOLD = Asset(name=GOLD_ASSET_NAME, uri=GOLD_ASSET_URI)

with DAG(
    dag_id="healthlake_index_report",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 3 1 * *", timezone=TZ), assets=GOLD),
    **dag_arguments(ORCH, TZ, __doc__, ["report"]),
) as dag:

    @task.bash(pool=ORCH.delta_pool)
    def refresh_year(logical_date=None, triggering_asset_events=None) -> str:
        """`healthlake gold --date D --year Y` for the year of each extract date the gold
        asset's events carry, or (monthly schedule) of the last day of the month just ended."""
        events = (triggering_asset_events or {}).get(GOLD, [])
        dates = [e.extra["extract_date"] for e in events if "extract_date" in (e.extra or {})]
        return index_report_command(dates, logical_date)

    @task.bash
    def publish_year(logical_date=None, triggering_asset_events=None) -> str:
        """The year's suppressed XLSX workbook of the gold tables and its HTML report:
        `healthlake export ... --period Y --format xlsx` and `healthlake report --year Y`."""
        events = (triggering_asset_events or {}).get(GOLD, [])
        dates = [e.extra["extract_date"] for e in events if "extract_date" in (e.extra or {})]
        return publish_command(dates, logical_date)

    refresh_year() >> publish_year()
