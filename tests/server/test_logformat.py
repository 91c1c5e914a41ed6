"""``--log-format``: the two formatters (pure), and the agent's flag parsed for real."""

from __future__ import annotations

import json
import logging
import re

import pytest

from agent.daemon import _parser
from reconciler.model.logformat import JsonFormatter, TextFormatter


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("reconciler.server", logging.WARNING, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_is_one_object_with_the_fields_beside_the_message() -> None:
    record = _record(
        "command %s sent",
        "cmd_1",
        fields={"event": "command.sent", "deployment": "blog\nforged", "message": "m", "n": 2},
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line  # a newline from a host cannot start a line of its own
    data = json.loads(line)
    assert data["message"] == "command cmd_1 sent" and data["level"] == "warning"
    assert data["logger"] == "reconciler.server"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", data["time"])
    assert (data["event"], data["deployment"], data["n"]) == ("command.sent", "blog\nforged", 2)
    assert data["field.message"] == "m"  # a field never overwrites the line's own keys


def test_json_carries_the_traceback_and_text_ignores_the_fields() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = _record("failed", fields={"event": "x"})
        record.exc_info = sys.exc_info()
    data = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in data["exception"]
    text = TextFormatter().format(_record("reconcile ok", fields={"event": "reconcile"}))
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ WARNING reconciler.server: reconcile ok", text
    )


def test_the_agent_takes_text_or_json_and_refuses_anything_else(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECONCILE_LOG_FORMAT", raising=False)
    assert _parser().parse_args([]).log_format == "text"
    assert _parser().parse_args(["--log-format", "json"]).log_format == "json"
    monkeypatch.setenv("RECONCILE_LOG_FORMAT", "json")
    assert _parser().parse_args([]).log_format == "json"
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["--log-format", "xml"])
    assert exc.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err


def test_a_bad_log_format_in_the_agents_environment_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.daemon import main

    monkeypatch.setenv("RECONCILE_LOG_FORMAT", "xml")
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "RECONCILE_LOG_FORMAT='xml': choose from text, json" in capsys.readouterr().err
