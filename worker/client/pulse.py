"""Is the worker still there? A job's pulse: a ping to every endpoint, each on a connection of its own.

Silence on the job's own socket proves nothing: a large chunk computes for minutes on a CPU, and a chunk upload
holds that connection for as long. A ping on a separate connection is answered by the worker's socket thread
within milliseconds, even while its model runs. So a worker is declared dead only when pings go unanswered for
``dead_after_s`` (a heartbeat budget): it exited, hangs, or cannot be reached, and the job fails in one sentence
instead of reconnecting and resending for minutes. The pings also renew the job's lease on every worker.

Judged after reading every reply already received (ZeroMQ receives in the background), and from the first
unanswered ping, so a caller that was busy elsewhere for a while (a slow reader) does not mistake that for silence.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import zmq

from .link import Connector, Link
from .protocol import PingRequest, ProtocolError, WorkerUnavailable

#: Seconds without an answer to a ping before a job's worker is declared dead.
DEAD_AFTER_S = 30.0
#: Pings per budget: the first unanswered one starts the clock, so death is seen within ~1.1 budgets.
PINGS_PER_BUDGET = 10
#: Replies read per endpoint and beat: bounded, so a flood cannot hold the job's loop.
MAX_READ = 64


class WorkerLost(WorkerUnavailable):
    """Every worker of a job stopped answering pings for the heartbeat budget (the message is one sentence)."""


class Pulse:
    """Pings each endpoint every ``interval_s`` (naming ``request``, which renews its lease) and tells which have
    left a ping unanswered for more than ``dead_after_s``."""

    def __init__(self, connector: Connector, endpoints: Sequence[str], request: str, dead_after_s: float,
                 interval_s: float | None = None) -> None:
        self.dead_after_s = float(dead_after_s)
        self.interval_s = max(0.05, interval_s if interval_s is not None else dead_after_s / PINGS_PER_BUDGET)
        self.frames = PingRequest(id=f"{request}:pulse", request=request).frames()
        self.links: dict[str, Link] = {}
        self.asked: dict[str, float | None] = {}  # first ping not answered yet, per endpoint
        for endpoint in endpoints:
            self.links[endpoint] = connector.open([endpoint])
            self.asked[endpoint] = None
        self.next_ping = 0.0

    def beat(self) -> None:
        """Read the answers that arrived, then ping every endpoint if it is time."""
        for endpoint, link in self.links.items():
            if self._answered(link):
                self.asked[endpoint] = None
        now = time.monotonic()
        if now < self.next_ping:
            return
        self.next_ping = now + self.interval_s
        for endpoint, link in self.links.items():
            if self.asked[endpoint] is None:
                self.asked[endpoint] = now  # even if it cannot be sent: an unreachable worker is silent too
            try:
                link.sock.send_multipart(self.frames, zmq.NOBLOCK)
            except zmq.Again:
                pass  # not connected (IMMEDIATE): nothing queues for a worker that is gone

    @staticmethod
    def _answered(link: Link) -> bool:
        heard = False
        for _ in range(MAX_READ):
            if not link.sock.poll(0):
                break
            try:
                link.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            except ProtocolError:
                pass  # an oversized or malformed message still came from a live worker
            heard = True
        return heard

    def silent(self) -> list[str]:
        """Endpoints whose oldest unanswered ping is older than the budget."""
        now = time.monotonic()
        return [e for e, asked in self.asked.items() if asked is not None and now - asked > self.dead_after_s]

    def lost(self, done: int, total: int) -> WorkerLost | None:
        """The error to fail the job with when every endpoint is silent, else None."""
        silent = self.silent()
        if not silent or len(silent) < len(self.links):
            return None
        who = f"worker at {silent[0]}" if len(silent) == 1 else f"workers at {', '.join(silent)}"
        return WorkerLost(f"the {who} stopped answering (no reply to pings for {self.dead_after_s:g} s: it exited, "
                          f"hangs or cannot be reached); {done} of {total} chunks were done")

    def close(self) -> None:
        for link in self.links.values():
            link.close()
        self.links.clear()
