"""Typed, validated parameters of the synthetic city and of the generator.

``conf/base/city.yaml`` (section ``city``) and ``conf/base/generator.yaml`` (section
``generator``) are turned into the frozen dataclasses below by :func:`jobs.config.build_dataclass`,
so an unknown key or a wrong type fails at start with the file and key named. Fault kinds and
variation kinds are dataclass fields (not free-form mappings) for the same reason: a misspelt
kind is an error, not a silently ignored rate. Range checks that types cannot express follow in
:func:`load_params`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields

from jobs.config import Settings, build_dataclass, require
from jobs.contracts import load_contracts

TIERS = ("municipal", "district", "township", "village")

# --------------------------------------------------------------------------------------------
# city.yaml
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TownParams:
    code: str
    name: str
    population_weight: float
    zone: str = ""


@dataclass(frozen=True)
class DistrictParams:
    code: str
    name: str
    name_en: str
    population_2024: int
    towns: list[TownParams]


@dataclass(frozen=True)
class CommunityParams:
    residents_per_community: int
    min_per_town: int
    village_share_in_towns: float
    name_chars: list[str]
    road_names: list[str]


@dataclass(frozen=True)
class PopulationParams:
    full_city_residents: int
    broad_band_shares: dict[str, float]
    five_year_band_weights: list[float]
    max_age: int
    sex_ratio: float
    birthplace_shares: dict[str, float]
    birthplace_codes: dict[str, list[str]]
    mobile_prefixes: list[str]
    phone_missing_share: float


@dataclass(frozen=True)
class NameParams:
    surnames: dict[str, float]
    given_chars_male: list[str]
    given_chars_female: list[str]
    two_char_given_share: float


@dataclass(frozen=True)
class HealthParams:
    hypertension_by_age: dict[str, float]
    diabetes_by_age: dict[str, float]
    diagnosed_share: dict[str, float]
    managed_share_of_diagnosed: dict[str, float]
    ehr_coverage: float


@dataclass(frozen=True)
class TierParams:
    full_count: int
    min_count: int
    prefix: str


@dataclass(frozen=True)
class NamedInstitution:
    name: str
    district: str
    town: str


@dataclass(frozen=True)
class InstitutionParams:
    tiers: dict[str, TierParams]
    profiles: dict[str, dict[str, float]]
    municipal_gzip_share: float
    size_by_tier: dict[str, float]
    municipal: list[NamedInstitution]
    district: list[NamedInstitution]


@dataclass(frozen=True)
class CityParams:
    """Everything about the city: geography, people, health, institutions."""

    name: str
    code: str
    districts: list[DistrictParams]
    communities: CommunityParams
    population: PopulationParams
    names: NameParams
    health: HealthParams
    institutions: InstitutionParams
    village_record_share: float


# --------------------------------------------------------------------------------------------
# generator.yaml
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariationWeights:
    """Relative frequency of each identity variation applied to a varied record."""

    homophone_name: float
    lookalike_name: float
    transposed_id: float
    missing_id: float
    invalid_check_char: float
    lowercase_x: float
    fullwidth_digits: float
    embedded_spaces: float
    legacy_id15: float
    changed_phone: float


@dataclass(frozen=True)
class RegistrationParams:
    hospital_records_mean: float
    same_district_weight: float
    second_primary_share: float
    variation_share_primary: float
    variation_share_other: float
    second_variation_share: float
    variation_weights: VariationWeights
    legacy_id15_before_year: int
    homophones: dict[str, str]
    lookalikes: dict[str, str]
    daily_create_share: float
    daily_update_share: float


@dataclass(frozen=True)
class SurveyParams:
    has_5g_link: dict[str, float]
    emr_level: dict[str, list[int]]
    interop_level: dict[str, list[str]]
    online_services: dict[str, list[int]]
    it_staff: dict[str, list[int]]
    staff: dict[str, list[int]]
    it_budget_wan_yuan: dict[str, list[float]]


@dataclass(frozen=True)
class ActivityParams:
    visits_per_resident_year: float
    tier_visit_share: dict[str, float]
    encounter_types: dict[str, dict[str, float]]
    departments: list[str]
    chronic_diagnosis_share: float
    chronic_codes: dict[str, dict[str, list[float | str]]]
    other_codes: dict[str, list[float | str]]
    labs_per_encounter: dict[str, float]
    lab_tests: dict[str, list[float | str]]
    mutual_recognition_share: float
    referral_share: dict[str, list[float]]
    digital_referral_share: float
    followups_per_patient_year: float
    followup_methods: dict[str, float]
    survey: SurveyParams


@dataclass(frozen=True)
class RowFaultRates:
    """Probability per data row of each malformation (applied where the format allows it)."""

    wrong_field_count: float
    broken_quoting: float
    impossible_date: float
    empty_required: float
    undecodable_bytes: float
    broken_json: float


@dataclass(frozen=True)
class FileFaultRates:
    """Probability per delivered feed file of each file fault."""

    truncated_file: float
    redelivered_file: float
    renamed_column: float
    wrong_encoding: float
    zero_byte_file: float
    half_written_gzip: float
    missing_file: float
    unlisted_file: float


@dataclass(frozen=True)
class InstitutionFaultRates:
    late_institution: float
    missing_institution: float


@dataclass(frozen=True)
class FaultParams:
    ensure_every_kind: bool
    row_rates: RowFaultRates
    file_rates: FileFaultRates
    institution_rates: InstitutionFaultRates
    renamed_columns: dict[str, dict[str, str]]


@dataclass(frozen=True)
class OutputParams:
    boolean_codes: dict[str, list[str]]
    xlsx_created: str
    gzip_level: int


@dataclass(frozen=True)
class GeneratorParams:
    """Run defaults, volumes, variations and faults."""

    residents: int
    start_date: str
    days: int
    seed: int
    activity_lag_days: int
    registrations: RegistrationParams
    activity: ActivityParams
    faults: FaultParams
    output: OutputParams

    @property
    def start(self) -> dt.date:
        return dt.date.fromisoformat(self.start_date)


ROW_FAULT_KINDS = tuple(f.name for f in fields(RowFaultRates))
FILE_FAULT_KINDS = tuple(f.name for f in fields(FileFaultRates))
INSTITUTION_FAULT_KINDS = tuple(f.name for f in fields(InstitutionFaultRates))
VARIATION_KINDS = tuple(f.name for f in fields(VariationWeights))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _shares(values: dict[str, float] | list[float], key: str, origins: dict[str, str]) -> None:
    items = values.values() if isinstance(values, dict) else values
    require(all(0.0 <= v <= 1.0 for v in items), key, origins, "shares must lie in [0, 1]")


def load_params(settings: Settings) -> tuple[CityParams, GeneratorParams]:
    """Validate ``settings.city`` and ``settings.generator`` into typed parameters."""
    o = settings.origins
    city: CityParams = build_dataclass(CityParams, settings.city, "city", o)
    gen: GeneratorParams = build_dataclass(GeneratorParams, settings.generator, "generator", o)
    profiles = set(load_contracts().profiles)

    # city
    require(bool(city.districts), "city.districts", o, "at least one district")
    for i, d in enumerate(city.districts):
        require(len(d.code) == 6 and d.code.isdigit(), f"city.districts[{i}].code", o,
                 "a 6-digit county code")
        require(bool(d.towns), f"city.districts[{i}].towns", o, "at least one town")
        for j, t in enumerate(d.towns):
            require(len(t.code) == 3 and t.code.isdigit(), f"city.districts[{i}].towns[{j}].code",
                     o, "a 3-digit town code")
    pop = city.population
    require(set(pop.broad_band_shares) == {"0-14", "15-59", "60+"},
             "city.population.broad_band_shares", o, "keys must be 0-14, 15-59, 60+")
    require(abs(sum(pop.broad_band_shares.values()) - 1) < 0.01,
             "city.population.broad_band_shares", o, "shares must add up to 1")
    require(set(pop.birthplace_shares) == set(pop.birthplace_codes),
             "city.population.birthplace_shares", o,
             "must name the same groups as birthplace_codes")
    require(set(city.institutions.tiers) == set(TIERS), "city.institutions.tiers", o,
             f"must be exactly {list(TIERS)}")
    for tier, mix in city.institutions.profiles.items():
        require(set(mix) <= profiles, f"city.institutions.profiles.{tier}", o,
                 f"profiles must be among {sorted(profiles)}")
    _shares([city.village_record_share, city.institutions.municipal_gzip_share,
             city.health.ehr_coverage], "city", o)
    for band in (city.health.hypertension_by_age, city.health.diabetes_by_age):
        _shares(band, "city.health", o)

    # generator
    require(gen.residents > 0 and gen.days > 0, "generator.residents", o,
             "residents and days must be positive")
    try:
        _ = gen.start
    except ValueError:
        require(False, "generator.start_date", o, f"not an ISO date: {gen.start_date!r}")
    _shares([getattr(gen.faults.row_rates, k) for k in ROW_FAULT_KINDS],
            "generator.faults.row_rates", o)
    _shares([getattr(gen.faults.file_rates, k) for k in FILE_FAULT_KINDS],
            "generator.faults.file_rates", o)
    require(set(gen.faults.renamed_columns) <= profiles, "generator.faults.renamed_columns", o,
             f"profiles must be among {sorted(profiles)}")
    require(set(gen.output.boolean_codes) == profiles, "generator.output.boolean_codes", o,
             f"needs exactly the profiles {sorted(profiles)}")
    for tier_map_key in ("tier_visit_share", "encounter_types", "labs_per_encounter",
                         "referral_share"):
        require(set(getattr(gen.activity, tier_map_key)) == set(TIERS),
                 f"generator.activity.{tier_map_key}", o, f"needs exactly the tiers {list(TIERS)}")
    return city, gen

