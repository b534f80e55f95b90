# healthlake: everything a fresh machine needs, from nothing.
#   make demo   venv + packages + Delta jars + a synthetic city + every pipeline step that exists
#   make test   venv + packages + Delta jars + the test suite
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
JARS := .cache/jars/.resolved
SECRET := .secrets/hmac_key
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup demo test lint jars generate check airflow airflow-stop thrift thrift-stop chromium \
	cluster cluster-stop cluster-demo test-cluster test-faults clean-data clean

setup: $(INSTALLED) $(JARS)

$(INSTALLED): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Delta's jars come from Maven Central once; afterwards Spark loads them from .cache/jars offline.
$(JARS): $(INSTALLED) conf/base/settings.yaml
	$(BIN)/healthlake jars
	touch $@

jars: $(JARS)

# A local HMAC key for pseudonymisation (a real deployment points secrets.hmac_key elsewhere):
# 64 hex characters, created private (umask 077: never readable by others, not for an instant),
# written to a temporary name and moved into place whole.
$(SECRET):
	umask 077 && mkdir -p $(dir $@) && chmod 700 $(dir $@) && \
	  $(BIN)/python -c "import secrets; print(secrets.token_hex(32))" > $@.tmp && \
	  chmod 600 $@.tmp && mv -f $@.tmp $@

demo: setup $(SECRET)
	$(BIN)/healthlake demo

test: setup chromium
	$(BIN)/python -m pytest -q --durations=40 tests $(PYTEST_ARGS)

# The pipeline on a Spark standalone cluster (master and two workers on loopback) against the
# local run: tests/test_cluster.py, left out of `make test` for CI's time.
test-cluster: setup $(SECRET)
	$(BIN)/python -m pytest -q -m cluster tests/test_cluster.py $(PYTEST_ARGS)

# The fault-injection suite alone (make test runs it too): every stage killed, the day run a
# third time, a late institution, days run out of order, bad files, two runs at once.
test-faults: setup
	$(BIN)/python -m pytest -q -m 'not cluster' tests/faults $(PYTEST_ARGS)

# The report test renders the HTML report in headless Chromium (a CJK font for its screenshot).
chromium:
	command -v chromium || (apt-get update && apt-get install -y chromium fonts-wqy-microhei)

lint: $(INSTALLED)
	$(BIN)/ruff check .

generate: $(INSTALLED)
	$(BIN)/healthlake generate

check: setup
	$(BIN)/healthlake check

# A local Airflow on loopback (SQLite; API server and UI, scheduler, DAG processor, triggerer)
# running dags/; prints the UI's address and login. Stop it with `make airflow-stop`.
airflow: setup $(SECRET)
	$(BIN)/healthlake airflow start

airflow-stop: $(INSTALLED)
	$(BIN)/healthlake airflow stop

# Spark's Thrift JDBC server on 127.0.0.1:10000 over the tables analysts can query (curated and
# ops; never the restricted zone), every statement through the SQL gate in the server process:
# beeline -u jdbc:hive2://127.0.0.1:10000. Stop: make thrift-stop. On a shared machine run it as
# the analysts' account (README, Running safely).
thrift: setup $(SECRET)
	$(BIN)/healthlake thrift start

thrift-stop: $(INSTALLED)
	$(BIN)/healthlake thrift stop

# A Spark standalone master and two workers on loopback (pyspark's own distribution;
# conf/base/cluster.yaml); `make cluster-demo` runs the demo pipeline on it by configuration
# alone (HEALTHLAKE_SPARK__MASTER). Stop it with `make cluster-stop`.
CLUSTER_MASTER ?= spark://127.0.0.1:7077

cluster: setup
	$(BIN)/healthlake cluster start

cluster-stop: $(INSTALLED)
	$(BIN)/healthlake cluster stop

cluster-demo: cluster $(SECRET)
	HEALTHLAKE_SPARK__MASTER=$(CLUSTER_MASTER) $(BIN)/healthlake demo

clean-data:
	rm -rf data

clean: clean-data
	rm -rf $(VENV) .cache *.egg-info
