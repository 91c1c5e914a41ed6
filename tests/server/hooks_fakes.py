"""Fakes and real-shaped payloads for the webhook tests (and a tiny app for uvicorn).

The payloads follow the providers' documented examples, trimmed to the fields a
receiver might look at plus enough of the rest that a parser relying on fewer keys
would notice nothing wrong.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from reconciler.server.hooks import HookDeps, HookSettings, webhook_router

SECRET = b"It's a Secret to Everybody"
GITLAB_TOKEN = "glwht-s3cr3t-t0ken-42"
DEPLOY_TOKEN = "dht_0123456789abcdef0123456789abcdef"

SHA_A = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
SHA_B = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"
ZERO = "0" * 40

_REPO = {
    "id": 186853002,
    "name": "ops",
    "full_name": "octo-org/ops",
    "private": True,
    "owner": {"login": "octo-org", "id": 6811672, "type": "Organization"},
    "html_url": "https://github.com/octo-org/ops",
    "default_branch": "main",
}


def github_push(ref: str = "refs/heads/main", after: str = SHA_B, **extra: Any) -> dict[str, Any]:
    """GitHub's ``push`` event (https://docs.github.com/webhooks/webhook-events-and-payloads)."""
    deleted = after == ZERO
    payload: dict[str, Any] = {
        "ref": ref,
        "before": SHA_A,
        "after": after,
        "repository": copy.deepcopy(_REPO),
        "pusher": {"name": "octocat", "email": "octocat@example.com"},
        "sender": {"login": "octocat", "id": 21031067, "type": "User"},
        "created": False,
        "deleted": deleted,
        "forced": False,
        "base_ref": None,
        "compare": f"https://github.com/octo-org/ops/compare/{SHA_A[:12]}...{after[:12]}",
        "commits": []
        if deleted
        else [
            {
                "id": after,
                "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433",
                "distinct": True,
                "message": "deployments: bump api to busybox:1.37",
                "timestamp": "2026-01-01T12:00:00+00:00",
                "url": f"https://github.com/octo-org/ops/commit/{after}",
                "author": {"name": "Octo Cat", "email": "octocat@example.com"},
                "committer": {"name": "GitHub", "email": "noreply@github.com"},
                "added": [],
                "removed": [],
                "modified": ["deployments/api.yaml"],
            }
        ],
        "head_commit": None if deleted else {"id": after, "message": "deployments: bump api"},
    }
    payload.update(extra)
    return payload


def github_ping() -> dict[str, Any]:
    return {
        "zen": "Keep it logically awesome.",
        "hook_id": 30,
        "hook": {"type": "Repository", "id": 30, "events": ["push"], "active": True},
        "repository": copy.deepcopy(_REPO),
        "sender": {"login": "octocat", "id": 21031067},
    }


def gitea_push(ref: str = "refs/heads/main", after: str = SHA_B) -> dict[str, Any]:
    """Gitea's ``push`` (GitHub-like; no ``deleted`` key: a deletion has a zero ``after``)."""
    return {
        "ref": ref,
        "before": SHA_A,
        "after": after,
        "compare_url": f"https://gitea.example.com/ops/infra/compare/{SHA_A}...{after}",
        "commits": [
            {
                "id": after,
                "message": "deployments: add blog\n",
                "url": f"https://gitea.example.com/ops/infra/commit/{after}",
                "author": {"name": "Ops", "email": "ops@example.com", "username": "ops"},
                "committer": {"name": "Ops", "email": "ops@example.com", "username": "ops"},
                "verification": None,
                "timestamp": "2026-01-01T12:00:00+01:00",
                "added": ["deployments/blog.yaml"],
                "removed": [],
                "modified": [],
            }
        ],
        "total_commits": 1,
        "head_commit": {"id": after, "message": "deployments: add blog\n"},
        "repository": {"id": 1, "name": "infra", "full_name": "ops/infra", "private": True},
        "pusher": {"id": 1, "login": "ops", "username": "ops"},
        "sender": {"id": 1, "login": "ops", "username": "ops"},
    }


