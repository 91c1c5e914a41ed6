"""Compose variable interpolation, to check the policy on what will actually run.

A manifest may write ``${SOCK}:/sock`` and a deployment set ``SOCK: /var/run/docker.sock``:
the raw file passes a lexical check, the running container would not.  So the policy
runs again on the compose document with the deployment's literal vars substituted the
way Compose does (``${X}``, ``${X:-d}``, ``${X-d}``, ``$X``, ``$$``).  Values read from
the environment at apply time are unknown here and stay as written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["interpolate"]

_PATTERN = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def _substitute(text: str, values: Mapping[str, str]) -> str:
    def repl(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$$"  # keep escapes as written: they are literal dollars, not paths
        name = match.group("braced") or match.group("named")
        op = match.group("op")
        arg = match.group("arg") or ""
        value = values.get(name)
        if op in (":-", "-"):
            unset = value is None or (op == ":-" and value == "")
            return arg if unset else str(value)
        if op in (":+", "+"):
            return arg if value else ""
        return match.group(0) if value is None else str(value)

    return _PATTERN.sub(repl, text)


def interpolate(data: Any, values: Mapping[str, str]) -> Any:
    """A copy of ``data`` with every string interpolated; keys are left alone."""
    if isinstance(data, str):
        return _substitute(data, values) if "$" in data else data
    if isinstance(data, Mapping):
        return {k: interpolate(v, values) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, values) for v in data]
    return data
