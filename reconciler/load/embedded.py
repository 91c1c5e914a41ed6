"""Compose YAML embedded in a manifest's ``runtime.compose_yaml`` block scalar.

Errors inside it must point at the manifest file's own lines, so the embedded text is
loaded as its own document and its positions are shifted onto the outer file.
"""

from __future__ import annotations

from reconciler.load.budget import Budget
from reconciler.load.yamlsafe import Document, Path, load_yaml

__all__ = ["load_embedded_yaml"]


def load_embedded_yaml(
    text: str,
    outer: Document,
    path: Path,
    budget: Budget | None = None,
) -> Document:
    """Load ``text`` (the string at ``path`` in ``outer``) with positions in ``outer``'s file.

    For a block scalar (``|`` / ``>``) the content starts on the line after the indicator,
    indented; a plain or quoted scalar cannot be mapped exactly, so its positions fall back
    to the scalar's own position.
    """
    line, col = outer.pos(path)
    inner = load_yaml(text, outer.name, budget)
    raw_line = _outer_line(outer, line)
    is_block = raw_line is not None and raw_line.rstrip().endswith(
        ("|", ">", "|-", ">-", "|+", ">+")
    )
    if not is_block:
        flat = dict.fromkeys(inner.positions, (line, col))
        return Document(outer.name, inner.data, flat, dict(flat), source=inner.source)
    indent = _block_indent(text, outer, line)
    shift = line  # content line 1 is outer line ``line + 1``

    def move(pos: tuple[int, int]) -> tuple[int, int]:
        return (pos[0] + shift, pos[1] + indent)

    return Document(
        outer.name,
        inner.data,
        {p: move(v) for p, v in inner.positions.items()},
        {p: move(v) for p, v in inner.key_positions.items()},
        source=outer.source,
    )


def _outer_line(outer: Document, line: int) -> str | None:
    lines = outer.source_lines
    if lines is None or not 0 < line <= len(lines):
        return None
    return lines[line - 1]


def _block_indent(text: str, outer: Document, line: int) -> int:
    lines = outer.source_lines or []
    for raw in lines[line:]:
        if raw.strip():
            return len(raw) - len(raw.lstrip(" "))
    return 0
