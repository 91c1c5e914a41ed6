"""The pure webhook core: signatures per provider, payload decoding, push classification."""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import urlencode

import pytest

from reconciler.server.webhooks import (
    MalformedPayload,
    RefUpdate,
    bitbucket_updates,
    decide,
    decode_payload,
    github_updates,
    gitlab_updates,
    hmac_sha256_hex,
    same_token,
    verify_bitbucket,
    verify_gitea,
    verify_github,
)
from tests.server.hooks_fakes import (
    SECRET,
    SHA_B,
    ZERO,
    bitbucket_change,
    bitbucket_push,
    gitea_push,
    github_push,
    gitlab_push,
)

GITHUB_DOC_SIG = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


class TestGitHubSignature:
    def test_githubs_documented_vector_verifies(self) -> None:
        # docs.github.com "Validating webhook deliveries": the test values.
        assert verify_github(SECRET, b"Hello, World!", GITHUB_DOC_SIG)

    def test_uppercase_hex_is_the_same_digest(self) -> None:
        prefix, digest = GITHUB_DOC_SIG.split("=")
        assert verify_github(SECRET, b"Hello, World!", f"{prefix}={digest.upper()}")

    @pytest.mark.parametrize(
        ("body", "secret", "header"),
        [
            (b"Hello, World!!", SECRET, GITHUB_DOC_SIG),  # body changed
            (b"Hello, World!", b"another secret", GITHUB_DOC_SIG),  # secret changed
            (b"Hello, World!", SECRET, GITHUB_DOC_SIG.removeprefix("sha256=")),  # no prefix
            (b"Hello, World!", SECRET, GITHUB_DOC_SIG.replace("sha256", "sha1")),
            (b"Hello, World!", SECRET, GITHUB_DOC_SIG[:-1]),  # truncated
            (b"Hello, World!", SECRET, "sha256="),
            (b"Hello, World!", SECRET, "sha256=\u00e9\u00e9"),  # non-ASCII: no exception
            (b"Hello, World!", SECRET, None),
            (b"Hello, World!", b"", "sha256=" + hmac_sha256_hex(b"", b"Hello, World!")),
        ],
    )
    def test_anything_else_fails(self, body: bytes, secret: bytes, header: str | None) -> None:
        assert not verify_github(secret, body, header)

    def test_a_sha1_signature_never_verifies_even_when_correct(self) -> None:
        sha1 = "sha1=" + hmac.new(SECRET, b"x", hashlib.sha1).hexdigest()
        assert not verify_github(SECRET, b"x", sha1)
        assert not verify_bitbucket(SECRET, b"x", sha1)


class TestGiteaAndBitbucketSignatures:
    # Computed with `printf %s BODY | openssl sha256 -hex -mac HMAC -macopt key:SECRET`.
    BODY = b'{"ref":"refs/heads/main"}'
    HEX = "7804d460f7eadad206a6d4c5a760b15defa80add90a31069e5ab2df85f18bcfa"

    def test_computed_vector(self) -> None:
        assert hmac_sha256_hex(b"topsecret", self.BODY) == self.HEX

    def test_gitea_is_bare_hex(self) -> None:
        digest = hmac_sha256_hex(b"topsecret", self.BODY)
        assert verify_gitea(b"topsecret", self.BODY, self.HEX)
        assert not verify_gitea(b"topsecret", self.BODY, "sha256=" + digest)
        assert not verify_gitea(b"topsecret", self.BODY + b" ", digest)
        assert not verify_gitea(b"other", self.BODY, self.HEX)
        assert not verify_gitea(b"", self.BODY, hmac_sha256_hex(b"", self.BODY))

    def test_bitbucket_needs_the_sha256_prefix(self) -> None:
        digest = self.HEX
        assert verify_bitbucket(b"topsecret", self.BODY, "sha256=" + digest)
        assert not verify_bitbucket(b"topsecret", self.BODY, digest)
        assert not verify_bitbucket(b"wrong", self.BODY, "sha256=" + digest)


class TestToken:
    def test_equal_tokens_match_including_non_ascii(self) -> None:
        assert same_token("s3cret-\u00e9", "s3cret-\u00e9")

    @pytest.mark.parametrize("given", ["s3cret", "s3cret-x", "", None, "S3CRET-\u00e9"])
    def test_others_do_not(self, given: str | None) -> None:
        assert not same_token("s3cret-\u00e9", given)

    def test_an_empty_expected_token_never_matches(self) -> None:
        assert not same_token("", "")


