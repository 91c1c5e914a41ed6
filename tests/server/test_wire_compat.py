"""Neighbouring versions talk: a command from a newer server, whose action carries a
field this version does not know, still parses; what the agent acts on stays checked."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from reconciler.model.agentapi import Command


def _command(**action: Any) -> dict[str, Any]:
    return {
        "id": "cmd_" + "0" * 16,
        "kind": "install",
        "action": {
            "action": "install",
            "deployment": "web",
            "id": "dpl_0123456789abcdef",
            "agent": "local",
            "reason": "new",
            **action,
        },
        "created": "2026-12-04T10:00:00+00:00",
        "deadline": "2026-12-04T10:15:00+00:00",
    }


def test_an_unknown_action_field_from_a_newer_server_is_ignored() -> None:
    cmd = Command.model_validate(_command(priority="high", routes=["a.localhost"]))
    assert cmd.action.id == "dpl_0123456789abcdef"
    assert cmd.action.routes == ["a.localhost"]
    assert not hasattr(cmd.action, "priority")


def test_the_fields_the_agent_acts_on_stay_checked() -> None:
    with pytest.raises(ValidationError, match="id"):
        Command.model_validate(_command(id="../../victim"))
    with pytest.raises(ValidationError, match="action"):
        Command.model_validate(_command(action="explode"))


def test_a_report_from_a_newer_agent_is_read_without_its_new_fields() -> None:
    from reconciler.model.agentapi import AgentReport

    report = AgentReport.model_validate(
        {
            "state": {
                "agent": "agt_0123456789abcdef",
                "online": True,
                "deployments": {
                    "dpl_0123456789abcdef": {
                        "id": "dpl_0123456789abcdef",
                        "name": "web",
                        "namespace": "default",
                        "spec_hash": "h" * 64,
                        "containers": [{"service": "app", "status": "running", "future": True}],
                        "next_release_field": {"x": 1},
                    }
                },
                "next_release_field": {"x": 1},
            },
            "some_future_field": 3,
        }
    )
    (app,) = report.state.deployments.values()
    assert app.name == "web" and app.containers[0].status == "running"
