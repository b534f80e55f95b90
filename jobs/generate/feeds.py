"""One institution's activity on one day, as canonical (typed, not yet formatted) frames.

Every function returns a DataFrame whose columns are the feed contract's canonical names, plus
``_person_key`` and ``_variations`` (ground truth, never written to landing). Values are typed
(datetime64, bool, numbers); :mod:`jobs.generate.writers` formats them per source profile.
Clinical rows carry the patient's identity as the institution knows it: its own record.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from jobs.generate.params import ActivityParams, GeneratorParams
from jobs.generate.registry import apply_variations, attach_identity

REFER_UP = {"village": ["township"], "township": ["district", "municipal"],
            "district": ["municipal"], "municipal": []}
REFER_DOWN = {"municipal": ["district", "township"], "district": ["township"],
              "township": [], "village": []}


@dataclass(frozen=True)
class World:
    """Everything a day's generation reads: fixed for the run, shared by all days."""

    persons: pd.DataFrame
    institutions: pd.DataFrame
    registrations: pd.DataFrame        # sorted by inst
    reg_offsets: np.ndarray            # registrations of inst i: [offsets[i], offsets[i+1])
    params: GeneratorParams
    start: dt.date
    daily_visits: float                # whole-city visits per day
    town_residents: dict[str, np.ndarray]  # town code -> person keys living there


def _weighted(rng: np.random.Generator, table: dict[str, float], size: int) -> np.ndarray:
    keys = np.array(list(table), dtype=object)
    p = np.array(list(table.values()), dtype=float)
    return keys[rng.choice(len(keys), size=size, p=p / p.sum())]


def _times(rng: np.random.Generator, day: dt.date, n: int, lo: int = 8, hi: int = 20
           ) -> np.ndarray:
    base = np.datetime64(day, "s")
    return base + rng.integers(lo * 3600, hi * 3600, size=n).astype("timedelta64[s]")


def _patients(world: World, inst: int) -> pd.DataFrame:
    a, b = world.reg_offsets[inst], world.reg_offsets[inst + 1]
    return world.registrations.iloc[a:b]


def _identity(rows: pd.DataFrame) -> dict[str, object]:
    return {"patient_no": rows["record_id"].to_numpy(object),
            "national_id": rows["national_id"].to_numpy(object),
            "name": rows["name"].to_numpy(object),
            "sex": rows["sex"].to_numpy(object),
            "birth_date": rows["birth_date"].to_numpy(),
            "_person_key": rows["person_key"].to_numpy(),
            "_variations": rows["variations"].to_numpy(object)}


def registry_rows(world: World, inst: int, day: dt.date, activity_day: dt.date,
                  rng: np.random.Generator) -> pd.DataFrame:
    """The full snapshot on the first day; new records and phone updates afterwards."""
    regs = _patients(world, inst)
    cols = ["record_id", "national_id", "name", "sex", "birth_date", "phone", "address",
            "area_code", "registered_at", "person_key", "variations"]
    if day == world.start:
        out = regs[cols].copy()
        out.insert(1, "change_type", "snapshot")
        out["updated_at"] = pd.NaT
    else:
        rp = world.params.registrations
        n_new = rng.poisson(rp.daily_create_share * max(len(regs), 1))
        n_upd = min(len(regs), rng.poisson(rp.daily_update_share * len(regs)))
        persons = world.persons
        town = world.institutions.at[inst, "town_code"]
        pool = world.town_residents.get(town)
        pool = pool if pool is not None and len(pool) else np.arange(len(persons))
        new = pd.DataFrame({"person_key": rng.choice(pool, size=n_new),
                            "inst": inst, "primary": False})
        new["registered_at"] = _times(rng, activity_day, n_new)
        new = attach_identity(new, persons)
        new = apply_variations(rng, new, rp, rp.variation_share_other)
        new["record_id"] = [f"N{day:%y%m%d}{inst:04d}{k:05d}" for k in range(n_new)]
        new = new[cols].assign(change_type="create", updated_at=new["registered_at"])
        upd = regs.iloc[np.sort(rng.choice(len(regs), size=n_upd, replace=False))][cols].copy()
        upd["phone"] = (13 * 10**9 + rng.integers(0, 10**9, size=n_upd)).astype(str)
        upd["variations"] = np.where(upd["variations"] == "", "changed_phone",
                                     upd["variations"] + ",changed_phone")
        upd = upd.assign(change_type="update", updated_at=_times(rng, activity_day, n_upd))
        out = pd.concat([new, upd], ignore_index=True)
    return out.rename(columns={"person_key": "_person_key", "variations": "_variations"})


