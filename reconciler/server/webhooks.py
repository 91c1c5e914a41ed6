"""Push webhooks, pure: who signed a body, and whether the push it describes concerns us.

No I/O and no web framework here, so every provider's rules are unit-tested on bytes and
dicts alone; :mod:`reconciler.server.hooks` does the HTTP around it.

The order the router follows, and why: a signature is checked over the *raw* bytes
before anything is parsed (a parser is attack surface; an unauthenticated body must
never reach it); only then is the payload decoded and classified.  A push only ever
*triggers* a reconcile, so classification answers one question: "should the branch we
deploy from be looked at again?"  Tags, other branches and deletions answer no.

Signatures (every comparison is :func:`hmac.compare_digest`, constant-time):

* GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256>``.  The SHA-1
  ``X-Hub-Signature`` is never accepted: a sender that signs only with SHA-1 is refused.
* Bitbucket Cloud: ``X-Hub-Signature: sha256=<hex HMAC-SHA256>`` (same header name as
  GitHub's SHA-1 one, SHA-256 inside; the ``sha256=`` prefix is required).
* Gitea: ``X-Gitea-Signature: <hex HMAC-SHA256>``, no prefix; Forgejo sends the same
  value as ``X-Forgejo-Signature`` (and Gogs as ``X-Gogs-Signature``).
* GitLab: ``X-Gitlab-Token`` is the shared secret itself, compared constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import parse_qs

__all__ = [
    "ZERO_SHA",
    "Decision",
    "MalformedPayload",
    "Provider",
    "RefUpdate",
    "Result",
    "bitbucket_updates",
    "decide",
    "decode_payload",
    "github_updates",
    "gitlab_updates",
    "hmac_sha256_hex",
    "same_token",
    "verify_bitbucket",
    "verify_gitea",
    "verify_github",
]

#: The "after" (or "before") sha of a ref that does not exist: a deletion (or creation).
ZERO_SHA = "0" * 40


class Provider(StrEnum):
    GITHUB = "github"
    GITLAB = "gitlab"
    BITBUCKET = "bitbucket"
    GITEA = "gitea"
    DEPLOY = "deploy"


class Result(StrEnum):
    """What happened to one delivery: the event log's ``result`` and the metric label."""

    ACCEPTED = "accepted"  # 202, a reconcile was enqueued
    IGNORED = "ignored"  # 202, nothing enqueued (other branch, tag, deletion, other event)
    DUPLICATE = "duplicate"  # 200, delivery id seen before: a no-op
    PING = "ping"  # 200
    UNAUTHORIZED = "unauthorized"  # 401
    NOT_CONFIGURED = "not_configured"  # 503, no secret set for this provider
    TOO_LARGE = "too_large"  # 413
    MALFORMED = "malformed"  # 400


class MalformedPayload(ValueError):
    """The (authenticated) body is not the JSON document the provider sends."""


# -- signatures ---------------------------------------------------------------------------


def hmac_sha256_hex(secret: bytes, body: bytes) -> str:
    """The lowercase hex HMAC-SHA256 every signing provider computes over the raw body."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def _same_hex(expected_hex: str, given: str) -> bool:
    # Lowercase first: hex case carries no meaning, and compare_digest needs ASCII str.
    given = given.strip().lower()
    if not given.isascii():
        return False
    return hmac.compare_digest(expected_hex, given)


def _verify_prefixed(secret: bytes, body: bytes, header: str | None) -> bool:
    if not secret or header is None:
        return False
    algorithm, sep, digest = header.strip().partition("=")
    if not sep or algorithm.strip().lower() != "sha256":
        return False
    return _same_hex(hmac_sha256_hex(secret, body), digest)


def verify_github(secret: bytes, body: bytes, signature_256: str | None) -> bool:
    """``X-Hub-Signature-256: sha256=<hex>``; there is deliberately no SHA-1 variant."""
    return _verify_prefixed(secret, body, signature_256)


def verify_bitbucket(secret: bytes, body: bytes, signature: str | None) -> bool:
    """Bitbucket Cloud's ``X-Hub-Signature: sha256=<hex>``; a ``sha1=`` value is refused."""
    return _verify_prefixed(secret, body, signature)


def verify_gitea(secret: bytes, body: bytes, signature: str | None) -> bool:
    """Gitea's (and Forgejo's, Gogs') bare hex HMAC-SHA256, no algorithm prefix."""
    if not secret or signature is None:
        return False
    return _same_hex(hmac_sha256_hex(secret, body), signature)


def same_token(expected: str, given: str | None) -> bool:
    """GitLab's ``X-Gitlab-Token`` and deploy tokens: equality in constant time.

    Both sides are compared as UTF-8 bytes (``compare_digest`` refuses non-ASCII str);
    an empty expected token never matches, so an unset secret cannot be "guessed" empty.
    """
    if not expected or given is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


# -- decoding -----------------------------------------------------------------------------


