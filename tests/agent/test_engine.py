"""agent.engine, the stdlib read-only Docker API client on the hot paths, agrees with the
Docker SDK it stands in for (same requests, same JSON) on the real engine."""

from __future__ import annotations

import pytest

from agent.engine import EngineError, LocalEngine, _filters, socket_path
from tests.agent.docker_helpers import docker_client


def test_socket_path_follows_docker_host() -> None:
    assert socket_path({}) == "/var/run/docker.sock"
    assert socket_path({"DOCKER_HOST": "unix:///tmp/d.sock"}) == "/tmp/d.sock"
    assert socket_path({"DOCKER_HOST": "tcp://127.0.0.1:2375"}) is None


def test_filters_encode_like_the_sdk() -> None:
    from docker.utils import convert_filters

    filters = {"label": ["a=b", "c"], "dangling": True, "name": "x"}
    assert _filters(filters) == convert_filters(filters)


def test_ping_fails_cleanly_without_a_daemon(tmp_path) -> None:
    engine = LocalEngine(str(tmp_path / "missing.sock"), timeout=1)
    with pytest.raises(FileNotFoundError):
        engine.ping()


@pytest.mark.docker
def test_same_answers_as_the_sdk() -> None:
    client = docker_client()
    path = socket_path()
    assert path is not None
    engine = LocalEngine(path)
    assert engine.ping()
    container = client.containers.run(
        "busybox:1.36",
        ["sleep", "30"],
        detach=True,
        init=True,
        labels={"io.reconciler.test": "engine"},
    )
    try:
        filters = {"label": "io.reconciler.test=engine"}
        ours = engine.containers(all=True, filters=filters)
        theirs = client.api.containers(all=True, filters=filters)
        assert [c["Id"] for c in ours] == [c["Id"] for c in theirs] == [container.id]
        assert engine.inspect_container(container.id)["Id"] == container.id
        image = engine.inspect_image("busybox:1.36")
        assert image["Id"] == client.images.get("busybox:1.36").id
        with pytest.raises(EngineError) as info:
            engine.inspect_container("no-such-container-here")
        assert info.value.status == 404
    finally:
        container.remove(force=True)
