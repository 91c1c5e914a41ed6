"""The dashboard in process: a real control plane (git source, SQLite store, worker) behind
FastAPI's TestClient.  Login, sessions, CSRF, bearer access for scripts, what the page
shows for a deployment in flight and for a failed one, escaping, and the read-only token
on the status API.  The SSE stream on a real socket is in ``test_ui_stream.py``; the
browser on a real Docker host in ``tests/e2e/test_dashboard_browser_docker.py``."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator

import pytest
from conftest import ADMIN, Remote, examples_for, make_config
from fastapi.testclient import TestClient

from reconciler.server.app import ControlPlane, build_control_plane
from reconciler.server.config import ServerSecrets
from reconciler.server.ui.auth import CSRF_COOKIE, SESSION_COOKIE

READONLY = "ro-" + "7" * 20
BEARER = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def plane(remote: Remote, tmp_path: pathlib.Path) -> Iterator[ControlPlane]:
    p = build_control_plane(
        make_config(remote, tmp_path / "data"),
        ServerSecrets(admin_token=ADMIN, readonly_token=READONLY),
    )
    p.worker.start()
    assert p.worker.wait_idle(60)
    yield p
    p.worker.stop()
    p.store.close()


@pytest.fixture
def client(plane: ControlPlane) -> Iterator[TestClient]:
    with TestClient(plane.app, follow_redirects=False) as c:
        yield c


def login(client: TestClient, token: str = ADMIN) -> None:
    form = client.get("/ui/login")
    assert form.status_code == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    r = client.post("/ui/login", data={"token": token, "csrf": csrf[1]})
    assert r.status_code == 303 and r.headers["location"] == "/ui", r.text


def agent(client: TestClient, plane: ControlPlane, memory_mb: int | None = 3072) -> dict[str, str]:
    token = plane.store.create_bootstrap_token()
    boot = client.post("/v1/agent/bootstrap", json={"token": token, "hostname": "web-1"}).json()
    headers = {"X-Agent-Id": boot["agent_id"], "X-Agent-Secret": boot["secret"]}
    body = {"state": {"agent": boot["agent_id"]}, "total_memory_mb": memory_mb, "version": "9.9"}
    assert client.post("/v1/agent/report", json=body, headers=headers).status_code == 200
    assert plane.worker.wait_idle(60)
    return headers


def deploy(plane: ControlPlane, remote: Remote, agent_id: str) -> None:
    remote.commit(examples_for(agent_id))
    plane.worker.trigger("test: push")
    assert plane.worker.wait_idle(60)


def row(html: str, name: str) -> str:
    found = re.search(rf'<tr id="dpl-[^"]+" data-name="{name}">(.*?)</tr>', html, re.S)
    assert found is not None, html
    return found[1]


class TestAccess:
    def test_without_a_session_the_page_redirects_to_the_login(self, client: TestClient) -> None:
        r = client.get("/ui")
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        for path in ("/ui/live", "/ui/stream"):
            r = client.get(path)
            assert r.status_code == 401 and "sign in" in r.json()["error"]

    def test_a_wrong_token_is_refused_and_makes_no_session(self, client: TestClient) -> None:
        form = client.get("/ui/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        r = client.post("/ui/login", data={"token": "nope", "csrf": csrf[1]})
        assert r.status_code == 401 and "Wrong token." in r.text
        assert SESSION_COOKIE not in r.cookies
        assert client.get("/ui").status_code == 303

    def test_login_without_the_csrf_cookie_is_refused(self, client: TestClient) -> None:
        # A cross-site form post carries the token but not our SameSite=Strict cookie.
        r = client.post("/ui/login", data={"token": ADMIN, "csrf": "forged"})
        assert r.status_code == 400 and "expired" in r.text
        assert SESSION_COOKIE not in r.cookies
        assert client.get("/ui").status_code == 303

    def test_the_session_cookie_is_httponly_strict_and_secure_behind_https(
        self, client: TestClient
    ) -> None:
        form = client.get("/ui/login", headers={"X-Forwarded-Proto": "https"})
        assert "secure" in form.headers["set-cookie"].lower()
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        client.cookies.set(CSRF_COOKIE, form.cookies[CSRF_COOKIE], path="/ui")
        r = client.post(
            "/ui/login",
            data={"token": ADMIN, "csrf": csrf[1]},
            headers={"X-Forwarded-Proto": "https"},
        )
        assert r.status_code == 303
        cookie = next(
            c for c in r.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE + "=")
        ).lower()
        for part in ("httponly", "samesite=strict", "secure", "path=/ui"):
            assert part in cookie, cookie

    def test_plain_http_cookies_are_not_marked_secure(self, client: TestClient) -> None:
        assert "secure" not in client.get("/ui/login").headers["set-cookie"].lower()

    def test_login_then_logout_needs_the_sessions_csrf_token(self, client: TestClient) -> None:
        login(client)
        page = client.get("/ui")
        assert page.status_code == 200 and "Signed in (admin)" in page.text
        assert client.post("/ui/logout", data={"csrf": "wrong"}).status_code == 400
        assert client.get("/ui").status_code == 200  # still signed in
        csrf = re.search(r'action="/ui/logout".*?name="csrf" value="([^"]+)"', page.text, re.S)
        assert csrf is not None
        r = client.post("/ui/logout", data={"csrf": csrf[1]})
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        assert client.get("/ui").status_code == 303

    def test_a_script_reads_with_a_bearer_header(self, client: TestClient) -> None:
        for token, role in ((ADMIN, "admin"), (READONLY, "read-only")):
            r = client.get("/ui", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200 and f"Signed in ({role})" in r.text
            assert 'action="/ui/logout"' not in r.text  # no session to sign out of
        assert client.get("/ui/live", headers={"Authorization": "Bearer wrong"}).status_code == 401

    def test_the_read_only_token_logs_in_as_read_only(self, client: TestClient) -> None:
        login(client, READONLY)
        assert "Signed in (read-only)" in client.get("/ui").text

    def test_an_oversized_login_form_is_refused(self, client: TestClient) -> None:
        client.get("/ui/login")
        r = client.post("/ui/login", content=b"token=" + b"a" * 20000)
        assert r.status_code == 400 and SESSION_COOKIE not in r.cookies


class TestReadOnlyToken:
    def test_it_reads_the_status_api_and_changes_nothing(
        self, client: TestClient, plane: ControlPlane
    ) -> None:
        ro = {"Authorization": f"Bearer {READONLY}"}
        for path in ("/v1/deployments", "/v1/agents", "/v1/events"):
            assert client.get(path, headers=ro).status_code == 200, path
        runs = plane.worker.runs
        tokens_before = len(plane.store.events(audit=None, limit=1000))
        for path in ("/v1/reconcile", "/v1/agent-tokens"):
            r = client.post(path, headers=ro)
            assert r.status_code == 403 and "RECONCILE_ADMIN_TOKEN" in r.json()["error"]
        assert plane.worker.wait_idle(10)
        assert plane.worker.runs == runs
        assert len(plane.store.events(audit=None, limit=1000)) == tokens_before
        assert client.post("/v1/agent-tokens", headers=BEARER).status_code == 201

    def test_it_comes_from_the_environment_or_its_file(self, tmp_path: pathlib.Path) -> None:
        (tmp_path / "ro").write_text("from-file\n")
        env = {"RECONCILE_READONLY_TOKEN_FILE": str(tmp_path / "ro")}
        assert ServerSecrets.from_env(env).readonly_token == "from-file"
        assert ServerSecrets.from_env({}).readonly_token is None


class TestPage:
    def test_it_shows_agents_with_capacity_and_deployments_installing(
        self, client: TestClient, plane: ControlPlane, remote: Remote
    ) -> None:
        headers = agent(client, plane)
        deploy(plane, remote, headers["X-Agent-Id"])
        login(client)
        html = client.get("/ui").text
        assert headers["X-Agent-Id"] in html and "web-1" in html
        assert ">online<" in html and "3.0 GiB" in html and "9.9" in html
        hello = row(html, "hello")
        assert 'data-status="installing"' in hello
        assert "http://hello.localhost:18080" in hello
        spec = plane.store.deployments()[0].spec_hash
        assert spec is not None and spec[:12] in html
        revision = plane.store.last_plan()
        assert revision is not None and revision[1] is not None
        assert revision[1][:12] in hello  # the command's commit
        assert "<caption" in html and 'scope="col"' in html and 'class="skip"' in html
        assert "Last plan" in html and ">install<" in html
        events = re.search(r"<section id=\"events\".*?</section>", html, re.S)
        assert (
            events is not None
            and ">agent.online<" in events[0]
            and ">reconcile.started<" in events[0]
        )

    def test_a_failed_deploy_shows_its_error_and_hint_escaped(
        self, client: TestClient, plane: ControlPlane, remote: Remote
    ) -> None:
        headers = agent(client, plane)
        deploy(plane, remote, headers["X-Agent-Id"])
        batch = client.get("/v1/agent/commands", headers=headers).json()["commands"]
        cmd = next(c for c in batch if c["action"]["deployment"] == "api")
        message = (
            "pull: <script>alert(1)</script> pull access denied for caddy "
            "(hint: the image is not available locally and no registry answered)"
        )
        r = client.post(
            f"/v1/agent/commands/{cmd['id']}/result",
            json={"ok": False, "message": message},
            headers=headers,
        )
        assert r.status_code == 200
        html = client.get("/ui", headers=BEARER).text
        api = row(html, "api")
        assert 'data-status="failed"' in api
        assert "<script>alert(1)</script>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in api
        assert (
            "<span data-hint>the image is not available locally and no registry answered</span>"
            in api
        )
        assert "(hint:" not in api  # the hint is shown once, apart from the message
        # the live fragment the script swaps in says the same
        assert 'data-status="failed"' in row(client.get("/ui/live", headers=BEARER).text, "api")

    def test_an_agent_without_capacity_says_not_reported(
        self, client: TestClient, plane: ControlPlane
    ) -> None:
        agent(client, plane, memory_mb=None)
        assert "not reported" in client.get("/ui", headers=BEARER).text

    def test_every_asset_is_served_here_and_the_page_forbids_others(
        self, client: TestClient
    ) -> None:
        html = client.get("/ui", headers=BEARER)
        csp = html.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assets = re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', html.text)
        assert sorted(assets) == ["/ui/static/dashboard.css", "/ui/static/dashboard.js"]
        assert not re.search(r'(?:src|href)="(?:https?:)?//', html.text)
        for asset in assets:
            r = client.get(asset)
            assert r.status_code == 200 and len(r.content) > 100
        assert client.get("/ui/static/../routes.py").status_code == 404

    def test_the_page_reads_without_javascript(self, client: TestClient) -> None:
        html = client.get("/ui", headers=BEARER).text
        # every section is in the HTML itself, and a plain link reloads it
        for section in ("deployments", "agents", "plan", "events"):
            assert f'<section id="{section}"' in html
        assert '<a href="/ui" id="reload">Reload</a>' in html
