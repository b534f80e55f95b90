"""A configuration-driven record-matching engine on Splink: the same code deduplicates any table.

A *match specification* (YAML; conf/base/matching.yaml holds the residents' one) names the unique
id column, the deterministic rules, Splink's blocking rules and comparisons, the match threshold
and how to train. Comparisons are written with Splink's own library names::

    comparisons:
      - {function: ExactMatch, column: sex}                       # splink.comparison_library
      - name: name                                                # or levels, top to bottom:
        levels:                                                   # splink.comparison_level_library
          - {level: NullLevel, column: name}
          - {level: ExactMatchLevel, column: name}
          - {level: JaroWinklerLevel, column: name_key, args: {distance_threshold: 0.9}}
          - {level: ElseLevel}

Everything runs on the caller's SparkSession through Splink's Spark backend (the wheel's UDF jar
is on ``spark.jars``, see :mod:`jobs.spark`). Results are plain Spark DataFrames.

- :func:`train` estimates the model (u by seeded random sampling, m by EM on the configured
  training blocks); the result is a Splink model dict, saved as JSON so that daily runs score
  with fixed parameters and give the same answer every time.
- :func:`score_within` / :func:`score_between` score candidate pairs inside one table or between a
  new and a known table (incremental linking).
- :func:`dedupe` clusters a whole table: deterministic edges plus scored edges at the threshold,
  connected components, cluster id = smallest member id.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from jobs.config import ConfigError, build_dataclass, require

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)
_view_counter = itertools.count()


@dataclass(frozen=True)
class TrainingSpec:
    """How :func:`train` estimates the model when no trained model is given."""

    # Rules whose agreement is (almost) surely a match: estimate the prior match probability.
    prior_rules: list[list[str]] = field(default_factory=list)
    prior_recall: float = 0.9
    u_max_pairs: float = 1_000_000
    seed: int = 42
    # One EM pass per block; each pass trains the comparisons not in its block.
    em_blocking_rules: list[list[str]] = field(default_factory=list)
    em_sample_proportion: float = 1.0
    # Train on at most this many records (a seeded sample): parameters settle long before a
    # whole city, and EM cost grows with the square of the block sizes.
    max_records: int = 200_000


@dataclass(frozen=True)
class MatchSpec:
    unique_id_column: str
    comparisons: list[dict[str, Any]]
    blocking_rules: list[list[str]]
    threshold_match_probability: float = 0.99
    # Records equal (and not null) on all columns of a rule are one entity, whatever Splink says.
    deterministic_rules: list[list[str]] = field(default_factory=list)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    # A trained Splink model (JSON, from `healthlake match --save-model`); relative to the spec.
    model_file: str | None = None


def load_spec(source: str | Path | dict[str, Any], key: str = "match",
              origins: dict[str, str] | None = None) -> MatchSpec:
    """A :class:`MatchSpec` from a YAML file or a dict, checked so that a typo names its key."""
    origins = dict(origins or {})
    if not isinstance(source, dict):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"match specification {path} does not exist")
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        origins.setdefault(key, str(path))
    else:
        data = source
    spec: MatchSpec = build_dataclass(MatchSpec, data, key, origins)
    require(0 < spec.threshold_match_probability < 1, f"{key}.threshold_match_probability",
            origins, "must be between 0 and 1")
    require(bool(spec.blocking_rules), f"{key}.blocking_rules", origins, "needs at least one rule")
    for i, comp in enumerate(spec.comparisons):
        try:
            _comparison(comp)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            require(False, f"{key}.comparisons[{i}]", origins, f"not a Splink comparison: {e}")
    return spec


# -- Splink settings ----------------------------------------------------------------------------


def _comparison(comp: dict[str, Any]):
    import splink.comparison_level_library as cll
    import splink.comparison_library as cl

    if "function" in comp:
        fn = getattr(cl, comp["function"])
        return fn(comp["column"], **comp.get("args", {}))
    levels = []
    for lv in comp["levels"]:
        cls = getattr(cll, lv["level"])
        args = dict(lv.get("args", {}))
        level = cls(lv["column"], **args) if "column" in lv else cls(**args)
        if "label" in lv:
            level = level.configure(label_for_charts=lv["label"])
        levels.append(level)
    return cl.CustomComparison(comparison_levels=levels, output_column_name=comp["name"])


def _block(rule: list[str] | str):
    from splink import block_on

    return rule if isinstance(rule, str) else block_on(*rule)


def splink_settings(spec: MatchSpec, link_type: str = "dedupe_only"):
    from splink import SettingsCreator

    return SettingsCreator(
        link_type=link_type,
        unique_id_column_name=spec.unique_id_column,
        comparisons=[_comparison(c) for c in spec.comparisons],
        blocking_rules_to_generate_predictions=[_block(r) for r in spec.blocking_rules],
        retain_intermediate_calculation_columns=False,
        additional_columns_to_retain=[],
    )


def load_model(spec: MatchSpec, base_dir: Path | None = None) -> dict[str, Any] | None:
    """The trained model the spec points at, or None when it names none or it does not exist."""
    if not spec.model_file:
        return None
    path = Path(spec.model_file)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _linker(spark: SparkSession, frames: list[DataFrame], settings, link_type: str | None = None):
    from splink import Linker
    from splink.backends.spark import SparkAPI

    db = SparkAPI(spark_session=spark)
    registered = [db.register(df, table_name=f"hl_match_{next(_view_counter)}") for df in frames]
    if isinstance(settings, dict) and link_type:
        settings = copy.deepcopy(settings) | {"link_type": link_type}
    return Linker(registered if len(registered) > 1 else registered[0], settings,
                  log_level=logging.WARNING), db, registered


def train(spark: SparkSession, df: DataFrame, spec: MatchSpec) -> dict[str, Any]:
    """Estimate the model on ``df``: prior from the prior rules, u by seeded random sampling,
    m by EM over each training block. Returns Splink's model dict (save it as JSON)."""
    t = spec.training
    n = df.count()
    if n > t.max_records:
        df = df.sample(fraction=t.max_records / n, seed=t.seed)
    linker, _, _ = _linker(spark, [df], splink_settings(spec))
    if t.prior_rules:
        linker.training.estimate_probability_two_random_records_match(
            [_block(r) for r in t.prior_rules], recall=t.prior_recall)
    linker.training.estimate_u_using_random_sampling(max_pairs=t.u_max_pairs, seed=t.seed)
    for rule in t.em_blocking_rules:
        linker.training.estimate_parameters_using_expectation_maximisation(
            _block(rule), record_sample_proportion=t.em_sample_proportion)
    model = linker.misc.save_model_to_json()
    model.pop("linker_uid", None)  # random per Linker: the same data would give another file
    return _floor_probabilities(model)


