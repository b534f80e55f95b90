"""Layered, typed, validated configuration.

Precedence (last wins): ``conf/base/*.yaml`` (committed) < ``conf/local/*.yaml`` (git-ignored) <
``HEALTHLAKE_<SECTION>__<KEY>...`` environment variables. Every file contributes top-level
sections (``paths``, ``spark``, ``tables`` ...); the merged mapping is turned into frozen
dataclasses. An unknown key, a wrong type or a missing value raises :class:`ConfigError` naming
the key and the file (or environment variable) it came from, so a typo never passes silently.

Secrets are never values in configuration, only references (an environment variable or a file),
resolved on demand by :meth:`Settings.secret`; a missing or empty secret is an error.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# A location with a scheme (hdfs://namenode/lake, s3a://bucket/lake, file:///srv/lake).
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
ENV_PREFIX = "HEALTHLAKE_"


class ConfigError(ValueError):
    """A configuration problem, with the key and the file that caused it."""


# --------------------------------------------------------------------------------------------
# Typed settings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathsSettings:
    """Where things live. Relative paths are taken from the project root."""

    landing_root: str
    ground_truth_root: str
    late_deliveries_root: str
    reference_root: str
    cache_root: str
    # A zone root is a local (or mounted) directory, or a URI Spark and Delta open (hdfs://,
    # s3a://, abfss://, gs://, file://).
    zones: dict[str, str]
    # The local side of a zone addressed by URI (its writer lock, Great Expectations project,
    # staged reads): local_state/<zone>. A zone on a local directory keeps them inside it.
    local_state: str = "data/local-state"


@dataclass(frozen=True)
class SparkSettings:
    """How the single SparkSession of a process is built."""

    master: str = "local[*]"
    app_name: str = "healthlake"
    jars_dir: str = ".cache/jars"
    delta_packages: list[str] = field(default_factory=list)
    conf: dict[str, str] = field(default_factory=dict)
    # Where Spark and Splink checkpoint (entity resolution's clustering): empty for a per-run
    # folder under the restricted zone (the default, removed when the run ends); else a folder
    # (or URI) inside the restricted zone, e.g. shared storage on a cluster.
    checkpoint_dir: str = ""


@dataclass(frozen=True)
class SecretRef:
    """Where a secret is read from: an environment variable, else a file. Never the value."""

    env: str | None = None
    file: str | None = None


@dataclass(frozen=True)
class TableSpec:
    """One catalogued Delta table: its zone, its path under the zone root, its partitioning."""

    zone: str
    path: str
    description: str
    partition_by: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Settings:
    """The whole validated configuration of one run."""

    timezone: str
    paths: PathsSettings
    spark: SparkSettings
    secrets: dict[str, SecretRef]
    tables: dict[str, TableSpec]
    city: dict[str, Any]
    generator: dict[str, Any]
    # Silver standardisation rules (conf/base/silver.yaml), validated by jobs.silver.params.
    silver: dict[str, Any] = field(default_factory=dict)
    # Entity resolution (conf/base/matching.yaml), validated by jobs.silver.resolve.
    matching: dict[str, Any] = field(default_factory=dict)
    # The gold metric catalogue and its standard population (conf/base/metrics.yaml), validated
    # by jobs.gold.catalogue.
    metrics: dict[str, Any] = field(default_factory=dict)
    standard_population: dict[str, Any] = field(default_factory=dict)
    # The informatization index (conf/base/index.yaml), validated by jobs.gold.index.
    index: dict[str, Any] = field(default_factory=dict)
    # Airflow orchestration (conf/base/orchestration.yaml), validated by jobs.orchestration.
    orchestration: dict[str, Any] = field(default_factory=dict)
    # Data-quality checks (conf/base/quality.yaml; suites in quality/), validated by
    # jobs.quality.spec.
    quality: dict[str, Any] = field(default_factory=dict)
    # Exports, report, SQL access (conf/base/publish.yaml), validated by jobs.publish.settings.
    publish: dict[str, Any] = field(default_factory=dict)
    # A Spark standalone cluster on loopback (conf/base/cluster.yaml), validated by jobs.cluster.
    cluster: dict[str, Any] = field(default_factory=dict)
    # The writer lock, zone permissions and the audit log (conf/base/operations.yaml),
    # validated by jobs.operations.
    operations: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    # Values of the environment variables that secrets reference, captured at load time.
    secret_env: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    # -- derived lookups ------------------------------------------------------------------
    def path(self, relative: str) -> Path:
        """Resolve a configured path: absolute as is, relative from the project root."""
        p = Path(os.path.expanduser(relative))
        return p if p.is_absolute() else PROJECT_ROOT / p

    @property
    def landing_root(self) -> Path:
        return self.path(self.paths.landing_root)

    @property
    def ground_truth_root(self) -> Path:
        return self.path(self.paths.ground_truth_root)

    @property
    def late_deliveries_root(self) -> Path:
        return self.path(self.paths.late_deliveries_root)

    @property
    def reference_root(self) -> Path:
        return self.path(self.paths.reference_root)

    def zone_is_uri(self, zone: str) -> bool:
        return bool(URI.match(self.paths.zones[zone]))

    def zone_location(self, zone: str) -> str:
        """Where a zone's tables are, as Spark and Delta open it: the configured URI, or the
        local directory's absolute path."""
        root = self.paths.zones[zone]
        return root.rstrip("/") if URI.match(root) else str(self.path(root))

    def zone_root(self, zone: str) -> Path:
        """A zone on a local or mounted file system: its directory."""
        if self.zone_is_uri(zone):
            raise ConfigError(f"zone {zone} is at {self.zone_location(zone)}, not a local "
                              "directory: use zone_location (tables) or local_dir (local state)")
        return self.path(self.paths.zones[zone])

    def local_dir(self, zone: str) -> Path:
        """Where a zone's local state lives (writer lock, Great Expectations project, staged
        reads): the zone's own directory, or local_state/<zone> for a zone addressed by URI."""
        if self.zone_is_uri(zone):
            return self.path(self.paths.local_state) / zone
        return self.zone_root(zone)

    def table(self, name: str) -> TableSpec:
        try:
            return self.tables[name]
        except KeyError:
            known = ", ".join(sorted(self.tables))
            raise ConfigError(f"unknown table {name!r}; the catalogue has: {known}") from None

    def table_location(self, name: str) -> str:
        """Where a catalogued table is, as Spark and Delta open it (a URI or a local path)."""
        spec = self.table(name)
        return f"{self.zone_location(spec.zone)}/{spec.path}"

    def table_path(self, name: str) -> Path:
        """A catalogued table's directory, for a zone on a local or mounted file system."""
        spec = self.table(name)
        return self.zone_root(spec.zone) / spec.path

    def written_roots(self) -> dict[str, Path]:
        """Every local folder the pipeline writes or publishes to, by what it is: the zones'
        directories (and their local state), landing, late deliveries, ground truth, reference
        data, the cache (jars, checkpoints, Airflow's home, Data Docs assets), the Spark
        warehouse, exports and reports. A secret's file must live in none of them; the privacy
        scan looks through all of them."""
        roots = {"landing": self.landing_root, "late_deliveries": self.late_deliveries_root,
                 "ground_truth": self.ground_truth_root, "reference": self.reference_root,
                 "cache": self.path(self.paths.cache_root),
                 "local_state": self.path(self.paths.local_state)}
        for zone in self.paths.zones:
            roots[f"zone {zone}"] = self.local_dir(zone)
        if self.spark.checkpoint_dir and not URI.match(self.spark.checkpoint_dir):
            roots["checkpoints"] = self.path(self.spark.checkpoint_dir)
        warehouse = self.spark.conf.get("spark.sql.warehouse.dir")
        if warehouse and not URI.match(warehouse):
            roots["spark_warehouse"] = self.path(warehouse)
        # Other modules' sections, read raw (their validators import this module).
        for key in ("exports_root", "reports_root"):
            if isinstance(self.publish.get(key), str):
                roots[key.removesuffix("_root")] = self.path(self.publish[key])
        local_airflow = self.orchestration.get("local_airflow")
        if isinstance(local_airflow, dict) and isinstance(local_airflow.get("home"), str):
            roots["airflow_home"] = self.path(local_airflow["home"])
        return roots

    def secret(self, name: str) -> str:
        """Read a secret through its reference; missing, empty or shorter than
        ``SECRET_MIN_BYTES`` is an error, never a weak key. A file must be private to its owner
        and outside every folder the pipeline writes (:meth:`written_roots`)."""
        key = f"secrets.{name}"
        ref = self.secrets.get(name)
        if ref is None:
            raise ConfigError(f"secret {name!r} is not configured (no key {key} in conf/)")
        where = self.origins.get(key, "configuration")
        if ref.env and self.secret_env.get(ref.env, "").strip():
            return _long_enough(self.secret_env[ref.env].strip(),
                                f"environment variable {ref.env}", key, where)
        if ref.file:
            p = self.path(ref.file)
            if p.is_file():
                self._check_secret_file(p, key, where)
                if value := p.read_text(encoding="utf-8").strip():
                    return _long_enough(value, f"file {p}", key, where)
        places = [ref.env and f"environment variable {ref.env}", ref.file and f"file {ref.file}"]
        tried = " or ".join(x for x in places if x)
        raise ConfigError(f"secret {name!r} is missing or empty: set {tried} ({key} in {where})")

    def _check_secret_file(self, path: Path, key: str, where: str) -> None:
        """A secret's file is the pipeline user's alone and lives outside everything the
        pipeline writes or publishes, where jobs, backups, exports or analysts could read it."""
        real = path.resolve()
        roots = sorted(self.written_roots().items(), key=lambda r: -len(r[1].resolve().parts))
        for what, root in roots:  # the innermost first: the message names the nearest folder
            if real.is_relative_to(root.resolve()):
                place = "inside the lake" if what.startswith("zone ") else "inside a folder " \
                    "the pipeline writes"
                raise ConfigError(f"secret file {path} is {place} ({what}: {root}); keep it "
                                  f"outside every zone, landing, cache, export and report "
                                  f"folder ({key} in {where})")
        if real.stat().st_mode & 0o077:
            raise ConfigError(f"secret file {path} can be read by other users (mode "
                              f"{real.stat().st_mode & 0o777:o}): chmod 600 it ({key} in {where})")


