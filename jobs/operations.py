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
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

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


# Lock files this process holds -> the holder record (see :func:`holding_writer_lock`).
_held: dict[str, dict] = {}


def holds_writer_lock(settings: Settings) -> bool:
    """Whether this process holds the lake's writer lock now."""
    return str(lock_path(settings).resolve()) in _held


@contextmanager
def holding_writer_lock(settings: Settings, command: str) -> Iterator[dict]:
    """The body inside the writer lock: the lock this process holds already (an audit write
    at the end of a writer's run), else the lock taken for the body."""
    held = _held.get(str(lock_path(settings).resolve()))
    if held is not None:
        yield held
        return
    with writer_lock(settings, command) as holder:
        yield holder


@contextmanager
def writer_lock(settings: Settings, command: str, wait_seconds: float | None = None
                ) -> Iterator[dict]:
    """Hold the lake's writer lock for the body; wait up to ``wait_seconds`` (default: conf)
    for another holder, then raise :class:`LakeBusy` naming it."""
    if wait_seconds is None:
        wait_seconds = operations_settings(settings).lock_wait_seconds
    path = lock_path(settings)
    held_key = str(path.resolve())
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
        _held.setdefault(held_key, holder)
        try:
            yield holder
        finally:
            if _held.get(held_key) is holder:
                del _held[held_key]
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
    secure_private_roots(settings)
    from jobs.audit import secure_inbox

    secure_inbox(settings)
    return done


# Folders that hold identifiers by design, outside or beside the restricted zone's tables:
# secured like the restricted zone (only the pipeline's user opens them).
PRIVATE_MODE = 0o700


def private_roots(settings: Settings) -> dict[str, Path]:
    """Every local folder that holds identifiers in clear by design, by what it is: the
    restricted zone, landing, late deliveries, ground truth, the restricted zone's staged reads
    and scratch (checkpoints, spill, match working files), a configured checkpoint folder."""
    roots = {"landing": settings.landing_root,
             "late_deliveries": settings.late_deliveries_root,
             "ground_truth": settings.ground_truth_root}
    if "restricted" in settings.paths.zones:
        restricted = settings.local_dir("restricted")
        roots |= {"zone restricted": restricted, "staging": restricted / "_staging",
                  "scratch": scratch_root(settings)}
    checkpoints = settings.spark.checkpoint_dir
    if checkpoints and "://" not in checkpoints:
        roots["checkpoints"] = settings.path(checkpoints)
    return roots


def secure_private_roots(settings: Settings) -> dict[str, Path]:
    """Create each folder of :func:`private_roots` that is missing with mode 0700, and give an
    existing one that mode: before anything is written into them."""
    roots = private_roots(settings)
    restricted = operations_settings(settings).zone_modes.get("restricted")
    for what, root in roots.items():
        private_dir(root, int(str(restricted), 8) if what == "zone restricted" and restricted
                    else PRIVATE_MODE)
    return roots


def private_dir(path: Path, mode: int = PRIVATE_MODE) -> Path:
    """``path`` created (with missing parents) and given ``mode`` (0700)."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path


@contextmanager
def private_files(settings: Settings) -> Iterator[dict[str, Path]]:
    """For a body that writes identifiers from Python (the generator's landing files, late
    deliveries and ground truth): the private roots secured first, and files and folders
    created meanwhile readable by their owner only (umask 077; the process-wide umask is put
    back after)."""
    roots = secure_private_roots(settings)
    previous = os.umask(0o077)
    try:
        yield roots
    finally:
        os.umask(previous)


# -- scratch: checkpoints, spill and working files of a run, under the restricted zone --------


SCRATCH = "_scratch"


def scratch_root(settings: Settings) -> Path:
    return settings.local_dir("restricted") / SCRATCH


def _start_ticks(pid: int) -> str | None:
    """A process's start time (clock ticks since boot, /proc/<pid>/stat field 22): a pid with
    another start time is another process that reuses the number."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _owner_alive(folder_name: str) -> bool:
    pid_text, _, ticks = folder_name.partition("-")
    if not pid_text.isdigit():
        return True  # not a run folder of ours: leave it
    pid = int(pid_text)
    if Path("/proc").is_dir():
        return _start_ticks(pid) == ticks
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale_scratch(settings: Settings) -> list[Path]:
    """Remove the run folders under the scratch root whose owner process is gone (a run killed
    with SIGKILL leaves its folder); returns them."""
    root = scratch_root(settings)
    stale = [p for p in root.iterdir() if p.is_dir() and not _owner_alive(p.name)] \
        if root.is_dir() else []
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale


def run_scratch(settings: Settings, name: str | None = None) -> Path:
    """A new private folder for this process under ``<restricted>/_scratch`` (0700), named
    after the process (pid and start time) so that a later run can tell it is stale, and
    ``name`` when given; stale folders of dead runs are removed first."""
    if not settings.local_dir("restricted").exists():
        private_dir(settings.local_dir("restricted"))
    private_dir(scratch_root(settings))
    remove_stale_scratch(settings)
    pid = os.getpid()
    owner = f"{pid}-{_start_ticks(pid) or 0}"
    return private_dir(scratch_root(settings) / owner / (name or "run"))


def remove_scratch(folder: Path) -> None:
    """Remove a run's scratch folder (and its owner's folder once empty)."""
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()
    except OSError:
        pass
