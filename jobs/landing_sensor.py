"""The daily DAG's wait for institutions' manifests: a deferrable sensor and its trigger.

The run for extract date D waits until every institution of the bureau's register
(``reference/institutions.csv``) has delivered ``landing/D/<institution>/_manifest.json``, or
until the configured cut-off (``orchestration.manifests_cutoff_local_time`` on D+1), whichever
comes first, and then **succeeds either way**: the pipeline goes on with what arrived, ingest
records listed-but-absent files as missing and the scorecard counts late and missing deliveries;
a late file loads in a later run. While waiting, the task is deferred: the triggerer polls the
landing folder and no worker slot (nor pool slot) is held. Past the cut-off (backfills,
re-runs) it does not wait at all.

The trigger lives in the installed package so that Airflow's triggerer can import it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

from jobs.orchestration import missing_manifests


class ManifestsTrigger(BaseTrigger):
    """Fires once: when no expected manifest is missing any more, or at the cut-off."""

    def __init__(self, landing_root: str, extract_date: str, expected: list[str],
                 cutoff: str, poll_seconds: float):
        super().__init__()
        self.landing_root = landing_root
        self.extract_date = extract_date
        self.expected = expected
        self.cutoff = cutoff  # ISO datetime with offset
        self.poll_seconds = poll_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", {
            "landing_root": self.landing_root, "extract_date": self.extract_date,
            "expected": self.expected, "cutoff": self.cutoff, "poll_seconds": self.poll_seconds,
        })

    async def run(self) -> AsyncIterator[TriggerEvent]:
        day = dt.date.fromisoformat(self.extract_date)
        cutoff = dt.datetime.fromisoformat(self.cutoff)
        while True:
            missing = await asyncio.to_thread(
                missing_manifests, Path(self.landing_root), day, self.expected)
            now = dt.datetime.now(dt.UTC)
            if not missing or now >= cutoff:
                yield TriggerEvent({"reason": "cut-off" if missing else "all arrived",
                                    "missing": missing})
                return
            await asyncio.sleep(min(self.poll_seconds, (cutoff - now).total_seconds()))


class ManifestsSensor(BaseSensorOperator):
    """Wait (deferred) for the day's manifests up to the cut-off; never fails for lateness.

    Returns (XCom) the extract date, the number of expected institutions and those still
    missing at the end of the wait.
    """

    def __init__(self, **kwargs):
        # The wait ends at the cut-off by itself; the sensor timeout is only a backstop.
        kwargs.setdefault("timeout", dt.timedelta(days=2))
        super().__init__(**kwargs)

    def _plan(self, context) -> tuple[Any, dt.date, list[str], dt.datetime, int]:
        from jobs.config import load
        from jobs.ingest.plan import load_institutions
        from jobs.orchestration import extract_date_of, manifests_cutoff, orchestration_settings

        settings = load()
        orch = orchestration_settings(settings)
        day = extract_date_of(context["logical_date"], settings.timezone)
        expected = sorted(load_institutions(settings.reference_root))
        cutoff = manifests_cutoff(day, orch.cutoff_time, settings.timezone)
        return settings, day, expected, cutoff, orch.manifests_poll_seconds

    def poke(self, context) -> bool:
        settings, day, expected, cutoff, _ = self._plan(context)
        missing = missing_manifests(settings.landing_root, day, expected)
        return not missing or dt.datetime.now(dt.UTC) >= cutoff

    def execute(self, context) -> dict:
        settings, day, expected, cutoff, poll_seconds = self._plan(context)
        if not expected:
            self.log.warning("the institution register (%s/institutions.csv) is empty or "
                             "absent: nothing to wait for", settings.reference_root)
        missing = missing_manifests(settings.landing_root, day, expected)
        if missing and dt.datetime.now(dt.UTC) < cutoff:
            self.log.info("%s: %d of %d institutions' manifests missing; waiting (deferred) "
                          "until %s at most", day, len(missing), len(expected), cutoff)
            self.defer(
                trigger=ManifestsTrigger(str(settings.landing_root), day.isoformat(), expected,
                                         cutoff.isoformat(), poll_seconds),
                method_name="execute_complete",
                kwargs={"extract_date": day.isoformat(), "n_expected": len(expected)},
                timeout=dt.timedelta(seconds=self.timeout),
            )
        reason = "cut-off passed" if missing else "all arrived"
        return self._report(day.isoformat(), len(expected), missing, reason)

    def execute_complete(self, context, event: dict, extract_date: str, n_expected: int) -> dict:
        return self._report(extract_date, n_expected, event["missing"], event["reason"])

    def _report(self, day: str, n_expected: int, missing: list[str], reason: str) -> dict:
        self.log.info("%s: %d of %d institutions delivered their manifest (%s)",
                      day, n_expected - len(missing), n_expected, reason)
        if missing:
            self.log.warning("%s: no manifest yet from %s; going on without them (ingest "
                             "records them, a later run loads late files)", day,
                             ", ".join(missing))
        return {"extract_date": day, "n_expected": n_expected, "missing": missing,
                "reason": reason}

