"""Compose variable interpolation, to check the policy on what will actually run.

A manifest may write ``${SOCK}:/sock`` and a deployment set ``SOCK: /var/run/docker.sock``:
the raw file passes a lexical check, the running container would not.  So the policy
runs again on the compose document with the deployment's literal vars substituted the
way Compose does (``${X}``, ``${X:-d}``, ``${X-d}``, ``$X``, ``$$``).  Values read from
the environment at apply time are unknown here and stay as written.

Interpolation can multiply a file: ``"${A}${A}…"`` with a large ``A`` made a 196 KB compose
file cost 2 GB.  So every string it produces is charged to the repository's
:class:`~reconciler.load.budget.Budget` while it is built, and a value shared through a
YAML alias is filled once and stays shared.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from reconciler.load.budget import Budget, BudgetExceeded

__all__ = ["InterpolationTooLarge", "interpolate"]

_PATTERN = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class InterpolationTooLarge(Exception):
    """The budget ran out while filling the string at ``path``."""

    def __init__(self, exceeded: BudgetExceeded) -> None:
        super().__init__(exceeded.message)
        self.path: tuple[Any, ...] = ()  # filled in on the way out, not built on the way in
        self.exceeded = exceeded


def _replacement(match: re.Match[str], values: Mapping[str, str]) -> str:
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


def _substitute(text: str, values: Mapping[str, str], budget: Budget) -> str:
    """``text`` filled in, refused as soon as it outgrows what ``budget`` has left."""
    parts: list[str] = []
    size = 0
    end = 0
    for match in _PATTERN.finditer(text):
        piece = _replacement(match, values)
        parts.append(text[end : match.start()])
        parts.append(piece)
        size += match.start() - end + len(piece)
        end = match.end()
        budget.room(0, size)  # before the next piece: the string never outgrows the budget
    parts.append(text[end:])
    filled = "".join(parts)
    if filled != text:
        budget.charge(0, len(filled))
    return filled


def interpolate(data: Any, values: Mapping[str, str], budget: Budget | None = None) -> Any:
    """A copy of ``data`` with every string interpolated; keys are left alone.

    Raise :class:`InterpolationTooLarge` when the strings produced outgrow ``budget``.
    """
    memo: dict[int, Any] = {}
    return _fill(data, values, budget if budget is not None else Budget(), memo)


def _fill(data: Any, values: Mapping[str, str], budget: Budget, memo: dict[int, Any]) -> Any:
    if isinstance(data, str):
        if "$" not in data:
            return data
    elif not isinstance(data, dict | list):  # loaded YAML: plain dicts, no ABC check
        return data
    key = id(data)  # an alias is the same object: filled once, and shared in the copy too
    if key in memo:
        return memo[key]
    result: Any
    if isinstance(data, str):
        try:
            result = _substitute(data, values, budget)
        except BudgetExceeded as exc:
            raise InterpolationTooLarge(exc) from None
    else:
        items = data.items() if isinstance(data, dict) else enumerate(data)
        filled: dict[Any, Any] = {}
        for k, v in items:
            try:
                filled[k] = _fill(v, values, budget, memo)
            except InterpolationTooLarge as exc:
                exc.path = (k, *exc.path)
                raise
        result = filled if isinstance(data, dict) else list(filled.values())
    memo[key] = result
    return result
