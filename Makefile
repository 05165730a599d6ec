# FactSeg for QGIS — the README's commands. Each target sets itself up idempotently.
VENV := .venv
PY := $(VENV)/bin/python
export QT_QPA_PLATFORM ?= offscreen

.PHONY: setup test lint demo plugin bench clean

setup:
	@bash scripts/setup.sh

LAYERS := ../shared/tools/check_layers.py

lint: setup
	$(PY) -m ruff check .
	@if [ -f $(LAYERS) ]; then python3 $(LAYERS) .; fi

test: lint
	$(PY) -m pytest

demo: setup
	$(PY) scripts/demo.py

plugin:
	@bash scripts/build_plugin.sh

# Quick figures (minutes on 2 cores); each script's --help shows the full runs (2k/4k/8k, 20,000² memory).
bench: setup
	$(PY) bench/sliding.py --quick
	$(PY) bench/transport.py --skip-inference
	$(PY) bench/load.py
	$(PY) bench/train_step.py
	$(PY) bench/batch.py
# Longer, run by hand: bench/finetune.py (fine-tune vs scratch, ~7 min), bench/sliding.py --model (int8 on a trained
# model), and on a machine with a CUDA GPU: bash bench/gpu_check.sh (one table, under 8 minutes).

clean:
	rm -rf dist build demo_output .pytest_cache
