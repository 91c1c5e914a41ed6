"""The dashboard in a real browser: Debian's headless ``chromium`` driven by Playwright,
against a real ``reconcile serve`` and ``reconcile-agent`` on the real Docker Engine,
with the desired state pushed to a local bare repository.

The page is opened once and never reloaded after the login: what changes on it after a
push comes over the live feed (``/ui/stream``).  Screenshots go to the test's temporary
directory (printed), and to ``$RECONCILE_SCREENSHOTS`` when that names a directory.
The tests share one cluster and one page and run in file order.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.agent.docker_helpers import docker_client
from tests.e2e.cluster import ADMIN_TOKEN, Cluster, wait_for

pytestmark = pytest.mark.docker

CHROMIUM = os.environ.get("RECONCILE_CHROMIUM", "/usr/bin/chromium")
#: An upper bound, not a figure: on a Docker host shared with other clusters (the test
#: machine) the one host proxy can be replaced under a deploy, which then fails its probe
#: and is repaired after the server's backoff.  A quiet host deploys in seconds.
DEPLOY_TIMEOUT_MS = 300_000
#: The agent's settle window in these tests: long enough that "installing" is on screen
#: for several of the feed's one-second looks, so the test sees it rather than races it.
SETTLE_SECONDS = 6.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    docker_client().close()  # fails (not skips) without an engine
    c = Cluster(tmp_path_factory.mktemp("ui-e2e"))
    try:
        c.start_server()
        c.start_agent(token=c.agent_token(), settle=SETTLE_SECONDS)
        yield c
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.teardown()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def page(cluster: Cluster) -> Iterator[Any]:
    if not pathlib.Path(CHROMIUM).is_file():
        pytest.fail(
            f"no browser at {CHROMIUM}: `bash scripts/setup.sh` installs Debian's chromium "
            "(or set RECONCILE_CHROMIUM to another Chromium binary)",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM)
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        yield context.new_page()
        context.close()
        browser.close()


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[None]:
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(cluster.dump_logs())


def snap(page: Any, shots: pathlib.Path, name: str, *, full_page: bool = True) -> pathlib.Path:
    path = shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    print(f"screenshot: {path}")
    extra = os.environ.get("RECONCILE_SCREENSHOTS")
    if extra and pathlib.Path(extra).is_dir():
        shutil.copy(path, pathlib.Path(extra) / path.name)
    return path


def status_of(page: Any, name: str) -> Any:
    return page.locator(f'#deployments tr[data-name="{name}"] [data-status]')


def test_ui_without_a_session_redirects_to_the_login(
    page: Any, cluster: Cluster, shots: pathlib.Path
) -> None:
    from playwright.sync_api import expect

    page.goto(cluster.url + "/ui")
    expect(page).to_have_url(cluster.url + "/ui/login")
    expect(page.get_by_role("heading", name="Sign in to the dashboard")).to_be_visible()
    snap(page, shots, "login")


def test_log_in_with_the_keyboard(page: Any, cluster: Cluster) -> None:
    from playwright.sync_api import expect

    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.get_by_label("Token").fill("not the token")
    page.get_by_label("Token").press("Enter")
    expect(page.get_by_role("alert")).to_have_text("Wrong token.")
    page.get_by_label("Token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(cluster.url + "/ui")
    expect(page.get_by_role("heading", name="Dashboard", exact=True)).to_be_visible()
    agents = page.locator("#agents")
    expect(agents.get_by_role("row", name=cluster.agent_id)).to_contain_text("online")
    expect(page.locator("#live-status")).to_have_text("Live: following changes.")


def test_a_push_goes_from_installing_to_running_live(
    page: Any, cluster: Cluster, shots: pathlib.Path
) -> None:
    from playwright.sync_api import expect

    url = page.url
    cluster.hello_repo("from-the-dashboard-test")
    sha = cluster.commit_and_push("hello from the browser test")
    assert cluster.github_push(sha).status_code == 202
    status = status_of(page, "hello")
    expect(status).to_have_attribute("data-status", "installing", timeout=DEPLOY_TIMEOUT_MS)
    snap(page, shots, "installing")
    expect(status).to_have_attribute("data-status", "running", timeout=DEPLOY_TIMEOUT_MS)
    assert page.url == url  # no reload: the live feed redrew the section
    row = page.locator('#deployments tr[data-name="hello"]')
    expect(row).to_contain_text(sha[:12])  # the commit it runs
    expect(
        row.get_by_role("link", name=f"http://{cluster.domain}:{cluster.proxy_port}")
    ).to_be_visible()
    expect(row).to_contain_text("healthy")
    # through the proxy too (waited for: on a shared daemon the agent may be re-creating it)
    wait_for(lambda: cluster.serves("from-the-dashboard-test"), 60, "hello through the proxy")
    plan = page.locator("#plan")
    expect(plan).to_contain_text(sha[:12])
    # install, or repair when the first try failed because something else on a shared
    # daemon removed the proxy meanwhile (the agent then repairs it)
    expect(plan.get_by_role("row", name="hello")).to_contain_text(re.compile("install|repair"))


def test_a_failed_deploy_shows_its_hint(page: Any, cluster: Cluster, shots: pathlib.Path) -> None:
    from playwright.sync_api import expect

    cluster.write(
        "deployments/broken.yaml",
        "name: broken\nagent: host1\n"
        f"image: reconciler-missing-{cluster.namespace}:1\ntarget_port: 80\n",
    )
    sha = cluster.commit_and_push("an image no registry has")
    assert cluster.github_push(sha).status_code == 202
    status = status_of(page, "broken")
    expect(status).to_have_attribute("data-status", "failed", timeout=DEPLOY_TIMEOUT_MS)
    row = page.locator('#deployments tr[data-name="broken"]')
    # the hint the agent's classifier gives a missing image (agent.failures)
    expect(row.locator("[data-hint]")).to_contain_text("only local images run")
    expect(row.locator("td.err")).to_contain_text("image not found")
    expect(status_of(page, "hello")).to_have_attribute("data-status", "running")
    events = page.locator("#events")
    expect(events).to_contain_text("command.result")
    snap(page, shots, "dashboard-full")
    snap(page, shots, "dashboard", full_page=False)  # the one in the README (docs/)
