"""
### healthlake_daily: one run per extract date (Asia/Shanghai)

Institutions send each day's extract to `landing/<extract_date>/<institution>/`. Each run takes
one extract date D through the medallion layers:

`wait_for_manifests` >> `ingest.<feed>` (a read task per feed) >> `ingest.commit` >>
`check_bronze` >> `standardise` >> `resolve` >> `curate` >> `check_silver` >> `gold` >>
`check_gold`

**Quality gates.** The `check_*` tasks run the Great Expectations suites of the tables just
written (`quality/<table>.yaml`, thresholds in `conf/base/quality.yaml`): `healthlake quality
--date D --layer ...`. A failed expectation of severity "fail" fails the task, with the table,
the expectation and offending keys in its log, so nothing downstream runs on a table that cannot
be trusted; "warn" failures are logged. Every result is in `ops.dq_results`, the Data Docs under
the ops zone.

**Which day a run processes.** The timetable has one data interval per local day,
`[D 00:00, D+1 00:00)` Asia/Shanghai; the run starts at local midnight of D+1, when the
interval ends, and processes `landing/D/`. Its logical date is local midnight of D, which
Airflow stores in UTC as the day before (`2024-04-15T00:00+08:00` = `2024-04-14T16:00Z`, and
`ds` is `2024-04-14`), so every task takes the extract date from the logical date converted to
Asia/Shanghai (`jobs.orchestration.extract_date_of`), never from `ds`. To run a day by hand,
trigger with `logical_date=2024-04-15T00:00:00+08:00` for extract date 2024-04-15.

**How jobs run.** Every task runs the `healthlake` CLI (the same command a data engineer runs).
The feeds' reads are plain Python (pyarrow) on the worker, which sees the landing zone as the
sensor does; every other task runs `spark-submit --master <spark.master> jobs/entrypoint.py
<command> --date D`, so the DAG drives a cluster by configuration
(`HEALTHLAKE_SPARK__MASTER=spark://...`). The Apache Spark
provider's `SparkSubmitOperator` is not used: the provider requires `pyspark-client`, the Spark
Connect client, which installs its own `pyspark` package over the full `pyspark==4.1.1` the
jobs need. A `@task.bash` building the same spark-submit command at run time is the
equivalent; the command, with the Delta jars and Spark settings of `conf/`, is in the task log.

**Safety.** Each job replaces exactly the day's partitions in one Delta commit, so a failed task
is safe to clear and re-run, and a backfill (`airflow backfill create --dag-id healthlake_daily
--from-date ... --to-date ...`) re-runs days. Tasks retry with exponential back-off; every task
that writes Delta tables takes the one slot of the pool `orchestration.delta_pool` (create it:
`airflow pools set healthlake_delta 1 "Delta writers"`), and `max_active_runs=1`, so one task
writes at a time. Per-run counts (files, rows, quarantined) are in each task's log and in
`ops.ingest_log` (per file), `ops.feed_counts` (per institution and feed, against its recent
history), `quarantine.*` and `gold.dq_scorecard`.

Configuration: `conf/base/orchestration.yaml` (cut-off, retries, pool), `conf/base/settings.yaml`
(time zone, Spark master).
"""

from __future__ import annotations

from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, TaskGroup, task

from jobs.config import load
from jobs.contracts import load_contracts
from jobs.landing_sensor import ManifestsSensor
from jobs.orchestration import (
    GOLD_ASSET_NAME,
    GOLD_ASSET_URI,
    dag_arguments,
    daily_job_command,
    daily_python_command,
    extract_date_of,
    orchestration_settings,
)

# Parse time reads the configuration files only (no lake, no Spark, no Airflow Variables).
SETTINGS = load()
ORCH = orchestration_settings(SETTINGS)
TZ = SETTINGS.timezone
GOLD = Asset(name=GOLD_ASSET_NAME, uri=GOLD_ASSET_URI)

