"""Pseudonymous person ids: HMAC-SHA256 under a key kept outside the lake.

``person_id = "P" + the first 24 hex digits of HMAC-SHA256(key, text)`` where ``text`` is the
normalised 18-character national ID, or ``"cluster:" + <the cluster's smallest local-patient id>``
for a person known only by probabilistic matching. Without the key nobody can recompute an id
from an identity number (a plain SHA-256 of the 18 digits could be brute-forced in minutes).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

import pandas as pd

from jobs.config import Settings

if TYPE_CHECKING:
    from pyspark.sql import Column

ID_HEX_DIGITS = 24


def hmac_key(settings: Settings) -> bytes:
    """The key, read through its secret reference; a ConfigError (the run refuses) without it."""
    return settings.secret("hmac_key").encode("utf-8")


def person_id(key: bytes, text: str | None) -> str | None:
    if text is None:
        return None
    digest = hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()
    return "P" + digest[:ID_HEX_DIGITS]


def person_id_column(key: bytes, text: Column) -> Column:
    """:func:`person_id` over a column (a vectorised UDF: Spark has no HMAC). The key travels to
    the executors inside the function's closure, never in the query plan or a table."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("string")
    def _pid(values: pd.Series) -> pd.Series:
        # Plain objects: pandas 3's Arrow-backed strings do not convert back into Spark.
        return pd.Series([person_id(key, v) if isinstance(v, str) else None for v in values],
                         dtype=object, index=values.index)

    return _pid(text)
