"""``python -m worker.keys --out DIR``: CURVE key files for workers reachable over the network.

Writes ``DIR/server.key`` + ``DIR/server.key_secret`` (the worker's pair) and ``DIR/clients/NAME.key`` +
``DIR/NAME.key_secret`` for each client name (default: one client, ``client``). Start the worker with
``--curve-secret-key DIR/server.key_secret --curve-allowed-clients DIR/clients``; give each client its
``NAME.key_secret`` and ``server.key``. Secret files are created readable by their owner only. Reading key files
is :mod:`worker.client.keys`'s (QGIS reads them too; key generation never runs there).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def generate(out: str | os.PathLike, clients: list[str] | tuple[str, ...] = ("client",)) -> dict[str, Path]:
    """Create the server pair and one pair per client; returns the paths of the files written, by role."""
    import zmq.auth

    out = Path(out)
    (out / "clients").mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    old = os.umask(0o077)
    try:
        public, secret = zmq.auth.create_certificates(str(out), "server")
        paths["server_public"], paths["server_secret"] = Path(public), Path(secret)
        for name in clients:
            if not name or "/" in name or name == "server":
                raise ValueError(f"invalid client name {name!r}")
            public, secret = zmq.auth.create_certificates(str(out), name)
            allowed = out / "clients" / f"{name}.key"
            os.replace(public, allowed)
            paths[f"{name}_public"], paths[f"{name}_secret"] = allowed, Path(secret)
    finally:
        os.umask(old)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.keys", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the key files into")
    parser.add_argument("--client", action="append", dest="clients", help="client name (repeatable)")
    args = parser.parse_args(argv)
    try:
        paths = generate(args.out, args.clients or ["client"])
    except (OSError, ValueError) as exc:
        print(f"worker.keys: {exc}", file=sys.stderr)
        return 1
    for role, path in paths.items():
        print(f"{role}: {path}")
    print(f"start the worker with: --curve-secret-key {paths['server_secret']} "
          f"--curve-allowed-clients {Path(args.out) / 'clients'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
