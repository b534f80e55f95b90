"""Standardising values as institutions send them: pure Spark Column expressions, one per concern.

Every function takes Columns (and configuration) and returns a Column, so each can be tested on
a tiny inline DataFrame and the feed transforms in :mod:`jobs.silver.job` compose them in one
projection. Everything is a Spark SQL expression (the JVM does the work, no Python round trip)
except :func:`name_pinyin_key`, a vectorised pandas UDF because no expression turns Chinese
characters into pinyin.

A function that can fail returns null (or a struct whose value is null) and never raises: the
caller decides whether the failure rejects the row or is reported and kept, under a rule id of
:data:`RULES`. National identity numbers are never rejected: an invalid one is flagged and its
cleaned form kept, because entity resolution still needs it to link records.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd
from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.types import StringType

from jobs.contracts import SourceProfile
from jobs.identity import CHECK_CHARS, WEIGHTS

# -- rule ids of silver ------------------------------------------------------------------------

RULES: dict[str, str] = {
    "S_REQUIRED": "A required value is empty once cleaned.",
    "S_ENUM": "The value is not one of the contract's values.",
    "S_SEX": "The value is not a sex code of the source's profile.",
    "S_DATE": "The value is not a real calendar date in the profile's format, or implausible.",
    "S_TIMESTAMP": "The value is not a real date and time in the profile's format.",
    "S_ICD10": "The value is not an ICD-10 code.",
    "S_AREA": "The value is not an area code of 6, 9 or 12 digits.",
    "S_AREA_UNKNOWN": "A well-formed area code that the bureau's area register does not hold.",
    "S_PHONE": "The value is not a mobile (11 digits) or landline number.",
    "S_BOOL": "The value is not a yes/no value.",
    "S_NUMBER": "The value is not a number of the expected kind.",
    "S_RANGE": "The number is outside its plausible range (conf: silver.ranges).",
}
# What happened to a row with an issue: the row was not typed (rejected), the value was set to
# null and the row kept (nulled: optional values), or the row was kept as is (flagged).
ACTIONS = ("rejected", "nulled", "flagged")

# Full-width ASCII (U+FF01..U+FF5E) and the ideographic space map to their ASCII forms.
_FULL = "".join(chr(c) for c in range(0xFF01, 0xFF5F)) + "\u3000"
_HALF = "".join(chr(c - 0xFEE0) for c in range(0xFF01, 0xFF5F)) + " "
_SPACES = r"[\s\u3000\u00a0\u2002\u2003\u2009\u200b\ufeff]"


def full_to_half_width(col: Column) -> Column:
    """Full-width letters, digits and punctuation (Ａ１，) and the ideographic space as ASCII."""
    return F.translate(col, _FULL, _HALF)


def blank_to_null(col: Column) -> Column:
    """Trimmed text, or null when nothing is left (bronze holds '' for a value not sent)."""
    trimmed = F.trim(F.regexp_replace(col, f"^{_SPACES}+|{_SPACES}+$", ""))
    return F.when(trimmed != "", trimmed)


# -- identity numbers (GB 11643) -------------------------------------------------------------


def check_char(first17: Column) -> Column:
    """GB 11643 check character of 17 ASCII digits (null in, null out); no casts, so no ANSI
    error can be raised by a bad digit: callers pass only strings matching ``^\\d{17}``."""
    total = None
    for i, w in enumerate(WEIGHTS):
        term = (F.ascii(F.substring(first17, i + 1, 1)) - 48) * w
        total = term if total is None else total + term
    return F.element_at(F.array(*[F.lit(c) for c in CHECK_CHARS]), (total % 11 + 1).cast("int"))


def normalise_national_id(col: Column) -> Column:
    """Clean, upgrade and validate a resident identity number.

    Removes every kind of space, turns full-width digits into ASCII and ``x`` into ``X``, upgrades
    a legacy 15-digit number (``19`` inserted before the year, check character appended) and
    verifies the check character, as :func:`jobs.identity.canonical_id` does in Python.

    Returns a struct: ``national_id`` (the valid 18-character number, else null),
    ``national_id_clean`` (the cleaned, upgraded form even when invalid: entity resolution can
    still compare it), ``is_national_id_valid``, ``national_id_status`` (valid,
    upgraded_from_15, missing, bad_form, bad_check_char), and the birth date and sex the number
    encodes when valid (``id_birth_date``, ``id_sex``).
    """
    clean = F.upper(full_to_half_width(F.regexp_replace(col, _SPACES, "")))
    return _let(F.when(clean != "", clean), _national_id_parts)


def _let(value: Column, body) -> Column:
    """``body(v)`` with ``v`` bound to ``value``, evaluated once. Spark SQL has no let; a
    one-element array's ``transform`` is one. Without it, every reuse of a sub-expression copies
    its tree: the check-character sum would appear a dozen times in the plan."""
    return F.element_at(F.transform(F.array(value), body), 1)


def _national_id_parts(clean: Column) -> Column:
    is15 = clean.rlike(r"^\d{15}$")
    body = (F.when(is15, F.concat(F.substring(clean, 1, 6), F.lit("19"), F.substring(clean, 7, 9)))
            .when(clean.rlike(r"^\d{17}[0-9X]$"), F.substring(clean, 1, 17)))

    def with_check(b: Column) -> Column:
        def result(check: Column) -> Column:
            candidate = F.when(is15, F.concat(b, check)).otherwise(clean)
            is_valid = F.coalesce(b.isNotNull() & (F.substring(candidate, 18, 1) == check),
                                  F.lit(False))
            status = (F.when(clean.isNull(), "missing").when(b.isNull(), "bad_form")
                      .when(~is_valid, "bad_check_char").when(is15, "upgraded_from_15")
                      .otherwise("valid"))
            valid_id = F.when(is_valid, candidate)
            return F.struct(
                valid_id.alias("national_id"),
                candidate.alias("national_id_clean"),
                is_valid.alias("is_national_id_valid"),
                status.alias("national_id_status"),
                F.try_to_date(F.substring(valid_id, 7, 8), "yyyyMMdd").alias("id_birth_date"),
                F.when(is_valid, F.when((F.ascii(F.substring(candidate, 17, 1)) - 48) % 2 == 1,
                                        "male").otherwise("female")).alias("id_sex"),
            )
        return _let(check_char(b), result)

    return _let(body, with_check)


# -- names ------------------------------------------------------------------------------------


def normalise_name(col: Column) -> Column:
    """A person's name for display and comparison: full-width -> half-width, spaces trimmed and
    collapsed, spaces between Chinese characters removed (张 三 -> 张三), the middle dot of
    transliterated names unified (·). Null when empty."""
    name = full_to_half_width(col)
    name = F.regexp_replace(name, f"{_SPACES}+", " ")
    name = F.regexp_replace(name, r"(?<=\p{IsHan}) (?=\p{IsHan})", "")
    name = F.regexp_replace(name, "[•・‧∙･]|(?<=\\p{IsHan})\\.(?=\\p{IsHan})", "·")
    name = F.regexp_replace(name, r" ?· ?", "·")
    return blank_to_null(name)


@lru_cache(maxsize=200_000)
def pinyin_key(name: str | None) -> str | None:
    """Tone-less pinyin of a name in lower case, letters only (张三 -> zhangsan, 章三 too):
    homophones that data entry confuses get the same key. Latin names keep their letters."""
    if name is None:
        return None
    from pypinyin import lazy_pinyin

    key = re.sub(r"[^a-z]", "", "".join(lazy_pinyin(name)).lower())
    return key or None


@pandas_udf(StringType())  # a type object: a DDL string would need a live session at import
def name_pinyin_key(names: pd.Series) -> pd.Series:
    """:func:`pinyin_key` over a column, vectorised: each distinct name of a batch once."""
    keys = {n: pinyin_key(n) for n in names.dropna().unique()}
    return names.map(keys).astype(object).where(names.notna(), None)


# -- phones -----------------------------------------------------------------------------------


def normalise_phone(col: Column, default_area_code: str = "0756") -> Column:
    """Digits of a phone number: struct(``phone``, ``phone_type``).

    Separators and full-width digits go, a +86 / 0086 / 86 country code goes; an 11-digit
    number starting 13-19 is a mobile; 0 + area code + 7-8 digits a landline; a bare 7-8 digit
    local number gets ``default_area_code``. Anything else gives nulls.
    """
    d = F.regexp_replace(full_to_half_width(col), r"[\s\u3000\-()（）.]", "")
    d = F.regexp_replace(d, r"^(\+|00)?86(?=1[3-9]\d{9}$)", "")
    d = F.regexp_replace(d, r"^(\+|00)86(?=[1-9]\d{8,10}$)", "0")
    d = F.when(d.rlike(r"^[2-9]\d{6,7}$"), F.concat(F.lit(default_area_code), d)).otherwise(d)
    kind = F.when(d.rlike(r"^1[3-9]\d{9}$"), "mobile").when(d.rlike(r"^0[1-9]\d{8,10}$"),
                                                           "landline")
    return F.struct(F.when(kind.isNotNull(), d).alias("phone"), kind.alias("phone_type"))


# -- codes per source profile: sex, dates, timestamps --------------------------------------------


def parse_sex(col: Column, profile: Column, profiles: dict[str, SourceProfile]) -> Column:
    """'male' / 'female' / 'unknown' from the source profile's own codes (township 男, district
    1, municipal M), null for a code the row's profile does not define."""
    pairs = []
    for name, p in profiles.items():
        for code, meaning in p.sex_codes.items():
            pairs += [F.lit(f"{name}\u0001{code.upper()}"), F.lit(meaning)]
    codes = F.create_map(*pairs)
    value = F.upper(blank_to_null(full_to_half_width(col)))
    return F.try_element_at(codes, F.concat(profile, F.lit("\u0001"), value))


