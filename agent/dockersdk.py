"""The Docker SDK at one boundary: one way to get a client, one translation of its errors.

The proxy and the Tor sidecar both manage a long-lived container through the SDK; what an
SDK failure *means* for the caller is the same for both (the engine is away or refused:
try again later), so it is decided here once, as kopf and httpx do at their edges.  A
caller may recognise an API error first (the proxy turns "port is already allocated"
into a :class:`HostError` naming the setting to change).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from reconciler.model.errors import ReconcilerError, TemporaryError

if TYPE_CHECKING:
    from docker import DockerClient

__all__ = ["docker_errors", "sdk_client"]


def sdk_client(timeout: int = 30) -> DockerClient:
    """A client for ``DOCKER_HOST`` (or the local socket); TemporaryError when none answers."""
    import docker

    try:
        return docker.from_env(timeout=timeout)
    except docker.errors.DockerException as exc:
        raise TemporaryError(f"the Docker Engine is not reachable: {exc}") from exc


@contextlib.contextmanager
def docker_errors(
    doing: str, *, api_error: Callable[[str], ReconcilerError | None] | None = None
) -> Iterator[None]:
    """SDK exceptions inside the block become our typed errors, prefixed with ``doing``.

    ``api_error`` sees the text of an engine-side error first and may return a more
    precise error to raise instead.
    """
    import docker.errors
    import requests.exceptions

    try:
        yield
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise TemporaryError(f"{doing}: the Docker Engine is not reachable: {exc}") from exc
    except docker.errors.APIError as exc:
        text = str(exc.explanation or exc)
        precise = api_error(text) if api_error is not None else None
        if precise is not None:
            raise precise from exc
        raise TemporaryError(f"{doing}: {text}") from exc
    except docker.errors.DockerException as exc:
        raise TemporaryError(f"{doing}: {exc}") from exc
