"""Entity resolution: keyed-hash person ids, the generic match engine on a non-health table, and
the generated city resolved day by day - quality against the ground truth, stability of person
ids across re-runs and new days, deduplicated curated tables with no identifiers in clear."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import random
import string

import pandas as pd
import pytest

from jobs.config import PROJECT_ROOT, ConfigError
from jobs.lake import read_table
from jobs.silver import curate, resolve
from jobs.silver.evaluate import evaluate
from jobs.silver.generalise import QUASI_IDENTIFIERS
from jobs.silver.pseudonym import person_id, person_id_column
from tests.conftest import ER_DAYS, make_settings, person_links

# -- pseudonyms ---------------------------------------------------------------------------------


def test_person_id_is_a_keyed_hash_not_a_plain_one(spark):
    from pyspark.sql import functions as F

    nid = "440402198408269509"
    a, b = person_id(b"key-one", nid), person_id(b"key-two", nid)
    assert a != b and a.startswith("P") and len(a) == 25
    assert hashlib.sha256(nid.encode()).hexdigest()[:24] not in (a[1:], b[1:])
    got = spark.createDataFrame([(nid,), (None,)], "v string").select(
        person_id_column(b"key-one", F.col("v")).alias("p")).collect()
    assert [r["p"] for r in got] == [a, None]


def test_resolution_refuses_to_run_without_the_key(tmp_path, spark):
    settings = make_settings(tmp_path, HEALTHLAKE_HMAC_KEY="",
                             HEALTHLAKE_SECRETS__HMAC_KEY__FILE=str(tmp_path / "no-key"))
    with pytest.raises(ConfigError, match="hmac_key"):
        resolve.run(spark, settings, ER_DAYS[0])


def test_a_misspelt_comparison_names_its_key(settings):
    from jobs.match import engine

    spec = dict(settings.matching["model"])
    spec["comparisons"] = [{"function": "ExactMach", "column": "sex"}]
    with pytest.raises(ConfigError, match=r"matching.model.comparisons\[0\]"):
        engine.load_spec(spec, "matching.model")


# -- the pinned match model ----------------------------------------------------------------------


def test_the_pinned_model_fits_the_configured_comparisons(settings):
    spec = resolve.load_matching_params(settings).spec
    model, sha = resolve.pinned_model(settings, spec)
    assert len(sha) == 12 and 0 < model["probability_two_random_records_match"] < 1
    assert resolve.model_path(settings, spec).is_relative_to(PROJECT_ROOT / "conf")


def test_resolution_refuses_to_run_without_the_pinned_model_and_never_trains_one(tmp_path,
                                                                                  spark):
    missing = tmp_path / "no-model.json"
    settings = make_settings(tmp_path, HEALTHLAKE_MATCHING__MODEL__MODEL_FILE=str(missing))
    with pytest.raises(ConfigError, match=r"no trained match model .* `healthlake train-model"):
        resolve.run(spark, settings, ER_DAYS[0])
    assert not missing.exists()


def test_a_model_trained_for_other_comparisons_is_refused(tmp_path, settings):
    spec = resolve.load_matching_params(settings).spec
    model = json.loads(resolve.model_path(settings, spec).read_text(encoding="utf-8"))
    model["comparisons"] = model["comparisons"][:-1]
    old = tmp_path / "old-model.json"
    old.write_text(json.dumps(model), encoding="utf-8")
    stale = make_settings(tmp_path, HEALTHLAKE_MATCHING__MODEL__MODEL_FILE=str(old))
    with pytest.raises(ConfigError, match="retrain it with `healthlake train-model --replace`"):
        resolve.pinned_model(stale, resolve.load_matching_params(stale).spec)


def test_train_model_trains_on_standardised_days_and_replaces_only_when_asked(
        tmp_path, spark, settings, resolved_city):
    out = tmp_path / "city-model.json"
    matching = {**settings.matching, "model": {**settings.matching["model"], "training": {
        **settings.matching["model"]["training"], "max_records": 800}}}  # seconds, not minutes
    small = dataclasses.replace(settings, matching=matching)
    trained = resolve.train_model(spark, small, ER_DAYS[0], ER_DAYS[0], out)
    assert trained["local_patients"] > 800 and out.is_file()
    mine = dataclasses.replace(small, matching={
        **matching, "model": {**matching["model"], "model_file": str(out)}})
    model, sha = resolve.pinned_model(mine, resolve.load_matching_params(mine).spec)
    assert sha == trained["sha256"] and model["link_type"] == "dedupe_only"
    with pytest.raises(FileExistsError, match="--replace"):
        resolve.train_model(None, small, ER_DAYS[0], ER_DAYS[0], out)
    again = resolve.train_model(spark, small, ER_DAYS[0], ER_DAYS[0], out, replace=True)
    assert again["sha256"] == trained["sha256"]  # seeded: the same days give the same model


# -- the generic engine on a table that has nothing to do with health -----------------------------

FIRST = ["Anna", "Ben", "Carla", "David", "Emma", "Felix", "Greta", "Hugo", "Ida", "Jonas",
         "Karin", "Lukas", "Mia", "Noah", "Olga", "Paul", "Rita", "Sven", "Tina", "Uwe"]
LAST = ["Meyer", "Schmidt", "Fischer", "Weber", "Wagner", "Becker", "Hoffmann", "Koch",
        "Richter", "Klein", "Wolf", "Neumann", "Krause", "Lange", "Vogel", "Berger"]
CITIES = ["Aachen", "Bonn", "Celle", "Dessau", "Essen", "Fulda"]


def _customers(n_people: int = 150, seed: int = 3) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for person in range(n_people):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        dob = dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(25_000))
        city = rng.choice(CITIES)
        email = f"{first.lower()}.{last.lower()}{rng.randrange(100)}@example.org"
        for copy in range(rng.choice([1, 1, 2, 3])):
            f, s, e = first, last, email
            if copy and rng.random() < 0.5:  # a typo in the surname
                i = rng.randrange(1, len(s))
                s = s[:i] + rng.choice(string.ascii_lowercase) + s[i + 1:]
            if copy and rng.random() < 0.3:
                e = None
            rows.append({"customer_id": f"C{len(rows):05d}", "first_name": f, "surname": s,
                         "dob": dob.isoformat(), "city": city, "email": e, "true_person": person})
    return pd.DataFrame(rows)


def test_match_deduplicates_a_customer_table_from_its_yaml(tmp_path, spark):
    from jobs.cli import main
    from jobs.config import PROJECT_ROOT

    data = _customers()
    data.drop(columns="true_person").to_csv(tmp_path / "customers.csv", index=False)
    assert main(["match", "--config", str(PROJECT_ROOT / "conf/examples/match-customers.yaml"),
                 "--input", str(tmp_path / "customers.csv"),
                 "--output", str(tmp_path / "out.csv"),
                 "--save-model", str(tmp_path / "model.json")]) == 0
    out = pd.read_csv(tmp_path / "out.csv").merge(data[["customer_id", "true_person"]])
    assert len(out) == len(data) and (tmp_path / "model.json").is_file()
    items = spark.createDataFrame(out[["cluster_id", "true_person"]])
    from jobs.silver.evaluate import pairwise_scores

    scores = pairwise_scores(items, predicted="cluster_id", truth="true_person")
    assert scores["precision"] >= 0.95 and scores["recall"] >= 0.9, scores


# -- the generated city ---------------------------------------------------------------------------


def test_city_resolution_is_precise_first_and_finds_the_duplicates(spark, settings, resolved_city):
    scores = evaluate(spark, settings)
    assert scores["rows_without_truth"] == 0
    assert scores["precision"] >= 0.995, scores
    assert scores["recall"] >= 0.98, scores
    # Identity variations that defeat the deterministic rule are still resolved.
    for kind in ("missing_id", "invalid_check_char", "transposed_id", "homophone_name"):
        assert scores["by_variation"][kind]["with_majority"] >= 0.95, (kind, scores)


def test_every_source_row_is_linked_once(spark, settings, resolved_city):
    links = person_links(spark, settings)
    keys = ["extract_date", "feed", "institution_id", "record_key"]
    assert not links.duplicated(keys).any() and links["person_id"].notna().all()
    events = read_table(spark, settings, "silver.person_event").toPandas()
    assert set(events["event_type"]) <= {"split", "merge_candidate"}
    assert (events["person_id"] != events["other_person_id"]).all()
    for feed in resolve.PERSON_FEEDS:
        n_std = read_table(spark, settings, f"silver_std.{feed}").where(
            f"extract_date <= DATE'{ER_DAYS[-1]}'").count()
        assert (links["feed"] == feed).sum() == n_std, feed


def test_a_new_day_changes_only_the_persons_it_touches(spark, settings, resolved_city):
    before, after = resolved_city["links"], person_links(spark, settings)
    second = after["extract_date"] == ER_DAYS[1]
    pd.testing.assert_frame_equal(after[~second].reset_index(drop=True), before)
    touched = set(after.loc[second, "person_id"])
    # The golden records' exact attributes (restricted) and what silver.person publishes but
    # the generalised quasi-identifiers (a new day's persons may change their classes).
    for before, name, drop in [(resolved_city["person_attributes"],
                                "restricted.person_attributes", []),
                               (resolved_city["persons"], "silver.person", QUASI_IDENTIFIERS)]:
        before = before.drop(columns=drop).set_index("person_id").sort_index()
        now = read_table(spark, settings, name).toPandas().drop(columns=drop).set_index(
            "person_id").sort_index()
        untouched = before.index.difference(list(touched))
        pd.testing.assert_frame_equal(now.loc[untouched], before.loc[untouched])


def test_rerunning_a_day_changes_no_person_id(spark, settings, resolved_city):
    links_before = person_links(spark, settings)
    identity_before = read_table(spark, settings, "restricted.identity").toPandas()
    encounters_before = read_table(spark, settings, "silver.encounter").count()
    resolve.run(spark, settings, ER_DAYS[1])
    curate.run(spark, settings, ER_DAYS[1])
    pd.testing.assert_frame_equal(person_links(spark, settings), links_before)
    identity_after = read_table(spark, settings, "restricted.identity").toPandas()
    cols = sorted(identity_before.columns)
    pd.testing.assert_frame_equal(
        identity_after[cols].sort_values("lp_id").reset_index(drop=True),
        identity_before[cols].sort_values("lp_id").reset_index(drop=True))
    assert read_table(spark, settings, "silver.encounter").count() == encounters_before


def test_resolving_the_days_as_one_range_leaves_what_day_by_day_left(
        spark, settings, lake_root, resolved_city, monkeypatch):
    """`healthlake resolve --date D1 --until D2` (an initial load): the days in order, then
    silver.person once; the lake ends as resolving each day with its own refresh left it."""
    from jobs.cli import main
    from tests.conftest import settings_env

    links_before = person_links(spark, settings)
    persons_before = read_table(spark, settings, "silver.person").toPandas()
    for name, value in settings_env(lake_root).items():
        monkeypatch.setenv(name, value)
    assert main(["resolve", "--date", str(ER_DAYS[0]), "--until", str(ER_DAYS[1])]) == 0
    pd.testing.assert_frame_equal(person_links(spark, settings), links_before)
    persons_after = read_table(spark, settings, "silver.person").toPandas()
    pd.testing.assert_frame_equal(
        persons_after.sort_values("person_id").reset_index(drop=True),
        persons_before.sort_values("person_id").reset_index(drop=True))


def test_curated_tables_hold_no_identifier_in_clear(spark, settings, resolved_city):
    from jobs.privacy import curated_tables, scan

    truth = pd.read_parquet(settings.ground_truth_root / "persons.parquet")
    known = set(truth["name"]) | set(truth["phone"].dropna()) | set(truth["national_id"])
    written = [t for t in curated_tables(settings) if t.startswith("silver.")]
    assert {"silver.person", "silver.person_link", "silver.encounter"} <= set(written)
    assert scan(spark, settings, known) == {}


def test_published_files_are_scanned_for_identifiers(tmp_path):
    """The same patterns over exports and reports (CSV, XLSX, Parquet, HTML)."""
    import pandas as pd_

    from jobs.privacy import scan_files

    clean = pd_.DataFrame({"district": ["香洲区"], "value": [12.5], "key": ["ZHD0001-E1"]})
    clean.to_csv(tmp_path / "clean.csv", index=False)
    clean.to_excel(tmp_path / "clean.xlsx", index=False)
    leaky = clean.assign(note=["call 13800138000"], who=["陈丽"])
    leaky.to_parquet(tmp_path / "leaky.parquet")
    (tmp_path / "report.html").write_text("<p>440402198408269509</p>", encoding="utf-8")
    hits = scan_files(tmp_path, known={"陈丽"})
    assert set(hits) == {"leaky.parquet", "report.html"}
    assert set(hits["leaky.parquet"]) == {"mobile_phone", "known_value"}
    assert set(hits["report.html"]) == {"national_id"}


def test_the_scan_finds_identifiers_when_they_are_there(spark):
    from jobs.privacy import scan_frame

    df = spark.createDataFrame([("note 440402198408269509 x", "13800138000", "陈丽")],
                               "a string, b string, c string")
    kinds = {(h["column"], h["kind"]) for h in scan_frame(df, known={"陈丽"})}
    assert kinds == {("a", "national_id"), ("b", "mobile_phone"), ("c", "known_value")}


def test_curated_person_is_a_golden_record(spark, settings, resolved_city):
    persons = read_table(spark, settings, "restricted.person_attributes").toPandas()
    assert set(persons["person_id"]) == set(
        read_table(spark, settings, "silver.person").toPandas()["person_id"])
    assert persons["person_id"].is_unique
    assert persons["sex"].isin(["male", "female"]).all()
    assert persons["birth_date"].notna().all() and persons["district_code"].notna().all()
    truth = pd.read_parquet(settings.ground_truth_root / "persons.parquet")
    # Most persons are exactly one true resident; their golden sex and birth date are true.
    links = person_links(spark, settings)
    records = resolved_city["records"].drop_duplicates(
        ["extract_date", "feed", "institution_id", "record_key"])
    records["extract_date"] = pd.to_datetime(records["extract_date"]).dt.date
    m = links.merge(records, on=["extract_date", "feed", "institution_id", "record_key"])
    one = m.groupby("person_id")["person_key"].agg(lambda s: s.mode()[0]).rename("person_key")
    g = persons.set_index("person_id").join(one, how="inner").merge(
        truth[["person_key", "sex", "birth_date"]], on="person_key", suffixes=("", "_true"))
    assert (g["sex"] == g["sex_true"]).mean() > 0.999
    assert (pd.to_datetime(g["birth_date"]) == pd.to_datetime(g["birth_date_true"])).mean() > 0.999


def test_the_same_encounter_sent_twice_is_one_encounter(tmp_path, spark):
    from jobs.silver.curate import CURATED, curate_feed, merge_into

    settings = make_settings(tmp_path)
    spec = CURATED["encounters"]
    rows = [("ZHT0001", "E1", "N1", dt.date(2024, 4, 15), "2024-04-15 09:00:00", 10.0, "f1", 2),
            ("ZHT0001", "E1", "N1", dt.date(2024, 4, 15), "2024-04-15 09:00:00", 10.0, "f1", 5),
            ("ZHT0001", "E2", "N1", dt.date(2024, 4, 15), "2024-04-15 10:00:00", 20.0, "f1", 3)]
    ddl = ("institution_id string, encounter_id string, patient_no string, extract_date date, "
           "visit_at string, total_fee double, source_file string, source_line int")
    links = spark.createDataFrame(
        [("ZHT0001", "E1", dt.date(2024, 4, 15), "Pa"), ("ZHT0001", "E2", dt.date(2024, 4, 15),
                                                         "Pa")],
        "institution_id string, record_key string, extract_date date, person_id string")
    day1 = curate_feed(spark.createDataFrame(rows, ddl), links, spec)
    merge_into(spark, settings, day1, spec)
    merge_into(spark, settings, day1, spec)  # a re-run
    # The next day re-sends E1 with a corrected fee.
    resent = [("ZHT0001", "E1", "N1", dt.date(2024, 4, 16), "2024-04-15 09:00:00", 12.0, "f2", 2)]
    links2 = spark.createDataFrame([("ZHT0001", "E1", dt.date(2024, 4, 16), "Pa")],
                                   links.schema)
    merge_into(spark, settings, curate_feed(spark.createDataFrame(resent, ddl), links2, spec),
               spec)
    got = read_table(spark, settings, "silver.encounter").toPandas().set_index("encounter_id")
    assert sorted(got.index) == ["E1", "E2"]
    assert got.loc["E1", "total_fee"] == 12.0
    assert got.loc["E1", "first_seen_date"] == dt.date(2024, 4, 15)
    assert "patient_no" not in got.columns and (got["person_id"] == "Pa").all()


def test_person_ids_are_keyed_hashes_never_plain_sha256_of_identity_numbers(
        spark, settings, resolved_city):
    """A plain SHA-256 of a national ID can be recomputed by anyone holding a list of IDs; the
    stored person id is an HMAC under the secret key, so it cannot."""
    from jobs.privacy import curated_tables, scan
    from jobs.silver.pseudonym import hmac_key

    truth = pd.read_parquet(settings.ground_truth_root / "persons.parquet")
    ids = set(truth["national_id"].dropna())
    plain = {hashlib.sha256(i.encode("utf-8")).hexdigest() for i in ids}
    plain |= {h[:24] for h in plain} | {"P" + h[:24] for h in plain}
    assert scan(spark, settings, plain) == {}, "plain SHA-256 of an identity number is stored"

    keyed = {person_id(hmac_key(settings), i) for i in ids}
    stored = {r["person_id"] for r in read_table(spark, settings, "silver.person")
              .select("person_id").collect()}
    assert len(stored & keyed) > 0.5 * len(stored), "person ids are the keyed hash of the ID"
    assert any(t.startswith("silver.") for t in curated_tables(settings))


def test_privacy_run_passes_the_lake_and_fails_on_a_leaky_export(spark, settings,
                                                                 resolved_city, tmp_path):
    """`healthlake privacy-scan`: every curated table and published file, against the patterns
    and the ground truth; a leaked identity number in an export fails it, naming the file."""
    from jobs import privacy

    known = privacy.known_values(settings.ground_truth_root / "persons.parquet")
    (tmp_path / "ok.csv").write_text("district,value\n440402,12.5\n", encoding="utf-8")
    summary = privacy.run(spark, settings, [tmp_path], known)
    assert "silver.person" in summary["tables_scanned"] and summary["known_values"] > 1000

    leaked = sorted(pd.read_parquet(settings.ground_truth_root / "persons.parquet")
                    ["national_id"].dropna())[0]
    (tmp_path / "leak.csv").write_text(f"id,value\n{leaked},1\n", encoding="utf-8")
    with pytest.raises(privacy.PrivacyError, match="leak.csv: national_id") as failed:
        privacy.run(spark, settings, [tmp_path], known)
    assert leaked not in str(failed.value), "the report masks what it found"


def test_the_hmac_key_is_written_nowhere_in_the_lake(settings, lake_root, resolved_city):
    """Every file under the lake (every zone, Delta logs, checkpoints, Parquet values) is
    searched for the key the run used: it travels in the pseudonymising function's closure
    only."""
    import pyarrow.parquet as pq

    from tests.conftest import TEST_SECRET

    key = TEST_SECRET.encode("utf-8")
    files = [p for p in lake_root.rglob("*") if p.is_file()]
    assert len(files) > 100
    assert [p for p in files if key in p.read_bytes()] == []
    for p in (p for p in files if p.suffix == ".parquet"):
        table = pq.read_table(p)
        for column in table.columns:
            if column.type == "string":
                assert TEST_SECRET not in set(column.to_pylist()), p
