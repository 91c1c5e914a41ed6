"""The classifier on errors produced for real by ``docker compose`` and the shared Docker
Engine, through the executor's own compose driver: a port that is taken, a compose file
compose refuses, an image that is nowhere.  (The exhausted pool needs a daemon with tiny
pools: tests/agent/test_capacity_docker.py.)  Projects get unique names and are removed.
"""

from __future__ import annotations

import contextlib
import pathlib
import secrets
import socket
from collections.abc import Callable, Iterator

import pytest

from agent.compose import ComposeError, ComposeProject, WhalesComposeDriver
from agent.failures import FailureKind, classify
from tests.agent.docker_helpers import docker_client

pytestmark = pytest.mark.docker


@pytest.fixture
def project(tmp_path: pathlib.Path) -> Iterator[ComposeProject]:
    docker_client()
    (tmp_path / ".env").write_text("")
    p = ComposeProject(name=f"capx-{secrets.token_hex(4)}", workdir=tmp_path)
    try:
        yield p
    finally:
        if p.file.exists():
            with contextlib.suppress(ComposeError):
                WhalesComposeDriver().down(p)


def _failure_of(step: str, run: Callable[[], None]) -> ComposeError:
    with pytest.raises(ComposeError) as caught:
        run()
    assert caught.value.step == step
    return caught.value


def test_a_taken_port_is_port_in_use(project: ComposeProject) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        project.file.write_text(
            "services:\n  app:\n    image: busybox:1.36\n    command: [sleep, '30']\n"
            f"    ports: ['127.0.0.1:{port}:80']\n"
        )
        exc = _failure_of("up", lambda: WhalesComposeDriver().up(project))
    failure = classify("up", exc.output)
    assert failure.kind is FailureKind.PORT_IN_USE, exc.output
    assert any(str(port) in line for line in failure.last_lines)


@pytest.mark.parametrize(
    "text",
    [
        "services:\n  app:\n    image: busybox:1.36\n    ports: oops\n",
        "services:\n  app:\n    image: busybox:1.36\n   command: [sleep\n",
    ],
)
def test_a_refused_compose_file_is_bad_compose_file(project: ComposeProject, text: str) -> None:
    project.file.write_text(text)
    exc = _failure_of("config", lambda: WhalesComposeDriver().check(project))
    failure = classify("config", exc.output)
    assert failure.kind is FailureKind.BAD_COMPOSE_FILE, exc.output
    assert failure.summary().startswith("config: bad compose file")


def test_an_image_that_is_nowhere_is_image_not_found(project: ComposeProject) -> None:
    project.file.write_text(f"services:\n  app:\n    image: capx-none-{secrets.token_hex(4)}:1\n")
    exc = _failure_of("up", lambda: WhalesComposeDriver().up(project))
    failure = classify("up", exc.output)
    assert failure.kind is FailureKind.IMAGE_NOT_FOUND, exc.output
