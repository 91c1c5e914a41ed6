"""YAML loading that is safe for files strangers commit, and remembers where things are.

PyYAML's own loaders expand aliases into a graph, recurse without a depth bound and
silently let a later duplicate key win.  Here the C event stream is read by a small
iterative composer instead, so that, in one pass and before anything large is built:

* every value's position (``line:col``) is recorded under its path, for error messages;
* a duplicate key is an error naming both places;
* nesting is bounded (:data:`MAX_DEPTH`), iteratively, so a file of ``[[[[`` cannot blow
  the C stack;
* alias expansion is *accounted*, never performed: each anchored node knows its expanded
  weight in nodes and bytes, so a billion-laughs file is refused after reading a few
  hundred bytes of events, and a repository's :class:`~reconciler.load.budget.Budget`
  is charged what the document will cost once something expands it (a hash, a render);
* only the standard tags are honoured; ``!!python/...``, ``!Ref`` and friends are refused.

Scalars resolve as YAML 1.1 (``tls: off`` is ``false``), except that sexagesimal numbers
(``22:22``) stay strings, as in Compose's YAML 1.2 -- a port mapping must not become 1342.
"""

from __future__ import annotations

import hashlib
import marshal
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

from reconciler.load.budget import Budget, BudgetExceeded
from reconciler.model.errors import InvalidSpec, Problem
from reconciler.model.memo import Memo

__all__ = [
    "MAX_ALIASES",
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_EXPANDED_NODES",
    "Document",
    "Locate",
    "Path",
    "load_yaml",
]

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_ALIASES = 256
MAX_EXPANDED_NODES = 100_000
# How many events pass between two looks at the clock (a look costs ~50 ns; 1,024 events
# take ~0.5 ms to parse, so a file over its time is stopped within a millisecond or so).
_TICK_EVENTS = 1024

Path = tuple[str | int, ...]

#: Maps a ``line:col`` of the text being loaded onto the file the user edits: the identity
#: for a file, a shift into the outer file for YAML embedded in a string (see
#: :mod:`reconciler.load.embedded`).
Locate = Callable[[int, int], tuple[int, int]]

try:  # libyaml when present: an order of magnitude faster at producing events
    _Parser: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - pure-Python fallback
    _Parser = yaml.SafeLoader

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_SCALAR_TAGS = frozenset({_STR, _INT, _FLOAT, _BOOL, _NULL, _TIMESTAMP, _MERGE})

_YAML_TAG_PREFIX = "tag:yaml.org,2002:"

# Line breaks as YAML counts them (not str.splitlines, which also splits on \f, \v, ...).
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")

_resolver = Resolver()
_constructor = SafeConstructor()


@dataclass(frozen=True)
class Document:
    """A loaded YAML file: plain data plus where each value and key stands."""

    name: str
    data: Any
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict, repr=False)
    key_positions: dict[Path, tuple[int, int]] = field(default_factory=dict, repr=False)
    source: str | None = field(default=None, repr=False)
    # What the data costs once expanded (aliases counted in full): nodes, scalar bytes.
    expanded: tuple[int, int] = field(default=(0, 0), repr=False, compare=False)

    @property
    def source_lines(self) -> list[str] | None:
        return None if self.source is None else self.source.splitlines()

    def pos(self, path: Sequence[str | int] = ()) -> tuple[int, int]:
        """Position of the value at ``path``, else of its nearest recorded ancestor."""
        p = tuple(path)
        while p:
            if p in self.positions:
                return self.positions[p]
            p = p[:-1]
        return self.positions.get((), (1, 1))

    def key_pos(self, path: Sequence[str | int]) -> tuple[int, int]:
        """Position of the key that introduces ``path`` (falls back to :meth:`pos`)."""
        p = tuple(path)
        while p:
            if p in self.key_positions:
                return self.key_positions[p]
            if p in self.positions:
                return self.positions[p]
            p = p[:-1]
        return self.positions.get((), (1, 1))

    def problem(
        self,
        path: Sequence[str | int],
        rule: str,
        message: str,
        fix: str | None = None,
        *,
        key: bool = True,
        **kw: Any,
    ) -> Problem:
        line, col = self.key_pos(path) if key else self.pos(path)
        return Problem(self.name, line, col, rule, message, fix, **kw)


