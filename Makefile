# Local development: `make run` (stack + Dagster UI on http://127.0.0.1:3000), `make test`.
# Works on a fresh Debian machine: `deps` installs what is missing of Maven, JDK 17,
# python3-venv, PostgreSQL (deployment test), Chromium (UI test), Prometheus (promtool: the
# alert rules' tests) and Alertmanager (the end-to-end alerting test).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STACK := $(BIN)/python -m devtools stack

# The local Cassandra runs with PasswordAuthenticator so its guardrails apply; clients log in
# as the ordinary role the stack creates (override both to use another role).
export CASSANDRA_USERNAME ?= programuser
export CASSANDRA_PASSWORD ?= programuser
# glibc gives each thread that allocates (the driver's, librdkafka's) its own heap arena, and
# memory freed there is hardly ever given back: a long drain crept ~100 MB over 12 runs. Two
# arenas keep its peak flat, at no cost in speed (docs/performance.md). Set it where runs start.
export MALLOC_ARENA_MAX ?= 2

.PHONY: deps venv stack run test test-unit soak lint down produce lag drain bench bench-scale bench-parallel bench-incidents bench-history bench-steady soak-steady cluster-deps cluster cluster-down test-cluster test-cluster-full bench-cluster docker-deps image test-docker bench-docker docker-down