# A key shorter than this is refused from any source: an HMAC key of a few characters can be
# guessed, and with it every person id recomputed from an identity number.
SECRET_MIN_BYTES = 32


def _long_enough(value: str, source: str, key: str, where: str) -> str:
    size = len(value.encode("utf-8"))
    if size < SECRET_MIN_BYTES:
        raise ConfigError(f"secret from {source} is {size} bytes; at least {SECRET_MIN_BYTES} "
                          f"are required (e.g. `python -c \"import secrets; "
                          f"print(secrets.token_hex(32))\"`) ({key} in {where})")
    return value


# --------------------------------------------------------------------------------------------
# Loading and merging
# --------------------------------------------------------------------------------------------


def load_settings(conf_dir: str | Path | None = None,
                  environ: dict[str, str] | None = None) -> Settings:
    """Load conf/base, then conf/local, then environment variables, and validate.

    ``conf_dir`` defaults to ``$HEALTHLAKE_CONF_DIR`` or ``<project>/conf``.
    """
    environ = dict(os.environ if environ is None else environ)
    conf_root = Path(conf_dir or environ.get("HEALTHLAKE_CONF_DIR") or PROJECT_ROOT / "conf")
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    base = conf_root / "base"
    if not base.is_dir():
        raise ConfigError(f"configuration folder {base} does not exist")
    for layer in (base, conf_root / "local"):
        for file in sorted(layer.glob("*.yaml")) if layer.is_dir() else []:
            data = _read_yaml(file)
            _merge(merged, data, origins, _rel(file), prefix="")
    _merge(merged, _from_environment(environ), origins, None, prefix="")
    for internal in ("origins", "secret_env"):
        if internal in merged:
            _fail(internal, origins, "unknown key (internal to the loader)")
    settings = _build(Settings, {**merged, "origins": origins}, "", origins)
    wanted = {ref.env for ref in settings.secrets.values() if ref.env}
    return dataclasses.replace(
        settings, secret_env={k: v for k, v in environ.items() if k in wanted})


