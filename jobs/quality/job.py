"""`healthlake quality --date D`: validate the day's tables with their Great Expectations suites.

For each suite of quality/ (one per table, named after it) whose table has been written:

1. **The batch**: the table's rows of the extract date (or the whole table), with the suite's
   lookup columns (is this encounter's person in silver.person?) and derived columns added,
   cached, so every expectation reads the same rows.
2. **The checkpoint** (one per suite, in a file Data Context under the ops zone) validates it.
   Result format BASIC without examples: Great Expectations then bundles the expectations'
   aggregates into one Spark job per domain instead of several jobs per expectation.
3. **Examples**, only for the expectations that failed: a second validation of just those, with
   the offending rows' keys (and institutions), for the message and for ops.dq_results.

Every result lands in ops.dq_results (one row per expectation, plus one per offending
institution), so trends per table, institution and expectation are a query away; Data Docs are
rebuilt as static HTML. A failed expectation of severity "fail" raises QualityError, naming the
table, the expectation and offending keys: the CLI exits 1 and the Airflow task fails, so nothing
downstream runs on a table that cannot be trusted. "warn" failures are logged and recorded.
ops.feed_counts, which some expectations judge, is recomputed first.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

from jobs.config import Settings
from jobs.lake import read_table, table_exists, write_table
from jobs.quality import QualityError, docs_assets, feed_counts
from jobs.quality.spec import Expectation, QualitySettings, Suite, load_suites, quality_settings
from jobs.timing import Stopwatch

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)
logging.getLogger("great_expectations").setLevel(logging.WARNING)

RESULTS_TABLE = "ops.dq_results"
DATASOURCE = "healthlake"
MAX_LISTED = 100_000
RESULTS_SCHEMA = (
    "run_id string, validated_at timestamp, extract_date date, suite string, table_name string, "
    "expectation_id string, expectation_type string, column_name string, severity string, "
    "success boolean, institution_id string, element_count long, unexpected_count long, "
    "unexpected_percent double, observed_value string, examples array<string>, "
    "seconds double")


# -- batches -------------------------------------------------------------------------------


def suite_batch(spark: SparkSession, settings: Settings, suite: Suite, day: dt.date
                ) -> DataFrame:
    """The rows one validation of ``suite`` reads: the day's (or all) rows of its table, with
    one boolean column per lookup (null where the row has no key) and the derived columns."""
    from pyspark.sql import functions as F

    df = read_table(spark, settings, suite.table)
    if suite.day_column:
        df = df.where(F.col(suite.day_column) == F.lit(day))
    for column, lookup in suite.lookups.items():
        keys = (read_table(spark, settings, lookup.table)
                .select(*[F.col(theirs).alias(ours) for ours, theirs in lookup.by]).distinct()
                .withColumn(column, F.lit(True)))
        has_key = F.lit(True)
        for ours, _ in lookup.by:
            has_key = has_key & F.col(ours).isNotNull()
        df = (df.join(keys, [ours for ours, _ in lookup.by], "left")
              .withColumn(column, F.when(has_key, F.coalesce(F.col(column), F.lit(False)))))
    for column, expression in suite.derive.items():
        df = df.withColumn(column, F.expr(expression.replace("{extract_date}", f"DATE'{day}'")))
    return df


# -- Great Expectations --------------------------------------------------------------------


def gx_context(settings: Settings, q: QualitySettings | None = None):
    """The file Data Context under the ops zone (suites, results and Data Docs live there):
    no progress bars, no usage statistics sent anywhere, Data Docs pages for the most recent
    results only (every result stays in ops.dq_results and the context's result store)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    q = q or quality_settings(settings)
    root = settings.local_dir("ops") / "great_expectations"
    root.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(root))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.variables.analytics_enabled = False
    sites = context.variables.data_docs_sites
    sites["local_site"]["show_how_to_buttons"] = False
    sites["local_site"].setdefault("site_index_builder", {
        "class_name": "DefaultSiteIndexBuilder"})["validation_results_limit"] = \
        q.data_docs_recent_results
    context.variables.data_docs_sites = sites
    context.variables.save()
    # A dataframe asset holds no data between runs: the source is laid anew each run (a stored
    # one comes back without its context), its assets then added by _checkpoint.
    context.data_sources.add_or_update_spark(name=DATASOURCE)
    return context


def data_docs_index(settings: Settings):
    return (settings.local_dir("ops") / "great_expectations" / "gx" / "uncommitted"
            / "data_docs" / "local_site" / "index.html")


def gx_expectation(e: Expectation):
    from great_expectations.expectations.registry import get_expectation_impl

    return get_expectation_impl(e.type)(**e.kwargs, meta={"id": e.id, "severity": e.severity})


