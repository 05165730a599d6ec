"""``python -m worker.batch``: see :mod:`worker.batch.cli`."""
import sys

from .cli import main

sys.exit(main())
