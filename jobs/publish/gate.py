"""The analysts' SQL gate: a query is checked on Spark's own parsed and analysed plans, never on
its text, before anything runs.

Used by `healthlake sql`, the notebooks' helper (:func:`jobs.publish.sql.query`) and the Thrift
JDBC server's process. What passes is a read-only query over the allowed tables:

1. **Parsed plan** (:func:`check_parsed`), from Spark's own parser, nothing executed. Every plan
   node, the plans of CTE definitions and of subquery expressions, and every expression are
   walked. Plan nodes come from an allow-list of query operators (projection, filter,
   aggregation, joins, set operations, windows, limits, VALUES, CTEs ...): any command, write,
   DDL, ``SET``, ``ADD JAR``, ``CACHE``, ``DESCRIBE HISTORY``/``DETAIL``, script transformation
   or anything unknown is refused. Allowed besides queries: ``DESCRIBE [TABLE]``, ``SHOW
   COLUMNS`` of an allowed table, ``SHOW TABLES IN <layer>`` of an allowed layer, ``SHOW
   DATABASES``, ``EXPLAIN`` of an allowed query. Every relation is an allowed table by its
   catalogue name (``gold.index_score``, ``spark_catalog.gold.index_score``) or a CTE defined in
   scope: no path, no ``delta.`...```, no restricted table, no temporary view, no time travel.
   Every function name is checked against ``publish.sql.denied_functions`` (reflection, input
   files ...), table-valued functions against ``publish.sql.table_functions``.
2. **Analysed plan** (:func:`check_analysed`), by the analyser, still nothing executed: every
   node again from an allow-list (so analysed commands are refused too), every leaf relation a
   catalogue table of the allowed set (no view, no path relation, no in-memory data frame),
   no reflection, input-file or user-defined function by expression class.

API (for `healthlake sql`, notebooks and the Thrift server):

* ``allowed = gate.allowed_tables(settings, publish_settings)``: the allowed set (:class:`Allowed`).
* ``gate.check_sql(spark, text, allowed) -> Checked``: parse, check, analyse, check; returns the
  statement (``.code``), the tables it reads (``.tables``) and the analysed plan. Nothing is
  executed: run ``spark.sql(checked.code)`` afterwards.
* ``gate.check_analysed(jplan, allowed) -> list[str]``: checks an already analysed py4j
  ``LogicalPlan`` alone (what a server-side hook sees); returns the tables read.
* ``gate.check_parsed(jplan, allowed) -> list[str]``: the same on a parsed plan.
* All raise :class:`RefusedQuery` (also importable from :mod:`jobs.publish.sql`) with the reason
  in words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.config import URI, Settings, TableSpec
from jobs.publish.settings import RESTRICTED_ZONE, PublishSettings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class RefusedQuery(ValueError):
    """A query analysts may not run, with the reason in words."""


# Query operators of a parsed plan (Spark 4.1's class names, checked by parsing examples).
PARSED_QUERY_NODES = frozenset({
    "Project", "Filter", "Aggregate", "Join", "Sort", "GlobalLimit", "LocalLimit", "LimitAll",
    "Offset", "Tail", "Distinct", "Union", "Intersect", "Except", "SubqueryAlias",
    "UnresolvedWith", "UnresolvedRelation", "OneRowRelation", "LocalRelation",
    "UnresolvedInlineTable", "Window", "Generate", "Pivot", "Unpivot", "UnresolvedHaving",
    "UnresolvedHint", "Sample", "WithWindowDefinition", "UnresolvedSubqueryColumnAliases",
    "LateralJoin", "RepartitionByExpression", "Repartition", "UnresolvedTableValuedFunction",
    "UnresolvedTVFAliases", "PipeOperator",
})
# Query operators of an analysed plan; leaf relations are checked one by one.
ANALYSED_QUERY_NODES = frozenset({
    "Project", "Filter", "Aggregate", "Join", "Sort", "GlobalLimit", "LocalLimit", "Offset",
    "Tail", "Distinct", "Deduplicate", "Union", "Intersect", "Except", "SubqueryAlias",
    "WithCTE", "CTERelationDef", "CTERelationRef", "OneRowRelation", "LocalRelation", "Range",
    "Window", "Generate", "Expand", "Sample", "RepartitionByExpression", "Repartition",
    "ResolvedHint", "LateralJoin", "UnionLoop", "UnionLoopRef", "Subquery",
})
TABLE_RELATIONS = frozenset({"LogicalRelation", "DataSourceV2Relation", "HiveTableRelation"})
# Expression classes that reach the JVM, the files read or code outside Spark's own functions.
DENIED_EXPRESSIONS = frozenset({
    "CallMethodViaReflection", "TryReflect", "InputFileName", "InputFileBlockStart",
    "InputFileBlockLength", "PythonUDF", "PythonUDAF", "PythonUDTF", "ScalaUDF", "ScalaUDAF",
    "ScalaAggregator", "HiveSimpleUDF", "HiveGenericUDF", "HiveGenericUDTF", "HiveUDAFFunction",
    "UnresolvedPolymorphicPythonUDTF",
})
USER_DEFINED = "org.apache.spark.sql.catalyst.expressions.UserDefinedExpression"
PLAN_EXPRESSION = "org.apache.spark.sql.catalyst.expressions.PlanExpression"
LOGICAL_PLAN = "org.apache.spark.sql.catalyst.plans.logical.LogicalPlan"
SESSION_CATALOG = "spark_catalog"
# Relation names whose first part is a file format: Spark reads files by path with them.
FILE_FORMATS = frozenset({"delta", "parquet", "json", "csv", "orc", "text", "avro",
                          "binaryfile", "xml", "hive", "file", "jdbc"})
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)

READ_ONLY = "the lake is read-only here: only queries (SELECT, WITH, VALUES, TABLE)"


@dataclass(frozen=True)
class Allowed:
    """What analysts may read: the tables by name, the roots their files lie under, the
    restricted tables (named in refusals), and the functions refused or allowed."""

    tables: dict[str, TableSpec]
    roots: tuple[str, ...]                 # locations (see location()) files may lie under
    restricted: dict[str, TableSpec]
    restricted_root: str
    denied_functions: frozenset[str]
    table_functions: frozenset[str]

    @property
    def layers(self) -> frozenset[str]:
        return frozenset(n.partition(".")[0] for n in self.tables)


def allowed_tables(settings: Settings, spec: PublishSettings) -> Allowed:
    """The curated zones' tables (``publish.sql.zones``) and the listed ops tables
    (``publish.sql.ops_tables``), never a restricted one."""
    zones = [z for z in spec.sql.zones if z != RESTRICTED_ZONE]
    tables = {n: t for n, t in settings.tables.items() if t.zone in zones}
    tables.update({n: settings.tables[n] for n in spec.sql.ops_tables
                   if settings.tables[n].zone != RESTRICTED_ZONE})
    roots = [location(settings.zone_location(z)) for z in zones]
    roots += [location(settings.table_location(n)) for n in spec.sql.ops_tables
              if n in tables and tables[n].zone not in zones]
    return Allowed(
        tables=tables, roots=tuple(roots),
        restricted={n: t for n, t in settings.tables.items() if t.zone == RESTRICTED_ZONE},
        restricted_root=location(settings.zone_location(RESTRICTED_ZONE)),
        denied_functions=frozenset(f.lower() for f in spec.sql.denied_functions),
        table_functions=frozenset(f.lower() for f in spec.sql.table_functions))


def location(where: str) -> str:
    """A file's or a zone's location in one form to compare: a local path (or ``file:`` URI)
    as its resolved absolute path, any other URI (hdfs://, s3a:// ...) as it is."""
    if URI.match(where) and not where.startswith("file:"):
        return where.rstrip("/")
    return Path(re.sub(r"^file:(//)?", "", where)).resolve().as_posix()


# -- py4j helpers ---------------------------------------------------------------------------------


def _items(seq) -> list:
    """A Scala collection's items."""
    out, it = [], seq.iterator()
    while it.hasNext():
        out.append(it.next())
    return out


def _kind(obj) -> str:
    """A JVM object's simple class name (``Project``; ``CurrentNamespace$`` without the $)."""
    return obj.getClass().getName().rsplit(".", 1)[-1].rstrip("$")


_classes: dict[tuple[int, str], object] = {}


def _is(obj, class_name: str) -> bool:
    """Whether a JVM object is an instance of a class or interface (looked up once per JVM)."""
    from py4j.java_gateway import JavaClass

    client = obj._gateway_client  # the JVM the object lives in
    key = (id(client), class_name)
    if key not in _classes:
        _classes[key] = JavaClass("java.lang.Class", client).forName(class_name)
    return bool(_classes[key].isInstance(obj))


# -- the parsed plan ------------------------------------------------------------------------------


def _refuse_not_query(kind: str) -> RefusedQuery:
    return RefusedQuery(f"not a query: {kind}; {READ_ONLY}, DESCRIBE/SHOW of the analyst tables "
                        "and EXPLAIN of a query")


def table_name(parts: list[str], allowed: Allowed, ctes: frozenset[str] = frozenset()) -> str:
    """The allowed table a relation's multipart name designates (``layer.table``), or the CTE
    name; else :class:`RefusedQuery` saying why."""
    lowered = [p.lower() for p in parts]
    joined = ".".join(parts)
    if any("/" in p or "\\" in p or _SCHEME.match(p) for p in parts) or \
            (len(parts) == 2 and lowered[0] in FILE_FORMATS):
        raise RefusedQuery(f"{joined}: files are not read by path here: query the catalogued "
                           "tables by name (`healthlake tables` lists them)")
    if len(parts) == 1 and lowered[0] in ctes:
        return lowered[0]
    if len(parts) == 3 and lowered[0] == SESSION_CATALOG:
        lowered = lowered[1:]
    name = ".".join(lowered)
    if len(lowered) == 2 and name in allowed.tables:
        return name
    if name in allowed.restricted or (len(lowered) == 2 and lowered[0] in {
            n.partition(".")[0] for n in allowed.restricted} - allowed.layers):
        raise RefusedQuery(
            f"{name} is in the restricted zone (identifiers in clear, rows as received): it is "
            "not open to analysts. Query the curated tables (`healthlake tables` lists them)")
    raise RefusedQuery(f"{joined} is not an analyst table: tables are named layer.table "
                       "(`healthlake tables` lists them); no views, no temporary tables")


def _check_function(parts: list[str], allowed: Allowed) -> None:
    name = ".".join(parts).lower()
    if name in allowed.denied_functions or parts[-1].lower() in allowed.denied_functions:
        raise RefusedQuery(f"function {parts[-1]} is not allowed here (it reaches the engine, "
                           "its files or its environment; publish.sql.denied_functions)")


def _walk_parsed_expression(expr, allowed: Allowed, ctes: frozenset[str], read: list[str]) -> None:
    kind = _kind(expr)
    if kind in DENIED_EXPRESSIONS:
        raise RefusedQuery(f"{kind} is not allowed here")
    if kind == "UnresolvedFunction":
        _check_function([str(p) for p in _items(expr.nameParts())], allowed)
    elif kind == "UnresolvedGenerator":
        _check_function([str(expr.name().funcName())], allowed)
    if _is(expr, PLAN_EXPRESSION):
        _walk_parsed(expr.plan(), allowed, ctes, read)
    for child in _items(expr.children()):
        _walk_parsed_expression(child, allowed, ctes, read)


def _walk_parsed(plan, allowed: Allowed, ctes: frozenset[str], read: list[str]) -> None:
    kind = _kind(plan)
    if kind not in PARSED_QUERY_NODES:
        raise _refuse_not_query(kind)
    if kind == "UnresolvedWith":
        definitions = _items(plan.cteRelations())
        ctes = ctes | {str(d._1()).lower() for d in definitions}
        for definition in definitions:
            _walk_parsed(definition._2(), allowed, ctes, read)
    elif kind == "UnresolvedRelation":
        name = table_name([str(p) for p in _items(plan.multipartIdentifier())], allowed, ctes)
        if not plan.options().isEmpty():  # `t WITH ('path' = ...)`: a table is read as it is
            raise RefusedQuery(f"{name}: options on a table (WITH (...)) are not allowed here")
        if name in allowed.tables and name not in read:
            read.append(name)
    elif kind == "UnresolvedTableValuedFunction":
        parts = [str(p) for p in _items(plan.name())]
        _check_function(parts, allowed)
        if ".".join(parts).lower() not in allowed.table_functions:
            raise RefusedQuery(f"table function {'.'.join(parts)} is not allowed here (allowed: "
                               f"{', '.join(sorted(allowed.table_functions))})")
    for expr in _items(plan.expressions()):
        _walk_parsed_expression(expr, allowed, ctes, read)
    for child in _items(plan.children()):
        _walk_parsed(child, allowed, ctes, read)
    if kind != "UnresolvedWith":  # (its inner children are the definitions, walked above)
        for inner in _items(plan.innerChildren()):
            if _is(inner, LOGICAL_PLAN):
                _walk_parsed(inner, allowed, ctes, read)


def _metadata_target(plan, allowed: Allowed) -> list[str] | None:
    """The tables of an allowed DESCRIBE / SHOW / EXPLAIN statement ([] for SHOW DATABASES),
    None when the plan is not one of them."""
    kind = _kind(plan)
    if kind in ("DescribeRelation", "DescribeColumn", "ShowColumns"):
        target = plan.child() if kind != "ShowColumns" else plan.child()
        if _kind(target) != "UnresolvedTableOrView":
            raise _refuse_not_query(kind)
        name = table_name([str(p) for p in _items(target.multipartIdentifier())], allowed)
        return [name]
    if kind == "ShowTables":
        namespace = plan.namespace()
        parts = ([str(p).lower() for p in _items(namespace.multipartIdentifier())]
                 if _kind(namespace) == "UnresolvedNamespace" else [])
        if parts[:1] == [SESSION_CATALOG]:
            parts = parts[1:]
        if len(parts) != 1 or parts[0] not in allowed.layers:
            raise RefusedQuery("SHOW TABLES IN <layer> of an analyst layer only ("
                               f"{', '.join(sorted(allowed.layers))})")
        return []
    if kind == "ShowNamespacesCommand":
        return []
    if kind == "ExplainCommand":
        return check_parsed(plan.logicalPlan(), allowed, metadata=False)
    return None


def check_parsed(jplan, allowed: Allowed, metadata: bool = True) -> list[str]:
    """Check a parsed py4j ``LogicalPlan``; returns the allowed tables it names."""
    if metadata:
        tables = _metadata_target(jplan, allowed)
        if tables is not None:
            return tables
    read: list[str] = []
    _walk_parsed(jplan, allowed, frozenset(), read)
    return read


# -- the analysed plan ----------------------------------------------------------------------------


def _relation_table(plan, allowed: Allowed) -> str:
    """The allowed table a leaf relation of an analysed plan reads, or a refusal."""
    kind = _kind(plan)
    if kind == "LogicalRelation":
        catalog_table = plan.catalogTable()
        if not catalog_table.isDefined():
            raise RefusedQuery("files are not read by path here: query the catalogued tables "
                               "by name (`healthlake tables` lists them)")
        identifier = catalog_table.get().identifier()
        parts = [str(identifier.database().get()) if identifier.database().isDefined() else "",
                 str(identifier.table())]
    elif kind == "HiveTableRelation":
        identifier = plan.tableMeta().identifier()
        parts = [str(identifier.database().get()) if identifier.database().isDefined() else "",
                 str(identifier.table())]
    else:  # DataSourceV2Relation
        if not plan.identifier().isDefined():
            raise RefusedQuery("files are not read by path here: query the catalogued tables "
                               "by name (`healthlake tables` lists them)")
        identifier = plan.identifier().get()
        parts = [*(str(p) for p in identifier.namespace()), str(identifier.name())]
    return table_name(parts, allowed)


def _resolved_table(plan, allowed: Allowed) -> str:
    kind = _kind(plan)
    if kind != "ResolvedTable":
        raise RefusedQuery(f"{kind}: DESCRIBE and SHOW COLUMNS of the analyst tables only")
    identifier = plan.identifier()
    return table_name([*(str(p) for p in identifier.namespace()), str(identifier.name())],
                      allowed)


def _walk_analysed_expression(expr, allowed: Allowed, read: list[str]) -> None:
    kind = _kind(expr)
    if kind in DENIED_EXPRESSIONS or _is(expr, USER_DEFINED):
        raise RefusedQuery(f"{kind} is not allowed here (it reaches the engine, its files or "
                           "code outside Spark's own functions)")
    if _is(expr, PLAN_EXPRESSION):
        _walk_analysed(expr.plan(), allowed, read)
    for child in _items(expr.children()):
        _walk_analysed_expression(child, allowed, read)


def _walk_analysed(plan, allowed: Allowed, read: list[str]) -> None:
    kind = _kind(plan)
    if kind in TABLE_RELATIONS:
        name = _relation_table(plan, allowed)
        if name not in read:
            read.append(name)
    elif kind == "View":
        raise RefusedQuery("views (temporary or not) are not analyst tables: query the "
                           "catalogued tables by name (`healthlake tables` lists them)")
    elif kind not in ANALYSED_QUERY_NODES:
        raise _refuse_not_query(kind)
    for expr in _items(plan.expressions()):
        _walk_analysed_expression(expr, allowed, read)
    for child in _items(plan.children()):
        _walk_analysed(child, allowed, read)
    for inner in _items(plan.innerChildren()):
        if _is(inner, LOGICAL_PLAN):
            _walk_analysed(inner, allowed, read)


def check_analysed(jplan, allowed: Allowed) -> list[str]:
    """Check an analysed py4j ``LogicalPlan`` (a query, or an allowed DESCRIBE / SHOW /
    EXPLAIN); returns the allowed tables it reads."""
    kind = _kind(jplan)
    if kind in ("DescribeRelation", "DescribeColumn", "ShowColumns",
                "ShowDeltaTableColumnsCommand"):
        return [_resolved_table(jplan.child(), allowed)]
    if kind == "ShowTables":
        namespace = [str(p).lower() for p in _items(jplan.namespace().namespace())]
        if len(namespace) != 1 or namespace[0] not in allowed.layers:
            raise RefusedQuery("SHOW TABLES IN <layer> of an analyst layer only ("
                               f"{', '.join(sorted(allowed.layers))})")
        return []
    if kind == "ShowNamespacesCommand":
        return []
    if kind == "ExplainCommand":  # holds the statement's parsed plan
        return check_parsed(jplan.logicalPlan(), allowed, metadata=False)
    read: list[str] = []
    _walk_analysed(jplan, allowed, read)
    return read


# -- text -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checked:
    code: str               # the statement to run
    tables: list[str]       # the allowed tables it reads
    analysed: object        # the analysed py4j LogicalPlan


def parse(spark: SparkSession, text: str):
    """Spark's own parse of one statement (a py4j ``LogicalPlan``); nothing is executed."""
    code = text.strip().rstrip(";").strip()
    if not code:
        raise RefusedQuery("empty query")
    try:
        return code, spark._jsparkSession.sessionState().sqlParser().parsePlan(code)
    except Exception as exc:  # ParseException, through py4j
        message = _java_message(exc)
        if ";" in code:
            message = f"one statement at a time. {message}"
        raise RefusedQuery(f"not valid SQL: {message}") from None


def _java_message(exc: Exception) -> str:
    java = getattr(exc, "java_exception", None)
    text = str(java.getMessage()) if java is not None else str(exc)
    return (text or type(exc).__name__).strip().splitlines()[0][:500]


def check_sql(spark: SparkSession, text: str, allowed: Allowed) -> Checked:
    """Parse, check the parsed plan, analyse (nothing executed) and check the analysed plan."""
    code, parsed = parse(spark, text)
    named = check_parsed(parsed, allowed)
    jvm = spark._jvm
    skip = jvm.org.apache.spark.sql.execution.CommandExecutionMode.SKIP()
    try:
        analysed = spark._jsparkSession.sessionState().executePlan(parsed, skip).analyzed()
    except Exception as exc:  # AnalysisException: an unknown column, a type error ...
        raise RefusedQuery(f"the query does not analyse: {_java_message(exc)}") from None
    read = check_analysed(analysed, allowed)
    return Checked(code=code, tables=sorted(set(named) | set(read)), analysed=analysed)
