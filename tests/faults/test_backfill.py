"""Days run out of order: on an empty lake the later day runs first, then the earlier one (a
backfill after later days); the lake must hold what running the two days in order leaves.

The in-order lake is a copy of conftest's CLI run of the small city's first day with the second
day run on it; the backfilled lake runs the second day, then the first, from nothing. Every job
of the daily DAG runs (ingest, standardise, resolve, curate, gold; the quality gates change no
data table). Run columns and when files were seen differ by nature; everything else must not.

Found by this test (2026-11-27): entity resolution trained its Splink model on the first day it
resolved, so a small first day could not train it (`EMTrainingException`) and links depended on
the order days ran. The model is now pinned (``matching.model.model_file``; ``healthlake
train-model`` trains it explicitly), and a backfill resolves the later days again, after which
curate and gold bring their person ids and periods up to date.
"""

from __future__ import annotations

import shutil

from jobs.lake import fingerprint, read_table
from tests.conftest import (
    QUALITY_TABLES,
    SMALL_DAYS,
    WHEN,
    lake_like,
    make_settings,
    run_pipeline_day,
)

D1, D2 = SMALL_DAYS


def test_a_day_backfilled_after_a_later_one_leaves_what_the_days_in_order_leave(
        spark, small_city, small_city_cli_day1, tmp_path_factory, tally):
    in_order = make_settings(tmp_path_factory.mktemp("in_order"))
    shutil.copytree(small_city_cli_day1.landing_root.parent, in_order.landing_root.parent,
                    dirs_exist_ok=True)
    run_pipeline_day(spark, in_order, D2, quality=False)
    with tally("days_out_of_order"):
        backfilled = lake_like(small_city, tmp_path_factory.mktemp("backfilled"))
        run_pipeline_day(spark, backfilled, D2, quality=False)
        run_pipeline_day(spark, backfilled, D1, quality=False)
        want, got = fingerprint(spark, in_order, WHEN), fingerprint(spark, backfilled, WHEN)
        for name in QUALITY_TABLES:
            want.pop(name, None)
            got.pop(name, None)
        assert got == want, {t: (got.get(t), want.get(t)) for t in set(got) | set(want)
                             if got.get(t) != want.get(t)}
        # Both days are in every layer: the backfilled day was not dropped as already seen.
        days = {r["extract_date"] for r in read_table(spark, backfilled, "silver.person_link")
                .select("extract_date").distinct().collect()}
        assert days == {D1, D2}
