"""Secret var values: generated once per deployment on the host, or read from the
environment where the deployment is applied.  They live only in the app's
``secrets.json`` and ``.env`` (both 0600) -- never in state.json, plans or logs."""

from __future__ import annotations

import json
import pathlib
import secrets
import string
import uuid
from collections.abc import Mapping

from reconciler.model.errors import InvalidSpec
from reconciler.render.model import RenderedDeployment

__all__ = ["env_file_text", "generate", "resolve_secrets"]

_ALNUM = string.ascii_letters + string.digits
_PASSWORD = _ALNUM + "-_.~+="


def generate(spec: str) -> str:
    """``hex|base64url|alnum|password|uuid[:length]``; length counts characters (default 32)."""
    kind, _, length_s = spec.partition(":")
    length = int(length_s) if length_s else 32
    if kind == "uuid":
        return str(uuid.uuid4())
    if kind == "hex":
        return secrets.token_hex((length + 1) // 2)[:length]
    if kind == "base64url":
        return secrets.token_urlsafe(length)[:length]
    alphabet = _ALNUM if kind == "alnum" else _PASSWORD
    return "".join(secrets.choice(alphabet) for _ in range(length))


def resolve_secrets(
    rendered: RenderedDeployment, app_dir: pathlib.Path, environ: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """(secret values for .env, generated values to persist).

    A generated value is created once and reused forever after (an app's admin password
    or encryption key must not change on an update); ``from_env`` values are read now.
    """
    path = app_dir / "secrets.json"
    stored: dict[str, str] = {}
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
            stored = {str(k): str(v) for k, v in loaded.items()}
        except (OSError, ValueError, AttributeError):
            stored = {}
    values: dict[str, str] = {}
    keep = dict(stored)
    missing: list[str] = []
    for key, ref in sorted(rendered.secrets.items()):
        if ref.source == "generate":
            if key not in keep:
                keep[key] = generate(ref.spec)
            values[key] = keep[key]
        else:
            value = environ.get(ref.spec)
            if value is None:
                missing.append(f"{key} (from env {ref.spec})")
            else:
                values[key] = value
    if missing:
        raise InvalidSpec(
            f"{rendered.name}: these vars read the environment, which does not set them: "
            + ", ".join(missing)
        )
    return values, keep


def _quote(key: str, value: str) -> str:
    if "'" not in value and "\n" not in value:
        return f"'{value}'"  # single quotes: compose does not interpolate `$` in them
    if "$" in value:
        raise InvalidSpec(
            f"var {key}: a value with both a quote or newline and `$` cannot be "
            "written safely to .env"
        )
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def env_file_text(values: Mapping[str, str]) -> str:
    """``.env`` content, sorted, every value quoted so compose reads it literally."""
    return "".join(f"{k}={_quote(k, v)}\n" for k, v in sorted(values.items()))
