"""Who is known where: every institution's patient / health records, with identity variations.

Each resident with an electronic health record (EHR) has one with a primary-care institution
(village clinic in their community or a township centre of their town); many residents are also
patients of one or more hospitals, and a few have a second primary-care record. Every record is
the institution's own view of the person: with a configurable share, its identity is distorted
by typical data-entry variations (homophone characters, transposed ID digits, missing ID ...),
and the kinds applied are kept so the ground truth can score entity resolution.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from jobs.generate.params import VARIATION_KINDS, CityParams, RegistrationParams

_FULL_WIDTH_DIGITS = str.maketrans("0123456789Xx", "０１２３４５６７８９ＸＸ")
_CHECK = "10X98765432"


def _pick_in_groups(rng: np.random.Generator, keys: np.ndarray, groups: dict[str, np.ndarray]
                    ) -> np.ndarray:
    """For each key, a random member of ``groups[key]`` (-1 where the key has no group).

    Vectorised through group offsets: one indexer lookup, no loop over groups.
    """
    out = np.full(len(keys), -1, dtype=np.int64)
    if not groups or not len(keys):
        return out
    names = list(groups)
    counts = np.array([len(groups[k]) for k in names], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    members = np.concatenate([groups[k] for k in names]).astype(np.int64)
    code = pd.Index(names).get_indexer(pd.Index(keys))
    found = code >= 0
    pick = offsets[code[found]] + np.floor(rng.random(int(found.sum())) * counts[code[found]])
    out[found] = members[pick.astype(np.int64)]
    return out


def _groups(frame: pd.DataFrame, column: str) -> dict[str, np.ndarray]:
    return {k: v.to_numpy() for k, v in frame.groupby(column).groups.items()}


def build_registrations(city: CityParams, params: RegistrationParams, persons: pd.DataFrame,
                        institutions: pd.DataFrame, seed: int, reference_date: np.datetime64
                        ) -> pd.DataFrame:
    """The records every institution holds on the reference date (its first-day snapshot).

    Columns: person_key, inst (row index into ``institutions``), primary (bool), then the
    identity as the institution knows it (national_id, name, sex, birth_date, phone, address,
    area_code), registered_at, variations ('' or comma-separated kinds) and record_id.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
    tier = institutions["tier"].to_numpy()
    primary_care = institutions[np.isin(tier, ["township", "village"])]
    townships = institutions[tier == "township"]
    villages = institutions[tier == "village"]
    hospitals = institutions[np.isin(tier, ["municipal", "district"])]
    n = len(persons)

    # Primary care: village clinic of the community, else township of town / district / city.
    ehr = persons["has_ehr"].to_numpy()
    community = persons["community_code"].to_numpy()
    town = persons["town_code"].to_numpy()
    district = persons["district_code"].to_numpy()
    inst = _pick_in_groups(rng, community, _groups(villages, "area_code"))
    inst[rng.random(n) >= city.village_record_share] = -1
    for keys, column in ((town, "town_code"), (district, "district_code")):
        todo = inst < 0
        inst[todo] = _pick_in_groups(rng, keys[todo], _groups(townships, column))
    todo = inst < 0
    inst[todo] = townships.index.to_numpy()[rng.integers(0, len(townships), size=int(todo.sum()))]
    primary_keys = np.flatnonzero(ehr)
    primary_inst = inst[ehr]

    # A few residents hold a second primary-care record somewhere in their district.
    second = primary_keys[rng.random(len(primary_keys)) < params.second_primary_share]
    second_inst = _pick_in_groups(rng, district[second], _groups(primary_care, "district_code"))

    # Hospital patient records: Poisson count per resident, same district preferred.
    k = rng.poisson(params.hospital_records_mean, size=n)
    hosp_keys = np.repeat(np.arange(n), k)
    hosp_inst = np.empty(len(hosp_keys), dtype=np.int64)
    h_index = hospitals.index.to_numpy()
    h_district = hospitals["district_code"].to_numpy()
    h_size = hospitals["size"].to_numpy(float)
    for d in np.unique(district):
        mask = district[hosp_keys] == d
        w = h_size * np.where(h_district == d, params.same_district_weight, 1.0)
        hosp_inst[mask] = rng.choice(h_index, size=int(mask.sum()), p=w / w.sum())

    reg = pd.DataFrame({
        "person_key": np.concatenate([primary_keys, second, hosp_keys]),
        "inst": np.concatenate([primary_inst, second_inst, hosp_inst]),
        "primary": np.concatenate([np.ones(len(primary_keys), bool), np.zeros(len(second), bool),
                                   np.zeros(len(hosp_keys), bool)]),
    })
    reg = reg.sort_values(["inst", "person_key"], kind="stable").reset_index(drop=True)
    days_back = rng.integers(1, 14 * 365, size=len(reg))
    seconds = rng.integers(8 * 3600, 18 * 3600, size=len(reg))
    reg["registered_at"] = (reference_date - days_back.astype("timedelta64[D]")).astype(
        "datetime64[s]") + seconds.astype("timedelta64[s]")
    reg = attach_identity(reg, persons)
    share = np.where(reg["primary"].to_numpy(), params.variation_share_primary,
                     params.variation_share_other)
    reg = apply_variations(rng, reg, params, share)
    reg["record_id"] = record_ids(reg, institutions)
    return reg


