"""Git and directory sources against REAL local git repositories (bare remotes, file:// URLs).

Fixtures are built with the git command line; the code under test goes through
gitpython.  No network: the only remotes are bare repositories under tmp_path.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from reconciler.load.sources import (
    Checkout,
    check_url,
    default_cache_dir,
    open_source,
    resolve_remote_ref,
)
from reconciler.model.errors import InvalidSpec, TemporaryError

FIXTURE_ENV = {
    "GIT_AUTHOR_NAME": "Fixture",
    "GIT_AUTHOR_EMAIL": "fixture@example.invalid",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
    "GIT_COMMITTER_NAME": "Fixture",
    "GIT_COMMITTER_EMAIL": "fixture@example.invalid",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def git(cwd: pathlib.Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run the git CLI to BUILD fixtures (never the code under test)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    full_env.update(FIXTURE_ENV)
    full_env.update(env or {})
    done = subprocess.run(
        ["git", "-c", "protocol.file.allow=always", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"git {args}: {done.stderr}"
    return done.stdout.strip()


class Remote:
    """A work repository plus the bare repository it pushes to (the "remote")."""

    def __init__(self, root: pathlib.Path, name: str = "remote") -> None:
        self.bare = root / f"{name}.git"
        self.work = root / f"{name}-work"
        git(root, "init", "--quiet", "--bare", "-b", "main", str(self.bare))
        git(root, "init", "--quiet", "-b", "main", str(self.work))
        git(self.work, "remote", "add", "origin", str(self.bare))
        self.url = self.bare.as_uri()  # file:///...
        self._count = 0

    def commit(self, files: dict[str, str] | None = None, message: str | None = None) -> str:
        self._count += 1
        for rel, content in (files or {f"deployments/app{self._count}.yaml": "x\n"}).items():
            path = self.work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        git(self.work, "add", "-A")
        git(self.work, "commit", "--quiet", "-m", message or f"commit {self._count}")
        return self.head()

    def symlink(self, rel: str, target: str) -> str:
        path = self.work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
        git(self.work, "add", "-A")
        git(self.work, "commit", "--quiet", "-m", f"link {rel}")
        return self.head()

    def head(self) -> str:
        return git(self.work, "rev-parse", "HEAD")

    def push(self, *refs: str, force: bool = False) -> None:
        git(self.work, "push", "--quiet", *(["--force"] if force else []), "origin", *refs)


@pytest.fixture
def remote(tmp_path: pathlib.Path) -> Remote:
    r = Remote(tmp_path)
    r.commit({"reconcile.yaml": "namespace: demo\n", "deployments/api.yaml": "name: api\n"})
    r.push("main")
    return r


@pytest.fixture
def cache(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "cache"


def cache_repos(cache: pathlib.Path) -> list[pathlib.Path]:
    base = cache / "git"
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


# ---------------------------------------------------------------------------- refs


class TestRefs:
    def test_default_ref_is_main_and_files_are_there(
        self, remote: Remote, cache: pathlib.Path
    ) -> None:
        checkout = open_source(remote.url, cache_dir=cache)
        assert checkout.revision == remote.head()
        assert checkout.path == cache / "worktrees" / remote.head()
        assert (checkout.path / "deployments" / "api.yaml").read_text() == "name: api\n"
        assert not (checkout.path / ".git").exists()
        assert checkout.source == f"{remote.url}@main"

    def test_second_branch(self, remote: Remote, cache: pathlib.Path) -> None:
        main = remote.head()
        git(remote.work, "checkout", "--quiet", "-b", "staging")
        staging = remote.commit({"deployments/only-staging.yaml": "s\n"})
        remote.push("staging")
        got = open_source(remote.url, ref="staging", cache_dir=cache)
        assert got.revision == staging
        assert (got.path / "deployments" / "only-staging.yaml").is_file()
        back = open_source(remote.url, ref="main", cache_dir=cache)
        assert back.revision == main
        assert not (back.path / "deployments" / "only-staging.yaml").exists()

    def test_lightweight_and_annotated_tags_give_the_commit(
        self, remote: Remote, cache: pathlib.Path
    ) -> None:
        tagged = remote.head()
        git(remote.work, "tag", "light")
        git(remote.work, "tag", "-a", "v1.0", "-m", "release")
        remote.commit()
        remote.push("main", "--tags")
        tag_object = git(remote.work, "rev-parse", "v1.0")
        assert tag_object != tagged  # an annotated tag is its own object...
        assert open_source(remote.url, ref="light", cache_dir=cache).revision == tagged
        got = open_source(remote.url, ref="v1.0", cache_dir=cache)
        assert got.revision == tagged  # ...and is peeled to the commit it tags
        assert open_source(remote.url, ref="refs/tags/v1.0", cache_dir=cache).revision == tagged

    def test_full_and_short_sha_of_an_older_commit(
        self, remote: Remote, cache: pathlib.Path
    ) -> None:
        old = remote.head()
        remote.commit()
        remote.push("main")
        assert open_source(remote.url, ref=old, cache_dir=cache).revision == old
        assert open_source(remote.url, ref=old[:10], cache_dir=cache).revision == old

    def test_a_name_that_is_both_branch_and_tag_must_be_qualified(
        self, remote: Remote, cache: pathlib.Path
    ) -> None:
        git(remote.work, "branch", "prod")
        git(remote.work, "tag", "prod")
        remote.push("refs/heads/prod", "refs/tags/prod")
        with pytest.raises(InvalidSpec, match="both a branch and a tag"):
            open_source(remote.url, ref="prod", cache_dir=cache)
        assert open_source(remote.url, ref="refs/heads/prod", cache_dir=cache).revision

    def test_missing_ref_is_invalid_spec_with_a_suggestion(
        self, remote: Remote, cache: pathlib.Path
    ) -> None:
        with pytest.raises(InvalidSpec) as info:
            open_source(remote.url, ref="mian", cache_dir=cache)
        assert "ref 'mian' not found" in str(info.value)
        assert "did you mean main" in str(info.value)
        with pytest.raises(InvalidSpec):
            open_source(remote.url, ref="0" * 40, cache_dir=cache)


# ------------------------------------------------------------------ cache behaviour


class TestCache:
    def test_second_open_fetches_incrementally_into_the_same_repository(
        self, remote: Remote, cache: pathlib.Path
    ) -> None:
        first = open_source(remote.url, cache_dir=cache)
        [repo] = cache_repos(cache)
        inode = repo.stat().st_ino
        marker = repo / "marker-from-test"
        marker.write_text("still here")  # a fresh clone would not have it
        packs_before = set((repo / "objects" / "pack").glob("*.pack"))

        new = remote.commit()
        remote.push("main")
        second = open_source(remote.url, cache_dir=cache)

        assert second.revision == new != first.revision
        assert cache_repos(cache) == [repo]
        assert repo.stat().st_ino == inode
        assert marker.read_text() == "still here"
        # The objects of the first fetch are kept; only the new commit's were added.
        assert packs_before <= set((repo / "objects" / "pack").glob("*.pack"))
        assert repo.name == __import__("hashlib").sha256(remote.url.encode()).hexdigest()[:16]

    def test_old_worktrees_are_pruned_recent_and_newest_ones_kept(
        self, remote: Remote, cache: pathlib.Path
    ) -> None:
        import os
        import time

        from reconciler.load import sources

        first = open_source(remote.url, cache_dir=cache).path
        opened = [first]
        for _ in range(sources.KEEP_WORKTREES + 1):
            remote.commit()
            remote.push("main")
            opened.append(open_source(remote.url, cache_dir=cache).path)
        base = cache / "worktrees"
        assert len(list(base.iterdir())) == len(opened)  # all recent: nothing pruned yet
        # Age them all; keep one old worktree "in use" (opened again: touched).
        past = time.time() - sources.PRUNE_AFTER - 10
        for i, path in enumerate(opened):
            os.utime(path, (past - i, past + i))  # distinct ages, newest last
        crashed = base / ".deadbeef-crashed-build"
        crashed.mkdir()
        os.utime(crashed, (past, past))
        assert open_source(f"{remote.url}", ref=first.name, cache_dir=cache).path == first
        remote.commit()
        remote.push("main")
        newest = open_source(remote.url, cache_dir=cache).path
        left = {p.name for p in base.iterdir()}
        assert newest.name in left and first.name in left  # new, and old but just used
        assert not crashed.exists()
        # the newest KEEP_WORKTREES by time stay, whatever their age
        assert len(left) == sources.KEEP_WORKTREES + 1
        assert {p.name for p in opened[-(sources.KEEP_WORKTREES - 1) :]} <= left

    def test_force_push_is_followed(self, remote: Remote, cache: pathlib.Path) -> None:
        remote.commit()
        remote.push("main")
        before = open_source(remote.url, cache_dir=cache).revision
        git(remote.work, "reset", "--quiet", "--hard", "HEAD~1")
        rewritten = remote.commit({"deployments/rewritten.yaml": "r\n"}, "rewritten history")
        remote.push("main", force=True)
        after = open_source(remote.url, cache_dir=cache)
        assert after.revision == rewritten != before
        assert (after.path / "deployments" / "rewritten.yaml").is_file()

    def test_deleted_branch_is_pruned(self, remote: Remote, cache: pathlib.Path) -> None:
        git(remote.work, "branch", "short-lived")
        remote.push("short-lived")
        assert open_source(remote.url, ref="short-lived", cache_dir=cache).revision
        git(remote.work, "push", "--quiet", "origin", "--delete", "short-lived")
        with pytest.raises(InvalidSpec, match="not found"):
            open_source(remote.url, ref="short-lived", cache_dir=cache)

    def test_worktree_is_reused_and_published_whole(
        self, remote: Remote, cache: pathlib.Path
    ) -> None:
        first = open_source(remote.url, cache_dir=cache)
        stamp = first.path.stat().st_ino
        again = open_source(remote.url, cache_dir=cache)
        assert again.path == first.path
        assert again.path.stat().st_ino == stamp
        leftovers = [p.name for p in (cache / "worktrees").iterdir() if p.name.startswith(".")]
        assert leftovers == []

    def test_export_attributes_do_not_change_the_tree(
        self, remote: Remote, cache: pathlib.Path
    ) -> None:
        remote.commit(
            {
                ".gitattributes": "deployments/hidden.yaml export-ignore\n*.txt export-subst\n",
                "deployments/hidden.yaml": "name: hidden\n",
                "version.txt": "$Format:%H$\n",
            }
        )
        remote.push("main")
        got = open_source(remote.url, cache_dir=cache)
        assert (got.path / "deployments" / "hidden.yaml").read_text() == "name: hidden\n"
        assert (got.path / "version.txt").read_text() == "$Format:%H$\n"

    def test_concurrent_opens_share_one_cache_safely(
        self, remote: Remote, cache: pathlib.Path
    ) -> None:
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(lambda _: open_source(remote.url, cache_dir=cache), range(6)))
        assert {r.revision for r in results} == {remote.head()}
        assert len(cache_repos(cache)) == 1
        assert [p.name for p in (cache / "worktrees").iterdir()] == [remote.head()]

    def test_concurrent_processes_share_one_cache_safely(
        self, remote: Remote, cache: pathlib.Path
    ) -> None:
        code = (
            "import sys, pathlib; from reconciler.load.sources import open_source; "
            "print(open_source(sys.argv[1], cache_dir=pathlib.Path(sys.argv[2])).revision)"
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, remote.url, str(cache)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        outs = [p.communicate(timeout=120)[0].strip() for p in procs]
        assert all(p.returncode == 0 for p in procs)
        assert set(outs) == {remote.head()}
        assert len(cache_repos(cache)) == 1

    def test_default_cache_dir_precedence(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
    ) -> None:
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        monkeypatch.delenv("RECONCILE_CACHE_DIR", raising=False)
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        assert default_cache_dir() == tmp_path / "home" / ".cache" / "reconciler"
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert default_cache_dir() == tmp_path / "xdg" / "reconciler"
        monkeypatch.setenv("RECONCILE_CACHE_DIR", str(tmp_path / "explicit"))
        assert default_cache_dir() == tmp_path / "explicit"


# ----------------------------------------------------------------------- safety


class TestRefusals:
    def test_option_injection_in_ref_is_refused_and_nothing_runs(
        self, remote: Remote, cache: pathlib.Path, tmp_path: pathlib.Path
    ) -> None:
        pwned = tmp_path / "pwned"
        with pytest.raises(InvalidSpec, match="option injection"):
            open_source(remote.url, ref=f"--upload-pack=touch {pwned}", cache_dir=cache)
        with pytest.raises(InvalidSpec, match="option injection"):
            resolve_remote_ref(remote.url, f"--upload-pack=touch {pwned}")
        assert not pwned.exists()
        assert not cache.exists()  # refused before any git ran or any directory was made

    @pytest.mark.parametrize(
        "url",
        [
            "--upload-pack=touch /tmp/pwned",
            "-oProxyCommand=touch /tmp/pwned",
            "ssh://-oProxyCommand=touch%20pwned/x",
        ],
    )
    def test_option_injection_in_url_is_refused(self, url: str, cache: pathlib.Path) -> None:
        with pytest.raises(InvalidSpec):
            open_source(url, cache_dir=cache)
        assert not cache.exists()

    @pytest.mark.parametrize(
        "ref",
        ["main branch", "main\tx", "a..b", "HEAD@{1}", "x\x07", "x~1", "main^", "x:y", "", "x/"],
    )
    def test_malformed_refs_are_refused(self, ref: str, remote: Remote) -> None:
        with pytest.raises(InvalidSpec, match="refused"):
            resolve_remote_ref(remote.url, ref)

    @pytest.mark.parametrize(
        "url",
        [
            "https://user:secret@git.example.invalid/org/repo.git",
            "https://ghp_token@git.example.invalid/org/repo.git",
            "ssh://git:secret@git.example.invalid/org/repo.git",
        ],
    )
    def test_credentials_in_url_are_refused_and_not_echoed(
        self, url: str, cache: pathlib.Path
    ) -> None:
        with pytest.raises(InvalidSpec, match="credentials") as info:
            open_source(url, cache_dir=cache)
        assert "secret" not in str(info.value)
        assert "ghp_token" not in str(info.value)
        assert not cache.exists()

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("http://git.example.invalid/repo.git", "use https://"),
            ("git://git.example.invalid/repo.git", "not allowed"),
            ("ext::sh -c touch% /tmp/pwned", "whitespace"),
            ("ext::sh-c-touch", "not a git URL"),
            ("git@github.com:org/repo.git", "ssh://git@github.com/org/repo.git"),
            ("file://otherhost/srv/repo.git", "names a host"),
            ("https://git.example.invalid/repo.git?token=x", "query"),
        ],
    )
    def test_only_https_ssh_and_file_urls(self, url: str, message: str) -> None:
        with pytest.raises(InvalidSpec, match=message.replace("?", r"\?")):
            check_url(url)

    def test_ssh_user_without_password_is_fine(self) -> None:
        assert check_url("ssh://git@git.example.invalid/org/repo.git")

    @pytest.mark.parametrize(
        ("rel", "target"),
        [
            ("deployments/passwd.yaml", "/etc/passwd"),
            ("deployments/up.yaml", "../../outside.yaml"),
            ("deployments/dir", "../.."),
        ],
    )
    def test_symlink_out_of_the_checkout_is_refused_and_never_published(
        self, remote: Remote, cache: pathlib.Path, rel: str, target: str
    ) -> None:
        sha = remote.symlink(rel, target)
        remote.push("main")
        with pytest.raises(InvalidSpec) as info:
            open_source(remote.url, cache_dir=cache)
        [problem] = info.value.problems
        assert problem.file == rel
        assert "outside the repository" in problem.message
        worktrees = cache / "worktrees"
        assert not (worktrees / sha).exists()
        assert [p.name for p in worktrees.iterdir()] == []  # no temp dir left behind

    def test_chained_symlinks_that_escape_together_are_refused(
        self, remote: Remote, cache: pathlib.Path
    ) -> None:
        remote.symlink("a/up", "..")  # a/up -> a/.. == root: inside
        remote.symlink("b/out", "../a/up/..")  # -> root/.. : outside, through a link
        remote.push("main")
        with pytest.raises(InvalidSpec, match="outside the repository"):
            open_source(remote.url, cache_dir=cache)

    def test_symlink_inside_the_checkout_is_fine(self, remote: Remote, cache: pathlib.Path) -> None:
        remote.symlink("deployments/alias.yaml", "api.yaml")
        remote.push("main")
        got = open_source(remote.url, cache_dir=cache)
        assert (got.path / "deployments" / "alias.yaml").read_text() == "name: api\n"

    def test_hooks_never_run(
        self,
        remote: Remote,
        cache: pathlib.Path,
        tmp_path: pathlib.Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        marker = tmp_path / "hook-ran"
        hooks = tmp_path / "hooks"
        hooks.mkdir()
        for name in ("post-checkout", "reference-transaction", "post-merge", "pre-auto-gc"):
            hook = hooks / name
            hook.write_text(f"#!/bin/sh\necho {name} >> '{marker}'\n")
            hook.chmod(0o755)
        template = tmp_path / "template"
        (template / "hooks").mkdir(parents=True)
        for hook in hooks.iterdir():
            (template / "hooks" / hook.name).write_bytes(hook.read_bytes())
            (template / "hooks" / hook.name).chmod(0o755)
        home = tmp_path / "home"
        home.mkdir()
        (home / ".gitconfig").write_text(
            f"[core]\n\thooksPath = {hooks}\n[init]\n\ttemplateDir = {template}\n"
        )
        # The remote's own config asks for hooks too (it is not ours to obey).
        git(remote.bare, "config", "core.hooksPath", str(hooks))

        # Control: plain git with this user's configuration does run them.
        hostile = {"HOME": str(home), "GIT_CONFIG_GLOBAL": str(home / ".gitconfig")}
        git(tmp_path, "clone", "--quiet", remote.url, str(tmp_path / "control"), env=hostile)
        assert marker.exists()
        marker.unlink()

        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
        monkeypatch.setenv("GIT_TEMPLATE_DIR", str(template))
        monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
        open_source(remote.url, cache_dir=cache)  # first clone
        assert not marker.exists()
        remote.commit()
        remote.push("main")  # the fixture's push runs the remote's hooks: not our doing
        marker.unlink(missing_ok=True)
        open_source(remote.url, cache_dir=cache)  # the incremental fetch updates refs too
        assert not marker.exists()
        [repo] = cache_repos(cache)
        assert not list(repo.glob("hooks/*"))  # no template was copied into the cache

    def test_inherited_git_environment_does_not_redirect_git(
        self, remote: Remote, cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # As when the reconciler is started from inside a git hook or another repository.
        monkeypatch.setenv("GIT_DIR", str(remote.work / ".git"))
        monkeypatch.setenv("GIT_WORK_TREE", str(remote.work))
        monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'protocol.ext.allow'='always'")
        got = open_source(remote.url, cache_dir=cache)
        assert got.revision == remote.head()
        # The work repository was not touched (no refs fetched into it).
        assert git(remote.work, "for-each-ref", "refs/tags") == ""

    def test_submodules_only_when_asked(
        self, tmp_path: pathlib.Path, remote: Remote, cache: pathlib.Path
    ) -> None:
        sub = Remote(tmp_path, "library")
        sub_sha = sub.commit({"lib.txt": "from the submodule\n"})
        sub.push("main")
        git(remote.work, "submodule", "add", "--quiet", sub.url, "vendor/lib")
        git(remote.work, "commit", "--quiet", "-m", "add submodule")
        remote.push("main")

        plain = open_source(remote.url, cache_dir=cache)
        assert (plain.path / "vendor" / "lib").is_dir()
        assert list((plain.path / "vendor" / "lib").iterdir()) == []
        assert len(cache_repos(cache)) == 1  # the submodule's URL was never fetched

        full = open_source(remote.url, cache_dir=cache, allow_submodules=True)
        assert full.revision == plain.revision
        assert full.path != plain.path  # a different tree, so a different directory
        assert (full.path / "vendor" / "lib" / "lib.txt").read_text() == "from the submodule\n"
        assert not (full.path / "vendor" / "lib" / ".git").exists()
        assert len(cache_repos(cache)) == 2
        assert git(remote.work, "ls-tree", "HEAD", "vendor/lib").split()[2] == sub_sha


# ------------------------------------------------------------------- remote errors


class TestRemoteErrors:
    def test_unreachable_remote_is_temporary_and_leaves_no_cache(self, cache: pathlib.Path) -> None:
        with pytest.raises(TemporaryError) as info:
            open_source("file:///nonexistent/repo.git", cache_dir=cache)
        assert info.value.retry_after > 0
        assert "file:///nonexistent/repo.git" in str(info.value)
        assert cache_repos(cache) == []  # a failed first clone is not half-kept
        with pytest.raises(TemporaryError):
            resolve_remote_ref("file:///nonexistent/repo.git", "main")

    def test_remote_that_hangs_times_out_as_temporary(
        self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, cache: pathlib.Path
    ) -> None:
        fake_ssh = tmp_path / "fake-ssh"
        fake_ssh.write_text("#!/bin/sh\nexec sleep 30\n")
        fake_ssh.chmod(0o755)
        monkeypatch.setenv("GIT_SSH_COMMAND", str(fake_ssh))
        started = time.monotonic()
        with pytest.raises(TemporaryError, match="timed out"):
            resolve_remote_ref("ssh://git@host.invalid/repo.git", "main", timeout=1)
        with pytest.raises(TemporaryError, match="timed out"):
            open_source("ssh://git@host.invalid/repo.git", cache_dir=cache, timeout=1)
        assert time.monotonic() - started < 20
        assert cache_repos(cache) == []


class TestResolveRemoteRef:
    def test_branch_tags_and_shas(self, remote: Remote) -> None:
        first = remote.head()
        git(remote.work, "tag", "light")
        git(remote.work, "tag", "-a", "v1", "-m", "annotated")
        git(remote.work, "checkout", "--quiet", "-b", "feature")
        feature = remote.commit()
        remote.push("main", "feature", "--tags")

        assert resolve_remote_ref(remote.url, "main") == first
        assert resolve_remote_ref(remote.url, "feature") == feature
        assert resolve_remote_ref(remote.url, "refs/heads/feature") == feature
        assert resolve_remote_ref(remote.url, "light") == first
        assert resolve_remote_ref(remote.url, "v1") == first  # peeled, not the tag object
        assert resolve_remote_ref(remote.url, feature) == feature
        assert resolve_remote_ref(remote.url, feature[:12]) == feature

    def test_agrees_with_open_source(self, remote: Remote, cache: pathlib.Path) -> None:
        git(remote.work, "tag", "-a", "v2", "-m", "annotated")
        remote.push("--tags")
        for ref in ("main", "v2"):
            assert (
                resolve_remote_ref(remote.url, ref)
                == open_source(remote.url, ref=ref, cache_dir=cache).revision
            )

    def test_missing_ref_and_unknown_short_sha(self, remote: Remote) -> None:
        with pytest.raises(InvalidSpec, match="not found"):
            resolve_remote_ref(remote.url, "release")
        with pytest.raises(InvalidSpec, match="full 40-character"):
            resolve_remote_ref(remote.url, "abcdef12")


# -------------------------------------------------------------- directories, subpath


class TestDirectoryAndSubpath:
    def test_plain_directory_is_used_in_place(self, tmp_path: pathlib.Path) -> None:
        root = tmp_path / "desired"
        (root / "deployments").mkdir(parents=True)
        got = open_source(str(root))
        assert got == Checkout(path=root.resolve(), revision=None, source=str(root))

    def test_a_git_work_tree_is_a_directory_not_cloned(
        self, remote: Remote, tmp_path: pathlib.Path
    ) -> None:
        (remote.work / "deployments" / "uncommitted.yaml").write_text("u\n")
        got = open_source(str(remote.work), cache_dir=tmp_path / "unused")
        assert got.revision is None
        assert (got.path / "deployments" / "uncommitted.yaml").is_file()
        assert not (tmp_path / "unused").exists()

    def test_directory_errors(self, tmp_path: pathlib.Path) -> None:
        with pytest.raises(InvalidSpec, match="neither a directory nor a git URL"):
            open_source(str(tmp_path / "missing"))
        with pytest.raises(InvalidSpec, match="only to a git URL"):
            open_source(str(tmp_path), ref="main")

    def test_subpath_in_a_git_checkout(self, remote: Remote, cache: pathlib.Path) -> None:
        remote.commit({"envs/prod/deployments/web.yaml": "name: web\n"})
        remote.push("main")
        got = open_source(remote.url, subpath="envs/prod/", cache_dir=cache)
        assert got.path == cache / "worktrees" / remote.head() / "envs" / "prod"
        assert (got.path / "deployments" / "web.yaml").is_file()
        assert got.source.endswith("path=envs/prod")

    @pytest.mark.parametrize(
        ("subpath", "message"),
        [
            ("../elsewhere", "no '..'"),
            ("envs/../../x", "no '..'"),
            ("/etc", "relative"),
            ("missing", "not a directory"),
        ],
    )
    def test_subpath_must_stay_inside(
        self, remote: Remote, cache: pathlib.Path, subpath: str, message: str
    ) -> None:
        with pytest.raises(InvalidSpec, match=message):
            open_source(remote.url, subpath=subpath, cache_dir=cache)

    def test_subpath_symlink_out_of_a_directory_source(self, tmp_path: pathlib.Path) -> None:
        root = tmp_path / "desired"
        root.mkdir()
        (tmp_path / "secret").mkdir()
        (root / "envs").symlink_to(tmp_path / "secret")
        with pytest.raises(InvalidSpec, match="outside"):
            open_source(str(root), subpath="envs")


def test_importing_sources_does_not_import_gitpython() -> None:
    code = "import sys, reconciler.load.sources; sys.exit('git' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
