"""Name, version and icon of the plugin, read from metadata.txt (the one place they are written)."""
from __future__ import annotations

import configparser
from functools import lru_cache
from pathlib import Path

PLUGIN_NAME = "FactSeg"
HERE = Path(__file__).resolve().parent
ICON_PATH = HERE / "icon.png"


@lru_cache(maxsize=1)
def metadata() -> dict[str, str]:
    """The [general] section of metadata.txt (in the plugin folder when installed, the repo root otherwise)."""
    for candidate in (HERE / "metadata.txt", HERE.parent / "metadata.txt"):
        if candidate.is_file():
            parser = configparser.ConfigParser(interpolation=None)
            parser.read(candidate, encoding="utf-8")
            return dict(parser["general"]) if parser.has_section("general") else {}
    return {}


def version() -> str:
    return metadata().get("version", "0.0.0")