class _Refused(Exception):
    def __init__(self, mark: Any, rule: str, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.mark = mark
        self.rule = rule
        self.message = message
        self.fix = fix


def _pos(mark: Any) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1)


def _shown_tag(tag: str) -> str:
    """A tag as the user wrote it: ``tag:yaml.org,2002:python/x`` is ``!!python/x``."""
    if tag.startswith(_YAML_TAG_PREFIX):
        return "!!" + tag[len(_YAML_TAG_PREFIX) :]
    return tag


def _scalar(event: Any) -> tuple[Any, str]:
    value: str = event.value
    if event.tag is None or event.tag == "!":
        tag = _resolver.resolve(ScalarNode, value, event.implicit)  # type: ignore[no-untyped-call]
    else:
        tag = event.tag
    if tag not in _SCALAR_TAGS:
        raise _Refused(
            event.start_mark,
            "yaml-tag",
            f"tag {_shown_tag(tag)!r} is not allowed",
            "remove the tag; only plain YAML scalars, lists and mappings are accepted",
        )
    if tag in (_STR, _TIMESTAMP, _MERGE):
        return value, tag
    if tag in (_INT, _FLOAT) and ":" in value:
        return value, _STR  # sexagesimal in YAML 1.1, a string in YAML 1.2 (Compose)
    node = ScalarNode(tag, value, event.start_mark, event.end_mark)
    if tag == _INT:
        return _constructor.construct_yaml_int(node), tag
    if tag == _FLOAT:
        return _constructor.construct_yaml_float(node), tag
    if tag == _BOOL:
        return _constructor.construct_yaml_bool(node), tag
    return None, tag


class _Frame:
    __slots__ = (
        "container",
        "explicit",
        "key",
        "key_mark",
        "mark",
        "merges",
        "nbytes",
        "path",
        "weight",
    )

    def __init__(self, container: Any, path: Path, mark: Any) -> None:
        self.container = container
        self.path = path
        self.mark = mark
        self.weight = 1
        self.nbytes = 0
        self.key: Any = _NOKEY
        self.key_mark: Any = None
        self.merges: list[tuple[Any, Any]] = []
        self.explicit: set[Any] = set()


_NOKEY = object()


