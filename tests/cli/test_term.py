"""The CLI's one console: strings are never markup, control characters never reach the
terminal.  Pure unit tests of ``reconciler.cli.term``; the console-script tests in
``test_cli_ci.py`` and ``test_status_server_text.py`` run the same paths for real."""

from __future__ import annotations

import io

import pytest
from rich.table import Table

from reconciler.cli.term import console, error, plain, styled, text


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[8mhidden", r"\x1b[8mhidden"),  # ESC: colours, hide, cursor moves
        ("\x1b]8;;https://e.example\x07x", r"\x1b]8;;https://e.example\x07x"),  # OSC 8 link
        ("\x9b2J", r"\x9b2J"),  # C1 CSI: a one-byte ESC [
        ("ok\rFAKE", r"ok\rFAKE"),  # carriage return overwrites the line
        ("a\x00b\x7f", r"a\x00b\x7f"),
        ("\u202eevil\u2066", r"\u202eevil\u2066"),  # bidi override and isolate
        ("[bold]x[/] ✓ ünï", "[bold]x[/] ✓ ünï"),  # markup is not this function's business
        ("two\nlines\tand a tab", "two\nlines\tand a tab"),
    ],
)
def test_plain_escapes_control_characters_only(raw: str, shown: str) -> None:
    assert plain(raw) == shown


def test_plain_one_line_escapes_newlines_and_tabs() -> None:
    assert plain("a\nb\tc", newlines=False) == r"a\nb\tc"
    assert plain(42) == "42"


def render(*objects: object) -> str:
    out = console()
    out.file = io.StringIO()
    out.width = 200
    out.print(*objects)
    value = out.file.getvalue()
    assert isinstance(value, str)
    return value


def test_console_prints_strings_as_they_are() -> None:
    shown = render("[/oops] [link=https://e.example]x[/link] [conceal]s[/conceal] :smile:")
    assert shown == "[/oops] [link=https://e.example]x[/link] [conceal]s[/conceal] :smile:\n"
    assert render("\x1b[31mred") == "\\x1b[31mred\n"


def test_console_table_cells_and_title_are_plain() -> None:
    table = Table(title="[/] \x1b[8mtitle")
    table.add_column("[bold]col")
    table.add_row("[/oops]\x1b]8;;x\x1b\\")
    shown = render(table)
    assert "[/] \\x1b[8mtitle" in shown
    assert "[bold]col" in shown
    assert "[/oops]\\x1b]8;;x\\x1b\\" in shown
    assert "\x1b" not in shown


def test_text_styled_and_error_escape_their_data() -> None:
    assert text("a\x1bb", "bold").plain == "a\\x1bb"
    assert text("a\nb", newlines=False).plain == "a\\nb"
    line = styled(("[red]", "bold"), " ", "\x1b[8m")
    assert line.plain == "[red] \\x1b[8m"
    assert line.spans[0].style == "bold"
    assert render(error("hook name must match ^[a-z0-9]$")) == (
        "error: hook name must match ^[a-z0-9]$\n"
    )


def test_apply_summary_prints_host_messages_and_logs_as_text() -> None:
    """``reconcile apply``'s result table and log tail: a container's log lines and the
    executor's messages come from the host, with colours and markup in them."""
    from agent.executor import ActionResult
    from reconciler.cli.apply import _summary_table
    from reconciler.plan import Action, Plan

    action = Action(
        action="install", deployment="api", id="dpl_00000000000000aa", agent="local", reason="new"
    )
    failed = ActionResult(
        action, False, "up failed: [/oops] \x1b[8mhidden", logs="app | \x1b[31merror[/] boom\n"
    )
    out = console()
    out.file = io.StringIO()
    out.width = 200
    _summary_table(out, Plan(actions=[action]), [failed])
    shown = out.file.getvalue()
    assert isinstance(shown, str)
    assert "failed up failed: [/oops] \\x1b[8mhidden" in shown
    assert "app | \\x1b[31merror[/] boom" in shown
    assert "\x1b" not in shown