with DAG(
    dag_id="healthlake_daily",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone=TZ),
    **dag_arguments(ORCH, TZ, __doc__, ["daily"]),
) as dag:
    wait_for_manifests = ManifestsSensor(
        task_id="wait_for_manifests",
        doc_md="Waits, deferred (no worker slot), until every registered institution has "
               "delivered `landing/D/<institution>/_manifest.json` or until the cut-off "
               "(`orchestration.manifests_cutoff_local_time` on D+1), then succeeds either way: "
               "the day goes on with what arrived and the log lists who is missing. Ingest "
               "records missing files; a late file loads in a later run.",
    )

    @task.bash
    def read(feed: str, logical_date=None) -> str:
        """Reads and checks the day's landed files of one feed against its contract
        (`schemas/`), without Spark: `healthlake ingest-read --date D --feed <feed>`. Rows,
        rejected rows and per-file counts wait in the restricted zone's staging area for
        `ingest.commit`; the log shows the feed's files, rows in, loaded and quarantined. The
        feeds read side by side (no Delta write, no pool); a failing feed's task can be fixed
        and cleared alone, then the commit."""
        return daily_python_command("ingest-read", logical_date, "--feed", feed)

    @task.bash(pool=ORCH.delta_pool)
    def commit(logical_date=None, dag_run=None) -> str:
        """Loads the day into `bronze.<feed>`, rejected rows and files into `quarantine.<feed>`,
        one row per file into `ops.ingest_log` (rows in = loaded + quarantined; files of no
        feed logged as unrecognised): `healthlake ingest --date D`, with the feeds' reads
        staged ahead (a file no read task staged is read here). One Spark start for the day;
        the run's start is when its files were first seen (the scorecard calls late what a
        later run saw first)."""
        started = dag_run.start_date if dag_run is not None else None
        return daily_job_command("ingest", logical_date,
                                 *(["--run-started-at", started.isoformat()] if started else []))

    with TaskGroup("ingest", tooltip="a read task per feed, then one commit") as ingest_feeds:
        reads = [read.override(task_id=feed)(feed=feed) for feed in sorted(load_contracts().feeds)]
        reads >> commit()

    @task.bash(pool=ORCH.delta_pool)
    def check_bronze(logical_date=None) -> str:
        """Recomputes `ops.feed_counts` (files and rows per institution and feed against its
        recent history), then validates `ops.ingest_log`, `ops.feed_counts` and `bronze.<feed>`
        with their suites: row-count reconciliation, freshness, distribution, lineage:
        `healthlake quality --date D --layer ops --layer bronze`."""
        return daily_job_command("quality", logical_date, "--layer", "ops", "--layer", "bronze")

    @task.bash(pool=ORCH.delta_pool)
    def standardise(logical_date=None) -> str:
        """Types and validates the day's bronze rows into `silver_std.<feed>`, values it cannot
        type into `quarantine.silver`: `healthlake standardise --date D`."""
        return daily_job_command("standardise", logical_date)

    @task.bash(pool=ORCH.delta_pool)
    def resolve(logical_date=None) -> str:
        """Entity resolution of the day's local patients (national ID, then Splink) into
        `restricted.identity`, `silver.person_link`, `silver.person`:
        `healthlake resolve --date D`."""
        return daily_job_command("resolve", logical_date)

    @task.bash(pool=ORCH.delta_pool)
    def curate(logical_date=None) -> str:
        """Merges the day's records into the curated silver tables, with `person_id` and no
        identifiers in clear: `healthlake curate --date D`."""
        return daily_job_command("curate", logical_date)

    @task.bash(pool=ORCH.delta_pool)
    def check_silver(logical_date=None) -> str:
        """Validates `silver_std.<feed>` and the curated silver tables with their suites: keys
        unique, accepted values, ranges, every row's person and institution known:
        `healthlake quality --date D --layer silver_std --layer silver`."""
        return daily_job_command("quality", logical_date, "--layer", "silver_std", "--layer",
                                 "silver")

    @task.bash(pool=ORCH.delta_pool)
    def gold(logical_date=None) -> str:
        """Recomputes the day's data-quality scorecard, then the metrics and the index of the
        periods the day touched: `healthlake gold --date D`."""
        return daily_job_command("gold", logical_date)

    @task.bash(pool=ORCH.delta_pool, outlets=[GOLD])
    def check_gold(logical_date=None, outlet_events=None) -> str:
        """Validates the gold tables with their suites: `healthlake quality --date D --layer
        gold`. On success it updates the asset `healthlake_gold` (its event carries the extract
        date), which schedules `healthlake_index_report`: reports read validated gold only."""
        day = extract_date_of(logical_date, TZ)
        outlet_events[GOLD].extra = {"extract_date": day.isoformat()}
        return daily_job_command("quality", logical_date, "--layer", "gold")

    (wait_for_manifests >> ingest_feeds >> check_bronze() >> standardise() >> resolve() >> curate()
     >> check_silver() >> gold() >> check_gold())