# apt-get install of $$missing with policy-rc.d saying no, so that no package starts a system
# service on a host with an init system (docker.io's dockerd, prometheus's and alertmanager's
# servers: the alerting test starts its own).
APT_INSTALL = made=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	printf '\#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
	made=1; fi; \
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; rc=$$?; \
	if [ -n "$$made" ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $$rc

# Acts only when something is missing (we run as root on CI and dev boxes).
deps:
	@missing=""; \
	command -v mvn >/dev/null 2>&1 || missing="$$missing maven"; \
	ls /usr/lib/jvm/*17*/bin/java >/dev/null 2>&1 || missing="$$missing openjdk-17-jdk-headless"; \
	$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v prometheus-alertmanager >/dev/null 2>&1 || missing="$$missing prometheus-alertmanager"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(APT_INSTALL); \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[test]'
	touch $@

venv: $(STAMP)

stack: deps venv
	$(STACK) up

# The tour shows rows within a sensor interval: the sensor launches a partition's run once its
# oldest record is 5 s old (production's default waits 300 s at a trickle: docs/configuration.md).
# `make run PROGRAMUSER_TRIGGER_AGE_S=300` runs with the default.
PROGRAMUSER_TRIGGER_AGE_S ?= 5
run: stack
	mkdir -p .dagster_home
	ln -sfn ../dagster.yaml .dagster_home/dagster.yaml
	# Started from DAGSTER_HOME itself, so Dagster finds its dagster.yaml where it looks.
	cd .dagster_home && DAGSTER_HOME=$(CURDIR)/.dagster_home \
	  PROGRAMUSER_TRIGGER_AGE_S=$(PROGRAMUSER_TRIGGER_AGE_S) ../$(BIN)/dagster dev \
	  -w ../workspace.yaml -h 127.0.0.1 -p 3000

# tests/conftest.py starts the stack (reusing running servers) and stops what it started.
# Side by side in TEST_WORKERS processes (pytest-xdist): most tests wait on servers, sensors
# and runs, not on the CPU, and every test has its own topics, keyspace and Dagster home. A module
# with private servers keeps its tests on one worker (xdist_group) so they start once.
TEST_WORKERS ?= 4
test: deps venv
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup

# The unit tests alone: no server, no stack (seconds).
test-unit: venv
	$(BIN)/pytest -q tests/unit

# The soak test: real `dagster dev` under >= 500 events/s for 3 minutes (SOAK_RATE, SOAK_SECONDS).
soak: deps venv
	PROGRAMUSER_SOAK=1 $(BIN)/pytest -q -s tests/e2e/test_soak.py

# The production path (dagster-daemon, PostgreSQL, deploy/dagster.yaml) at a trickle for ~5 min,
# everything scaled down (trigger age 10 s, 2 min of history, a prune a minute): tests/e2e/test_steady.py.
soak-steady: deps venv
	$(BIN)/pytest -q -s -m steady tests/e2e/test_steady.py

lint: venv
	$(BIN)/ruff check .

down: venv
	$(STACK) down

# The pipeline's commands with the local stack's settings, e.g. `make produce N=1000`.
N ?= 1000
produce: venv
	$(BIN)/python -m devtools produce --sample $(N)

lag: venv
	$(BIN)/programuser-dagster lag

drain: venv
	DAGSTER_HOME=$(CURDIR)/.dagster_home $(BIN)/programuser-dagster drain

# Throughput against the real local stack, on its own topics and keyspace (removed afterwards):
# prints a table and writes bench-results.json. `make bench EVENTS=20000` for a shorter run;
# bench-scale also drains N/10 and 10N for the memory and cost-per-event targets.
EVENTS ?= 100000
bench: stack
	$(BIN)/python -m devtools.bench --events $(EVENTS)

bench-scale: stack
	$(BIN)/python -m devtools.bench --events $(EVENTS) --scale

# Throughput of 1..4 partitions drained by parallel runs (EVENTS/4 events per partition).
# What verify and redrive cost (docs/performance.md): bench-incidents-results.json.
bench-incidents: stack
	$(BIN)/python -m devtools.incident_bench --events $(EVENTS)

# Days of history on a throwaway PostgreSQL, and how long prune_history takes on it
# (docs/performance.md): `make bench-history DAYS=4 KEEP_DAYS=2`.
DAYS ?= 4
KEEP_DAYS ?= 2
bench-history: stack
	$(BIN)/python -m devtools.history --days $(DAYS) --keep-days $(KEEP_DAYS)

# Months at a trickle compressed into minutes (docs/performance.md): 1 event/s over 4 partitions
# on the production path for STEADY_MINUTES, the trigger age and the history window scaled down,
# then STEADY_IDLE_MINUTES with nothing produced: steady-results.json.
STEADY_MINUTES ?= 25
STEADY_IDLE_MINUTES ?= 4
bench-steady: stack
	$(BIN)/python -m devtools.steady --minutes $(STEADY_MINUTES) --idle-minutes $(STEADY_IDLE_MINUTES)

bench-parallel: stack
	$(BIN)/python -m devtools.bench --events $(EVENTS) --parallel \
	  --out bench-parallel-results.json

# The cluster stack (docs/deploying.md): three Cassandra nodes and three
# brokers on 127.0.0.11-13, TLS; data in .stack-cluster/. nftables is for the fault tests.
cluster-deps: deps
	@command -v nft >/dev/null 2>&1 || (apt-get update && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y nftables)

cluster: cluster-deps venv
	$(STACK) up --cluster

cluster-down: venv
	$(STACK) down --cluster

# Faults on the cluster (tests/cluster): the CI set, then everything (stall, partition, the
# full rolling restart).
test-cluster: cluster-deps venv
	$(BIN)/pytest -q -m "cluster and not cluster_full" tests/cluster

test-cluster-full: cluster-deps venv
	ROLL=all $(BIN)/pytest -q -m cluster tests/cluster

# `make bench` against the cluster stack (docs/deploying.md).
bench-cluster: cluster
	$(BIN)/python -m devtools.bench --cluster --events $(EVENTS) \
	  --out bench-cluster-results.json

# Containers (docs/deploying.md): Debian's docker.io (its dockerd is started by the
# targets below only, with its data root in /var/cache/programuser-dagster) and debootstrap for
# the base image. policy-rc.d keeps the package from starting a system dockerd on a host with
# an init system (with its docker0 bridge and firewall rules).
docker-deps: deps
	@missing=""; \
	dpkg -s docker.io >/dev/null 2>&1 || missing="$$missing docker.io"; \
	dpkg -s debootstrap >/dev/null 2>&1 || missing="$$missing debootstrap"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(APT_INSTALL); \
	fi

# The run image (deploy/Dockerfile) on the project's engine: ~2 min cold, seconds warm.
image: docker-deps venv
	$(BIN)/python -m devtools.stack.docker build

# Stops the project's engine if one was left running (a test session that was killed).
docker-down: venv
	$(BIN)/python -m devtools.stack.docker stop

# DockerRunLauncher for real (tests/docker): the image, a PostgreSQL, the code server container,
# dagster-daemon with deploy/docker/dagster.yaml launching each run as a container.
test-docker: docker-deps venv
	$(BIN)/pytest -q -s -m docker tests/docker

# Throughput with 1..4 run containers at once (docs/deploying.md): bench-docker-results.json.
bench-docker: docker-deps stack
	$(BIN)/python -m devtools.container_bench --events $(DOCKER_EVENTS)
DOCKER_EVENTS ?= 40000