def _compose(
    events: Iterator[Any],
    doc: Document,
    budget: Budget,
    _pos: Callable[[Any], tuple[int, int]] = _pos,
) -> tuple[Any, int, int]:
    """Build plain data from events with a bounded, explicit stack.

    Returns the data with its expanded size: nodes and scalar bytes, aliases counted as
    often as they are used.  ``budget`` is only checked here; the caller charges it.
    ``_pos`` places a mark; the default (the module's own) keeps the hot path free of an
    extra call when nothing needs moving.
    """
    anchors: dict[str, tuple[Any, int, int]] = {}
    stack: list[_Frame] = []
    pending_anchor: list[tuple[str, _Frame]] = []
    result: Any = None
    aliases = 0
    total = 0
    total_bytes = 0
    # what the budget has left, kept locally: attach() runs once per node
    node_room = budget.limits.nodes - budget.nodes
    byte_room = budget.limits.expanded_bytes - budget.bytes

    def child_path() -> Path:
        top = stack[-1]
        if isinstance(top.container, list):
            return (*top.path, len(top.container))
        return (*top.path, top.key)

    def attach(value: Any, weight: int, nbytes: int, mark: Any, is_merge: bool = False) -> None:
        nonlocal result, total, total_bytes
        total += weight
        total_bytes += nbytes
        if total > MAX_EXPANDED_NODES:
            raise _Refused(
                mark,
                "yaml-aliases",
                f"document expands to more than {MAX_EXPANDED_NODES} nodes (alias bomb?)",
                "write the values out instead of nesting aliases",
            )
        if total > node_room or total_bytes > byte_room:
            try:
                budget.room(total, total_bytes)
            except BudgetExceeded as exc:
                raise _Refused(mark, exc.rule, exc.message, exc.fix) from None
        if not stack:
            result = value
            return
        top = stack[-1]
        top.weight += weight
        top.nbytes += nbytes
        if isinstance(top.container, list):
            doc.positions[(*top.path, len(top.container))] = _pos(mark)
            top.container.append(value)
            return
        if top.key is _NOKEY:
            if isinstance(value, (dict, list)):
                raise _Refused(
                    mark,
                    "yaml-key",
                    "a mapping key must be a plain scalar",
                    "use a plain string as the key",
                )
            top.key = _MERGE if is_merge else value
            top.key_mark = mark
            return
        key = top.key
        top.key = _NOKEY
        if key is _MERGE:
            top.merges.append((value, mark))
            return
        try:
            hash(key)
        except TypeError:  # pragma: no cover - scalars are hashable
            raise _Refused(
                top.key_mark, "yaml-key", "a mapping key must be a plain scalar"
            ) from None
        if key in top.explicit:
            first = doc.key_positions.get((*top.path, key), (0, 0))
            raise _Refused(
                top.key_mark,
                "yaml-duplicate-key",
                f"duplicate key {key!r} (first defined at line {first[0]})",
                "remove one of the two; YAML would silently keep only the last",
            )
        top.explicit.add(key)
        doc.key_positions[(*top.path, key)] = _pos(top.key_mark)
        doc.positions[(*top.path, key)] = _pos(mark)
        top.container[key] = value

    for events_seen, event in enumerate(events, 1):
        if events_seen % _TICK_EVENTS == 0:
            try:
                budget.tick()
            except BudgetExceeded as exc:
                raise _Refused(event.start_mark, exc.rule, exc.message, exc.fix) from None
        etype = type(event)
        if etype is yaml.ScalarEvent:
            size = len(event.value)
            if stack and isinstance(stack[-1].container, dict) and stack[-1].key is _NOKEY:
                value, tag = _scalar(event)
                attach(value, 1, size, event.start_mark, is_merge=(tag == _MERGE))
            else:
                value, _tag = _scalar(event)
                attach(value, 1, size, event.start_mark)
            if event.anchor:
                anchors[event.anchor] = (value, 1, size)
        elif etype is yaml.MappingStartEvent or etype is yaml.SequenceStartEvent:
            if event.tag not in (None, "!", _MAP, _SEQ):
                raise _Refused(
                    event.start_mark,
                    "yaml-tag",
                    f"tag {_shown_tag(event.tag)!r} is not allowed",
                    "remove the tag",
                )
            if stack and isinstance(stack[-1].container, dict) and stack[-1].key is _NOKEY:
                raise _Refused(
                    event.start_mark,
                    "yaml-key",
                    "a mapping key must be a plain scalar",
                    "use a plain string as the key",
                )
            if len(stack) >= MAX_DEPTH:
                raise _Refused(
                    event.start_mark,
                    "yaml-depth",
                    f"nesting deeper than {MAX_DEPTH} levels",
                    "flatten the structure",
                )
            path: Path = child_path() if stack else ()
            container: Any = {} if etype is yaml.MappingStartEvent else []
            frame = _Frame(container, path, event.start_mark)
            stack.append(frame)
            if event.anchor:
                pending_anchor.append((event.anchor, frame))
        elif etype is yaml.MappingEndEvent or etype is yaml.SequenceEndEvent:
            frame = stack.pop()
            if frame.merges:
                _apply_merges(frame)
            for i in range(len(pending_anchor) - 1, -1, -1):
                if pending_anchor[i][1] is frame:
                    anchors[pending_anchor[i][0]] = (frame.container, frame.weight, frame.nbytes)
                    del pending_anchor[i]
            # weight was already counted child by child; attach only this node itself
            total -= frame.weight - 1
            total_bytes -= frame.nbytes
            is_root = not stack
            attach(frame.container, frame.weight, frame.nbytes, frame.mark)
            if is_root:
                doc.positions[()] = _pos(frame.mark)
        elif etype is yaml.AliasEvent:
            aliases += 1
            if aliases > MAX_ALIASES:
                raise _Refused(
                    event.start_mark,
                    "yaml-aliases",
                    f"more than {MAX_ALIASES} aliases",
                    "write the values out instead of aliasing them",
                )
            if event.anchor not in anchors:
                raise _Refused(
                    event.start_mark,
                    "yaml-syntax",
                    f"unknown alias *{event.anchor}",
                    f"define the anchor `&{event.anchor}` before this use of it",
                )
            value, weight, nbytes = anchors[event.anchor]
            is_merge_key = (
                bool(stack) and isinstance(stack[-1].container, dict) and (stack[-1].key is _NOKEY)
            )
            if is_merge_key:
                raise _Refused(
                    event.start_mark,
                    "yaml-key",
                    "an alias cannot be a mapping key",
                    "write the key out as a plain string",
                )
            attach(value, weight, nbytes, event.start_mark)
        elif etype is yaml.DocumentStartEvent and result is not None:
            raise _Refused(
                event.start_mark,
                "yaml-multi-document",
                "more than one YAML document in the file",
                "keep one document per file (remove the extra `---`)",
            )
    return result, total, total_bytes