def decode_payload(body: bytes, content_type: str | None) -> Mapping[str, object]:
    """The JSON object of a delivery, from ``application/json`` or the form encoding.

    GitHub (and Gitea) can send ``application/x-www-form-urlencoded`` with the JSON in
    a ``payload`` field; the signature covers the form body, so decoding happens here,
    after verification, never before.
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        try:
            fields = parse_qs(body.decode("utf-8"), strict_parsing=True, max_num_fields=16)
        except (UnicodeDecodeError, ValueError) as exc:
            raise MalformedPayload(f"form body does not decode: {exc}") from None
        values = fields.get("payload")
        if not values:
            raise MalformedPayload("form body has no 'payload' field")
        text: str | bytes = values[0]
    else:
        text = body
    try:
        doc = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedPayload(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        # json's decoder recurses once per level: a signed body ~1,000 levels deep would
        # otherwise be a 500.  No provider nests a push payload more than a few levels.
        raise MalformedPayload("JSON body is nested too deeply") from None
    if not isinstance(doc, dict):
        raise MalformedPayload(f"JSON body is a {type(doc).__name__}, not an object")
    return doc


# -- classification -----------------------------------------------------------------------


@dataclass(frozen=True)
class RefUpdate:
    """One ref a push moved: ``kind`` is ``branch``, ``tag`` or ``other`` (``refs/notes``…)."""

    kind: str
    name: str
    deleted: bool = False
    after: str | None = None


@dataclass(frozen=True)
class Decision:
    """Whether a push warrants a reconcile, and a reason a human can read in a delivery log."""

    enqueue: bool
    reason: str
    revision: str | None = None


def _split_ref(ref: object) -> tuple[str, str]:
    if not isinstance(ref, str) or not ref:
        raise MalformedPayload("push payload has no 'ref'")
    for prefix, kind in (("refs/heads/", "branch"), ("refs/tags/", "tag")):
        if ref.startswith(prefix):
            return kind, ref.removeprefix(prefix)
    return "other", ref


def _opt_str(payload: Mapping[str, object], key: str) -> str | None:
    value = payload.get(key)
    return value if isinstance(value, str) and value else None


def github_updates(payload: Mapping[str, object]) -> list[RefUpdate]:
    """GitHub's and Gitea's ``push``: ``ref``, ``after``, ``deleted`` (Gitea: zero ``after``)."""
    kind, name = _split_ref(payload.get("ref"))
    after = _opt_str(payload, "after")
    deleted = payload.get("deleted") is True or after == ZERO_SHA
    return [RefUpdate(kind, name, deleted=deleted, after=None if deleted else after)]


def gitlab_updates(payload: Mapping[str, object]) -> list[RefUpdate]:
    """GitLab's ``Push Hook`` / ``Tag Push Hook``: ``ref``, ``after`` (zeros on deletion).

    Same fields as GitHub's, minus ``deleted``: the zero ``after`` alone marks a deletion.
    """
    return github_updates(payload)


def bitbucket_updates(payload: Mapping[str, object]) -> list[RefUpdate]:
    """Bitbucket Cloud's ``repo:push``: ``push.changes[]`` with ``new``/``old`` refs.

    ``new: null`` is a deletion (then the name comes from ``old``); ``new.type`` is
    ``branch`` (or Mercurial's ``named_branch``/``bookmark``, which we never deploy) or
    ``tag``.
    """
    push = payload.get("push")
    changes = push.get("changes") if isinstance(push, dict) else None
    if not isinstance(changes, list):
        raise MalformedPayload("repo:push payload has no 'push.changes' list")
    updates: list[RefUpdate] = []
    for change in changes:
        if not isinstance(change, dict):
            raise MalformedPayload("a 'push.changes' entry is not an object")
        new, old = change.get("new"), change.get("old")
        ref = new if isinstance(new, dict) else old
        if not isinstance(ref, dict) or not isinstance(ref.get("name"), str):
            raise MalformedPayload("a 'push.changes' entry names no ref")
        kind = ref.get("type")
        kind = kind if kind in ("branch", "tag") else "other"
        target = ref.get("target")
        after = target.get("hash") if isinstance(target, dict) else None
        deleted = not isinstance(new, dict)
        updates.append(
            RefUpdate(
                kind,
                ref["name"],
                deleted=deleted,
                after=None if deleted or not isinstance(after, str) else after,
            )
        )
    return updates


def decide(updates: list[RefUpdate], branch: str) -> Decision:
    """Enqueue when any update moved ``branch`` to a commit; otherwise say why not.

    A deletion of the deploy branch does not enqueue either: the reconciler would find
    no desired state to load, and "never prune when the desired set failed to load" makes
    that a no-op at best; the periodic timer notices a branch that comes back.
    """
    for update in updates:
        if update.kind == "branch" and update.name == branch and not update.deleted:
            short = update.after[:12] if update.after else "unknown commit"
            return Decision(True, f"push to {branch} ({short})", update.after)
    if not updates:
        return Decision(False, "push changed no refs")
    reasons = []
    for update in updates:
        if update.kind == "tag":
            reasons.append(f"tag {update.name!r} {'deleted' if update.deleted else 'pushed'}")
        elif update.kind == "branch" and update.deleted:
            reasons.append(f"branch {update.name!r} deleted")
        elif update.kind == "branch":
            reasons.append(f"push to branch {update.name!r}, not {branch!r}")
        else:
            reasons.append(f"ref {update.name!r} is not a branch")
    return Decision(False, "; ".join(reasons))
