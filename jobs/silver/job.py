"""Silver standardisation of one extract date: bronze.<feed> -> silver_std.<feed> + quarantine.

Each feed's bronze strings are typed through its contract: every column's ``form`` (schemas/)
picks the standardising expression of :mod:`jobs.silver.standardise`, so a new column needs a
contract line, not code. A value that cannot be typed is an *issue* with a rule id
(:data:`jobs.silver.standardise.RULES`):

- a required value: the row is **rejected** (not in silver_std, its issues in quarantine.silver);
- an optional value: it is **nulled** in silver_std, the value as sent kept in quarantine.silver;
- a well-formed area code the register does not know: the row is kept and **flagged**.

An invalid national identity number is none of these: it is flagged in the row
(``is_national_id_valid = false``, ``national_id_status``) and its cleaned form kept, because
entity resolution still links such records. silver_std holds identity fields in clear, so it
lives in the restricted zone; entity resolution reads it and writes the curated silver tables.

Nothing is written unless, for every feed, bronze rows = silver_std rows + rejected rows.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from jobs.config import Settings
from jobs.contracts import Column, FeedContract, SourceProfile, load_contracts
from jobs.lake import read_table, table_exists, write_table
from jobs.silver import standardise as S
from jobs.silver.params import SilverParams, load_silver_params
from jobs.spark import parallel_jobs

log = logging.getLogger(__name__)

LINEAGE = ["extract_date", "institution_id", "tier", "source_profile", "source_file",
           "source_line", "source_sha256", "ingest_id"]
QUARANTINE_TABLE = "quarantine.silver"
QUARANTINE_COLUMNS = ["extract_date", "feed", "institution_id", "tier", "source_profile",
                      "source_file", "source_line", "source_sha256", "ingest_id", "rule_id",
                      "column", "value", "message", "action"]
MESSAGES = {
    "S_REQUIRED": "required value is empty",
    "S_ENUM": "not one of the contract's values",
    "S_SEX": "not a sex code of the row's source profile",
    "S_DATE": "not a real date in the profile's format, or outside [silver.min_birth_date, "
              "extract date]",
    "S_TIMESTAMP": "not a real date and time in the profile's timestamp format",
    "S_ICD10": "not an ICD-10 code",
    "S_AREA": "not an area code of 6, 9 or 12 digits",
    "S_AREA_UNKNOWN": "well-formed area code that reference/areas.csv does not hold",
    "S_PHONE": "not a mobile or landline number",
    "S_BOOL": "not a yes/no value",
    "S_NUMBER": "not a number of the expected kind",
    "S_RANGE": "outside the plausible range in silver.ranges",
}


class ReconciliationError(RuntimeError):
    """Bronze rows != silver rows + rejected rows for some feed: the run must not pass."""


@dataclass(frozen=True)
class StdContext:
    """Everything the pure transforms need besides the DataFrame (no I/O inside them)."""

    params: SilverParams
    profiles: dict[str, SourceProfile]
    areas: S.AreaReference
    timezone: str = "Asia/Shanghai"


# -- pure transforms ----------------------------------------------------------------------------


def _issue(bad, rule_id: str, column: str, value, action: str):
    from pyspark.sql import functions as F

    return F.when(bad, F.struct(
        F.lit(rule_id).alias("rule_id"), F.lit(column).alias("column"),
        value.cast("string").alias("value"), F.lit(MESSAGES[rule_id]).alias("message"),
        F.lit(action).alias("action")))


def _icd10_prefix(column: str) -> str:
    """diagnosis_code -> '' (icd10_3char, condition_family); reason_code -> 'reason_'."""
    return "" if column == "diagnosis_code" else column.removesuffix("_code") + "_"


def _column_plan(c: Column, feed: str, ctx: StdContext):
    """(stage-1 named expressions, final expressions over them, issues) for one column.

    Stage 1 computes each standardising expression once (structs for multi-part results);
    the final projection only picks fields, so no expression is evaluated twice.
    """
    from pyspark.sql import functions as F

    raw = F.col(f"`{c.name}`")
    given = S.blank_to_null(raw)
    profile = F.col("source_profile")
    p = ctx.params
    failed_action = "rejected" if c.required else "nulled"
    issues = []
    if c.required:
        issues.append(_issue(given.isNull(), "S_REQUIRED", c.name, raw, "rejected"))
    tmp = f"__{c.name}"

    def simple(typed, rule_id: str):
        issues.append(_issue(given.isNotNull() & typed.isNull(), rule_id, c.name, raw,
                             failed_action))
        return [typed.alias(tmp)], [F.col(tmp).alias(c.name)], issues

    def numeric(typed):
        issues.append(_issue(given.isNotNull() & typed.isNull(), "S_NUMBER", c.name, raw,
                             failed_action))
        r = p.ranges.get(f"{feed}.{c.name}")
        if r is not None:
            ok = S.in_range(typed, r.min, r.max)
            issues.append(_issue(~ok, "S_RANGE", c.name, raw, failed_action))
            typed = F.when(ok, typed)
        return [typed.alias(tmp)], [F.col(tmp).alias(c.name)], issues

    form = c.form
    if form == "text" and c.name == "name":
        return ([S.normalise_name(raw).alias(tmp)],
                [F.col(tmp).alias("name"), S.name_pinyin_key(F.col(tmp)).alias("name_pinyin_key")],
                issues)
    if form == "text":
        return [given.alias(tmp)], [F.col(tmp).alias(c.name)], issues
    if form == "enum":
        return simple(S.parse_enum(raw, c.values), "S_ENUM")
    if form == "sex":
        return simple(S.parse_sex(raw, profile, ctx.profiles), "S_SEX")
    if form == "date":
        parsed = S.parse_date(raw, profile, ctx.profiles, p.fallback_date_formats)
        plausible = parsed.between(F.lit(p.min_birth_date).cast("date"), F.col("extract_date"))
        return simple(F.when(plausible, parsed), "S_DATE")
    if form == "timestamp":
        return simple(S.parse_timestamp(raw, profile, ctx.profiles, ctx.timezone), "S_TIMESTAMP")
    if form == "integer":
        return numeric(S.parse_integer(raw))
    if form == "decimal":
        return numeric(S.parse_decimal(raw, p.decimal_precision, p.decimal_scale))
    if form == "boolean":
        return simple(S.parse_boolean(raw, p.boolean_true, p.boolean_false), "S_BOOL")
    if form == "id_number":
        fields = ["national_id", "national_id_clean", "is_national_id_valid",
                  "national_id_status", "id_birth_date", "id_sex"]
        prefix = "" if c.name == "national_id" else f"{c.name}_"
        final = [F.col(f"{tmp}.{f}").alias(prefix + f) for f in fields]
        final.insert(1, raw.alias(f"{c.name}_raw"))
        return [S.normalise_national_id(raw).alias(tmp), raw], final, issues
    if form == "phone":
        st = S.normalise_phone(raw, p.phone.default_area_code)
        issues.append(_issue(given.isNotNull() & st["phone"].isNull(), "S_PHONE", c.name, raw,
                             failed_action))
        return ([st.alias(tmp)], [F.col(f"{tmp}.phone").alias(c.name),
                                  F.col(f"{tmp}.phone_type").alias(f"{c.name}_type")], issues)
    if form == "area_code":
        st = S.parse_area_code(raw, ctx.areas)
        issues.append(_issue(given.isNotNull() & st["area_code"].isNull(), "S_AREA", c.name,
                             raw, failed_action))
        issues.append(_issue(st["area_code"].isNotNull() & ~st["is_area_code_known"],
                             "S_AREA_UNKNOWN", c.name, raw, "flagged"))
        fields = ["area_code", "district_code", "town_code", "functional_zone",
                  "is_area_code_known"]
        return [st.alias(tmp)], [F.col(f"{tmp}.{f}").alias(f) for f in fields], issues
    if form == "icd10":
        st = S.normalise_icd10(raw)
        issues.append(_issue(given.isNotNull() & st["code"].isNull(), "S_ICD10", c.name, raw,
                             failed_action))
        pre = _icd10_prefix(c.name)
        three = F.col(f"{tmp}.icd10_3char")
        return ([st.alias(tmp)],
                [F.col(f"{tmp}.code").alias(c.name), three.alias(f"{pre}icd10_3char"),
                 S.condition_family(three, p.family_ranges()).alias(f"{pre}condition_family")],
                issues)
    raise ValueError(f"{feed}.{c.name}: no standardisation for form {form!r}")


def _feed_extras(feed: str, df, ctx: StdContext):
    """Feed-specific derived columns that no single contract form implies."""
    from pyspark.sql import functions as F

    if feed == "lab_results":
        df = df.withColumn("unit", S.normalise_unit(F.col("unit"), ctx.params.unit_aliases))
        df = df.withColumn("result_numeric", S.parse_result_number(F.col("result_value")))
    return df


def standardise_feed(bronze_df, contract: FeedContract, ctx: StdContext):
    """Every column of a bronze feed typed by its form, the lineage kept, and per row
    ``_issues`` (array of rule_id, column, value, message, action) and ``_is_rejected``."""
    from pyspark.sql import functions as F

    stage1, final, issues = [], [], []
    for c in contract.columns:
        s1, fin, iss = _column_plan(c, contract.feed, ctx)
        stage1 += s1
        final += fin
        issues += iss
    lineage = [F.col(c) for c in LINEAGE]
    issue_array = F.filter(F.array(*issues), lambda x: x.isNotNull())
    df = bronze_df.select(*lineage, *stage1, issue_array.alias("_issues"))
    df = df.select(*final, *lineage, "_issues",
                   F.exists("_issues", lambda x: x["action"] == "rejected").alias("_is_rejected"))
    return _feed_extras(contract.feed, df, ctx)


def split(std_df, feed: str):
    """(typed rows, issue rows) of a standardised feed: rejected rows leave the typed table;
    every issue (rejected, nulled, flagged) becomes one quarantine.silver row."""
    from pyspark.sql import functions as F

    typed = std_df.where(~F.col("_is_rejected")).drop("_issues", "_is_rejected")
    issues = (std_df.where(F.size("_issues") > 0)
              .select(*LINEAGE, F.explode("_issues").alias("i"))
              .select("extract_date", F.lit(feed).alias("feed"),
                      *[c for c in LINEAGE if c != "extract_date"],
                      "i.rule_id", "i.column", "i.value", "i.message", "i.action"))
    return typed, issues


def transform(bronze_df, feed: str, ctx: StdContext):
    """Bronze rows of ``feed`` -> (typed rows for silver_std.<feed>, rows for quarantine.silver)."""
    return split(standardise_feed(bronze_df, load_contracts().feed(feed), ctx), feed)


def empty_bronze(spark, contract: FeedContract):
    """A bronze-shaped DataFrame with no rows: a feed whose bronze table was never written."""
    ddl = ", ".join(f"`{c}` string" for c in contract.column_names)
    ddl += (", extra_columns map<string,string>, extract_date date, institution_id string, "
            "tier string, source_profile string, source_file string, source_line int, "
            "source_sha256 string, ingest_id string")
    return spark.createDataFrame([], ddl)


def make_context(settings: Settings) -> StdContext:
    """Validated parameters, source profiles and the area register: read once, at the edge."""
    return StdContext(params=load_silver_params(settings), profiles=load_contracts().profiles,
                      areas=S.load_areas(settings.reference_root), timezone=settings.timezone)


# -- the job ----------------------------------------------------------------------------------


def run(spark, settings: Settings, extract_date: dt.date) -> dict:
    """Standardise one extract date: every feed's bronze partition into silver_std.<feed> and
    quarantine.silver, each replacing that day's partition in one Delta commit."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    started = time.perf_counter()
    day = extract_date.isoformat()
    where = f"extract_date = DATE'{day}'"
    contracts = load_contracts()
    ctx = make_context(settings)
    def one_feed(feed: str, contract) -> tuple:
        bronze_name, target = f"bronze.{feed}", f"silver_std.{feed}"
        # A feed nobody has sent yet still gets its (empty) typed table, so curate and gold
        # find every table from the first day on.
        has_bronze = table_exists(spark, settings, bronze_name)
        bronze = (read_table(spark, settings, bronze_name).where(where) if has_bronze
                  else empty_bronze(spark, contract))
        std = standardise_feed(bronze, contract, ctx).persist(StorageLevel.MEMORY_AND_DISK)
        typed, issues = split(std, feed)
        n_bronze = bronze.count()
        # One pass over the persisted rows: what goes to silver_std, what is rejected.
        has_id = "is_national_id_valid" in std.columns
        agg = std.agg(
            F.count_if(~F.col("_is_rejected")).alias("n_silver"),
            F.count_if(F.col("_is_rejected")).alias("n_rejected"),
            (F.count_if(~F.col("_is_rejected") & ~F.col("is_national_id_valid")
                        & (F.col("national_id_status") != "missing")) if has_id
             else F.lit(None)).alias("n_invalid_national_id")).first()
        by_rule = {f"{r['rule_id']} {r['action']}": r["count"] for r in
                   issues.groupBy("rule_id", "action").count().orderBy("rule_id").collect()}
        counts = {"n_bronze": n_bronze, "n_silver": agg["n_silver"],
                  "n_rejected": agg["n_rejected"],
                  "n_invalid_national_id": agg["n_invalid_national_id"], "issues": by_rule}
        return feed, std, typed, target, issues, counts

    # Feeds side by side: each is a few small Spark jobs that leave cores idle one at a time.
    feeds = sorted(contracts.feeds.items())
    with ThreadPoolExecutor(max_workers=parallel_jobs(spark)) as pool:
        done = list(pool.map(lambda item: one_feed(*item), feeds))
    persisted = [std for _, std, *_ in done]
    writes = [(typed, target) for _, _, typed, target, _, _ in done]
    issue_frames = [issues for *_, issues, _ in done]
    counts = {feed: c for feed, *_, c in done}
    bad = {f: c for f, c in counts.items() if c["n_bronze"] != c["n_silver"] + c["n_rejected"]}
    if bad:
        for df in persisted:
            df.unpersist()
        raise ReconciliationError(
            f"{day}: bronze rows != silver rows + rejected rows for {sorted(bad)}: {bad}; "
            "nothing was written")
    quarantine = spark.createDataFrame([], _quarantine_ddl())
    for frame in issue_frames:
        quarantine = quarantine.unionByName(frame)
    writes.append((quarantine, QUARANTINE_TABLE))
    with ThreadPoolExecutor(max_workers=parallel_jobs(spark)) as pool:
        for future in [pool.submit(write_table, df, settings, name, replace_where=where)
                       for df, name in writes]:
            future.result()
    for df in persisted:
        df.unpersist()
    summary = {"extract_date": day, "feeds": counts,
               "reconciled": True, "seconds": round(time.perf_counter() - started, 1)}
    log.info("standardise %s: %s", day, summary)
    return summary


def _quarantine_ddl() -> str:
    types = {"extract_date": "date", "source_line": "int"}
    return ", ".join(f"`{c}` {types.get(c, 'string')}" for c in QUARANTINE_COLUMNS)
