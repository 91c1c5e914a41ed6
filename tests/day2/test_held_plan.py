"""Held deployments in the pure planner and its reports: left alone (action ``held``,
with the reason and the ways out) while git wants the spec it was held at; planned
normally once its desired spec hash differs (its file changed in git)."""

from __future__ import annotations

import json

from reconciler.model.state import ActualState, AgentState, Hold
from reconciler.plan import plan, report
from tests.plan.fakehost import deployed_app
from tests.plan.strategies import config_for, image_spec, rendered


def _host(app: object) -> ActualState:
    return ActualState(
        source="test",
        agents={"local": AgentState(agent="local", deployments={app.id: app})},  # type: ignore[attr-defined]
    )


def test_a_held_deployment_is_left_alone_until_its_spec_changes_in_git() -> None:
    v2 = rendered(image_spec("web", image="busybox:1.37"), config_for())
    v3 = rendered(image_spec("web", image="busybox:1.38"), config_for())
    # Rolled back to an older spec while git wanted v2: the host runs another spec.
    hold = Hold(release="20261204T100000-aaaaaaaaaaaa", release_spec_hash="a" * 64,
                spec_hash=v2.spec_hash, at="2026-12-04T10:00:00Z")  # fmt: skip
    app = deployed_app(v2).model_copy(update={"spec_hash": "a" * 64, "held": hold})

    held = plan([v2], _host(app))
    [action] = held.actions
    assert action.action == "held"
    assert "rolled back by hand to release 20261204T100000-aaaaaaaaaaaa" in action.reason
    assert "reconcile rollback --release web" in action.reason
    assert held.summary["held"] == 1
    assert not held.has_changes  # --detailed-exitcode: a hold is not a change to apply

    text = [line for _style, line in report.text_plan(held)]
    assert any(" held " in line and "web" in line for line in text), text
    assert report.summary_line(held) == "No changes. 0 deployments up to date, 1 held."
    assert "| ‖ | `web` | held |" in report.markdown_plan(held)
    assert json.loads(report.json_plan(held))["actions"][0]["action"] == "held"

    changed = plan([v3], _host(app))  # the file changed in git: the hold is released
    [action] = changed.actions
    assert action.action == "update"


def test_a_plan_without_holds_keeps_its_json_summary() -> None:
    v2 = rendered(image_spec("web"), config_for())
    p = plan([v2], _host(deployed_app(v2)))
    assert "held" not in p.summary
    assert p.actions[0].action == "noop"