def _apply_merges(frame: _Frame) -> None:
    merged: dict[Any, Any] = {}
    for value, mark in frame.merges:
        sources = value if isinstance(value, list) else [value]
        for src in sources:
            if not isinstance(src, dict):
                raise _Refused(
                    mark,
                    "yaml-merge",
                    "`<<` merges only mappings",
                    "`<<` takes an alias to a mapping, e.g. `<<: *defaults`",
                )
            for k, v in src.items():
                merged.setdefault(k, v)
    container = frame.container
    for k, v in merged.items():
        if k not in container:
            container[k] = v


def load_yaml(
    content: bytes | str,
    name: str,
    budget: Budget | None = None,
    *,
    locate: Locate | None = None,
) -> Document:
    """Load one YAML document; raise :class:`InvalidSpec` with a positioned problem.

    An empty file loads as ``None``; callers decide whether that is allowed.  The
    document's expanded size is charged to ``budget`` (a repository's; without one, a
    fresh budget bounds this document alone).  ``locate`` moves every position (of
    values, keys, problems, and the lines problems quote in their message) from
    ``content`` onto the file the user edits.
    """
    budget = budget if budget is not None else Budget()
    place: Locate = locate or _same_place

    def pos(mark: Any) -> tuple[int, int]:
        return place(*_pos(mark))

    if isinstance(content, bytes):
        if len(content) > MAX_BYTES:
            raise InvalidSpec(
                Problem(
                    name,
                    1,
                    1,
                    "yaml-size",
                    f"file is {len(content)} bytes, more than the {MAX_BYTES} allowed",
                    "split it or move large content out of the repository",
                )
            )
        try:
            text = content.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InvalidSpec(_encoding_problem(name, exc)) from None
    else:
        text = content
        if len(text) > MAX_BYTES:
            raise InvalidSpec(
                Problem(
                    name,
                    1,
                    1,
                    "yaml-size",
                    f"file is larger than {MAX_BYTES} bytes",
                    "split it or move large content out of the repository",
                )
            )
    if locate is None:
        hit = _memo_get(text)
        # One that would cross the budget is parsed again: the refusal names the place.
        if hit is not None and budget.fits(*hit.expanded):
            budget.charge(*hit.expanded)
            return replace(hit, name=name)
    doc = Document(name=name, data=None)
    loader: Any = None
    try:
        loader = _Parser(text)  # the pure-Python reader already checks characters here
        events = _events(loader)
        data, nodes, nbytes = (
            _compose(events, doc, budget) if locate is None else _compose(events, doc, budget, pos)
        )
        budget.charge(nodes, nbytes)
    except _Refused as exc:
        line, col = pos(exc.mark) if exc.mark is not None else place(1, 1)
        raise InvalidSpec(Problem(name, line, col, exc.rule, exc.message, exc.fix)) from None
    except yaml.MarkedYAMLError as exc:
        raise InvalidSpec(_syntax_problem(name, text, exc, place)) from None
    except yaml.reader.ReaderError as exc:
        line, col = place(*_clamped(_lines(text), *_offset_pos(text, exc.position)))
        raise InvalidSpec(
            Problem(
                name,
                line,
                col,
                "yaml-syntax",
                f"invalid YAML: character #x{exc.character:04x} is not allowed ({exc.reason})",
                "remove the character, or write it as an escape in a double-quoted string",
            )
        ) from None
    except yaml.YAMLError as exc:
        line, col = place(1, 1)
        raise InvalidSpec(Problem(name, line, col, "yaml-syntax", f"invalid YAML: {exc}")) from None
    finally:
        if loader is not None:
            loader.dispose()
    loaded = Document(
        name=name,
        data=data,
        positions=doc.positions,
        key_positions=doc.key_positions,
        source=text,
        expanded=(nodes, nbytes),
    )
    if locate is None:
        _memo_put(text, loaded)
    return loaded


