"""What ``reconcile mcp`` was started with: the clone, the control plane, the push switch."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.model.secretenv import secret_from_env

__all__ = ["McpSettings", "token_from_env"]

#: Read in this order; each also as ``NAME_FILE`` (a file holding the token).
TOKEN_VARIABLES = ("RECONCILE_TOKEN", "RECONCILE_ADMIN_TOKEN")


def token_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """The control plane's admin token: ``RECONCILE_TOKEN``, else ``RECONCILE_ADMIN_TOKEN``.

    The second is the name ``reconcile serve`` and ``plan --against URL`` already read, so
    one environment serves all three; the ``*_FILE`` forms keep it out of ``ps e``.
    """
    for name in TOKEN_VARIABLES:
        value = secret_from_env(name, env)
        if value:
            return value
    return None


@dataclass(frozen=True, kw_only=True)
class McpSettings:
    """``push`` is a flag of the process, never a key of the repository: a tool that can
    write the repository must not be able to grant itself the right to push."""

    repo: pathlib.Path
    catalog: pathlib.Path | None = None
    server: str | None = None
    token: str | None = None
    push: bool = False
    remote: str = "origin"

    @classmethod
    def from_env(
        cls,
        repo: pathlib.Path,
        *,
        catalog: pathlib.Path | None = None,
        push: bool = False,
        remote: str = "origin",
        env: Mapping[str, str] | None = None,
    ) -> McpSettings:
        env = os.environ if env is None else env
        server = (env.get("RECONCILE_SERVER") or "").strip() or None
        return cls(
            repo=repo.resolve(),
            catalog=catalog,
            server=server.rstrip("/") if server else None,
            token=token_from_env(env),
            push=push,
            remote=remote,
        )