def _checkpoint(context, suite: Suite):
    """The suite's checkpoint (suite, batch definition, validation definition), kept in step
    with quality/<table>.yaml on every run."""
    import great_expectations as gx

    source = context.data_sources.get(DATASOURCE)
    assets = {a.name: a for a in source.assets}
    asset = assets.get(suite.name) or source.add_dataframe_asset(name=suite.name)
    batches = {b.name: b for b in asset.batch_definitions}
    batch_definition = batches.get("day") or asset.add_batch_definition_whole_dataframe("day")
    gx_suite = context.suites.add_or_update(gx.ExpectationSuite(
        name=suite.name, expectations=[gx_expectation(e) for e in suite.expectations],
        meta={"table": suite.table, "defined_in": suite.source,
              "description": suite.description}))
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=suite.name, data=batch_definition, suite=gx_suite))
    checkpoint = context.checkpoints.add_or_update(gx.Checkpoint(
        name=suite.name, validation_definitions=[definition],
        result_format={"result_format": "BASIC", "partial_unexpected_count": 0}))
    return checkpoint, batch_definition


def validate(context, suite: Suite, batch: DataFrame, q: QualitySettings, run_name: str
             ) -> tuple[list[dict], float]:
    """Run the suite's checkpoint on ``batch``; examples for what failed. Returns one dict per
    expectation (and per offending institution) and the seconds it took."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    started = time.perf_counter()
    checkpoint, batch_definition = _checkpoint(context, suite)
    outcome = checkpoint.run(batch_parameters={"dataframe": batch},
                             expectation_parameters=dict(q.thresholds),
                             run_id=RunIdentifier(run_name=run_name))
    (result,) = outcome.run_results.values()
    by_id = {e.id: e for e in suite.expectations}
    rows = [_row(r.expectation_config.meta["id"], by_id, r) for r in result.results]
    failed = [by_id[r["expectation_id"]] for r in rows if not r["success"]]
    if failed:
        index_columns = [c for c in (*suite.key, "institution_id") if c in batch.columns]
        index_columns = list(dict.fromkeys(index_columns))
        # Every offending row's institution (COMPLETE) makes per-institution counts; past
        # MAX_LISTED rows only the examples are fetched (SUMMARY), not a million keys.
        listed = max((r["unexpected_count"] or 0) for r in rows if not r["success"])
        complete = "institution_id" in index_columns and listed <= MAX_LISTED
        detail = batch_definition.get_batch(batch_parameters={"dataframe": batch}).validate(
            gx.ExpectationSuite(name=f"{suite.name}.failed",
                                expectations=[gx_expectation(e) for e in failed]),
            result_format={"result_format": "COMPLETE" if complete else "SUMMARY",
                           "unexpected_index_column_names": index_columns,
                           "partial_unexpected_count": q.examples},
            expectation_parameters=dict(q.thresholds))
        found = {r.expectation_config.meta["id"]: r.result for r in detail.results}
        for row in list(rows):
            if row["expectation_id"] in found:
                rows.extend(_add_examples(row, found[row["expectation_id"]], index_columns,
                                          q.examples))
    return rows, time.perf_counter() - started


def _row(exp_id: str, by_id: dict[str, Expectation], r) -> dict:
    e = by_id[exp_id]
    res = r.result or {}
    column = e.kwargs.get("column") or ",".join(e.kwargs.get("column_list") or []) or \
        ",".join(e.kwargs[k] for k in ("column_A", "column_B") if k in e.kwargs) or None
    observed = res.get("observed_value")
    return {"expectation_id": e.id, "expectation_type": e.type, "column_name": column,
            "severity": e.severity, "success": bool(r.success), "institution_id": None,
            "element_count": res.get("element_count"),
            "unexpected_count": res.get("unexpected_count"),
            "unexpected_percent": res.get("unexpected_percent"),
            "observed_value": None if observed is None else json.dumps(observed, default=str),
            "examples": [], "exception": (r.exception_info or {}).get("exception_message")}


def _describe(index: dict, value: Any = None, show_value: bool = False) -> str:
    keys = ", ".join(f"{k}={v}" for k, v in index.items())
    return f"{keys} (value {value!r})" if show_value else keys


def _add_examples(row: dict, result: dict, index_columns: list[str], n: int) -> list[dict]:
    """Fill ``row['examples']`` from a detailed result; returns one extra row per offending
    institution when the result lists them."""
    column = row["column_name"]
    indexes = result.get("unexpected_index_list") or result.get("partial_unexpected_index_list")
    if indexes:
        examples = []
        for item in indexes:
            keys = {k: item.get(k) for k in index_columns if k in item}
            shown = column in item and column not in keys
            examples.append(_describe(keys, item.get(column), shown))
        row["examples"] = list(dict.fromkeys(examples))[:n]
    else:
        values = result.get("partial_unexpected_list") or []
        row["examples"] = [json.dumps(v, default=str, ensure_ascii=False) for v in values][:n]
    if not indexes or "institution_id" not in index_columns:
        return []
    per_institution = Counter(item["institution_id"] for item in indexes
                              if item.get("institution_id") is not None)
    return [{**row, "institution_id": inst, "unexpected_count": count,
             "element_count": None, "unexpected_percent": None,
             "examples": [e for e in row["examples"] if f"institution_id={inst}" in e]}
            for inst, count in sorted(per_institution.items(), key=lambda kv: str(kv[0]))]


# -- the job -------------------------------------------------------------------------------


def run(spark: SparkSession, settings: Settings, day: dt.date, tables: list[str] | None = None,
        layers: list[str] | None = None) -> dict:
    """Validate the day's tables (all suites, or those of ``tables`` / ``layers``)."""
    watch = Stopwatch()
    q = quality_settings(settings)
    suites = [s for s in load_suites(settings, tables) if not layers or s.layer in layers]
    if any(s.table == feed_counts.TABLE for s in suites):
        feed_counts.run(spark, settings, day, q.feed_counts)
        watch.lap("feed_counts")
    context = gx_context(settings, q)
    watch.lap("context")
    run_id = f"quality-{day}-{uuid.uuid4().hex[:8]}"
    validated_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    records, summary, skipped = [], {}, []
    for suite in suites:
        if not table_exists(spark, settings, suite.table):
            skipped.append(suite.name)
            continue
        batch = suite_batch(spark, settings, suite, day).cache()
        try:
            rows, seconds = validate(context, suite, batch, q, run_name=f"{day} {run_id}")
        finally:
            batch.unpersist()
        watch.lap("validate")
        for r in rows:
            error = r.pop("exception", None)
            if error and not r["success"]:
                r["observed_value"] = r["observed_value"] or f"error: {error[:300]}"
            records.append({"run_id": run_id, "validated_at": validated_at, "extract_date": day,
                            "suite": suite.name, "table_name": suite.table,
                            "seconds": round(seconds, 2), **r})
        totals = [r for r in rows if r["institution_id"] is None]
        summary[suite.name] = (f"{sum(r['success'] for r in totals)}/{len(totals)} passed "
                               f"in {seconds:.1f} s")
        for r in totals:
            if not r["success"]:
                log.log(logging.ERROR if r["severity"] == "fail" else logging.WARNING,
                        "%s", _failure_line(suite.name, r))
    if records:
        df = spark.createDataFrame([_ordered(r) for r in records], RESULTS_SCHEMA)
        write_table(df, settings, RESULTS_TABLE, mode="append")
        watch.lap("record")
    if q.data_docs:
        context.build_data_docs()
        cache = settings.path(settings.paths.cache_root)
        docs_assets.make_offline(data_docs_index(settings).parent, cache)
        watch.lap("data_docs")
    failures = [r for r in records if r["institution_id"] is None and not r["success"]]
    result = {
        "extract_date": day.isoformat(), "run_id": run_id, "suites": summary,
        "not_written_yet": skipped,
        "failed_fail": [_failure_line(r["suite"], r) for r in failures if r["severity"] == "fail"],
        "failed_warn": [_failure_line(r["suite"], r) for r in failures if r["severity"] == "warn"],
        "results_table": RESULTS_TABLE,
        "data_docs": str(data_docs_index(settings)) if q.data_docs else None,
        "seconds": watch.total, "seconds_by_step": watch.steps,
    }
    if result["failed_fail"]:
        raise QualityError(
            f"data quality of {day}: {len(result['failed_fail'])} expectation(s) of severity "
            "'fail' failed, downstream tasks must not run:\n  " + "\n  ".join(
                result["failed_fail"]) + f"\n(all results: {RESULTS_TABLE}, run_id {run_id}; "
            f"Data Docs: {result['data_docs']})")
    return result


def _failure_line(suite: str, r: dict) -> str:
    counts = ""
    if r.get("unexpected_count") is not None:
        counts = f"{r['unexpected_count']} of {r['element_count']} rows unexpected"
    elif r.get("observed_value") is not None:
        counts = f"observed {r['observed_value']}"
    examples = f"; e.g. {'; '.join(r['examples'])}" if r.get("examples") else ""
    return f"{suite}: {r['expectation_id']} [{r['severity']}] failed: {counts}{examples}"


def _ordered(r: dict) -> tuple:
    names = [part.split()[0] for part in RESULTS_SCHEMA.split(", ")]
    return tuple(r.get(n) for n in names)

