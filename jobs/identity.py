"""Resident identity numbers (GB 11643-1999): check characters, validation, normalisation.

Pure functions with no I/O, shared by the generator (which must emit valid numbers fast) and by
silver standardisation (which must repair what institutions really send: lower-case ``x``,
full-width digits, embedded spaces, legacy 15-digit numbers).

An 18-character number is 6-digit area code + birth date ``YYYYMMDD`` + 3-digit sequence (odd =
male, even = female) + one check character. The check character is ``CHECK_CHARS[S mod 11]``
where ``S`` is the weighted sum of the first 17 digits with :data:`WEIGHTS`.
"""

from __future__ import annotations

import re

import numpy as np

WEIGHTS: tuple[int, ...] = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
CHECK_CHARS = "10X98765432"

_WEIGHTS_ARRAY = np.array(WEIGHTS, dtype=np.int64)
_CHECK_ARRAY = np.array(list(CHECK_CHARS))
_ID18 = re.compile(r"^\d{17}[\dX]$")
_ID15 = re.compile(r"^\d{15}$")

# Full-width digits and letters (U+FF10..) map to ASCII; every kind of space is removed.
_FULL_WIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}
_SPACES = {ord(c): None for c in " \t\r\n\u3000\u00a0\u2002\u2003\u2009\u200b"}
_NORMALISE_TABLE = {**_FULL_WIDTH, **_SPACES}


def check_char(first17: str) -> str:
    """The GB 11643 check character for the first 17 digits of an identity number.

    >>> check_char("34052419800101001")
    'X'
    """
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError(f"need exactly 17 ASCII digits, got {first17!r}")
    total = sum(int(d) * w for d, w in zip(first17, WEIGHTS, strict=True))
    return CHECK_CHARS[total % 11]


def is_valid_id18(s: str) -> bool:
    """True when ``s`` is exactly 17 digits plus the right check character (upper-case X).

    Only the format and checksum are verified, not the area code or the birth date; callers that
    need a plausible birth date check it separately (see :func:`birth_date_of`).
    """
    if not isinstance(s, str) or not _ID18.match(s):
        return False
    return check_char(s[:17]) == s[17]


def upgrade_id15(s: str) -> str:
    """Turn a legacy 15-digit number into its 18-character form.

    Insert ``19`` before the two-digit year (legacy numbers were issued to people born in the
    1900s) and append the check character.

    >>> upgrade_id15("340524800101001")
    '34052419800101001X'
    """
    if not isinstance(s, str) or not _ID15.match(s):
        raise ValueError(f"not a 15-digit legacy identity number: {s!r}")
    first17 = s[:6] + "19" + s[6:]
    return first17 + check_char(first17)


def normalise_id(raw: str | None) -> str:
    """Clean an identity number as institutions send it; return '' for missing values.

    Removes spaces (including the full-width U+3000), turns full-width digits and letters into
    ASCII and upper-cases ``x``. The result is not validated and not upgraded: use
    :func:`is_valid_id18` and :func:`upgrade_id15` on it, so callers can tell "repaired" from
    "invalid".
    """
    if raw is None:
        return ""
    return str(raw).translate(_NORMALISE_TABLE).upper()


def canonical_id(raw: str | None) -> str | None:
    """Normalise, upgrade a legacy 15-digit number, and return it only when valid, else None."""
    s = normalise_id(raw)
    if _ID15.match(s):
        s = upgrade_id15(s)
    return s if is_valid_id18(s) else None


def birth_date_of(id18: str) -> str:
    """The ``YYYY-MM-DD`` birth date encoded in an 18-character number (not validated)."""
    return f"{id18[6:10]}-{id18[10:12]}-{id18[12:14]}"


def sex_of(id18: str) -> str:
    """'male' for an odd sequence digit (position 17), 'female' for an even one."""
    return "male" if int(id18[16]) % 2 else "female"


# --------------------------------------------------------------------------------------------
# Vectorised helpers for the generator
# --------------------------------------------------------------------------------------------


def check_chars_for_digits(digits: np.ndarray) -> np.ndarray:
    """Check characters for many numbers at once.

    ``digits`` is an integer array of shape ``(n, 17)`` holding the first 17 digits of each
    number. Returns an array of ``n`` one-character strings. One matrix product, no Python loop:
    the generator computes millions of these.
    """
    digits = np.asarray(digits)
    if digits.ndim != 2 or digits.shape[1] != 17:
        raise ValueError(f"expected shape (n, 17), got {digits.shape}")
    return _CHECK_ARRAY[(digits.astype(np.int64) @ _WEIGHTS_ARRAY) % 11]


def digits_of(values: np.ndarray, width: int) -> np.ndarray:
    """Split non-negative integers into ``width`` decimal digits, most significant first."""
    values = np.asarray(values, dtype=np.int64)
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return (values[:, None] // powers[None, :]) % 10


def build_id18(area: np.ndarray, birth_yyyymmdd: np.ndarray, sequence: np.ndarray) -> np.ndarray:
    """Assemble valid 18-character numbers from area codes, birth dates and sequence numbers.

    All three are integer arrays of equal length (area 6 digits, birth date as the integer
    YYYYMMDD, sequence 0..999). Returns an object array of strings.
    """
    area = np.asarray(area, dtype=np.int64)
    birth = np.asarray(birth_yyyymmdd, dtype=np.int64)
    seq = np.asarray(sequence, dtype=np.int64)
    first17 = (area * 10**8 + birth) * 1000 + seq
    checks = check_chars_for_digits(digits_of(first17, 17))
    body = np.char.zfill(first17.astype(str), 17)
    return np.char.add(body, checks).astype(object)
