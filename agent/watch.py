"""Container states of one deployment, for the settle gate: the real ``ContainerWatch``.

One filtered list per sample (a few ms against the engine, see the peer bench): the
settle gate samples every 250 ms, so this must stay cheap.
"""

from __future__ import annotations

from typing import Any

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

    def _list(self, deployment_id: str) -> list[Any]:
        return list(
            self.client.containers.list(
                all=True, filters={"label": f"io.reconciler.deployment={deployment_id}"}
            )
        )

    def containers(self, deployment_id: str) -> list[ContainerState]:
        out = []
        for c in self._list(deployment_id):
            attrs = c.attrs
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
                )
            )
        return out

    def image_ids(self, deployment_id: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for c in self._list(deployment_id):
            labels = (c.attrs.get("Config") or {}).get("Labels") or {}
            service = labels.get("com.docker.compose.service")
            if service:
                out[service] = str(c.attrs.get("Image", ""))
        return out


_STATUSES = frozenset({"running", "exited", "restarting", "created", "paused", "dead", "removing"})
