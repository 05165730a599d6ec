#!/usr/bin/env bash
# Build dist/factseg.zip, installable with QGIS's "Install from ZIP": one top-level folder factseg/ holding the
# plugin code (qgis_plugin/), metadata.txt and the icon, with the worker, factseg_core and training packages (and
# training/configs/*.yaml, the fine-tuning presets) vendored inside it. Inside QGIS the plugin imports only worker.client* and worker.io*, as the subpackage factseg.worker (a
# relative import through qgis_plugin/worker_import.py: no sys.path change, nothing to shadow). worker/server,
# factseg_core and training are there for a *local* worker process only, which runs `python -m worker` (and, to
# fine-tune, `python -m training.train`) with PYTHONPATH=<plugin folder> in the worker's own Python (with torch
# and worker-requirements.txt); QGIS's Python never imports them.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-/usr/bin/python3}
STAGE=${FACTSEG_BUILD_DIR:-build/plugin}   # overridable so tests can build into a temporary folder
DIST=${FACTSEG_DIST_DIR:-dist}
NAME=factseg
rm -rf "$STAGE"
mkdir -p "$STAGE/$NAME" "$DIST"

copy_tree() {  # copy_tree SRC DEST: Python sources and docs, no caches
  (cd "$1" && find . -type f \( -name '*.py' -o -name '*.md' -o -name '*.png' -o -name '*.svg' \) \
      -not -path '*/__pycache__/*' -print0) | while IFS= read -r -d '' file; do
    mkdir -p "$2/$(dirname "$file")"
    cp "$1/$file" "$2/$file"
  done
}

copy_tree qgis_plugin "$STAGE/$NAME"
copy_tree worker "$STAGE/$NAME/worker"
copy_tree factseg_core "$STAGE/$NAME/factseg_core"
copy_tree factseg_contract "$STAGE/$NAME/factseg_contract"  # the shared contract (worker.contract finds it)
copy_tree training "$STAGE/$NAME/training"
mkdir -p "$STAGE/$NAME/training/configs"
cp training/configs/*.yaml "$STAGE/$NAME/training/configs/"   # the recipes, presets among them (training/presets.py)
cp metadata.txt "$STAGE/$NAME/metadata.txt"
for extra in LICENSE README.md worker-requirements.txt; do
  [ -f "$extra" ] && cp "$extra" "$STAGE/$NAME/$extra"
done

"$PYTHON" - "$STAGE" "$NAME" "$DIST" <<'PY'
"""Check the metadata the plugin repository requires, then write a deterministic zip."""
import configparser
import sys
import zipfile
from pathlib import Path

stage, name, dist = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
root = stage / name
parser = configparser.ConfigParser(interpolation=None)
parser.read(root / "metadata.txt", encoding="utf-8")
general = parser["general"]
required = ["name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "repository"]
missing = [key for key in required if not general.get(key, "").strip()]
if missing:
    sys.exit(f"build_plugin: metadata.txt lacks {', '.join(missing)}")
icon = root / general.get("icon", "icon.png")
if not icon.is_file():
    sys.exit(f"build_plugin: metadata.txt names icon {icon.name}, which is not in the plugin folder")
if not (root / "__init__.py").is_file() or "def classFactory" not in (root / "__init__.py").read_text():
    sys.exit("build_plugin: the plugin's __init__.py has no classFactory")
target = dist / f"{name}.zip"
files = sorted(p for p in root.rglob("*") if p.is_file())
with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
    for path in files:
        info = zipfile.ZipInfo(str(path.relative_to(stage)), date_time=(2020, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, path.read_bytes())
print(f"built {target} ({len(files)} files, version {general['version']})")
PY