_STRFTIME = {"Y": "yyyy", "y": "yy", "m": "M", "d": "d", "H": "H", "M": "m", "S": "s",
             "f": "SSSSSS", "z": "xx", ":z": "XXX", "%": "%"}


def strftime_to_spark(fmt: str) -> str:
    """A source profile's strftime format as a Spark datetime pattern.

    Months, days, hours, minutes and seconds accept one or two digits (2024/4/5 as well as
    2024/04/05); Spark still parses strictly, so 2024-02-30 fails. Letters are quoted; a fixed
    UTC offset written in the format (``+08:00``) becomes an offset to parse (``XXX``), so a
    value sent with another offset is still read right.
    """
    fmt = re.sub(r"[+-]\d{2}:\d{2}$", "%:z", fmt)
    out, i = [], 0
    while i < len(fmt):
        if fmt[i] == "%":
            key = fmt[i + 1:i + 3] if fmt[i + 1:i + 3] == ":z" else fmt[i + 1:i + 2]
            if key not in _STRFTIME:
                raise ValueError(f"strftime directive %{key} has no Spark equivalent in {fmt!r}")
            out.append(_STRFTIME[key])
            i += 1 + len(key)
        else:
            ch = fmt[i]
            out.append(f"'{ch}'" if ch.isalpha() else ("''" if ch == "'" else ch))
            i += 1
    return "".join(out)