def _rel(file: Path) -> str:
    try:
        return str(file.relative_to(PROJECT_ROOT))
    except ValueError:
        return str(file)


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{_rel(file)}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{_rel(file)}: the top level must be a mapping of sections")
    return data


def _from_environment(environ: dict[str, str]) -> dict[str, Any]:
    """``HEALTHLAKE_SPARK__MASTER=x`` -> {"spark": {"master": x}} for known top-level sections."""
    sections = {f.name for f in dataclasses.fields(Settings)} - {"origins"}
    out: dict[str, Any] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        if parts[0] not in sections:
            continue  # e.g. HEALTHLAKE_HMAC_KEY, HEALTHLAKE_CONF_DIR: not configuration keys
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if isinstance(child, _EnvValue) and isinstance(child.value, dict):
                # HEALTHLAKE_SPARK__CONF='{...}' and HEALTHLAKE_SPARK__CONF__X=...: both apply.
                child = node[part] = {k: _EnvValue(child.variable, v)
                                      for k, v in child.value.items()}
            node = child
            if not isinstance(node, dict):
                raise ConfigError(
                    f"environment variable {name} sets a key under "
                    f"{'.'.join(parts[:i + 1])}, which another variable sets whole: use one")
        node[parts[-1]] = _EnvValue(name, yaml.safe_load(raw) if raw != "" else "")
    return out


