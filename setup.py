"""healthlake: a health big-data analytics pipeline for a city health bureau.

Versions are pinned together: Airflow publishes its constraint files outside the package
registries this project can reach, so the set below is the tested, mutually compatible one.
delta-spark 4.3.1 supports pyspark up to 4.1.1 and loads the Maven jar
``io.delta:delta-spark_4.1_2.13:4.3.1`` (resolved once into ``.cache/jars`` by ``make jars``).
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "pyspark==4.1.1",
    "delta-spark==4.3.1",
    "apache-airflow==3.3.2",
    "great-expectations==1.24.1",
    "pandas==3.1.1",
    "pyarrow==26.0.1",
    "openpyxl==3.1.5",
    # reads the institutions' workbooks (a tenth of openpyxl's time); openpyxl writes exports
    "python-calamine==0.9.1",
    "xlsxwriter==3.3.1",
    "pyyaml==6.0.3",
    "pypinyin==0.55.0",
    "splink==5.0.0",
    "matplotlib==3.11.2",
    # linear programming (HiGHS) for the release audit of published tables
    "scipy==1.17.1",
]

DEV_REQUIRES = [
    "pytest==9.2.0",
    "chispa==0.12.0",
    "ruff==0.17.5",
    # notebooks/ executed by the tests (tests/test_publish.py)
    "nbformat==5.11.1",
    "nbclient==0.11.0",
    "ipykernel==7.4.0",
]

setup(
    name="healthlake",
    version="0.1.0",
    description="Health big-data pipeline: Airflow + PySpark + Delta Lake for a city health bureau",
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["jobs", "jobs.*", "quality", "quality.*"]),
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require={"dev": DEV_REQUIRES},
    entry_points={"console_scripts": ["healthlake = jobs.cli:main"]},
)
