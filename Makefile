# The README's two commands:  `make demo`  (set up + run the main job)  and  `make test`.
# The project installs into .venv. TORCH pins the CPU build that this machine
# carries (a range it satisfies installs nothing more); GPU users see README "GPU".
PY ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp
BIN := $(VENV)/bin

.PHONY: setup demo test lint clean-demo

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# Main job: a sample frame into incoming/, processed by the real Prefect flow on the
# embedded defaults (SQLite provenance DB, ephemeral Prefect API).
demo: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/starnet demo

# Tests: a real PostgreSQL on loopback (installed with apt-get when missing) + pytest.
test: $(STAMP)
	eval "$$(.ci/postgres.sh)" && STARNET_REQUIRE_POSTGRES=1 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy starnet_core flows benchmarks
