"""``python -m worker.keys --out DIR``: CURVE key files for workers reachable over the network.

The functions live in :mod:`worker.client.keys` (QGIS reads key files too); this module keeps the command.
"""
from __future__ import annotations

import sys

from .client.keys import generate, load_client_keys, load_public_key, main

__all__ = ["generate", "load_client_keys", "load_public_key", "main"]

if __name__ == "__main__":
    sys.exit(main())
