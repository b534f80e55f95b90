"""Typed parameters of silver standardisation (``silver`` section, conf/base/silver.yaml).

Validated with :func:`jobs.config.build_dataclass` like every other section, plus the checks
types cannot express (ranges well ordered, ICD-10 category ranges well formed), so a typo in the
configuration stops the run at start with the key and the file named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from jobs.config import Settings, build_dataclass, require

_CATEGORY = re.compile(r"^[A-Z]\d{2}$")


@dataclass(frozen=True)
class NumberRange:
    min: float
    max: float


@dataclass(frozen=True)
class PhoneParams:
    default_area_code: str = "0756"


@dataclass(frozen=True)
class SilverParams:
    condition_families: dict[str, list[str]]
    fallback_date_formats: list[str] = field(default_factory=list)
    min_birth_date: str = "1900-01-01"
    boolean_true: list[str] = field(default_factory=lambda: ["true", "1", "是"])
    boolean_false: list[str] = field(default_factory=lambda: ["false", "0", "否"])
    phone: PhoneParams = field(default_factory=PhoneParams)
    ranges: dict[str, NumberRange] = field(default_factory=dict)
    decimal_precision: int = 14
    decimal_scale: int = 2
    unit_aliases: dict[str, str] = field(default_factory=dict)

    def family_ranges(self) -> list[tuple[str, str, str]]:
        """(family, first category, last category) for every configured entry, in order."""
        out = []
        for family, entries in self.condition_families.items():
            for entry in entries:
                lo, _, hi = entry.partition("-")
                out.append((family, lo, hi or lo))
        return out


def load_silver_params(settings: Settings) -> SilverParams:
    """Validate ``settings.silver`` into :class:`SilverParams`."""
    o = settings.origins
    params: SilverParams = build_dataclass(SilverParams, settings.silver, "silver", o)
    return check_params(params, o)


def check_params(params: SilverParams, origins: dict[str, str] | None = None) -> SilverParams:
    origins = origins or {}

    def fail(key: str, message: str):
        require(False, key, origins, message)

    for family, lo, hi in params.family_ranges():
        if not (_CATEGORY.match(lo) and _CATEGORY.match(hi)) or lo[0] != hi[0] or lo > hi:
            fail(f"silver.condition_families.{family}",
                 f"{lo}-{hi} is not a category (I10) or an ordered range of one chapter (E10-E14)")
    for name, r in params.ranges.items():
        if r.min > r.max:
            fail(f"silver.ranges.{name}", f"min {r.min} is above max {r.max}")
        if "." not in name:
            fail(f"silver.ranges.{name}", "names are '<feed>.<column>'")
    if not 0 <= params.decimal_scale <= params.decimal_precision <= 38:
        fail("silver.decimal_scale", "need 0 <= decimal_scale <= decimal_precision <= 38")
    overlap = {v.lower() for v in params.boolean_true} & {v.lower() for v in params.boolean_false}
    if overlap:
        fail("silver.boolean_true", f"values both true and false: {sorted(overlap)}")
    return params