def gitlab_push(ref: str = "refs/heads/main", after: str = SHA_B) -> dict[str, Any]:
    """GitLab's ``Push Hook`` (and, with a ``refs/tags/`` ref, ``Tag Push Hook``)."""
    tag = ref.startswith("refs/tags/")
    return {
        "object_kind": "tag_push" if tag else "push",
        "event_name": "tag_push" if tag else "push",
        "before": SHA_A,
        "after": after,
        "ref": ref,
        "ref_protected": True,
        "checkout_sha": None if after == ZERO else after,
        "user_id": 4,
        "user_name": "John Smith",
        "user_username": "jsmith",
        "project_id": 15,
        "project": {
            "id": 15,
            "name": "ops",
            "path_with_namespace": "infra/ops",
            "default_branch": "main",
            "git_http_url": "https://gitlab.example.com/infra/ops.git",
        },
        "commits": [],
        "total_commits_count": 0,
        "repository": {"name": "ops", "homepage": "https://gitlab.example.com/infra/ops"},
    }


def _bitbucket_ref(kind: str, name: str, sha: str) -> dict[str, Any]:
    return {
        "type": kind,
        "name": name,
        "target": {
            "type": "commit",
            "hash": sha,
            "message": "deployments: bump api\n",
            "date": "2026-01-01T12:00:00+00:00",
            "links": {"html": {"href": f"https://bitbucket.org/team/ops/commits/{sha}"}},
        },
        "links": {"html": {"href": f"https://bitbucket.org/team/ops/branch/{name}"}},
    }


def bitbucket_change(
    kind: str = "branch", name: str = "main", *, deleted: bool = False, sha: str = SHA_B
) -> dict[str, Any]:
    old = _bitbucket_ref(kind, name, SHA_A)
    return {
        "new": None if deleted else _bitbucket_ref(kind, name, sha),
        "old": old,
        "created": False,
        "closed": deleted,
        "forced": False,
        "truncated": False,
        "commits": [],
    }


def bitbucket_push(*changes: dict[str, Any]) -> dict[str, Any]:
    """Bitbucket Cloud's ``repo:push``: one entry in ``push.changes`` per ref moved."""
    return {
        "push": {"changes": list(changes) or [bitbucket_change()]},
        "repository": {
            "type": "repository",
            "name": "ops",
            "full_name": "team/ops",
            "uuid": "{b0e9f1c2-0000-4000-8000-000000000001}",
            "is_private": True,
        },
        "actor": {"type": "user", "display_name": "Ops", "uuid": "{0000}"},
    }


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def sign256(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def gitea_sig(body: bytes, secret: bytes = SECRET) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


class MemoryDeliveries:
    """A DeliveryLog in memory (the store keeps the same set on disk)."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def remember_delivery(self, provider: str, delivery_id: str) -> bool:
        with self._lock:
            if (provider, delivery_id) in self.seen:
                return False
            self.seen.add((provider, delivery_id))
            return True


class MemoryDeployHooks:
    def __init__(self, hooks: dict[str, str] | None = None) -> None:
        self.hooks = hooks if hooks is not None else {DEPLOY_TOKEN: "nightly"}
        self.asked: list[str] = []

    def check_deploy_hook(self, token: str) -> str | None:
        self.asked.append(token)
        return self.hooks.get(token)


@dataclass
class Recorder:
    """The router's side effects, as values a test can assert on."""

    deliveries: MemoryDeliveries = field(default_factory=MemoryDeliveries)
    deploy_hooks: MemoryDeployHooks = field(default_factory=MemoryDeployHooks)
    triggers: list[str] = field(default_factory=list)
    events: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    observed: list[tuple[str, str]] = field(default_factory=list)

    def deps(self, settings: HookSettings) -> HookDeps:
        return HookDeps(
            settings=settings,
            deliveries=self.deliveries,
            deploy_hooks=self.deploy_hooks,
            trigger=self.triggers.append,
            record_event=lambda kind, fields: self.events.append((kind, fields)),
            observe=lambda provider, result: self.observed.append((provider, result)),
        )


def make_app(recorder: Recorder, settings: HookSettings) -> FastAPI:
    app = FastAPI()
    app.include_router(webhook_router(recorder.deps(settings)))
    return app


def uvicorn_app() -> FastAPI:
    """``uvicorn --factory tests.server.hooks_fakes:uvicorn_app`` for the real-socket test.

    ``HOOKS_MAX_BODY`` sets the cap; ``/count`` tells how many pushes were enqueued.
    """
    recorder = Recorder()
    settings = HookSettings(
        webhook_secret=SECRET, max_body=int(os.environ.get("HOOKS_MAX_BODY", "1048576"))
    )
    app = make_app(recorder, settings)

    @app.get("/count")
    def count() -> dict[str, int]:
        return {"triggers": len(recorder.triggers), "events": len(recorder.events)}

    return app
