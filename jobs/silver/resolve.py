"""Entity resolution of residents, one extract date at a time: silver_std -> person ids.

The unit matched is a **local patient** (``lp_id`` = institution id + its own record number: the
registry's record_id, which clinical rows carry as patient_no). Every person-bearing row of a day
becomes an identity record; each local patient gets a profile (its latest registry row, else its
latest clinical row). For the local patients first seen on the day:

1. **deterministic** - a valid national ID in the profile: the person is that ID's;
2. **incremental link** - Splink scores the rest against every known local patient (earlier days'
   ``restricted.identity`` plus step 1); one person at or above the threshold wins, two are
   ambiguous and link to neither (false merges are worse than missed duplicates);
3. **new persons** - what is left is deduplicated among itself (Splink, connected components at
   the threshold); each cluster is a new person.

Local patients seen before keep their person: re-running a day, or adding one, changes no earlier
assignment. A row carrying its own valid national ID always belongs to that ID's person.

``person_id`` is a keyed hash (:mod:`jobs.silver.pseudonym`) of the national ID, or of the
cluster's smallest local-patient id. Identifiers in clear stay in the restricted zone
(``restricted.identity``); ``silver.person_link`` maps every source row to its person with no
identifier, and ``silver.person`` is the golden record built by the survivorship rules, its sex,
birth date and residence generalised so that no person stands out (:mod:`jobs.silver.generalise`);
the exact values of those stay restricted (``restricted.person_attributes``, read by gold).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.config import ConfigError, Settings, build_dataclass, require
from jobs.lake import read_table, table_exists, write_table
from jobs.match import engine
from jobs.silver.generalise import EXACT_ATTRIBUTES, PersonGeneralisation, generalise_persons
from jobs.silver.pseudonym import hmac_key, person_id_column
from jobs.spark import parallel_jobs
from jobs.timing import Stopwatch

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PersonFeed:
    """Where a feed keeps a row's own key, its local patient number and its event time."""

    record_key: str
    local_no: str
    event_at: tuple[str, ...]


PERSON_FEEDS: dict[str, PersonFeed] = {
    "resident_registry": PersonFeed("record_id", "record_id", ("updated_at", "registered_at")),
    "encounters": PersonFeed("encounter_id", "patient_no", ("visit_at",)),
    "lab_results": PersonFeed("lab_result_id", "patient_no", ("reported_at", "collected_at")),
    "referrals": PersonFeed("referral_id", "patient_no", ("referred_at",)),
    "chronic_followups": PersonFeed("followup_id", "patient_no", ("followup_at",)),
}
IDENTITY_FIELDS = ["national_id", "national_id_valid", "name", "name_pinyin_key", "sex",
                   "birth_date", "phone", "area_code", "town_code", "district_code"]
_TYPES = {"birth_date": "string"}


@dataclass(frozen=True)
class MatchingParams:
    """The ``matching`` section: the residents' match specification, the survivorship rules
    and how the curated golden record's quasi-identifiers are generalised."""

    model: dict[str, Any]
    ambiguity_margin: float = 0.0
    tier_trust_order: list[str] = field(
        default_factory=lambda: ["municipal", "district", "township", "village"])
    person_generalisation: PersonGeneralisation = field(default_factory=PersonGeneralisation)

    @property
    def spec(self) -> engine.MatchSpec:
        return engine.load_spec(self.model, "matching.model")


def load_matching_params(settings: Settings) -> MatchingParams:
    o = settings.origins
    params: MatchingParams = build_dataclass(MatchingParams, settings.matching, "matching", o)
    engine.load_spec(params.model, "matching.model", o)  # a typo stops the run here, named
    require(0 <= params.ambiguity_margin < 1, "matching.ambiguity_margin", o, "must be in [0, 1)")
    problems = params.person_generalisation.problems()
    require(not problems, "matching.person_generalisation", o, "; ".join(problems))
    return params


# -- pure transforms ----------------------------------------------------------------------------


