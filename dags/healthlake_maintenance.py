"""
### healthlake_maintenance: weekly OPTIMIZE / Z-ORDER and VACUUM of the Delta tables

Every Sunday at 03:00 Asia/Shanghai, `optimize_and_vacuum` runs `healthlake maintenance`
(through spark-submit, like every healthlake task) on every catalogued Delta table: OPTIMIZE
compacts the small files the daily partition replacements leave (Z-ORDER by the columns of
`orchestration.maintenance_zorder_by`), then VACUUM deletes files older than
`orchestration.vacuum_retention_hours` (at least 168 h = 7 days; the job refuses less). It
takes the Delta pool's one slot, so it never runs beside a daily task's writes.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, CronTriggerTimetable, task

from jobs.config import load
from jobs.orchestration import orchestration_settings, spark_submit_command, task_defaults

SETTINGS = load()
ORCH = orchestration_settings(SETTINGS)
TZ = SETTINGS.timezone

with DAG(
    dag_id="healthlake_maintenance",
    schedule=CronTriggerTimetable("0 3 * * 0", timezone=TZ),
    start_date=pendulum.datetime(ORCH.first_extract_date.year, ORCH.first_extract_date.month,
                                 ORCH.first_extract_date.day, tz=TZ),
    catchup=False,
    max_active_runs=1,
    default_args=task_defaults(ORCH),
    doc_md=__doc__,
    tags=["healthlake", "maintenance"],
) as dag:

    @task.bash(pool=ORCH.delta_pool)
    def optimize_and_vacuum() -> str:
        """OPTIMIZE (Z-ORDER where configured) and VACUUM (retention from conf, at least
        168 h) of every catalogued Delta table: `healthlake maintenance`."""
        return spark_submit_command(["maintenance"])

    optimize_and_vacuum()
