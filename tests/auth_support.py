"""The test session's QGIS authentication database, unlocked with a known master password.

pytest-qgis points QGIS at a throw-away profile (``QGIS_CUSTOM_CONFIG_PATH`` = ``<repo>/.qgis-settings``), so
its ``qgis-auth.db`` is a test file, never an analyst's. Its master password persists between runs; if a run
left another one there, the stale password and the configurations encrypted with it are dropped (only ever in
that throw-away database) so that every run starts from a known state.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

TEST_MASTER_PASSWORD = "factseg-test-master"


def auth_db_path() -> Path:
    from qgis.core import QgsApplication

    path = Path(QgsApplication.authManager().authenticationDatabasePath()).resolve()
    roots = [os.environ.get(name) for name in ("QGIS_CUSTOM_CONFIG_PATH", "QGIS_AUTH_DB_DIR_PATH")]
    if not any(root and path.is_relative_to(Path(root).resolve()) for root in roots):
        raise RuntimeError(f"refusing to touch {path}: not under the test profile (QGIS_CUSTOM_CONFIG_PATH)")
    return path


def unlock_test_auth_db():
    """The auth manager with :data:`TEST_MASTER_PASSWORD` entered (set up on first use)."""
    from qgis.core import QgsApplication

    manager = QgsApplication.authManager()
    path = auth_db_path()
    if manager.masterPasswordIsSet() and manager.verifyMasterPassword(TEST_MASTER_PASSWORD):
        return manager
    manager.clearMasterPassword()
    if manager.masterPasswordHashInDatabase() and not manager.setMasterPassword(TEST_MASTER_PASSWORD, True):
        with sqlite3.connect(path) as db:  # a stale password from an earlier run of some test
            db.execute("DELETE FROM auth_pass")
            db.execute("DELETE FROM auth_configs")
        manager.clearMasterPassword()
    if not manager.setMasterPassword(TEST_MASTER_PASSWORD, True):
        raise RuntimeError(f"could not set the test master password in {path}")
    return manager
