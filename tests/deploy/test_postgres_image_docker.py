"""``reconciler-postgres:17`` (scripts/images/postgres, built by ``scripts/setup.sh
--docker``) keeps the part of the official postgres image's contract that
deploy/compose.replicas.yaml relies on: an empty data dir is initialised once from
POSTGRES_USER, POSTGRES_DB and a 0400 root-owned POSTGRES_PASSWORD_FILE, the server runs as
``postgres`` and takes that password over TCP; a data dir that holds a cluster is started as
it is; without a password (or with two) it refuses and writes nothing.

Real containers with ``--network none``, spoken to only through ``docker exec``; fails,
never skips, without Docker or the image.
"""

from __future__ import annotations

import contextlib
import pathlib
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from tests.deploy.kit import kit_dir, run, wait_for

pytestmark = pytest.mark.docker

IMAGE = "reconciler-postgres:17"


class Postgres:
    """Containers of the image over one data dir (a bind mount), removed at teardown."""

    def __init__(self, base: pathlib.Path) -> None:
        self.base = base
        self.data = base / "data"
        self.data.mkdir()
        self.names: list[str] = []

    def password_file(self, password: str) -> pathlib.Path:
        path = self.base / f"password-{secrets.token_hex(4)}"
        path.write_text(password)
        path.chmod(0o400)  # root's, as a compose secret from the header's commands is
        return path

    def docker_run(self, *env: str, password: pathlib.Path | None = None) -> tuple[str, list[str]]:
        name = f"test-reconciler-postgres-{secrets.token_hex(4)}"
        self.names.append(name)
        args = ["docker", "run", "--name", name, "--network", "none"]
        args += ["-v", f"{self.data}:/var/lib/postgresql/data"]
        if password is not None:
            args += ["-v", f"{password}:/run/secrets/pw:ro"]
        for item in env:
            args += ["-e", item]
        return name, args

    def start(self, *env: str, password: pathlib.Path | None = None) -> str:
        name, args = self.docker_run(*env, password=password)
        run(*args[:2], "-d", *args[2:], IMAGE)
        wait_for(lambda: self.ready(name), 60, f"{name} accepting connections")
        return name

    def ready(self, name: str) -> bool:
        state = run("docker", "inspect", "-f", "{{.State.Running}}", name).strip()
        assert state == "true", run("docker", "logs", name)
        done = subprocess.run(
            ["docker", "exec", name, "pg_isready", "-q"], capture_output=True, check=False
        )
        return done.returncode == 0

    def psql(self, name: str, user: str, db: str, password: str, sql: str) -> tuple[int, str]:
        """``psql`` over TCP (127.0.0.1 inside the container): the password is checked."""
        done = subprocess.run(
            ["docker", "exec", "-e", f"PGPASSWORD={password}", name,
             "psql", "-h", "127.0.0.1", "-U", user, "-d", db, "-X", "-A", "-t", "-c", sql],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        return done.returncode, (done.stdout + done.stderr).strip()


@pytest.fixture
def pg() -> Iterator[Postgres]:
    with kit_dir("crpg-", IMAGE) as (client, base):
        p = Postgres(base)
        try:
            yield p
        finally:
            for name in p.names:
                with contextlib.suppress(Exception):
                    client.containers.get(name).remove(force=True, v=True)


def test_an_empty_volume_is_initialised_once_from_the_password_file(pg: Postgres) -> None:
    password = secrets.token_hex(12) + "'\" $x"  # quotes and a dollar reach initdb as they are
    env = (
        "POSTGRES_USER=reconcile",
        "POSTGRES_DB=reconcile",
        "POSTGRES_PASSWORD_FILE=/run/secrets/pw",
    )
    name = pg.start(*env, password=pg.password_file(password))

    who = "SELECT current_user, current_database(), rolsuper FROM pg_roles"
    rc, out = pg.psql(
        name, "reconcile", "reconcile", password, who + " WHERE rolname = current_user"
    )
    assert (rc, out) == (0, "reconcile|reconcile|t")
    rc, out = pg.psql(name, "reconcile", "reconcile", "wrong", "SELECT 1")
    assert rc != 0 and "password authentication failed" in out
    assert run("docker", "exec", name, "stat", "-c", "%U", "/proc/1").strip() == "postgres"
    # the password is in no process's environment once the server runs
    environ = run("docker", "exec", "--user", "postgres", name, "cat", "/proc/1/environ")
    assert password not in environ and "POSTGRES_PASSWORD=" not in environ
    sql = "CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)"
    assert pg.psql(name, "reconcile", "reconcile", password, sql)[0] == 0
    run("docker", "stop", name)

    # Started again on the same data dir with another password file: the cluster is kept
    # as it is, and the old password still holds (as upstream: the variables are for init).
    again = pg.start(*env, password=pg.password_file("another"))
    assert pg.psql(again, "reconcile", "reconcile", password, "SELECT n FROM kept") == (0, "42")
    assert "initialised" not in run("docker", "logs", again)


@pytest.mark.parametrize(
    ("env", "with_file", "message"),
    [
        ((), False, "no password is set"),
        (("POSTGRES_PASSWORD=x", "POSTGRES_PASSWORD_FILE=/run/secrets/pw"), True, "not both"),
        (("POSTGRES_PASSWORD_FILE=/run/secrets/missing",), False, "is not a readable file"),
    ],
)
def test_without_exactly_one_password_it_refuses_and_writes_nothing(
    pg: Postgres, env: tuple[str, ...], with_file: bool, message: str
) -> None:
    password = pg.password_file("secret") if with_file else None
    _, args = pg.docker_run(*env, password=password)
    done = subprocess.run([*args, IMAGE], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert message in done.stderr, done.stderr
    assert list(pg.data.iterdir()) == []