@dataclass(frozen=True)
class _EnvValue:
    variable: str
    value: Any


def _merge(into: dict[str, Any], new: dict[str, Any], origins: dict[str, str], source: str | None,
           prefix: str) -> None:
    for key, value in new.items():
        if not isinstance(key, str):
            where = prefix or "the top level"
            raise ConfigError(f"{source}: key {key!r} under {where} is not text")
        if key not in into:
            # Environment variable names are upper case: HEALTHLAKE_SPARK__CONF__SPARK.
            # DATABRICKS.DELTA.SNAPSHOTPARTITIONS sets the existing spark.databricks.delta.
            # snapshotPartitions. (A new case-sensitive key goes in as a mapping:
            # HEALTHLAKE_SPARK__CONF='{spark.driver.extraJavaOptions: ...}'.)
            key = next((k for k in into if isinstance(k, str) and k.lower() == key.lower()), key)
        dotted = f"{prefix}{key}"
        src = source
        if isinstance(value, _EnvValue):
            src, value = f"environment variable {value.variable}", value.value
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            origins.setdefault(dotted, src or "")
            _merge(into[key], value, origins, src, prefix=f"{dotted}.")
        else:
            into[key] = _strip_env(value)
            origins[dotted] = src or ""
            _record_origins(value, dotted, src or "", origins)


def _strip_env(value: Any) -> Any:
    if isinstance(value, _EnvValue):
        return value.value
    if isinstance(value, dict):
        return {k: _strip_env(v) for k, v in value.items()}
    return value


def _record_origins(value: Any, dotted: str, source: str, origins: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, _EnvValue):
                origins[f"{dotted}.{k}"] = f"environment variable {v.variable}"
            else:
                origins[f"{dotted}.{k}"] = source
                _record_origins(v, f"{dotted}.{k}", source, origins)


# --------------------------------------------------------------------------------------------
# Typed building
# --------------------------------------------------------------------------------------------


def origin_of(key: str, origins: dict[str, str]) -> str:
    """The file or environment variable a dotted key (or its nearest parent) came from."""
    probe = re.sub(r"(\[\d+\])+$", "", key)  # an item of a list came with its list
    while probe:
        if origins.get(probe):
            return origins[probe]
        probe = re.sub(r"(\[\d+\])+$", "", probe.rpartition(".")[0])
    return "configuration"


def require(ok: bool, key: str, origins: dict[str, str], message: str) -> None:
    """A cross-field check for other modules' configuration sections, with the same message."""
    if not ok:
        _fail(key, origins, message)


def _fail(key: str, origins: dict[str, str], message: str) -> typing.NoReturn:
    raise ConfigError(f"{origin_of(key, origins)}: key {key!r}: {message}")


def build_dataclass(cls: type, data: Any, key: str = "", origins: dict[str, str] | None = None):
    """Turn a mapping into the frozen dataclass ``cls``, checking keys and types recursively.

    Public so that other modules (the generator's parameters, the matching settings) validate
    their own configuration sections with the same rules and messages.
    """
    return _build(cls, data, key, origins or {})


