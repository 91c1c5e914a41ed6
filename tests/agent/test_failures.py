"""Classifying a failed step from its output: one test per class, on texts captured
from the real ``docker compose`` v2 plugin and Docker Engine (the image, port and compose
file classes are produced for real again in tests/agent/test_failures_docker.py, the
exhausted pool in tests/agent/test_capacity_docker.py)."""

# ruff: noqa: E501  (the captured outputs are kept verbatim, long lines and all)
from __future__ import annotations

import pytest

from agent.failures import LAST_LINES, FailureKind, classify

# docker compose up of a service whose image is neither local nor pullable (no registry)
IMAGE_OFFLINE = """\
 app Pulling
 app Error Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io on 10.255.255.53:53: no such host
Error response from daemon: Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io on 10.255.255.53:53: no such host
"""
# the same with a registry that answers
IMAGE_DENIED = """\
 app Error pull access denied for capx-no-such-image, repository does not exist or may require 'docker login'
Error response from daemon: pull access denied for capx-no-such-image, repository does not exist or may require 'docker login': denied: requested access to the resource is denied
"""
PORT_IN_USE = """\
 Network capx-port_default  Creating
 Network capx-port_default  Created
 Container capx-port-app-1  Creating
 Container capx-port-app-1  Created
 Container capx-port-app-1  Starting
Error response from daemon: driver failed programming external connectivity on endpoint capx-port-app-1 (0022e3e5ef8c8e240a0a4bab491e38b67a3ab065172ae19974da8239befc2a12): Error starting userland proxy: listen tcp4 127.0.0.1:47311: bind: address already in use
"""
PORT_ALLOCATED = (
    "Error response from daemon: driver failed programming external connectivity on endpoint"
    " web-1 (3c1e): Bind for 0.0.0.0:8080 failed: port is already allocated"
)
BAD_SCHEMA = "validating /tmp/capx/bad.yaml: services.app.ports must be a array"
BAD_YAML = "failed to parse /tmp/capx/bad2.yaml: yaml: line 1: did not find expected key"
POOL = """\
 Network dpl_0123456789abcdef_default  Creating
failed to create network dpl_0123456789abcdef_default: Error response from daemon: could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network
"""
DISK_FULL = (
    "Error response from daemon: failed to create shim task: OCI runtime create failed: "
    "write /var/lib/docker/overlay2/1f2e/merged/etc/hosts: no space left on device: unknown"
)


@pytest.mark.parametrize(
    ("output", "kind", "reason_start"),
    [
        (IMAGE_OFFLINE, FailureKind.IMAGE_NOT_FOUND, "image not found"),
        (IMAGE_DENIED, FailureKind.IMAGE_NOT_FOUND, "image not found"),
        (PORT_IN_USE, FailureKind.PORT_IN_USE, "port in use"),
        (PORT_ALLOCATED, FailureKind.PORT_IN_USE, "port in use"),
        (BAD_SCHEMA, FailureKind.BAD_COMPOSE_FILE, "bad compose file"),
        (BAD_YAML, FailureKind.BAD_COMPOSE_FILE, "bad compose file"),
        (POOL, FailureKind.POOL_EXHAUSTED, "address pool exhausted"),
        (DISK_FULL, FailureKind.DISK_FULL, "disk full"),
    ],
)
def test_each_class_has_its_reason_hint_and_last_lines(
    output: str, kind: FailureKind, reason_start: str
) -> None:
    failure = classify("up", output)
    assert failure.kind is kind
    assert failure.reason.startswith(reason_start)
    assert failure.hint
    assert failure.last_lines == tuple(line.rstrip() for line in output.strip().splitlines())
    summary = failure.summary()
    assert "\n" not in summary
    assert summary.startswith(f"up: {reason_start}")
    assert failure.text().splitlines() == [summary, *failure.last_lines]


def test_the_pool_hint_names_default_address_pools() -> None:
    assert "default-address-pools" in (classify("up", POOL).hint or "")


def test_an_unknown_failure_keeps_its_last_line_and_the_callers_hint() -> None:
    failure = classify("settle", "service app: crash loop (3 restarts)", "see the log lines below")
    assert failure.kind is FailureKind.OTHER
    assert failure.reason == "service app: crash loop (3 restarts)"
    assert failure.hint == "see the log lines below"
    # the reason is the output's only line: the full text does not repeat it
    assert (
        failure.text()
        == "settle: service app: crash loop (3 restarts) (hint: see the log lines below)"
    )
    assert classify("up", "").reason == "failed with no output"


def test_long_outputs_keep_only_their_last_lines_and_a_short_reason() -> None:
    output = "\n".join(f"line {i}" for i in range(50)) + "\n" + "x" * 500
    failure = classify("up", output)
    assert len(failure.last_lines) == LAST_LINES
    assert failure.last_lines[-1] == "x" * 500
    assert len(failure.reason) == 200 and failure.reason.endswith("...")


def test_as_dict_is_the_json_shape() -> None:
    assert classify("up", PORT_ALLOCATED).as_dict() == {
        "step": "up",
        "kind": "port-in-use",
        "reason": "port in use: a host port this app publishes is taken",
        "hint": classify("up", PORT_ALLOCATED).hint,
        "last_lines": [PORT_ALLOCATED],
    }
