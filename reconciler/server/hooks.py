"""The push webhook receivers of ``reconcile serve``: an APIRouter the app includes.

Webhooks are triggers only: verify, dedupe, enqueue, answer.  Nothing here plans or
deploys; ``trigger`` puts a reason on the worker's single-flight queue and returns, so a
delivery is answered within milliseconds and a lost one costs only a delay (the timer
reconciles anyway).

Per request, in this order, so an unauthenticated body never reaches a parser:

1. no secret configured for the provider -> **503** ``not_configured`` (the operator sees
   in the provider's delivery log what to set; a 401 would send them hunting for a
   wrong secret).  Nothing is read, nothing enqueued.
2. no credential header -> 401.  ``Content-Length`` over ``max_body`` -> 413.
3. the body is streamed and counted; past ``max_body`` the read stops -> 413 (chunked
   bodies without ``Content-Length`` too).  Answers given before the body was read
   whole carry ``Connection: close`` so the server never drains the rest.
4. signature (or token) over the raw bytes -> 401 when it does not hold.
5. the payload is decoded (JSON, or GitHub's form encoding) -> 400 when malformed.
6. delivery id seen before -> 200 ``duplicate`` (durable: the store keeps the ids).
7. ping -> 200; not our branch / a tag / a deletion / another event -> 202 ``ignored``
   with the reason; otherwise ``trigger`` and 202 ``accepted``.

Every delivery, refused or not, is counted (``observe(provider, result)``) and recorded
(``record_event("webhook", …)``); refused ones only up to ``refused_events_per_minute``
per source address (:class:`EventBudget`), so that forged deliveries cannot flood the
event log.  Steps 4-7 and the store calls run in a worker thread
(anyio's pool), never on the event loop: an HMAC over 25 MB or an SQLite commit must not
stall other requests.  So ``DeliveryLog``, ``DeployHooks``, ``trigger``,
``record_event`` and ``observe`` must be thread-safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from reconciler.server.webhooks import (
    Decision,
    MalformedPayload,
    Provider,
    Result,
    bitbucket_updates,
    decide,
    decode_payload,
    github_updates,
    gitlab_updates,
    same_token,
    verify_bitbucket,
    verify_gitea,
    verify_github,
)

__all__ = [
    "REFUSED",
    "DeliveryLog",
    "DeployHooks",
    "EventBudget",
    "HookDeps",
    "HookSettings",
    "webhook_router",
]

#: The HTTP status of each result; the JSON body always carries the result by name.
STATUS: dict[Result, int] = {
    Result.ACCEPTED: 202,
    Result.IGNORED: 202,
    Result.DUPLICATE: 200,
    Result.PING: 200,
    Result.UNAUTHORIZED: 401,
    Result.NOT_CONFIGURED: 503,
    Result.TOO_LARGE: 413,
    Result.MALFORMED: 400,
}

log = logging.getLogger("reconciler.server")

#: Longer delivery ids are refused: they are attacker-chosen strings headed for the store.
MAX_DELIVERY_ID = 200


class DeliveryLog(Protocol):
    def remember_delivery(self, provider: str, delivery_id: str) -> bool:
        """Record the id durably; True when it was new (False: a replay)."""
        ...


class DeployHooks(Protocol):
    def check_deploy_hook(self, token: str) -> str | None:
        """The hook's name when the token is known (the store compares hashes)."""
        ...


@dataclass(frozen=True)
class HookSettings:
    branch: str = "main"
    webhook_secret: bytes | None = None  # RECONCILE_WEBHOOK_SECRET (GitHub, Gitea, Bitbucket)
    gitlab_token: str | None = None  # RECONCILE_GITLAB_TOKEN
    max_body: int = 25 * 1024 * 1024
    refused_events_per_minute: int = 10  # per source address; all are counted anyway


def _no_observe(provider: str, result: str) -> None:
    return None


def _no_suppressed(provider: str) -> None:
    return None


