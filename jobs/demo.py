"""`healthlake demo` (what `make demo` runs): a small city through every pipeline step that exists.

Each step is a job that also runs on its own; the demo only chains them on the embedded default
configuration and prints what happened and where to look.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

from jobs.config import Settings


def run(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs import check
    from jobs.generate import generate
    from jobs.gold import job as gold_job
    from jobs.ingest import job as ingest
    from jobs.ingest import report
    from jobs.silver import curate, evaluate, resolve
    from jobs.silver import job as silver
    from jobs.spark import get_spark

    settings.secret("hmac_key")  # the pipeline refuses to run without its key
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    generated = generate(settings, residents=args.residents, full_city=args.full_city,
                         start_date=args.start, days=args.days, seed=args.seed)
    timings["generate"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    spark = get_spark(settings, app_name="healthlake-demo")
    checked = check.run(spark, settings)
    timings["spark_delta_check"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    days = [dt.date.fromisoformat(d) for d in generated["dates"]]
    ingested = {d.isoformat(): ingest.run(spark, settings, d) for d in days}
    quarantine = report.run(spark, settings)
    timings["ingest"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    standardised = {d.isoformat(): silver.run(spark, settings, d) for d in days}
    timings["standardise"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    resolved = {d.isoformat(): resolve.run(spark, settings, d) for d in days}
    timings["entity_resolution"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    curated = {d.isoformat(): curate.run(spark, settings, d) for d in days}
    timings["curate"] = round(time.perf_counter() - t0, 1)
    scores = evaluate.evaluate(spark, settings)

    t0 = time.perf_counter()
    gold = gold_job.run_days(spark, settings, days)
    timings["gold"] = round(time.perf_counter() - t0, 1)
    year = gold["years"][-1]
    headline = headline_metrics(spark, settings, year)
    index_rows = index_table(spark, settings, year)

    return {
        "generated": {k: generated[k] for k in ("residents", "institutions", "dates", "files",
                                                "rows", "faults")},
        "spark_delta_check": {k: checked[k] for k in ("spark_version", "table", "delta_version")},
        "bronze ingest (rows in = loaded + quarantined)": {
            day: f"{r['files']} files, {r['rows_in']} rows in = {r['rows_loaded']} loaded + "
                 f"{r['rows_quarantined']} quarantined; files {r['files_by_status']}"
            for day, r in ingested.items()},
        "quarantine (healthlake quarantine)": {
            f"{q['extract_date']} {q['institution_id']} {q['feed']} {q['rule_id']}":
                f"{q['n_rows']} row(s): {q['example'][:100]}" for q in quarantine},
        "silver standardisation (bronze rows = silver + rejected)": {
            day: ", ".join(f"{feed} {c['n_bronze']}={c['n_silver']}+{c['n_rejected']}"
                           for feed, c in r["feeds"].items())
            for day, r in standardised.items()},
        "entity resolution (healthlake resolve)": {
            day: f"{r['identity_rows']} rows; {r['new_local_patients']} new local patients: "
                 f"{r['deterministic']} by national ID, {r.get('linked_to_known', 0)} linked by "
                 f"Splink, {r.get('left_to_cluster', 0)} clustered as new; "
                 f"{r['persons']} persons in silver.person"
            for day, r in resolved.items()},
        "entity resolution against the ground truth (healthlake er-eval)": {
            k: scores[k] for k in ("precision", "recall", "f1", "predicted_persons",
                                   "true_persons")},
        "curated silver (healthlake curate)": {
            day: ", ".join(f"{t} {c['distinct_keys']}" for t, c in r["tables"].items())
            for day, r in curated.items()},
        "data-quality scorecard, city (gold.dq_scorecard)": dq_summary(spark, settings),
        f"headline metrics, city, {year} (gold.metric_value)": headline,
        f"informatization index {year} (gold.index_score): total / governance / construction "
        "/ application, rank, change on the previous year": index_rows,
        "seconds": timings,
        "where_to_look": {
            "landing zone": settings.landing_root,
            "ground truth": settings.ground_truth_root,
            "reference data": settings.reference_root,
            "late deliveries (held back)": settings.late_deliveries_root,
            "lake": ", ".join(f"{z}: {settings.zone_location(z)}"
                              for z in settings.paths.zones),
            "tables": ", ".join(sorted(settings.tables)),
            "try": "healthlake quarantine --rule R_FORM; healthlake deliver-late --date "
                   f"{days[0]} && healthlake ingest --date {days[0]}; healthlake er-eval",
        },
    }


HEADLINE = ["ehr_coverage", "hypertension_prevalence_crude", "hypertension_prevalence_age_std",
            "diabetes_prevalence_crude", "visits_per_1000", "online_visit_share",
            "mutual_recognition_rate", "digital_referral_share"]


def headline_metrics(spark, settings: Settings, year: int) -> dict:
    """A few city-level figures of the year with their catalogue names."""
    from pyspark.sql import functions as F

    from jobs.gold.catalogue import load_catalogue
    from jobs.gold.metrics import GRAIN_COLUMNS
    from jobs.lake import read_table

    catalogue = load_catalogue(settings)
    rows = (read_table(spark, settings, "gold.metric_value")
            .where((F.col("period") == str(year)) & F.col("metric_id").isin(HEADLINE))
            .where(" AND ".join(f"{c} IS NULL" for c in GRAIN_COLUMNS)).collect())
    units = {"percent": "%", "per_1000": " per 1,000"}
    out = {}
    for r in sorted(rows, key=lambda r: HEADLINE.index(r["metric_id"])):
        m = catalogue.metric(r["metric_id"])
        value = "n/a" if r["value"] is None else f"{r['value']:.2f}{units.get(m.unit, '')}"
        if not m.standardisation:  # a standardised rate's terms are weights, not counts
            value += f" ({r['numerator']:.0f} / {r['denominator']:.0f})"
        out[f"{m.name_en} ({m.name_zh})"] = value
    return out


def dq_summary(spark, settings: Settings) -> dict:
    """Each data-quality metric over every institution-day of the scorecard."""
    from jobs.gold.catalogue import load_catalogue
    from jobs.gold.scorecard import METRIC_IDS, rollup
    from jobs.lake import read_table

    catalogue = load_catalogue(settings)
    rows = {r["metric_id"]: r for r in
            rollup(read_table(spark, settings, "gold.dq_scorecard"), ["metric_id"]).collect()}
    return {catalogue.metric(m).name_en: (f"{rows[m]['value']:.2f}% ({rows[m]['numerator']:.0f}"
                                          f" / {rows[m]['denominator']:.0f})")
            for m in METRIC_IDS if m in rows and rows[m]["value"] is not None}


def index_table(spark, settings: Settings, year: int) -> dict[str, str]:
    """The city and district rows of the index, one line each."""
    from jobs.lake import read_table

    scores = (read_table(spark, settings, "gold.index_score")
              .where(f"year = {year} AND area_level IN ('city', 'district')").toPandas())

    def fmt(v, spec=".1f"):
        return "-" if v is None or v != v else format(v, spec)

    lines = {}
    for (level, code, name), g in scores.groupby(["area_level", "area_code", "area_name"],
                                                 sort=False):
        s = g.set_index("index_name")
        total = s.loc["total"]
        subs = " / ".join(fmt(s.loc[n, "score"]) for n in ("governance", "construction",
                                                          "application"))
        rank = "" if level == "city" else f", rank {total['rank']} of {total['n_areas']}"
        lines[f"{name} ({code})"] = (f"{fmt(total['score'])} ({subs}){rank}, change "
                                     f"{fmt(total['change'], '+.1f')}")
    return lines
