"""Commit statuses: the verdict of the reconcile a push triggered, set on that commit.

One overall status per commit, under ``commit_status.context``: ``pending`` once the
commands are out, then ``success`` (every command done), ``failure`` (one failed, or
the repository is invalid) or ``error`` (a command expired or was superseded by a newer
commit before any result).  A commit is judged once, by the first reconcile that runs
it; the timer's later runs of the same commit change nothing.

Which commits: one a push named (its repository from the payload:
``repository.full_name`` on GitHub and Gitea, ``project.path_with_namespace`` on
GitLab), or, with ``commit_status.repo`` set, any commit the server runs, pushes found
by polling included.  Statuses travel through the outbox like every other event (target
``forge``): a restart loses none, and a slow forge never delays a reconcile.

Each forge's documented request:

- GitHub (and GitHub Enterprise): ``POST {api}/repos/{owner}/{repo}/statuses/{sha}``,
  ``Authorization: Bearer``, ``{state, target_url, description, context}`` with state
  ``pending | success | failure | error``.
- Gitea / Forgejo: the same path and body (``Authorization: token``).
- GitLab: ``POST {api}/projects/{url-encoded path}/statuses/{sha}``, ``PRIVATE-TOKEN``,
  ``{state, name, description, target_url}`` with state ``pending | running | success |
  failed | canceled``: ``failure`` and ``error`` both become ``failed``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from reconciler.model.errors import InvalidSpec
from reconciler.model.secretenv import secret_from_env
from reconciler.server.config import CommitStatusSettings
from reconciler.server.outbound import Delivery
from reconciler.server.store import OutboxRow, Store

__all__ = ["CommitStatuses", "StatusState", "forge_request", "push_repository"]

log = logging.getLogger("reconciler.server")

StatusState = Literal["pending", "success", "failure", "error"]
MAX_DESCRIPTION = 140  # GitHub's limit; the others allow more
_GITLAB_STATE = {"pending": "pending", "success": "success", "failure": "failed", "error": "failed"}


def push_repository(provider: str, payload: Mapping[str, object]) -> str | None:
    """The ``owner/name`` a push payload names, or None."""
    if provider == "gitlab":
        project = payload.get("project")
        value = project.get("path_with_namespace") if isinstance(project, dict) else None
    else:
        repository = payload.get("repository")
        value = repository.get("full_name") if isinstance(repository, dict) else None
    if isinstance(value, str) and 0 < len(value) <= 255 and "/" in value:
        return value
    return None


def forge_request(
    settings: CommitStatusSettings,
    repo: str,
    sha: str,
    state: StatusState,
    description: str,
    target_url: str | None,
) -> dict[str, Any]:
    """``{"url", "json"}``: the request that sets this status (its token added when sent)."""
    api = settings.api_url.rstrip("/")
    description = description if len(description) <= MAX_DESCRIPTION else description[:139] + "…"
    if settings.provider == "gitlab":
        project = urllib.parse.quote(repo, safe="")
        body: dict[str, Any] = {
            "state": _GITLAB_STATE[state],
            "name": settings.context,
            "description": description,
        }
        if target_url:
            body["target_url"] = target_url
        return {"url": f"{api}/projects/{project}/statuses/{sha}", "json": body}
    owner, _, name = repo.partition("/")
    path = f"{urllib.parse.quote(owner, safe='')}/{urllib.parse.quote(name, safe='')}"
    body = {"state": state, "description": description, "context": settings.context}
    if target_url:
        body["target_url"] = target_url
    return {"url": f"{api}/repos/{path}/statuses/{sha}", "json": body}


def _auth_headers(provider: str, token: str) -> dict[str, str]:
    if provider == "github":
        return {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        }
    if provider == "gitlab":
        return {"PRIVATE-TOKEN": token}
    return {"Authorization": f"token {token}", "Accept": "application/json"}


@dataclass(frozen=True)
class _Verdict:
    state: StatusState
    description: str


class CommitStatuses:
    """Judges commits and owes the forge their statuses (outbox target ``forge``)."""

    def __init__(
        self,
        settings: CommitStatusSettings,
        store: Store,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        token = secret_from_env(settings.token_env, env)
        if token is None:
            raise InvalidSpec(
                f"commit_status.token_env: {settings.token_env} (or {settings.token_env}_FILE) "
                "is not set in the server's environment"
            )
        self.settings = settings
        self.store = store
        self._token = token
        environ = os.environ if env is None else env
        public = (environ.get("RECONCILE_PUBLIC_URL") or "").rstrip("/")
        self.target_url = f"{public}/v1/deployments" if public.startswith("http") else None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------- inputs

    def pushed(self, repo: str | None, sha: str | None) -> None:
        """A webhook's push (called before its reconcile is queued)."""
        if sha:
            self.store.remember_push(sha, repo)

    def reconciled(
        self,
        revision: str | None,
        *,
        commands: list[str],
        backoff: list[str],
        blocked: int,
        problems: int,
        ok: bool,
    ) -> None:
        """The first run of ``revision``: its verdict, or ``pending`` until its results."""
        if not revision:
            return
        row = self.store.commit_status(revision)
        only_if: str | None = None
        if row is not None and row.state is not None:
            if not (commands and row.state in ("failure", "error")):
                return  # judged by an earlier run
            only_if = row.state  # a retry of this very commit: its verdict is open again
        repo = (row.repo if row is not None else None) or self.settings.repo
        if repo is None:
            return  # not pushed to us, and no repository to poll-report on
        if not ok:
            verdict = _Verdict("failure", f"repository invalid: {problems} errors")
        elif commands:
            verdict = _Verdict("pending", f"{len(commands)} commands sent to agents")
        elif backoff:
            verdict = _Verdict("failure", f"failing, retried later: {', '.join(backoff)}")
        elif blocked:
            verdict = _Verdict("error", f"{blocked} deployments blocked (agent offline)")
        else:
            verdict = _Verdict("success", "in sync: nothing to change")
        self._set(revision, repo, verdict, commands, only_if=only_if)

    def settle(self) -> None:
        """Judge every pending commit whose commands have all ended."""
        with self._lock:
            for row in self.store.pending_commit_statuses():
                verdict = self._judge(row.commands)
                if verdict is not None and row.repo:
                    self._set(row.sha, row.repo, verdict, row.commands, only_if="pending")

    def _judge(self, command_ids: list[str]) -> _Verdict | None:
        failed: list[str] = []
        lost: list[str] = []
        for command_id in command_ids:
            command = self.store.command(command_id)
            if command is None:
                lost.append(command_id)
                continue
            name = str((command.payload.get("action") or {}).get("deployment") or command_id)
            if command.result is None:
                if command.state == "pending":
                    return None
                lost.append(f"{name} ({command.state})")
            elif not command.result.get("ok"):
                failed.append(name)
        if failed:
            return _Verdict("failure", f"failed: {', '.join(failed)}")
        if lost:
            return _Verdict("error", f"no result: {', '.join(lost)}")
        return _Verdict("success", f"{len(command_ids)} deployments applied")

    def _set(
        self,
        sha: str,
        repo: str,
        verdict: _Verdict,
        commands: list[str],
        *,
        only_if: str | None,
    ) -> None:
        request = forge_request(
            self.settings, repo, sha, verdict.state, verdict.description, self.target_url
        )
        if self.store.set_commit_status(
            sha,
            repo,
            verdict.state,
            commands=commands,
            request=json.dumps(request),
            only_if=only_if,
        ):
            log.info("commit %s: %s (%s)", sha[:12], verdict.state, verdict.description)

    # ------------------------------------------------------------------- output

    def prepare(self, row: OutboxRow) -> Delivery:
        """The outbox lane's request for one status, with the token added now (it is never
        written to the store)."""
        found = json.loads(row.body)
        headers = {
            **_auth_headers(self.settings.provider, self._token),
            "Content-Type": "application/json",
        }
        return Delivery(str(found["url"]), headers, json.dumps(found["json"]).encode())
