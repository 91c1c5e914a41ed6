"""Running Debian's real ``tor`` binary locally, offline, for the onion tests.

A missing ``tor`` FAILS the test (CI installs it with ``scripts/setup.sh --docker``);
``RECONCILE_SKIP_TOR=1`` turns that into a skip on purpose.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import time
from collections.abc import Iterable

import pytest


def tor_binary() -> str:
    found = shutil.which("tor") or next(
        (p for p in ("/usr/sbin/tor", "/usr/bin/tor") if os.access(p, os.X_OK)), None
    )
    if found is None:
        if os.environ.get("RECONCILE_SKIP_TOR") == "1":
            pytest.skip("no tor binary and RECONCILE_SKIP_TOR=1")
        pytest.fail(
            "these tests need Debian's tor (`apt-get install -y tor`, done by "
            "`bash scripts/setup.sh --docker`), or RECONCILE_SKIP_TOR=1 to skip them",
            pytrace=False,
        )
    return found


def _complete(path: pathlib.Path) -> bool:
    try:
        return path.read_text().strip().endswith(".onion")
    except FileNotFoundError:
        return False


def run_tor_until_hostnames(
    work: pathlib.Path, service_dirs: Iterable[pathlib.Path], timeout: float = 120.0
) -> dict[pathlib.Path, str]:
    """One ``tor`` process (DisableNetwork 1) serving every dir; returns each ``hostname``.

    Tor loads every key (or generates one in an empty dir) and writes ``hostname`` before
    it would touch the network; the process is stopped once all of them exist.
    """
    dirs = list(service_dirs)
    data = work / "tor-data"
    data.mkdir(mode=0o700)
    lines = [
        f"DataDirectory {data}",
        "DisableNetwork 1",
        "SocksPort 0",
        "Log notice stdout",
    ]
    for d in dirs:
        d.mkdir(mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)
        lines += [f"HiddenServiceDir {d}", "HiddenServicePort 80 127.0.0.1:9"]
    torrc = work / "torrc"
    torrc.write_text("\n".join(lines) + "\n")
    log = work / "tor.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [tor_binary(), "-f", str(torrc)], stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + timeout
            while not all(_complete(d / "hostname") for d in dirs):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"tor exited ({proc.returncode}) or timed out before writing every "
                        f"hostname:\n{log.read_text()[-3000:]}"
                    )
                time.sleep(0.05)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {d: (d / "hostname").read_text().strip() for d in dirs}
