"""GB 11643 identity numbers: check characters, validation, legacy upgrade, normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.identity import (
    build_id18,
    canonical_id,
    check_char,
    check_chars_for_digits,
    digits_of,
    is_valid_id18,
    normalise_id,
    sex_of,
    upgrade_id15,
)

# Published examples: the standard's own example and the widely quoted Beijing one.
VALID = ["34052419800101001X", "11010519491231002X", "440402199003070010"]


@pytest.mark.parametrize("first17, expected", [
    ("34052419800101001", "X"),
    ("11010519491231002", "X"),
    ("44040219900307001", "0"),  # S = 221, 221 mod 11 = 1 -> "0"
    ("00000000000000000", "1"),  # S = 0 -> '1'
])
def test_check_char(first17: str, expected: str) -> None:
    assert check_char(first17) == expected


@pytest.mark.parametrize("bad", ["3405241980010100", "34052419800101001X", "3405241980010100a",
                                 "３４０５２４１９８００１０１００１"])
def test_check_char_rejects_wrong_input(bad: str) -> None:
    with pytest.raises(ValueError):
        check_char(bad)


@pytest.mark.parametrize("s", VALID)
def test_valid_numbers(s: str) -> None:
    assert is_valid_id18(s)


@pytest.mark.parametrize("s", [
    "340524198001010011",      # wrong check character
    "34052419800101001x",      # lower-case x is not valid until normalised
    "34052419800110001X",      # transposed digits (01 -> 10) break the checksum
    "3405241980010100X",       # 17 characters
    "34052419800101001X0",     # 19 characters
    "340524800101001",         # legacy 15 digits: valid only after upgrade
    "",
    None,
])
def test_invalid_numbers(s: str | None) -> None:
    assert not is_valid_id18(s)  # type: ignore[arg-type]


def test_upgrade_id15() -> None:
    assert upgrade_id15("340524800101001") == "34052419800101001X"
    assert is_valid_id18(upgrade_id15("440402650712002"))
    with pytest.raises(ValueError):
        upgrade_id15("34052419800101001X")


@pytest.mark.parametrize("raw, expected", [
    ("34052419800101001x", "34052419800101001X"),
    (" 340524 19800101 001X ", "34052419800101001X"),
    ("340524\u300019800101001X", "34052419800101001X"),
    ("３４０５２４１９８００１０１００１Ｘ", "34052419800101001X"),
    ("３４０５２４１９８００１０１００１ｘ", "34052419800101001X"),
    (None, ""),
    ("", ""),
])
def test_normalise_id(raw: str | None, expected: str) -> None:
    assert normalise_id(raw) == expected


def test_canonical_id_repairs_or_rejects() -> None:
    assert canonical_id("340524800101001") == "34052419800101001X"
    assert canonical_id(" 34052419800101001x") == "34052419800101001X"
    assert canonical_id("340524198001010011") is None
    assert canonical_id(None) is None


def test_sex_of() -> None:
    assert sex_of("34052419800101001X") == "male"
    assert sex_of("11010519491231002X") == "female"


def test_vectorised_matches_scalar() -> None:
    rng = np.random.default_rng(7)
    first17 = rng.integers(0, 10**17, size=2000, dtype=np.int64)
    vector = check_chars_for_digits(digits_of(first17, 17))
    scalar = [check_char(str(v).zfill(17)) for v in first17]
    assert list(vector) == scalar


def test_build_id18() -> None:
    ids = build_id18(np.array([340524, 440402]), np.array([19800101, 19900307]),
                     np.array([1, 1]))
    assert list(ids) == ["34052419800101001X", "440402199003070010"]
    assert all(is_valid_id18(s) for s in ids)
    with pytest.raises(ValueError):
        check_chars_for_digits(np.zeros((3, 16), dtype=int))
