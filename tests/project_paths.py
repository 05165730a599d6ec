"""Where the tests find the project, its virtual environment and the shared iSAID sample (read-only)."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ISAID_SAMPLE = REPO_ROOT.parent / "shared" / "isaid_sample"
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