class TestDecode:
    def test_json(self) -> None:
        assert decode_payload(b'{"a": 1}', "application/json") == {"a": 1}

    def test_json_without_content_type(self) -> None:
        assert decode_payload(b'{"a": 1}', None) == {"a": 1}

    def test_form_encoded_payload_field(self) -> None:
        payload = github_push()
        body = urlencode({"payload": json.dumps(payload)}).encode()
        decoded = decode_payload(body, "application/x-www-form-urlencoded; charset=utf-8")
        assert decoded == payload

    @pytest.mark.parametrize(
        ("body", "ctype", "message"),
        [
            (b"{not json", "application/json", "not valid JSON"),
            (b"\xff\xfe", "application/json", "not valid JSON"),
            (b"[1, 2]", "application/json", "not an object"),
            (b"", "application/json", "not valid JSON"),
            (b"other=1", "application/x-www-form-urlencoded", "no 'payload'"),
            (b"payload=%7Bnope", "application/x-www-form-urlencoded", "not valid JSON"),
        ],
    )
    def test_malformed(self, body: bytes, ctype: str, message: str) -> None:
        with pytest.raises(MalformedPayload, match=message):
            decode_payload(body, ctype)


class TestParse:
    def test_github_branch_push(self) -> None:
        assert github_updates(github_push()) == [RefUpdate("branch", "main", False, SHA_B)]

    def test_github_tag_push(self) -> None:
        assert github_updates(github_push("refs/tags/v1.2.0")) == [
            RefUpdate("tag", "v1.2.0", False, SHA_B)
        ]

    def test_github_deletion_by_flag_or_zero_after(self) -> None:
        deleted = RefUpdate("branch", "main", True, None)
        assert github_updates(github_push(after=ZERO)) == [deleted]
        assert github_updates({"ref": "refs/heads/main", "deleted": True, "after": SHA_B}) == [
            deleted
        ]

    def test_github_branch_names_with_slashes(self) -> None:
        assert github_updates(github_push("refs/heads/release/2026"))[0].name == "release/2026"

    def test_gitea(self) -> None:
        assert github_updates(gitea_push()) == [RefUpdate("branch", "main", False, SHA_B)]
        assert github_updates(gitea_push(after=ZERO))[0].deleted

    def test_gitlab(self) -> None:
        assert gitlab_updates(gitlab_push()) == [RefUpdate("branch", "main", False, SHA_B)]
        assert gitlab_updates(gitlab_push("refs/tags/v1"))[0].kind == "tag"
        assert gitlab_updates(gitlab_push(after=ZERO)) == [RefUpdate("branch", "main", True)]

    def test_bitbucket_changes(self) -> None:
        payload = bitbucket_push(
            bitbucket_change("tag", "v2"),
            bitbucket_change("branch", "dev", deleted=True),
            bitbucket_change("named_branch", "default"),
            bitbucket_change("branch", "main"),
        )
        assert bitbucket_updates(payload) == [
            RefUpdate("tag", "v2", False, SHA_B),
            RefUpdate("branch", "dev", True, None),
            RefUpdate("other", "default", False, SHA_B),
            RefUpdate("branch", "main", False, SHA_B),
        ]

    @pytest.mark.parametrize(
        "payload",
        [
            {},
            {"ref": 7},
            {"ref": ""},
        ],
    )
    def test_github_without_ref_is_malformed(self, payload: dict[str, object]) -> None:
        with pytest.raises(MalformedPayload, match="no 'ref'"):
            github_updates(payload)

    @pytest.mark.parametrize(
        "payload",
        [
            {},
            {"push": {}},
            {"push": {"changes": [1]}},
            {"push": {"changes": [{"new": None, "old": None}]}},
            {"push": {"changes": [{"new": {"type": "branch"}}]}},
        ],
    )
    def test_bitbucket_malformed(self, payload: dict[str, object]) -> None:
        with pytest.raises(MalformedPayload):
            bitbucket_updates(payload)


class TestDecide:
    def test_push_to_the_branch_enqueues_with_the_commit(self) -> None:
        decision = decide([RefUpdate("branch", "main", False, SHA_B)], "main")
        assert decision.enqueue
        assert decision.revision == SHA_B
        assert SHA_B[:12] in decision.reason

    @pytest.mark.parametrize(
        ("update", "reason"),
        [
            (RefUpdate("branch", "dev", False, SHA_B), "push to branch 'dev', not 'main'"),
            (RefUpdate("tag", "main", False, SHA_B), "tag 'main' pushed"),
            (RefUpdate("tag", "v1", True), "tag 'v1' deleted"),
            (RefUpdate("branch", "main", True), "branch 'main' deleted"),
            (RefUpdate("other", "refs/notes/x"), "is not a branch"),
        ],
    )
    def test_everything_else_is_ignored_with_a_reason(self, update: RefUpdate, reason: str) -> None:
        decision = decide([update], "main")
        assert not decision.enqueue
        assert reason in decision.reason

    def test_any_update_of_the_branch_among_several_enqueues(self) -> None:
        updates = [RefUpdate("tag", "v1", False, SHA_B), RefUpdate("branch", "prod", False, "c")]
        assert decide(updates, "prod").enqueue
        assert not decide(updates, "main").enqueue

    def test_no_updates(self) -> None:
        assert decide([], "main").reason == "push changed no refs"
