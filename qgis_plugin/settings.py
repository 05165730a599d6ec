"""One place for the plugin's defaults and QgsSettings keys (dialog, task and Processing read them here)."""
from __future__ import annotations

import shutil
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from qgis.core import QgsSettings

from .worker_import import contract

SETTINGS_GROUP = "factseg"
SCALING_MODES = ("auto", "minmax", "none")
SCALING_LABELS = (
    "Automatic (8-bit as is; others: 2–98 % cumulative cut)",
    "Minimum / maximum of the extent",
    "None (values clipped to 0–255)",
)
DEVICES = ("auto", "cpu", "cuda")
EXTENT_SOURCES = ("layer", "canvas", "selection", "drawn")
RESOLUTION_UNITS = ("map_units", "cm_per_px")


def plugin_root() -> Path:
    """The folder that holds the ``worker`` package: the plugin folder when installed, the repository otherwise."""
    here = Path(__file__).resolve().parent
    return here if (here / "worker").is_dir() else here.parent


def default_worker_python() -> str:
    """A Python for a local worker: a project ``.venv`` next to the code if there is one, else ``python3``.

    QGIS's own interpreter (``sys.executable`` is the QGIS binary there) normally lacks torch, so it is not used.
    """
    venv = plugin_root() / ".venv" / "bin" / "python"
    if venv.exists():
        return str(venv)
    found = shutil.which("python3") or shutil.which("python")
    return found or sys.executable


@dataclass
class PluginSettings:
    """Everything the dialog remembers between sessions (QgsSettings under ``factseg/``)."""

    endpoint: str = contract.DEFAULT_ENDPOINT
    start_local: bool = False
    worker_python: str = ""
    model_path: str = ""
    device: str = "auto"
    patch: int = 0  # 0: the model's own (the worker reports it in `info`); sent only when the user sets one
    stride: int = 0
    batch_size: int = 0  # 0: the worker's default
    chunk_size: int = 0  # 0: the worker's default
    tta: bool = False
    confidence: bool = False
    server_key: str = ""  # a remote worker's public key: file or z85 text (public, not a secret)
    client_key: str = ""  # path of this client's .key_secret file (the path only; the key stays in the file)
    authcfg: str = ""  # id of a QGIS authentication configuration holding the CURVE keys
    resolution_units: str = "map_units"
    scaling: str = "auto"
    extent_source: str = "layer"
    output_dir: str = ""
    add_polygons: bool = False
    show_statistics: bool = True

    @classmethod
    def load(cls) -> PluginSettings:
        store = QgsSettings()
        values = {}
        for field in fields(cls):
            default = getattr(cls, field.name)
            raw = store.value(f"{SETTINGS_GROUP}/{field.name}", default)
            values[field.name] = _coerce(raw, default)
        settings = cls(**values)
        if not settings.worker_python:
            settings.worker_python = default_worker_python()
        return settings

    def save(self) -> None:
        store = QgsSettings()
        for key, value in asdict(self).items():
            store.setValue(f"{SETTINGS_GROUP}/{key}", value)


def _coerce(raw: object, default: object) -> object:
    """QSettings hands back strings for ini files; turn them into the type of the default."""
    if isinstance(default, bool):
        return raw if isinstance(raw, bool) else str(raw).lower() in {"true", "1", "yes"}
    if isinstance(default, int):
        try:
            return int(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return default
    return "" if raw is None else str(raw)