def _build(tp: Any, value: Any, key: str, origins: dict[str, str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    label = key or "top level"
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            _fail(label, origins, f"expected a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            where = f"{key}.{unknown[0]}" if key else unknown[0]
            _fail(where, origins, f"unknown key (allowed here: {', '.join(sorted(fields))})")
        kwargs = {}
        for name, f in fields.items():
            sub = f"{key}.{name}" if key else name
            if name in value:
                kwargs[name] = value[name] if name == "origins" else _build(
                    hints[name], value[name], sub, origins)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                _fail(sub, origins, "required key is missing")
        return tp(**kwargs)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _build(arg, value, key, origins)
            except ConfigError as exc:
                errors.append(str(exc))
        _fail(label, origins, f"value {value!r} does not fit {tp}")
    if origin is Literal:
        if value not in args:
            _fail(label, origins, f"must be one of {list(args)}, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            _fail(label, origins, f"expected a mapping, got {type(value).__name__}")
        kt, vt = args or (str, Any)
        return {_build(kt, k, key, origins): _build(vt, v, f"{key}.{k}", origins)
                for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            _fail(label, origins, f"expected a list, got {type(value).__name__}")
        (it,) = args or (Any,)
        return [_build(it, v, f"{key}[{i}]", origins) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            _fail(label, origins, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(label, origins, f"expected a whole number, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(label, origins, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. spark.sql.shuffle.partitions: 4
        if not isinstance(value, str):
            _fail(label, origins, f"expected text, got {type(value).__name__}")
        return value
    raise TypeError(f"unsupported configuration type {tp!r} at {label}")


def validate(settings: Settings) -> Settings:
    """Cross-field checks that types alone cannot express."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(settings.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        _fail("timezone", settings.origins, f"unknown time zone {settings.timezone!r}")
    for name, spec in settings.tables.items():
        layer = name.partition(".")[0]
        if "." not in name or not layer:
            _fail(f"tables.{name}", settings.origins, "table names are '<layer>.<table>'")
        if spec.zone not in settings.paths.zones:
            zones = ", ".join(settings.paths.zones)
            _fail(f"tables.{name}.zone", settings.origins,
                  f"zone {spec.zone!r} is not one of paths.zones ({zones})")
    for name, ref in settings.secrets.items():
        if not (ref.env or ref.file):
            _fail(f"secrets.{name}", settings.origins, "a secret needs 'env' or 'file'")
    checkpoints = settings.spark.checkpoint_dir
    if checkpoints and "restricted" in settings.paths.zones:
        if not _is_inside(checkpoints, settings, "restricted"):
            _fail("spark.checkpoint_dir", settings.origins,
                  f"checkpoints hold identifiers: put them inside the restricted zone "
                  f"({settings.zone_location('restricted')}), or leave the key empty for a "
                  "per-run folder there")
    return settings


def _is_inside(location: str, settings: Settings, zone: str) -> bool:
    """Whether a configured folder or URI lies inside a zone (itself excluded)."""
    root = settings.zone_location(zone)
    if URI.match(location) or URI.match(root):
        return location.rstrip("/").startswith(root.rstrip("/") + "/")
    place, base = settings.path(location).resolve(), Path(root).resolve()
    return place != base and place.is_relative_to(base)


def environ_under(root: str | Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment that puts every path of the lake under ``root`` (tests, benchmarks,
    sandboxes), keeping the other variables of ``base`` (default: this process's)."""
    root = Path(root)
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith("HEALTHLAKE_PATHS__")}
    env.update({
        "HEALTHLAKE_PATHS__LANDING_ROOT": str(root / "landing"),
        "HEALTHLAKE_PATHS__GROUND_TRUTH_ROOT": str(root / "ground_truth"),
        "HEALTHLAKE_PATHS__LATE_DELIVERIES_ROOT": str(root / "late"),
        "HEALTHLAKE_PATHS__REFERENCE_ROOT": str(root / "reference"),
        "HEALTHLAKE_PATHS__ZONES__RESTRICTED": str(root / "lake/restricted"),
        "HEALTHLAKE_PATHS__ZONES__CURATED": str(root / "lake/curated"),
        "HEALTHLAKE_PATHS__ZONES__OPS": str(root / "lake/ops"),
    })
    return env


def load(conf_dir: str | Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Load and validate: the one entry point jobs, DAGs and tests use."""
    return validate(load_settings(conf_dir, environ))
