"""Where actual state comes from for planning: the edge where ``--against`` does its I/O.

``local`` (the Docker engine on this machine plus the agent's state dir), ``empty``
(every agent online, running nothing), ``snapshot:FILE`` (a JSON file written by
``reconcile status --format json``) or an ``http(s)://`` control-plane URL.
"""

from __future__ import annotations

import pathlib

from reconciler.model.errors import HostError, InvalidSpec, TemporaryError
from reconciler.model.ids import LOCAL_AGENT
from reconciler.model.state import ActualState

__all__ = ["DEFAULT_LOCAL_NOTE", "MAX_SNAPSHOT_BYTES", "load_actual"]

MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024

#: Said at the top of a plan that defaulted to this machine's Docker daemon: in CI that
#: is a runner's daemon, which runs none of the fleet's apps and sees no remote agent.
DEFAULT_LOCAL_NOTE = (
    "no --against given and a Docker daemon answers here, so this plans against this "
    "machine: every agent other than `local` is blocked. In CI use --against empty, "
    "--against snapshot:FILE or the control plane's URL."
)


def load_actual(
    against: str | None,
    *,
    agents: list[str],
    state_dir: pathlib.Path | None = None,
) -> tuple[ActualState, str]:
    """The actual state and a sentence saying where it came from."""
    if against is None:
        if _docker_answers():
            return _local(agents, state_dir), f"local Docker host ({DEFAULT_LOCAL_NOTE})"
        return (
            ActualState.empty(agents),
            "empty (default: no Docker daemon answered; every deployment is an install)",
        )
    if against == "empty":
        return ActualState.empty(agents), "empty (every agent online, running nothing)"
    if against == "local":
        return _local(agents, state_dir), "local Docker host"
    if against.startswith("snapshot:"):
        path = pathlib.Path(against.removeprefix("snapshot:"))
        return _snapshot(path), f"snapshot {path}"
    if against.startswith(("http://", "https://")):
        return _remote(against), f"control plane {against}"
    raise InvalidSpec(
        f"--against {against!r}: use local, empty, snapshot:FILE or an http(s):// URL"
    )


def _docker_answers() -> bool:
    try:
        from agent.observe import docker_available
    except ImportError:  # pragma: no cover - the agent package ships with the CLI
        return False
    return docker_available()


def _local(agents: list[str], state_dir: pathlib.Path | None) -> ActualState:
    from agent.observe import observe_local

    local = observe_local(state_dir=state_dir, agent=LOCAL_AGENT)
    state = {LOCAL_AGENT: local}
    # Remote agents cannot be seen from here: they are unknown, so their actions block.
    return ActualState(source="local", agents=state)


def _snapshot(path: pathlib.Path) -> ActualState:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SNAPSHOT_BYTES + 1)
    except OSError as exc:
        raise InvalidSpec(f"snapshot {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_SNAPSHOT_BYTES:
        raise InvalidSpec(f"snapshot {path} is larger than {MAX_SNAPSHOT_BYTES} bytes")
    from pydantic import ValidationError

    try:
        return ActualState.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise InvalidSpec(
            f"snapshot {path} is not an actual-state file: {where}: {first['msg']}"
        ) from None


def _remote(url: str) -> ActualState:
    import httpx

    headers = {}
    from reconciler.model.secretenv import secret_from_env

    token = secret_from_env("RECONCILE_ADMIN_TOKEN")  # or the file ..._FILE names
    if token:
        headers["Authorization"] = f"Bearer {token}"
    endpoint = url.rstrip("/") + "/v1/actual-state"
    try:
        response = httpx.get(endpoint, headers=headers, timeout=10.0)
    except httpx.HTTPError as exc:
        raise TemporaryError(f"control plane {url} did not answer: {exc}", retry_after=5) from None
    if response.status_code in (401, 403):
        raise HostError(f"control plane {url} refused the token (HTTP {response.status_code})")
    if response.status_code != 200:
        raise TemporaryError(f"control plane {url} answered HTTP {response.status_code}")
    from pydantic import ValidationError

    try:
        return ActualState.model_validate_json(response.content)
    except ValidationError as exc:
        raise TemporaryError(f"control plane {url} sent an unreadable state: {exc}") from None
