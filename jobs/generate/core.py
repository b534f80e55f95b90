"""`healthlake generate`: build the city, write each day's landing files, faults and ground truth.

Layout written (all roots from settings):

- ``landing/<date>/<institution_id>/<feed><ext>`` + ``_manifest.json``
- ``late_deliveries/<date>/<institution_id>/`` for institutions whose delivery is held back
- ``ground_truth/persons.parquet``, ``population.parquet``, ``records/records_<date>.parquet``,
  ``faults/faults_<date>.parquet``
- ``reference/areas.csv``, ``institutions.csv``, ``population.csv``

Reproducibility: the city comes from ``SeedSequence([seed, k])``; each institution-day draws
from ``SeedSequence([seed, yyyymmdd, institution, stream])``, so a day does not depend on the
days generated before it. The only cross-day links are re-delivered files (a copy of the
previous day's file) and faults forced to guarantee every kind appears at least once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jobs.config import Settings
from jobs.contracts import Contracts, load_contracts
from jobs.generate.city import build_areas, build_institutions
from jobs.generate.feeds import (
    World,
    clinical_rows,
    is_survey_day,
    registry_rows,
    survey_row,
)
from jobs.generate.params import (
    INSTITUTION_FAULT_KINDS,
    ROW_FAULT_KINDS,
    GeneratorParams,
    load_params,
)
from jobs.generate.population import build_population, true_population
from jobs.generate.registry import build_registrations
from jobs.generate.writers import (
    apply_row_fault,
    format_frame,
    gzip_bytes,
    manifest_bytes,
    serialise,
)
from jobs.operations import private_files

DAILY_FEEDS = ("resident_registry", "encounters", "lab_results", "referrals", "chronic_followups")
SURVEY = "institution_survey"
IN_PLACE = ("truncated_file", "renamed_column", "wrong_encoding", "zero_byte_file",
            "half_written_gzip", "missing_file")
EXPECTED = {
    **{k: "quarantine_row" for k in ROW_FAULT_KINDS},
    "truncated_file": "quarantine_file", "renamed_column": "quarantine_file",
    "wrong_encoding": "quarantine_file", "zero_byte_file": "quarantine_file",
    "half_written_gzip": "quarantine_file", "missing_file": "record_missing",
    "redelivered_file": "skip_duplicate_file", "unlisted_file": "report_unlisted",
    "late_institution": "late", "missing_institution": "missing_institution",
}
ROW_KINDS_BY_FORMAT = {
    "csv": ("wrong_field_count", "broken_quoting", "impossible_date", "empty_required"),
    "xlsx": ("wrong_field_count", "impossible_date", "empty_required"),
    "jsonl": ("impossible_date", "empty_required", "broken_json"),
}


def _rng(seed: int, day: dt.date, inst: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(
        [seed, int(day.strftime("%Y%m%d")), inst, stream]))


# --------------------------------------------------------------------------------------------
# Fault plan
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FaultPlan:
    """Which institution-days, files and rows get which fault; decided before writing."""

    institution: dict[tuple[dt.date, int], str] = dataclasses.field(default_factory=dict)
    file: dict[tuple[dt.date, int, str], str] = dataclasses.field(default_factory=dict)
    redelivered: dict[tuple[dt.date, int], str] = dataclasses.field(default_factory=dict)
    unlisted: dict[tuple[dt.date, int], str] = dataclasses.field(default_factory=dict)
    forced_rows: dict[tuple[dt.date, int, str], str] = dataclasses.field(default_factory=dict)


def _row_kinds(profile_name: str, contracts: Contracts) -> tuple[str, ...]:
    profile = contracts.profiles[profile_name]
    kinds = ROW_KINDS_BY_FORMAT[profile.format]
    return kinds + (("undecodable_bytes",) if profile.encoding.lower() == "gb18030" else ())


def _file_kinds(inst: pd.Series, feed: str, gen: GeneratorParams, contracts: Contracts
                ) -> list[str]:
    profile = contracts.profiles[inst["profile"]]
    headers = set(contracts.feed(feed).source_columns(inst["profile"]).values())
    kinds = ["truncated_file", "zero_byte_file", "missing_file"]
    if set(gen.faults.renamed_columns.get(inst["profile"], {})) & headers:
        kinds.append("renamed_column")
    if profile.encoding.lower() == "gb18030":
        kinds.append("wrong_encoding")
    if inst["compression"] == "gzip":
        kinds.append("half_written_gzip")
    return kinds


def plan_faults(insts: pd.DataFrame, dates: list[dt.date], gen: GeneratorParams, seed: int,
                contracts: Contracts) -> FaultPlan:
    """Draw faults at the configured rates; then force one of each missing kind if asked."""
    plan = FaultPlan()
    f = gen.faults
    start = dates[0]
    feeds_of = {d: list(DAILY_FEEDS) + ([SURVEY] if is_survey_day(d, start) else []) for d in dates}
    for d in dates:
        for i in range(len(insts)):
            rng = _rng(seed, d, i, 7)
            u = rng.random()
            if u < f.institution_rates.late_institution:
                plan.institution[(d, i)] = "late_institution"
            elif d > start and u < (f.institution_rates.late_institution
                                    + f.institution_rates.missing_institution):
                plan.institution[(d, i)] = "missing_institution"
            row = insts.iloc[i]
            for feed in feeds_of[d]:
                kinds = _file_kinds(row, feed, gen, contracts)
                rates = np.array([getattr(f.file_rates, k) for k in kinds])
                pick = int(np.searchsorted(np.cumsum(rates), rng.random(), side="right"))
                if pick < len(kinds):
                    plan.file[(d, i, feed)] = kinds[pick]
            if d > start and rng.random() < f.file_rates.redelivered_file * len(DAILY_FEEDS):
                plan.redelivered[(d, i)] = DAILY_FEEDS[int(rng.integers(0, len(DAILY_FEEDS)))]
            if rng.random() < f.file_rates.unlisted_file * len(DAILY_FEEDS):
                plan.unlisted[(d, i)] = DAILY_FEEDS[int(rng.integers(0, len(DAILY_FEEDS)))]
    if f.ensure_every_kind:
        _force(plan, insts, dates, feeds_of, gen, seed, contracts)
    # No file faults inside an institution-day that is not delivered at all.
    for (d, i), kind in plan.institution.items():
        if kind == "missing_institution":
            for feed in feeds_of[d]:
                plan.file.pop((d, i, feed), None)
            plan.redelivered.pop((d, i), None)
            plan.unlisted.pop((d, i), None)
    for (d, i) in list(plan.redelivered):  # the source day must have been delivered
        if plan.institution.get((d - dt.timedelta(days=1), i)) == "missing_institution":
            del plan.redelivered[(d, i)]
    return plan


def _force(plan: FaultPlan, insts: pd.DataFrame, dates: list[dt.date],
           feeds_of: dict[dt.date, list[str]], gen: GeneratorParams, seed: int,
           contracts: Contracts) -> None:
    """Guarantee at least one of every kind, on deterministic targets (seed and dates only)."""
    start = dates[0]
    later = dates[1:]
    pick_rng = np.random.default_rng(np.random.SeedSequence([seed, 99]))
    tiers = insts["tier"].to_numpy()
    taken_days = set(plan.institution)

    def choose(candidates: list[Any]) -> Any:
        return candidates[int(pick_rng.integers(0, len(candidates)))] if candidates else None

    for kind in INSTITUTION_FAULT_KINDS:
        if kind in plan.institution.values():
            continue
        days = dates if kind == "late_institution" else later
        target = choose([(d, i) for d in days for i in range(len(insts))
                         if (d, i) not in taken_days and tiers[i] in ("township", "village")])
        if target:
            plan.institution[target] = kind
            taken_days.add(target)
    delivered = [(d, i) for d in dates for i in range(len(insts)) if (d, i) not in taken_days]
    for kind in IN_PLACE:
        if kind in plan.file.values():
            continue
        target = choose([(d, i, feed) for d, i in delivered for feed in feeds_of[d]
                         if (d, i, feed) not in plan.file
                         and kind in _file_kinds(insts.iloc[i], feed, gen, contracts)
                         and (feed != "chronic_followups" or tiers[i] != "municipal")])
        if target:
            plan.file[target] = kind
    if not plan.redelivered:
        # Prefer re-sending the first day's survey on a later day: same name, a day without one.
        target = choose([(d, i) for d, i in delivered if d in later and d - dt.timedelta(1) == start
                         and not is_survey_day(d, start)])
        if target:
            plan.redelivered[target] = SURVEY
    if not plan.unlisted:
        target = choose(delivered)
        if target:
            plan.unlisted[target] = "encounters"
    # Row faults on first-day registry snapshots of institutions able to carry each kind.
    for kind in ROW_FAULT_KINDS:
        target = choose([(start, i, "resident_registry") for d, i in delivered if d == start
                         and kind in _row_kinds(insts.iloc[i]["profile"], contracts)
                         and (start, i, "resident_registry") not in plan.file
                         and (start, i, "resident_registry") not in plan.forced_rows])
        if target:
            plan.forced_rows[target] = kind


# --------------------------------------------------------------------------------------------
# Writing one institution-day
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DayOutput:
    records: list[pd.DataFrame] = dataclasses.field(default_factory=list)
    faults: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    files: int = 0
    rows: Counter = dataclasses.field(default_factory=Counter)
    seconds: Counter = dataclasses.field(default_factory=Counter)  # per feed, and "generate"


def _fault(kind: str, day: dt.date, inst_id: str, feed: str | None, file: str | None,
           line: int | None, key: str | None, detail: str) -> dict[str, Any]:
    return {"kind": kind, "extract_date": day.isoformat(), "institution_id": inst_id,
            "feed": feed, "file": file, "line": line, "record_key": key, "detail": detail,
            "expected_handling": EXPECTED[kind]}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_institution_day(world: World, inst: int, day: dt.date, plan: FaultPlan,
                          contracts: Contracts, folder: Path, seed: int,
                          store: dict[tuple[dt.date, int, str], tuple[bytes, str, pd.DataFrame]],
                          out: DayOutput) -> None:
    """Generate, damage as planned, and write one institution's delivery for one day."""
    gen = world.params
    row = world.institutions.iloc[inst]
    inst_id, pname = row["institution_id"], row["profile"]
    profile = contracts.profiles[pname]
    gz = row["compression"] == "gzip"
    activity_day = day - dt.timedelta(days=gen.activity_lag_days)
    t0 = time.perf_counter()
    frames = {"resident_registry": registry_rows(world, inst, day, activity_day,
                                                 _rng(seed, day, inst, 1))}
    frames.update(clinical_rows(world, inst, activity_day, _rng(seed, day, inst, 2)))
    if is_survey_day(day, world.start):
        frames[SURVEY] = survey_row(world, inst, day, seed)
    out.seconds["generate"] += time.perf_counter() - t0
    folder.mkdir(parents=True, exist_ok=True)
    created = dt.datetime.fromisoformat(gen.output.xlsx_created)
    manifest_files: list[dict[str, Any]] = []
    written: dict[str, tuple[bytes, str, pd.DataFrame]] = {}

    for f_idx, (feed, frame) in enumerate(frames.items()):
        t_feed = time.perf_counter()
        contract = contracts.feed(feed)
        headers = list(contract.source_columns(pname).values())
        cols = format_frame(frame, contract, profile, gen.output.boolean_codes[pname])
        n = len(frame)
        file_fault = plan.file.get((day, inst, feed))
        ext = profile.extension + (".gz" if gz else "")
        fname = feed + ext
        keys = frame[contract.key[0]].astype(str).to_numpy(object)
        # Ground-truth lines are the file's own: physical line (CSV, JSONL) or sheet row (XLSX),
        # so the header, where there is one, is line 1 - as bronze's source_line.
        first_line = 1 if profile.format == "jsonl" else 2

        # Malformed rows (not in files that are damaged as a whole).
        line_faults: dict[int, str] = {}
        if file_fault is None and feed != SURVEY and n:
            rng = _rng(seed, day, inst, 10 + f_idx)
            for kind in _row_kinds(pname, contracts):
                k = rng.binomial(n, getattr(gen.faults.row_rates, kind))
                for i in rng.choice(n, size=min(k, n), replace=False):
                    line_faults.setdefault(int(i), kind)
            forced = plan.forced_rows.get((day, inst, feed))
            if forced and forced not in line_faults.values():
                free = [i for i in range(n) if i not in line_faults]
                if free:
                    line_faults[free[int(rng.integers(0, len(free)))]] = forced
        for i, kind in sorted(line_faults.items()):
            detail = apply_row_fault(cols, i, kind, contract, profile, pname)
            out.faults.append(_fault(kind, day, inst_id, feed, fname, i + first_line, keys[i],
                                     detail))

        # Serialise; some file faults change how.
        detail = ""
        write_profile = profile
        if file_fault == "renamed_column":
            renames = gen.faults.renamed_columns[pname]
            old = next(h for h in headers if h in renames)
            headers = [renames.get(h, h) for h in headers]
            detail = f"column {old} sent as {renames[old]}"
        if file_fault == "wrong_encoding":
            write_profile = dataclasses.replace(profile, encoding="utf-8")
            detail = f"sent in UTF-8 instead of {profile.encoding}"
        numeric = {c.name for c in contract.columns if c.form in ("integer", "decimal")}
        data = serialise(cols, headers, write_profile, line_faults, created, numeric)
        if gz:
            data = gzip_bytes(data, gen.output.gzip_level)
        manifest_files.append({"feed": feed, "file": fname, "rows": n, "sha256": _sha(data),
                               "bytes": len(data)})
        records = pd.DataFrame({
            "extract_date": day.isoformat(), "institution_id": inst_id, "feed": feed,
            "file": fname, "line": np.arange(first_line, n + first_line, dtype=np.int64),
            "record_key": keys,
            "person_key": pd.array(frame["_person_key"].to_numpy(), dtype="Int64"),
            "variations": frame["_variations"].fillna("").astype(str).to_numpy(object),
            "row_fault": pd.Series([line_faults.get(i) for i in range(n)], dtype=object),
            "file_fault": file_fault})
        written[feed] = (data, fname, records)
        if file_fault == "truncated_file":
            cut = max(1, int(len(data) * 0.6))
            data = data[:cut]
            detail = f"cut at byte {cut} of {manifest_files[-1]['bytes']}"
        elif file_fault == "zero_byte_file":
            data, detail = b"", "file is empty"
        elif file_fault == "half_written_gzip":
            data = data[: len(data) // 2]
            detail = "gzip stream cut in half"
        elif file_fault == "missing_file":
            detail = "listed in the manifest, not delivered"
        if file_fault != "missing_file":
            (folder / fname).write_bytes(data)
            out.files += 1
        if file_fault:
            out.faults.append(_fault(file_fault, day, inst_id, feed, fname, None, None, detail))
        out.records.append(records)
        out.rows[feed] += n
        out.seconds[feed] += time.perf_counter() - t_feed

    # Extra files: yesterday's file again (listed), a backup copy (not listed).
    if (day, inst) in plan.redelivered:
        feed = plan.redelivered[(day, inst)]
        src_day = day - dt.timedelta(days=1)
        src = store.get((src_day, inst, feed))
        if src is not None:
            data, src_name, src_records = src
            same_name = feed not in frames
            name = src_name if same_name else src_name.replace(feed, f"{feed}_{src_day:%Y%m%d}", 1)
            (folder / name).write_bytes(data)
            out.files += 1
            manifest_files.append({"feed": feed, "file": name, "rows": len(src_records),
                                   "sha256": _sha(data), "bytes": len(data)})
            out.records.append(src_records.assign(extract_date=day.isoformat(), file=name,
                                                  file_fault="redelivered_file"))
            out.faults.append(_fault("redelivered_file", day, inst_id, feed, name, None, None,
                                     f"same bytes as {src_day}/{inst_id}/{src_name}"))
    if (day, inst) in plan.unlisted:
        feed = plan.unlisted[(day, inst)]
        data, src_name, src_records = written[feed]
        name = src_name.replace(feed, f"{feed}_bak", 1)
        (folder / name).write_bytes(data)
        out.files += 1
        out.records.append(src_records.assign(file=name, file_fault="unlisted_file"))
        out.faults.append(_fault("unlisted_file", day, inst_id, feed, name, None, None,
                                 f"copy of {src_name}, not in the manifest"))
    for feed, value in written.items():
        if (day + dt.timedelta(days=1), inst) in plan.redelivered:
            store[(day, inst, feed)] = value

    manifest = {"institution_id": inst_id, "extract_date": day.isoformat(), "profile": pname,
                "files": manifest_files}
    (folder / "_manifest.json").write_bytes(manifest_bytes(manifest))
    out.files += 1


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)


