"""Compose YAML embedded in a manifest's ``runtime.compose_yaml`` string.

Errors inside it (syntax, routing contract, compose policy) must point at the line and
column the user edits in the manifest or deployment file, not at the key that holds the
string.  The string is loaded as its own document, and every position in it is moved
onto the outer file through a map from each character of the string to the place in the
outer source it was written at.

The map is built from the scalar's source for each style a user writes it in: a block
scalar (``|``, ``>``, with any header), a double-quoted string (a JSON body: ``\\n``,
``\\"`` and ``\\uXXXX`` escapes, line folding) or a single-quoted one.  It is checked by
rebuilding the string from the source it maps: if the two differ (a style or an edge
this module does not follow), every position falls back to the scalar's own place,
which is never wrong, only less precise.
"""

from __future__ import annotations

import bisect
import re
from itertools import accumulate

from reconciler.load.budget import Budget
from reconciler.load.yamlsafe import Document, Locate, Path, load_yaml

__all__ = ["load_embedded_yaml", "source_offsets"]

# Line breaks as YAML counts them (the same set the loader uses for positions).
_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
_BREAK_CHARS = "\r\n\x85\u2028\u2029"
_BLANK = " \t"
_PROPERTY = re.compile(r"[!&]\S*[ \t]+")  # a tag or an anchor before the scalar
_COMMENT = re.compile(r"[ \t]+#.*")

_SIMPLE_ESCAPES = {
    "0": "\0",
    "a": "\x07",
    "b": "\b",
    "t": "\t",
    "\t": "\t",
    "n": "\n",
    "v": "\v",
    "f": "\f",
    "r": "\r",
    "e": "\x1b",
    " ": " ",
    '"': '"',
    "/": "/",
    "\\": "\\",
    "N": "\x85",
    "_": "\xa0",
    "L": "\u2028",
    "P": "\u2029",
}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


def load_embedded_yaml(
    text: str,
    outer: Document,
    path: Path,
    budget: Budget | None = None,
) -> Document:
    """Load ``text`` (the string at ``path`` in ``outer``) with positions in ``outer``'s file."""
    line, col = outer.pos(path)
    source = outer.source
    index = _index(source) if source is not None else None
    offsets = (
        source_offsets(source, index[0][line - 1] + col - 1, text, index)
        if source is not None and index is not None and 0 < line <= len(index[0])
        else None
    )
    locate: Locate
    if offsets is None or index is None:

        def locate(_line: int, _col: int) -> tuple[int, int]:
            return (line, col)

    else:
        locate = _locator(text, offsets, index[0])
    inner = load_yaml(text, outer.name, budget, locate=locate)
    return Document(
        outer.name, inner.data, inner.positions, inner.key_positions, source=outer.source
    )


def _index(source: str) -> tuple[list[int], list[int]]:
    """Offsets where each line of ``source`` starts, and where its line break is."""
    if not any(c in source for c in "\r\x85\u2028\u2029"):  # the common case, fast
        lengths = [len(line) + 1 for line in source.split("\n")]
        starts = [0, *accumulate(lengths[:-1])]
        return starts, [start + n - 1 for start, n in zip(starts, lengths, strict=True)]
    found = list(_BREAK.finditer(source))
    return [0, *(m.end() for m in found)], [*(m.start() for m in found), len(source)]


def _locator(text: str, offsets: list[int], outer_starts: list[int]) -> Locate:
    inner_starts = _index(text)[0]

    def locate(line: int, col: int) -> tuple[int, int]:
        if line < 1:
            at = 0
        elif line > len(inner_starts):
            at = len(text)
        else:
            at = inner_starts[line - 1] + max(col, 1) - 1
        outer = offsets[min(max(at, 0), len(text))]
        row = bisect.bisect_right(outer_starts, outer)
        return (row, outer - outer_starts[row - 1] + 1)

    return locate


def source_offsets(
    source: str, start: int, text: str, index: tuple[list[int], list[int]] | None = None
) -> list[int] | None:
    """For each character of ``text`` (and one past its end), its offset in ``source``.

    ``start`` is where the scalar that holds ``text`` begins in ``source`` (its tag,
    anchor, indicator or opening quote).  None when the scalar's style is not followed
    here or the source does not rebuild ``text`` exactly.
    """
    prop = _PROPERTY.match(source, start)
    while prop is not None:
        start = prop.end()
        prop = _PROPERTY.match(source, start)
    if start >= len(source):
        return None
    first = source[start]
    if first in "|>":
        return _block(source, index or _index(source), start, text, folded=first == ">")
    if first in "\"'":
        return _quoted(source, start, text, double=first == '"')
    if not any(c in text for c in _BREAK_CHARS) and source.startswith(text, start):
        return list(range(start, start + len(text) + 1))  # a one-line plain scalar
    return None


