"""Helpers for tests against the real Docker Engine: a client that fails loudly, and
labelled busybox containers that are always removed afterwards.

A missing daemon FAILS the test with a clear message (CI must not go green by skipping);
``RECONCILE_SKIP_DOCKER=1`` turns that into a skip for machines without Docker.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from reconciler.model.ids import deployment_id
from reconciler.render.rendering import (
    LABEL_DEPLOYMENT,
    LABEL_NAME,
    LABEL_NAMESPACE,
    LABEL_SPEC_HASH,
)

IMAGE = "busybox:1.36"


def docker_client() -> Any:
    """A connected ``docker.DockerClient``, or a failed (or, if asked, skipped) test."""
    try:
        import docker

        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:
        if os.environ.get("RECONCILE_SKIP_DOCKER") == "1":
            pytest.skip(f"no Docker Engine and RECONCILE_SKIP_DOCKER=1 ({exc})")
        pytest.fail(
            "these tests need the Docker Engine and none answered "
            f"({type(exc).__name__}: {exc}). Start it with `bash scripts/setup.sh --docker`, "
            "or set RECONCILE_SKIP_DOCKER=1 to skip them on purpose.",
            pytrace=False,
        )
    try:
        client.images.get(IMAGE)
    except Exception:
        pytest.fail(
            f"image {IMAGE} is missing; `bash scripts/setup.sh --docker` builds it",
            pytrace=False,
        )
    return client


def unique_namespace(prefix: str = "t") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def labels_for(
    namespace: str, name: str, service: str, spec_hash: str = "h" * 64
) -> dict[str, str]:
    """The labels our rendered compose files put on a service's containers."""
    dpl_id = deployment_id(namespace, name)
    return {
        LABEL_NAMESPACE: namespace,
        LABEL_DEPLOYMENT: dpl_id,
        LABEL_SPEC_HASH: spec_hash,
        LABEL_NAME: name,
        "com.docker.compose.project": dpl_id,
        "com.docker.compose.service": service,
    }


class Containers:
    """Creates busybox containers and removes every one of them at teardown."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.ids: list[str] = []

    def run(
        self,
        name: str,
        command: list[str] | str,
        labels: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        kwargs.setdefault("init", True)
        container = self.client.containers.run(
            IMAGE,
            command,
            name=name,
            labels=labels or {},
            detach=True,
            network_mode="none",
            **kwargs,
        )
        self.ids.append(container.id)
        return container

    def cleanup(self) -> None:
        for cid in self.ids:
            with contextlib.suppress(Exception):  # already gone
                self.client.api.remove_container(cid, force=True, v=True)
        self.ids.clear()


@contextlib.contextmanager
def labelled_containers() -> Iterator[Containers]:
    """Containers made inside the block are removed when it ends, even on failure."""
    made = Containers(docker_client())
    try:
        yield made
    finally:
        made.cleanup()
        made.client.close()


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