def identity_records(frames: dict[str, DataFrame]) -> DataFrame:
    """One row per person-bearing source row: feed, institution_id, tier, record_key, lp_id,
    extract_date, event_at, the identity fields (normalised; birth_date as ISO text)."""
    from pyspark.sql import functions as F

    out = None
    for feed, df in frames.items():
        pf = PERSON_FEEDS[feed]
        cols = set(df.columns)

        def field_(name: str, cols: set[str] = cols) -> Column:
            value = F.col(name) if name in cols else F.lit(None)
            return value.cast(_TYPES.get(name, "string")).alias(name)

        local_no = F.coalesce(F.col(pf.local_no), F.concat(F.lit(f"{feed}:"), pf.record_key))
        rows = df.select(
            F.lit(feed).alias("feed"), "institution_id", "tier",
            F.col(pf.record_key).alias("record_key"),
            F.concat_ws("|", "institution_id", local_no).alias("lp_id"),
            "extract_date",
            F.coalesce(*[F.col(c) for c in pf.event_at]).alias("event_at"),
            F.col("national_id_clean").alias("national_id"),
            F.when(F.col("is_national_id_valid"), F.col("national_id")).alias("national_id_valid"),
            field_("name"), field_("name_pinyin_key"), field_("sex"), field_("birth_date"),
            field_("phone"), field_("area_code"), field_("town_code"), field_("district_code"))
        out = rows if out is None else out.unionByName(rows)
    return out


def profiles(records: DataFrame) -> DataFrame:
    """One profile per local patient: its latest registry row, else its latest clinical row."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy("lp_id").orderBy(
        (F.col("feed") == "resident_registry").desc(), F.col("extract_date").desc(),
        F.col("event_at").desc_nulls_last(), F.col("record_key").desc())
    return (records.withColumn("_rank", F.row_number().over(order)).where("_rank = 1")
            .select("lp_id", "institution_id", "tier", "extract_date", *IDENTITY_FIELDS))


def accept_links(pairs: DataFrame, lp_person: DataFrame, threshold: float, margin: float
                 ) -> DataFrame:
    """Per new local patient, every person it scores at or above the threshold (minus the
    margin) with: (lp_id, person_id, match_probability, n_candidate_persons). Those with exactly
    one candidate at or above the threshold link to it; more than one is ambiguous."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    by_person = (pairs.where(F.col("match_probability") >= threshold - margin)
                 .join(lp_person.withColumnRenamed("lp_id", "id_known"), "id_known")
                 .groupBy("id_new", "person_id")
                 .agg(F.max("match_probability").alias("match_probability")))
    w = Window.partitionBy("id_new")
    return (by_person.withColumn("n_candidate_persons", F.count("*").over(w))
            .select(F.col("id_new").alias("lp_id"), "person_id", "match_probability",
                    "n_candidate_persons"))


def survivorship(records: DataFrame, links: DataFrame, tier_trust_order: list[str]) -> DataFrame:
    """The golden record per person: every attribute is the most recent non-null value
    (by extract date, then event time), ties to the more trusted tier; birth date and sex from
    a valid national ID first. No identifier in clear, but exact quasi-identifiers (sex, birth
    date, community): :func:`jobs.silver.generalise.generalise_persons` before publishing."""
    from pyspark.sql import functions as F

    trust = F.coalesce(*[F.when(F.col("tier") == t, F.lit(len(tier_trust_order) - i))
                         for i, t in enumerate(tier_trust_order)], F.lit(0))
    recency = F.struct(F.col("extract_date"), F.col("event_at"), trust.alias("trust"))
    r = records.join(links.select("feed", "institution_id", "record_key", "person_id"),
                     ["feed", "institution_id", "record_key"])

    def latest(c: str, rank: Column = recency) -> Column:
        return F.max_by(F.col(c), F.when(F.col(c).isNotNull(), rank)).alias(c)

    valid_first = F.struct(F.col("national_id_valid").isNotNull(), recency)
    registry = F.col("feed") == "resident_registry"
    return r.groupBy("person_id").agg(
        latest("sex", valid_first), F.to_date(latest("birth_date", valid_first)).alias(
            "birth_date"),
        latest("area_code"), latest("town_code"), latest("district_code"),
        F.max_by("institution_id", F.when(registry, F.struct(-trust, recency)))
        .alias("primary_institution_id"),
        F.max(F.col("national_id_valid").isNotNull()).alias("has_valid_national_id"),
        F.max(registry).alias("has_health_record"),
        F.countDistinct("lp_id").alias("n_local_records"),
        F.countDistinct("institution_id").alias("n_institutions"),
        F.min("extract_date").alias("first_seen_date"),
        F.max("extract_date").alias("last_seen_date"))