def build_world(settings: Settings, residents: int, start: dt.date, seed: int
                ) -> tuple[World, pd.DataFrame]:
    """The city, its people and every institution's records as of ``start``."""
    city, gen = load_params(settings)
    areas = build_areas(city, seed)
    insts = build_institutions(city, areas, residents, seed)
    persons = build_population(city, areas, residents, seed, start)
    reg = build_registrations(city, gen.registrations, persons, insts, seed,
                              np.datetime64(start, "D"))
    offsets = np.searchsorted(reg["inst"].to_numpy(), np.arange(len(insts) + 1))
    persons["primary_institution_id"] = None
    prim = reg[reg["primary"].to_numpy()].drop_duplicates("person_key")
    persons.loc[prim["person_key"].to_numpy(), "primary_institution_id"] = (
        insts["institution_id"].to_numpy()[prim["inst"].to_numpy()])
    world = World(persons=persons, institutions=insts, registrations=reg, reg_offsets=offsets,
                  params=gen, start=start,
                  daily_visits=residents * gen.activity.visits_per_resident_year / 365.0,
                  town_residents={str(k): v.to_numpy() for k, v in
                                  persons.groupby("town_code").groups.items()})
    return world, areas


def generate(settings: Settings, *, residents: int | None = None, full_city: bool = False,
             start_date: dt.date | None = None, days: int | None = None,
             seed: int | None = None) -> dict[str, Any]:
    """Generate ``days`` daily extracts of the synthetic city; return a summary.

    Defaults come from conf (generator.yaml); ``full_city`` uses the census population and, unless
    ``days`` is given, one day. Re-running with the same arguments rewrites the same bytes: each
    generated date's landing and late-delivery folders are replaced, not merged. Landing, late
    deliveries and ground truth hold identifiers: their roots are made 0700 first and every
    file is written readable by its owner only (:func:`jobs.operations.private_files`).
    """
    with private_files(settings):
        return _generate(settings, residents=residents, full_city=full_city,
                         start_date=start_date, days=days, seed=seed)