# Training can estimate a probability of exactly 0 (a level never seen among matches); Splink
# refuses to load such a model again, and no evidence should be infinitely strong.
PROBABILITY_FLOOR = 1e-6


def _floor_probabilities(model: dict[str, Any]) -> dict[str, Any]:
    for comparison in model.get("comparisons", []):
        for level in comparison.get("comparison_levels", []):
            for k in ("m_probability", "u_probability"):
                if level.get(k) is not None and level[k] < PROBABILITY_FLOOR:
                    level[k] = PROBABILITY_FLOOR
    return model


def _pairs(splink_df, spec: MatchSpec) -> DataFrame:
    from pyspark.sql import functions as F

    uid = spec.unique_id_column
    return splink_df.as_spark_dataframe().select(
        F.col(f"{uid}_l").alias("id_l"), F.col(f"{uid}_r").alias("id_r"),
        F.col("match_probability").cast("double"), F.col("match_weight").cast("double"))


def score_within(spark: SparkSession, df: DataFrame, spec: MatchSpec, model: dict[str, Any],
                 threshold: float | None = None) -> DataFrame:
    """Scored candidate pairs inside ``df`` (id_l < id_r, match_probability, match_weight)."""
    linker, _, _ = _linker(spark, [df], model, "dedupe_only")
    return _pairs(linker.inference.predict(threshold_match_probability=threshold), spec)


