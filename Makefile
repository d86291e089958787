# IOC: two commands do all the set-up on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install run test test-fast lint contracts bench performance-doc soak system-deps kafka-classpath clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests use when they can: chromium (console browser test), prometheus (promtool),
# docker-compose (compose file validation). Installed once; tests skip with a clear message without them.
system-deps:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  command -v chromium >/dev/null || missing="$$missing chromium"; \
	  command -v promtool >/dev/null || missing="$$missing prometheus"; \
	  command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing system packages:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null) \
	      || echo "warning: could not install$$missing; the tests that need them will skip"; \
	  fi; \
	fi

# The Apache Kafka test tier (tests/kafka): the broker's jars from Maven Central into the local Maven cache
# (~/.m2), their classpath into var/. Without java or mvn nothing happens here: pytest's summary then says, in
# one line, that the tier was skipped and why.
kafka-classpath:
	@if command -v java >/dev/null && command -v mvn >/dev/null; then \
	  mkdir -p var && mvn -q -B -f deploy/kafka/pom.xml dependency:build-classpath \
	    -Dmdep.outputFile=$(CURDIR)/var/apache-kafka.classpath >/dev/null 2>&1 \
	    || echo "warning: mvn could not fetch Apache Kafka (tests/kafka will try again, then skip)"; \
	fi

# `make run` continues where the last run stopped (database, meter registers, dossiers);
# `make run FRESH=1` starts from an empty database (`ioc up --fresh`).
run: install
	$(VENV)/bin/ioc up $(if $(FRESH),--fresh,)

test: install system-deps kafka-classpath
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow and not browser and not apache_kafka" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

contracts: install
	$(VENV)/bin/ioc contracts export

bench: install
	$(PY) -m bench
	$(PY) -m bench.report

# docs/performance.md from the last bench-results/bench.json
performance-doc: install
	$(PY) -m bench.report

# The whole pipeline for 12 minutes at 8,000 items/s with 5,000 meters: ~10 days of meter event time, past the
# meter processor's 3-day retention, to show whether memory levels off (bench-results/bench-pipeline.json).
soak: install
	IOC_BENCH_PIPELINE_SECONDS=720 IOC_BENCH_PIPELINE_RATE=8000 IOC_BENCH_PIPELINE_METERS=5000 \
	  $(PY) -m bench --only pipeline

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache test-artifacts bench-results
