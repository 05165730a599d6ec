#!/usr/bin/env bash
# Idempotent set-up: Debian packages for QGIS/GDAL/ZeroMQ, then .venv with the pinned Python stack.
# Quick when everything is present (a stamp file records the installed requirements).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(qgis python3-qgis gdal-bin python3-gdal python3-zmq python3-venv python3-pil xvfb)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv (system site packages, for QGIS/GDAL bindings)"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi

stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing pinned Python packages (requirements.txt)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
  echo "$want" > "$stamp"
fi

# The project itself, editable (no dependencies: they are pinned above), so that `python training/train.py`,
# the benchmarks and the console scripts (factseg-train, …) import factseg_core/worker/training from this
# checkout without sys.path edits. Redone when pyproject.toml or the checkout's path changes.
stamp=.venv/.editable.sha256
want=$( { sha256sum pyproject.toml; pwd -P; } | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] \
   || ! (repo=$(pwd -P) && cd / && "$repo/.venv/bin/python" -c "import training.trainer" 2>/dev/null); then
  echo "setup: installing this checkout editable into .venv (pip install -e .)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