def _by_pattern(profiles: dict[str, SourceProfile], attr: str) -> dict[str, list[str]]:
    """Spark pattern -> the profiles using it, so each distinct format is parsed once."""
    out: dict[str, list[str]] = {}
    for name, p in profiles.items():
        out.setdefault(strftime_to_spark(getattr(p, attr)), []).append(name)
    return out


def parse_date(col: Column, profile: Column, profiles: dict[str, SourceProfile],
               fallback_formats: list[str] | tuple[str, ...] = ()) -> Column:
    """A date in the row's profile format (``date_format``), else in one of the year-first
    ``fallback_formats`` (Spark patterns); null when none gives a real calendar date."""
    value = blank_to_null(full_to_half_width(col))
    by_profile = None
    for pattern, names in _by_pattern(profiles, "date_format").items():
        parsed = F.try_to_date(value, pattern)
        by_profile = (F.when(profile.isin(names), parsed) if by_profile is None
                      else by_profile.when(profile.isin(names), parsed))
    return F.coalesce(by_profile, *[F.try_to_date(value, p) for p in fallback_formats])


def parse_timestamp(col: Column, profile: Column, profiles: dict[str, SourceProfile],
                    timezone: str = "Asia/Shanghai") -> Column:
    """An instant from the row's profile format (``timestamp_format``). Values without an
    offset are local time in ``timezone`` (whatever the Spark session's zone is); values with
    one (municipal ``+08:00``) are read with it."""
    value = blank_to_null(full_to_half_width(col))
    zoned = F.concat(value, F.lit(" " + timezone))
    out = None
    for pattern, names in _by_pattern(profiles, "timestamp_format").items():
        has_offset = pattern.endswith(("XXX", "xx"))
        parsed = (F.try_to_timestamp(value, F.lit(pattern)) if has_offset
                  else F.try_to_timestamp(zoned, F.lit(pattern + " VV")))
        out = (F.when(profile.isin(names), parsed) if out is None
               else out.when(profile.isin(names), parsed))
    return out