def _generate(settings: Settings, *, residents: int | None, full_city: bool,
              start_date: dt.date | None, days: int | None, seed: int | None
              ) -> dict[str, Any]:
    t0 = time.perf_counter()
    city, gen = load_params(settings)
    contracts = load_contracts()
    n = city.population.full_city_residents if full_city else (residents or gen.residents)
    n_days = days if days is not None else (1 if full_city else gen.days)
    start = start_date or gen.start
    seed = gen.seed if seed is None else seed
    dates = [start + dt.timedelta(days=k) for k in range(n_days)]

    world, areas = build_world(settings, n, start, seed)
    insts = world.institutions
    t_world = time.perf_counter() - t0
    plan = plan_faults(insts, dates, gen, seed, contracts)

    landing, late_root = settings.landing_root, settings.late_deliveries_root
    truth, ref = settings.ground_truth_root, settings.reference_root
    _write_reference(ref, areas, insts, world.persons)
    _write_parquet(world.persons, truth / "persons.parquet")
    _write_parquet(true_population(world.persons), truth / "population.parquet")

    store: dict[tuple[dt.date, int, str], tuple[bytes, str, pd.DataFrame]] = {}
    total = DayOutput()
    for day in dates:
        for root in (landing, late_root):
            shutil.rmtree(root / day.isoformat(), ignore_errors=True)
        out = DayOutput()
        for i, inst_id in enumerate(insts["institution_id"]):
            kind = plan.institution.get((day, i))
            if kind == "missing_institution":
                out.faults.append(_fault(kind, day, inst_id, None, None, None, None,
                                         "no delivery this day"))
                continue
            root = late_root if kind == "late_institution" else landing
            if kind:
                out.faults.append(_fault(kind, day, inst_id, None, None, None, None,
                                         f"held back in {late_root.name}/{day}/{inst_id}"))
            write_institution_day(world, i, day, plan, contracts, root / day.isoformat() / inst_id,
                                  seed, store, out)
        records = pd.concat(out.records, ignore_index=True)
        faults = pd.DataFrame(out.faults, columns=list(_fault("late_institution", day, "", None,
                                                              None, None, None, "")))
        faults["line"] = faults["line"].astype("Int64")
        _write_parquet(records, truth / "records" / f"records_{day}.parquet")
        _write_parquet(faults, truth / "faults" / f"faults_{day}.parquet")
        total.files += out.files
        total.rows.update(out.rows)
        total.seconds.update(out.seconds)
        total.faults.extend(out.faults)
        for k in [k for k in store if k[0] < day]:
            del store[k]

    elapsed = time.perf_counter() - t0
    return {
        "residents": n, "institutions": len(insts), "seed": seed,
        "dates": [d.isoformat() for d in dates], "files": total.files,
        "rows": dict(sorted(total.rows.items())),
        "faults": dict(sorted(Counter(f["kind"] for f in total.faults).items())),
        "paths": {"landing": str(landing), "late_deliveries": str(late_root),
                  "ground_truth": str(truth), "reference": str(ref)},
        "seconds": {"world": round(t_world, 2), "total": round(elapsed, 2),
                    **{k: round(v, 2) for k, v in sorted(total.seconds.items())}},
    }


