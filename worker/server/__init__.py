"""The worker process: ZeroMQ service, engine adapter and start-up (``python -m worker``); loads torch."""
from .service import main

__all__ = ["main"]
