"""The true resident population: identity, residence and chronic conditions.

Fully vectorised: the full city (2.44 million residents) is a handful of numpy operations. The
result is the ground truth ``persons`` table; institutions later see these people through their
own, sometimes distorted, records (see :mod:`jobs.generate.registry`).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from jobs.generate.params import CityParams
from jobs.identity import build_id18

AGE_BAND_EDGES = list(range(0, 90, 5))  # 5-year bands, the last one "85+"


def age_band(age: np.ndarray) -> np.ndarray:
    """5-year age band labels ('0-4', ..., '80-84', '85+') for integer ages."""
    labels = np.array([f"{lo}-{lo + 4}" for lo in AGE_BAND_EDGES[:-1]] + ["85+"], dtype=object)
    return labels[np.minimum(np.asarray(age) // 5, len(AGE_BAND_EDGES) - 1)]


def single_year_age_weights(city: CityParams) -> np.ndarray:
    """Probability of each age 0..max_age: smooth curve through 5-year band weights, rescaled so
    that the census shares of 0-14, 15-59 and 60+ hold exactly."""
    pop = city.population
    ages = np.arange(pop.max_age + 1)
    mids = np.array([2.0 + 5 * i for i in range(len(pop.five_year_band_weights))])
    w = np.interp(ages, mids, np.asarray(pop.five_year_band_weights, dtype=float))
    for (lo, hi), share in zip([(0, 14), (15, 59), (60, pop.max_age)],
                               [pop.broad_band_shares[k] for k in ("0-14", "15-59", "60+")],
                               strict=True):
        band = (ages >= lo) & (ages <= hi)
        w[band] *= share / w[band].sum()
    return w / w.sum()


def _prevalence(age: np.ndarray, table: dict[str, float]) -> np.ndarray:
    bounds = np.array(sorted(int(k) for k in table))
    values = np.array([0.0] + [table[str(b)] for b in bounds])
    return values[np.searchsorted(bounds, age, side="right")]


def build_population(city: CityParams, areas: pd.DataFrame, n: int, seed: int,
                     reference_date: dt.date) -> pd.DataFrame:
    """Draw ``n`` residents living in ``areas`` as of ``reference_date``.

    Returns the ``persons`` table: person_key, national_id (valid 18 characters), name, sex,
    birth_date, age, phone, birth_area_code, residence (district/town/community codes, names and
    zone), address, and chronic conditions with diagnosis and management flags.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    pop = city.population

    # Residence: community by population weight.
    w = areas["weight"].to_numpy()
    home = rng.choice(len(areas), size=n, p=w / w.sum())
    persons = areas.iloc[home].drop(columns=["weight", "kind"]).reset_index(drop=True)
    persons.insert(0, "person_key", np.arange(n, dtype=np.int64))

    # Sex and age.
    male = rng.random(n) < pop.sex_ratio / (100.0 + pop.sex_ratio)
    persons["sex"] = np.where(male, "male", "female")
    age = rng.choice(pop.max_age + 1, size=n, p=single_year_age_weights(city))
    ref = np.datetime64(reference_date, "D")
    days_back = np.floor(age * 365.25).astype(np.int64) + rng.integers(1, 365, size=n)
    birth = ref - days_back.astype("timedelta64[D]")
    persons["birth_date"] = birth
    years = birth.astype("datetime64[Y]").astype(int) + 1970
    months = birth.astype("datetime64[M]").astype(int) % 12 + 1
    mdays = (birth - birth.astype("datetime64[M]")).astype(int) + 1
    yyyymmdd = years * 10000 + months * 100 + mdays
    persons["age"] = ((ref - birth).astype(int) // 365.25).astype(np.int64)

    # Identity numbers: birthplace area, birth date, sequence (odd male, even female), unique.
    groups = sorted(pop.birthplace_shares)
    g = rng.choice(len(groups), size=n, p=np.array([pop.birthplace_shares[k] for k in groups]))
    area = np.zeros(n, dtype=np.int64)
    for i, name in enumerate(groups):
        codes = np.array([int(c) for c in pop.birthplace_codes[name]], dtype=np.int64)
        mask = g == i
        area[mask] = codes[rng.integers(0, len(codes), size=int(mask.sum()))]
    seq = np.zeros(n, dtype=np.int64)
    todo = np.arange(n)
    while len(todo):
        # 2k - 1 (odd) for men, 2k (even) for women, k in 1..499.
        seq[todo] = 2 * rng.integers(1, 500, size=len(todo)) - male[todo].astype(np.int64)
        key = (area * 10**8 + yyyymmdd) * 1000 + seq
        _, first = np.unique(key, return_index=True)
        dup = np.ones(n, dtype=bool)
        dup[first] = False
        todo = np.flatnonzero(dup)
    persons["birth_area_code"] = area.astype(str)
    persons["national_id"] = build_id18(area, yyyymmdd, seq)

    # Names.
    nm = city.names
    surnames = np.array(list(nm.surnames), dtype=object)
    sw = np.array(list(nm.surnames.values()), dtype=float)
    family = surnames[rng.choice(len(surnames), size=n, p=sw / sw.sum())]
    given = np.empty(n, dtype=object)
    for is_male, chars in ((True, nm.given_chars_male), (False, nm.given_chars_female)):
        pool = np.array(chars, dtype=object)
        mask = male == is_male
        k = int(mask.sum())
        first = pool[rng.integers(0, len(pool), size=k)]
        second = np.where(rng.random(k) < nm.two_char_given_share,
                          pool[rng.integers(0, len(pool), size=k)], "")
        given[mask] = first + second
    persons["name"] = family + given

    # Mobile phones.
    prefixes = np.array([int(p) for p in pop.mobile_prefixes], dtype=np.int64)
    phone = (prefixes[rng.integers(0, len(prefixes), size=n)] * 10**8
             + rng.integers(0, 10**8, size=n)).astype(str).astype(object)
    phone[rng.random(n) < pop.phone_missing_share] = None
    persons["phone"] = phone

    # Address inside the community.
    roads = np.array(city.communities.road_names, dtype=object)
    number = rng.integers(1, 300, size=n).astype(str).astype(object)
    persons["address"] = ("珠海市" + persons["district_name"].to_numpy(object)
                          + persons["town_name"].to_numpy(object)
                          + persons["community_name"].to_numpy(object)
                          + roads[rng.integers(0, len(roads), size=n)] + number + "号")

    # Chronic conditions: prevalence by age, then awareness and management.
    h = city.health
    ehr = rng.random(n) < h.ehr_coverage
    persons["has_ehr"] = ehr
    for cond, table in (("hypertension", h.hypertension_by_age), ("diabetes", h.diabetes_by_age)):
        has = rng.random(n) < _prevalence(persons["age"].to_numpy(), table)
        diagnosed = has & (rng.random(n) < h.diagnosed_share[cond])
        managed = diagnosed & ehr & (rng.random(n) < h.managed_share_of_diagnosed[cond])
        persons[cond] = has
        persons[f"{cond}_diagnosed"] = diagnosed
        persons[f"{cond}_managed"] = managed
    persons["age_band"] = age_band(persons["age"].to_numpy())
    return persons


def true_population(persons: pd.DataFrame) -> pd.DataFrame:
    """Counts by district, town, 5-year age band and sex, with hypertension and diabetes."""
    keys = ["district_code", "district_name", "town_code", "town_name", "age_band", "sex"]
    out = (persons.groupby(keys, sort=True, observed=True)
           .agg(population=("person_key", "size"), hypertension=("hypertension", "sum"),
                diabetes=("diabetes", "sum"))
           .reset_index())
    return out.astype({"population": "int64", "hypertension": "int64", "diabetes": "int64"})
