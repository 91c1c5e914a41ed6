"""The build context's size follows ``.dockerignore`` as ``docker build`` does, and counts
the bytes of the tar stream a build sends.

Real files in tmp_path (large ones sparse: they cost no disk); the Docker test builds the
same context with the real ``docker build`` and compares what reached the image.
"""

from __future__ import annotations

import io
import os
import pathlib
import secrets
import subprocess
import tarfile

import pytest

from reconciler.load.buildcontext import context_size, ignore_patterns
from reconciler.load.repo import MAX_BUILD_CONTEXT_BYTES, load_repository
from tests.agent.docker_helpers import IMAGE, docker_client
from tests.conftest import RepoFactory

BIG = MAX_BUILD_CONTEXT_BYTES + 1


def sparse(path: pathlib.Path, size: int = BIG) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(size)


def site(make_repo: RepoFactory, ignore: str | None = None, **extra: str) -> pathlib.Path:
    files = {
        "deployments/site/deployment.yaml": "name: site\nbuild: {context: .}\n",
        "deployments/site/Dockerfile": "FROM busybox:1.36\n",
    }
    if ignore is not None:
        files["deployments/site/.dockerignore"] = ignore
    files.update({f"deployments/site/{k}": v for k, v in extra.items()})
    return make_repo(files)


def size_rules(root: pathlib.Path) -> list[str]:
    return [p.rule for p in load_repository(root).problems]


def test_ignore_file_parsing() -> None:
    text = "\ufeff# a comment\n\n  *.bin  \n!keep.bin\nnot#comment\n   # indented comment\n"
    assert ignore_patterns(text) == ["*.bin", "!keep.bin", "not#comment"]


def test_big_file_ignored_is_not_counted(make_repo: RepoFactory) -> None:
    root = site(make_repo, "*.bin\n")
    sparse(root / "deployments/site/big.bin")
    assert size_rules(root) == []


def test_big_file_not_ignored_is_an_error_naming_it(make_repo: RepoFactory) -> None:
    root = site(make_repo, "*.iso\n")
    sparse(root / "deployments/site/big.bin")
    (problem,) = load_repository(root).problems
    assert problem.rule == "build-context-size"
    assert ".dockerignore applied" in problem.message
    assert "big.bin (100 MB)" in problem.message
    assert problem.fix is not None and ".dockerignore" in problem.fix


def test_exception_brings_a_file_back(make_repo: RepoFactory) -> None:
    root = site(make_repo, "data\n!data/keep.bin\n")
    sparse(root / "deployments/site/data/drop.bin")
    assert size_rules(root) == []
    sparse(root / "deployments/site/data/keep.bin")
    assert size_rules(root) == ["build-context-size"]


def test_double_star_matches_at_any_depth(make_repo: RepoFactory) -> None:
    root = site(make_repo, "**/*.iso\n")
    sparse(root / "deployments/site/a/b/c/disk.iso")
    assert size_rules(root) == []
    # without **, a pattern is anchored at the context's root, as in docker build
    (root / "deployments/site/.dockerignore").write_text("*.iso\n")
    assert size_rules(root) == ["build-context-size"]


def test_dockerfile_own_ignore_file_wins(make_repo: RepoFactory) -> None:
    root = site(make_repo, "*.bin\n")
    (root / "deployments/site/Dockerfile.dockerignore").write_text("*.iso\n")
    sparse(root / "deployments/site/big.bin")
    (problem,) = load_repository(root).problems
    assert "Dockerfile.dockerignore applied" in problem.message


def test_counts_the_tar_stream_bytes(tmp_path: pathlib.Path) -> None:
    """Headers and block padding are counted: equal to a real tar of the same entries."""
    ctx = tmp_path / "ctx"
    (ctx / "sub").mkdir(parents=True)
    (ctx / "Dockerfile").write_text("FROM busybox:1.36\n")
    (ctx / ".dockerignore").write_text("skip*\n")
    (ctx / "one").write_bytes(b"x")
    (ctx / "block").write_bytes(b"y" * 512)
    (ctx / "sub" / "more").write_bytes(b"z" * 513)
    (ctx / "skipped").write_bytes(b"s" * 5000)
    os.symlink("one", ctx / "link")
    counted = context_size(ctx)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for rel in [".dockerignore", "Dockerfile", "block", "link", "one", "sub", "sub/more"]:
            tar.add(ctx / rel, arcname=rel, recursive=False)
        stream = tar.offset + 2 * tarfile.BLOCKSIZE  # before tarfile's record padding
    assert counted.total == stream
    assert counted.largest[0] == ("sub/more", 512 + 1024)


def test_stops_counting_past_the_limit(tmp_path: pathlib.Path) -> None:
    for i in range(3):
        sparse(tmp_path / f"f{i}", 1000)
    assert context_size(tmp_path, stop_above=1500).total < context_size(tmp_path).total


@pytest.mark.docker
def test_same_files_as_a_real_docker_build(tmp_path: pathlib.Path) -> None:
    """``docker build`` (the Docker CLI's own matcher) copies exactly the files counted."""
    client = docker_client()
    ctx = tmp_path / "ctx"
    (ctx / "data" / "deep").mkdir(parents=True)
    (ctx / "Dockerfile").write_text(f"FROM {IMAGE}\nCOPY . /ctx/\n")
    (ctx / ".dockerignore").write_text(
        "# keep the Dockerfile and .dockerignore out of the image\n"
        "Dockerfile\n.dockerignore\n"
        "data\n!data/keep.txt\n**/*.log\nnotes?.md\n/top.tmp\n"
    )
    for rel in [
        "app.py",
        "data/drop.txt",
        "data/keep.txt",
        "data/deep/x.txt",
        "trace.log",
        "lib/debug.log",
        "lib/code.py",
        "notes1.md",
        "notes10.md",
        "top.tmp",
        "lib/top.tmp",
    ]:
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        (ctx / rel).write_text(rel)
    counted = context_size(ctx)
    tag = f"reconciler-test-ctx-{secrets.token_hex(4)}:t"
    try:
        subprocess.run(
            ["docker", "build", "-q", "-t", tag, str(ctx)],
            check=True,
            capture_output=True,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )
        out = client.containers.run(tag, ["find", "/ctx", "-type", "f"], remove=True)
    finally:
        client.images.remove(tag, force=True)
    in_image = {line.removeprefix("/ctx/") for line in out.decode().split()}
    assert in_image == {
        "app.py",
        "data/keep.txt",
        "lib/code.py",
        "notes10.md",
        "lib/top.tmp",
    }
    # counted: those files, plus the Dockerfile and .dockerignore, which are always sent
    files = {rel for rel in counted.sent if (ctx / rel).is_file()}
    assert files == in_image | {"Dockerfile", ".dockerignore"}
