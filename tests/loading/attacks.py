"""Repositories that attack the loader's cost (issue 13, section 2), at a chosen scale.

Each builder writes a complete desired-state repository: one valid compose deployment
(``blog``) whose compose file carries the attack.  Shared by the loader tests, the CLI
test that runs them as a process under an address-space limit, and the server test.
"""

from __future__ import annotations

import pathlib

COMPOSE = """\
services:
  app:
    image: busybox:1.36
    container_name: ${DEPLOYMENT_ID}-app
    init: true
    command: ["httpd", "-f", "-p", "80", "-h", "/www"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:80/"]
    networks: [default, impreza-proxy]
networks:
  impreza-proxy:
    external: true
"""

DEPLOYMENT = """\
name: {name}
agent: {agent}
compose: ./compose.yaml
routes:
  - upstream: "{{deployment_id}}-app:80"
"""


def deployment(
    root: pathlib.Path, name: str = "blog", *, agent: str = "local", compose: str = COMPOSE
) -> pathlib.Path:
    """``deployments/<name>/`` with a deployment file and ``compose``; returns the dir."""
    d = root / "deployments" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "deployment.yaml").write_text(DEPLOYMENT.format(name=name, agent=agent))
    (d / "compose.yaml").write_text(compose)
    return d


def fan_out(
    root: pathlib.Path, n: int, levels: int, *, name: str = "blog", agent: str = "local"
) -> int:
    """``include:`` N files per level over ``levels`` levels, each including every file of
    the next level: N**levels paths reach the last level.  Returns the number of files."""
    d = deployment(root, name, agent=agent, compose=_includes(1, n) + COMPOSE)
    for level in range(1, levels + 1):
        for i in range(n):
            more = _includes(level + 1, n) if level < levels else ""
            (d / f"l{level}_{i}.yaml").write_text(
                more
                + f"services:\n  s{level}_{i}:\n    image: busybox:1.36\n"
                + "    healthcheck: {test: [CMD, 'true']}\n"
            )
    return 1 + n * levels


def _includes(level: int, n: int) -> str:
    return "include:\n" + "".join(f"  - ./l{level}_{i}.yaml\n" for i in range(n))


def big_aliases(
    root: pathlib.Path,
    scalar_kib: int,
    fan: int,
    depth: int,
    *,
    name: str = "blog",
    agent: str = "local",
) -> int:
    """One anchored scalar of ``scalar_kib`` KiB, then ``depth`` levels of lists of ``fan``
    aliases to the level below: few nodes, few aliases, ``scalar_kib * fan**depth`` KiB
    once expanded (as rendering hashes it).  Returns that expanded size in bytes."""
    lines = ["x-big: &b0 " + "A" * (scalar_kib * 1024)]
    for level in range(1, depth + 1):
        lines.append(f"x-l{level}: &b{level} [" + ", ".join([f"*b{level - 1}"] * fan) + "]")
    deployment(root, name, agent=agent, compose="\n".join(lines) + "\n" + COMPOSE)
    return scalar_kib * 1024 * fan**depth


def interpolation(
    root: pathlib.Path, value_kib: int, uses: int, *, name: str = "blog", agent: str = "local"
) -> int:
    """A var of ``value_kib`` KiB used ``uses`` times in one label: the compose file is
    ``4 * uses`` bytes, the policy's second pass fills it to ``value_kib * uses`` KiB.
    Returns that filled size in bytes."""
    label = "${A}" * uses
    compose = COMPOSE.replace("    init: true\n", f'    init: true\n    labels: {{x: "{label}"}}\n')
    d = deployment(root, name, agent=agent, compose=compose)
    text = (d / "deployment.yaml").read_text()
    (d / "deployment.yaml").write_text(text + "vars:\n  A: " + "B" * (value_kib * 1024) + "\n")
    return value_kib * 1024 * uses
