"""The repository's inner symlinks through the executor's bundle placement, again and
again: a redeploy over links already placed, a file that became a link and a link that
became a directory.  The bundle is made by the real ``build_bundle`` and unpacked by the
real ``extract_bundle``; Compose, the proxy and the watch are the fakes (the Docker run
of the same bundle is tests/agent/test_daemon_docker.py)."""

from __future__ import annotations

import os
import pathlib
import shutil

from agent.bundle import extract_bundle
from agent.compose import FakeComposeDriver
from agent.executor import Executor, ExecutorSettings
from reconciler.model.plan import Action
from reconciler.render import RenderedDeployment
from reconciler.server.worker import build_bundle
from tests.agent.agent_fakes import REPO, FakeProxy, FakeWatch, make_command, rendered_repo
from tests.conftest import RepoFactory


def _apply(
    executor: Executor, root: pathlib.Path, work: pathlib.Path, kind: str
) -> tuple[bool, str]:
    blog = next(d for d in rendered_repo(root) if d.name == "blog")
    work.mkdir(exist_ok=True)
    archive = work / "b.tar"
    build_bundle(root, blog.shipped_dirs(), archive)
    scratch = work / "repo"
    shutil.rmtree(scratch, ignore_errors=True)
    extract_bundle(archive, scratch, link_roots=blog.shipped_dirs())
    action: Action = make_command(blog, kind=kind).action
    want = RenderedDeployment.model_validate(blog.model_dump())
    result = executor.apply_action(action, want, scratch)
    return result.ok, result.message


def test_links_are_placed_and_replaced_on_every_deploy(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> None:
    root = make_repo(REPO)
    public = root / "deployments/blog/public"
    (public / "v1").mkdir()
    (public / "v1/page.html").write_text("one")
    (public / "current").symlink_to("v1")
    (public / "home.html").symlink_to("index.html")
    (root / "deployments/blog/top.html").symlink_to("public/index.html")
    state = tmp_path / "state"
    executor = Executor(
        state_dir=state,
        driver=FakeComposeDriver(),
        proxy=FakeProxy(),
        watch=FakeWatch(),
        settings=ExecutorSettings(settle_seconds=0),
        environ={},
    )
    blog_id = next(d for d in rendered_repo(root) if d.name == "blog").id
    app = state / "apps" / blog_id
    assert _apply(executor, root, tmp_path / "work", "install") == (True, "installed")
    assert os.readlink(app / "public/current") == "v1"
    assert (app / "top.html").is_symlink() and (app / "top.html").read_text().startswith("<h1>")

    ok, message = _apply(executor, root, tmp_path / "work", "repair")  # the same links again
    assert ok, message
    assert os.readlink(app / "public/current") == "v1"

    # A link moves, a file becomes a link, a link becomes a directory.
    (public / "v2").mkdir()
    (public / "v2/page.html").write_text("two")
    (public / "current").unlink()
    (public / "current").symlink_to("v2")
    (public / "index.html").unlink()
    (public / "index.html").symlink_to("v2/page.html")
    (public / "home.html").unlink()
    (public / "home.html").mkdir()
    (public / "home.html/x").write_text("x")
    ok, message = _apply(executor, root, tmp_path / "work", "update")
    assert ok, message
    assert (app / "public/current/page.html").read_text() == "two"
    assert (app / "public/index.html").is_symlink()
    assert (app / "public/v2/page.html").read_text() == "two"  # not written through a link
    assert (app / "public/home.html").is_dir() and not (app / "public/home.html").is_symlink()
    assert (app / "public/v1/page.html").read_text() == "one"
