"""The worker process: ZeroMQ service, engine adapter, queue, security and start-up (``python -m worker``)."""
from .main import main

__all__ = ["main"]
