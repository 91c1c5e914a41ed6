"""The webhook router over ASGI: every bad input is refused and enqueues nothing.

Each test drives a small FastAPI app holding only ``webhook_router`` with in-memory
fakes (``tests/server/hooks_fakes.py``) through ``httpx.ASGITransport``, which streams
request bodies chunk by chunk as a server would; assertions are on the answer *and* on
the side effects (triggers, remembered deliveries, events, metrics).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from reconciler.server.hooks import HookSettings
from tests.server.hooks_fakes import (
    DEPLOY_TOKEN,
    GITLAB_TOKEN,
    SECRET,
    SHA_B,
    ZERO,
    Recorder,
    bitbucket_change,
    bitbucket_push,
    body_of,
    gitea_push,
    gitea_sig,
    github_ping,
    github_push,
    gitlab_push,
    make_app,
    sign256,
)

pytestmark = pytest.mark.anyio

SMALL = 4096
FULL = HookSettings(webhook_secret=SECRET, gitlab_token=GITLAB_TOKEN, max_body=SMALL)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def client(recorder: Recorder) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(recorder, FULL)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hooks.test") as c:
        yield c


def github_headers(body: bytes, delivery: str = "d-1", event: str = "push") -> dict[str, str]:
    return {
        "content-type": "application/json",
        "x-github-event": event,
        "x-github-delivery": delivery,
        "x-hub-signature-256": sign256(body),
        "user-agent": "GitHub-Hookshot/044aadd",
    }


def assert_recorded(recorder: Recorder, provider: str, result: str, delivery: str | None) -> None:
    """Exactly one delivery seen, recorded as an event and counted, with this result."""
    assert recorder.observed == [(provider, result)]
    assert len(recorder.events) == 1
    kind, fields = recorder.events[0]
    assert kind == "webhook"
    assert fields["provider"] == provider
    assert fields["result"] == result
    assert fields["delivery"] == delivery


def assert_nothing_enqueued(recorder: Recorder) -> None:
    assert recorder.triggers == []


class TestGitHub:
    async def test_signed_push_to_the_branch_is_accepted_and_enqueued(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        body = body_of(github_push())
        r = await client.post("/hooks/github", content=body, headers=github_headers(body))
        assert r.status_code == 202
        assert r.json()["result"] == "accepted"
        assert len(recorder.triggers) == 1
        assert "github" in recorder.triggers[0]
        assert SHA_B[:12] in recorder.triggers[0]
        assert ("github", "d-1") in recorder.deliveries.seen
        assert_recorded(recorder, "github", "accepted", "d-1")

    async def test_the_documented_vector_passes_the_signature_check(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        # "Hello, World!" is not JSON, so it gets as far as the parser: 400, not 401.
        headers = github_headers(b"Hello, World!")
        assert headers["x-hub-signature-256"] == (
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        )
        r = await client.post("/hooks/github", content=b"Hello, World!", headers=headers)
        assert r.status_code == 400
        assert r.json()["result"] == "malformed"
        assert_nothing_enqueued(recorder)

    async def test_sha1_only_is_unauthorized(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        body = body_of(github_push())
        headers = github_headers(body)
        del headers["x-hub-signature-256"]
        headers["x-hub-signature"] = "sha1=" + hmac.new(SECRET, body, hashlib.sha1).hexdigest()
        r = await client.post("/hooks/github", content=body, headers=headers)
        assert r.status_code == 401
        assert "SHA-1" in r.json()["detail"]
        assert_nothing_enqueued(recorder)
        assert recorder.deliveries.seen == set()
        assert_recorded(recorder, "github", "unauthorized", "d-1")

    async def test_a_valid_sha1_beside_a_wrong_sha256_is_unauthorized(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        body = body_of(github_push())
        headers = github_headers(body)
        headers["x-hub-signature"] = "sha1=" + hmac.new(SECRET, body, hashlib.sha1).hexdigest()
        headers["x-hub-signature-256"] = sign256(body, secret=b"wrong")
        r = await client.post("/hooks/github", content=body, headers=headers)
        assert r.status_code == 401
        assert_nothing_enqueued(recorder)

    @pytest.mark.parametrize(
        "signature",
        [
            None,
            "",
            "sha256=" + "0" * 64,
            sign256(b"another body"),
            sign256(body_of(github_push()), secret=b"wrong secret"),
        ],
    )
    async def test_missing_or_wrong_signature_is_unauthorized(
        self, client: httpx.AsyncClient, recorder: Recorder, signature: str | None
    ) -> None:
        body = body_of(github_push())
        headers = github_headers(body)
        if signature is None:
            del headers["x-hub-signature-256"]
        else:
            headers["x-hub-signature-256"] = signature
        r = await client.post("/hooks/github", content=body, headers=headers)
        assert r.status_code == 401
        assert r.json()["result"] == "unauthorized"
        assert_nothing_enqueued(recorder)
        assert recorder.deliveries.seen == set()

    async def test_a_replayed_delivery_is_a_200_no_op(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        body = body_of(github_push())
        first = await client.post("/hooks/github", content=body, headers=github_headers(body))
        again = await client.post("/hooks/github", content=body, headers=github_headers(body))
        assert first.status_code == 202
        assert again.status_code == 200
        assert again.json()["result"] == "duplicate"
        assert len(recorder.triggers) == 1
        assert recorder.observed == [("github", "accepted"), ("github", "duplicate")]

    async def test_an_unsigned_replay_is_still_unauthorized(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        body = body_of(github_push())
        await client.post("/hooks/github", content=body, headers=github_headers(body))
        headers = github_headers(body)
        headers["x-hub-signature-256"] = sign256(body, secret=b"forged")
        r = await client.post("/hooks/github", content=body, headers=headers)
        assert r.status_code == 401
        assert len(recorder.triggers) == 1

    async def test_ping_is_answered(self, client: httpx.AsyncClient, recorder: Recorder) -> None:
        body = body_of(github_ping())
        r = await client.post(
            "/hooks/github", content=body, headers=github_headers(body, event="ping")
        )
        assert r.status_code == 200
        assert r.json()["result"] == "ping"
        assert_nothing_enqueued(recorder)
        assert_recorded(recorder, "github", "ping", "d-1")

    @pytest.mark.parametrize(
        ("payload", "reason"),
        [
            (github_push("refs/heads/dev"), "push to branch 'dev', not 'main'"),
            (github_push("refs/tags/v1.0.0"), "tag 'v1.0.0' pushed"),
            (github_push(after=ZERO), "branch 'main' deleted"),
            (github_push(deleted=True), "branch 'main' deleted"),
        ],
        ids=["other-branch", "tag", "deletion-zero-after", "deletion-flag"],
    )
    async def test_pushes_that_do_not_concern_the_branch_are_ignored(
        self, client: httpx.AsyncClient, recorder: Recorder, payload: dict[str, Any], reason: str
    ) -> None:
        body = body_of(payload)
        r = await client.post("/hooks/github", content=body, headers=github_headers(body))
        assert r.status_code == 202
        assert r.json()["result"] == "ignored"
        assert reason in r.json()["detail"]
        assert_nothing_enqueued(recorder)
        assert_recorded(recorder, "github", "ignored", "d-1")

    async def test_other_events_are_ignored(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        body = b'{"action": "opened", "issue": {"number": 1}}'
        r = await client.post(
            "/hooks/github", content=body, headers=github_headers(body, event="issues")
        )
        assert r.status_code == 202
        assert r.json() | {"detail": ""} == {
            "provider": "github",
            "delivery": "d-1",
            "result": "ignored",
            "detail": "",
        }
        assert "'issues' is not a push" in r.json()["detail"]
        assert_nothing_enqueued(recorder)

    async def test_form_encoded_body_signed_as_sent(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        body = urlencode({"payload": json.dumps(github_push())}).encode()
        headers = github_headers(body)
        headers["content-type"] = "application/x-www-form-urlencoded"
        r = await client.post("/hooks/github", content=body, headers=headers)
        assert r.status_code == 202
        assert r.json()["result"] == "accepted"
        assert len(recorder.triggers) == 1

    async def test_form_body_with_the_signature_of_the_inner_json_is_refused(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        inner = json.dumps(github_push())
        body = urlencode({"payload": inner}).encode()
        headers = github_headers(inner.encode())
        headers["content-type"] = "application/x-www-form-urlencoded"
        r = await client.post("/hooks/github", content=body, headers=headers)
        assert r.status_code == 401
        assert_nothing_enqueued(recorder)

    @pytest.mark.parametrize(
        "body", [b'{"ref": ', b"[]", b"", b"\xff\xfe\x00", b'{"after": "x"}'], ids=repr
    )
    async def test_malformed_json_is_a_400_with_a_json_error(
        self, client: httpx.AsyncClient, recorder: Recorder, body: bytes
    ) -> None:
        r = await client.post("/hooks/github", content=body, headers=github_headers(body))
        assert r.status_code == 400
        assert r.headers["content-type"] == "application/json"
        assert r.json()["result"] == "malformed"
        assert r.json()["detail"]
        assert_nothing_enqueued(recorder)
        assert recorder.deliveries.seen == set()
        assert_recorded(recorder, "github", "malformed", "d-1")

    async def test_missing_event_header_is_malformed(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        body = body_of(github_push())
        headers = github_headers(body)
        del headers["x-github-event"]
        r = await client.post("/hooks/github", content=body, headers=headers)
        assert r.status_code == 400
        assert_nothing_enqueued(recorder)


def padded_push(size: int) -> bytes:
    """A valid push body of exactly ``size`` bytes (JSON allows trailing whitespace)."""
    body = body_of(github_push())
    assert len(body) <= size
    return body + b" " * (size - len(body))


class CountingStream:
    """A request body yielded chunk by chunk, counting how much the server pulled."""

    def __init__(self, total: int, chunk: int = 1024) -> None:
        self.total = total
        self.chunk = b"x" * chunk
        self.sent = 0

    def chunks(self) -> Iterator[bytes]:
        while self.sent < self.total:
            self.sent += len(self.chunk)
            yield self.chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks():
            yield chunk


class TestBodyLimit:
    async def test_exactly_the_limit_is_read(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        body = padded_push(SMALL)
        r = await client.post("/hooks/github", content=body, headers=github_headers(body))
        assert r.status_code == 202
        assert len(recorder.triggers) == 1

    async def test_one_byte_over_by_content_length_is_413_unread(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        stream = CountingStream(SMALL + 1, chunk=1)
        headers = github_headers(b"")
        headers["content-length"] = str(SMALL + 1)
        r = await client.post("/hooks/github", content=stream, headers=headers)
        assert r.status_code == 413
        assert r.json()["result"] == "too_large"
        assert r.headers["connection"] == "close"
        assert stream.sent == 0  # refused on the header, before a byte of body
        assert_nothing_enqueued(recorder)
        assert_recorded(recorder, "github", "too_large", "d-1")

    async def test_a_signed_body_one_byte_over_is_413(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        body = padded_push(SMALL + 1)
        r = await client.post("/hooks/github", content=body, headers=github_headers(body))
        assert r.status_code == 413
        assert_nothing_enqueued(recorder)

    async def test_chunked_body_without_content_length_is_cut_off(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        stream = CountingStream(1000 * 1024)
        headers = github_headers(b"")
        r = await client.post("/hooks/github", content=stream, headers=headers)
        assert r.status_code == 413
        assert "content-length" not in r.request.headers
        assert r.request.headers["transfer-encoding"] == "chunked"
        assert SMALL < stream.sent <= SMALL + 2 * 1024  # stopped right after the limit
        assert_nothing_enqueued(recorder)

    async def test_the_real_default_cuts_a_stream_past_25_mb(self, recorder: Recorder) -> None:
        settings = HookSettings(webhook_secret=SECRET)
        assert settings.max_body == 25 * 1024 * 1024
        app = make_app(recorder, settings)
        stream = CountingStream(100 * 1024 * 1024, chunk=64 * 1024)  # one chunk, reused
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://hooks.test"
        ) as c:
            r = await c.post("/hooks/github", content=stream, headers=github_headers(b""))
            assert r.status_code == 413
            assert settings.max_body < stream.sent <= settings.max_body + 2 * 64 * 1024
            stream_cl = CountingStream(25 * 1024 * 1024 + 1)
            headers = github_headers(b"", delivery="d-2")
            headers["content-length"] = str(25 * 1024 * 1024 + 1)
            r = await c.post("/hooks/github", content=stream_cl, headers=headers)
            assert r.status_code == 413
            assert stream_cl.sent == 0
        assert_nothing_enqueued(recorder)

    async def test_a_bad_content_length_is_malformed(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        body = body_of(github_push())
        transport = client._transport  # send the raw header through the same app
        request = httpx.Request(
            "POST",
            "http://hooks.test/hooks/github",
            headers=[*github_headers(body).items(), ("content-length", "12abc")],
            content=body,
        )
        request.headers["content-length"] = "12abc"
        response = await transport.handle_async_request(request)  # type: ignore[attr-defined]
        await response.aread()
        assert response.status_code == 400
        assert_nothing_enqueued(recorder)


class TestNotConfigured:
    @pytest.mark.parametrize(
        ("path", "headers", "env"),
        [
            ("/hooks/github", {"x-hub-signature-256": "sha256=00"}, "RECONCILE_WEBHOOK_SECRET"),
            ("/hooks/gitea", {"x-gitea-signature": "00"}, "RECONCILE_WEBHOOK_SECRET"),
            ("/hooks/bitbucket", {"x-hub-signature": "sha256=00"}, "RECONCILE_WEBHOOK_SECRET"),
            ("/hooks/gitlab", {"x-gitlab-token": ""}, "RECONCILE_GITLAB_TOKEN"),
        ],
    )
    async def test_no_secret_is_503_and_nothing_enqueued(
        self, recorder: Recorder, path: str, headers: dict[str, str], env: str
    ) -> None:
        app = make_app(recorder, HookSettings(webhook_secret=b"", gitlab_token=""))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://hooks.test"
        ) as c:
            r = await c.post(path, content=body_of(github_push()), headers=headers)
        assert r.status_code == 503
        assert r.json()["result"] == "not_configured"
        assert env in r.json()["detail"]
        assert_nothing_enqueued(recorder)
        assert recorder.observed == [(path.rsplit("/", 1)[1], "not_configured")]

    async def test_a_gitlab_token_alone_leaves_the_signed_providers_off(
        self, recorder: Recorder
    ) -> None:
        app = make_app(recorder, HookSettings(gitlab_token=GITLAB_TOKEN))
        body = body_of(github_push())
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://hooks.test"
        ) as c:
            off = await c.post("/hooks/github", content=body, headers=github_headers(body))
            on = await c.post(
                "/hooks/gitlab", content=body_of(gitlab_push()), headers=gitlab_headers()
            )
        assert off.status_code == 503
        assert on.status_code == 202
        assert len(recorder.triggers) == 1


def gitlab_headers(
    token: str = GITLAB_TOKEN, event: str = "Push Hook", **extra: str
) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "x-gitlab-event": event,
        "x-gitlab-token": token,
        "x-gitlab-event-uuid": "13792a34-cac6-4fda-95a8-c58e00a3954e",
        "x-gitlab-instance": "https://gitlab.example.com",
        **extra,
    }


class TestGitLab:
    async def test_push_hook_with_the_token_is_accepted(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        r = await client.post(
            "/hooks/gitlab", content=body_of(gitlab_push()), headers=gitlab_headers()
        )
        assert r.status_code == 202
        assert r.json()["result"] == "accepted"
        assert len(recorder.triggers) == 1
        assert_recorded(recorder, "gitlab", "accepted", "13792a34-cac6-4fda-95a8-c58e00a3954e")

    @pytest.mark.parametrize("token", ["wrong", GITLAB_TOKEN + "x", GITLAB_TOKEN[:-1], None])
    async def test_wrong_or_missing_token(
        self, client: httpx.AsyncClient, recorder: Recorder, token: str | None
    ) -> None:
        headers = gitlab_headers()
        if token is None:
            del headers["x-gitlab-token"]
        else:
            headers["x-gitlab-token"] = token
        r = await client.post("/hooks/gitlab", content=body_of(gitlab_push()), headers=headers)
        assert r.status_code == 401
        assert_nothing_enqueued(recorder)

    @pytest.mark.parametrize(
        ("payload", "event", "reason"),
        [
            (gitlab_push("refs/tags/v1"), "Tag Push Hook", "tag 'v1' pushed"),
            (gitlab_push(after=ZERO), "Push Hook", "branch 'main' deleted"),
            (gitlab_push("refs/heads/feature/x"), "Push Hook", "not 'main'"),
            ({"object_kind": "merge_request"}, "Merge Request Hook", "is not a push"),
        ],
    )
    async def test_ignored(
        self,
        client: httpx.AsyncClient,
        recorder: Recorder,
        payload: dict[str, Any],
        event: str,
        reason: str,
    ) -> None:
        r = await client.post(
            "/hooks/gitlab", content=body_of(payload), headers=gitlab_headers(event=event)
        )
        assert r.status_code == 202
        assert r.json()["result"] == "ignored"
        assert reason in r.json()["detail"]
        assert_nothing_enqueued(recorder)

    async def test_idempotency_key_is_the_delivery_id(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        body = body_of(gitlab_push())
        retry = gitlab_headers(**{"idempotency-key": "908a6d9e"})
        first = await client.post("/hooks/gitlab", content=body, headers=retry)
        retry["x-gitlab-event-uuid"] = "another-uuid-on-the-retry"
        again = await client.post("/hooks/gitlab", content=body, headers=retry)
        assert (first.status_code, again.status_code) == (202, 200)
        assert again.json()["result"] == "duplicate"
        assert recorder.deliveries.seen == {("gitlab", "908a6d9e")}
        assert len(recorder.triggers) == 1

    async def test_event_uuid_dedupes_without_idempotency_key(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        body = body_of(gitlab_push())
        await client.post("/hooks/gitlab", content=body, headers=gitlab_headers())
        again = await client.post("/hooks/gitlab", content=body, headers=gitlab_headers())
        assert again.status_code == 200
        assert len(recorder.triggers) == 1


def bitbucket_headers(body: bytes, request_uuid: str = "req-1", **extra: str) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "x-event-key": "repo:push",
        "x-hub-signature": sign256(body),
        "x-request-uuid": request_uuid,
        "x-hook-uuid": "{the-same-for-every-delivery-of-this-webhook}",
        "x-attempt-number": "1",
        **extra,
    }


class TestBitbucket:
    async def test_push_is_accepted(self, client: httpx.AsyncClient, recorder: Recorder) -> None:
        body = body_of(bitbucket_push())
        r = await client.post("/hooks/bitbucket", content=body, headers=bitbucket_headers(body))
        assert r.status_code == 202
        assert r.json()["result"] == "accepted"
        assert_recorded(recorder, "bitbucket", "accepted", "req-1")
        assert len(recorder.triggers) == 1

    @pytest.mark.parametrize(
        "signature",
        [None, "sha1=" + "0" * 40, sign256(b"x"), sign256(b"x").removeprefix("sha256=")],
    )
    async def test_bad_signature(
        self, client: httpx.AsyncClient, recorder: Recorder, signature: str | None
    ) -> None:
        body = body_of(bitbucket_push())
        headers = bitbucket_headers(body)
        if signature is None:
            del headers["x-hub-signature"]
        else:
            headers["x-hub-signature"] = signature
        r = await client.post("/hooks/bitbucket", content=body, headers=headers)
        assert r.status_code == 401
        assert_nothing_enqueued(recorder)

    @pytest.mark.parametrize(
        ("change", "reason"),
        [
            (bitbucket_change(deleted=True), "branch 'main' deleted"),
            (bitbucket_change("tag", "v3"), "tag 'v3' pushed"),
            (bitbucket_change("branch", "dev"), "not 'main'"),
        ],
    )
    async def test_ignored(
        self, client: httpx.AsyncClient, recorder: Recorder, change: dict[str, Any], reason: str
    ) -> None:
        body = body_of(bitbucket_push(change))
        r = await client.post("/hooks/bitbucket", content=body, headers=bitbucket_headers(body))
        assert r.status_code == 202
        assert reason in r.json()["detail"]
        assert_nothing_enqueued(recorder)

    async def test_request_uuid_dedupes_but_hook_uuid_does_not(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        body = body_of(bitbucket_push())
        a = await client.post("/hooks/bitbucket", content=body, headers=bitbucket_headers(body))
        b = await client.post(
            "/hooks/bitbucket", content=body, headers=bitbucket_headers(body, "req-2")
        )
        c = await client.post(
            "/hooks/bitbucket", content=body, headers=bitbucket_headers(body, "req-2")
        )
        assert [a.status_code, b.status_code, c.status_code] == [202, 202, 200]
        assert len(recorder.triggers) == 2

    async def test_other_events_are_ignored(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        body = b'{"pullrequest": {}}'
        headers = bitbucket_headers(body, **{"x-event-key": "pullrequest:created"})
        r = await client.post("/hooks/bitbucket", content=body, headers=headers)
        assert r.status_code == 202
        assert r.json()["result"] == "ignored"
        assert_nothing_enqueued(recorder)


def gitea_headers(body: bytes, delivery: str = "g-1", **extra: str) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "x-gitea-event": "push",
        "x-gitea-event-type": "push",
        "x-gitea-delivery": delivery,
        "x-gitea-signature": gitea_sig(body),
        **extra,
    }


class TestGitea:
    async def test_push_is_accepted(self, client: httpx.AsyncClient, recorder: Recorder) -> None:
        body = body_of(gitea_push())
        r = await client.post("/hooks/gitea", content=body, headers=gitea_headers(body))
        assert r.status_code == 202
        assert r.json()["result"] == "accepted"
        assert_recorded(recorder, "gitea", "accepted", "g-1")

    async def test_forgejo_headers(self, client: httpx.AsyncClient, recorder: Recorder) -> None:
        body = body_of(gitea_push())
        headers = {
            "content-type": "application/json",
            "x-forgejo-event": "push",
            "x-forgejo-delivery": "f-1",
            "x-forgejo-signature": gitea_sig(body),
        }
        r = await client.post("/hooks/gitea", content=body, headers=headers)
        assert r.status_code == 202
        assert recorder.deliveries.seen == {("gitea", "f-1")}

    @pytest.mark.parametrize(
        "signature", [None, "sha256=" + gitea_sig(b"{}"), gitea_sig(b"{}"), "zz"]
    )
    async def test_bad_signature(
        self, client: httpx.AsyncClient, recorder: Recorder, signature: str | None
    ) -> None:
        body = body_of(gitea_push())
        headers = gitea_headers(body)
        if signature is None:
            del headers["x-gitea-signature"]
        else:
            headers["x-gitea-signature"] = signature
        r = await client.post("/hooks/gitea", content=body, headers=headers)
        assert r.status_code == 401
        assert_nothing_enqueued(recorder)

    async def test_prefixed_signature_of_the_right_body_is_still_refused(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        body = body_of(gitea_push())
        headers = gitea_headers(body, **{"x-gitea-signature": "sha256=" + gitea_sig(body)})
        r = await client.post("/hooks/gitea", content=body, headers=headers)
        assert r.status_code == 401

    @pytest.mark.parametrize(
        ("payload", "reason"),
        [
            (gitea_push(after=ZERO), "branch 'main' deleted"),
            (gitea_push("refs/heads/dev"), "not 'main'"),
            (gitea_push("refs/tags/v9"), "tag 'v9' pushed"),
        ],
    )
    async def test_ignored(
        self, client: httpx.AsyncClient, recorder: Recorder, payload: dict[str, Any], reason: str
    ) -> None:
        body = body_of(payload)
        r = await client.post("/hooks/gitea", content=body, headers=gitea_headers(body))
        assert r.status_code == 202
        assert reason in r.json()["detail"]
        assert_nothing_enqueued(recorder)

    async def test_replay(self, client: httpx.AsyncClient, recorder: Recorder) -> None:
        body = body_of(gitea_push())
        await client.post("/hooks/gitea", content=body, headers=gitea_headers(body))
        again = await client.post("/hooks/gitea", content=body, headers=gitea_headers(body))
        assert again.status_code == 200
        assert len(recorder.triggers) == 1


class TestDeployHook:
    async def test_known_token_triggers(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        r = await client.post(f"/hooks/deploy/{DEPLOY_TOKEN}")
        assert r.status_code == 202
        assert r.json()["result"] == "accepted"
        assert recorder.triggers == ["deploy hook 'nightly'"]
        assert recorder.deploy_hooks.asked == [DEPLOY_TOKEN]
        assert_recorded(recorder, "deploy", "accepted", None)

    async def test_body_is_optional_and_ignored(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        r = await client.post(f"/hooks/deploy/{DEPLOY_TOKEN}", content=b"not json at all")
        assert r.status_code == 202
        assert len(recorder.triggers) == 1

    async def test_every_unknown_token_gets_the_same_answer(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        answers = [
            await client.post(f"/hooks/deploy/{token}")
            for token in ("x", DEPLOY_TOKEN[:-1], DEPLOY_TOKEN + "0", "dht_" + "f" * 32)
        ]
        assert {a.status_code for a in answers} == {401}
        assert len({a.content for a in answers}) == 1
        assert_nothing_enqueued(recorder)
        for _, fields in recorder.events:
            assert all("dht_" not in str(v) for v in fields.values())

    async def test_the_token_is_never_recorded(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        r = await client.post(f"/hooks/deploy/{DEPLOY_TOKEN}")
        assert DEPLOY_TOKEN not in r.text
        assert DEPLOY_TOKEN not in repr(recorder.events)
        assert DEPLOY_TOKEN not in repr(recorder.triggers)

    async def test_too_large_body_is_refused_before_the_token_is_checked(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        r = await client.post(f"/hooks/deploy/{DEPLOY_TOKEN}", content=CountingStream(SMALL * 4))
        assert r.status_code == 413
        assert_nothing_enqueued(recorder)

    async def test_idempotency_key_replay(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        headers = {"idempotency-key": "run-42"}
        first = await client.post(f"/hooks/deploy/{DEPLOY_TOKEN}", headers=headers)
        again = await client.post(f"/hooks/deploy/{DEPLOY_TOKEN}", headers=headers)
        assert (first.status_code, again.status_code) == (202, 200)
        assert len(recorder.triggers) == 1


class TestRouting:
    async def test_only_post(self, client: httpx.AsyncClient, recorder: Recorder) -> None:
        r = await client.get("/hooks/github")
        assert r.status_code == 405
        assert recorder.events == []

    async def test_long_delivery_ids_are_refused(
        self, client: httpx.AsyncClient, recorder: Recorder
    ) -> None:
        body = body_of(github_push())
        r = await client.post(
            "/hooks/github", content=body, headers=github_headers(body, delivery="d" * 500)
        )
        assert r.status_code == 400
        assert_nothing_enqueued(recorder)
        assert recorder.deliveries.seen == set()