def score_between(spark: SparkSession, new: DataFrame, known: DataFrame, spec: MatchSpec,
                  model: dict[str, Any], threshold: float | None = None) -> DataFrame:
    """Scored candidate pairs from each ``new`` record to ``known`` records, never within either
    (incremental linking). Columns: id_new, id_known, match_probability, match_weight."""
    from pyspark.sql import functions as F

    # Splink needs one unique-id space across both sides: tag them.
    uid = spec.unique_id_column
    linker, db, (n, k) = _linker(spark, [new.withColumn("source_dataset", F.lit("new")),
                                         known.withColumn("source_dataset", F.lit("known"))],
                                 model, "link_only")
    pairs = linker.inference.predict_between(n, k, threshold_match_probability=threshold)
    out = pairs.as_spark_dataframe()
    # Splink orders each pair by (source_dataset, id); put the new record on the left.
    left_is_new = F.col("source_dataset_l") == F.lit("new")
    return out.select(
        F.when(left_is_new, F.col(f"{uid}_l")).otherwise(F.col(f"{uid}_r")).alias("id_new"),
        F.when(left_is_new, F.col(f"{uid}_r")).otherwise(F.col(f"{uid}_l")).alias("id_known"),
        F.col("match_probability").cast("double"), F.col("match_weight").cast("double"))


def deterministic_pairs(df: DataFrame, spec: MatchSpec) -> DataFrame:
    """Pairs (id_l < id_r) equal and non-null on every column of some deterministic rule: one
    star per group (each member to the group's smallest id), enough for connected components."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    uid = spec.unique_id_column
    out = None
    for rule in spec.deterministic_rules:
        keyed = df.where(F.greatest(*[F.col(c).isNull() for c in rule]) == F.lit(False)) \
            if len(rule) > 1 else df.where(F.col(rule[0]).isNotNull())
        w = Window.partitionBy(*rule)
        star = (keyed.select(F.col(uid).alias("id_r"), F.min(uid).over(w).alias("id_l"))
                .where(F.col("id_l") != F.col("id_r")))
        out = star if out is None else out.unionByName(star)
    return out


def connected_components(spark: SparkSession, ids: DataFrame, edges: DataFrame) -> DataFrame:
    """Cluster ``ids`` (column ``id``) over ``edges`` (id_l, id_r) with Splink's connected
    components; cluster_id is the smallest id of each component."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from splink.backends.spark import SparkAPI
    from splink.clustering import cluster_pairwise_predictions_at_threshold

    db = SparkAPI(spark_session=spark)
    n = next(_view_counter)
    nodes = db.register(ids.select("id"), table_name=f"hl_nodes_{n}")
    links = db.register(edges.select("id_l", "id_r"), table_name=f"hl_edges_{n}")
    clusters = cluster_pairwise_predictions_at_threshold(
        nodes, links, db, node_id_column_name="id", edge_id_column_name_left="id_l",
        edge_id_column_name_right="id_r").as_spark_dataframe()
    # Splink names clusters by a representative; make it the smallest member, for stability.
    return clusters.select("id", F.min("id").over(Window.partitionBy("cluster_id"))
                           .alias("cluster_id"))


def dedupe(spark: SparkSession, df: DataFrame, spec: MatchSpec, model: dict[str, Any]
           ) -> DataFrame:
    """Cluster every record of ``df``: (unique id, cluster_id, n_in_cluster, best_probability).

    Edges are the deterministic pairs plus Splink pairs at or above the threshold.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    uid = spec.unique_id_column
    scored = score_within(spark, df, spec, model, spec.threshold_match_probability)
    edges = scored.select("id_l", "id_r", "match_probability")
    det = deterministic_pairs(df, spec)
    if det is not None:
        edges = edges.unionByName(det.withColumn("match_probability", F.lit(1.0)))
    edges = edges.cache()
    clusters = connected_components(spark, df.select(F.col(uid).alias("id")), edges)
    best = (edges.select(F.col("id_l").alias("id"), "match_probability")
            .unionByName(edges.select(F.col("id_r").alias("id"), "match_probability"))
            .groupBy("id").agg(F.max("match_probability").alias("best_match_probability")))
    return (clusters.join(best, "id", "left")
            .withColumn("n_in_cluster", F.count("*").over(Window.partitionBy("cluster_id")))
            .withColumnRenamed("id", uid))
