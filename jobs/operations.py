"""Operating the lake safely: one writer at a time, and zones only their users can open.

**One writer.** Every command that writes the lake (ingest, standardise, resolve, curate, gold,
quality, maintenance, check, demo) holds an exclusive lock on ``<ops zone>/_writer.lock`` while
it runs. A second writer started meanwhile (a backfill typed by hand while the DAG runs, two
DAG runs, a retried task whose first attempt lives on) waits up to
``operations.lock_wait_seconds`` and then refuses with :class:`LakeBusy`, naming the command,
the process and the time of the run that holds the lake. The lock is ``flock(2)``: the kernel
drops it when its process dies, even by SIGKILL, so a killed run never leaves the lake locked.
(On a cluster the ops zone must be on storage with working ``flock``, or the DAG's one-slot
Delta pool is the only guard: docs/deployment.md.)

**Zones by permission.** The restricted zone (landing copies, bronze, quarantine, identity)
and the curated and ops zones are separate roots; :func:`secure_zones` gives each root the
mode in ``operations.zone_modes`` before any write. With the default ``0700`` only the pipeline's
own user opens the restricted root, so an analyst's Spark (``healthlake sql``, the Thrift
server, a notebook) run as another user cannot read it by path either, whatever SQL it sends.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from jobs.config import Settings, build_dataclass, require

LOCK_FILE = "_writer.lock"


class LakeBusy(RuntimeError):
    """Another run holds the lake's writer lock."""


@dataclass(frozen=True)
class OperationsSettings:
    """The ``operations`` section (conf/base/operations.yaml)."""

    lock_wait_seconds: int = 60
    zone_modes: dict[str, str] = field(default_factory=dict)
    audit: bool = True


def operations_settings(settings: Settings) -> OperationsSettings:
    o = settings.origins
    ops: OperationsSettings = build_dataclass(OperationsSettings, settings.operations,
                                              "operations", o)
    require(ops.lock_wait_seconds >= 0, "operations.lock_wait_seconds", o, "must not be negative")
    for zone, mode in ops.zone_modes.items():
        key = f"operations.zone_modes.{zone}"
        require(zone in settings.paths.zones, key, o, "not a zone of paths.zones")
        require(_is_mode(mode), key, o, "expected an octal file mode such as '0700'")
    return ops


def _is_mode(text: str) -> bool:
    try:
        return 0 <= int(str(text), 8) <= 0o777
    except ValueError:
        return False


# -- one writer ---------------------------------------------------------------------------------


def lock_path(settings: Settings):
    return settings.local_dir("ops") / LOCK_FILE


@contextmanager
def writer_lock(settings: Settings, command: str, wait_seconds: float | None = None
                ) -> Iterator[dict]:
    """Hold the lake's writer lock for the body; wait up to ``wait_seconds`` (default: conf)
    for another holder, then raise :class:`LakeBusy` naming it."""
    if wait_seconds is None:
        wait_seconds = operations_settings(settings).lock_wait_seconds
    path = lock_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LakeBusy(_busy_message(path, command, wait_seconds)) from None
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        holder = {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                  "since": dt.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield holder
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _busy_message(path, command: str, waited: float) -> str:
    try:
        holder = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        holder = {}
    who = (f"`{holder.get('command')}` (pid {holder.get('pid')} on {holder.get('host')}, "
           f"since {holder.get('since')})") if holder else "another process"
    return (f"the lake is being written by {who}; `{command}` waited {waited:g} s and did "
            f"nothing. Run it again when that run has finished (lock: {path})")


# -- zones by permission ------------------------------------------------------------------------


def secure_zones(settings: Settings) -> dict[str, str]:
    """Create every zone's local directory and give it its configured mode; returns zone ->
    mode set. A zone addressed by URI gets its permissions from the store (HDFS ACLs, bucket
    policies): only its local state directory is made and given the mode here."""
    modes = operations_settings(settings).zone_modes
    done = {}
    for zone in settings.paths.zones:
        root = settings.local_dir(zone)
        root.mkdir(parents=True, exist_ok=True)
        if zone in modes:
            os.chmod(root, int(str(modes[zone]), 8))
            done[zone] = str(modes[zone])
    return done
