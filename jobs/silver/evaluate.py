"""`healthlake er-eval`: entity resolution against the generator's ground truth.

Every source row in ``silver.person_link`` that the ground truth knows (same extract date, feed,
institution and record key) is one item; the prediction puts items in persons, the truth in
``person_key``s. Pairwise figures count pairs of items:

- precision = pairs in the same person and the same true person / pairs in the same person;
- recall    = the same / pairs in the same true person;

computed from the contingency table (sum of n*(n-1)/2 per cell), never by listing pairs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobs.config import Settings
from jobs.lake import read_table

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def pairwise_scores(items: DataFrame, predicted: str = "person_id", truth: str = "person_key"
                    ) -> dict:
    """Pairwise precision, recall, F1 and cluster counts of ``items`` (one row per item)."""
    from pyspark.sql import functions as F

    def pairs(*cols: str) -> int:
        n = F.col("n").cast("long")
        row = items.groupBy(*cols).agg(F.count("*").alias("n")).agg(
            F.sum(n * (n - 1) / 2).alias("p")).first()
        return int(row["p"] or 0)

    both, pred, true = pairs(predicted, truth), pairs(predicted), pairs(truth)
    precision = both / pred if pred else 1.0
    recall = both / true if true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    counts = items.agg(F.count("*").alias("items"),
                       F.countDistinct(predicted).alias("predicted_persons"),
                       F.countDistinct(truth).alias("true_persons")).first().asDict()
    # Persons that merge two or more true people, and true people split over several persons.
    merged = (items.groupBy(predicted).agg(F.countDistinct(truth).alias("k"))
              .where("k > 1").count())
    split = (items.groupBy(truth).agg(F.countDistinct(predicted).alias("k"))
             .where("k > 1").count())
    return {**counts, "pairs_predicted": pred, "pairs_true": true, "pairs_correct": both,
            "precision": round(precision, 6), "recall": round(recall, 6), "f1": round(f1, 6),
            "persons_merging_several_true": merged, "true_persons_split": split}


def ground_truth_records(spark: SparkSession, settings: Settings) -> DataFrame:
    root = settings.ground_truth_root / "records"
    if not root.is_dir():
        raise FileNotFoundError(f"no ground truth at {root}: evaluate a generated city")
    from pyspark.sql import functions as F

    return (spark.read.parquet(str(root))
            .where(F.col("person_key").isNotNull())
            .select(F.col("extract_date").cast("date"), "feed", "institution_id",
                    F.col("record_key"), "person_key", "variations")
            # A file delivered twice is in the truth twice; the lake holds it once.
            .dropDuplicates(["extract_date", "feed", "institution_id", "record_key"]))


def evaluate(spark: SparkSession, settings: Settings) -> dict:
    """Score silver.person_link against the ground truth; also per variation kind, the share of
    rows whose person is their true person's majority person."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    links = read_table(spark, settings, "silver.person_link")
    truth = ground_truth_records(spark, settings)
    items = links.join(truth, ["extract_date", "feed", "institution_id", "record_key"]).cache()
    scores = pairwise_scores(items)
    scores["rows_linked"] = links.count()
    scores["rows_without_truth"] = scores["rows_linked"] - scores["items"]
    w = Window.partitionBy("person_key")
    majority = (items.groupBy("person_key", "person_id").agg(F.count("*").alias("n"))
                .withColumn("top", F.max_by("person_id", "n").over(w))
                .where(F.col("person_id") == F.col("top")).select("person_key", "top"))
    by_kind = (items.join(majority, "person_key")
               .withColumn("kind", F.explode(F.split(
                   F.when(F.col("variations") == "", "none").otherwise(F.col("variations")), ",")))
               .groupBy("kind").agg(F.count("*").alias("rows"),
                                    F.avg((F.col("person_id") == F.col("top")).cast("double"))
                                    .alias("share_with_majority"))
               .orderBy("kind").collect())
    scores["by_variation"] = {r["kind"]: {"rows": r["rows"],
                                          "with_majority": round(r["share_with_majority"], 4)}
                              for r in by_kind}
    items.unpersist()
    return scores
