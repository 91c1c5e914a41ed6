"""What the production-kit tests share: the image they run, waiting on real services, git as
the server's uid, and subprocesses that fail with their stderr."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time
import tomllib
from collections.abc import Callable
from typing import Any

import httpx

ROOT = pathlib.Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"compose-reconciler:{VERSION}"
SERVER_UID = 10001  # the image's `reconcile` user


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """``check()``'s first truthy answer; connection errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, OSError, subprocess.CalledProcessError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def git(cwd: pathlib.Path, *args: str) -> str:
    """git as the server's uid: the repositories are its own, as on a real host where the
    server's user owns what it serves (git refuses a repository owned by someone else)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        HOME=str(cwd),
        GIT_AUTHOR_NAME="deploy-test",
        GIT_AUTHOR_EMAIL="deploy-test@example.invalid",
        GIT_COMMITTER_NAME="deploy-test",
        GIT_COMMITTER_EMAIL="deploy-test@example.invalid",
        GIT_CONFIG_GLOBAL=os.devnull,
    )
    as_server = ["setpriv", f"--reuid={SERVER_UID}", f"--regid={SERVER_UID}", "--clear-groups"]
    return subprocess.run(
        [*as_server, "git", *args],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run(
        list(args), env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


def published(ps_json: str) -> list[dict[str, Any]]:
    """The published ports in ``docker compose ps --format json`` (one object per line in
    Compose >= 2.21, one array before)."""
    return [
        p
        for line in ps_json.splitlines()
        if line.strip()
        for row in ([json.loads(line)] if line.lstrip().startswith("{") else json.loads(line))
        for p in row.get("Publishers") or []
        if p.get("PublishedPort")
    ]
