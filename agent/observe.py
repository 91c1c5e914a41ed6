"""What runs on this host, as an :class:`AgentState`: containers by label + the state dir.

Cost is the point (see the peer bench: one compose CLI call is 50-65 ms, one sparse
API list ~2 ms): ``observe_local`` makes ONE sparse container list filtered by our
deployment label, and inspects only containers that are restarting or exited (the
restart count is not in the list).  A healthy host of any size costs one API call plus
reading the ``state.json`` files.

Merging rules (the record is authoritative, labels only fill gaps):

- record + containers: the record's name, namespace, spec hash, status, services and
  spec record; containers as listed.  If a container's ``io.reconciler.spec-hash`` label
  disagrees with the record, the app's ``spec_hash`` is the label's (what actually runs),
  so the planner sees a difference and updates instead of reporting ``noop``.
- containers without a record: an app from labels only (``record`` None).
- a record without containers: an app with no containers (the planner sees them
  missing and repairs), or ``uninstalled`` when the record says so.

Containers without our deployment label never appear.  Containers of every namespace
do (with their namespace): filtering by namespace is the planner's job.

The Docker SDK is imported inside the functions so the CLI starts fast, and not at all
when the daemon is a local UNIX socket: ``agent.engine`` makes the same read-only calls
with the stdlib (importing the SDK alone costs ~130 ms).
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, cast

from reconciler.model.digests import value_digest
from reconciler.model.ids import (
    DEPLOYMENT_ID_RE,
    LABEL_DEPLOYMENT,
    LABEL_NAME,
    LABEL_NAMESPACE,
    LABEL_SPEC_HASH,
)
from reconciler.model.state import (
    AgentState,
    ContainerState,
    ContainerStatus,
    DeployedApp,
    Health,
)

if TYPE_CHECKING:
    import docker

    from agent.engine import LocalEngine
    from agent.statedir import AppRecord

__all__ = [
    "LABEL_DEPLOYMENT",
    "LABEL_NAME",
    "LABEL_NAMESPACE",
    "LABEL_SERVICE",
    "LABEL_SPEC_HASH",
    "container_state",
    "docker_available",
    "merge",
    "observe_local",
]

#: The network the first routed install creates (``ProxySettings.network``): it takes a
#: subnet from the same pools, so capacity counts it while it does not exist yet.
PROXY_NETWORK = "impreza-proxy"

log = logging.getLogger(__name__)

LABEL_SERVICE = "com.docker.compose.service"

OBSERVE_TIMEOUT = 10.0  # seconds per Docker API call once the daemon answered a ping

_STATUSES: frozenset[str] = frozenset(
    {"running", "exited", "restarting", "created", "paused", "dead", "removing"}
)
_CODE_RE = re.compile(r"^(?:Exited|Restarting) \((-?\d+)\)")
_HEALTH = (
    ("(health: starting)", "starting"),
    ("(unhealthy)", "unhealthy"),
    ("(healthy)", "healthy"),
)


def docker_available(timeout: float = 1.0) -> bool:
    """Whether a Docker daemon answers a ping within ``timeout`` seconds.  Never raises.

    Honours ``DOCKER_HOST`` (and the rest of the SDK's environment).  A missing socket
    fails at once; a daemon that accepts but does not answer costs at most ``timeout``
    per call: the ping alone on a UNIX socket (``agent.engine``), API version negotiation
    then the ping through the SDK otherwise.
    """
    from agent.engine import local_engine

    engine = local_engine(timeout=max(0.05, timeout))
    if engine is not None:  # a UNIX socket: the same ping without importing the SDK
        try:
            return engine.ping()
        except Exception:  # any failure means "no daemon here"
            return False
    try:
        import docker

        # The SDK hands the timeout to requests and socket.settimeout: a float is fine
        # (the stubs say int).
        client = docker.from_env(timeout=cast(int, max(0.05, timeout)))
    except Exception:  # any failure means "no daemon here"
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        try:
            client.close()
        except Exception:  # pragma: no cover - nothing useful to do about it
            log.debug("closing the Docker client failed", exc_info=True)


def container_state(
    item: Mapping[str, Any], *, one_shot: Iterable[str] = (), restarts: int = 0
) -> ContainerState:
    """A :class:`ContainerState` from one entry of the (sparse) container list."""
    labels: Mapping[str, str] = item.get("Labels") or {}
    names = item.get("Names") or []
    name = str(names[0]).lstrip("/") if names else str(item.get("Id", ""))[:12]
    service = labels.get(LABEL_SERVICE) or name
    raw_state = item.get("State")
    if isinstance(raw_state, Mapping):  # very old API versions: an object, not a word
        raw_state = raw_state.get("Status")
    word = str(raw_state or "").lower()
    # An unknown word from a future engine: not healthy as far as we can tell.
    status = cast(ContainerStatus, word if word in _STATUSES else "dead")
    text = str(item.get("Status") or "")
    health: Health = "none"
    for marker, value in _HEALTH:
        if marker in text:
            health = cast(Health, value)
            break
    exit_code: int | None = None
    match = _CODE_RE.match(text)
    if match and status in ("exited", "restarting", "dead"):
        exit_code = int(match.group(1))
    return ContainerState(
        service=service,
        name=name,
        status=status,
        health=health,
        restarts=restarts,
        exit_code=exit_code,
        one_shot=service in set(one_shot),
    )


def _restart_count(api: Any, container_id: str) -> int:
    try:
        info = api.inspect_container(container_id)
    except Exception as exc:  # removed since the list, or a hiccup
        log.debug("inspect %s failed: %s", container_id[:12], exc)
        return 0
    try:
        return int(info.get("RestartCount") or 0)
    except (TypeError, ValueError):
        return 0


def merge(
    agent: str,
    listed: Iterable[Mapping[str, Any]],
    records: Iterable[AppRecord],
    restarts: Mapping[str, int] | None = None,
    environ: Mapping[str, str] | None = None,
) -> AgentState:
    """The agent's state from container list entries and state-dir records.  Pure.

    ``environ`` is the environment deployments read ``from_env`` vars from (this
    process's, for ``reconcile apply`` and the agent daemon); None skips that check.
    """
    restarts = restarts or {}
    by_dpl: dict[str, list[Mapping[str, Any]]] = {}
    for item in listed:
        labels = item.get("Labels") or {}
        dpl_id = labels.get(LABEL_DEPLOYMENT)
        if not isinstance(dpl_id, str) or not DEPLOYMENT_ID_RE.match(dpl_id):
            continue  # not ours (or a label someone typed by hand): never reported
        by_dpl.setdefault(dpl_id, []).append(item)
    by_record = {r.id: r for r in records}

    deployments: dict[str, DeployedApp] = {}
    for dpl_id in sorted(set(by_dpl) | set(by_record)):
        items = by_dpl.get(dpl_id, [])
        record = by_record.get(dpl_id)
        one_shot = record.one_shot if record is not None else ()
        containers = sorted(
            (
                container_state(
                    i, one_shot=one_shot, restarts=restarts.get(str(i.get("Id", "")), 0)
                )
                for i in items
            ),
            key=lambda c: (c.service, c.name),
        )
        label_hashes = sorted(
            {
                str((i.get("Labels") or {}).get(LABEL_SPEC_HASH))
                for i in items
                if (i.get("Labels") or {}).get(LABEL_SPEC_HASH)
            }
        )
        if record is not None:
            spec_hash = record.spec_hash
            # A route-only update leaves the containers (and their labels) as they were.
            accepted = {record.spec_hash, record.labels_spec_hash}
            stale = [h for h in label_hashes if h not in accepted]
            if stale and record.status != "uninstalled":
                log.info(
                    "%s: containers run spec %s, the record says %s",
                    dpl_id,
                    stale[0][:12],
                    record.spec_hash[:12],
                )
                spec_hash = stale[0]
            deployments[dpl_id] = DeployedApp(
                id=dpl_id,
                name=record.name,
                namespace=record.namespace,
                spec_hash=spec_hash,
                status=record.status,
                services=list(record.services),
                containers=containers,
                record=record.record,
                onion_address=record.onion_address,
                urls=list(record.urls),
                stale_env=_stale_env(record, environ),
                last_error=record.last_error if record.status == "failed" else None,
                held=record.held,
            )
            continue
        first: Mapping[str, str] = items[0].get("Labels") or {}
        deployments[dpl_id] = DeployedApp(
            id=dpl_id,
            name=first.get(LABEL_NAME) or dpl_id,
            namespace=first.get(LABEL_NAMESPACE) or "",
            spec_hash=label_hashes[0] if label_hashes else "",
            status="running",
            services=sorted({c.service for c in containers}),
            containers=containers,
            record=None,
        )
    return AgentState(agent=agent, online=True, deployments=deployments)


def observe_local(
    *, state_dir: pathlib.Path | None = None, agent: str = "local", client: Any = None
) -> AgentState:
    """This host's actual state: one sparse, label-filtered container list + the records.

    ``client`` is a ``docker.DockerClient`` (or its ``.api``); by default one is made from
    the environment.  When the daemon does not answer, the agent is reported offline
    (every action on it is then ``blocked``, with the reason), rather than raising.
    """
    from agent.statedir import default_state_dir, list_records

    directory = state_dir if state_dir is not None else default_state_dir()
    own = client is None
    figures: Future[tuple[int | None, int | None]] | None = None
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        if own:
            client = _client()
        api = getattr(client, "api", client)
        # ``/info`` takes the daemon 5-8 ms (far more under load), the container list 1-2:
        # asked side by side, so the list's time is not added to it.
        figures = pool.submit(_host_figures, api)
        listed: list[Mapping[str, Any]] = api.containers(
            all=True, filters={"label": LABEL_DEPLOYMENT}
        )
        restarts = {
            str(item["Id"]): _restart_count(api, str(item["Id"]))
            for item in listed
            if str(item.get("State", "")).lower() in ("restarting", "exited")
            and (item.get("Labels") or {}).get(LABEL_DEPLOYMENT)
        }
    except Exception as exc:  # the SDK raises requests/docker/OS errors
        return AgentState(
            agent=agent,
            online=False,
            reason=f"offline (the Docker daemon did not answer: {_short(exc)})",
        )
    finally:
        total, networks = figures.result() if figures is not None else (None, None)
        pool.shutdown()
        if own and client is not None:
            try:
                client.close()
            except Exception:  # pragma: no cover
                log.debug("closing the Docker client failed", exc_info=True)
    state = merge(agent, listed, list_records(directory), restarts, os.environ)
    return state.model_copy(update={"total_memory_mb": total, "free_networks": networks})


def _host_figures(api: Any) -> tuple[int | None, int | None]:
    """Total memory and free networks, from one ``/info`` (never raises).

    Runs beside the container list, so the capacity module (``ipaddress``) is imported
    here, off the main thread's path.
    """
    from agent.capacity import free_networks

    try:
        info = api.info()
    except Exception as exc:  # the SDK raises requests/docker/OS errors
        log.debug("docker info failed: %s", _short(exc))
        return None, None
    return _memory_from(info), free_networks(api, info, reserved=(PROXY_NETWORK,))


def total_memory_mb(api: Any) -> int | None:
    """The Docker host's total memory in MB (``docker info``'s ``MemTotal``); None when
    the daemon does not say.  Never raises: an unknown total only means nothing is
    blocked for memory."""
    try:
        info = api.info()
    except Exception as exc:  # the SDK raises requests/docker/OS errors
        log.debug("docker info failed: %s", _short(exc))
        return None
    return _memory_from(info)


def _memory_from(info: Any) -> int | None:
    try:
        total = int(info.get("MemTotal") or 0)
    except (AttributeError, TypeError, ValueError):
        return None
    return total // (1024 * 1024) if total > 0 else None


def _stale_env(record: AppRecord, environ: Mapping[str, str] | None) -> list[str]:
    """Keys whose ``from_env`` variable now holds another value than the one deployed
    (or is unset): compared by salted digest, the value itself is never kept."""
    if environ is None or record.status == "uninstalled":
        return []
    return sorted(
        key
        for key, (var, deployed) in record.from_env.items()
        if var not in environ or value_digest(record.id, key, environ[var]) != deployed
    )


def _client() -> docker.DockerClient | LocalEngine:
    """The stdlib client for a UNIX socket (no SDK import: it costs more than the list),
    else the SDK's, both from the environment as ``docker.from_env`` reads it."""
    from agent.engine import local_engine

    engine = local_engine(timeout=OBSERVE_TIMEOUT)
    if engine is not None:
        return engine
    import docker

    return docker.from_env(timeout=int(OBSERVE_TIMEOUT))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
