"""Validation reports in the three formats: text for people, JSON for machines,
GitHub workflow commands for CI annotations.  Pure: problems in, text out.

Machine formats are written to stdout as plain strings, never through rich's wrapping.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from reconciler.model.errors import Problem, Severity

__all__ = ["github_annotations", "json_report", "summary_line", "text_report"]


def summary_line(problems: Sequence[Problem], deployments: int, files: int) -> str:
    errors = sum(1 for p in problems if p.severity is Severity.ERROR)
    warnings = len(problems) - errors
    if errors:
        return (
            f"✗ {_n(errors, 'error')}, {_n(warnings, 'warning')} in {_n(files, 'deployment file')}"
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
        out.append((style, f"{display(p.file)}:{p.line}:{p.col}: {label}[{p.rule}]: {p.message}"))
        src = source_line(p.file, p.line) if p.line > 0 else None
        if src is not None:
            out.append(("dim", f"  {p.line:>4} | {src}"))
            out.append(("dim", f"       | {' ' * max(p.col - 1, 0)}^"))
        if p.fix:
            out.append(("cyan", f"       = fix: {p.fix}"))
    return out


def json_report(
    problems: Sequence[Problem],
    *,
    root: str,
    deployments: Sequence[str],
    files: int,
) -> str:
    errors = sum(1 for p in problems if p.is_error)
    doc = {
        "format_version": 1,
        "valid": errors == 0,
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


def github_annotations(problems: Sequence[Problem], display: Callable[[str], str]) -> list[str]:
    """``::error file=…,line=…,col=…,title=…::message`` workflow commands."""
    lines = []
    for p in problems:
        level = "error" if p.is_error else "warning"
        props = [f"file={_escape_property(display(p.file))}"]
        if p.line > 0:
            props += [f"line={p.line}", f"col={p.col}"]
        props.append(f"title={_escape_property(p.rule)}")
        message = p.message + (f". Fix: {p.fix}" if p.fix else "")
        lines.append(f"::{level} {','.join(props)}::{_escape_data(message)}")
    return lines
