"""Long-running helpers started in the background: a process of its own (own process group),
its id in ``<folder>/<name>.pid``, its output in ``<folder>/<name>.log``.

Used by ``make thrift`` (Spark's Thrift JDBC server) and ``make cluster`` (a Spark standalone
master and workers): start waits until the service answers, or fails with the end of its log;
stop terminates the whole process group, then kills it if it does not go.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def listening(host: str, port: int) -> bool:
    """Whether something accepts connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Background:
    """One background service: where its pid and log files are, and how to start and stop it."""

    folder: Path
    name: str

    @property
    def pid_file(self) -> Path:
        return self.folder / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.folder / f"{self.name}.log"

    def pid(self) -> int | None:
        """The recorded process id, if that process still runs."""
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def start(self, argv: list[str], ready: Callable[[], bool], *, timeout: float,
              env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        """Launch ``argv`` and wait until ``ready()``; on failure stop it and raise with the
        end of its log. Does nothing (returns the pid) when it runs already."""
        if (pid := self.pid()) is not None:
            return pid
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            process = subprocess.Popen(
                argv, cwd=cwd, env=dict(os.environ if env is None else env), stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid_file.write_text(str(process.pid))
        deadline = time.monotonic() + timeout
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_file.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} did not start; end of {self.log_file}:\n{tail}")
            time.sleep(1)
        return process.pid

    def stop(self, grace: float = 60) -> int | None:
        """Terminate the process group; the pid that was running, or None."""
        pid = self.pid()
        if pid is not None:
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                try:
                    os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
                except ChildProcessError:
                    pass
                try:
                    os.killpg(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.5)
            else:
                os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return pid
