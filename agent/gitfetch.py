"""Fetching one commit of a git repository to build from, with git made safe.

The reconciler resolved the ref to a sha at plan time; here exactly that sha is
fetched (no branch that moved in between), with hooks, submodules and the ``ext::``
transport off and no user or system configuration in play.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import tempfile

from reconciler.model.errors import InvalidSpec, TemporaryError

__all__ = ["SAFE_GIT_CONFIG", "fetch_revision", "git_env"]

SAFE_GIT_CONFIG = (
    "-c",
    "protocol.ext.allow=never",
    "-c",
    "protocol.file.allow=always",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "submodule.recurse=false",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "advice.detachedHead=false",
)


def git_env(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        {
            "HOME": home,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_ASKPASS": "/bin/true",
            "GIT_ALLOW_PROTOCOL": "https:ssh:file",
        }
    )
    return env


def fetch_revision(url: str, revision: str, target: pathlib.Path, timeout: float = 300) -> None:
    """Check out ``revision`` of ``url`` into ``target`` (which must not exist)."""
    if url.startswith("-") or revision.startswith("-"):
        raise InvalidSpec(f"refusing git URL or revision starting with '-': {url} {revision}")
    if not url.startswith(("https://", "ssh://", "file://")):
        raise InvalidSpec(f"git URL must be https://, ssh:// or file://: {url}")
    target.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="reconciler-git-home-") as home:
        env = git_env(home)

        def git(*args: str) -> None:
            try:
                subprocess.run(
                    ["git", *SAFE_GIT_CONFIG, "-C", str(target), *args],
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                )
            except subprocess.CalledProcessError as exc:
                raise TemporaryError(
                    f"git {args[0]} {url} failed: {exc.stderr.strip()[-500:]}", retry_after=30
                ) from None
            except subprocess.TimeoutExpired:
                raise TemporaryError(f"git {args[0]} {url} timed out", retry_after=30) from None

        git("init", "-q")
        git("fetch", "-q", "--depth", "1", "--no-tags", "--", url, revision)
        git("checkout", "-q", "--detach", "FETCH_HEAD")
    # The build context is the tree, not the repository.
    import shutil

    shutil.rmtree(target / ".git", ignore_errors=True)
