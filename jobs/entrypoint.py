"""The application file spark-submit runs: the healthlake CLI, in the Spark driver.

    spark-submit --master <spark.master> ... jobs/entrypoint.py ingest --date 2024-04-15

Python puts a script's own folder first on ``sys.path``; here that is ``jobs/``, whose module
names (``config``, ``spark``, ``timing`` ...) would shadow installed packages of the same name.
It is taken off and the project root put on, so ``jobs`` is imported as the package it is.
"""

import sys
from pathlib import Path

_JOBS_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _JOBS_DIR]
sys.path.insert(0, str(_JOBS_DIR.parent))

from jobs.cli import main  # noqa: E402  (sys.path must be fixed first)

if __name__ == "__main__":
    sys.exit(main())
