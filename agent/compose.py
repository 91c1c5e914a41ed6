"""Running ``docker compose`` for one deployment: the ``ComposeDriver`` seam.

The executor talks to this protocol only, so its logic (ordering, rollback, the settle
gate's verdicts) is unit-tested against :class:`FakeComposeDriver`, and the real driver
(python-on-whales over the Compose v2 plugin) is exercised by the Docker tests.

Every call pins ``-p <deployment id> -f <app dir>/compose.yaml`` and the app dir as the
project directory: a ``COMPOSE_PROJECT_NAME`` in some ``.env`` can never move a stack,
and relative paths resolve inside the app dir.  The resolved ``docker compose config``
holds secret values, so it is checked and thrown away, never printed or logged.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from reconciler.model.errors import TemporaryError

__all__ = [
    "ComposeDriver",
    "ComposeError",
    "ComposeProject",
    "FakeComposeDriver",
    "WhalesComposeDriver",
]


class ComposeError(Exception):
    """A compose command failed; ``output`` holds its last lines (never resolved config)."""

    def __init__(self, step: str, output: str) -> None:
        tail = "\n".join(output.strip().splitlines()[-20:])
        super().__init__(f"docker compose {step} failed: {tail}" if tail else f"{step} failed")
        self.step = step
        self.output = tail


@dataclass(frozen=True)
class ComposeProject:
    name: str  # the deployment id
    workdir: pathlib.Path  # the app dir holding compose.yaml and .env

    @property
    def file(self) -> pathlib.Path:
        return self.workdir / "compose.yaml"


class ComposeDriver(Protocol):
    def check(self, project: ComposeProject) -> None:
        """``config`` validation; raises ComposeError.  Output discarded (it has secrets)."""

    def build(self, project: ComposeProject) -> None: ...

    def up(self, project: ComposeProject) -> None:
        """``up -d --remove-orphans --no-build --pull missing``."""

    def down(self, project: ComposeProject, *, volumes: bool = False) -> None: ...

    def logs(self, project: ComposeProject, tail: int = 20) -> str: ...

    def exec(
        self, project: ComposeProject, service: str, command: str, timeout: float
    ) -> tuple[int, str]:
        """Run ``sh -c command`` in a running service; (exit code, output)."""


def _clean_env() -> dict[str, str]:
    """The environment compose runs with: ours, minus COMPOSE_* that could redirect it."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}


class WhalesComposeDriver:
    """The real driver: python-on-whales over the ``docker compose`` v2 plugin."""

    def __init__(self, docker_binary: str = "docker") -> None:
        self.docker_binary = docker_binary

    def _client(self, project: ComposeProject):  # type: ignore[no-untyped-def]
        from python_on_whales import DockerClient

        return DockerClient(
            client_call=[self.docker_binary],
            compose_files=[project.file],
            compose_project_name=project.name,
            compose_project_directory=project.workdir,
            compose_env_files=[project.workdir / ".env"],
        )

    def _run(self, step: str, project: ComposeProject, fn_name: str, **kwargs: object) -> None:
        from python_on_whales.exceptions import DockerException

        client = self._client(project)
        try:
            getattr(client.compose, fn_name)(**kwargs)
        except DockerException as exc:
            raise ComposeError(step, (exc.stderr or "") + (exc.stdout or "")) from None
        except FileNotFoundError as exc:  # the docker binary itself is missing
            raise TemporaryError(f"docker CLI not found: {exc}", retry_after=30) from None

    def check(self, project: ComposeProject) -> None:
        self._run("config", project, "config", return_json=True)

    def build(self, project: ComposeProject) -> None:
        self._run("build", project, "build", quiet=True)

    def up(self, project: ComposeProject) -> None:
        self._run(
            "up",
            project,
            "up",
            detach=True,
            remove_orphans=True,
            no_build=True,
            pull="missing",
            quiet=True,
        )

    def down(self, project: ComposeProject, *, volumes: bool = False) -> None:
        self._run("down", project, "down", remove_orphans=True, volumes=volumes, timeout=10)

    def logs(self, project: ComposeProject, tail: int = 20) -> str:
        from python_on_whales.exceptions import DockerException

        try:
            out = self._client(project).compose.logs(tail=str(tail), no_log_prefix=False)
        except DockerException as exc:
            return (exc.stderr or "").strip()
        return str(out)

    def exec(
        self, project: ComposeProject, service: str, command: str, timeout: float
    ) -> tuple[int, str]:
        # python-on-whales has no timeout for exec; a hook must never hang an apply.
        argv = [
            self.docker_binary,
            "compose",
            "-p",
            project.name,
            "-f",
            str(project.file),
            "--project-directory",
            str(project.workdir),
            "exec",
            "-T",
            service,
            "sh",
            "-c",
            command,
        ]
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=_clean_env(),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout if isinstance(exc.stdout, str) else ""
            return 124, (out or "") + f"\n(timed out after {timeout:g} s)"
        return proc.returncode, (proc.stdout + proc.stderr)


@dataclass
class FakeComposeDriver:
    """Records calls; fails the steps it is told to.  For executor unit tests only."""

    fail: dict[str, str] = field(default_factory=dict)  # step -> error output
    calls: list[tuple[str, str]] = field(default_factory=list)  # (step, project)
    hook_results: dict[str, tuple[int, str]] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)

    def _step(self, step: str, project: ComposeProject) -> None:
        self.calls.append((step, project.name))
        if step in self.fail:
            raise ComposeError(step, self.fail[step])

    def check(self, project: ComposeProject) -> None:
        self._step("config", project)

    def build(self, project: ComposeProject) -> None:
        self._step("build", project)

    def up(self, project: ComposeProject) -> None:
        self._step("up", project)
        self.running.add(project.name)

    def down(self, project: ComposeProject, *, volumes: bool = False) -> None:
        self._step("down-volumes" if volumes else "down", project)
        self.running.discard(project.name)

    def logs(self, project: ComposeProject, tail: int = 20) -> str:
        self.calls.append(("logs", project.name))
        return "fake log line"

    def exec(
        self, project: ComposeProject, service: str, command: str, timeout: float
    ) -> tuple[int, str]:
        self.calls.append((f"exec:{service}", project.name))
        return self.hook_results.get(command, (0, ""))

    def steps(self, project: str | None = None) -> Sequence[str]:
        return [s for s, p in self.calls if project is None or p == project]
