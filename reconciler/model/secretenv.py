"""Secrets from the environment, or from a file the environment names (``NAME_FILE``).

Every secret the server and the agent read from a variable ``NAME`` may instead come from
the file ``NAME_FILE`` names -- the convention of Docker and Compose secrets
(``/run/secrets/...``) and of systemd's ``LoadCredential=`` -- so the value never sits in
the process environment that ``ps e``, ``docker inspect`` or a crash report shows.

This is the model's one read of a file: the server and the agent (which may import only
the model and the render layers) must follow the same rule, and it runs once, at start.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

from reconciler.model.errors import ReconcilerError

__all__ = ["SecretEnvError", "secret_from_env"]

MAX_SECRET_BYTES = 64 * 1024  # a token or key, not a file dumped by mistake


class SecretEnvError(ReconcilerError):
    """A secret is set twice (``NAME`` and ``NAME_FILE``) or its file cannot be read:
    the process cannot start as configured; fix the environment."""


def secret_from_env(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """``NAME``, else the contents of the file ``NAME_FILE`` names, else None.

    One trailing newline is dropped (``echo token > file`` writes one); an empty value
    counts as unset, as it always has for ``NAME``.  Setting both is refused rather than
    guessed at: the two could disagree after a rotation.
    """
    env = os.environ if env is None else env
    value = env.get(name) or None
    file_var = f"{name}_FILE"
    file_name = env.get(file_var) or None
    if file_name is None:
        return value
    if value is not None:
        raise SecretEnvError(f"both {name} and {file_var} are set: keep one of them")
    path = pathlib.Path(file_name)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise SecretEnvError(
            f"{file_var}={file_name}: cannot read it ({exc.strerror or exc})"
        ) from None
    if len(data) > MAX_SECRET_BYTES:
        raise SecretEnvError(f"{file_var}={file_name}: larger than {MAX_SECRET_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretEnvError(f"{file_var}={file_name}: not UTF-8 text") from None
    if text.endswith("\n"):
        text = text[:-1].removesuffix("\r")
    return text or None
