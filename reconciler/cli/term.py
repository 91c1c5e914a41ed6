"""Printing for people: text from users, hosts and repositories is shown as it is.

Rich reads ``[...]`` in a string as markup: a repository under ``deploy/[prod]`` lost its
brackets, a host's result message ``[/oops]`` crashed ``reconcile status --server``
(``MarkupError``), and ``[link=…]`` or ``[conceal]`` in a name put a hyperlink or hidden
text on the operator's terminal.  Raw control characters (ESC sequences, OSC 8 links,
carriage returns that overwrite a line, bidi overrides) did the same without markup.

So this is the one place the CLI makes a console: it never parses markup or emoji codes,
and every string it renders has its control characters escaped (``\\x1b``).  Styling
comes from ``Text`` and styles, never from brackets in a string; a ``Text`` built from
data goes through :func:`text` (or :func:`styled`) for the same escaping.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console, HighlighterType, JustifyMethod, OverflowMethod
    from rich.style import Style
    from rich.text import Text

__all__ = ["console", "error", "plain", "styled", "text"]

# C0 and C1 controls (newline and tab apart), DEL, and the bidi embeddings, overrides and
# isolates that reorder what a terminal shows ("Trojan Source").
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROL_OR_NEWLINE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def plain(value: object, *, newlines: bool = True) -> str:
    """``value`` as inert text: control characters written as Python escapes (``\\x1b``).

    ``newlines=False`` escapes ``\\n`` and tabs too, for one-line fields such as a host's
    result message, which must not fake a line of its own.
    """
    pattern = _CONTROL if newlines else _CONTROL_OR_NEWLINE
    return pattern.sub(_visible, str(value))


def text(value: object, style: str | Style = "", *, newlines: bool = True) -> Text:
    """A ``Text`` of data (a name, path, message): escaped, never read as markup."""
    from rich.text import Text

    return Text(plain(value, newlines=newlines), style=style)


def styled(*parts: str | tuple[object, str]) -> Text:
    """One line from pieces: plain strings and ``(value, style)`` pairs, all escaped."""
    from rich.text import Text

    out = Text()
    for part in parts:
        if isinstance(part, tuple):
            out.append(plain(part[0]), style=part[1])
        else:
            out.append(plain(part))
    return out


def error(message: object, label: str = "error:", style: str = "bold red") -> Text:
    """``error: <message>`` with the label styled and the message as plain text."""
    return styled((label, style), " ", str(message))


def console(stderr: bool = False) -> Console:
    """A console that prints every string as plain text (see the module docstring).

    The class is made here so that rich is imported only by commands that print with it.
    """
    from rich.console import Console
    from rich.text import Text

    class _PlainConsole(Console):
        # Every str a console renders -- print() arguments, table cells and titles --
        # passes through render_str, so this one override covers them all.
        def render_str(
            self,
            text: str,
            *,
            style: str | Style = "",
            justify: JustifyMethod | None = None,
            overflow: OverflowMethod | None = None,
            emoji: bool | None = None,
            markup: bool | None = None,
            highlight: bool | None = None,
            highlighter: HighlighterType | None = None,
        ) -> Text:
            return Text(plain(text), style=style, justify=justify, overflow=overflow)

    return _PlainConsole(stderr=stderr, highlight=False, soft_wrap=True, markup=False, emoji=False)
