"""ZeroMQ endpoints, parsed strictly: what libzmq would bind or connect to is exactly what the checks see.

libzmq reads ``tcp://HOST:PORT`` up to the *last* colon and ignores what follows the port's digits, so
``tcp://0.0.0.0:5555@127.0.0.1`` binds every interface while a URL parser reads it as user info and host
127.0.0.1. Here such strings are refused outright: no user info (``@``), no source address (``;``), no path,
nothing after the port. The worker also checks the address the socket really bound (``LAST_ENDPOINT``).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

SCHEMES = ("tcp", "ipc", "inproc")
_TCP = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>\*|[A-Za-z0-9_][A-Za-z0-9._-]*)):(?P<port>[0-9]{1,5}|\*)")


class EndpointError(ValueError):
    """An endpoint string this project does not accept (one sentence saying why)."""


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint: ``tcp`` has ``host`` (``*``, an IP literal, a name) and ``port``; others a ``path``."""

    scheme: str
    host: str = ""
    port: str = ""
    path: str = ""
    bracketed: bool = False

    @property
    def is_loopback(self) -> bool:
        """ipc/inproc, or tcp on a loopback IP literal or ``localhost``; ``*``, 0.0.0.0 and names are not."""
        if self.scheme != "tcp":
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def is_ipv6(self) -> bool:
        return self.bracketed


def parse_endpoint(text: object) -> Endpoint:
    """Parse ``tcp://HOST:PORT``, ``tcp://[IPV6]:PORT``, ``ipc://PATH`` or ``inproc://NAME``; else EndpointError."""
    if not isinstance(text, str) or not 0 < len(text) <= 1024 or not text.isprintable() or " " in text:
        raise EndpointError(f"not a ZeroMQ endpoint: {str(text)[:80]!r} (expected tcp://HOST:PORT or ipc://PATH)")
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in SCHEMES or not rest:
        raise EndpointError(f"not a ZeroMQ endpoint: {text[:80]!r} (expected tcp://HOST:PORT or ipc://PATH)")
    if scheme != "tcp":
        return Endpoint(scheme, path=rest)
    for mark, what in (("@", "user info"), (";", "a source address"), ("/", "a path")):
        if mark in rest:
            raise EndpointError(f"endpoint {text[:80]!r} has {what} ({mark!r}); write tcp://HOST:PORT only")
    match = _TCP.fullmatch(rest)
    if match is None:
        raise EndpointError(f"endpoint {text[:80]!r} is not tcp://HOST:PORT (IPv6 as tcp://[ADDRESS]:PORT)")
    port = match["port"]
    if port != "*" and int(port) > 65535:
        raise EndpointError(f"endpoint {text[:80]!r}: port {port} is beyond 65535")
    if match["v6"] is not None:
        try:
            ipaddress.IPv6Address(match["v6"])
        except ValueError:
            raise EndpointError(f"endpoint {text[:80]!r}: {match['v6']!r} is not an IPv6 address") from None
        return Endpoint("tcp", match["v6"], port, bracketed=True)
    return Endpoint("tcp", match["host"], port)


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// endpoints on a loopback address (127.0.0.0/8, ::1, localhost).

    ``tcp://*:5555``, ``tcp://0.0.0.0:…``, interface and host names, and anything that does not parse strictly
    (``tcp://0.0.0.0:5555@127.0.0.1``) are not loopback: they may expose the worker.
    """
    try:
        return parse_endpoint(endpoint).is_loopback
    except EndpointError:
        return False


__all__ = ["Endpoint", "EndpointError", "is_loopback_endpoint", "parse_endpoint"]
