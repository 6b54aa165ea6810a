# Two entry points, as in the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-domain test-count lint install metadata

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/python -m tests.demo

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# the domain tests (tests/conftest.py: DOMAIN_TESTS) with Prefect unimportable
test-domain: $(BIN)/.installed
	$(BIN)/pytest --without-prefect

# how many tests the connector's domain has, and the simulator's own (counted apart): quote
# these figures, never type them
test-count: $(BIN)/.installed
	@for part in domain simulator; do \
		printf '%s tests: ' $$part; \
		$(BIN)/pytest --without-prefect --collect-only -q -p no:cacheprovider -m $$part \
			| grep -c '::'; \
	done

# the domain and simulator tests ran in test-domain (without Prefect): the rest, once each
test: lint test-domain
	$(BIN)/pytest -m "not domain and not simulator"

# OpenCTI's __metadata__/ files and config.yml.sample, from the settings and the README's table
metadata: $(BIN)/.installed
	$(BIN)/python -m mattermost_connector.metadata
