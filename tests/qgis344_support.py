"""A current QGIS for the tests: the Debian 13 root with QGIS 3.44 (Python 3.13, numpy 2, GDAL 3.10) that
scripts/qgis344_root.sh builds once and caches, entered with ``unshare --mount`` + ``chroot``.

The root shares the host's network (so QGIS in it reaches workers the host's .venv started on loopback) and the
host's /tmp (so pytest's temporary files, the built plugin and the outputs have the same paths inside and out).
Where the root cannot be had (not root, no network, no mmdebstrap, unshare refused) the tests skip and say why.
"""
from __future__ import annotations

import configparser
import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from project_paths import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "qgis344_root.sh"
BUILD_TIMEOUT_S = 1200
#: Mounts the namespace needs, then the shared folders (args: ROOT CWD FOLDER... -- COMMAND...); then chroot.
ENTER = r"""set -e
root=$1; cwd=$2; shift 2
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
while [ "$1" != "--" ]; do mkdir -p "$root$1"; mount --bind "$1" "$root$1"; shift; done
shift
exec chroot "$root" /bin/sh -c 'cd "$0" && exec "$@"' "$cwd" "$@"
"""


@dataclass(frozen=True)
class DebianRoot:
    """The cached root and how to run a command in it."""

    path: Path
    shared: tuple[str, ...]

    def popen(self, argv: list[str], env: dict[str, str], cwd: Path, **kwargs) -> subprocess.Popen:
        """``argv`` in the root, with exactly ``env`` (plus a plain PATH and locale), in ``cwd`` (a shared path)."""
        full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": str(cwd), **env}
        command = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", ENTER, "enter",
                   str(self.path), str(cwd), *self.shared, "--",
                   "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in full_env.items()), *argv]
        return subprocess.Popen(command, **kwargs)

    def run(self, argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> tuple[int, str]:
        """(exit status, stdout+stderr) of ``argv`` run in the root."""
        process = self.popen(argv, env, cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # QGIS, Xvfb and all: they hold the output pipe open
            output, _ = process.communicate()
            return -9, output + f"\n(timed out after {timeout:.0f} s)"
        return process.returncode, output

    @property
    def qgis_process(self) -> str:
        """Debian's /usr/bin/qgis_process is a wrapper script on some releases; the binary is what is run."""
        for name in ("qgis_process.bin", "qgis_process"):
            if (self.path / "usr" / "bin" / name).exists():
                return f"/usr/bin/{name}"
        raise FileNotFoundError(f"no qgis_process in {self.path}")


def prepare_root(basetemp: Path) -> DebianRoot:
    """Build (first time) or reuse the root; skip with the reason where that is not possible here."""
    if os.environ.get("FACTSEG_QGIS344", "").lower() in ("0", "off", "no"):
        pytest.skip("QGIS 3.44 tests switched off (FACTSEG_QGIS344=off)")
    try:
        done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"the Debian 13 root was not built within {BUILD_TIMEOUT_S} s (slow network to the archive?)")
    if done.returncode == 3:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, f"scripts/qgis344_root.sh failed:\n{done.stderr[-3000:]}"
    path = Path(done.stdout.strip().splitlines()[-1])
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare --mount is refused here ({probe.stderr.strip()}): the QGIS 3.44 root cannot be entered")
    shared = {tempfile.gettempdir()}
    if not str(basetemp.resolve()).startswith(tempfile.gettempdir() + os.sep):
        shared.add(str(basetemp.resolve()))
    return DebianRoot(path, tuple(sorted(shared)))


def qgis_process_profile(root: DebianRoot, plugins_dir: Path, tmp: Path) -> dict[str, str]:
    """The environment for the root's qgis_process with the plugin (unpacked from the zip) enabled in a
    throw-away profile."""
    env = {"QT_QPA_PLATFORM": "offscreen", "QGIS_PLUGINPATH": str(plugins_dir),
           "QGIS_CUSTOM_CONFIG_PATH": str(tmp / "profile"), "XDG_RUNTIME_DIR": str(tmp)}
    status, output = root.run([root.qgis_process, "plugins", "enable", "factseg"], env, tmp, timeout=180)
    assert status == 0, f"qgis_process 3.44 could not enable the plugin:\n{output[-3000:]}"
    return env


def desktop_profile(root_dir: Path, plugins_from: Path, version_flag: str) -> Path:
    """A profiles folder whose 'default' profile has the unpacked plugin (``plugins_from``, a folder holding
    factseg/) enabled, and QGIS's first-run questions answered."""
    import shutil

    profile = root_dir / "profiles" / "default"
    shutil.copytree(plugins_from, profile / "python" / "plugins")
    ini = configparser.ConfigParser()
    ini.optionxform = str
    ini["PythonPlugins"] = {"factseg": "true", "processing": "true"}
    ini["qgis"] = {"checkVersion": "false", "allowVersionCheck": "false"}
    ini["migration"] = {"firstRunVersionFlag": version_flag, "settings": "true"}
    ini["app"] = {"plugin_installer\\checkOnStart": "false"}
    (profile / "QGIS").mkdir(parents=True)
    with open(profile / "QGIS" / "QGIS3.ini", "w", encoding="utf-8") as handle:
        ini.write(handle, space_around_delimiters=False)
    return root_dir  # QGIS looks for profiles/<name> inside --profiles-path