def _write_reference(ref: Path, areas: pd.DataFrame, insts: pd.DataFrame,
                     persons: pd.DataFrame) -> None:
    """What the bureau holds: area codes, the institution register, official population."""
    ref.mkdir(parents=True, exist_ok=True)
    districts = areas.drop_duplicates("district_code")
    towns = areas.drop_duplicates("town_code")
    rows = ([{"level": "district", "code": r.district_code, "name": r.district_name,
              "parent_code": "440400", "district_code": r.district_code, "zone": ""}
             for r in districts.itertuples()]
            + [{"level": "town", "code": r.town_code, "name": r.town_name,
                "parent_code": r.district_code, "district_code": r.district_code, "zone": r.zone}
               for r in towns.itertuples()]
            + [{"level": "community", "code": r.community_code, "name": r.community_name,
                "parent_code": r.town_code, "district_code": r.district_code, "zone": r.zone}
               for r in areas.itertuples()])
    pd.DataFrame(rows).to_csv(ref / "areas.csv", index=False, encoding="utf-8")
    inst = insts.rename(columns={"district_code": "district", "town_name": "town"})
    inst[["institution_id", "name", "tier", "profile", "compression", "district", "town",
          "area_code"]].to_csv(ref / "institutions.csv", index=False, encoding="utf-8")
    pop = (persons.groupby(["district_code", "district_name", "age_band", "sex"], observed=True)
           .size().rename("population").reset_index())
    pop.to_csv(ref / "population.csv", index=False, encoding="utf-8")


def deliver_late(settings: Settings, extract_date: dt.date | str) -> list[Path]:
    """Move the held-back deliveries of ``extract_date`` into the landing zone.

    Returns the institution folders now in landing. An existing landing folder of the same
    institution and date is replaced (the late delivery is the institution's whole extract).
    """
    day = extract_date if isinstance(extract_date, str) else extract_date.isoformat()
    src_root = settings.late_deliveries_root / day
    if not src_root.is_dir():
        return []
    with private_files(settings):
        return _move_late(src_root, settings.landing_root / day)


def _move_late(src_root: Path, landing_day: Path) -> list[Path]:
    moved: list[Path] = []
    for src in sorted(p for p in src_root.iterdir() if p.is_dir()):
        dst = landing_day / src.name
        if dst.exists():
            shutil.rmtree(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dst))
        moved.append(dst)
    if not any(src_root.iterdir()):
        src_root.rmdir()
    return moved