# -- ICD-10 ----------------------------------------------------------------------------------


def normalise_icd10(col: Column) -> Column:
    """struct(``code``, ``icd10_3char``) of an ICD-10 code, nulls when it is not one.

    Upper-case, spaces removed, a missing dot restored (E119 -> E11.9); the Chinese clinical
    edition's extension marker stays lower-case as that edition writes it (I10.X01 -> I10.x01).
    The three-character category (I10) is what condition families match on.
    """
    c = F.upper(F.regexp_replace(full_to_half_width(col), _SPACES, ""))
    c = F.regexp_replace(c, r"\.$", "")
    c = F.regexp_replace(c, r"^([A-Z]\d{2})([0-9X])", "$1.$2")
    code = F.when(c.rlike(r"^[A-Z]\d{2}(\.[0-9A-Z]{1,4})?$"), F.regexp_replace(c, r"\.X", ".x"))
    return F.struct(code.alias("code"), F.substring(code, 1, 3).alias("icd10_3char"))


def condition_family(icd10_3char: Column, families: list[tuple[str, str, str]]) -> Column:
    """The condition family (hypertension, diabetes ...) of a three-character category, from
    ``(family, first, last)`` ranges (:meth:`SilverParams.family_ranges`); null for none."""
    out = None
    for family, lo, hi in families:
        hit = icd10_3char.between(lo, hi)
        out = F.when(hit, family) if out is None else out.when(hit, family)
    return out if out is not None else F.lit(None).cast("string")


# -- area codes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AreaReference:
    """The bureau's area register (reference/areas.csv): codes at every level, district codes,
    functional zones (Hengqin ...) of the codes that lie in one."""

    codes: frozenset[str]
    district_codes: frozenset[str]
    zones: dict[str, str]


def load_areas(reference_root: Path) -> AreaReference:
    """Read ``areas.csv`` (level, code, name, parent_code, district_code, zone)."""
    path = Path(reference_root) / "areas.csv"
    if not path.is_file():
        raise FileNotFoundError(f"area register {path} is missing: silver validates area codes "
                                "against it (the generator writes one; the bureau provides it)")
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return AreaReference(
        codes=frozenset(r["code"] for r in rows),
        district_codes=frozenset(r["code"] for r in rows if r["level"] == "district"),
        zones={r["code"]: r["zone"] for r in rows if r.get("zone")},
    )


