"""Seconds per step of a job, for its summary (what a data engineer reads in the task log)."""

from __future__ import annotations

import time


class Stopwatch:
    """``lap("step")`` records the seconds since the previous lap under that step's name."""

    def __init__(self) -> None:
        self.started = self._last = time.perf_counter()
        self.steps: dict[str, float] = {}

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.steps[step] = round(self.steps.get(step, 0.0) + now - self._last, 1)
        self._last = now

    @property
    def total(self) -> float:
        return round(time.perf_counter() - self.started, 1)
