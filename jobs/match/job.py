"""`healthlake match --config FILE --input PATH --output PATH`: deduplicate any table.

The input is a Delta table (a folder with ``_delta_log``), Parquet (file or folder) or CSV with a
header; the output gets every input column plus ``cluster_id``, ``n_in_cluster`` and
``best_match_probability``, written as CSV (``.csv``), Parquet (``.parquet``) or a Delta table
(anything else). Without a trained model in the specification the model is trained on the
input first (and saved with ``--save-model``).

Identifiers stay restricted: Splink's checkpoints and the job's working files are in a private
folder under the restricted zone, removed when the job ends (:func:`jobs.spark.job_scratch`).
An input inside the restricted zone (``restricted.identity``, any path under its root) is
audited (table or path, Delta version, rows) and its output must be inside the restricted zone
too (else the job refuses before reading); the write is audited.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from jobs import audit
from jobs.config import Settings
from jobs.match import engine
from jobs.privacy import PrivacyError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def read_any(spark: SparkSession, path: Path) -> DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if (path / "_delta_log").is_dir():
        return spark.read.format("delta").load(str(path))
    if path.suffix == ".csv":
        return spark.read.option("header", True).csv(str(path))
    return spark.read.parquet(str(path))


def write_any(df: DataFrame, path: Path) -> None:
    if path.suffix == ".csv":
        path.parent.mkdir(parents=True, exist_ok=True)
        df.toPandas().to_csv(path, index=False)
    elif path.suffix == ".parquet":
        df.write.mode("overwrite").parquet(str(path))
    else:
        df.write.format("delta").mode("overwrite").option("overwriteSchema", True).save(str(path))


def restricted_location(settings: Settings, path: Path) -> str | None:
    """What of the restricted zone ``path`` is (a catalogued table's name, or the path), or
    None when it lies outside the zone."""
    real = path.resolve()
    for name, spec in settings.tables.items():
        if spec.zone == "restricted" and not settings.zone_is_uri("restricted") \
                and real == settings.table_path(name).resolve():
            return name
    root = settings.local_dir("restricted").resolve()
    return str(real) if real.is_relative_to(root) else None


def run(spark: SparkSession, settings: Settings, config: Path, input_path: Path, output: Path,
        save_model: Path | None = None) -> dict:
    from jobs.spark import job_scratch

    started = time.perf_counter()
    spec = engine.load_spec(config)
    source = restricted_location(settings, input_path)
    if source is not None and restricted_location(settings, output) is None:
        raise PrivacyError(
            f"refused: the input {input_path} is in the restricted zone (identifiers in clear), "
            f"so the output must be too; {output} is outside "
            f"{settings.local_dir('restricted')}. Write it under that folder.")
    with job_scratch(spark, settings, "match"):
        summary = _match(spark, settings, spec, config, input_path, output, save_model, source)
    return summary | {"seconds": round(time.perf_counter() - started, 1)}


def _match(spark: SparkSession, settings: Settings, spec: engine.MatchSpec, config: Path,
           input_path: Path, output: Path, save_model: Path | None, source: str | None) -> dict:
    df = read_any(spark, input_path).cache()
    uid = spec.unique_id_column
    if uid not in df.columns:
        raise ValueError(f"{input_path} has no column {uid!r} (unique_id_column of {config})")
    n, n_ids = df.count(), df.select(uid).distinct().count()
    if source is not None:
        audit.record_restricted_read(settings, source, input_path, n, delta_version(input_path))
    if n != n_ids:
        raise ValueError(f"{uid} is not unique in {input_path}: {n} rows, {n_ids} distinct ids")
    model = engine.load_model(spec, base_dir=config.parent)
    trained = model is None
    if trained:
        model = engine.train(spark, df, spec)
    if save_model:
        save_model.parent.mkdir(parents=True, exist_ok=True)
        save_model.write_text(json.dumps(model, indent=1), encoding="utf-8")
    clusters = engine.dedupe(spark, df, spec, model)
    out = df.join(clusters, uid, "left").cache()
    try:
        write_any(out, output)
    finally:
        if source is not None:  # identifiers copied: where to, how many
            audit.record_write(output, n, command="match", input=str(input_path),
                               restricted_input=source)
    n_clusters = out.select("cluster_id").distinct().count()
    summary = {"input": str(input_path), "records": n, "clusters": n_clusters,
               "records_in_multi_record_clusters": out.where("n_in_cluster > 1").count(),
               "model": "trained on the input" if trained else spec.model_file,
               "threshold_match_probability": spec.threshold_match_probability,
               "output": str(output)}
    out.unpersist()
    df.unpersist()
    return summary


def delta_version(path: Path) -> int | None:
    """A Delta folder's latest committed version (from its log's file names), else None."""
    log = path / "_delta_log"
    versions = [int(p.stem) for p in log.glob("*.json") if p.stem.isdigit()]
    return max(versions) if versions else None