# A push to a repository of a thousand deployment files changes a few of them, and every
# reconcile loaded all of them again: parsing was 0.24 s of a 0.9 s push at 1,000 files.
# A document that parsed is kept by its text, as ``marshal`` bytes (plain data only: str,
# int, float, bool, None, lists and dicts, order kept), and every hit gets fresh objects,
# so no caller can change what the next one reads.  Its expanded size is still charged to
# the repository's budget; a document that failed is parsed (and refused) every time.
_memo: Memo[bytes] = Memo(4096)


def _memo_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _memo_get(text: str) -> Document | None:
    blob = _memo.get(_memo_key(text))
    if blob is None:
        return None
    data, positions, key_positions, expanded = marshal.loads(blob)  # noqa: S302 -- our own bytes
    return Document("", data, positions, key_positions, source=text, expanded=expanded)


def _memo_put(text: str, doc: Document) -> None:
    try:
        blob = marshal.dumps((doc.data, doc.positions, doc.key_positions, doc.expanded))
    except ValueError:  # not plain data after all: not kept
        return
    _memo.put(_memo_key(text), blob)


def _same_place(line: int, col: int) -> tuple[int, int]:
    return (line, col)


def _events(loader: Any) -> Iterator[Any]:
    while loader.check_event():
        yield loader.get_event()


def _lines(text: str) -> list[str]:
    """``text``'s lines as YAML counts them (a final line break opens no new line)."""
    lines = _LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _offset_pos(text: str, offset: int) -> tuple[int, int]:
    """1-based ``line:col`` of the character at ``offset`` in ``text``."""
    before = _LINE_BREAK.split(text[:offset])
    return (len(before), len(before[-1]) + 1)


def _clamped(lines: list[str], line: int, col: int) -> tuple[int, int]:
    """Never a place past the last line: the end of the stream is the end of that line."""
    if not lines:
        return (1, 1)
    if line > len(lines):
        return (len(lines), len(lines[-1]) + 1)
    return (max(line, 1), max(col, 1))