def parse_area_code(col: Column, areas: AreaReference) -> Column:
    """struct(``area_code``, ``district_code``, ``town_code``, ``functional_zone``,
    ``is_area_code_known``) of a 6-, 9- or 12-digit GB/T 2260 based code.

    ``area_code`` is null when malformed. The district is the first 6 digits when the register
    knows that district, the town the first 9; ``is_area_code_known`` says whether the register
    holds the full code.
    """
    a = full_to_half_width(F.regexp_replace(col, _SPACES, ""))
    code = F.when(a.rlike(r"^\d{6}(\d{3}(\d{3})?)?$"), a)
    district = F.substring(code, 1, 6)
    zone_map = (F.create_map(*[F.lit(x) for kv in sorted(areas.zones.items()) for x in kv])
                if areas.zones else None)
    return F.struct(
        code.alias("area_code"),
        F.when(district.isin(sorted(areas.district_codes)), district).alias("district_code"),
        F.when(F.length(code) >= 9, F.substring(code, 1, 9)).alias("town_code"),
        (F.try_element_at(zone_map, code) if zone_map is not None
         else F.lit(None).cast("string")).alias("functional_zone"),
        F.coalesce(code.isin(sorted(areas.codes)), F.lit(False)).alias("is_area_code_known"),
    )


# -- booleans, enums, numbers, units ---------------------------------------------------------


def parse_boolean(col: Column, true_values: list[str], false_values: list[str]) -> Column:
    """true / false from the configured spellings (是/否, 1/0, true/false ...), else null."""
    v = F.lower(blank_to_null(full_to_half_width(col)))
    return (F.when(v.isin([t.lower() for t in true_values]), True)
            .when(v.isin([f.lower() for f in false_values]), False))


def parse_enum(col: Column, values: list[str]) -> Column:
    """The contract's spelling of an enum value, matched ignoring case and spaces; else null."""
    canonical = F.create_map(*[F.lit(x) for v in values for x in (v.lower(), v)])
    return F.try_element_at(canonical, F.lower(blank_to_null(full_to_half_width(col))))


def _number_text(col: Column) -> Column:
    return F.regexp_replace(blank_to_null(full_to_half_width(col)), r"[,\s]", "")


def parse_integer(col: Column) -> Column:
    """A whole number (``+12``, ``１２``, ``1,200``) as a long; null for anything else."""
    t = _number_text(col)
    return F.when(t.rlike(r"^[+-]?\d{1,18}$"), t.try_cast("long"))


def parse_decimal(col: Column, precision: int = 14, scale: int = 2) -> Column:
    """A decimal number as decimal(precision, scale) (rounded half up); null for anything else,
    including values too large for the type."""
    t = _number_text(col)
    decimal_type = f"decimal({precision},{scale})"
    return F.when(t.rlike(r"^[+-]?(\d+(\.\d*)?|\.\d+)$"), t.try_cast(decimal_type))


def in_range(value: Column, lo: float | None, hi: float | None) -> Column:
    """Whether a number lies in [lo, hi] (open ends when None); null for a null value."""
    cond = F.lit(True)
    if lo is not None:
        cond = cond & (value >= F.lit(lo))
    if hi is not None:
        cond = cond & (value <= F.lit(hi))
    return F.when(value.isNotNull(), cond)


def normalise_unit(col: Column, aliases: dict[str, str]) -> Column:
    """A unit's canonical spelling (mmol/l -> mmol/L, μmol/L -> umol/L) from configured aliases;
    an unlisted unit is kept as sent (trimmed, half-width)."""
    u = F.regexp_replace(blank_to_null(full_to_half_width(col)), r"\s", "")
    if not aliases:
        return u
    m = F.create_map(*[F.lit(x) for k, v in aliases.items() for x in (k.lower(), v)])
    return F.coalesce(F.try_element_at(m, F.lower(u)), u)


def parse_result_number(col: Column) -> Column:
    """The numeric part of a lab result when it is a plain number (5.6, ５.６), else null
    (阴性, <0.5 and other qualitative results stay text in ``result_value``)."""
    t = _number_text(col)
    return F.when(t.rlike(r"^[+-]?(\d+(\.\d*)?|\.\d+)$"), t.try_cast("double"))
