# FactSeg for QGIS — the README's commands. Each target sets itself up idempotently.
VENV := .venv
PY := $(VENV)/bin/python
export QT_QPA_PLATFORM ?= offscreen

.PHONY: setup test lint demo plugin bench clean qgis344-root

setup:
	@bash scripts/setup.sh

LAYERS := ../shared/tools/check_layers.py

lint: setup
	$(PY) -m ruff check .
	@if [ -f $(LAYERS) ]; then python3 $(LAYERS) .; fi

# A current QGIS for tests/qgis344: a Debian 13 root with QGIS 3.44, built once (a few minutes, ~2 GB) into
# /var/cache/factseg-qgis and reused. Where it cannot be built (not root, no network) the script says why and
# those tests skip; the rest of the suite runs on Debian 12's QGIS 3.22 either way.
qgis344-root:
	@bash scripts/qgis344_root.sh >/dev/null || echo "make: no QGIS 3.44 root here; tests/qgis344 will skip"

test: lint qgis344-root
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
# Longer, run by hand: bench/finetune.py (the default CPU fine-tuning of the demo export, ~7 min; --vs-scratch), bench/sliding.py --model (int8 on a trained
# model), and on a machine with a CUDA GPU: bash bench/gpu_check.sh (one table, under 8 minutes).

clean:
	rm -rf dist build demo_output .pytest_cache
