"""Entity resolution quality and time, beside plain Splink on the same data and SparkSession.

    .venv/bin/python benchmarks/entity_resolution.py --residents 100000 --days 2
    .venv/bin/python benchmarks/entity_resolution.py --full-city --days 1

1. Generates the city (kept under --out and reused when it is already there), ingests and
   standardises its days into a fresh lake.
2. healthlake: `healthlake train-model` on the first day (what a city does once, on its initial
   load; its time is counted), `healthlake resolve` day by day, then `er-eval` against the
   ground truth: pairwise precision, recall, F1.
3. Plain Splink, same session, same rows: every person-bearing row of those days deduplicated
   at once with a plain configuration (exact ID, name, birth date, sex, phone, area; blocking on
   birth date, sex and surname, phone, ID; u by random sampling, EM on two blocks; clusters at
   0.99), scored with the same pairwise figures.
Updates the section "Entity resolution" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODEL = "residents-match-model.json"  # the city's own model, trained on its first day

from benchmarks.common import machine, peak_rss_gib, publish  # noqa: E402
from jobs.config import environ_under, load  # noqa: E402

SECTION = "Entity resolution"
START = dt.date(2024, 4, 15)

PLAIN_SPLINK = {
    "unique_id_column": "row_id",
    "threshold_match_probability": 0.99,
    # Birth date, sex and surname (a name's first character): all-pairs on birth date alone is
    # about 190 M comparisons for the full city, more than this machine does in hours.
    "blocking_rules": [["birth_date", "sex", "substr(name, 1, 1)"], ["phone"], ["national_id"]],
    "comparisons": [{"function": "ExactMatch", "column": c}
                    for c in ("national_id", "name", "birth_date", "sex", "phone", "area_code")],
    "training": {"prior_rules": [["national_id"]], "prior_recall": 0.9, "u_max_pairs": 2_000_000,
                 "seed": 42, "em_blocking_rules": [["birth_date", "sex"], ["national_id"]]},
}


def prepare(root: Path, residents: int | None, full_city: bool, days: int,
            spark_conf: dict, keep_resolution: bool = False) -> dict:
    """Generate (unless this exact city is there), then ingest and standardise into a fresh
    lake (unless a finished preparation of this city is there: a full city takes an hour to
    prepare). Returns the settings and the seconds of each step."""
    from jobs.generate import generate
    from jobs.ingest import job as ingest
    from jobs.silver import job as standardise
    from jobs.spark import get_spark

    env = environ_under(root) | {"HEALTHLAKE_HMAC_KEY": "benchmark-key-not-for-production",
                                 "HEALTHLAKE_MATCHING__MODEL__MODEL_FILE": str(root / MODEL)}
    settings = load(environ=env)
    marker = root / "generated.json"
    want = {"residents": residents, "full_city": full_city, "days": days}
    seconds = {}
    if not (marker.exists() and json.loads(marker.read_text())["params"] == want):
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        summary = generate(settings, residents=residents, full_city=full_city, start_date=START,
                           days=days)
        seconds["generate"] = round(time.perf_counter() - t0, 1)
        marker.write_text(json.dumps({"params": want, "summary": summary}, default=str))
    spark = get_spark(settings, app_name="benchmark-er", extra_conf=spark_conf)
    dates = [START + dt.timedelta(days=i) for i in range(days)]
    prepared = root / "prepared.json"
    if prepared.exists() and json.loads(prepared.read_text())["params"] == want:
        seconds = json.loads(prepared.read_text())["seconds"]
        print(f"reusing the prepared lake under {root} (remove {prepared} to rebuild)")
        if not keep_resolution:
            _drop_resolution(settings)
    else:
        prepared.unlink(missing_ok=True)
        shutil.rmtree(root / "lake", ignore_errors=True)
        t0 = time.perf_counter()
        for d in dates:
            ingest.run(spark, settings, d)
        seconds["ingest"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        for d in dates:
            standardise.run(spark, settings, d)
        seconds["standardise"] = round(time.perf_counter() - t0, 1)
        prepared.write_text(json.dumps({"params": want, "seconds": seconds}))
    return {"settings": settings, "spark": spark, "dates": dates, "seconds": seconds,
            "generated": json.loads(marker.read_text())["summary"]}


def _drop_resolution(settings) -> None:
    """Remove what an earlier resolution left (identity, links, persons, the city's trained
    model), so a reused lake is resolved from scratch."""
    for table in ("restricted.identity", "silver.person_link", "silver.person_event",
                  "silver.person"):
        shutil.rmtree(settings.table_path(table), ignore_errors=True)
    settings.path(settings.matching["model"]["model_file"]).unlink(missing_ok=True)


def plain_splink(spark, settings) -> dict:
    """Plain Splink over every identity row of the lake, scored against the ground truth."""
    from pyspark.sql import functions as F

    from jobs.match import engine
    from jobs.silver import resolve
    from jobs.silver.evaluate import ground_truth_records, pairwise_scores

    records = resolve.identity_records(resolve.read_day(spark, settings, "true"))
    rows = records.withColumn("row_id", F.concat_ws(
        "|", "feed", "institution_id", "record_key", F.col("extract_date").cast("string")))
    rows = rows.select("row_id", "feed", "institution_id", "record_key", "extract_date",
                       "national_id", "name", "birth_date", "sex", "phone", "area_code").cache()
    n = rows.count()
    spec = engine.load_spec(PLAIN_SPLINK, "plain")
    t0 = time.perf_counter()
    model = engine.train(spark, rows, spec)
    clusters = engine.dedupe(spark, rows.drop("feed", "institution_id", "record_key",
                                              "extract_date"), spec, model).cache()
    clusters.count()
    seconds = round(time.perf_counter() - t0, 1)
    items = (rows.join(clusters, "row_id")
             .join(ground_truth_records(spark, settings),
                   ["extract_date", "feed", "institution_id", "record_key"]))
    scores = pairwise_scores(items, predicted="cluster_id", truth="person_key")
    return {"rows": n, "seconds": seconds, **scores}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--residents", type=int, default=100_000)
    ap.add_argument("--full-city", action="store_true")
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--no-baseline", action="store_true", help="skip plain Splink")
    ap.add_argument("--baseline-only", action="store_true",
                    help="keep the lake's resolution (from an earlier run) and run plain Splink")
    ap.add_argument("--out", default="/tmp/healthlake-bench-er")
    ap.add_argument("--driver-memory", help="spark.driver.memory, e.g. 16g for the full city")
    args = ap.parse_args()
    started = time.perf_counter()
    spark_conf = {"spark.driver.memory": args.driver_memory} if args.driver_memory else {}
    p = prepare(Path(args.out), None if args.full_city else args.residents, args.full_city,
                args.days, spark_conf, keep_resolution=args.baseline_only)
    spark, settings = p["spark"], p["settings"]

    from jobs.silver import evaluate, resolve

    resolution = Path(args.out) / "resolution.json"
    if args.baseline_only:
        if not resolution.exists():
            sys.exit(f"--baseline-only: no earlier resolution recorded in {resolution}")
        earlier = json.loads(resolution.read_text())
        per_day, er_seconds = earlier["per_day"], earlier["er_seconds"]
        trained = earlier["trained"]
    else:
        t0 = time.perf_counter()
        trained = resolve.train_model(spark, settings, p["dates"][0], p["dates"][0])
        print(f"[{time.strftime('%H:%M:%S')}] trained the model: {trained['seconds']} s",
              flush=True)
        per_day = {}
        for d in p["dates"]:
            per_day[d.isoformat()] = resolve.run(spark, settings, d)
            print(f"[{time.strftime('%H:%M:%S')}] resolved {d}: "
                  f"{per_day[d.isoformat()]['seconds']} s", flush=True)
        er_seconds = round(time.perf_counter() - t0, 1)
        resolution.write_text(json.dumps({"per_day": per_day, "er_seconds": er_seconds,
                                          "trained": trained},
                                         default=str))
    ours = evaluate.evaluate(spark, settings)
    who = "full city (2.44 M residents)" if args.full_city else f"{args.residents:,} residents"
    report = dict(args=args, who=who, prepared=p["seconds"], trained=trained, per_day=per_day,
                  er_seconds=er_seconds, ours=ours, started=started)
    # healthlake's figures are written first: the baseline can take longer than a session.
    write_section(**report, base=None, baseline_pending=not args.no_baseline)
    if not args.no_baseline:
        print(f"[{time.strftime('%H:%M:%S')}] plain Splink starts", flush=True)
        write_section(**report, base=plain_splink(spark, settings), baseline_pending=False)


def write_section(args, who, prepared, trained, per_day, er_seconds, ours, started, base,
                  baseline_pending) -> None:
    total = round(time.perf_counter() - started, 1)
    cmd = ("`.venv/bin/python benchmarks/entity_resolution.py "
           + ("--full-city" if args.full_city else f"--residents {args.residents}")
           + f" --days {args.days}" + (" --no-baseline" if args.no_baseline else "")
           + (" --baseline-only" if args.baseline_only else "")
           + (f" --driver-memory {args.driver_memory}" if args.driver_memory else "") + "`")
    lines = [
        f"Command: {cmd}  ", f"Machine: {machine()}  ",
        f"Data: {who}, {args.days} extract day(s) from {START}, default fault and variation "
        f"rates; {ours['items']:,} person-bearing rows ({ours['true_persons']:,} true persons).  ",
        f"Preparation (s): {prepared}; whole run {total} s; peak memory: driver "
        f"{peak_rss_gib():.1f} GiB, Spark JVM {peak_rss_gib(children=True):.1f} GiB.",
        "",
        "| run | seconds | precision | recall | F1 | persons (true) | false-merge persons "
        "| split true persons |",
        "|---|---|---|---|---|---|---|---|",
        f"| healthlake resolve | {er_seconds} | {ours['precision']:.4f} | {ours['recall']:.4f} | "
        f"{ours['f1']:.4f} | {ours['predicted_persons']:,} ({ours['true_persons']:,}) | "
        f"{ours['persons_merging_several_true']} | {ours['true_persons_split']} |",
    ]
    if base:
        lines.append(
            f"| plain Splink, same rows and session | {base['seconds']} | "
            f"{base['precision']:.4f} | {base['recall']:.4f} | {base['f1']:.4f} | "
            f"{base['predicted_persons']:,} ({base['true_persons']:,}) | "
            f"{base['persons_merging_several_true']} | {base['true_persons_split']} |")
        lines += ["", f"Time ratio healthlake / plain Splink: "
                      f"{er_seconds / base['seconds']:.2f}."]
    elif baseline_pending:
        lines += ["", "Plain Splink: still running when this was written."]
    lines += ["", f"healthlake's time includes training the model once on the first day: "
                  f"{trained['seconds']} s on {trained['local_patients']:,} local patients.",
              "", "healthlake per day (s, new local patients: by ID / linked / clustered): "
              + "; ".join(f"{d} {r['seconds']} s ({r['deterministic']:,} / "
                          f"{r.get('linked_to_known', 0):,} / {r.get('left_to_cluster', 0):,})"
                          for d, r in per_day.items()) + ".",
              "", "healthlake seconds by step: " + "; ".join(
                  f"{d} {r['seconds_by_step']}" for d, r in per_day.items()) + ".",
              "", "Rows that end with their true person's majority person, by identity "
              "variation: " + ", ".join(f"{k} {v['with_majority']:.4f} ({v['rows']:,})"
                                        for k, v in ours["by_variation"].items()) + "."]
    publish(f"{SECTION}: {who}", lines)


if __name__ == "__main__":
    main()
