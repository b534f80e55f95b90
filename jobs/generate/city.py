"""The city's geography (districts, towns, communities) and its health institutions.

Geography depends on the seed only, so a community code means the same place at every scale.
Institutions depend on the scale too: their counts shrink with the number of residents, down to
a minimum per tier, so a 5,000-resident demo still has every tier and every source profile.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from jobs.generate.params import TIERS, CityParams

_ORDINALS = "一二三四五六七八九十"


def _rng(seed: int, *path: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *path]))


def build_areas(city: CityParams, seed: int) -> pd.DataFrame:
    """One row per community/village with its town, district and functional zone.

    Columns: community_code (12 digits), community_name, kind (社区/村), town_code (9 digits),
    town_name, district_code, district_name, zone, weight (relative population).
    """
    rng = _rng(seed, 1)
    total_district = sum(d.population_2024 for d in city.districts)
    full = city.population.full_city_residents
    chars = np.array(city.communities.name_chars)
    rows: list[dict[str, object]] = []
    for d in city.districts:
        town_total = sum(t.population_weight for t in d.towns)
        for t in d.towns:
            town_pop = full * d.population_2024 / total_district * t.population_weight / town_total
            n = max(city.communities.min_per_town,
                    round(town_pop / city.communities.residents_per_community))
            is_street = t.name.endswith("街道")
            n_villages = 0 if is_street else int(round(n * city.communities.village_share_in_towns))
            # Distinct two-character names inside the town.
            pairs = rng.choice(len(chars) ** 2, size=n, replace=False)
            names = [chars[p // len(chars)] + chars[p % len(chars)] for p in pairs]
            weights = rng.lognormal(0.0, 0.4, size=n) * town_pop / n
            for k in range(n):
                village = k >= n - n_villages
                local = 201 + (k - (n - n_villages)) if village else 1 + k
                rows.append({
                    "community_code": f"{d.code}{t.code}{local:03d}",
                    "community_name": names[k] + ("村" if village else "社区"),
                    "kind": "村" if village else "社区",
                    "town_code": f"{d.code}{t.code}",
                    "town_name": t.name,
                    "district_code": d.code,
                    "district_name": d.name,
                    "zone": t.zone,
                    "weight": float(weights[k]),
                })
    return pd.DataFrame(rows)


def tier_counts(city: CityParams, residents: int) -> dict[str, int]:
    """Institutions per tier at this scale: proportional to residents, at least the minimum."""
    ratio = residents / city.population.full_city_residents
    return {tier: max(p.min_count, int(round(p.full_count * ratio)))
            for tier, p in city.institutions.tiers.items()}


def _town_order(areas: pd.DataFrame) -> list[str]:
    """Towns by population, each district's largest first so small counts still cover them."""
    towns = areas.groupby(["district_code", "town_code"], sort=True)["weight"].sum().reset_index()
    towns = towns.sort_values(["weight", "town_code"], ascending=[False, True])
    firsts = towns.drop_duplicates("district_code")["town_code"].tolist()
    return firsts + [t for t in towns["town_code"] if t not in firsts]


def _assign_profiles(rng: np.random.Generator, n: int, mix: dict[str, float]) -> list[str]:
    """Exact-quota profile assignment (largest remainder), every profile present when n allows."""
    names = sorted(mix)
    shares = np.array([mix[p] for p in names], dtype=float)
    shares = shares / shares.sum()
    counts = np.floor(shares * n).astype(int)
    for i in np.argsort(-(shares * n - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in range(len(names)):  # give every profile with a positive share at least one
        if counts[i] == 0 and shares[i] > 0 and counts.max() > 1:
            counts[int(np.argmax(counts))] -= 1
            counts[i] += 1
    out = np.repeat(np.array(names, dtype=object), counts)
    return list(out[rng.permutation(n)])


def build_institutions(city: CityParams, areas: pd.DataFrame, residents: int,
                       seed: int) -> pd.DataFrame:
    """All institutions of the four tiers with id, name, location, profile and size.

    Columns: institution_id, name, tier, profile, compression, district_code, town_code,
    town_name, area_code (12-digit community where it sits), size (relative daily volume).
    """
    rng = _rng(seed, 2)
    counts = tier_counts(city, residents)
    town_of_name = {(r.district_code, r.town_name): r.town_code
                    for r in areas.drop_duplicates("town_code").itertuples()}
    first_community = areas.groupby("town_code")["community_code"].first()
    town_name = areas.drop_duplicates("town_code").set_index("town_code")["town_name"]
    order = _town_order(areas)
    rows: list[dict[str, object]] = []

    for tier in ("municipal", "district"):
        named = getattr(city.institutions, tier)
        for i in range(counts[tier]):
            if i < len(named):
                n = named[i]
                town = town_of_name[(n.district, n.town)]
                name = n.name
            else:
                town = order[i % len(order)]
                name = f"珠海市第{i + 1}{'人民医院' if tier == 'municipal' else '区属医院'}"
            rows.append({"tier": tier, "name": name, "town_code": town,
                         "area_code": first_community[town]})

    # Township centres: every town in population order, then the big towns get more.
    n_town = counts["township"]
    per_town: dict[str, int] = {}
    for i in range(n_town):
        town = order[i % len(order)] if i < len(order) else order[(i - len(order)) % 8]
        per_town[town] = per_town.get(town, 0) + 1
        k = per_town[town]
        tname = town_name[town]
        base = "社区卫生服务中心" if tname.endswith("街道") or k > 1 else "卫生院"
        label = tname if k == 1 else f"{tname}第{_ORDINALS[k - 1]}"
        rows.append({"tier": "township", "name": label + base, "town_code": town,
                     "area_code": first_community[town]})

    # Village clinics / community stations: communities chosen by population.
    w = areas["weight"].to_numpy()
    n_village = min(counts["village"], len(areas))
    chosen = rng.choice(len(areas), size=n_village, replace=False, p=w / w.sum())
    for idx in sorted(chosen):
        a = areas.iloc[idx]
        root = str(a["community_name"])[:-1] if a["kind"] == "村" else str(a["community_name"])[:-2]
        suffix = "村卫生站" if a["kind"] == "村" else "社区卫生服务站"
        rows.append({"tier": "village", "name": root + suffix,
                     "town_code": a["town_code"], "area_code": a["community_code"]})

    inst = pd.DataFrame(rows)
    inst["district_code"] = inst["town_code"].str[:6]
    inst["town_name"] = inst["town_code"].map(town_name)
    inst["profile"] = ""
    inst["compression"] = "none"
    for tier in TIERS:
        mask = (inst["tier"] == tier).to_numpy()
        prefix = city.institutions.tiers[tier].prefix
        inst.loc[mask, "institution_id"] = [f"{prefix}{i + 1:04d}" for i in range(mask.sum())]
        inst.loc[mask, "profile"] = _assign_profiles(rng, int(mask.sum()),
                                                     city.institutions.profiles[tier])
        inst.loc[mask, "size"] = (city.institutions.size_by_tier[tier]
                                  * rng.lognormal(0.0, 0.3, size=int(mask.sum())))
    municipal = np.flatnonzero(inst["tier"].to_numpy() == "municipal")
    share = city.institutions.municipal_gzip_share
    if share > 0 and len(municipal):
        n_gz = max(1, int(round(share * len(municipal))))
        inst.loc[rng.choice(municipal, size=n_gz, replace=False), "compression"] = "gzip"
    cols = ["institution_id", "name", "tier", "profile", "compression", "district_code",
            "town_code", "town_name", "area_code", "size"]
    return inst[cols].reset_index(drop=True)
