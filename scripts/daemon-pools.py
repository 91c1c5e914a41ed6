#!/usr/bin/env python3
"""Give dockerd's config small address pools, merged with what the file holds already.

    python3 scripts/daemon-pools.py [--file /etc/docker/daemon.json] [--pool BASE:SIZE ...]

Docker's built-in pools hold 31 networks, and every deployment (a compose project) needs
one, so a stock daemon fails the 30th deployment at ``up``.  The default here is two /16s
cut into /24s: 512 networks, each with 254 addresses, inside the 172.17-31 range Docker
uses anyway.  The file is only ever added to: a ``default-address-pools`` already there is
the operator's choice and is kept; other keys are left as they are; a file that is not a
JSON object is an error (exit 2) and stays untouched.  The new content is written to a
temporary file and renamed over the old one.  dockerd reads it when it starts; this
script never restarts it (scripts/setup.sh says so when a running one lacks the pools).
Prints one line saying what it did.  Standard library only: it runs before any venv.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import tempfile
from pathlib import Path

KEY = "default-address-pools"
DEFAULT_POOLS = ("172.17.0.0/16:24", "172.18.0.0/16:24")


def parse_pool(text: str) -> dict[str, object]:
    """``BASE:SIZE`` (``172.17.0.0/16:24``) -> dockerd's ``{"base": ..., "size": ...}``."""
    base, sep, size = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected BASE:SIZE, e.g. 172.17.0.0/16:24")
    try:
        network = ipaddress.IPv4Network(base, strict=True)
        prefix = int(size)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    if not network.prefixlen <= prefix <= 30:
        raise argparse.ArgumentTypeError(
            f"{text!r}: size must be between the base's /{network.prefixlen} and /30"
        )
    return {"base": str(network), "size": prefix}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=Path("/etc/docker/daemon.json"))
    parser.add_argument("--pool", action="append", type=parse_pool, metavar="BASE:SIZE")
    args = parser.parse_args(argv)
    pools = args.pool or [parse_pool(p) for p in DEFAULT_POOLS]
    path: Path = args.file
    try:
        raw = path.read_text(encoding="utf-8") if path.exists() else ""
        config = json.loads(raw) if raw.strip() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        print(f"daemon-pools: cannot read {path}: {exc}; left unchanged", file=sys.stderr)
        return 2
    if not isinstance(config, dict):
        print(f"daemon-pools: {path} is not a JSON object; left unchanged", file=sys.stderr)
        return 2
    if KEY in config:
        print(f"{path}: {KEY} configured already, kept: {json.dumps(config[KEY])}")
        return 0
    config[KEY] = pools
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(config, out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    total = sum(2 ** (int(p["size"]) - int(str(p["base"]).split("/")[1])) for p in pools)
    print(f"{path}: {KEY} set to {json.dumps(pools)} ({total} networks)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
