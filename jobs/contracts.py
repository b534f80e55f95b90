"""Feed contracts (schemas/*.yaml): canonical columns and how each source profile sends them.

A contract change is a file change: the generator writes and ingest reads through these objects,
so a renamed source column is edited in one YAML file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml

from jobs.config import PROJECT_ROOT, ConfigError, build_dataclass

SCHEMAS_DIR = PROJECT_ROOT / "schemas"

Form = Literal["text", "enum", "id_number", "sex", "date", "timestamp", "phone", "area_code",
               "icd10", "integer", "decimal", "boolean"]


@dataclass(frozen=True)
class SourceProfile:
    """How one kind of institution delivers files."""

    description: str
    format: Literal["jsonl", "csv", "xlsx"]
    extension: str
    date_format: str
    timestamp_format: str
    sex_codes: dict[str, Literal["male", "female", "unknown"]]
    encoding: str = "utf-8"
    delimiter: str = ","
    compression: list[Literal["none", "gzip"]] = field(default_factory=lambda: ["none"])
    # A file above this size is quarantined unread (F_OVERSIZED): a whole database dumped by
    # mistake must not take an executor's memory.
    max_file_mib: int = 1024

    def code_for_sex(self, sex: str) -> str:
        """The first source code that means ``sex`` ('male', 'female', 'unknown')."""
        return next(code for code, meaning in self.sex_codes.items() if meaning == sex)


@dataclass(frozen=True)
class Column:
    name: str
    required: bool
    form: Form
    sources: dict[str, str]
    description: str = ""
    values: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FeedContract:
    feed: str
    title: str
    description: str
    key: list[str]
    columns: list[Column]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def source_columns(self, profile: str) -> dict[str, str]:
        """Canonical name -> the header this profile sends, in contract order."""
        return {c.name: c.sources[profile] for c in self.columns}


@dataclass(frozen=True)
class Contracts:
    profiles: dict[str, SourceProfile]
    feeds: dict[str, FeedContract]

    def feed(self, name: str) -> FeedContract:
        try:
            return self.feeds[name]
        except KeyError:
            raise ConfigError(f"no contract for feed {name!r} in {SCHEMAS_DIR}") from None


def _load_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


@lru_cache(maxsize=4)
def load_contracts(schemas_dir: str | Path = SCHEMAS_DIR) -> Contracts:
    """Read sources.yaml and every feed contract; check each column names every profile."""
    schemas_dir = Path(schemas_dir)
    src = _load_yaml(schemas_dir / "sources.yaml")
    profiles = build_dataclass(dict[str, SourceProfile], src.get("profiles", {}), "profiles",
                               {"profiles": str(schemas_dir / "sources.yaml")})
    feeds: dict[str, FeedContract] = {}
    for path in sorted(schemas_dir.glob("*.yaml")):
        if path.name == "sources.yaml":
            continue
        contract = build_dataclass(FeedContract, _load_yaml(path), "", {"": str(path)})
        for col in contract.columns:
            missing = sorted(set(profiles) - set(col.sources))
            extra = sorted(set(col.sources) - set(profiles))
            if missing or extra:
                raise ConfigError(
                    f"{path}: column {col.name!r}: sources must name exactly the profiles "
                    f"{sorted(profiles)} (missing {missing}, unknown {extra})")
        if path.stem != contract.feed:
            raise ConfigError(f"{path}: feed {contract.feed!r} must match the file name")
        feeds[contract.feed] = contract
    return Contracts(profiles=profiles, feeds=feeds)


UNRECOGNISED = "unrecognised"  # the pseudo-feed of landed files that match no feed contract


def feed_choices(contracts: Contracts | None = None) -> list[str]:
    """The feeds an ingest run can be cut to (``healthlake ingest --feed``, one daily-DAG task
    each): every feed of schemas/, then ``unrecognised``."""
    return [*sorted((contracts or load_contracts()).feeds), UNRECOGNISED]


def check_feeds(feeds: list[str], contracts: Contracts | None = None) -> None:
    """A ConfigError naming the choices when ``feeds`` is empty or names no known feed."""
    choices = feed_choices(contracts)
    unknown = sorted(set(feeds) - set(choices))
    if unknown or not feeds:
        raise ConfigError(f"unknown feed(s) {unknown}: choose from {', '.join(choices)}")
