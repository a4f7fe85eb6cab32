# Two commands matter: `make demo` and `make test`. Both create .venv and install pinned deps.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: demo test test-fast lint check-migrations bench clean install

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/activate requirements.txt requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

## Set up, migrate the SQLite default, load a synthetic watchlist, run the jobs, print a summary.
demo: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py demo

# pytest-xdist workers (one per core by default); a test file stays on one worker (--dist loadfile).
# Each worker gets its own database: test_<name>_gw0, … on PostgreSQL, its own file on SQLite.
JOBS ?= auto

## Set up and run the whole test suite (DATABASE_URL selects the database; SQLite by default).
test: install
	$(BIN)/pytest -n $(JOBS) --dist loadfile

## The suite without the tests marked slow (real processes, browsers, sleeps): a quick loop while editing.
test-fast: install
	$(BIN)/pytest -n $(JOBS) --dist loadfile -m "not slow"

lint: install
	$(BIN)/ruff check .

check-migrations: install
	$(PY) manage.py makemigrations --check --dry-run

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) db.sqlite3 db.sqlite3-* staticfiles .pytest_cache .ruff_cache
