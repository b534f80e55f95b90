"""Plan one extract date: which landed files to read, and what the manifests say is wrong.

Pure Python over the landing folder (no Spark): for every institution folder of
``landing/<date>/`` it reads ``_manifest.json``, hashes every file, and classifies it as listed,
unlisted, missing (listed but never arrived: recorded as missing, never as zero rows) or a
duplicate (same sha256 as another file, whatever its name).
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from jobs.contracts import Contracts
from jobs.ingest.readers import LandedFile

MANIFEST = "_manifest.json"


@dataclass(frozen=True)
class Institution:
    institution_id: str
    tier: str
    profile: str


@dataclass
class PlannedFile:
    """A file (present or not) and what ingest will do with it."""

    landed: LandedFile
    sha256: str | None           # None when the file is missing
    n_bytes: int | None
    status: str                  # to_read | missing | duplicate | no_manifest | unknown_feed
    message: str = ""
    duplicate_of: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """Order that decides which copy of a duplicated file is the one loaded."""
        return (self.landed.extract_date, self.landed.source_file)


@dataclass
class DayPlan:
    extract_date: str
    files: list[PlannedFile] = field(default_factory=list)
    institutions: list[str] = field(default_factory=list)

    def to_read(self) -> list[PlannedFile]:
        return [p for p in self.files if p.status == "to_read"]


def load_institutions(reference_root: Path) -> dict[str, Institution]:
    """The bureau's institution register (reference/institutions.csv), if present."""
    path = reference_root / "institutions.csv"
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for r in rows:
        iid = r.get("institution_id") or r.get("id")
        out[iid] = Institution(iid, r.get("tier", "unknown"), r.get("profile", ""))
    return out


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def feed_of(file_name: str, feeds: list[str]) -> str | None:
    """The feed a file belongs to, from its name (longest feed name it starts with)."""
    matches = [f for f in feeds if file_name.startswith(f)]
    return max(matches, key=len) if matches else None


def plan_day(landing_root: Path, extract_date: str, contracts: Contracts,
             institutions: dict[str, Institution]) -> DayPlan:
    """Classify every file of ``landing/<extract_date>/``; no file is read beyond hashing."""
    day_dir = landing_root / extract_date
    plan = DayPlan(extract_date)
    if not day_dir.is_dir():
        return plan
    feeds = sorted(contracts.feeds)
    for inst_dir in sorted(p for p in day_dir.iterdir() if p.is_dir()):
        iid = inst_dir.name
        plan.institutions.append(iid)
        manifest_path = inst_dir / MANIFEST
        manifest = _read_manifest(manifest_path)
        ref = institutions.get(iid)
        profile = (ref.profile if ref and ref.profile else None) or (manifest or {}).get("profile")
        tier = ref.tier if ref else (manifest or {}).get("tier", "unknown")
        listed = {e["file"]: e for e in (manifest or {}).get("files", [])}
        present = sorted(p for p in inst_dir.iterdir() if p.is_file() and p.name != MANIFEST)
        for path in present:
            entry = listed.get(path.name)
            feed = entry["feed"] if entry else feed_of(path.name, feeds)
            landed = LandedFile(
                path=str(path), source_file=str(path.relative_to(landing_root)), feed=feed or "",
                institution_id=iid, tier=tier, profile=profile or "", extract_date=extract_date,
                manifest_rows=entry.get("rows") if entry else None,
                manifest_sha256=entry.get("sha256") if entry else None,
                listed=entry is not None)
            planned = PlannedFile(landed, sha256_of(path), path.stat().st_size, "to_read")
            if manifest is None:
                planned.status = "no_manifest"
                planned.message = f"{iid} has not delivered {MANIFEST} yet (or it is unreadable)"
            elif feed is None or feed not in contracts.feeds:
                planned.status = "unknown_feed"
                planned.message = f"{path.name} matches no feed contract ({', '.join(feeds)})"
            elif not profile or profile not in contracts.profiles:
                planned.status = "unknown_feed"
                planned.message = f"{iid} has no known source profile ({profile!r})"
            plan.files.append(planned)
        for name, entry in sorted(listed.items()):
            if not (inst_dir / name).is_file():
                landed = LandedFile(
                    path=str(inst_dir / name), source_file=str((inst_dir / name).relative_to(
                        landing_root)), feed=entry.get("feed", ""), institution_id=iid, tier=tier,
                    profile=profile or "", extract_date=extract_date,
                    manifest_rows=entry.get("rows"), manifest_sha256=entry.get("sha256"))
                plan.files.append(PlannedFile(
                    landed, None, None, "missing",
                    f"listed in {MANIFEST} ({entry.get('rows')} rows) but never arrived"))
    _mark_duplicates_within_day(plan)
    return plan


def _read_manifest(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), list) else None


def _may_duplicate(p: PlannedFile) -> bool:
    """Only listed files with data rows count: header-only files are byte-identical across days
    and institutions, and an unlisted file is reported as unlisted whatever its bytes."""
    return p.landed.listed and (p.landed.manifest_rows is None or p.landed.manifest_rows > 0)


def _mark_duplicates_within_day(plan: DayPlan) -> None:
    first: dict[str, PlannedFile] = {}
    for p in sorted(filter(_may_duplicate, plan.to_read()), key=lambda p: p.key):
        if p.sha256 in first:
            p.status = "duplicate"
            p.duplicate_of = first[p.sha256].landed.source_file
            p.message = f"same sha256 as {p.duplicate_of}: already delivered, not loaded again"
        else:
            first[p.sha256] = p


def mark_duplicates_of_loaded(plan: DayPlan, loaded: dict[str, tuple[str, str]]
                              ) -> dict[str, str]:
    """Apply what earlier runs loaded (sha256 -> (extract_date, source_file)).

    A file whose bytes were loaded from an *earlier* place is a duplicate. When this day holds the
    earlier copy (days run out of order), the later copy must give way: its sha256 is returned,
    with this day's file, so the job removes those rows from the later day and this day's copy
    becomes the one loaded.
    """
    superseded = {}
    for p in filter(_may_duplicate, plan.to_read()):
        other = loaded.get(p.sha256)
        if other is None or other == p.key:
            continue
        if other < p.key:
            p.status = "duplicate"
            p.duplicate_of = other[1]
            p.message = f"same sha256 as {other[1]} (loaded for {other[0]}): not loaded again"
        else:
            superseded[p.sha256] = p.landed.source_file
    return superseded
