"""Caps on what an agent posts, applied before anything is stored.

An agent is trusted with its own host's state, not with the server's memory or with
what every operator's ``reconcile status`` has to download: a 15 MB result message made
``/v1/deployments`` answer 14 MiB.  So every text an agent sends is cut to a size a
person reads (with a marker saying how much was dropped, so a cut is never mistaken for
the whole message), and every list to a length no real host reaches.

Only a report with more deployments than any host runs is refused whole (413) rather
than cut: a report missing deployments would make the planner install them again.
"""

from __future__ import annotations

import json
from typing import Any

from reconciler.model.agentapi import AgentReport, CommandResult

__all__ = [
    "MAX_DEPLOYMENTS_PER_AGENT",
    "MAX_LIST",
    "MAX_LOGS",
    "MAX_MESSAGE",
    "MAX_PAYLOAD",
    "MAX_TEXT",
    "TooManyDeployments",
    "cap_report",
    "cap_result",
    "clip",
]

MAX_MESSAGE = 4096  # a result's message (characters)
MAX_LOGS = 64 * 1024  # the app log lines sent with a failed result
MAX_TEXT = 1024  # any other text: names, ids, URLs, hostnames, container states
MAX_LIST = 256  # containers, services, URLs of one deployment; running command ids
MAX_DEPLOYMENTS_PER_AGENT = 2000
MAX_PAYLOAD = 256 * 1024  # an operation's answer, as JSON (a chunk of logs is 60 KiB)


class TooManyDeployments(ValueError):
    """A report naming more deployments than any one host runs."""


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, the marker included."""
    if len(text) <= limit:
        return text
    longest = f"… [cut by the server: {len(text)} of {len(text)} characters dropped]"
    keep = max(0, limit - len(longest))
    return (
        text[:keep] + f"… [cut by the server: {len(text) - keep} of {len(text)} characters dropped]"
    )


def _cap(value: Any) -> Any:
    if isinstance(value, str):
        return clip(value, MAX_TEXT)
    if isinstance(value, list):
        return [_cap(v) for v in value[:MAX_LIST]]
    if isinstance(value, dict):
        return {clip(str(k), MAX_TEXT): _cap(v) for k, v in list(value.items())[:MAX_LIST]}
    return value


def cap_result(result: CommandResult) -> CommandResult:
    payload = result.payload
    if payload is not None and len(json.dumps(payload)) > MAX_PAYLOAD:
        payload = {"ok": False, "error": f"the agent's answer is over {MAX_PAYLOAD} bytes"}
    return result.model_copy(
        update={
            "payload": payload,
            "message": clip(result.message, MAX_MESSAGE),
            "logs": clip(result.logs, MAX_LOGS),
            "url": None if result.url is None else clip(result.url, MAX_TEXT),
        }
    )


def cap_report(report: AgentReport) -> AgentReport:
    """The report with every text and list capped (raises :class:`TooManyDeployments`)."""
    if report.state is None:
        return report.model_copy(
            update={
                "running": [clip(r, MAX_TEXT) for r in report.running[:MAX_LIST]],
                "version": clip(report.version, MAX_TEXT),
                "hostname": clip(report.hostname, MAX_TEXT),
                "state_digest": None
                if report.state_digest is None
                else clip(report.state_digest, MAX_TEXT),
            }
        )
    deployments = report.state.deployments
    if len(deployments) > MAX_DEPLOYMENTS_PER_AGENT:
        raise TooManyDeployments(
            f"report names {len(deployments)} deployments; at most "
            f"{MAX_DEPLOYMENTS_PER_AGENT} per agent"
        )
    capped = {
        clip(key, MAX_TEXT): type(app).model_validate(_cap(app.model_dump(mode="json")))
        for key, app in deployments.items()
    }
    state = report.state.model_copy(
        update={
            "deployments": capped,
            "reason": None if report.state.reason is None else clip(report.state.reason, MAX_TEXT),
        }
    )
    return report.model_copy(
        update={
            "state": state,
            "running": [clip(r, MAX_TEXT) for r in report.running[:MAX_LIST]],
            "version": clip(report.version, MAX_TEXT),
            "hostname": clip(report.hostname, MAX_TEXT),
        }
    )
