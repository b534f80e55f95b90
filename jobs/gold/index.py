"""The health-informatization development index (gold.index_indicator, gold.index_score).

Configured in conf/base/index.yaml: indicators (each a catalogue entry) grouped by the national
themes into the governance, construction and application sub-indices; their source (a gold
metric, or the institution survey), direction, normalisation bounds and expert weights; the
normalisation (configured bounds or across areas) and weighting (expert or entropy) methods.

Scored for the city, each district and each institution, per year: each indicator is normalised
to 0-1, a sub-index is 100 x the weighted sum of its indicators (weights rescaled over the
indicators the area has), the total is the weighted mean of the sub-indices. Ranks are within
the level (districts among districts, institutions among institutions), change is against the
previous year's published score.

The raw values come from Spark (:func:`raw_values`); the index arithmetic is plain pandas on a
few hundred rows (:func:`normalise`, :func:`weights`, :func:`score`), checked by hand in tests.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import pandas as pd

from jobs.config import Settings, build_dataclass, require
from jobs.gold.catalogue import MetricCatalogue, load_catalogue
from jobs.gold.scorecard import rollup
from jobs.lake import read_table, table_exists, write_table
from jobs.timing import Stopwatch

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

CITY_CODE = "440400"  # default code of the city's rows; jobs pass conf city.code
LEVELS = ("city", "district", "institution")
SUB_INDICES = ("governance", "construction", "application")
OTHER_GRAINS = ["town_code", "to_tier", "channel", "condition", "icd10_category", "age_band",
                "sex"]


@dataclass(frozen=True)
class Indicator:
    theme: Literal["data_governance", "development_environment", "infrastructure",
                   "interoperability", "innovation", "business_coordination",
                   "services_for_residents"]
    sub_index: Literal["governance", "construction", "application"]
    direction: Literal["higher_is_better", "higher_is_worse"]
    bounds: list[float]
    weight: float
    metric: str | None = None
    survey: str | None = None
    aggregate: Literal["mean", "share_true", "per_100_staff"] | None = None
    levels: dict[str, float] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return f"metric:{self.metric}" if self.metric else f"survey:{self.survey}"


@dataclass(frozen=True)
class IndexSpec:
    normalisation: Literal["bounds", "across_areas"]
    weighting: Literal["expert", "entropy"]
    sub_indices: dict[str, float]
    indicators: dict[str, Indicator]


def load_index(settings: Settings, catalogue: MetricCatalogue | None = None) -> IndexSpec:
    """Validate ``settings.index`` (conf/base/index.yaml) against the metric catalogue."""
    o = settings.origins
    spec = build_dataclass(IndexSpec, settings.index, "index", o)
    catalogue = catalogue or load_catalogue(settings)
    require(set(spec.sub_indices) == set(SUB_INDICES), "index.sub_indices", o,
            f"give a weight to each of {', '.join(SUB_INDICES)}")
    require(all(w > 0 for w in spec.sub_indices.values()), "index.sub_indices", o,
            "weights are positive")
    require(bool(spec.indicators), "index.indicators", o, "the index has no indicator")
    for iid, ind in spec.indicators.items():
        key = f"index.indicators.{iid}"
        entry = catalogue.metrics.get(iid)
        require(entry is not None and entry.kind == "informatization_indicator", key, o,
                "every indicator is a catalogue entry of kind informatization_indicator "
                "(conf/base/metrics.yaml)")
        require(entry.sub_index == ind.sub_index, f"{key}.sub_index", o,
                f"the catalogue puts it in {entry.sub_index!r}")
        require((ind.metric is None) != (ind.survey is None), key, o,
                "give exactly one source: metric or survey")
        require(ind.metric is None or ind.metric in catalogue.metrics, f"{key}.metric", o,
                f"{ind.metric!r} is not in the metric catalogue")
        require(ind.survey is None or ind.aggregate is not None, f"{key}.aggregate", o,
                "a survey indicator needs an aggregate: mean, share_true or per_100_staff")
        require(len(ind.bounds) == 2 and ind.bounds[0] < ind.bounds[1], f"{key}.bounds", o,
                "bounds are [low, high] with low < high")
        require(ind.weight > 0, f"{key}.weight", o, "weights are positive")
    return spec


# -- the arithmetic (pandas) ---------------------------------------------------------------------


def normalise(raw: pd.DataFrame, spec: IndexSpec) -> pd.DataFrame:
    """Add ``normalised`` (0-1, 1 best) to rows of year, area_level, area_code, indicator_id,
    raw_value. Min-max against the configured bounds, or across the areas of the same level and
    year (the city against the districts)."""
    out = raw.copy()
    ind = out["indicator_id"].map(spec.indicators)
    if spec.normalisation == "bounds":
        lo = ind.map(lambda i: i.bounds[0])
        hi = ind.map(lambda i: i.bounds[1])
    else:
        peers = out["area_level"].where(out["area_level"] != "city", "district")
        grp = out.assign(_peers=peers)
        ranges = (grp[grp["area_level"] != "city"].groupby(["year", "_peers", "indicator_id"])
                  ["raw_value"].agg(["min", "max"]))
        joined = grp.join(ranges, on=["year", "_peers", "indicator_id"])
        lo, hi = joined["min"], joined["max"]
    x = (out["raw_value"] - lo) / (hi - lo)
    x = x.where(hi > lo, 1.0)  # no spread across areas: each as good as the best
    worse = ind.map(lambda i: i.direction == "higher_is_worse").astype(bool)
    out["normalised"] = x.where(~worse, 1.0 - x).clip(0.0, 1.0).where(out["raw_value"].notna())
    return out


def entropy_weights(values: pd.DataFrame) -> pd.Series:
    """Entropy weights of the columns of ``values`` (areas x indicators, normalised 0-1):
    p = x / sum x; e = -sum p ln p / ln n; w = (1 - e) / sum (1 - e). Equal weights when no
    indicator varies."""
    n = len(values)
    d = {}
    for col in values.columns:
        x = values[col].dropna()
        total = x.sum()
        if len(x) < 2 or total <= 0:
            d[col] = 0.0
            continue
        p = x / total
        e = -sum(v * math.log(v) for v in p if v > 0) / math.log(len(x))
        d[col] = 1.0 - e
    s = sum(d.values())
    if n < 2 or s <= 0:
        return pd.Series(1.0 / len(values.columns), index=values.columns)
    return pd.Series({k: v / s for k, v in d.items()})


def weights(normalised: pd.DataFrame, spec: IndexSpec) -> pd.DataFrame:
    """Add ``weight``: each indicator's weight within its sub-index for that area, rescaled
    over the indicators the area has a value for. Expert: the configured weights. Entropy:
    computed over the areas of the level and year (the city takes the districts')."""
    out = normalised.copy()
    out["sub_index"] = out["indicator_id"].map(lambda i: spec.indicators[i].sub_index)
    if spec.weighting == "expert":
        base = out["indicator_id"].map(lambda i: spec.indicators[i].weight)
    else:
        peers = out["area_level"].where(out["area_level"] != "city", "district")
        base = pd.Series(float("nan"), index=out.index)
        for (year, level, sub), grp in out[out["area_level"] != "city"].assign(
                _peers=peers).groupby(["year", "_peers", "sub_index"]):
            w = entropy_weights(grp.pivot(index="area_code", columns="indicator_id",
                                          values="normalised"))
            mask = (out["year"] == year) & (peers == level) & (out["sub_index"] == sub)
            base[mask] = out.loc[mask, "indicator_id"].map(w)
        base = base.fillna(0.0)
    have = out["normalised"].notna()
    base = base.where(have, 0.0)
    total = base.groupby([out["year"], out["area_level"], out["area_code"],
                          out["sub_index"]]).transform("sum")
    out["weight"] = (base / total).where(have & (total > 0))
    return out


def score(indicators: pd.DataFrame, spec: IndexSpec, previous: pd.DataFrame | None = None
          ) -> pd.DataFrame:
    """Sub-index scores (100 x sum of weight x normalised) and the total (sub-indices weighted
    by ``spec.sub_indices`` over those the area has), with ranks within level and year and the
    change against ``previous`` (earlier years' scores: year, area_level, area_code,
    index_name, score)."""
    keys = ["year", "area_level", "area_code", "area_name"]
    x = indicators.assign(_wx=indicators["weight"] * indicators["normalised"])
    sub = (x.groupby([*keys, "sub_index"], dropna=False)
           .agg(score=("_wx", lambda s: 100.0 * s.sum(min_count=1)),
                n_indicators=("normalised", "count")).reset_index()
           .rename(columns={"sub_index": "index_name"}))
    sub.loc[sub["n_indicators"] == 0, "score"] = float("nan")
    sub_w = sub["index_name"].map(spec.sub_indices).where(sub["score"].notna(), 0.0)
    total = (sub.assign(_w=sub_w, _ws=sub_w * sub["score"].fillna(0.0))
             .groupby(keys, dropna=False)
             .agg(_w=("_w", "sum"), _ws=("_ws", "sum"), n_indicators=("n_indicators", "sum"))
             .reset_index())
    total["score"] = (total["_ws"] / total["_w"]).where(total["_w"] > 0)
    total["index_name"] = "total"
    out = pd.concat([total.drop(columns=["_w", "_ws"]), sub], ignore_index=True)
    grp = out.groupby(["year", "area_level", "index_name"])["score"]
    out["rank"] = grp.rank(ascending=False, method="min").astype("Int64")
    out["n_areas"] = grp.transform("count").astype("Int64")
    prev = previous if previous is not None and len(previous) else pd.DataFrame(
        columns=["year", "area_level", "area_code", "index_name", "score"])
    before = pd.concat([prev[["year", "area_level", "area_code", "index_name", "score"]],
                        out[["year", "area_level", "area_code", "index_name", "score"]]])
    before = (before.drop_duplicates(["year", "area_level", "area_code", "index_name"],
                                     keep="last")
              .assign(year=lambda d: d["year"].astype(int) + 1)
              .rename(columns={"score": "previous_score"}))
    out = out.merge(before, on=["year", "area_level", "area_code", "index_name"], how="left")
    out["change"] = out["score"] - out["previous_score"]
    order = {n: i for i, n in enumerate(("total", *SUB_INDICES))}
    level = {n: i for i, n in enumerate(LEVELS)}
    return (out.sort_values(["year", "area_level", "area_code", "index_name"],
                            key=lambda s: s.map(level) if s.name == "area_level"
                            else s.map(order) if s.name == "index_name" else s)
            .reset_index(drop=True)
            [["year", "area_level", "area_code", "area_name", "index_name", "score", "rank",
              "n_areas", "previous_score", "change", "n_indicators"]])


# -- the raw values (Spark) ----------------------------------------------------------------------


def metric_values(metric_value: DataFrame, scorecard: DataFrame | None, metric_ids: list[str],
                  year: int, city_code: str = CITY_CODE) -> pd.DataFrame:
    """The yearly value of each metric for the city, each district and each institution:
    gold.metric_value rows without other grains, and the data-quality scorecard rolled up."""
    from pyspark.sql import functions as F

    frames = []
    mv = metric_value.where((F.col("period_type") == "year") & (F.col("period") == str(year))
                            & F.col("metric_id").isin(*metric_ids))
    for c in OTHER_GRAINS:
        mv = mv.where(F.col(c).isNull())
    inst = F.col("institution_id").isNotNull()
    district = F.col("district_code").isNotNull() & ~inst & F.col("tier").isNull()
    city = F.col("district_code").isNull() & ~inst & F.col("tier").isNull()
    for level, cond, code in (("city", city, F.lit(city_code)),
                              ("district", district, F.col("district_code")),
                              ("institution", inst, F.col("institution_id"))):
        frames.append(mv.where(cond).select("metric_id", F.lit(level).alias("area_level"),
                                            code.alias("area_code"), "value"))
    if scorecard is not None:
        sc = scorecard.where((F.year("extract_date") == year)
                             & F.col("metric_id").isin(*metric_ids))
        for level, by, code in (("city", [], F.lit(city_code)),
                                ("district", ["district_code"], F.col("district_code")),
                                ("institution", ["institution_id"], F.col("institution_id"))):
            frames.append(rollup(sc, ["metric_id", *by]).select(
                "metric_id", F.lit(level).alias("area_level"), code.alias("area_code"),
                "value"))
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out.toPandas()


def survey_values(surveys: DataFrame, institutions: DataFrame, spec: IndexSpec, year: int,
                  city_code: str = CITY_CODE) -> pd.DataFrame:
    """Survey indicators: each institution's latest answer of the year, aggregated over the
    city, each district (where the institution is) and each institution."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    latest = Window.partitionBy("institution_id").orderBy(F.col("survey_period").desc())
    rows = (surveys.where(F.col("survey_period").startswith(str(year)))
            .withColumn("_n", F.row_number().over(latest)).where(F.col("_n") == 1)
            .join(institutions.select("institution_id", "district_code"), "institution_id")
            .toPandas())
    out = []
    for iid, ind in spec.indicators.items():
        if ind.survey is None or rows.empty:
            continue
        v = rows[ind.survey]
        if ind.levels:
            v = v.astype(str).map(ind.levels)
        frame = rows.assign(_v=pd.to_numeric(v, errors="coerce").astype(float),
                            _staff=rows["n_staff"].astype(float))
        for level, by in (("city", None), ("district", "district_code"),
                          ("institution", "institution_id")):
            groups = [(city_code, frame)] if by is None else list(frame.groupby(by))
            for code, g in groups:
                if ind.aggregate == "mean":
                    value = g["_v"].mean()
                elif ind.aggregate == "share_true":
                    value = 100.0 * g["_v"].mean()
                else:  # per_100_staff
                    value = (100.0 * g["_v"].sum() / g["_staff"].sum()
                             if g["_staff"].sum() > 0 else float("nan"))
                out.append((iid, level, str(code), value))
    return pd.DataFrame(out, columns=["indicator_id", "area_level", "area_code", "raw_value"])


def raw_values(spark: SparkSession, settings: Settings, spec: IndexSpec, year: int
               ) -> pd.DataFrame:
    """Every indicator's raw value per area for the year: year, area_level, area_code,
    area_name, indicator_id, raw_value."""

    def table(name: str) -> DataFrame | None:
        return read_table(spark, settings, name) if table_exists(spark, settings, name) else None

    institutions = table("silver.institution")
    if institutions is None or table("gold.metric_value") is None:
        raise FileNotFoundError("the index needs silver.institution and gold.metric_value: run "
                                "`healthlake curate` and `healthlake gold` first")
    city_code = str(settings.city.get("code", CITY_CODE))
    by_metric = {i.metric: iid for iid, i in spec.indicators.items() if i.metric}
    mv = metric_values(table("gold.metric_value"), table("gold.dq_scorecard"),
                       sorted(by_metric), year, city_code)
    parts = [mv.assign(indicator_id=mv["metric_id"].map(by_metric))
             .rename(columns={"value": "raw_value"})
             [["indicator_id", "area_level", "area_code", "raw_value"]]]
    surveys = table("silver.institution_survey")
    if surveys is not None:
        parts.append(survey_values(surveys, institutions, spec, year, city_code))
    raw = pd.concat(parts, ignore_index=True)
    # An area without a metric row still exists: give every area every indicator (null value).
    inst = institutions.select("institution_id", "institution_name", "district_code").toPandas()
    pop = pd.read_csv(settings.reference_root / "population.csv", dtype=str)
    names = pop[["district_code", "district_name"]].drop_duplicates()
    areas = pd.concat([
        pd.DataFrame({"area_level": ["city"], "area_code": [city_code],
                      "area_name": [settings.city.get("name", "city")]}),
        pd.DataFrame({"area_level": "district", "area_code": names["district_code"],
                      "area_name": names["district_name"]}),
        pd.DataFrame({"area_level": "institution", "area_code": inst["institution_id"],
                      "area_name": inst["institution_name"]})], ignore_index=True)
    grid = areas.merge(pd.DataFrame({"indicator_id": list(spec.indicators)}), how="cross")
    out = grid.merge(raw.drop_duplicates(["indicator_id", "area_level", "area_code"]),
                     on=["indicator_id", "area_level", "area_code"], how="left")
    out.insert(0, "year", year)
    out["raw_value"] = out["raw_value"].astype(float)
    return out


INDICATOR_DDL = ("year int, area_level string, area_code string, area_name string, "
                 "indicator_id string, theme string, sub_index string, source string, "
                 "raw_value double, normalised double, weight double")
SCORE_DDL = ("year int, area_level string, area_code string, area_name string, "
             "index_name string, score double, rank int, n_areas int, previous_score double, "
             "change double, n_indicators int")


def compute(raw: pd.DataFrame, spec: IndexSpec, previous: pd.DataFrame | None = None
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(indicator rows, score rows) from raw values: the whole index arithmetic."""
    ind = weights(normalise(raw, spec), spec)
    ind["theme"] = ind["indicator_id"].map(lambda i: spec.indicators[i].theme)
    ind["source"] = ind["indicator_id"].map(lambda i: spec.indicators[i].source)
    return ind, score(ind, spec, previous)


def _to_spark(spark: SparkSession, df: pd.DataFrame, ddl: str) -> DataFrame:
    cols = [c.split()[0] for c in ddl.split(", ")]
    records = [tuple(None if pd.isna(v) else v for v in row)
               for row in df[cols].astype(object).itertuples(index=False)]
    return spark.createDataFrame(records, ddl)


def run(spark: SparkSession, settings: Settings, years: list[int]) -> dict:
    """Recompute the index for ``years`` (one replaceWhere commit per table and year)."""
    watch = Stopwatch()
    spec = load_index(settings)
    summary = {}
    for year in sorted(years):
        raw = raw_values(spark, settings, spec, year)
        previous = None
        if table_exists(spark, settings, "gold.index_score"):
            previous = (read_table(spark, settings, "gold.index_score")
                        .where(f"year = {year - 1}").toPandas())
        ind, scores = compute(raw, spec, previous)
        where = f"year = {year}"
        write_table(_to_spark(spark, ind, INDICATOR_DDL), settings, "gold.index_indicator",
                    replace_where=where)
        write_table(_to_spark(spark, scores, SCORE_DDL), settings, "gold.index_score",
                    replace_where=where)
        city = scores[(scores["area_level"] == "city")].set_index("index_name")["score"]
        summary[str(year)] = {k: None if pd.isna(v) else round(float(v), 2)
                              for k, v in city.items()}
        watch.lap(str(year))
    log.info("informatization index %s: %s", years, summary)
    return {"years": sorted(years), "city": summary, "seconds": watch.total}
