"""The worker process: ZeroMQ service, queue, security and start-up (``python -m worker``); the engine adapter is
:mod:`worker.engine`, shared with ``worker.batch``."""
from .main import main

__all__ = ["main"]
