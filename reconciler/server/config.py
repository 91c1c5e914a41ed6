"""The server's settings: ``server.yaml`` (optional), overridden by command-line flags.

Secrets never come from ``server.yaml`` or a flag (both end up in shell history, process
lists and backups): only from the environment, or a file it names (``*_FILE``), see
:class:`ServerSecrets`.
"""

from __future__ import annotations

import hmac
import math
import os
import pathlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from reconciler.model.errors import InvalidSpec
from reconciler.model.secretenv import secret_from_env
from reconciler.server.database import is_postgres_url

__all__ = [
    "DEFAULT_PORT",
    "CommitStatusSettings",
    "NotifyTarget",
    "Role",
    "ServerConfig",
    "ServerSecrets",
    "database_from_env",
    "database_problem",
    "default_data_dir",
    "load_server_config",
    "store_location",
]

DEFAULT_PORT = 8800


def default_data_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("RECONCILE_DATA_DIR") or "reconcile-data")


#: An event pattern: a kind (``deployment.failed``), a family (``deployment.*``) or ``*``.
EventPattern = Annotated[str, Field(pattern=r"^(\*|[a-z_]+\.(\*|[a-z_]+))$")]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class NotifyTarget(BaseModel):
    """One outbound webhook subscription (``notify:`` in ``server.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")]
    # The HMAC key's variable; optional for Slack and Discord, whose URL is the secret.
    secret_env: EnvName | None = None
    events: Annotated[list[EventPattern], Field(min_length=1)] = Field(
        default_factory=lambda: ["*"]
    )
    format: Literal["json", "slack", "discord"] = "json"


class CommitStatusSettings(BaseModel):
    """Where a reconcile's verdict on a commit goes (``commit_status:`` in ``server.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Literal["github", "gitlab", "gitea"]
    api_url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")]
    token_env: EnvName
    context: Annotated[str, Field(min_length=1, max_length=255)] = "reconcile"
    # owner/name (a GitLab path may nest groups): for commits found by polling, whose
    # repository no push payload named.
    repo: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$")] | None = None


class ServerConfig(BaseModel):
    """Every key of ``server.yaml``; the command-line flags have the same names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Annotated[str, Field(min_length=1)]
    branch: str | None = None  # None: main for git; a plain directory has no branch
    path: str | None = None
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = DEFAULT_PORT
    data_dir: pathlib.Path = Field(default_factory=default_data_dir)
    # The store: None is SQLite at <data_dir>/reconcile.db; a file path (or sqlite:///PATH) is
    # an SQLite file that replicas on one host may share; a postgresql:// URL puts it on
    # PostgreSQL (replicas on several hosts: README "Running several replicas").  A URL's
    # password is better in RECONCILE_DATABASE(_FILE), PGPASSWORD or ~/.pgpass than in a flag
    # or server.yaml; it is never printed (repr=False, redacted).
    database: Annotated[Annotated[str, Field(min_length=1)] | None, Field(repr=False)] = None
    poll_interval: Annotated[float, Field(ge=0)] = 60.0  # 0: no timer
    heartbeat: Annotated[float, Field(gt=0)] = 10.0
    catalog: pathlib.Path | None = None
    command_ttl: Annotated[float, Field(gt=0)] = 15 * 60.0
    long_poll_max: Annotated[float, Field(gt=0)] = 60.0
    allow_mass_prune: bool = False
    dist_dir: pathlib.Path | None = None  # the agent wheel for /install.sh; None: <data_dir>/dist
    # The HTTP transport (see reconciler.server.transport and README "Security").
    max_head_bytes: Annotated[int, Field(ge=4096)] = 64 * 1024
    max_headers: Annotated[int, Field(ge=16)] = 100
    head_timeout: Annotated[float, Field(gt=0)] = 10.0
    body_timeout: Annotated[float, Field(gt=0)] = 60.0
    # Idle seconds of a kept-alive connection; None: max(75, 3 * heartbeat), so the
    # server never closes the connection an agent is about to send its heartbeat on.
    keep_alive: Annotated[int, Field(ge=1)] | None = None
    max_connections: Annotated[int, Field(ge=64)] = 2048
    connection_reserve: Annotated[int, Field(ge=1)] = 128
    # Events out (see reconciler.server.outbound and README "Notifications").
    notify: list[NotifyTarget] = Field(default_factory=list)
    commit_status: CommitStatusSettings | None = None
    # Several replicas (see reconciler.server.replicas and README "Running several
    # replicas"): how long a dead leader's lease holds up the others (SQLite; on
    # PostgreSQL leadership ends with the leader's connection).
    lease_ttl: Annotated[float, Field(ge=1)] = 15.0
    # The process's garbage collector (see reconciler.server.runtime): the young
    # generation's threshold once start-up is frozen; 0 keeps CPython's defaults.
    gc_young_threshold: Annotated[int, Field(ge=0)] = 20_000

    @field_validator("database")
    @classmethod
    def _database(cls, value: str | None) -> str | None:
        problem = database_problem(value) if value is not None else None
        if problem is not None:
            raise ValueError(problem)
        return value

    def database_path(self) -> pathlib.Path | str:
        """What every replica opens: the SQLite file, or the PostgreSQL URL."""
        return store_location(self.database, self.data_dir)

    @property
    def keep_alive_seconds(self) -> int:
        """``keep_alive``, or by default longer than three heartbeats (and at least 75 s,
        nginx's default, longer than any agent's connection pool keeps a connection)."""
        if self.keep_alive is not None:
            return self.keep_alive
        return max(75, math.ceil(3 * self.heartbeat))

    @property
    def offline_after(self) -> float:
        """An agent is offline once three heartbeats are missed."""
        return 3 * self.heartbeat


#: What a bearer token lets its holder do: everything, or read the status (never change it).
Role = Literal["admin", "read"]


@dataclass(frozen=True)
class ServerSecrets:
    """Each from its variable or from the file ``<variable>_FILE`` names."""

    admin_token: str | None = None  # RECONCILE_ADMIN_TOKEN
    webhook_secret: bytes | None = None  # RECONCILE_WEBHOOK_SECRET
    gitlab_token: str | None = None  # RECONCILE_GITLAB_TOKEN
    # Reads only: the dashboard (/ui) and the GET status API, never a change.
    readonly_token: str | None = None  # RECONCILE_READONLY_TOKEN

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServerSecrets:
        """Raises SecretEnvError when a secret is set twice or its file cannot be read."""
        secret = secret_from_env("RECONCILE_WEBHOOK_SECRET", env)
        return cls(
            admin_token=secret_from_env("RECONCILE_ADMIN_TOKEN", env),
            webhook_secret=secret.encode() if secret else None,
            gitlab_token=secret_from_env("RECONCILE_GITLAB_TOKEN", env),
            readonly_token=secret_from_env("RECONCILE_READONLY_TOKEN", env),
        )

    def role_of(self, token: str) -> Role | None:
        """The role ``token`` grants, or None.  Both tokens are always compared (in
        constant time), so the answer's timing says nothing about which one was close."""
        given = token.encode()
        admin = bool(self.admin_token) and hmac.compare_digest(
            given, (self.admin_token or "").encode()
        )
        read = bool(self.readonly_token) and hmac.compare_digest(
            given, (self.readonly_token or "").encode()
        )
        if admin:
            return "admin"
        return "read" if read else None


