"""Weekly Delta maintenance of every catalogued table: OPTIMIZE (Z-ORDER where configured), VACUUM.

Daily runs replace one partition per commit, so tables collect small files; OPTIMIZE compacts
them (and Z-orders the tables listed in ``orchestration.maintenance_zorder_by``), VACUUM deletes
files no version within the retention needs. The retention is at least 168 hours (7 days): a
reader or a time-travel query older than the retention could otherwise lose its files, so a
shorter one is refused before anything is touched. Tables not written yet are skipped.
"""

from __future__ import annotations

import logging

from jobs.config import ConfigError, Settings
from jobs.orchestration import MIN_VACUUM_RETENTION_HOURS, orchestration_settings

log = logging.getLogger(__name__)


def check_retention(retention_hours: float) -> float:
    """The retention, or a clear error when it is below 7 days."""
    if retention_hours < MIN_VACUUM_RETENTION_HOURS:
        raise ConfigError(
            f"VACUUM retention {retention_hours} h is below {MIN_VACUUM_RETENTION_HOURS} h "
            "(7 days): readers and time travel within a week would lose their files")
    return retention_hours


def run(spark, settings: Settings, retention_hours: float = MIN_VACUUM_RETENTION_HOURS) -> dict:
    """OPTIMIZE and VACUUM each catalogued Delta table; one summary line per table."""
    from delta.tables import DeltaTable

    check_retention(retention_hours)
    zorder_by = orchestration_settings(settings).maintenance_zorder_by
    summary: dict[str, str] = {}
    for name in sorted(settings.tables):
        path = settings.table_location(name)
        if not DeltaTable.isDeltaTable(spark, path):
            summary[name] = "not written yet"
            continue
        table = DeltaTable.forPath(spark, path)
        optimize = table.optimize()
        columns = zorder_by.get(name)
        result = optimize.executeZOrderBy(*columns) if columns else optimize.executeCompaction()
        metrics = result.first().asDict(recursive=True)["metrics"]
        table.vacuum(float(retention_hours))
        summary[name] = (f"{'z-ordered by ' + ', '.join(columns) if columns else 'compacted'}: "
                         f"{metrics['numFilesRemoved']} files -> {metrics['numFilesAdded']}; "
                         f"vacuumed (retention {retention_hours} h)")
        log.info("%s: %s", name, summary[name])
    return summary
