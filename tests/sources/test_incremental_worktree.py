"""A new commit's worktree is the previous one plus the diff (reconciler.load.sources._derive),
and is then exactly the tree a full ``git archive`` extraction gives: compared entry by entry
(kind, mode, bytes, link target) after every kind of change, against real git."""

from __future__ import annotations

import os
import pathlib
import random
import stat

from reconciler.load.sources import open_source
from tests.sources.test_git_source import Remote, git


def snapshot(root: pathlib.Path) -> dict[str, tuple[str, int, bytes]]:
    out: dict[str, tuple[str, int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = pathlib.Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(path).encode())
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), b"")
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return out


def full_tree(url: str, tmp: pathlib.Path, n: int) -> dict[str, tuple[str, int, bytes]]:
    """The same commit through a cache of its own: no previous worktree, a full extraction."""
    return snapshot(open_source(url, cache_dir=tmp / f"fresh-{n}").path)


def change(remote: Remote, rng: random.Random, step: int) -> None:
    work = remote.work
    files = sorted(p for p in work.rglob("*") if p.is_file() and ".git" not in p.parts)
    op = step % 6
    if op == 0:  # new files, one in a new nested directory
        (work / "deployments" / f"new{step}.yaml").write_text(f"name: new{step}\n")
        nested = work / "deployments" / f"group{step}" / "deep"
        nested.mkdir(parents=True)
        (nested / "x.yaml").write_text("x: 1\n")
    elif op == 1:  # some files changed, one becomes executable
        for path in rng.sample(files, min(3, len(files))):
            path.write_text(path.read_text() + f"# {step}\n")
        files[0].chmod(0o755)
    elif op == 2:  # a directory removed entirely
        dirs = sorted({p.parent for p in files if p.parent.name.startswith("deep")})
        for d in dirs[:1]:
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
    elif op == 3:  # a file becomes a directory
        target = work / "deployments" / "shape"
        if target.is_file():
            target.unlink()
        target.mkdir(exist_ok=True)
        (target / "inner.yaml").write_text("inner: 1\n")
    elif op == 4:  # and the directory becomes a file again
        target = work / "deployments" / "shape"
        if target.is_dir():
            for f in target.iterdir():
                f.unlink()
            target.rmdir()
        target.write_text("a file again\n")
    else:  # executable bit off, a file deleted
        files[0].chmod(0o644)
        files[-1].unlink()
    git(work, "add", "-A")
    git(work, "commit", "--quiet", "--allow-empty", "-m", f"step {step}")
    remote.push("main")


def test_each_derived_worktree_equals_a_full_extraction(tmp_path: pathlib.Path) -> None:
    remote = Remote(tmp_path)
    remote.commit({f"deployments/app{i:03d}.yaml": f"name: app{i:03d}\n" for i in range(40)})
    remote.commit({"reconcile.yaml": "namespace: demo\n"})
    remote.push("main")
    cache = tmp_path / "cache"
    open_source(remote.url, cache_dir=cache)
    rng = random.Random(7)
    for step in range(12):
        change(remote, rng, step)
        got = open_source(remote.url, cache_dir=cache)
        assert got.revision == remote.head()
        assert snapshot(got.path) == full_tree(remote.url, tmp_path, step), f"step {step}"


def test_unchanged_files_are_shared_and_changed_ones_never_written_through(
    tmp_path: pathlib.Path,
) -> None:
    remote = Remote(tmp_path)
    remote.commit({f"deployments/app{i}.yaml": f"name: app{i}\n" for i in range(10)})
    remote.push("main")
    cache = tmp_path / "cache"
    first = open_source(remote.url, cache_dir=cache).path
    remote.commit({"deployments/app3.yaml": "name: app3\nimage: changed\n"})
    remote.push("main")
    second = open_source(remote.url, cache_dir=cache).path
    assert second != first
    # Derived: the unchanged file is the same inode in both trees ...
    assert (second / "deployments/app1.yaml").stat().st_ino == (
        first / "deployments/app1.yaml"
    ).stat().st_ino
    # ... and the changed one is a new file; the older worktree still has its old bytes.
    assert (second / "deployments/app3.yaml").read_text() == "name: app3\nimage: changed\n"
    assert (first / "deployments/app3.yaml").read_text() == "name: app3\n"
    assert (second / "deployments/app3.yaml").stat().st_nlink == 1


def test_gitattributes_and_symlinks_take_the_full_extraction(tmp_path: pathlib.Path) -> None:
    remote = Remote(tmp_path)
    remote.commit({f"deployments/app{i}.yaml": f"name: app{i}\n" for i in range(10)})
    remote.push("main")
    cache = tmp_path / "cache"
    first = open_source(remote.url, cache_dir=cache).path
    remote.symlink("deployments/alias.yaml", "app1.yaml")
    remote.push("main")
    linked = open_source(remote.url, cache_dir=cache).path
    assert os.readlink(linked / "deployments/alias.yaml") == "app1.yaml"
    assert snapshot(linked) == full_tree(remote.url, tmp_path, 1)
    # A symlink among the changes: extracted whole, nothing shared with the older tree.
    assert (linked / "deployments/app2.yaml").stat().st_ino != (
        first / "deployments/app2.yaml"
    ).stat().st_ino
    remote.commit({".gitattributes": "*.yaml text eol=crlf\n", "deployments/app4.yaml": "a\nb\n"})
    remote.push("main")
    crlf = open_source(remote.url, cache_dir=cache).path
    assert (crlf / "deployments/app4.yaml").read_bytes() == b"a\r\nb\r\n"  # as git archive
    assert snapshot(crlf) == full_tree(remote.url, tmp_path, 2)
