"""Validation reports in the three formats: text for people, JSON for machines,
GitHub workflow commands for CI annotations, and the "no plan" report a refused
``plan``/``--dry-run`` prints in its machine formats.  Pure: problems in, text out.

Machine formats are written to stdout as plain strings, never through rich's wrapping:
a CI step that captures them (a PR comment, ``jq``) always gets a whole document.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from reconciler.cli.term import plain
from reconciler.model.errors import Problem, Severity

__all__ = [
    "github_annotations",
    "github_command",
    "json_refusal",
    "json_report",
    "markdown_refusal",
    "summary_line",
    "text_report",
]


def summary_line(
    problems: Sequence[Problem], deployments: int, files: int, *, strict: bool = False
) -> str:
    """One verdict line.  With ``strict``, warnings fail the run: the line says so and
    never says "valid"."""
    errors = sum(1 for p in problems if p.severity is Severity.ERROR)
    warnings = len(problems) - errors
    if errors or (strict and warnings):
        tail = " (--strict: warnings are errors)" if strict and warnings and not errors else ""
        return (
            f"✗ {_n(errors, 'error')}, {_n(warnings, 'warning')} in "
            f"{_n(files, 'deployment file')}{tail}"
        )
    tail = f" ({_n(warnings, 'warning')})" if warnings else ""
    return f"✓ {_n(deployments, 'deployment')} valid{tail}"


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def text_report(
    problems: Sequence[Problem],
    display: Callable[[str], str],
    source_line: Callable[[str, int], str | None],
) -> list[tuple[str, str]]:
    """Lines as (style, text) pairs: a compiler-style header, the source line, a caret, the fix."""
    out: list[tuple[str, str]] = []
    for p in problems:
        label = "error" if p.is_error else "warning"
        style = "bold red" if p.is_error else "bold yellow"
        out.append((style, f"{_where(p, display)}{label}[{p.rule}]: {p.message}"))
        src = source_line(p.file, p.line) if p.line > 0 else None
        if src is not None:
            out.append(("dim", f"  {p.line:>4} | {src}"))
            out.append(("dim", f"       | {' ' * max(p.col - 1, 0)}^"))
        if p.fix:
            out.append(("cyan", f"       = fix: {p.fix}"))
    return out


def _where(p: Problem, display: Callable[[str], str]) -> str:
    """``path:line:col: `` as far as it is known (no ``:0:0``), or nothing."""
    if not p.file:
        return ""
    if p.line <= 0:
        return f"{display(p.file)}: "
    return f"{display(p.file)}:{p.line}:{p.col}: "


def json_report(
    problems: Sequence[Problem],
    *,
    root: str,
    deployments: Sequence[str],
    files: int,
    strict: bool = False,
) -> str:
    """``valid`` is the verdict the exit code gives: false on a warning under ``strict``."""
    errors = sum(1 for p in problems if p.is_error)
    doc = {
        "format_version": 1,
        "valid": errors == 0 and not (strict and problems),
        "root": root,
        "deployments": list(deployments),
        "summary": {"errors": errors, "warnings": len(problems) - errors, "files": files},
        "problems": [p.as_dict() for p in problems],
    }
    return json.dumps(doc, indent=2, sort_keys=False)


def _escape_data(value: str) -> str:
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(value: str) -> str:
    return _escape_data(value).replace(":", "%3A").replace(",", "%2C")


def github_annotations(
    problems: Sequence[Problem], display: Callable[[str], str], *, strict: bool = False
) -> list[str]:
    """``::error file=…,line=…,col=…,title=…::message`` workflow commands; with
    ``strict`` (warnings fail the run) every problem is an ``::error``."""
    lines = []
    for p in problems:
        level = "error" if p.is_error or strict else "warning"
        props = [f"file={_escape_property(plain(display(p.file)))}"] if p.file else []
        if p.file and p.line > 0:
            props += [f"line={p.line}", f"col={p.col}"]
        props.append(f"title={_escape_property(p.rule)}")
        message = p.message + (f". Fix: {p.fix}" if p.fix else "")
        lines.append(f"::{level} {','.join(props)}::{_escape_data(plain(message))}")
    return lines


def github_command(level: str, message: str, *, title: str | None = None) -> str:
    """A workflow command without a file: ``::notice title=…::message`` (lines kept)."""
    props = f" title={_escape_property(plain(title))}" if title else ""
    return f"::{level}{props}::{_escape_data(plain(message))}"


def _counts(problems: Sequence[Problem]) -> tuple[int, int]:
    errors = sum(1 for p in problems if p.is_error)
    return errors, len(problems) - errors


def json_refusal(problems: Sequence[Problem], *, error: str, valid: bool, root: str | None) -> str:
    """The JSON a refused plan prints instead of a plan (``plan`` is null): why, and
    every problem, so ``jq`` in CI reads a document rather than an empty file."""
    errors, warnings = _counts(problems)
    doc = {
        "format_version": 1,
        "plan": None,
        "valid": valid,
        "error": error,
        "root": root,
        "errors": errors,
        "warnings": warnings,
        "problems": [p.as_dict() for p in problems],
    }
    return json.dumps(doc, indent=2)


def _md(text: str) -> str:
    """Markdown table-cell text: pipes and HTML escaped, one line, no control codes."""
    return (
        plain(text, newlines=False)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("|", "\\|")
        .replace("`", "'")
    )


def markdown_refusal(
    problems: Sequence[Problem],
    display: Callable[[str], str],
    *,
    error: str,
    title: str = "compose-reconciler plan",
) -> str:
    """A PR comment for a refused plan: the reason, then one table row per problem."""
    out = [f"### {title}", "", f"**✗ No plan: {_md(error)}** Nothing was touched.", ""]
    if problems:
        out += ["| | where | rule | problem |", "|---|---|---|---|"]
        for p in problems:
            mark = "✗ error" if p.is_error else "⚠ warning"
            where = f"`{_md(_where(p, display).removesuffix(': '))}`" if p.file else ""
            fix = f"; fix: {_md(p.fix)}" if p.fix else ""
            out.append(f"| {mark} | {where} | {_md(p.rule)} | {_md(p.message)}{fix} |")
    return "\n".join(out) + "\n"
