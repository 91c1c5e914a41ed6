"""A build context travels to an agent as the build would send it: what its
``.dockerignore`` leaves out is neither shipped in the command's bundle nor part of the
spec hash.  Real files and tars in tmp_path."""

from __future__ import annotations

import pathlib
import tarfile

from reconciler.load.repo import MAX_BUILD_CONTEXT_BYTES, load_repository
from reconciler.server.worker import build_bundle
from tests.conftest import RepoFactory

SITE = {
    "deployments/site/deployment.yaml": "name: site\nbuild: {context: .}\n",
    "deployments/site/Dockerfile": "FROM busybox:1.36\nCOPY . /www\n",
    "deployments/site/.dockerignore": "Dockerfile\n*.log\ncache\n!cache/keep.txt\n",
    "deployments/site/index.html": "hi",
    "deployments/site/debug.log": "noise",
    "deployments/site/cache/drop.txt": "x",
    "deployments/site/cache/keep.txt": "y",
}


def test_bundle_ships_only_what_the_build_sends(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> None:
    root = make_repo(SITE)
    with open(root / "deployments/site/huge.log", "wb") as fh:
        fh.truncate(MAX_BUILD_CONTEXT_BYTES * 2)  # sparse; ignored, so the repo is valid
    assert load_repository(root).problems == ()
    dest = tmp_path / "cmd.tar"
    build_bundle(root, ["deployments/site"], dest, contexts={"deployments/site": "Dockerfile"})
    with tarfile.open(dest) as tar:
        files = {m.name for m in tar.getmembers() if m.isfile()}
    assert files == {
        "deployments/site/deployment.yaml",
        "deployments/site/Dockerfile",  # always sent, even when ignored
        "deployments/site/.dockerignore",
        "deployments/site/index.html",
        "deployments/site/cache/keep.txt",
    }
    assert dest.stat().st_size < 64 * 1024


def test_editing_an_ignored_file_is_no_update(make_repo: RepoFactory) -> None:
    root = make_repo(SITE)

    def digest() -> str | None:
        (dep,) = load_repository(root).deployments
        return dep.bundle_digest

    first = digest()
    (root / "deployments/site/debug.log").write_text("more noise")
    (root / "deployments/site/cache/drop.txt").write_text("changed")
    assert digest() == first
    (root / "deployments/site/cache/keep.txt").write_text("changed")
    assert digest() != first


def test_a_link_to_an_ignored_file_is_left_out_and_the_bundle_unpacks(
    make_repo: RepoFactory, tmp_path: pathlib.Path
) -> None:
    """A link kept by .dockerignore whose target is ignored would reach the agent
    dangling, and agents refuse dangling links: it is left out, as its target is."""
    from agent.bundle import extract_bundle

    root = make_repo(SITE)
    site = root / "deployments/site"
    (site / "latest.log").symlink_to("debug.log")  # ignored itself (*.log)
    (site / "drop-link.txt").symlink_to("cache/drop.txt")  # kept, its target ignored
    (site / "keep-link.txt").symlink_to("cache/keep.txt")  # kept, its target kept
    dest = tmp_path / "cmd.tar"
    build_bundle(root, ["deployments/site"], dest, contexts={"deployments/site": "Dockerfile"})
    with tarfile.open(dest) as tar:
        links = {m.name: m.linkname for m in tar.getmembers() if m.issym()}
    assert links == {"deployments/site/keep-link.txt": "cache/keep.txt"}
    out = tmp_path / "out"
    out.mkdir()
    extract_bundle(dest, out, link_roots=["deployments/site"])
    assert (out / "deployments/site/keep-link.txt").read_text() == "y"