def database_problem(database: str) -> str | None:
    """Why ``database`` (``--database``, ``database:``, ``RECONCILE_DATABASE``) names no
    store, or None: a ``postgresql://`` URL, an SQLite file path or ``sqlite:///PATH``."""
    if (
        "://" in database
        and not database.startswith("sqlite:///")
        and not re.match(r"^postgres(ql)?://\S+$", database)
    ):
        return (
            "give a postgresql:// URL, or an SQLite file path (or sqlite:///PATH) "
            "shared by every replica on this host"
        )
    return None


def store_location(database: str | None, data_dir: pathlib.Path) -> pathlib.Path | str:
    """The store ``reconcile serve`` opens for these settings, and so the one the admin
    commands open: ``<data_dir>/reconcile.db`` without ``database``, else its SQLite file
    or PostgreSQL URL.  Raises InvalidSpec for a ``database`` that names neither."""
    if database is None:
        return data_dir / "reconcile.db"
    problem = database_problem(database)
    if problem is not None:
        raise InvalidSpec(f"database: {problem}")
    if is_postgres_url(database):
        return database
    # SQLAlchemy's form: sqlite:///relative/path, sqlite:////absolute/path
    return pathlib.Path(database.removeprefix("sqlite:///")).expanduser()


def database_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """``RECONCILE_DATABASE``, or the file ``RECONCILE_DATABASE_FILE`` names: the store's
    PostgreSQL URL, password included, kept out of flags and process lists.  Raises
    SecretEnvError when both are set or the file cannot be read."""
    return secret_from_env("RECONCILE_DATABASE", env)


def load_server_config(file: pathlib.Path | None, overrides: Mapping[str, Any]) -> ServerConfig:
    """``server.yaml`` (when given) with the flags that were set laid over it.

    Raises InvalidSpec with every problem, naming the key (and the file).
    """
    data: dict[str, Any] = {}
    where = "command line"
    if file is not None:
        where = str(file)
        data = _read_yaml(file)
    data.update({k: v for k, v in overrides.items() if v is not None})
    if "source" not in data:
        raise InvalidSpec(
            "no source: pass --source (a git URL or a directory) or set it in --config"
        )
    try:
        return ServerConfig.model_validate(data)
    except ValidationError as exc:
        lines = [
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        ]
        raise InvalidSpec(f"server settings ({where}): " + "; ".join(lines)) from None


def _read_yaml(file: pathlib.Path) -> dict[str, Any]:
    import yaml

    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidSpec(f"{file}: {exc.strerror or exc}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidSpec(f"{file}: not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise InvalidSpec(f"{file}: expected a mapping of settings")
    # YAML spells keys with dashes or underscores; the flags use dashes.
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}