def attach_identity(reg: pd.DataFrame, persons: pd.DataFrame) -> pd.DataFrame:
    """Copy the true identity of each record's person (before any variation)."""
    cols = ["national_id", "name", "sex", "birth_date", "phone", "address", "community_code"]
    picked = persons[cols].iloc[reg["person_key"].to_numpy()].reset_index(drop=True)
    picked = picked.rename(columns={"community_code": "area_code"})
    return pd.concat([reg.reset_index(drop=True), picked], axis=1)  # keeps Arrow strings: fast


def record_ids(reg: pd.DataFrame, institutions: pd.DataFrame) -> np.ndarray:
    """Local record numbers: primary care uses the 17-digit EHR number (12-digit community code
    + 5-digit sequence); hospitals a 10-digit patient number."""
    tier = institutions["tier"].to_numpy()[reg["inst"].to_numpy()]
    seq_area = reg.groupby(["inst", "area_code"], sort=False).cumcount().to_numpy() + 1
    seq_inst = reg.groupby("inst", sort=False).cumcount().to_numpy() + 1
    ehr_no = reg["area_code"].to_numpy(object) + pd.Series(seq_area).astype(str).str.zfill(
        5).to_numpy(object)
    hosp_no = pd.Series(seq_inst + 10**6).astype(str).str.zfill(10).to_numpy(object)
    return np.where(np.isin(tier, ["township", "village"]), ehr_no, hosp_no)


# --------------------------------------------------------------------------------------------
# Identity variations
# --------------------------------------------------------------------------------------------


def _replace_char(names: pd.Series, table: dict[str, str]) -> tuple[pd.Series, np.ndarray]:
    """Replace the first character of each name found in ``table``; return names and success."""
    out = names.copy()
    done = np.zeros(len(names), dtype=bool)
    longest = int(names.str.len().max() or 0)
    for pos in range(longest):
        ch = names.str[pos]
        sub = ch.map(table)
        hit = sub.notna().to_numpy() & ~done
        if hit.any():
            s = names[hit]
            out[hit] = s.str[:pos] + sub[hit] + s.str[pos + 1:]
            done |= hit
    return out, done


def _transpose(ids: pd.Series, rng: np.random.Generator) -> pd.Series:
    """Swap two adjacent, different digits among the first 17 (always breaks the checksum)."""
    out = []
    for s, start in zip(ids, rng.integers(0, 16, size=len(ids)), strict=True):
        for off in range(16):
            i = 6 + (start + off) % 11  # inside birth date and sequence, where typos happen
            if s[i] != s[i + 1]:
                s = s[:i] + s[i + 1] + s[i] + s[i + 2:]
                break
        out.append(s)
    return pd.Series(out, index=ids.index, dtype=object)


