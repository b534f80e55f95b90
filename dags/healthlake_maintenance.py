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

from airflow.sdk import DAG, CronTriggerTimetable, task

from jobs.config import load
from jobs.orchestration import dag_arguments, orchestration_settings, spark_submit_command

SETTINGS = load()
ORCH = orchestration_settings(SETTINGS)
TZ = SETTINGS.timezone

with DAG(
    dag_id="healthlake_maintenance",
    schedule=CronTriggerTimetable("0 3 * * 0", timezone=TZ),
    **dag_arguments(ORCH, TZ, __doc__, ["maintenance"]),
) as dag:

    @task.bash(pool=ORCH.delta_pool)
    def optimize_and_vacuum() -> str:
        """OPTIMIZE (Z-ORDER where configured) and VACUUM (retention from conf, at least
        168 h) of every catalogued Delta table: `healthlake maintenance`."""
        return spark_submit_command(["maintenance"])

    optimize_and_vacuum()