def _encoding_problem(name: str, exc: UnicodeDecodeError) -> Problem:
    """Place the first byte that is not UTF-8 (``exc.object`` is the text after any BOM)."""
    raw: bytes = exc.object
    before = raw[: exc.start].decode("utf-8", errors="replace")  # valid up to the bad byte
    line, col = _offset_pos(before, len(before))
    bad = raw[exc.start : exc.start + 1]
    return Problem(
        name,
        line,
        col,
        "yaml-encoding",
        f"not UTF-8 text: byte 0x{bad.hex()} cannot be decoded ({exc.reason})",
        "save the file as UTF-8",
    )


_GENERIC_SYNTAX_FIX = "check the indentation and quoting around this line"


def _syntax_problem(
    name: str, text: str, exc: yaml.MarkedYAMLError, place: Locate = _same_place
) -> Problem:
    """Place a PyYAML/libyaml syntax error where the user must edit, with a hint.

    A quote or bracket that is never closed is only noticed at the end of the stream,
    past the last line; the place it *opens* (PyYAML's ``context_mark``) is the useful
    one then, and the context ("while scanning a quoted scalar") says what is open.
    """
    lines = _lines(text)
    problem = exc.problem or exc.context or "invalid YAML"
    context = exc.context if exc.problem else None
    pmark, cmark = exc.problem_mark, exc.context_mark
    at_end = (
        pmark is None
        or "end of stream" in problem
        or pmark.index >= len(text)
        or pmark.line >= len(lines)
    )
    # a `---` inside a quoted string is the next document only if the quote never closed
    unclosed = "quoted scalar" in (context or "") and "document indicator" in problem
    use_context = cmark is not None and (at_end or unclosed)
    mark = cmark if use_context else pmark
    line, col = place(*(_clamped(lines, *_pos(mark)) if mark is not None else (1, 1)))
    if "nesting depth" in problem:  # libyaml's own bound (1000) tripped before ours
        return Problem(
            name,
            line,
            col,
            "yaml-depth",
            f"nesting deeper than {MAX_DEPTH} levels",
            "flatten the structure",
        )
    char = ""  # the character the parser stopped at
    if pmark is not None and 0 <= pmark.line < len(lines):
        char = lines[pmark.line][pmark.column : pmark.column + 1]
    if char == "\t" or "tab character" in problem or "'\\t'" in problem:
        return Problem(
            name,
            line,
            col,
            "yaml-syntax",
            "invalid YAML: found a tab character where YAML allows only spaces",
            "indent with spaces, not tabs",
        )
    if "that cannot start any token" in problem and char:
        problem = f"found character {char!r} that cannot start any token"
    message = f"invalid YAML: {problem}"
    ctx = context or ""
    opened = ""  # where the open quote or bracket is, when the problem is placed elsewhere
    if ctx:
        message += f" {ctx}"
        is_open = "quoted scalar" in ctx or "flow sequence" in ctx or "flow mapping" in ctx
        if is_open and cmark is not None and not use_context:
            where = place(*_clamped(lines, *_pos(cmark)))
            if where != (line, col):
                opened = f" at line {where[0]}, column {where[1]}"
                message += f" (opened{opened})"
    fix = _GENERIC_SYNTAX_FIX
    if "quoted scalar" in ctx and use_context:
        fix = "close the quote that opens here"
    elif "flow sequence" in ctx or "flow mapping" in ctx:
        opener, closer = ("[", "]") if "sequence" in ctx else ("{", "}")
        where_s = " that opens here" if use_context else f" `{opener}`{opened}"
        fix = f"close the bracket{where_s} with `{closer}`"
    elif "escape" in problem:
        fix = "write a backslash as `\\\\` inside double quotes, or use single quotes"
    elif "mapping values are not allowed" in problem:
        fix = "check the indentation around this line, and quote a value that contains `: `"
    elif "cannot start any token" in problem and char:
        fix = f"quote the value: {char!r} cannot start a plain YAML value"
    return Problem(name, line, col, "yaml-syntax", message, fix)
