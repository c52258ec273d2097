# migsafe: the Makefile is the interface. Every target creates the virtual environment it needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
JOBS   ?= 2
# Node tools the tests run (asl-validator checks both state-machine definitions), pinned, in .tools/
TOOLS  := .tools
ASL_VALIDATOR_VERSION ?= 4.0.0
ASL_VALIDATOR := $(TOOLS)/node_modules/.bin/asl-validator

.PHONY: venv demo test test-fast lint synth bench chaos clean

venv: $(STAMP) $(ASL_VALIDATOR)
$(ASL_VALIDATOR):
	@mkdir -p $(TOOLS)
	@npm install --silent --no-audit --no-fund --prefix $(TOOLS) asl-validator@$(ASL_VALIDATOR_VERSION)
$(STAMP): pyproject.toml
	@bash scripts/ensure-system-deps.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,lambda,infra]'
	@rm -f $(VENV)/.installed-* && touch $@

demo: venv  ## backup -> list -> verify -> restore on a throw-away PostgreSQL with the seed scenario
	$(PY) examples/demo.py $(DEMO_ARGS)

test: venv  ## the whole suite: real PostgreSQL clusters, AWS through moto, CDK synthesized
	$(PY) -m pytest -n $(JOBS) --dist loadgroup $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check functions tests bench examples infra app.py
	$(VENV)/bin/mypy

synth: venv
	$(PY) app.py

chaos: venv  ## fault injection: kill -9/SIGTERM in every phase, byte flips; seeded (CHAOS_ARGS="--seed N")
	$(PY) tests/chaos/run.py $(CHAOS_ARGS)

bench: venv  ## migsafe against raw pg_dump/pg_restore at 1M and 5M rows (bench/README.md); writes bench/results.json
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(TOOLS) cdk.out .pytest_cache .mypy_cache .ruff_cache