def apply_variations(rng: np.random.Generator, reg: pd.DataFrame, params: RegistrationParams,
                     share: np.ndarray | float) -> pd.DataFrame:
    """Distort the identity of a random share of records; record what was applied.

    A kind that cannot apply to a record (no X to lower-case, no mappable character, born too
    late for a 15-digit card, an ID already removed) is simply not recorded for it, so the
    ``variations`` column is always the truth.
    """
    n = len(reg)
    weights = np.array([getattr(params.variation_weights, k) for k in VARIATION_KINDS], float)
    varied = rng.random(n) < share
    first = rng.choice(len(VARIATION_KINDS), size=n, p=weights / weights.sum())
    second = rng.choice(len(VARIATION_KINDS), size=n, p=weights / weights.sum())
    has_second = varied & (rng.random(n) < params.second_variation_share) & (second != first)
    applied = {k: np.zeros(n, dtype=bool) for k in VARIATION_KINDS}
    ids = reg["national_id"].astype(object).copy()
    names = reg["name"].astype(object).copy()
    phones = reg["phone"].astype(object).copy()
    birth_year = pd.DatetimeIndex(reg["birth_date"]).year.to_numpy()

    # Order matters: the ID is first changed in content, then in form.
    order = ["homophone_name", "lookalike_name", "changed_phone", "transposed_id",
             "invalid_check_char", "legacy_id15", "missing_id", "lowercase_x", "fullwidth_digits",
             "embedded_spaces"]
    for kind in order:
        k = VARIATION_KINDS.index(kind)
        want = varied & ((first == k) | (has_second & (second == k)))
        if not want.any():
            continue
        rows = np.flatnonzero(want)
        has_id = np.zeros(n, dtype=bool)
        sub = ids.iloc[rows]
        has_id[rows] = sub.notna().to_numpy() & (sub.astype(str).str.len() == 18).to_numpy()
        if kind in ("homophone_name", "lookalike_name"):
            table = params.homophones if kind == "homophone_name" else params.lookalikes
            new, ok = _replace_char(names.iloc[rows], table)
            names.iloc[rows[ok]] = new[ok].to_numpy()
            applied[kind][rows[ok]] = True
        elif kind == "changed_phone":
            new = (13 * 10**9 + rng.integers(0, 10**9, size=len(rows))).astype(str)
            phones.iloc[rows] = new
            applied[kind][rows] = True
        elif kind == "transposed_id":
            rows = rows[has_id[rows]]
            ids.iloc[rows] = _transpose(ids.iloc[rows], rng).to_numpy()
            applied[kind][rows] = True
        elif kind == "invalid_check_char":
            rows = rows[has_id[rows]]
            s = ids.iloc[rows].astype(str)
            shift = rng.integers(1, 11, size=len(rows))
            cur = s.str[17].map(_CHECK.index).to_numpy()
            wrong = np.array(list(_CHECK))[(cur + shift) % 11]
            ids.iloc[rows] = (s.str[:17] + wrong).to_numpy()
            applied[kind][rows] = True
        elif kind == "legacy_id15":
            rows = rows[has_id[rows] & (birth_year[rows] < params.legacy_id15_before_year)
                        & (birth_year[rows] >= 1900)]
            s = ids.iloc[rows].astype(str)
            ids.iloc[rows] = (s.str[:6] + s.str[8:17]).to_numpy()
            applied[kind][rows] = True
        elif kind == "missing_id":
            ids.iloc[rows] = None
            applied[kind][rows] = True
        elif kind == "lowercase_x":
            rows = rows[has_id[rows] & (ids.iloc[rows].astype(str).str[17] == "X").to_numpy()]
            ids.iloc[rows] = ids.iloc[rows].str.lower().to_numpy()
            applied[kind][rows] = True
        elif kind == "fullwidth_digits":
            rows = rows[ids.iloc[rows].notna().to_numpy()]
            ids.iloc[rows] = ids.iloc[rows].str.translate(_FULL_WIDTH_DIGITS).to_numpy()
            applied[kind][rows] = True
        elif kind == "embedded_spaces":
            rows = rows[ids.iloc[rows].notna().to_numpy()]
            s = ids.iloc[rows].astype(str)
            ids.iloc[rows] = (s.str[:6] + " " + s.str[6:14] + " " + s.str[14:]).to_numpy()
            applied[kind][rows] = True

    labels = np.full(n, "", dtype=object)
    for kind in VARIATION_KINDS:
        m = applied[kind]
        labels[m] = np.where(labels[m] == "", kind, labels[m] + "," + kind)
    reg = reg.copy()
    reg["national_id"] = ids.to_numpy(object)
    reg["name"] = names.to_numpy(object)
    reg["phone"] = phones.to_numpy(object)
    reg["variations"] = labels
    return reg
