"""The host both no-op tests use (test_noop_imports_docker: the normal path's imports;
test_fastpath_docker: the fast path): busybox httpd apps in a repository of their own, a
unique namespace with its own proxy container and network on the shared daemon, and
``reconcile apply`` run in a fresh interpreter that writes the modules it loaded."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from collections.abc import Mapping, Sequence

from tests.agent.docker_helpers import docker_client, unique_namespace
from tests.conftest import free_port

COMPOSE = """\
services:
  app:
    image: busybox:1.36
    container_name: ${DEPLOYMENT_ID}-app
    init: true
    command: [sh, -c, 'mkdir -p /www && echo hi > /www/index.html && exec httpd -f -p 80 -h /www']
    networks: [NETWORK]
networks:
  NETWORK: {external: true}
"""
DEPLOYMENT = (
    "name: NAME\ncompose: ./compose.yaml\nroutes:\n  - upstream: '{deployment_id}-app:80'\n"
)

# The console script's `main`, with every module loaded written to argv[1] at exit
# (``-X importtime`` misses modules loaded by ``importlib.import_module``).
PROBE = """\
import atexit, pathlib, sys
out = pathlib.Path(sys.argv.pop(1))
atexit.register(lambda: out.write_text("\\n".join(sorted(sys.modules))))
from reconciler.cli import main
main()
"""


class ProbeHost:
    def __init__(
        self,
        base: pathlib.Path,
        *,
        prefix: str,
        apps: Sequence[str],
        deployment: str = DEPLOYMENT,
        env: Mapping[str, str] = {},
        drop_env: Sequence[str] = (),
    ) -> None:
        self.docker = docker_client()
        self.namespace = unique_namespace(prefix)
        self.proxy = f"reconciler-proxy-{self.namespace}"
        self.port = free_port()
        self.repo = base / "repo"
        self.state = base / "state"
        (self.repo / "deployments").mkdir(parents=True)
        (self.repo / "reconcile.yaml").write_text(
            f"namespace: {self.namespace}\n"
            f"proxy: {{tls: off, http_port: {self.port}, network: {self.namespace}}}\n"
        )
        for name in apps:
            app = self.repo / "deployments" / name
            app.mkdir()
            (app / "compose.yaml").write_text(COMPOSE.replace("NETWORK", self.namespace))
            (app / "deployment.yaml").write_text(deployment.replace("NAME", name))
        self.env = {
            **os.environ,
            "RECONCILE_STATE_DIR": str(self.state),
            "RECONCILE_PROXY_CONTAINER": self.proxy,
            "NO_COLOR": "1",
            "COLUMNS": "200",
            **env,
        }
        for name in drop_env:
            self.env.pop(name, None)

    def probe(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> tuple[subprocess.CompletedProcess[str], set[str]]:
        """``reconcile <argv>`` in a fresh interpreter, and the modules it loaded."""
        loaded = self.repo.parent / "modules.txt"
        loaded.unlink(missing_ok=True)
        proc = subprocess.run(
            [sys.executable, "-c", PROBE, str(loaded), *argv],
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            timeout=600,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        return proc, set(loaded.read_text().split())

    def cleanup(self) -> None:
        for c in self.docker.containers.list(
            all=True, filters={"label": f"io.reconciler.namespace={self.namespace}"}
        ):
            c.remove(force=True, v=True)
        for c in self.docker.containers.list(all=True, filters={"name": f"^/{self.proxy}$"}):
            c.remove(force=True)
        for n in self.docker.networks.list(names=[self.namespace]):
            n.remove()
