# The two commands of the README: `make run` (install + start the app) and `make test`
# (install + run the whole test suite). Both build a local virtual environment in .venv.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test serve browser-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-train.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

# `make run PORT=8080` when 5000 is taken (macOS's AirPlay Receiver listens there).
run: $(VENV)/.runtime
	$(BIN)/python app.py $(if $(PORT),--port $(PORT))

serve: $(VENV)/.runtime
	$(BIN)/gunicorn -c gunicorn.conf.py "app:create_app()"

# Headless Chromium and its driver for the browser test (Debian packages; needs root).
browser-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; \
	else echo "note: chromium/chromedriver missing and not root: the browser test will be skipped"; fi

# Two test processes (pytest-xdist), a file each at a time: the suite trains and converts many
# small models, each process using the cores it can; `make test TEST_WORKERS=1` runs one.
TEST_WORKERS ?= 2

test: $(VENV)/.dev browser-deps
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile
