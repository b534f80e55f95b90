"""`healthlake match --config FILE --input PATH --output PATH`: deduplicate any table.

The input is a Delta table (a folder with ``_delta_log``), Parquet (file or folder) or CSV with a
header; the output gets every input column plus ``cluster_id``, ``n_in_cluster`` and
``best_match_probability``, written as CSV (``.csv``), Parquet (``.parquet``) or a Delta table
(anything else). Without a trained model in the specification the model is trained on the
input first (and saved with ``--save-model``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.match import engine

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


def run(spark: SparkSession, config: Path, input_path: Path, output: Path,
        save_model: Path | None = None) -> dict:
    started = time.perf_counter()
    spec = engine.load_spec(config)
    df = read_any(spark, input_path).cache()
    uid = spec.unique_id_column
    if uid not in df.columns:
        raise ValueError(f"{input_path} has no column {uid!r} (unique_id_column of {config})")
    n, n_ids = df.count(), df.select(uid).distinct().count()
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
    write_any(out, output)
    n_clusters = out.select("cluster_id").distinct().count()
    summary = {"input": str(input_path), "records": n, "clusters": n_clusters,
               "records_in_multi_record_clusters": out.where("n_in_cluster > 1").count(),
               "model": "trained on the input" if trained else spec.model_file,
               "threshold_match_probability": spec.threshold_match_probability,
               "output": str(output), "seconds": round(time.perf_counter() - started, 1)}
    out.unpersist()
    df.unpersist()
    return summary
