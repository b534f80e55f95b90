"""The `healthlake` command: every job runs from here, from Airflow tasks and from spark-submit.

Each sub-command loads and validates the configuration first, so a wrong key fails before any
work starts, and starts at most one SparkSession.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shlex
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from jobs.config import ConfigError, Settings, load
from jobs.operations import LakeBusy
from jobs.privacy import PrivacyError
from jobs.quality import QualityError

log = logging.getLogger("healthlake")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _print(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, ensure_ascii=False, indent=2, default=str))
        return
    for key, value in summary.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")


# -- sub-commands --------------------------------------------------------------------------


def cmd_config(settings: Settings, args: argparse.Namespace) -> dict:
    """Show the merged configuration and where each section came from (secrets by reference)."""
    return {
        "timezone": settings.timezone,
        "landing_root": settings.landing_root,
        "zones": {z: settings.zone_location(z) for z in settings.paths.zones},
        "spark": {"master": settings.spark.master, **settings.spark.conf},
        "secrets": {k: f"env {v.env} / file {v.file}" for k, v in settings.secrets.items()},
        "tables": len(settings.tables),
    }


def cmd_jars(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs.spark import resolve_jars

    jars = resolve_jars(settings)
    return {"jars_dir": jars[0].parent, "jars": len(jars), "delta": settings.spark.delta_packages}


def cmd_check(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs import check
    from jobs.spark import get_spark

    return check.run(get_spark(settings), settings)


def cmd_generate(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs.generate import generate

    return generate(settings, residents=args.residents, full_city=args.full_city,
                    start_date=args.start, days=args.days, seed=args.seed)


def cmd_deliver_late(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs.generate import deliver_late

    moved = deliver_late(settings, args.date)
    return {"date": args.date, "moved": [str(p) for p in moved]}


def _days(args: argparse.Namespace) -> list[dt.date]:
    until = args.until or args.date
    if until < args.date:
        raise ConfigError(f"--until {until} is before --date {args.date}")
    return [args.date + dt.timedelta(days=i) for i in range((until - args.date).days + 1)]


def _per_day(module: str, name: str) -> Callable[[Settings, argparse.Namespace], dict]:
    """A sub-command that runs ``<module>.run(spark, settings, day)`` for --date [--until]."""

    def command(settings: Settings, args: argparse.Namespace) -> dict:
        import importlib

        from jobs.spark import get_spark

        days = _days(args)  # a wrong range fails before Spark starts
        job = importlib.import_module(module)
        spark = get_spark(settings, app_name=f"healthlake-{name}")
        return {d.isoformat(): job.run(spark, settings, d) for d in days}

    return command


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs.contracts import check_feeds
    from jobs.ingest import job
    from jobs.spark import get_spark

    days = _days(args)
    if args.feed:
        check_feeds(args.feed)  # before Spark starts
    spark = get_spark(settings, app_name="healthlake-ingest")
    return {d.isoformat(): job.run(spark, settings, d, args.feed, args.run_started_at)
            for d in days}


def cmd_ingest_read(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs.contracts import load_contracts
    from jobs.ingest import job

    feeds = args.feed or sorted(load_contracts().feeds)
    return {d.isoformat(): job.read_ahead(settings, d, feeds) for d in _days(args)}


cmd_standardise = _per_day("jobs.silver.job", "standardise")


def cmd_resolve(settings: Settings, args: argparse.Namespace) -> dict:
    """The days in order, then silver.person once (an initial load's range pays that once)."""
    from jobs.silver import resolve
    from jobs.spark import get_spark

    days = _days(args)
    spark = get_spark(settings, app_name="healthlake-resolve")
    return {days[0].isoformat(): resolve.run_days(spark, settings, days)}


cmd_curate = _per_day("jobs.silver.curate", "curate")


def cmd_train_model(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs.silver import resolve
    from jobs.spark import get_spark

    days = _days(args)
    spark = get_spark(settings, app_name="healthlake-train-model")
    return resolve.train_model(spark, settings, days[0], days[-1],
                               Path(args.out) if args.out else None, args.replace)


def cmd_gold(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs.gold import job
    from jobs.spark import get_spark

    days = _days(args)
    spark = get_spark(settings, app_name="healthlake-gold")
    return job.run_days(spark, settings, days, args.year)


def cmd_maintenance(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs import maintenance
    from jobs.orchestration import orchestration_settings
    from jobs.spark import get_spark

    hours = args.retention_hours
    if hours is None:
        hours = orchestration_settings(settings).vacuum_retention_hours
    maintenance.check_retention(hours)  # a too short retention fails before Spark starts
    spark = get_spark(settings, app_name="healthlake-maintenance")
    return maintenance.run(spark, settings, hours)


def _service_action(action: str, start, stop, status, announce) -> dict:
    """start / stop / status of a background service (Airflow, the Thrift server, a cluster);
    ``announce`` says where to find what started."""
    if action == "start":
        result = start()
        print(announce(result))
        return result
    return stop() if action == "stop" else status()


def cmd_airflow(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs.airflow_local import LocalAirflow

    local = LocalAirflow.from_settings(settings)
    return _service_action(
        args.action, lambda: (local.start(), local.status())[1],
        lambda: {"stopped": local.stop(), "home": str(local.home)}, local.status,
        lambda s: f"Airflow is up: open {s['ui']} and log in as {s['login']}.\nDAGs start "
                  f"paused; logs and state in {local.home}; stop with `healthlake airflow "
                  "stop` (make airflow-stop).")


def cmd_quality(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs.quality import job
    from jobs.quality.spec import load_suites
    from jobs.spark import get_spark

    days = _days(args)
    tables = args.table or None
    load_suites(settings, tables)  # a wrong suite or table fails before Spark starts
    spark = get_spark(settings, app_name="healthlake-quality")
    return {d.isoformat(): job.run(spark, settings, d, tables=tables, layers=args.layer)
            for d in days}


def cmd_er_eval(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs.silver import evaluate
    from jobs.spark import get_spark

    return evaluate.evaluate(get_spark(settings, app_name="healthlake-er-eval"), settings)


def cmd_match(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs.match import job
    from jobs.spark import get_spark

    spark = get_spark(settings, app_name="healthlake-match")
    return job.run(spark, settings, Path(args.config), Path(args.input), Path(args.output),
                   Path(args.save_model) if args.save_model else None)


def cmd_quarantine(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs.ingest import report
    from jobs.spark import get_spark

    rows = report.run(get_spark(settings, app_name="healthlake-quarantine"), settings,
                      date_from=args.date, date_to=args.until or args.date,
                      institution=args.institution, rule=args.rule, feed=args.feed)
    if not rows:
        return {"quarantine": "nothing rejected for this selection"}
    return {f"{r['extract_date']} {r['institution_id']} {r['feed']} {r['rule_id']}":
            f"{r['n_rows']} row(s) ({r['scope']}), e.g. {r['example']}" for r in rows}


def cmd_dictionary(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs import dictionary

    return {"written": dictionary.write()}


def cmd_metrics_doc(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs.gold import catalogue

    return {"written": catalogue.write(settings=settings)}


def cmd_export(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs.publish import export
    from jobs.spark import get_spark

    for period in args.period:
        export.parse_period(period)  # a wrong period fails before Spark starts
    spark = get_spark(settings, app_name="healthlake-export")
    return export.run(spark, settings, args.names, args.period, args.format,
                      Path(args.out) if args.out else None, args.k)


def cmd_report(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs.publish import report
    from jobs.spark import get_spark

    spark = get_spark(settings, app_name="healthlake-report")
    return report.run(spark, settings, args.year, Path(args.out) if args.out else None, args.k)


def cmd_sql(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs.publish import sql
    from jobs.publish.settings import load_publish
    from jobs.spark import get_spark

    spec = load_publish(settings)
    spark = get_spark(settings, app_name="healthlake-sql")  # Spark's own parser checks the query
    try:
        limit = spec.sql.max_rows if args.format == "table" else None
        rows, more = sql.query(spark, settings, args.query, limit)
    except sql.RefusedQuery as exc:
        print(f"healthlake sql: refused: {exc}", file=sys.stderr)
        raise SystemExit(3) from None
    print(sql.format_result(rows, args.format, more))
    return {}


def cmd_tables(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs.publish import sql
    from jobs.spark import get_spark

    listed = sql.tables(get_spark(settings, app_name="healthlake-tables"), settings)
    return {t["table"]: {"zone": t["zone"], "rows": t["rows"] if t["rows"] is not None
                         else "not written yet", "description": t["description"],
                         "columns": t["columns"] or "-"} for t in listed}


def cmd_thrift(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs.publish import thrift

    return _service_action(
        args.action, lambda: thrift.start(settings), lambda: thrift.stop(settings),
        lambda: thrift.status(settings),
        lambda s: f"Thrift JDBC server up: {s['url']} (beeline -u {s['url']}); stop it with "
                  "`healthlake thrift stop` (make thrift-stop).")


def cmd_cluster(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs.cluster import LocalCluster

    cluster = LocalCluster.from_settings(settings)
    return _service_action(
        args.action, cluster.start, cluster.stop, cluster.status,
        lambda s: f"Spark standalone up: {s['master']} with {s['alive_workers']} workers (UI "
                  f"{s['ui']}). Run any command against it with {s['use']}; stop it with "
                  "`healthlake cluster stop` (make cluster-stop).")


def cmd_privacy_scan(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs import privacy
    from jobs.publish.settings import exports_root, load_publish, reports_root
    from jobs.spark import get_spark

    spec = load_publish(settings)
    truth = settings.ground_truth_root / "persons.parquet"
    source = Path(args.known) if args.known else truth if truth.is_file() else None
    known = privacy.known_values(source) if source else None
    roots = [Path(r) for r in args.published] if args.published else \
        [exports_root(settings, spec), reports_root(settings, spec)]
    # Zones on local directories: every table's files are read directly, no Spark to start.
    spark = get_spark(settings, app_name="healthlake-privacy-scan") if any(
        settings.zone_is_uri(z) for z in settings.paths.zones) else None
    return {"known_values_from": str(source) if source else None,
            **privacy.run(spark, settings, roots, known, everything=True)}


def cmd_demo(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs import demo

    return demo.run(settings, args)


COMMANDS: dict[str, tuple[Callable[[Settings, argparse.Namespace], dict], str]] = {
    "config": (cmd_config, "show the validated configuration"),
    "jars": (cmd_jars, "resolve Delta's jars from Maven once into the local cache"),
    "check": (cmd_check, "write and read back a Delta table with the configured Spark session"),
    "generate": (cmd_generate, "generate a synthetic city's daily extracts into the landing zone"),
    "deliver-late": (cmd_deliver_late, "move a late institution's held-back files into landing"),
    "ingest": (cmd_ingest, "load landed files of a day (or range) into bronze and quarantine"),
    "ingest-read": (cmd_ingest_read,
                    "read and check a day's landed files of some feeds ahead of ingest, without "
                    "Spark (the daily DAG's per-feed tasks): `ingest` then loads them"),
    "standardise": (cmd_standardise,
                    "type and validate a day's (or range's) bronze into silver_std, quarantine"),
    "resolve": (cmd_resolve, "entity resolution of a day's (or range's) residents: person ids, "
                             "restricted.identity, silver.person_link, silver.person"),
    "train-model": (cmd_train_model,
                    "train the residents' match model (Splink) on standardised days, once, and "
                    "pin it (matching.model.model_file): resolve never trains"),
    "curate": (cmd_curate, "merge a day's (or range's) records into the curated silver tables, "
                           "with person_id and no identifiers"),
    "gold": (cmd_gold, "recompute the data-quality scorecard of a day (or range), then the "
                       "metrics and the informatization index of the years it touched (or "
                       "--year)"),
    "quality": (cmd_quality, "validate a day's (or range's) tables with their Great Expectations "
                             "suites (quality/); results in ops.dq_results, Data Docs; exit 1 "
                             "when a 'fail' expectation fails"),
    "maintenance": (cmd_maintenance, "OPTIMIZE (Z-ORDER where configured) and VACUUM every "
                                     "catalogued Delta table (retention at least 168 h)"),
    "airflow": (cmd_airflow, "start, stop or show a local Airflow (loopback, SQLite) running "
                             "the DAGs of dags/"),
    "er-eval": (cmd_er_eval, "score entity resolution against the generator's ground truth"),
    "match": (cmd_match, "deduplicate any table with a match specification (Splink)"),
    "quarantine": (cmd_quarantine, "list what was rejected and why, by day, institution, rule"),
    "dictionary": (cmd_dictionary, "regenerate docs/data-dictionary.md from schemas/"),
    "metrics-doc": (cmd_metrics_doc,
                    "regenerate docs/metric-catalogue.md from the metric catalogue (conf)"),
    "export": (cmd_export, "export gold metrics or tables of a period as CSV, XLSX or Parquet, "
                           "small cells suppressed, with a header (what, when, definitions, "
                           "rule)"),
    "report": (cmd_report, "write the year's self-contained HTML report: index, trends, chronic "
                           "disease, service use, data quality, charts with numbers"),
    "sql": (cmd_sql, "run a read-only SQL query over the curated tables by name (silver.person, "
                     "gold.index_score ...); restricted tables are refused"),
    "tables": (cmd_tables, "list the tables analysts can query: description, columns, rows"),
    "thrift": (cmd_thrift, "start, stop or show Spark's Thrift JDBC server (loopback) over the "
                           "tables analysts can query"),
    "cluster": (cmd_cluster, "start, stop or show a Spark standalone master and workers on "
                             "loopback (pyspark's own distribution)"),
    "privacy-scan": (cmd_privacy_scan, "look through every curated table and every file the "
                                       "pipeline writes outside the restricted folders (zones, "
                                       "cache, checkpoints, exports, reports, logs) for "
                                       "identity numbers, phones and names in clear, and check "
                                       "that the folders holding identifiers are closed to "
                                       "other accounts; exit 1 on any finding"),
    "demo": (cmd_demo, "generate a small city and run every pipeline step that exists"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="healthlake", description=__doc__.splitlines()[0])
    parser.add_argument("--conf-dir", help="configuration folder (default: ./conf)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, text) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        if name in ("generate", "demo"):
            p.add_argument("--residents", type=int, help="number of residents (default: conf)")
            p.add_argument("--full-city", action="store_true",
                           help="the whole city (2.44 million residents)")
            p.add_argument("--start", type=_date, help="first extract date (default: conf)")
            p.add_argument("--days", type=int, help="number of extract days (default: conf)")
            p.add_argument("--seed", type=int, help="random seed (default: conf)")
        if name == "deliver-late":
            p.add_argument("--date", type=_date, required=True)
        if name in ("ingest", "ingest-read", "standardise", "resolve", "curate", "gold",
                    "quality"):
            p.add_argument("--date", type=_date, required=True, help="extract date (local)")
            p.add_argument("--until", type=_date, help="last extract date of a range")
        if name == "ingest-read":
            p.add_argument("--feed", action="append", metavar="FEED",
                           help="read only this feed's files (repeatable; default: every feed "
                                "of schemas/)")
        if name == "ingest":
            p.add_argument("--run-started-at", type=dt.datetime.fromisoformat, metavar="TIME",
                           help="when this run of the day started (ISO 8601; default: now): "
                                "the time files no earlier run saw are logged as first seen. "
                                "The daily DAG gives its commit task its run's start")
            p.add_argument("--feed", action="append", metavar="FEED",
                           help="ingest only this feed (repeatable): a feed of schemas/, or "
                                "'unrecognised' for files that match no feed")
        if name == "train-model":
            p.add_argument("--date", type=_date, required=True,
                           help="first standardised extract date to train on (an initial load)")
            p.add_argument("--until", type=_date, help="last extract date to train on")
            p.add_argument("--out", help="where to write the model (default: "
                                         "matching.model.model_file)")
            p.add_argument("--replace", action="store_true",
                           help="replace an existing model (later days score with the new one)")
        if name == "gold":
            p.add_argument("--year", type=int,
                           help="recompute this whole year (the year, its quarters and months)")
        if name == "quality":
            p.add_argument("--table", action="append",
                           help="validate only this table's suite (repeatable)")
            p.add_argument("--layer", action="append",
                           choices=["ops", "bronze", "silver_std", "silver", "gold"],
                           help="validate only the suites of this layer (repeatable)")
        if name == "maintenance":
            p.add_argument("--retention-hours", type=int,
                           help="VACUUM retention, at least 168 (default: conf)")
        if name == "privacy-scan":
            p.add_argument("--known", help="values to look for as they are: a Parquet file "
                           "(default: the ground truth's persons.parquet, when there is one) "
                           "or a text file, one value a line")
            p.add_argument("--published", action="append", metavar="DIR",
                           help="folder of published files to scan (repeatable; default: "
                                "publish.exports_root and publish.reports_root)")
        if name in ("airflow", "cluster"):
            p.add_argument("action", choices=["start", "stop", "status"])
        if name == "match":
            p.add_argument("--config", required=True, help="match specification (YAML)")
            p.add_argument("--input", required=True, help="Delta table, Parquet or CSV")
            p.add_argument("--output", required=True, help=".csv, .parquet or a Delta folder")
            p.add_argument("--save-model", help="write the (trained) Splink model here (JSON)")
        if name == "export":
            p.add_argument("names", nargs="+", metavar="METRIC_OR_TABLE",
                           help="a metric id of the catalogue or a gold table (gold.index_score)")
            p.add_argument("--period", required=True, action="append",
                           help="year 2024, quarter 2024Q2, month 2024-04 or day 2024-04-15; "
                                "repeat it (--period 2024 --period 2024-04) to publish several "
                                "periods as one release, suppressed together")
            p.add_argument("--format", choices=["csv", "xlsx", "parquet"], default="csv")
            p.add_argument("--out", help="folder to write to (default: publish.exports_root/"
                                         "<period>)")
            p.add_argument("--k", type=int, help="suppression threshold: the configured k "
                                                 "(10) or more; a smaller k is refused")
        if name == "report":
            p.add_argument("--year", type=int, required=True)
            p.add_argument("--out", help="HTML file (default: publish.reports_root/"
                                         "healthlake-report-<year>.html)")
            p.add_argument("--k", type=int, help="suppression threshold: the configured k "
                                                 "(10) or more; a smaller k is refused")
        if name == "sql":
            p.add_argument("query", help='e.g. "SELECT * FROM gold.index_score WHERE year = 2024"')
            p.add_argument("--format", choices=["table", "csv", "json"], default="table")
        if name == "thrift":
            p.add_argument("action", choices=["start", "stop", "status"])
        if name == "quarantine":
            p.add_argument("--date", type=_date, help="first extract date")
            p.add_argument("--until", type=_date, help="last extract date")
            p.add_argument("--institution")
            p.add_argument("--rule", help="rule id, e.g. R_FORM or F_CHECKSUM")
            p.add_argument("--feed")
    return parser


# Commands that write the lake: one at a time (jobs.operations.writer_lock), zones secured first.
WRITERS = {"ingest", "standardise", "resolve", "curate", "gold", "quality", "maintenance",
           "check", "demo"}
# Commands that write identifiers outside the lake's tables (staged reads, match outputs and
# working files): the private folders (restricted zone, landing, staging, scratch) secured first.
PRIVATE_WRITERS = {"ingest-read", "match"}


@contextmanager
def _writing(settings: Settings, command: str, command_line: str):
    """For a writer: the lake's writer lock and the zones' permissions, and the command's
    audit rows written before the lock is released (whatever the outcome); for any other
    command its audit rows at its end (:func:`jobs.audit.write` takes the lock for them)."""
    from jobs.operations import secure_private_roots, secure_zones, writer_lock

    if command not in WRITERS:
        if command in PRIVATE_WRITERS:
            secure_private_roots(settings)
        with _audited(settings, command_line):
            yield
        return
    with writer_lock(settings, command_line):
        secure_zones(settings)
        with _audited(settings, command_line):
            yield


@contextmanager
def _audited(settings: Settings, command_line: str):
    """The body, then its audit rows (also when it fails: a failed export may have written
    files)."""
    try:
        yield
    except BaseException:
        _flush_audit(settings, command_line, failed=True)
        raise
    _flush_audit(settings, command_line)


class AuditNotWritten(RuntimeError):
    """The command's audit rows could not be written to ops.audit_log."""


def _flush_audit(settings: Settings, command_line: str, failed: bool = False) -> None:
    """Write what the command exported or read of the restricted zone to ops.audit_log. When
    they cannot be written, the events are logged and a command that did not fail already
    fails (:class:`AuditNotWritten`, exit 5)."""
    from jobs import audit

    if not audit.pending():
        return
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    try:
        if spark is None:
            raise RuntimeError("no Spark session")
        audit.flush(spark, settings, command_line)
    except Exception as exc:  # say loudly what was not logged
        log.exception("audit: %d event(s) of `%s` NOT written to ops.audit_log",
                      len(audit.pending()), command_line)
        if failed:
            return
        raise AuditNotWritten(f"the audit rows of `{command_line}` were not written to "
                              f"{audit.AUDIT_TABLE}: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command_line = shlex.join(["healthlake", *(sys.argv[1:] if argv is None else argv)])
    try:
        settings = load(Path(args.conf_dir) if args.conf_dir else None)
        with _writing(settings, args.command, command_line):
            summary = COMMANDS[args.command][0](settings, args)
    except ConfigError as exc:
        print(f"healthlake: configuration error: {exc}", file=sys.stderr)
        return 2
    except (QualityError, PrivacyError) as exc:
        print(f"healthlake: {exc}", file=sys.stderr)
        return 1
    except LakeBusy as exc:
        print(f"healthlake: {exc}", file=sys.stderr)
        return 4
    except AuditNotWritten as exc:
        print(f"healthlake: {exc}", file=sys.stderr)
        return 5
    _print(summary, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
