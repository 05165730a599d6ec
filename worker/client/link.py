"""The client's sockets: one ZeroMQ context, DEALER sockets with bounded receives and a handshake monitor.

Without the monitor a refused CURVE key looks like a silent worker; with it the error says what happened.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import zmq

from .protocol import DEFAULT_LIMITS, Limits, Message, ProtocolError, decode
from .receive import receive

HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def z85_key(key: bytes | str | None) -> bytes | None:
    """A CURVE key as 40 Z85 bytes (or None), else ValueError."""
    if key is None:
        return None
    key = key.encode("ascii") if isinstance(key, str) else bytes(key)
    if len(key) != 40:
        raise ValueError(f"CURVE keys are 40 Z85 characters, got {len(key)} bytes")
    return key


class Link:
    """A DEALER socket and its monitor: which endpoints completed the handshake, which refused us and why."""

    def __init__(self, sock: zmq.Socket, endpoints: Sequence[str], limits: Limits = DEFAULT_LIMITS) -> None:
        self.sock = sock
        self.endpoints = list(endpoints)
        self.limits = limits
        self.monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
        self.connected: set[str] = set()
        self.refused: dict[str, str] = {}
        for endpoint in self.endpoints:
            sock.connect(endpoint)

    def recv(self, flags: int = 0) -> tuple[Message, int]:
        """One reply, decoded, and its size in bytes; ProtocolError when it breaks the limits."""
        got = receive(self.sock, self.limits, reply=True, flags=flags)
        if got.code is not None:
            raise ProtocolError(f"a worker sent a message beyond this client's limits: {got.reason}", got.code)
        return decode(got.frames, self.limits, reply=True), sum(len(f) for f in got.frames)

    def pump(self) -> None:
        """Read the monitor events that are waiting."""
        from zmq.utils.monitor import recv_monitor_message

        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            endpoint = event["endpoint"].decode("utf-8", "replace")
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected.add(endpoint)
                self.refused.pop(endpoint, None)
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.refused[endpoint] = f"the worker at {endpoint} refused our CURVE key (not an allowed client)"
            else:
                self.refused[endpoint] = (
                    f"security handshake with {endpoint} failed: wrong server public key, or one side uses CURVE "
                    "and the other does not"
                )

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until every endpoint connected or refused, at most ``timeout_s`` (so round robin sees them all)."""
        deadline = time.monotonic() + timeout_s
        self.pump()
        while len(self.connected | set(self.refused)) < len(self.endpoints):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.monitor.poll(remaining * 1000):
                break
            self.pump()

    def refusal(self) -> str | None:
        """Why the worker(s) cannot be used, when every endpoint refused the handshake; else None."""
        self.pump()
        if self.refused and not self.connected and len(self.refused) >= len(self.endpoints):
            return "; ".join(self.refused.values())
        return None

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)
        self.sock.close(linger=0)


class Connector:
    """Makes the client's links, all from one ZeroMQ context, with its CURVE keys and socket options."""

    def __init__(self, server_public_key: Any = None, client_keys: tuple[Any, Any] | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.server_key = z85_key(server_public_key)
        if client_keys is not None:
            self.client_keys: tuple[bytes, bytes] | None = (z85_key(client_keys[0]), z85_key(client_keys[1]))
        elif self.server_key is not None:
            self.client_keys = zmq.curve_keypair()  # an anonymous key: works only if the worker allows any
        else:
            self.client_keys = None
        self.limits = limits
        self.context = zmq.Context()

    @property
    def curve(self) -> bool:
        return self.server_key is not None

    def open(self, endpoints: Sequence[str], identity: bytes | None = None) -> Link:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only to connected workers, so a dead one gets no chunks
        sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        # no single frame from a worker is bigger than an array frame or a plan header
        biggest = max(self.limits.max_frame_bytes, self.limits.max_reply_header_bytes)
        sock.setsockopt(zmq.MAXMSGSIZE, biggest + 1024 * 1024)
        if identity is not None:
            sock.setsockopt(zmq.ROUTING_ID, identity)
        if self.server_key is not None:
            assert self.client_keys is not None
            sock.curve_serverkey = self.server_key
            sock.curve_publickey, sock.curve_secretkey = self.client_keys
        return Link(sock, endpoints, self.limits)

    def close(self) -> None:
        self.context.term()
