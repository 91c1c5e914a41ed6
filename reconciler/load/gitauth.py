"""Credentials for private git remotes: an HTTPS token, an SSH key and its known_hosts.

Configured by the environment of whoever reads the repository (``reconcile serve``,
``--dry-run``, ``apply``), never by the repository itself:

* ``RECONCILE_GIT_TOKEN`` or ``RECONCILE_GIT_TOKEN_FILE`` -- a token sent as HTTP basic
  auth (``RECONCILE_GIT_USERNAME``, default ``x-access-token``: GitHub, Gitea and
  Forgejo accept any user name with a token; GitLab wants ``oauth2``);
* ``RECONCILE_GIT_TOKEN_HOSTS`` -- the hosts (``host`` or ``host:port``, comma-separated)
  that may receive the token.  Unset: only the host of the desired-state repository
  itself.  Anyone who can push to that repository can name any URL in a ``git_url``
  deployment or a submodule, so the token must not follow them to another host;
* ``RECONCILE_GIT_SSH_KEY_FILE`` and ``RECONCILE_GIT_KNOWN_HOSTS_FILE`` -- the private key
  for ``ssh://`` remotes and the host keys to trust.  Strict host key checking stays on
  (an unknown or changed host key is refused, never learned);
* ``RECONCILE_GIT_CA_FILE`` -- the CA bundle for HTTPS remotes (a private git server with
  an internal CA; give the whole bundle, it replaces the system's).

Why the token travels in ``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n`` as an
``http.<url>.extraHeader``: not in the URL (it would be stored in the cache's
``config`` and printed in every error), not in ``-c`` arguments (visible to every user
in the process list), not in a credential helper on disk.  The environment of a process
is readable only by its owner and root, and the setting is scoped by git to that one
``scheme://host:port/``.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import os
import pathlib
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from reconciler.model.errors import InvalidSpec

__all__ = ["GitAuth", "auth_settings", "source_host"]

DEFAULT_USERNAME = "x-access-token"
SSH_BASE = ("ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20")

# The host of the desired-state repository being opened (set by open_source): the
# token's default scope.
_SOURCE_HOST: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "reconciler_git_source_host", default=None
)


@dataclass(frozen=True, repr=False)
class GitAuth:
    token: str | None = None
    username: str = DEFAULT_USERNAME
    token_hosts: frozenset[str] | None = None  # None: the source repository's host
    ssh_key: pathlib.Path | None = None
    known_hosts: pathlib.Path | None = None
    ca_file: pathlib.Path | None = None

    def __repr__(self) -> str:  # never the token, whoever prints this
        return (
            f"GitAuth(token={'***' if self.token else None}, username={self.username!r}, "
            f"token_hosts={self.token_hosts}, ssh_key={self.ssh_key}, "
            f"known_hosts={self.known_hosts}, ca_file={self.ca_file})"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GitAuth:
        """Read and check the settings; :class:`InvalidSpec` names the variable at fault."""
        env = os.environ if env is None else env
        token = env.get("RECONCILE_GIT_TOKEN") or None
        token_path = _file(env, "RECONCILE_GIT_TOKEN_FILE")
        if token and token_path is not None:
            raise InvalidSpec("set RECONCILE_GIT_TOKEN or RECONCILE_GIT_TOKEN_FILE, not both")
        if token_path is not None:
            try:
                token = token_path.read_text().strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidSpec(
                    f"RECONCILE_GIT_TOKEN_FILE: cannot read {token_path}: {exc}"
                ) from None
            if not token:
                raise InvalidSpec(f"RECONCILE_GIT_TOKEN_FILE: {token_path} is empty")
        if token is not None and any(c.isspace() or ord(c) < 0x20 for c in token):
            raise InvalidSpec("the git token contains whitespace or control characters")
        username = env.get("RECONCILE_GIT_USERNAME") or DEFAULT_USERNAME
        if ":" in username or any(c.isspace() for c in username):
            raise InvalidSpec(f"RECONCILE_GIT_USERNAME {username!r}: no ':' or spaces")
        hosts_text = env.get("RECONCILE_GIT_TOKEN_HOSTS")
        hosts = (
            frozenset(h.strip().lower() for h in hosts_text.split(",") if h.strip())
            if hosts_text
            else None
        )
        return cls(
            token=token,
            username=username,
            token_hosts=hosts,
            ssh_key=_file(env, "RECONCILE_GIT_SSH_KEY_FILE"),
            known_hosts=_file(env, "RECONCILE_GIT_KNOWN_HOSTS_FILE"),
            ca_file=_file(env, "RECONCILE_GIT_CA_FILE"),
        )

    def may_send_token(self, url: str) -> bool:
        parts = urlsplit(url)
        if self.token is None or parts.scheme.lower() != "https" or not parts.hostname:
            return False
        host = parts.hostname.lower()
        netloc = f"{host}:{parts.port}" if parts.port else host
        allowed = self.token_hosts
        if allowed is None:
            source = _SOURCE_HOST.get()
            allowed = frozenset([source]) if source else frozenset()
        return host in allowed or netloc in allowed


def _file(env: Mapping[str, str], name: str) -> pathlib.Path | None:
    value = env.get(name)
    if not value:
        return None
    path = pathlib.Path(value).expanduser()
    if not path.is_file():
        raise InvalidSpec(f"{name}: {path} is not a file")
    return path


@contextlib.contextmanager
def source_host(url: str) -> Iterator[None]:
    """While the desired-state repository at ``url`` is read, its host is the token's
    default scope."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    value = f"{host}:{parts.port}" if host and parts.port else host or None
    reset = _SOURCE_HOST.set(value)
    try:
        yield
    finally:
        _SOURCE_HOST.reset(reset)


def auth_settings(url: str, auth: GitAuth) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Environment variables and ``(key, value)`` git settings for one session with ``url``.

    The settings go into ``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n`` (see the module
    docstring); the caller sets ``GIT_CONFIG_COUNT``.
    """
    env: dict[str, str] = {}
    settings: list[tuple[str, str]] = []
    if auth.ca_file is not None:
        # the variable, not http.sslCAInfo: an inherited GIT_SSL_CAINFO would win over it
        env["GIT_SSL_CAINFO"] = str(auth.ca_file)
    if auth.may_send_token(url):
        parts = urlsplit(url)
        base = f"https://{parts.netloc.lower()}/"
        basic = base64.b64encode(f"{auth.username}:{auth.token}".encode()).decode()
        settings.append((f"http.{base}.extraHeader", f"Authorization: Basic {basic}"))
    if auth.ssh_key is not None or auth.known_hosts is not None:
        command = [*SSH_BASE, "-o", "StrictHostKeyChecking=yes"]
        if auth.ssh_key is not None:
            command += ["-o", "IdentitiesOnly=yes", "-i", str(auth.ssh_key)]
        if auth.known_hosts is not None:
            command += ["-o", f"UserKnownHostsFile={auth.known_hosts}"]
        env["GIT_SSH_COMMAND"] = shlex.join(command)
        env["GIT_SSH_VARIANT"] = "ssh"
    return env, settings