#: Results that refuse a delivery: anyone who can reach the port can cause them.
REFUSED = frozenset(
    {Result.UNAUTHORIZED, Result.NOT_CONFIGURED, Result.TOO_LARGE, Result.MALFORMED}
)


class EventBudget:
    """How many refused deliveries each source address may put in the event log: a
    bucket of ``per_minute`` events, refilled at that rate.  Past it a refusal is only
    counted; the next one recorded says how many were left out (``suppressed``).

    Thread-safe (deliveries conclude in worker threads).  At most ``max_sources``
    addresses are remembered (the oldest is forgotten first), so a spread of source
    addresses costs bounded memory; a forgotten address starts with a full bucket.
    """

    def __init__(
        self,
        per_minute: int,
        *,
        max_sources: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute = per_minute
        self.max_sources = max_sources
        self.clock = clock
        self._lock = threading.Lock()
        # address -> (tokens, last refill, suppressed since the last recorded event)
        self._buckets: OrderedDict[str, tuple[float, float, int]] = OrderedDict()

    def take(self, source: str) -> tuple[bool, int]:
        """``(record, suppressed)``: whether to record this refusal, and how many of the
        source's refusals went unrecorded before it."""
        now = self.clock()
        with self._lock:
            tokens, last, suppressed = self._buckets.pop(source, (float(self.per_minute), now, 0))
            tokens = min(float(self.per_minute), tokens + (now - last) * self.per_minute / 60)
            if tokens >= 1:
                self._buckets[source] = (tokens - 1, now, 0)
                record = True
            else:
                self._buckets[source] = (tokens, now, suppressed + 1)
                record = False
            while len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        return record, suppressed if record else 0


def _source(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@dataclass
class HookDeps:
    settings: HookSettings
    deliveries: DeliveryLog
    deploy_hooks: DeployHooks
    trigger: Callable[[str], None]  # enqueue a reconcile (reason); fast, thread-safe
    record_event: Callable[[str, dict[str, object]], None]  # kind "webhook"
    observe: Callable[[str, str], None] = _no_observe  # metrics: (provider, result)
    observe_suppressed: Callable[[str], None] = _no_suppressed  # a refusal not recorded
    # an accepted push: (provider, payload, commit), before its reconcile is queued
    on_push: Callable[[str, Mapping[str, object], str | None], None] | None = None


@dataclass(frozen=True)
class _Outcome:
    result: Result
    detail: str
    delivery: str | None = None
    revision: str | None = None  # the commit an accepted push moved the branch to


class _Refused(Exception):
    def __init__(self, result: Result, detail: str) -> None:
        super().__init__(detail)
        self.result = result
        self.detail = detail


Headers = Mapping[str, str]


@dataclass(frozen=True)
class _Spec:
    """One signing provider: where its credential, event and delivery id live."""

    provider: Provider
    credential_headers: tuple[str, ...]
    delivery_headers: tuple[str, ...]
    configured: Callable[[HookSettings], bool]
    verify: Callable[[HookSettings, bytes, str], bool]
    inspect: Callable[[Headers, Mapping[str, object], str], _Outcome]


def _first(headers: Headers, names: tuple[str, ...]) -> str | None:
    for name in names:
        value = headers.get(name)
        if value:
            return value
    return None


def _from_decision(decision: Decision) -> _Outcome:
    result = Result.ACCEPTED if decision.enqueue else Result.IGNORED
    return _Outcome(result, decision.reason, revision=decision.revision)


def _inspect_github(headers: Headers, payload: Mapping[str, object], branch: str) -> _Outcome:
    event = headers.get("x-github-event")
    if not event:
        raise MalformedPayload("no X-GitHub-Event header")
    if event == "ping":
        return _Outcome(Result.PING, "pong")
    if event != "push":
        return _Outcome(Result.IGNORED, f"event {event!r} is not a push")
    return _from_decision(decide(github_updates(payload), branch))


_GITEA_EVENT = ("x-gitea-event", "x-forgejo-event", "x-gogs-event")


def _inspect_gitea(headers: Headers, payload: Mapping[str, object], branch: str) -> _Outcome:
    event = _first(headers, _GITEA_EVENT)
    if not event:
        raise MalformedPayload("no X-Gitea-Event header")
    if event != "push":
        return _Outcome(Result.IGNORED, f"event {event!r} is not a push")
    return _from_decision(decide(github_updates(payload), branch))


def _inspect_gitlab(headers: Headers, payload: Mapping[str, object], branch: str) -> _Outcome:
    event = headers.get("x-gitlab-event")
    if not event:
        raise MalformedPayload("no X-Gitlab-Event header")
    if event not in ("Push Hook", "Tag Push Hook"):
        return _Outcome(Result.IGNORED, f"event {event!r} is not a push")
    return _from_decision(decide(gitlab_updates(payload), branch))


def _inspect_bitbucket(headers: Headers, payload: Mapping[str, object], branch: str) -> _Outcome:
    event = headers.get("x-event-key")
    if not event:
        raise MalformedPayload("no X-Event-Key header")
    if event == "diagnostics:ping":
        return _Outcome(Result.PING, "pong")
    if event != "repo:push":
        return _Outcome(Result.IGNORED, f"event {event!r} is not a push")
    return _from_decision(decide(bitbucket_updates(payload), branch))


def _has_secret(settings: HookSettings) -> bool:
    return bool(settings.webhook_secret)


def _secret(settings: HookSettings) -> bytes:
    return settings.webhook_secret or b""


_SPECS: dict[Provider, _Spec] = {
    Provider.GITHUB: _Spec(
        Provider.GITHUB,
        credential_headers=("x-hub-signature-256",),
        delivery_headers=("x-github-delivery",),
        configured=_has_secret,
        verify=lambda s, body, sig: verify_github(_secret(s), body, sig),
        inspect=_inspect_github,
    ),
    Provider.GITEA: _Spec(
        Provider.GITEA,
        credential_headers=("x-gitea-signature", "x-forgejo-signature", "x-gogs-signature"),
        delivery_headers=("x-gitea-delivery", "x-forgejo-delivery", "x-gogs-delivery"),
        configured=_has_secret,
        verify=lambda s, body, sig: verify_gitea(_secret(s), body, sig),
        inspect=_inspect_gitea,
    ),
    Provider.GITLAB: _Spec(
        Provider.GITLAB,
        credential_headers=("x-gitlab-token",),
        # Idempotency-Key stays the same across GitLab's retries; the event UUID is older.
        delivery_headers=("idempotency-key", "x-gitlab-event-uuid"),
        configured=lambda s: bool(s.gitlab_token),
        verify=lambda s, _body, token: same_token(s.gitlab_token or "", token),
        inspect=_inspect_gitlab,
    ),
    Provider.BITBUCKET: _Spec(
        Provider.BITBUCKET,
        credential_headers=("x-hub-signature",),
        # X-Request-UUID names the delivery; X-Hook-UUID names the *webhook* (the same
        # on every push), so deduplicating on it would drop every push after the first.
        delivery_headers=("x-request-uuid",),
        configured=_has_secret,
        verify=lambda s, body, sig: verify_bitbucket(_secret(s), body, sig),
        inspect=_inspect_bitbucket,
    ),
}

_SECRET_ENV = {
    Provider.GITHUB: "RECONCILE_WEBHOOK_SECRET",
    Provider.GITEA: "RECONCILE_WEBHOOK_SECRET",
    Provider.BITBUCKET: "RECONCILE_WEBHOOK_SECRET",
    Provider.GITLAB: "RECONCILE_GITLAB_TOKEN",
}


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw body, read no further than ``limit`` bytes (raises 413 past it)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise _Refused(Result.MALFORMED, "Content-Length is not a number") from None
        if size > limit:
            raise _Refused(Result.TOO_LARGE, f"body of {size} bytes exceeds {limit}")
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise _Refused(Result.TOO_LARGE, f"body exceeds {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise _Refused(Result.MALFORMED, "client disconnected before the body ended") from None
    return b"".join(chunks)


def _delivery_id(headers: Headers, names: tuple[str, ...]) -> str | None:
    value = _first(headers, names)
    if value is None:
        return None
    return value.strip() or None


def _log_delivery(fields: Mapping[str, object]) -> None:
    """One log line per delivery, within the same budget as the event log (so forged
    deliveries flood neither).  The text is the sender's: repr keeps it on one line."""
    refused = fields["result"] in {r.value for r in REFUSED}
    log.log(
        logging.WARNING if refused else logging.INFO,
        "webhook %s delivery %s: %s (%r)",
        fields["provider"],
        fields["delivery"] or "-",
        fields["result"],
        fields["detail"],
        extra={"fields": {"event": "webhook", **fields}},
    )


class _Receiver:
    """The endpoints' shared flow; one instance per router, holding the deps."""

    def __init__(self, deps: HookDeps) -> None:
        self.deps = deps
        self.budget = EventBudget(deps.settings.refused_events_per_minute)

    def _conclude(self, provider: Provider, outcome: _Outcome, source: str) -> JSONResponse:
        """Record and count one delivery, and build its answer (runs in a worker thread).

        Every delivery is counted; a refused one is recorded only within its source
        address's event budget, so forged deliveries cannot flood the event log.
        """
        fields: dict[str, object] = {
            "provider": provider.value,
            "delivery": (outcome.delivery or "")[:MAX_DELIVERY_ID] or None,
            "result": outcome.result.value,
            "detail": outcome.detail,
        }
        self.deps.observe(provider.value, outcome.result.value)
        if outcome.result not in REFUSED:
            self.deps.record_event("webhook", fields)
            _log_delivery(fields)
        else:
            record, suppressed = self.budget.take(source)
            if record:
                extra: dict[str, object] = {"source": source}
                if suppressed:
                    extra["suppressed"] = suppressed  # refusals from it not recorded
                self.deps.record_event("webhook", {**fields, **extra})
                _log_delivery({**fields, **extra})
            else:
                self.deps.observe_suppressed(provider.value)
        return JSONResponse(fields, status_code=STATUS[outcome.result])

    def _settle(
        self,
        provider: Provider,
        delivery: str | None,
        outcome: _Outcome,
        reason: str,
        *,
        payload: Mapping[str, object] | None = None,
    ) -> _Outcome:
        """Dedupe, then enqueue when the outcome says so."""
        if outcome.result in (Result.ACCEPTED, Result.IGNORED) and delivery is not None:
            if len(delivery) > MAX_DELIVERY_ID:
                return _Outcome(Result.MALFORMED, "delivery id is too long", delivery)
            if not self.deps.deliveries.remember_delivery(provider.value, delivery):
                return _Outcome(Result.DUPLICATE, "delivery seen before; nothing to do", delivery)
        if outcome.result is Result.ACCEPTED:
            if self.deps.on_push is not None and payload is not None:
                self.deps.on_push(provider.value, payload, outcome.revision)
            self.deps.trigger(reason)
        return _Outcome(outcome.result, outcome.detail, delivery)

    def _process(
        self, spec: _Spec, headers: Headers, body: bytes, credential: str, source: str
    ) -> JSONResponse:
        settings = self.deps.settings
        delivery = _delivery_id(headers, spec.delivery_headers)
        if not spec.verify(settings, body, credential):
            outcome = _Outcome(Result.UNAUTHORIZED, "signature does not match", delivery)
            return self._conclude(spec.provider, outcome, source)
        try:
            payload = decode_payload(body, headers.get("content-type"))
            inspected = spec.inspect(headers, payload, settings.branch)
        except MalformedPayload as exc:
            outcome = _Outcome(Result.MALFORMED, str(exc), delivery)
            return self._conclude(spec.provider, outcome, source)
        reason = f"{spec.provider.value} {inspected.detail}"
        if delivery:
            reason += f" (delivery {delivery[:64]})"
        settled = self._settle(spec.provider, delivery, inspected, reason, payload=payload)
        return self._conclude(spec.provider, settled, source)

    async def _refuse(
        self,
        provider: Provider,
        result: Result,
        detail: str,
        delivery: str | None,
        source: str,
        *,
        drained: bool,
    ) -> JSONResponse:
        response = await to_thread.run_sync(
            self._conclude, provider, _Outcome(result, detail, delivery), source
        )
        if not drained:
            # The rest of the body is still on the wire: closing beats draining 25 MB.
            response.headers["connection"] = "close"
        return response

    async def signed(self, spec: _Spec, request: Request) -> JSONResponse:
        settings = self.deps.settings
        headers = request.headers
        delivery = _delivery_id(headers, spec.delivery_headers)
        source = _source(request)
        if not spec.configured(settings):
            detail = (
                f"no secret configured for {spec.provider.value}: set {_SECRET_ENV[spec.provider]}"
            )
            return await self._refuse(
                spec.provider, Result.NOT_CONFIGURED, detail, delivery, source, drained=False
            )
        credential = _first(headers, spec.credential_headers)
        if credential is None:
            detail = f"missing {spec.credential_headers[0]} header"
            if spec.provider is Provider.GITHUB and "x-hub-signature" in headers:
                detail = "only a SHA-1 X-Hub-Signature: X-Hub-Signature-256 (SHA-256) is required"
            return await self._refuse(
                spec.provider, Result.UNAUTHORIZED, detail, delivery, source, drained=False
            )
        try:
            body = await _read_body(request, settings.max_body)
        except _Refused as refused:
            return await self._refuse(
                spec.provider, refused.result, refused.detail, delivery, source, drained=False
            )
        return await to_thread.run_sync(self._process, spec, headers, body, credential, source)

    def _deploy(self, token: str, delivery: str | None, source: str) -> JSONResponse:
        name = self.deps.deploy_hooks.check_deploy_hook(token)
        if name is None:
            outcome = _Outcome(Result.UNAUTHORIZED, "unknown deploy hook token", delivery)
            return self._conclude(Provider.DEPLOY, outcome, source)
        reason = f"deploy hook {name!r}"
        outcome = _Outcome(Result.ACCEPTED, reason)
        settled = self._settle(Provider.DEPLOY, delivery, outcome, reason)
        return self._conclude(Provider.DEPLOY, settled, source)

    async def deploy(self, token: str, request: Request) -> JSONResponse:
        delivery = _delivery_id(request.headers, ("idempotency-key",))
        source = _source(request)
        try:
            await _read_body(request, self.deps.settings.max_body)  # bounded; contents unused
        except _Refused as refused:
            return await self._refuse(
                Provider.DEPLOY, refused.result, refused.detail, delivery, source, drained=False
            )
        return await to_thread.run_sync(self._deploy, token, delivery, source)


def webhook_router(deps: HookDeps) -> APIRouter:
    """``POST /hooks/{github,gitlab,bitbucket,gitea}`` and ``POST /hooks/deploy/{token}``."""
    receiver = _Receiver(deps)
    router = APIRouter(prefix="/hooks", tags=["webhooks"])

    def endpoint(spec: _Spec) -> Callable[[Request], object]:
        async def receive(request: Request) -> JSONResponse:
            return await receiver.signed(spec, request)

        receive.__name__ = f"{spec.provider.value}_webhook"
        return receive

    for provider, spec in _SPECS.items():
        router.add_api_route(
            f"/{provider.value}",
            endpoint(spec),
            methods=["POST"],
            status_code=202,
            response_class=JSONResponse,
            summary=f"{provider.value} push webhook",
        )

    @router.post("/deploy/{token}", status_code=202, response_class=JSONResponse)
    async def deploy_hook(token: str, request: Request) -> JSONResponse:
        """Generic deploy hook: the secret token in the path triggers a reconcile."""
        return await receiver.deploy(token, request)

    return router
