"""Container states of one deployment, for the settle gate: the real ``ContainerWatch``.

One filtered list per sample (a few ms against the engine, see the peer bench): the
settle gate samples every 250 ms, so this must stay cheap.  On a local socket the calls go
through ``agent.engine`` (stdlib): a ``--watch`` process that repairs never loads the SDK.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from reconciler.model.ids import LABEL_DEPLOYMENT
from reconciler.model.state import ContainerState

__all__ = ["DockerWatch"]


class DockerWatch:
    def __init__(self, client: Any = None) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import docker

            self._client = docker.from_env(timeout=10)
        return self._client

    def _list(self, deployment_id: str) -> list[dict[str, Any]]:
        """The inspect data of the deployment's containers (list, then one inspect each:
        what the SDK's ``containers.list()`` does).  Through ``agent.engine`` when the
        daemon is a local socket and no client was given: the SDK is not imported."""
        filters = {"label": f"{LABEL_DEPLOYMENT}={deployment_id}"}
        if self._client is None:
            from agent.engine import local_engine

            engine = local_engine(timeout=10)
            if engine is not None:
                listed = engine.containers(all=True, filters=filters)
                return [engine.inspect_container(str(item["Id"])) for item in listed]
        return [dict(c.attrs) for c in self.client.containers.list(all=True, filters=filters)]

    def containers(self, deployment_id: str) -> list[ContainerState]:
        out = []
        for attrs in self._list(deployment_id):
            state = attrs.get("State") or {}
            health = (state.get("Health") or {}).get("Status") or "none"
            labels = (attrs.get("Config") or {}).get("Labels") or {}
            status = state.get("Status") or "running"
            out.append(
                ContainerState(
                    service=labels.get("com.docker.compose.service", ""),
                    name=attrs.get("Name", "").lstrip("/"),
                    status=status if status in _STATUSES else "running",
                    health=health if health in ("healthy", "unhealthy", "starting") else "none",
                    restarts=int(attrs.get("RestartCount") or 0),
                    exit_code=state.get("ExitCode") if status in ("exited", "dead") else None,
                    started_at=_epoch(state.get("StartedAt")),
                )
            )
        return out

    def image_ids(self, deployment_id: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for attrs in self._list(deployment_id):
            labels = (attrs.get("Config") or {}).get("Labels") or {}
            service = labels.get("com.docker.compose.service")
            if service:
                out[service] = str(attrs.get("Image", ""))
        return out


def _epoch(stamp: object) -> float | None:
    """Docker's ``StartedAt`` (RFC 3339, nanoseconds) in epoch seconds; None for the zero
    time of a container that never started, or anything unreadable."""
    if not isinstance(stamp, str) or stamp.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


_STATUSES = frozenset({"running", "exited", "restarting", "created", "paused", "dead", "removing"})
