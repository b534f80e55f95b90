"""Quasi-identifiers of curated persons, generalised until no person stands out (k-anonymity).

``silver.person`` is read by analysts. Exact birth date, sex and community code make almost
every person unique, so anyone holding a resident roster could put names back on person ids.
The curated golden record therefore carries its quasi-identifiers generalised by **local
recoding** along one ladder of levels (``matching.person_generalisation`` in
conf/base/matching.yaml), finest first, for example::

    birth year, town -> 5-year band, town -> 10-year band, town -> 10-year band, district
    -> 20-year band, district -> 20-year band, city -> birth suppressed, city
    -> sex suppressed too

Every person starts at the first level. The persons of each class (same published sex, birth
band and area) smaller than ``k`` move, together, to the next level, where they form classes
with the other persons that moved; persons in classes of ``k`` or more stay where they are. The
last level publishes nothing but the city, so it is one class: when fewer than ``k`` persons
reach it, the smallest class of the deepest level before it joins them (a whole class, so no
class is left smaller than k). Every published class then holds at least ``k`` persons, unless
the whole table holds fewer. Birth bands are aligned (a 5-year band starts at a multiple of 5),
so they nest.

The exact values stay in the restricted zone (``restricted.person_attributes``), for gold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import reduce
from itertools import pairwise
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

AreaLevel = Literal["town", "district", "city"]
# The published quasi-identifiers of silver.person: one class = one combination of these.
QUASI_IDENTIFIERS = ["sex", "birth_year_from", "birth_year_to", "area_level", "area_code"]
# The exact attributes a generalisation reads (they are not published).
EXACT_ATTRIBUTES = ["sex", "birth_date", "area_code", "town_code", "district_code"]


@dataclass(frozen=True)
class GeneralisationLevel:
    """One rung of the ladder: birth years per band (1: the birth year; 0: suppressed), the area
    level, and whether sex is kept."""

    birth_years: int
    area: AreaLevel
    sex: bool = True


@dataclass(frozen=True)
class PersonGeneralisation:
    """``matching.person_generalisation``: k and the ladder, finest level first."""

    k: int = 5
    levels: list[GeneralisationLevel] = field(default_factory=lambda: [
        GeneralisationLevel(1, "town"), GeneralisationLevel(5, "town"),
        GeneralisationLevel(10, "town"), GeneralisationLevel(10, "district"),
        GeneralisationLevel(20, "district"), GeneralisationLevel(20, "city"),
        GeneralisationLevel(0, "city"), GeneralisationLevel(0, "city", sex=False)])

    def problems(self) -> list[str]:
        """What is wrong with the ladder (empty when it is usable)."""
        out = []
        if self.k < 2:
            out.append(f"k must be at least 2, got {self.k}")
        if not self.levels:
            out.append("levels: at least one level is needed")
        rank = {"town": 0, "district": 1, "city": 2}
        for i, (a, b) in enumerate(pairwise(self.levels), start=1):
            coarser_birth = (b.birth_years == 0 or (a.birth_years != 0 and b.birth_years
                                                    % a.birth_years == 0))
            if not (coarser_birth and rank[b.area] >= rank[a.area] and a.sex >= b.sex):
                out.append(f"levels[{i}] is not a generalisation of levels[{i - 1}] (bands "
                           "must nest, areas and sex may only get coarser)")
            elif a == b:
                out.append(f"levels[{i}] repeats levels[{i - 1}]")
        if self.levels and self.levels[-1] != GeneralisationLevel(0, "city", sex=False):
            out.append("the last level must publish nothing but the city: "
                       "{birth_years: 0, area: city, sex: false}")
        out += [f"levels[{i}].birth_years must be 0 (suppressed) or more, got {lv.birth_years}"
                for i, lv in enumerate(self.levels) if lv.birth_years < 0]
        return out


def published_values(level: GeneralisationLevel, city_code: str, exact_prefix: str = ""
                     ) -> list[Column]:
    """The quasi-identifier columns of one level, from the exact attributes (columns named
    ``exact_prefix`` + :data:`EXACT_ATTRIBUTES`)."""
    return [value.alias(name) for name, value in zip(
        QUASI_IDENTIFIERS, _values(level, city_code, exact_prefix), strict=True)]


def _values(level: GeneralisationLevel, city_code: str, exact_prefix: str = "") -> list[Column]:
    from pyspark.sql import functions as F

    year = F.year(exact_prefix + "birth_date")
    if level.birth_years:
        start = (F.floor(year / level.birth_years) * level.birth_years).cast("int")
        end = (start + level.birth_years - 1).cast("int")
    else:
        start = end = F.lit(None).cast("int")
    area = {"town": F.col(exact_prefix + "town_code"),
            "district": F.col(exact_prefix + "district_code"), "city": F.lit(city_code)}[level.area]
    return [F.col(exact_prefix + "sex") if level.sex else F.lit(None).cast("string"), start, end,
            F.lit(level.area), area.cast("string")]


def generalise_persons(persons: DataFrame, rules: PersonGeneralisation, city_code: str
                       ) -> DataFrame:
    """``persons`` (one row per person, with :data:`EXACT_ATTRIBUTES`) with those attributes
    replaced by :data:`QUASI_IDENTIFIERS`, generalised level by level until every class holds
    at least ``rules.k`` persons (see the module). The other columns are kept as they are.

    Deterministic: the same persons give the same rows, whatever their order."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    kept = [c for c in persons.columns if c not in EXACT_ATTRIBUTES]
    exact = [f"_exact_{c}" for c in EXACT_ATTRIBUTES]  # beside the published ones of a level
    class_size = F.count(F.lit(1)).over(Window.partitionBy(*QUASI_IDENTIFIERS))
    *ladder, last = rules.levels
    pending = persons.select(*kept, *[F.col(c).alias(x) for c, x in zip(
        EXACT_ATTRIBUTES, exact, strict=True)])
    settled = None
    for i, level in enumerate(ladder):
        # Checkpointed: the next level reads the persons left, not the plan of every level.
        at_level = (pending.select(*kept, *exact, *published_values(level, city_code, "_exact_"))
                    .withColumn("_class_size", class_size).withColumn("_level", F.lit(i))
                    .localCheckpoint())
        here = at_level.where(F.col("_class_size") >= rules.k).drop(*exact)
        settled = here if settled is None else settled.unionByName(here)
        pending = at_level.where(F.col("_class_size") < rules.k).select(*kept, *exact)
    rest = pending.select(*kept, *published_values(last, city_code))  # the city, nothing else
    if settled is None:
        return rest
    out = settled.select(*kept, *QUASI_IDENTIFIERS).unionByName(rest)
    left = rest.count()
    if 0 < left < rules.k:
        donor = (settled.orderBy(F.col("_level").desc(), "_class_size",
                                 *[F.col(c).asc_nulls_first() for c in QUASI_IDENTIFIERS])
                 .select(*QUASI_IDENTIFIERS).first())
        if donor is not None:
            joins = reduce(lambda a, b: a & b, [F.col(c).eqNullSafe(F.lit(donor[c]))
                                                for c in QUASI_IDENTIFIERS])
            out = out.select(*kept, *[F.when(joins, v).otherwise(F.col(c)).alias(c)
                                      for c, v in zip(QUASI_IDENTIFIERS,
                                                      _values(last, city_code), strict=True)])
    return out


def class_sizes(persons: DataFrame) -> DataFrame:
    """Persons per published class of ``persons`` (generalised rows): QUASI_IDENTIFIERS, n."""
    return persons.groupBy(*QUASI_IDENTIFIERS).count().withColumnRenamed("count", "n")


def measure(persons: DataFrame, k: int) -> dict:
    """How far the generalised ``persons`` went: persons, classes, the smallest class, classes
    under k, and persons published beyond birth year, beyond town, without birth years, without
    sex."""
    from pyspark.sql import functions as F

    sizes = class_sizes(persons).agg(F.count("*").alias("classes"), F.min("n").alias("smallest"),
                                     F.count_if(F.col("n") < k).alias("classes_under_k")).first()
    row = persons.agg(
        F.count("*").alias("persons"),
        F.count_if(F.col("birth_year_from").isNull()
                   | (F.col("birth_year_to") > F.col("birth_year_from"))).alias(
            "beyond_birth_year"),
        F.count_if(F.col("area_level") != "town").alias("beyond_town"),
        F.count_if(F.col("birth_year_from").isNull()).alias("birth_suppressed"),
        F.count_if(F.col("sex").isNull()).alias("sex_suppressed")).first()
    return {"k": k, **row.asDict(), **sizes.asDict()}
