# The two set-up commands of the README:
#   make run    install everything, start the services, materialize all assets, serve the UIs
#   make test   install everything and run the whole test suite against real services
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test bench

KAFKA_LIBS := $(VENV)/kafka/libs

install: $(VENV)/.installed $(KAFKA_LIBS)/.installed

# Apache Kafka's broker: the jars of its release tarball's libs/, from Maven Central, and the
# class-data archive its nodes start from (without it, they start on more CPU: not an error).
$(KAFKA_LIBS)/.installed: scripts/kafka/pom.xml $(VENV)/.installed
	@scripts/check_prerequisites $(PYTHON)
	rm -rf $(KAFKA_LIBS)
	mvn --quiet --batch-mode -Dstyle.color=never -f scripts/kafka/pom.xml dependency:copy-dependencies \
	  -DincludeScope=runtime -DoutputDirectory=$(abspath $(KAFKA_LIBS))
	-$(BIN)/python -m flight_platform.local.services archive-kafka-classes
	@touch $@

$(VENV)/.installed: pyproject.toml constraints.txt
	@scripts/check_prerequisites $(PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $@

# Prometheus is optional for serving: without it (no root to install it), make run serves unmonitored.
run: install
	-@scripts/install_debian_package prometheus /usr/bin/prometheus "make run's monitoring"
	$(BIN)/python -m flight_platform.local.stack

# Test modules on this many pytest-xdist workers, each with a platform of its own; 0: one process.
# Two took 0.80-0.87x of one process's time on two cores (the suite is mostly CPU); three, 1.04x of two's.
TEST_WORKERS ?= 2

test: install
	@scripts/install_debian_package chromium chromium "the browser tests"
	@scripts/install_debian_package postgresql /usr/lib/postgresql/15/bin/initdb "the Dagster-on-PostgreSQL test"
	@scripts/install_debian_package prometheus /usr/bin/prometheus "the metrics tests"
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

bench: install
	$(BIN)/python -m benchmarks.materialize
	$(BIN)/python -m benchmarks.stream
	$(BIN)/python -m benchmarks.stream --explain-answers off --burst 0
	$(BIN)/python -m benchmarks.stream --workers 2
	$(BIN)/python -m benchmarks.shadow
	$(BIN)/python -m benchmarks.serving_under_batch
	$(BIN)/python -m benchmarks.web
	$(BIN)/python -m benchmarks.contract
	$(BIN)/python -m benchmarks.faults
	$(BIN)/python -m benchmarks.scale
	$(BIN)/python -m benchmarks.live_decisions
