#!/usr/bin/env bash
# Builds (once), caches and reuses a Debian 13 root with QGIS 3.44 from trixie-backports (Python 3.13,
# numpy 2, GDAL 3.10), so that `make test` checks the plugin on a current QGIS as well as Debian 12's 3.22.
# Idempotent: a stamp records the suites and the package list; a matching stamp means nothing to do.
# Usage: scripts/qgis344_root.sh [ROOT]   (default $FACTSEG_QGIS_ROOT or /var/cache/factseg-qgis/trixie-root)
# Exit 0 with the root ready; exit 3 with one line on stderr saying why it cannot be built here.
set -euo pipefail

ROOT=${1:-${FACTSEG_QGIS_ROOT:-/var/cache/factseg-qgis/trixie-root}}
MIRROR=${FACTSEG_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=(qgis python3-qgis qgis-providers python3-zmq python3-numpy python3-gdal gdal-bin xvfb xauth)
STAMP_TEXT="trixie trixie-backports minbase ${PACKAGES[*]}"
STAMP="$ROOT/.factseg-root-stamp"

cannot() { echo "qgis344 root: $*" >&2; exit 3; }

ready() {
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_TEXT" ] \
    && { [ -x "$ROOT/usr/bin/qgis_process" ] || [ -x "$ROOT/usr/bin/qgis_process.bin" ]; }
}

ready && { echo "$ROOT"; exit 0; }

[ "$(id -u)" -eq 0 ] || cannot "building it needs root rights (mmdebstrap, chroot); run make test as root"
command -v unshare >/dev/null || cannot "unshare (util-linux) is missing"

if ! command -v mmdebstrap >/dev/null; then
  echo "qgis344 root: installing mmdebstrap" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null; } \
    || cannot "mmdebstrap is missing and apt-get could not install it"
fi

mkdir -p "$(dirname "$ROOT")"
# One builder at a time (two CI runs on one machine): the second waits, then finds the stamp.
exec 9>"$(dirname "$ROOT")/.build.lock"
flock 9
ready && { echo "$ROOT"; exit 0; }

work="$ROOT.partial"
# Never delete through a mount (an interrupted build could leave /dev or /proc mounted inside).
for dir in "$work" "$ROOT"; do
  ! grep -q " $dir/" /proc/self/mounts || cannot "$dir has file systems mounted inside; unmount them first"
done
rm -rf --one-file-system "$work"
echo "qgis344 root: building $ROOT (QGIS 3.44 from trixie-backports; a few minutes, about 2 GB)" >&2
start=$(date +%s)
# APT::Default-Release is what `apt-get install -t trixie-backports` sets: QGIS and its libraries come from
# backports, everything else from trixie.
if ! mmdebstrap --quiet --mode=root --variant=minbase --components=main \
     --aptopt='APT::Default-Release "trixie-backports"' \
     --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
     --include="$(IFS=,; echo "${PACKAGES[*]}")" \
     trixie "$work" "deb $MIRROR trixie main" "deb $MIRROR trixie-backports main" >"$work.log" 2>&1; then
  tail -5 "$work.log" >&2
  rm -rf --one-file-system "$work"
  cannot "mmdebstrap failed (no network to $MIRROR?); log: $work.log"
fi
# A machine-id keeps Qt/DBus quiet; the rest of the root stays as Debian made it.
[ -s "$work/etc/machine-id" ] || echo 0123456789abcdef0123456789abcdef > "$work/etc/machine-id"
rm -rf --one-file-system "$ROOT"
mv "$work" "$ROOT"
rm -f "$work.log"
echo "$STAMP_TEXT" > "$STAMP"
echo "qgis344 root: built in $(( $(date +%s) - start )) s, $(du -shx "$ROOT" | cut -f1)" >&2
echo "$ROOT"