# -- the job ------------------------------------------------------------------------------------


def model_path(settings: Settings, spec: engine.MatchSpec) -> Path:
    """Where the pinned match model is: ``matching.model.model_file``, from the project root."""
    if not spec.model_file:
        raise ConfigError("matching.model.model_file: not set; entity resolution scores with a "
                          "pinned model (conf/base/matching.yaml)")
    return settings.path(spec.model_file)


def pinned_model(settings: Settings, spec: engine.MatchSpec) -> tuple[dict, str]:
    """The pinned, trained Splink model and the first 12 hex digits of its file's SHA-256.

    Never trained here: a model trained on whichever day ran first would make links depend on
    the order days ran (and a small first day cannot train one). ``healthlake train-model``
    trains it, explicitly, once."""
    path = model_path(settings, spec)
    if not path.is_file():
        raise ConfigError(
            f"matching.model.model_file: no trained match model at {path}. Train one on "
            "standardised days with `healthlake train-model --date YYYY-MM-DD [--until ...]` "
            "and keep it with the configuration")
    text = path.read_bytes()
    model = json.loads(text)
    check_model_fits(spec, model, path)
    return model, hashlib.sha256(text).hexdigest()[:12]


def check_model_fits(spec: engine.MatchSpec, model: dict, path: Path) -> None:
    """A model trained for other comparisons (the spec was edited since) is refused, named."""
    want = [(c["name"], len(c.get("levels", []))) for c in spec.comparisons]
    got = [(c.get("output_column_name"), len(c.get("comparison_levels", [])))
           for c in model.get("comparisons", [])]
    if want != got:
        raise ConfigError(
            f"the match model {path} was trained for comparisons {got} but matching.model "
            f"has {want}: retrain it with `healthlake train-model --replace`")


