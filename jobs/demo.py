"""`healthlake demo` (what `make demo` runs): a small city through every pipeline step that exists.

Each step is a job that also runs on its own; the demo only chains them on the embedded default
configuration and prints what happened and where to look.
"""

from __future__ import annotations

import argparse
import time

from jobs.config import Settings


def run(settings: Settings, args: argparse.Namespace) -> dict:
    from jobs import check
    from jobs.generate import generate
    from jobs.spark import get_spark

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    generated = generate(settings, residents=args.residents, full_city=args.full_city,
                         start_date=args.start, days=args.days, seed=args.seed)
    timings["generate"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    spark = get_spark(settings)
    checked = check.run(spark, settings)
    timings["spark_delta_check"] = round(time.perf_counter() - t0, 1)

    return {
        "generated": generated,
        "spark_delta_check": checked,
        "seconds": timings,
        "where_to_look": {
            "landing zone": settings.landing_root,
            "ground truth": settings.ground_truth_root,
            "reference data": settings.reference_root,
            "late deliveries (held back)": settings.late_deliveries_root,
            "lake zones": ", ".join(str(settings.zone_root(z)) for z in settings.paths.zones),
        },
    }