def _diagnoses(rng: np.random.Generator, act: ActivityParams, htn: np.ndarray, dm: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    n = len(htn)
    other = act.other_codes
    codes = _weighted(rng, {k: float(v[1]) for k, v in other.items()}, n)
    names = np.array([str(other[c][0]) for c in codes], dtype=object)
    chronic = rng.random(n) < act.chronic_diagnosis_share
    for cond, has in (("hypertension", htn), ("diabetes", dm)):
        table = act.chronic_codes[cond]
        pick = chronic & has
        if cond == "diabetes":
            pick &= ~htn | (rng.random(n) < 0.5)
        if pick.any():
            c = _weighted(rng, {k: float(v[1]) for k, v in table.items()}, int(pick.sum()))
            codes[pick] = c
            names[pick] = [str(table[x][0]) for x in c]
    return codes, names


def clinical_rows(world: World, inst: int, activity_day: dt.date, rng: np.random.Generator
                  ) -> dict[str, pd.DataFrame]:
    """Encounters, their lab results and referrals, and chronic follow-ups of one day."""
    act = world.params.activity
    insts = world.institutions
    tier = insts.at[inst, "tier"]
    same_tier = insts["tier"].to_numpy() == tier
    share = insts.at[inst, "size"] / insts.loc[same_tier, "size"].sum()
    regs = _patients(world, inst)
    n = rng.poisson(world.daily_visits * act.tier_visit_share[tier] * share) if len(regs) else 0

    # Encounters: patients weighted towards older and chronic residents.
    pk = regs["person_key"].to_numpy()
    persons = world.persons
    htn_all = persons["hypertension_diagnosed"].to_numpy()
    dm_all = persons["diabetes_diagnosed"].to_numpy()
    age_all = persons["age"].to_numpy()
    w = 1.0 + 2.0 * (htn_all[pk] | dm_all[pk]) + age_all[pk] / 40.0 if len(pk) else np.ones(0)
    pick = rng.choice(len(regs), size=n, p=w / w.sum()) if n else np.zeros(0, dtype=np.int64)
    pat = regs.iloc[pick]
    ppk = pat["person_key"].to_numpy()
    etype = _weighted(rng, act.encounter_types[tier], n)
    visit = _times(rng, activity_day, n)
    emergency = etype == "emergency"
    visit[emergency] = _times(rng, activity_day, int(emergency.sum()), 0, 24)
    inpatient = etype == "inpatient"
    los = rng.integers(1, 15, size=n).astype("timedelta64[D]")
    discharge = np.where(inpatient, visit, np.datetime64("NaT", "s"))
    visit = np.where(inpatient, visit - los, visit)
    dept = _weighted(rng, {d: 1.0 for d in act.departments}, n)
    dept[emergency] = "急诊科"
    dept[etype == "online"] = "互联网医院"
    dept[age_all[ppk] < 14] = "儿科"
    code, dname = _diagnoses(rng, act, htn_all[ppk], dm_all[ppk])
    fee = np.round(rng.lognormal(5.0, 0.8, size=n) * np.where(inpatient, 25.0, 1.0), 2)
    enc_id = np.array([f"E{activity_day:%Y%m%d}{inst:04d}{k:06d}" for k in range(n)], object)
    enc = pd.DataFrame({"encounter_id": enc_id, **_identity(pat), "encounter_type": etype,
                        "visit_at": visit, "department": dept, "diagnosis_code": code,
                        "diagnosis_name": dname, "discharge_at": discharge, "total_fee": fee})

    # Lab results: 1-3 tests for a share of encounters.
    has_lab = rng.random(n) < act.labs_per_encounter[tier]
    n_tests = np.where(has_lab, rng.integers(1, 4, size=n), 0)
    src = np.repeat(np.arange(n), n_tests)
    tests = list(act.lab_tests)
    tcode = np.array(tests, dtype=object)[rng.integers(0, len(tests), size=len(src))]
    spec = {k: act.lab_tests[k] for k in tests}
    mean = np.array([float(spec[c][3]) for c in tcode])
    sd = np.array([float(spec[c][4]) for c in tcode])
    diabetic = dm_all[ppk[src]] if len(src) else np.zeros(0, bool)
    shift = np.where(np.isin(tcode, ["GLU", "HBA1C"]) & diabetic, 1.8 * sd, 0.0)
    value = np.abs(rng.normal(mean + shift, sd))
    recog = rng.random(len(src)) < act.mutual_recognition_share
    others = insts.loc[insts["tier"].isin(["municipal", "district"]) & (insts.index != inst),
                       "institution_id"].to_numpy(object)
    recog &= len(others) > 0
    rfrom = np.full(len(src), None, dtype=object)
    if recog.any():
        rfrom[recog] = others[rng.integers(0, len(others), size=int(recog.sum()))]
    collected = visit[src] + rng.integers(600, 7200, size=len(src)).astype("timedelta64[s]")
    lab_ident = {k: v[src] for k, v in _identity(pat).items() if k not in ("sex", "birth_date")}
    labs = pd.DataFrame({
        "lab_result_id": np.array([f"L{activity_day:%Y%m%d}{inst:04d}{k:07d}"
                                   for k in range(len(src))], object),
        "encounter_id": enc_id[src], **lab_ident, "test_code": tcode,
        "test_name": np.array([str(spec[c][0]) for c in tcode], object),
        "result_value": np.array([f"{v:.2f}" for v in value], object),
        "unit": np.array([str(spec[c][1]) for c in tcode], object),
        "reference_range": np.array([str(spec[c][2]) for c in tcode], object),
        "collected_at": collected,
        "reported_at": collected + rng.integers(1800, 14400, size=len(src)).astype(
            "timedelta64[s]"),
        "is_mutual_recognised": recog, "recognised_from": rfrom})

    # Referrals up and down the tiers, sent by this institution.
    up_p, down_p = act.referral_share[tier]
    u = rng.random(n)
    direction = np.where(u < up_p, "up", np.where(u < up_p + down_p, "down", ""))
    parts = []
    for d, targets in (("up", REFER_UP[tier]), ("down", REFER_DOWN[tier])):
        cand = insts.loc[insts["tier"].isin(targets)]
        rows = np.flatnonzero(direction == d)
        if not len(rows) or cand.empty:
            continue
        near = cand[cand["district_code"] == insts.at[inst, "district_code"]]
        cand = near if not near.empty else cand
        to = cand["institution_id"].to_numpy(object)[rng.integers(0, len(cand), size=len(rows))]
        parts.append((rows, d, to))
    ref_rows = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    ref = pd.DataFrame({
        "referral_id": np.array([f"Z{activity_day:%Y%m%d}{inst:04d}{k:05d}"
                                 for k in range(len(ref_rows))], object),
        **{k: v[ref_rows] for k, v in _identity(pat).items() if k != "patient_no"},
        "patient_no": pat["record_id"].to_numpy(object)[ref_rows],
        "direction": np.concatenate([[p[1]] * len(p[0]) for p in parts]) if parts else [],
        "to_institution_id": np.concatenate([p[2] for p in parts]) if parts else [],
        "referred_at": visit[ref_rows] + np.timedelta64(1800, "s"),
        "reason_code": code[ref_rows],
        "channel": np.where(rng.random(len(ref_rows)) < act.digital_referral_share, "digital",
                            "paper")})

    # Chronic follow-ups: managed patients whose primary-care record is here.
    fu_parts = []
    if tier in ("township", "village"):
        prim = regs[regs["primary"].to_numpy()]
        p_daily = act.followups_per_patient_year / 365.0
        for cond in ("hypertension", "diabetes"):
            managed = persons[f"{cond}_managed"].to_numpy()[prim["person_key"].to_numpy()]
            due = prim[managed & (rng.random(len(prim)) < p_daily)]
            if due.empty:
                continue
            k = len(due)
            fu_parts.append(pd.DataFrame({
                **{c: v for c, v in _identity(due).items() if c not in ("sex", "birth_date")},
                "condition": cond, "followup_at": _times(rng, activity_day, k),
                "method": _weighted(rng, act.followup_methods, k),
                "systolic_bp": np.round(rng.normal(138, 15, k)).astype(np.int64),
                "diastolic_bp": np.round(rng.normal(84, 10, k)).astype(np.int64),
                "fasting_glucose": np.where(cond == "diabetes",
                                            np.round(np.abs(rng.normal(7.4, 1.8, k)), 1), np.nan),
            }))
    fu = pd.concat(fu_parts, ignore_index=True) if fu_parts else pd.DataFrame(
        columns=["patient_no", "national_id", "name", "_person_key", "_variations", "condition",
                 "followup_at", "method", "systolic_bp", "diastolic_bp", "fasting_glucose"])
    fu.insert(0, "followup_id", [f"F{activity_day:%Y%m%d}{inst:04d}{k:05d}"
                                 for k in range(len(fu))])
    return {"encounters": enc, "lab_results": labs, "referrals": ref, "chronic_followups": fu}


def survey_period(day: dt.date) -> str:
    """The last completed quarter before ``day`` (the survey describes it)."""
    q = (day.month - 1) // 3 + 1
    return f"{day.year - 1}Q4" if q == 1 else f"{day.year}Q{q - 1}"


def is_survey_day(day: dt.date, start: dt.date) -> bool:
    """The first generated day and the first day of every quarter."""
    return day == start or (day.day == 1 and day.month in (1, 4, 7, 10))


def survey_row(world: World, inst: int, day: dt.date, seed: int) -> pd.DataFrame:
    """One institution's informatization answers. Stable per institution (seeded by it), with a
    small improvement each quarter so successive surveys differ plausibly."""
    sp = world.params.activity.survey
    tier = world.institutions.at[inst, "tier"]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 5, inst]))
    period = survey_period(day)
    quarters = int(period[:4]) * 4 + int(period[-1]) - (2023 * 4 + 1)

    def draw(rng_: tuple[float, float], integer: bool = True) -> float:
        lo, hi = rng_
        v = lo + (hi - lo) * rng.random()
        return float(int(round(v))) if integer else round(v, 1)

    emr = min(8, int(draw(tuple(sp.emr_level[tier]))) + (1 if quarters >= 6 else 0))
    levels = sp.interop_level[tier]
    return pd.DataFrame({
        "survey_period": [period],
        "has_5g_link": [bool(rng.random() < sp.has_5g_link[tier] + 0.02 * max(quarters, 0))],
        "emr_level": [emr],
        "interop_level": [str(levels[int(rng.integers(0, len(levels)))])],
        "n_online_services": [int(draw(tuple(sp.online_services[tier]))) + max(quarters, 0)],
        "n_it_staff": [int(draw(tuple(sp.it_staff[tier])))],
        "n_staff": [int(draw(tuple(sp.staff[tier])))],
        "it_budget_wan_yuan": [draw(tuple(sp.it_budget_wan_yuan[tier]), integer=False)],
        "_person_key": [None], "_variations": [""]})