def train_model(spark: SparkSession, settings: Settings, first: dt.date, last: dt.date,
                out: Path | None = None, replace: bool = False) -> dict:
    """Train the residents' match model on the local-patient profiles of the standardised days
    ``first``..``last`` (an initial load: the registry) and write it to ``out`` (default: the
    pinned ``matching.model.model_file``). An existing model is replaced only when asked."""
    params = load_matching_params(settings)
    out = out or model_path(settings, params.spec)
    if out.exists() and not replace:
        raise FileExistsError(f"{out} exists: the pinned match model is replaced only with "
                              "--replace (every later day is then scored with the new one)")
    watch = Stopwatch()
    where = f"extract_date BETWEEN DATE'{first}' AND DATE'{last}'"
    frames = read_day(spark, settings, where)
    if not frames:
        raise FileNotFoundError(f"no silver_std tables yet: run `healthlake standardise --date "
                                f"{first}` before training")
    training = profiles(identity_records(frames)).select(*_splink_cols()).cache()
    n = training.count()
    if n < 2:
        raise ValueError(f"{first}..{last}: {n} local patients in silver_std; train on days "
                         "with the registry (an initial load)")
    model = engine.train(spark, training, params.spec)
    training.unpersist()
    text = json.dumps(model, indent=1, sort_keys=True).encode("utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(text)
    tmp.replace(out)
    return {"model_file": str(out), "sha256": hashlib.sha256(text).hexdigest()[:12],
            "trained_on": f"{first}..{last}", "local_patients": n, "seconds": watch.total}


def read_day(spark: SparkSession, settings: Settings, where: str) -> dict[str, DataFrame]:
    return {feed: read_table(spark, settings, f"silver_std.{feed}").where(where)
            for feed in PERSON_FEEDS if table_exists(spark, settings, f"silver_std.{feed}")}


def resolve_new(spark: SparkSession, new: DataFrame, known: DataFrame, key: bytes,
                params: MatchingParams, model: dict, watch: Stopwatch | None = None
                ) -> tuple[DataFrame, dict, DataFrame | None]:
    """Person ids for the new local patients' profiles ``new`` given the ``known`` profiles
    (with person_id). Returns (lp_id, person_id, match_method, match_probability), counts, and
    the merge candidates (person_event rows without the date) or None."""
    from pyspark.sql import functions as F

    spec = params.spec
    th = spec.threshold_match_probability
    cols = ["lp_id", "person_id", "match_method", "match_probability"]
    det = (new.where(F.col("national_id_valid").isNotNull())
           .withColumn("person_id", person_id_column(key, F.col("national_id_valid")))
           .withColumn("match_method", F.lit("national_id"))
           .withColumn("match_probability", F.lit(1.0))).cache()
    rest = new.where(F.col("national_id_valid").isNull()).cache()
    watch = watch or Stopwatch()
    counts = {"new_local_patients": new.count(), "deterministic": det.count(),
              "without_valid_id": rest.count()}
    watch.lap("deterministic")
    if counts["without_valid_id"] == 0:
        return det.select(*cols), counts, None
    candidates = known.unionByName(det.select(*known.columns))
    pairs = engine.score_between(spark, rest.select(*_splink_cols()), candidates.select(
        *_splink_cols()), spec, model, threshold=th - params.ambiguity_margin - 1e-9)
    found = accept_links(pairs, candidates.select("lp_id", "person_id"), th,
                         params.ambiguity_margin).cache()
    linked = found.where((F.col("n_candidate_persons") == 1)
                         & (F.col("match_probability") >= th))
    ambiguous = found.where(F.col("n_candidate_persons") > 1)
    counts["linked_to_known"] = linked.count()
    counts["ambiguous"] = ambiguous.select("lp_id").distinct().count()
    left = rest.join(linked.select("lp_id"), "lp_id", "left_anti").cache()
    counts["left_to_cluster"] = left.count()
    watch.lap("splink_link_to_known")
    clusters = engine.dedupe(spark, left.select(*_splink_cols()), spec, model) \
        if counts["left_to_cluster"] > 1 else left.select(
            "lp_id", F.col("lp_id").alias("cluster_id"),
            F.lit(None).cast("double").alias("best_match_probability"),
            F.lit(1).alias("n_in_cluster"))
    clustered = clusters.select(
        "lp_id", person_id_column(key, F.concat(F.lit("cluster:"), "cluster_id")).alias(
            "person_id"),
        F.when(F.col("n_in_cluster") > 1, "probabilistic_cluster").otherwise("new_person")
        .alias("match_method"),
        F.col("best_match_probability").alias("match_probability"))
    out = (det.select(*cols)
           .unionByName(linked.select("lp_id", "person_id",
                                      F.lit("probabilistic_link").alias("match_method"),
                                      "match_probability"))
           .unionByName(clustered)).cache()
    out.count()
    watch.lap("splink_cluster_new")
    # A local patient close to several persons is kept apart: record the possible merge.
    events = (ambiguous.join(out.select("lp_id", F.col("person_id").alias("other_person_id")),
                             "lp_id")
              .select(F.lit("merge_candidate").alias("event_type"), "person_id",
                      "other_person_id", "match_probability",
                      F.lit("a new local patient scored at or above the threshold with several "
                            "persons; it was linked to none").alias("detail")))
    return out, counts, events


def _splink_cols() -> list[str]:
    return ["lp_id", *IDENTITY_FIELDS]


def later_days(spark: SparkSession, settings: Settings, extract_date: dt.date) -> list[dt.date]:
    """Extract dates after ``extract_date`` already resolved (silver.person_link): a backfill."""
    if not table_exists(spark, settings, "silver.person_link"):
        return []
    return sorted(r[0] for r in read_table(spark, settings, "silver.person_link")
                  .where(f"extract_date > DATE'{extract_date}'").select("extract_date")
                  .distinct().collect())


def run(spark: SparkSession, settings: Settings, extract_date: dt.date) -> dict:
    """Resolve one extract date (the daily DAG's task): :func:`run_days` of that day."""
    return run_days(spark, settings, [extract_date])


def run_days(spark: SparkSession, settings: Settings, days: list[dt.date],
             refresh: bool = True) -> dict:
    """Resolve extract dates in order, each day's restricted.identity (its new local patients),
    silver.person_link and silver.person_event (its rows) in its own commits; then silver.person
    (recomputed golden records) once, in one commit. Returns the first day's summary, the other
    days' under ``days``.

    A backfill (days after the first already resolved) resolves those later days again, in
    order, with the given ones: each day's new local patients are the ones no earlier day saw,
    so the lake ends as if the days had run in order. silver.person is recomputed from every
    day's rows, so doing it once after a range (an initial load, ``--until``) gives what doing it
    after every day gives. Killed half way, the next run does it all again. ``refresh=False``
    leaves silver.person to a later :func:`refresh_persons` (a range run in sittings)."""
    watch = Stopwatch()
    key = hmac_key(settings)  # refuse before any work without the key
    params = load_matching_params(settings)
    model, model_sha = pinned_model(settings, params.spec)  # likewise without the model
    first = min(days)
    later = [d for d in later_days(spark, settings, first) if d not in days]
    order = sorted({*days, *later})
    if later:
        log.info("resolve %s is a backfill: resolving the later days %s again", first,
                 ", ".join(map(str, later)))
    resolved = {d: resolve_day(spark, settings, d, key, params, model) for d in order}
    watch.lap("days")
    summary = resolved[first]
    if len(days) > 1:
        summary["days"] = {d.isoformat(): resolved[d] for d in sorted(days) if d != first}
    if later:
        summary["later_days_resolved_again"] = {d.isoformat(): resolved[d] for d in later}
    if refresh:
        summary["persons"] = refresh_persons(spark, settings, params)
        watch.lap("persons")
        summary["seconds_by_step"]["persons"] = watch.steps["persons"]
    summary.update(seconds=watch.total, model_sha256=model_sha)
    log.info("resolve %s: %s", first if len(days) == 1 else f"{first}..{max(days)}", summary)
    return summary


def resolve_day(spark: SparkSession, settings: Settings, extract_date: dt.date, key: bytes,
                params: MatchingParams, model: dict) -> dict:
    """One extract date's identity rows, person links and person events (not silver.person)."""
    from pyspark.sql import functions as F

    watch = Stopwatch()
    day = extract_date.isoformat()
    frames = read_day(spark, settings, f"extract_date = DATE'{day}'")
    if not frames:
        raise FileNotFoundError(f"no silver_std tables yet: run `healthlake standardise --date "
                                f"{day}` before resolving")
    records = identity_records(frames).cache()
    n_records = records.count()
    watch.lap("read")
    day_profiles = profiles(records)
    if table_exists(spark, settings, "restricted.identity"):
        state = (read_table(spark, settings, "restricted.identity")
                 .where(F.col("first_seen") < F.lit(day).cast("date")))
    else:
        state = None
    known = (state.select(*_splink_cols(), "person_id") if state is not None
             else spark.createDataFrame([], _profile_ddl() + ", person_id string"))
    new = day_profiles.join(known.select("lp_id"), "lp_id", "left_anti").cache()
    watch.lap("state")
    assigned, counts, merge_events = resolve_new(
        spark, new.select(*_splink_cols()), known, key, params, model, watch)
    identity = (new.join(assigned, "lp_id")
                .select("lp_id", "institution_id", "tier", *IDENTITY_FIELDS, "person_id",
                        "match_method", "match_probability",
                        F.lit(day).cast("date").alias("first_seen")))
    lp_person = (assigned.select("lp_id", "person_id", "match_method", "match_probability")
                 .unionByName(state.select("lp_id", "person_id", "match_method",
                                           "match_probability") if state is not None
                              else assigned.limit(0).select("lp_id", "person_id", "match_method",
                                                            "match_probability")))
    links = link_rows(records, lp_person, key).cache()  # lp_person_id: for split events
    n_links = links.count()
    watch.lap("links")
    if n_links != n_records:
        raise RuntimeError(f"{day}: {n_records} identity rows but {n_links} links; not written")
    where = f"extract_date = DATE'{day}'"
    events = person_events(links, merge_events, day)
    counts["events"] = {r["event_type"]: r["count"]
                        for r in events.groupBy("event_type").count().collect()}
    # Three tables, each replacing its day in its own commit: side by side, in any order (a
    # re-run replaces all three again).
    writes = [(identity, "restricted.identity", f"first_seen = DATE'{day}'"),
              (links.drop("lp_person_id"), "silver.person_link", where),
              (events, "silver.person_event", where)]
    with ThreadPoolExecutor(max_workers=parallel_jobs(spark)) as pool:
        list(pool.map(lambda w: write_table(w[0], settings, w[1], replace_where=w[2]), writes))
    watch.lap("write")
    by_method = {r["match_method"]: r["count"] for r in
                 links.groupBy("match_method").count().collect()}
    summary = {"extract_date": day, "identity_rows": n_records, **counts,
               "links_by_method": by_method, "seconds": watch.total,
               "seconds_by_step": watch.steps}
    for df in (records, new, assigned, links):
        df.unpersist()
    return summary


def person_events(links: DataFrame, merge_events: DataFrame | None, day: str) -> DataFrame:
    """silver.person_event rows of a day: splits (a row whose own valid national ID takes it
    away from its local patient's person) and merge candidates (ambiguous new local patients)."""
    from pyspark.sql import functions as F

    splits = (links.where(F.col("match_method") == "national_id_row")
              .select(F.lit("split").alias("event_type"),
                      F.col("lp_person_id").alias("person_id"),
                      F.col("person_id").alias("other_person_id"), "match_probability",
                      F.lit("a row carries a valid national ID other than its local patient's; "
                            "the row went to that ID's person").alias("detail"))
              .distinct())
    events = splits if merge_events is None else splits.unionByName(merge_events)
    return events.withColumn("extract_date", F.lit(day).cast("date"))


def link_rows(records: DataFrame, lp_person: DataFrame, key: bytes) -> DataFrame:
    """silver.person_link rows: every identity record with its person. A row with its own valid
    national ID belongs to that ID's person even if its local patient resolved otherwise."""
    from pyspark.sql import functions as F

    own = person_id_column(key, F.col("national_id_valid"))
    r = records.join(lp_person, "lp_id", "left")
    differs = F.col("national_id_valid").isNotNull() & (own != F.col("person_id"))
    return r.select(
        "feed", "institution_id", "record_key", "extract_date",
        F.when(differs, own).otherwise(F.col("person_id")).alias("person_id"),
        F.when(differs, "national_id_row").otherwise(F.col("match_method")).alias("match_method"),
        F.when(differs, F.lit(1.0)).otherwise(F.col("match_probability"))
        .alias("match_probability"),
        F.col("person_id").alias("lp_person_id"))


def refresh_persons(spark: SparkSession, settings: Settings, params: MatchingParams) -> int:
    """Recompute the golden records from every day's identity rows and links (deterministic, so
    persons no day touched come out unchanged): their exact sex, birth date and residence to
    restricted.person_attributes, the rest with those generalised to silver.person."""
    records = identity_records(read_day(spark, settings, "true"))
    links = read_table(spark, settings, "silver.person_link")
    persons = survivorship(records, links, params.tier_trust_order).cache()
    n = persons.count()
    city_code = str(settings.city.get("code", ""))
    if not city_code:
        raise ConfigError("city.code: not set; silver.person generalises residence up to the "
                          "city (conf/base/city.yaml)")
    published = generalise_persons(persons, params.person_generalisation, city_code)
    write_table(persons.select("person_id", *EXACT_ATTRIBUTES), settings,
                "restricted.person_attributes", mode="overwrite")
    # a lake from before the generalisation held exact values here: the new columns replace them
    write_table(published, settings, "silver.person", mode="overwrite", replace_schema=True)
    persons.unpersist()
    return n


def _profile_ddl() -> str:
    return "lp_id string, " + ", ".join(f"{c} string" for c in IDENTITY_FIELDS)
