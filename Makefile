# FactSeg for QGIS — the README's commands. Each target sets itself up idempotently.
VENV := .venv
PY := $(VENV)/bin/python
export QT_QPA_PLATFORM ?= offscreen

.PHONY: setup test lint demo plugin bench clean

setup:
	@bash scripts/setup.sh

lint: setup
	$(PY) -m ruff check .

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest

demo: setup
	$(PY) scripts/demo.py

plugin:
	@bash scripts/build_plugin.sh

bench: setup
	$(PY) bench/sliding.py

clean:
	rm -rf dist build demo_output .pytest_cache
