"""The analysts' SQL gate (issue 26, 1-3 and 7-8): writes hidden behind CTEs and FROM-first
forms, directory writes, reflection, metadata commands by string path, restricted tables,
temporary views, subqueries and anything but a query are refused on Spark's own parsed and
analysed plans, with nothing written and one audit row per query; the analysts' queries
still run. On the session city's gold lake (tests/conftest.py)."""

from __future__ import annotations

import json
import os

import pytest

from jobs import audit
from jobs.lake import read_table, table_exists, table_version
from jobs.publish import gate, sql
from jobs.publish.settings import load_publish
from tests.conftest import TEST_SECRET

YEAR = 2024
TEMP_VIEW = "identity_copy"   # registered in the session by "some other code"
UDF = "pseudonym_like"


@pytest.fixture(scope="module")
def analyst(spark, gold_lake, tmp_path_factory):
    """The session with a restricted temporary view and a Python UDF registered by other code
    (as a notebook's earlier cell might), given back as the other tests expect it."""
    settings = gold_lake
    read_table(spark, settings, "restricted.identity").createOrReplaceTempView(TEMP_VIEW)
    spark.udf.register(UDF, lambda s: f"P{s}", "string")
    out = tmp_path_factory.mktemp("sql-gate") / "written"
    yield spark, settings, out
    spark.catalog.dropTempView(TEMP_VIEW)
    spark.conf.set("spark.sql.runSQLOnFiles", "true")


def _audit(spark, settings):
    """ops.audit_log as pandas (read by path with the DataFrame reader, not through SQL)."""
    import pandas as pd

    if not table_exists(spark, settings, audit.AUDIT_TABLE):
        return pd.DataFrame({c.split()[0]: [] for c in audit.COLUMNS.split(", ")})
    path = settings.table_location(audit.AUDIT_TABLE)
    return spark.read.format("delta").load(path).toPandas()


