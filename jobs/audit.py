"""The audit log: every export and every read of the restricted zone by a command, in
``ops.audit_log``, an append-only Delta table (``delta.appendOnly``: Delta itself refuses to
update or delete its rows).

A row says who (the operating-system user, and the Airflow DAG, task and run when a task ran
the command), when, what (the command line, the action, the table or file), and how many rows
(the rows of the file written, or of the restricted table at the version read).

Events are collected while a command runs (:func:`record_export`, and :func:`record_read`,
called by :func:`jobs.lake.read_table` for every restricted table) and written in one commit
when the command ends (:func:`flush`, called by the CLI whatever the outcome), so auditing
adds one small commit to a command, not one per read.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from jobs.config import Settings

log = logging.getLogger(__name__)

AUDIT_TABLE = "ops.audit_log"
COLUMNS = ("audit_date date, at timestamp, os_user string, host string, airflow_dag string, "
           "airflow_task string, airflow_run string, command string, action string, "
           "target string, table_version long, rows long, detail string")


@dataclass
class Event:
    action: str                 # export | read_restricted | write
    target: str                 # a file written, or a restricted table read
    rows: int | None = None     # rows written; for reads, counted at flush
    table_version: int | None = None
    detail: str | None = None
    at: dt.datetime | None = None
    path: str | None = None     # the table's folder, for counting a read at its version


_pending: list[Event] = []


def pending() -> list[Event]:
    return list(_pending)


def record_export(path: Path | str, rows: int, **detail) -> None:
    """A file this command published (export, workbook, report), with its data rows."""
    _pending.append(Event("export", str(path), int(rows),
                          detail=json.dumps(detail, ensure_ascii=False, default=str) or None,
                          at=_now()))


def record_read(settings: Settings, name: str, spark=None) -> None:
    """A read of a restricted table (by :func:`jobs.lake.read_table`); once per table and
    version in a command. Nothing when ``operations.audit`` is off."""
    from jobs.operations import operations_settings

    if not operations_settings(settings).audit:
        return
    from jobs.lake import table_version

    path = settings.table_location(name)
    version = table_version(settings, name, spark)
    if any(e.action == "read_restricted" and e.target == name and e.table_version == version
           for e in _pending):
        return
    _pending.append(Event("read_restricted", name, table_version=version, at=_now(),
                          path=path))


def record_restricted_read(settings: Settings, target: str, path: Path | str, rows: int,
                           table_version: int | None) -> None:
    """A read of the restricted zone outside :func:`jobs.lake.read_table` (``healthlake match``
    on a restricted table or any path under the zone's root): the table's name or the path,
    its Delta version when it is a Delta table, the rows read. Once per target and version."""
    from jobs.operations import operations_settings

    if not operations_settings(settings).audit:
        return
    if any(e.action == "read_restricted" and e.target == target
           and e.table_version == table_version for e in _pending):
        return
    _pending.append(Event("read_restricted", target, int(rows), table_version=table_version,
                          detail=json.dumps({"path": str(path)}), at=_now()))


def record_write(path: Path | str, rows: int, **detail) -> None:
    """A file or folder a command wrote outside the catalogue (``healthlake match``'s
    output), with its rows."""
    _pending.append(Event("write", str(path), int(rows),
                          detail=json.dumps(detail, ensure_ascii=False, default=str) or None,
                          at=_now()))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def flush(spark, settings: Settings, command: str | None = None) -> int:
    """Write the events collected so far, and the rows analysts' accounts left in the inbox,
    to ops.audit_log in one append; returns how many."""
    inbox = inbox_files(settings)
    if not _pending and not inbox:
        return 0
    events = list(_pending)
    for e in events:
        if e.action == "read_restricted" and e.rows is None and e.path:
            e.rows = (spark.read.format("delta").option("versionAsOf", e.table_version)
                      .load(e.path).count() if e.table_version is not None else 0)
    who = _who(command)
    rows = [(e.at.date(), e.at, *who, e.action, e.target, e.table_version, e.rows, e.detail)
            for e in events]
    rows += [inbox_row(path) for path in inbox]
    write(spark, settings, spark.createDataFrame(rows, COLUMNS))
    del _pending[:len(events)]
    for path in inbox:  # in the table now; a crash before this line only repeats a row
        path.unlink(missing_ok=True)
    return len(rows)


def _who(command: str | None) -> tuple:
    env = os.environ
    return (getpass.getuser(), socket.gethostname(), env.get("AIRFLOW_CTX_DAG_ID"),
            env.get("AIRFLOW_CTX_TASK_ID"), env.get("AIRFLOW_CTX_DAG_RUN_ID"),
            command or " ".join(["healthlake", *sys.argv[1:]]))


def write(spark, settings: Settings, rows) -> None:
    """Append to the audit table, created append-only on first use, always inside the lake's
    writer lock: a writing command's rows go in before it releases the lock it holds, any
    other command takes the lock for this append (waiting as a writer does,
    ``operations.lock_wait_seconds``)."""
    from delta.tables import DeltaTable

    from jobs.operations import holding_writer_lock

    path = settings.table_location(AUDIT_TABLE)
    if "://" in path:  # as Delta spells a location (file:///x is file:/x), or it sees two
        path = spark._jvm.org.apache.hadoop.fs.Path(path).toString()
    with holding_writer_lock(settings, f"audit of {_who(None)[-1]}"):
        (DeltaTable.createIfNotExists(spark).location(path).addColumns(rows.schema)
         .partitionedBy(*settings.table(AUDIT_TABLE).partition_by)
         .property("delta.appendOnly", "true").execute())
        rows.write.format("delta").mode("append").save(path)


SQL_INBOX = "_audit_inbox"  # under the ops zone's root: mode 1733, created by the pipeline
INBOX_MODE = 0o1733         # anyone may add a file, nobody but the pipeline may list or remove


def inbox_dir(settings: Settings) -> Path | None:
    """The folder where accounts that may not write ops.audit_log leave their rows (local ops
    zones only; on an object store analysts' commands need write access to the table)."""
    if "ops" not in settings.paths.zones:
        return None
    return settings.local_dir("ops") / SQL_INBOX


def secure_inbox(settings: Settings) -> Path | None:
    """Create the inbox with mode 1733 (sticky, writable and not listable by others)."""
    inbox = inbox_dir(settings)
    if inbox is not None:
        inbox.mkdir(parents=True, exist_ok=True)
        os.chmod(inbox, INBOX_MODE)
    return inbox


def inbox_files(settings: Settings) -> list[Path]:
    """The rows left in the inbox, oldest first (none when it cannot be listed)."""
    inbox = inbox_dir(settings)
    try:
        return sorted(inbox.glob("*.json")) if inbox is not None and inbox.is_dir() else []
    except PermissionError:
        return []


def inbox_row(path: Path) -> tuple:
    """An inbox file as an audit row. Who wrote it is the file's owner as the file system says,
    whatever the row claims: an account cannot leave a row in another's name."""
    import pwd

    row = json.loads(path.read_text(encoding="utf-8"))
    owner = path.stat().st_uid
    try:
        user = pwd.getpwuid(owner).pw_name
    except KeyError:
        user = f"uid {owner}"
    detail = json.loads(row.get("detail") or "{}")
    if row.get("os_user") != user:
        detail["claimed_os_user"] = row.get("os_user")
    detail["inbox_file"] = path.name
    at = dt.datetime.fromisoformat(str(row["at"]))
    return (at.date(), at, user, row.get("host"), row.get("airflow_dag"),
            row.get("airflow_task"), row.get("airflow_run"), row.get("command"),
            row.get("action"), row.get("target"), row.get("table_version"), row.get("rows"),
            json.dumps(detail, ensure_ascii=False))


def sql_row(settings: Settings, text: str, tables: list[str] = (), rows: int | None = None,
            refused: str | None = None, spark=None, command: str | None = None) -> tuple:
    """The audit row of one analyst query: run (``sql_query``: the tables read with their Delta
    versions, the rows returned) or refused (``sql_refused``: the reason)."""
    from jobs.lake import table_version

    versions = {name: table_version(settings, name, spark) for name in tables}
    at = _now()
    return (at.date(), at, *_who(command), "sql_refused" if refused else "sql_query",
            ", ".join(tables) or "-",
            next(iter(versions.values())) if len(versions) == 1 else None, rows,
            json.dumps({"query": text, "refused": refused, "tables": versions},
                       ensure_ascii=False))


def record_sql(spark, settings: Settings, text: str, tables: list[str] = (),
               rows: int | None = None, refused: str | None = None) -> None:
    """One row for an analyst's SQL query (:func:`sql_row`), written at once. An account that
    may not write the ops zone leaves the row as one JSON line in ``<ops zone>/_audit_inbox/``
    instead; when neither can be written the query fails."""
    row = sql_row(settings, text, tables, rows, refused, spark)
    # A session of its own: the analyst's has reading by path switched off, which Delta's
    # table builder needs for the audit table's own folder.
    own = spark.newSession()
    own.conf.set("spark.sql.runSQLOnFiles", "true")
    try:
        write(own, settings, own.createDataFrame([row], COLUMNS))
    except Exception as exc:
        if not _permission_denied(exc):
            raise
        leave_in_inbox(settings, row)


def leave_in_inbox(settings: Settings, row: tuple) -> Path:
    """An audit row left in the ops zone's inbox, for the next pipeline command to write (no
    Spark: what a process that may not or cannot append to ops.audit_log does)."""
    names = [c.split()[0] for c in COLUMNS.split(", ")]
    return _write_inbox(settings, dict(zip(names, row, strict=True)))


def _permission_denied(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return isinstance(exc, PermissionError) or any(
        s in text for s in ("Permission denied", "AccessDeniedException", "EACCES"))


def _write_inbox(settings: Settings, row: dict) -> Path:
    import uuid

    inbox = inbox_dir(settings)
    if inbox is None:
        raise PermissionError("ops.audit_log cannot be written by this account and the ops zone "
                              "has no local inbox: the query is not run unaudited")
    where = inbox / f"{row['at']:%Y%m%dT%H%M%S%f}-{os.getpid()}-{uuid.uuid4().hex}.json"
    fd = os.open(where, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.fchmod(fd, 0o644)  # the pipeline's account reads it; others cannot list the folder
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    log.warning("audit: ops.audit_log not writable by this account; row left in %s", where)
    return where