def _block(
    source: str, index: tuple[list[int], list[int]], start: int, text: str, *, folded: bool
) -> list[int] | None:
    starts, ends = index
    header_line = bisect.bisect_right(starts, start) - 1
    header = source[start + 1 : ends[header_line]]
    if not re.fullmatch(r"[-+0-9]*", _COMMENT.sub("", header).rstrip(_BLANK)):
        return None
    # The content's indentation: where its first non-blank line starts in the source,
    # less the spaces that line keeps in the value (more with an indentation indicator).
    first_value_line = next((ln for ln in text.split("\n") if ln.strip(_BLANK)), None)
    if first_value_line is None:
        return None
    kept = len(first_value_line) - len(first_value_line.lstrip(" "))
    first_source = next(
        (
            i
            for i in range(header_line + 1, len(starts))
            if source[starts[i] : ends[i]].strip(_BLANK)
        ),
        None,
    )
    if first_source is None:
        return None
    line_text = source[starts[first_source] : ends[first_source]]
    indent = len(line_text) - len(line_text.lstrip(" ")) - kept
    if indent < 0:
        return None
    if not folded:
        return _literal(source, starts, ends, header_line + 1, indent, text)
    out: list[int] = []
    li, ci = header_line + 1, 0
    for ch in text:
        while True:
            if li >= len(starts):
                return None
            begin, end = starts[li] + indent, ends[li]
            if begin + ci < end:
                if source[begin + ci] != ch:
                    return None
                out.append(begin + ci)
                ci += 1
                break
            if ch == "\n" or (folded and ch == " "):
                out.append(end)
                li, ci = li + 1, 0
                break
            if not folded:
                return None
            li, ci = li + 1, 0  # a line break that folding took away
    out.append(min(starts[li] + indent + ci, ends[li]) if li < len(starts) else len(source))
    return out


def _literal(
    source: str, starts: list[int], ends: list[int], li: int, indent: int, text: str
) -> list[int] | None:
    """A literal block maps line for line (the common case, so it goes by whole lines)."""
    out: list[int] = []
    pieces = text.split("\n")
    for k, piece in enumerate(pieces):
        if li >= len(starts):
            if piece:
                return None
            out.append(len(source))
            break
        begin, end = starts[li] + indent, ends[li]
        if k == len(pieces) - 1 and not piece:
            out.append(min(begin, end))
            break
        if (source[begin:end] if begin < end else "") != piece:
            return None
        out.extend(range(begin, end))
        out.append(end)  # the line break after it, or the end of the value
        li += 1
    return out


def _quoted(source: str, start: int, text: str, *, double: bool) -> list[int] | None:
    quote = source[start]
    chars: list[str] = []
    out: list[int] = []
    escaped: list[bool] = []
    i = start + 1
    while i < len(source):
        c = source[i]
        if c == quote:
            if not double and source.startswith("''", i):
                chars.append("'")
                out.append(i)
                escaped.append(True)
                i += 2
                continue
            break
        if double and c == "\\":
            n = source[i + 1 : i + 2]
            if n in _SIMPLE_ESCAPES:
                chars.append(_SIMPLE_ESCAPES[n])
                out.append(i)
                escaped.append(True)
                i += 2
            elif n in _HEX_ESCAPES:
                width = _HEX_ESCAPES[n]
                digits = source[i + 2 : i + 2 + width]
                if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                    return None
                chars.append(chr(int(digits, 16)))
                out.append(i)
                escaped.append(True)
                i += 2 + width
            elif n and n in _BREAK_CHARS:  # an escaped line break: joins the lines
                i = _skip_blank(source, _skip_break(source, i + 1))
            else:
                return None
            continue
        if c in _BREAK_CHARS:
            while chars and chars[-1] in _BLANK and not escaped[-1]:
                chars.pop()
                out.pop()
                escaped.pop()
            # As PyYAML folds a flow scalar's line break: the first becomes a space when
            # no blank line follows, each later one a newline; a line or paragraph
            # separator (U+2028, U+2029) is kept as itself wherever it stands.
            breaks = [(_line_break(source, i), i)]
            i = _skip_blank(source, _skip_break(source, i))
            while i < len(source) and source[i] in _BREAK_CHARS:
                breaks.append((_line_break(source, i), i))
                i = _skip_blank(source, _skip_break(source, i))
            first, at = breaks[0]
            folded = [(first, at)] if first != "\n" else [] if len(breaks) > 1 else [(" ", at)]
            for ch, pos in folded + breaks[1:]:
                chars.append(ch)
                out.append(pos)
                escaped.append(False)
            continue
        chars.append(c)
        out.append(i)
        escaped.append(False)
        i += 1
    if "".join(chars) != text:
        return None
    out.append(i)
    return out


def _line_break(source: str, i: int) -> str:
    """The character a line break at ``i`` reads as (PyYAML keeps U+2028/U+2029)."""
    return source[i] if source[i] in "\u2028\u2029" else "\n"


def _skip_break(source: str, i: int) -> int:
    return i + 2 if source.startswith("\r\n", i) else i + 1


def _skip_blank(source: str, i: int) -> int:
    while i < len(source) and source[i] in _BLANK:
        i += 1
    return i
