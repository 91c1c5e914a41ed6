"""The plan for people (text, like ``terraform plan``), for pull requests (Markdown) and
for machines (JSON, format_version 1).  Pure: a Plan in, strings out.

Secret values never reach a Plan (env changes carry keys only), so nothing here can
print one; the property tests check that across all three formats.
"""

from __future__ import annotations

import json
import re

from reconciler.plan.model import Action, Plan

__all__ = ["SYMBOLS", "json_plan", "markdown_plan", "summary_line", "text_plan"]

SYMBOLS = {
    "install": "+",
    "update": "~",
    "uninstall": "-",
    "repair": "!",
    "noop": "=",
    "blocked": "✗",
    "held": "‖",
}
STYLES = {
    "install": "green",
    "update": "yellow",
    "uninstall": "red",
    "repair": "magenta",
    "noop": "dim",
    "blocked": "bold red",
    "held": "cyan",
}
_ORDER = ("install", "update", "repair", "uninstall", "blocked", "held")


def summary_line(plan: Plan) -> str:
    s = plan.summary
    changes = [f"{s.get(k, 0)} to {k}" for k in ("install", "update", "repair", "uninstall")]
    unchanged = s.get("noop", 0)
    blocked = s.get("blocked", 0)
    held = s.get("held", 0)
    if not plan.has_changes:
        line = f"No changes. {unchanged} deployment{'s' if unchanged != 1 else ''} up to date"
        return line + (f", {held} held." if held else ".")
    tail = f", {unchanged} unchanged"
    if blocked:
        tail += f", {blocked} blocked"
    if held:
        tail += f", {held} held"
    return "Plan: " + ", ".join(changes) + tail + "."


def text_plan(plan: Plan, *, verbose: bool = False) -> list[tuple[str, str]]:
    """(style, line) pairs; the caller decides about colour."""
    width = max((len(a.deployment) for a in plan.actions), default=10)
    agent_width = max([8, *(len(a.agent) for a in plan.actions)])  # agt_ ids are 20 long
    lines: list[tuple[str, str]] = []
    for a in plan.actions:
        if a.action == "noop" and not verbose:
            continue
        symbol = SYMBOLS[a.action]
        head = (
            f"  {symbol} {a.deployment:<{width}}  {a.action:<9}  {a.agent:<{agent_width}}"
            f"  {a.reason}"
        )
        lines.append((STYLES[a.action], head.rstrip()))
        for change in a.changes:
            lines.append(("yellow", f"      ~ {change.describe()}"))
        if a.routes:
            lines.append(("dim", f"      routes: {', '.join(a.routes)}"))
        if a.url and a.action in ("install", "update", "repair"):
            lines.append(("dim", f"      url: {a.url}"))
    return lines


# Control characters, and the bidi overrides that reorder what a reader sees.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _cell(text: str) -> str:
    """One line of Markdown from text a host or repository chose (a reason can quote an
    agent): no raw HTML (``<img>``, ``<!--`` hiding the rest), no control characters."""
    one_line = text.replace("\n", " ")
    visible = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), one_line)
    return visible.replace("<", "&lt;").replace("|", "\\|")


def markdown_plan(
    plan: Plan, *, title: str = "compose-reconciler plan", note: str | None = None
) -> str:
    """``note``: a caveat shown above the plan (e.g. that it ran against the CI machine)."""
    out = [f"### {title}", ""]
    if note:
        out += [f"> **Note:** {_cell(note)}", ""]
    out += [
        f"**{summary_line(plan)}** (namespace `{plan.namespace}`, against `{plan.against}`)",
        "",
    ]
    shown = [a for a in plan.actions if a.action != "noop"]
    if shown:
        out += ["| | deployment | action | agent | reason |", "|---|---|---|---|---|"]
        for a in sorted(shown, key=_rank):
            out.append(
                f"| {SYMBOLS[a.action]} | `{_cell(a.deployment)}` | {a.action} | "
                f"`{_cell(a.agent)}` | {_cell(a.reason)} |"
            )
        updates = [a for a in shown if a.changes]
        if updates:
            out += ["", "<details><summary>Changes</summary>", ""]
            for a in updates:
                out.append(f"- `{_cell(a.deployment)}`")
                out += [f"  - {_cell(c.describe())}" for c in a.changes]
            out += ["", "</details>"]
    unchanged = [a.deployment for a in plan.actions if a.action == "noop"]
    if unchanged:
        out += ["", f"Unchanged: {', '.join(f'`{n}`' for n in unchanged)}"]
    return "\n".join(out) + "\n"


def _rank(a: Action) -> tuple[int, str]:
    return (_ORDER.index(a.action) if a.action in _ORDER else len(_ORDER), a.deployment)


def json_plan(plan: Plan) -> str:
    return json.dumps(plan.model_dump(mode="json"), indent=2)