ATTACKS = {
    "cte insert": "WITH x AS (SELECT 1 AS a) INSERT INTO ops.audit_log SELECT * FROM ops.audit_log",
    "cte insert gold": "WITH x AS (SELECT 1 AS a) INSERT INTO gold.index_score "
                       "SELECT * FROM gold.index_score",
    "cte delete": "WITH x AS (SELECT 2024 AS y) DELETE FROM gold.index_score "
                  "WHERE year IN (SELECT y FROM x)",
    "cte merge": "WITH x AS (SELECT 2024 AS y) MERGE INTO gold.index_score t USING x "
                 "ON t.year = x.y WHEN MATCHED THEN DELETE",
    "directory": "INSERT OVERWRITE DIRECTORY '{out}' USING csv SELECT * FROM gold.metric_value",
    "from-first insert": "FROM gold.index_score INSERT INTO gold.index_score SELECT *",
    "from-first directory": "FROM gold.metric_value INSERT OVERWRITE DIRECTORY '{out}' "
                            "USING csv SELECT *",
    "reflect": "SELECT reflect('java.lang.System', 'getenv', 'HEALTHLAKE_HMAC_KEY')",
    "java_method": "SELECT Java_Method('java.lang.System', 'getenv', 'HEALTHLAKE_HMAC_KEY')",
    "try_reflect": "SELECT area_name FROM gold.index_score "
                   "WHERE try_reflect('java.lang.System', 'getenv', 'HOME') IS NOT NULL",
    "qualified reflect": "SELECT system.builtin.reflect('java.lang.System', 'getenv', 'HOME')",
    "input_file_name": "SELECT input_file_name() FROM gold.index_score",
    "history relative": "DESCRIBE HISTORY '{relative}'",
    "history doubled": "DESCRIBE HISTORY '{doubled}'",
    "history delta path": "DESCRIBE HISTORY delta.`{path}`",
    "detail": "DESCRIBE DETAIL '{relative}'",
    "set": "SET spark.sql.runSQLOnFiles=true",
    "set all": "SET",
    "add jar": "ADD JAR '{out}.jar'",
    "cache": "CACHE TABLE gold.index_score",
    "create": "CREATE TABLE gold.created (a INT)",
    "create view": "CREATE TEMP VIEW created_view AS SELECT 1 AS a",
    "drop": "DROP TABLE gold.index_score",
    "delta path": "SELECT * FROM delta.`{path}`",
    "parquet path": "SELECT * FROM parquet.`{path}`",
    "show restricted": "SHOW TABLES IN restricted",
    "show current": "SHOW TABLES",
    "describe restricted": "DESCRIBE restricted.identity",
    "columns restricted": "SHOW COLUMNS IN bronze.encounters",
    "describe audit": "DESCRIBE ops.audit_log",
    "multi": "SELECT 1; SELECT 2",
    "multi write": "SELECT 1; INSERT INTO gold.index_score SELECT * FROM gold.index_score",
    "temp view": f"SELECT * FROM {TEMP_VIEW}",
    "temp view beside a cte": f"SELECT * FROM (WITH {TEMP_VIEW} AS (SELECT 1 AS a) "
                              f"SELECT * FROM {TEMP_VIEW}), {TEMP_VIEW}",
    "scalar subquery": "SELECT (SELECT count(*) FROM restricted.identity) AS n",
    "exists": "SELECT area_name FROM gold.index_score s WHERE EXISTS "
              "(SELECT 1 FROM restricted.identity i WHERE i.person_id = s.area_code)",
    "lateral": "SELECT * FROM gold.index_score s, LATERAL "
               "(SELECT * FROM restricted.identity i WHERE i.person_id = s.area_code)",
    "explain write": "EXPLAIN INSERT INTO gold.index_score SELECT * FROM gold.index_score",
    "explain restricted": "EXPLAIN SELECT * FROM restricted.identity",
    "read_files": "SELECT * FROM read_files('{path}')",
    "script": "SELECT TRANSFORM(area_name) USING 'cat' AS (a) FROM gold.index_score",
    "audit log": "SELECT * FROM ops.audit_log",
    "unlisted ops": "SELECT * FROM ops.dq_results",
    "identifier": "SELECT * FROM IDENTIFIER('restricted.identity')",
    "udf": f"SELECT {UDF}(area_name) FROM gold.index_score",
    "restricted join": "SELECT e.* FROM gold.index_score s JOIN `silver_std`.`encounters` e "
                       "ON true",
    "relation options": "SELECT * FROM gold.index_score WITH ('path' = '{path}')",
    "time travel": "SELECT * FROM silver.person VERSION AS OF 0",
    "execute immediate": "EXECUTE IMMEDIATE 'INSERT INTO gold.index_score "
                         "SELECT * FROM gold.index_score'",
    "lambda reflect": "SELECT transform(array(1), x -> reflect('java.lang.System', 'getenv', "
                      "'HOME'))",
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_is_refused_and_changes_nothing(analyst, name):
    spark, settings, out = analyst
    path = settings.table_location("restricted.identity")
    text = ATTACKS[name].format(
        out=out, path=path, relative=os.path.relpath(path),
        doubled="/" + path.replace("/", "//"))
    before = _audit(spark, settings)
    versions = {t: table_version(settings, t) for t in ("gold.index_score", "gold.metric_value")}

    with pytest.raises(sql.RefusedQuery) as refused:
        sql.query(spark, settings, text)

    assert TEST_SECRET not in str(refused.value)
    assert not out.exists() and not out.with_suffix(".jar").exists()
    assert {t: table_version(settings, t) for t in versions} == versions
    assert spark.conf.get("spark.sql.runSQLOnFiles") == "false"
    assert not spark.catalog.tableExists("gold.created")
    assert not spark.catalog.tableExists("created_view")
    after = _audit(spark, settings)
    assert len(after) == len(before) + 1      # only the refusal's own row, nothing forged
    row = after[~after["at"].isin(before["at"])].iloc[0]
    assert row["action"] == "sql_refused"
    detail = json.loads(row["detail"])
    assert detail["query"] == text and detail["refused"] == str(refused.value)


def test_refusals_say_why(analyst):
    spark, settings, _ = analyst
    path = settings.table_location("restricted.identity")
    reasons = {
        "WITH x AS (SELECT 1) INSERT INTO gold.index_score SELECT * FROM x":
            "not a query: InsertIntoStatement",
        "SELECT count(*) FROM restricted.identity": "restricted.identity is in the restricted zone",
        "SELECT (SELECT max(x) FROM bronze.encounters)": "in the restricted zone",
        f"SELECT * FROM delta.`{path}`": "by path",
        "SELECT reflect('a', 'b')": "function reflect is not allowed",
        f"SELECT * FROM {TEMP_VIEW}": "not an analyst table",
        "SELECT * FROM ops.audit_log": "not an analyst table",
        "SELECT 1; SELECT 2": "one statement at a time",
        "SELECT * FROM read_files('x')": "table function read_files is not allowed",
    }
    for text, reason in reasons.items():
        with pytest.raises(sql.RefusedQuery, match=reason):
            sql.query(spark, settings, text)


ALLOWED = {
    "readme": f"""SELECT area_name, index_name, round(score, 1) AS score, rank,
                  round(change, 1) AS change FROM gold.index_score
                  WHERE year = {YEAR} AND area_level = 'district' ORDER BY index_name, rank""",
    "cte join window": """WITH s AS (SELECT * FROM gold.index_score WHERE index_name = 'total')
                          SELECT s.area_name, s.score, rank() OVER (ORDER BY s.score DESC) AS r,
                                 count(*) OVER (PARTITION BY s.area_level) AS n
                          FROM s JOIN gold.index_score t ON t.area_code = s.area_code
                               AND t.year = s.year AND t.index_name = 'governance'""",
    "subqueries": """SELECT p.sex, count(*) AS n FROM silver.person p
                     WHERE p.person_id IN (SELECT person_id FROM silver.encounter)
                       AND EXISTS (SELECT 1 FROM silver.health_record h
                                   WHERE h.person_id = p.person_id)
                     GROUP BY p.sex HAVING count(*) > (SELECT 0)""",
    "lateral": """SELECT s.area_name, t.n FROM gold.index_score s,
                  LATERAL (SELECT count(*) AS n FROM gold.index_indicator i
                           WHERE i.area_code = s.area_code) t LIMIT 3""",
    "generators": "SELECT * FROM range(3) JOIN (SELECT explode(array(1, 2)) AS e) ON true",
    "values": "VALUES (1, 'a'), (2, 'b')",
    "qualified": "SELECT count(*) FROM spark_catalog.gold.metric_value",
    "ops": "SELECT status, count(*) FROM ops.ingest_log GROUP BY status",
    "describe": "DESCRIBE TABLE gold.index_score",
    "show": "SHOW TABLES IN gold",
    "explain": "EXPLAIN SELECT * FROM gold.index_score",
}


def test_analyst_queries_run_and_each_leaves_one_audit_row(analyst):
    spark, settings, _ = analyst
    before = _audit(spark, settings)
    for name, text in ALLOWED.items():
        rows, _ = sql.query(spark, settings, text)
        assert len(rows), name
    after = _audit(spark, settings)
    new = after[~after["at"].isin(before["at"])].sort_values("at")
    assert list(new["action"]) == ["sql_query"] * len(ALLOWED)
    assert [json.loads(d)["query"] for d in new["detail"]] == list(ALLOWED.values())
    readme = json.loads(new["detail"].iloc[0])
    assert readme["tables"] == {"gold.index_score": table_version(settings, "gold.index_score")}
    assert new["target"].iloc[0] == "gold.index_score"
    assert new["table_version"].iloc[0] == table_version(settings, "gold.index_score")
    assert set(json.loads(new["detail"].iloc[2])["tables"]) == {
        "silver.person", "silver.encounter", "silver.health_record"}


def _analysed(spark, text: str):
    jvm = spark._jvm
    parsed = spark._jsparkSession.sessionState().sqlParser().parsePlan(text)
    skip = jvm.org.apache.spark.sql.execution.CommandExecutionMode.SKIP()
    return spark._jsparkSession.sessionState().executePlan(parsed, skip).analyzed()


def test_the_analysed_plan_alone_refuses_commands_views_paths_and_reflection(analyst):
    """What a server-side hook (the Thrift server) sees: analysed plans only."""
    spark, settings, out = analyst
    allowed = gate.allowed_tables(settings, load_publish(settings))
    sql.register_tables(spark, settings, allowed)
    spark.conf.set("spark.sql.runSQLOnFiles", "true")  # the gate, not this setting, refuses
    try:
        path = settings.table_location("restricted.identity")
        refused = [
            "INSERT INTO gold.index_score SELECT * FROM gold.index_score",
            f"INSERT OVERWRITE DIRECTORY '{out}' USING csv SELECT 1",
            "SET spark.sql.runSQLOnFiles=true",
            "CACHE TABLE gold.index_score",
            "SELECT reflect('java.lang.System', 'getenv', 'HOME')",
            "SELECT try_reflect('java.lang.System', 'getenv', 'HOME')",
            f"SELECT {UDF}(area_name) FROM gold.index_score",
            f"SELECT * FROM {TEMP_VIEW}",
            f"SELECT * FROM delta.`{path}`",
            f"SELECT (SELECT count(*) FROM delta.`{path}`)",
            f"DESCRIBE HISTORY delta.`{path}`",
        ]
        for text in refused:
            with pytest.raises(gate.RefusedQuery):
                gate.check_analysed(_analysed(spark, text), allowed)
        assert gate.check_analysed(_analysed(
            spark, "WITH s AS (SELECT * FROM gold.index_score) SELECT * FROM s "
                   "WHERE area_code IN (SELECT area_code FROM silver.institution)"), allowed) \
            == ["gold.index_score", "silver.institution"]
    finally:
        spark.conf.set("spark.sql.runSQLOnFiles", "false")
    assert not out.exists()


def test_an_account_that_cannot_write_the_ops_zone_leaves_its_row_in_the_inbox(
        analyst, monkeypatch):
    spark, settings, _ = analyst
    inbox = settings.zone_root("ops") / audit.SQL_INBOX
    inbox.mkdir(mode=0o1733, exist_ok=True)

    def denied(*args, **kwargs):
        raise PermissionError("Permission denied: ops/_writer.lock")

    monkeypatch.setattr(audit, "write", denied)
    before = set(inbox.iterdir())  # rows other tests' analyst accounts left stay theirs
    with pytest.raises(sql.RefusedQuery):
        sql.query(spark, settings, "SELECT * FROM restricted.identity")
    left = sorted(set(inbox.iterdir()) - before)
    lines = [json.loads(f.read_text()) for f in left]
    for f in left:
        f.unlink()
    assert [(r["action"], json.loads(r["detail"])["query"]) for r in lines] == [
        ("sql_refused", "SELECT * FROM restricted.identity")]


def test_the_configuration_lists_the_ops_tables_and_keeps_reflection_denied(settings,
                                                                             lake_root):
    from jobs.config import ConfigError
    from tests.conftest import make_settings

    allowed = gate.allowed_tables(settings, load_publish(settings))
    assert sorted(t for t in allowed.tables if t.startswith("ops.")) == [
        "ops.feed_counts", "ops.ingest_log"]  # never ops.audit_log or ops.dq_results
    assert not any(t.startswith(("bronze.", "quarantine.", "silver_std.", "restricted."))
                   for t in allowed.tables)
    for key, value in (("OPS_TABLES", "[restricted.identity]"),
                       ("DENIED_FUNCTIONS", "[input_file_name]")):
        with pytest.raises(ConfigError, match=f"publish.sql.{key.lower()}"):
            load_publish(make_settings(lake_root, **{f"HEALTHLAKE_PUBLISH__SQL__{key}": value}))
