"""How ``worker`` reaches the shared contract (:mod:`factseg_contract`), wherever the code lies.

- a repository checkout, or a local worker process started with ``PYTHONPATH=<plugin folder>``: ``worker`` and
  ``factseg_contract`` are top-level packages side by side;
- inside QGIS, from the plugin zip: both are vendored in the plugin package (``factseg.worker``,
  ``factseg.factseg_contract``) and nothing is added to ``sys.path``, so the contract is the sibling package.
Every ``worker`` module imports the contract's names from here, so they are the same objects in each case.
"""
from __future__ import annotations

try:  # inside the plugin package: factseg.worker -> factseg.factseg_contract
    from ..factseg_contract import *  # noqa: F403
except ImportError:  # worker is a top-level package (a relative import beyond it is an ImportError)
    from factseg_contract import *  # noqa: F403
