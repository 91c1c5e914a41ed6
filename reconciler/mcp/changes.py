"""The change tools' one path: edit in a git worktree, validate, plan, commit on a branch.

The clone's own checkout is never touched: each change gets a fresh worktree at the
clone's ``HEAD`` on a new branch ``mcp/<verb>-<name>-<6 hex>``.  A change whose result
does not validate is refused with the problems, and its branch is deleted, so a refused
call leaves the clone exactly as it was.  The branch is pushed only when the process was
started with ``--push``; otherwise the caller gets the branch and the diff to review.
"""

from __future__ import annotations

import json
import pathlib
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import yaml

from reconciler.load.catalog import Catalog
from reconciler.load.repo import DEPLOYMENTS_DIR, load_repository
from reconciler.mcp.checks import Against, load_checked, plan_state
from reconciler.mcp.errors import ToolFailure
from reconciler.mcp.remote import ServerClient
from reconciler.mcp.settings import McpSettings
from reconciler.model.redact import redact

__all__ = ["ChangeContext", "deployment_file", "dump_deployment", "set_key"]

GIT_TIMEOUT = 120.0  # seconds; a push over a slow link, not a local commit
DIFF_LIMIT = 200_000  # characters of diff returned; the branch holds the whole change
AUTHOR = ("reconcile mcp", "reconcile-mcp@localhost")  # when the clone names no author

Edit = Callable[[pathlib.Path], str]  # edits the worktree; returns the commit subject


class ChangeContext:
    def __init__(
        self, settings: McpSettings, catalog: Catalog, server: ServerClient | None
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.server = server
        # The SDK may run tools concurrently; git's worktree and ref updates take one
        # change at a time (each has its own branch, so they never wait on each other long).
        self._lock = threading.Lock()

    def git(self, *args: str, cwd: pathlib.Path | None = None) -> str:
        try:
            done = subprocess.run(
                ["git", *args],
                cwd=cwd or self.settings.repo,
                capture_output=True,
                text=True,
                timeout=GIT_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ToolFailure("git", f"git {args[0]}: {exc}") from None
        if done.returncode != 0:
            raise ToolFailure("git", f"git {args[0]} failed: {done.stderr.strip()[-800:]}")
        return done.stdout

    def apply(
        self, verb: str, name: str, edit: Edit, *, against: Against = "auto"
    ) -> dict[str, Any]:
        """Run ``edit`` in a new worktree and commit it; a :class:`ToolFailure` changes nothing."""
        with self._lock:
            return self._apply(verb, name, edit, against)

    def _apply(self, verb: str, name: str, edit: Edit, against: Against) -> dict[str, Any]:
        repo = self.settings.repo
        if not (repo / ".git").exists():
            raise ToolFailure(
                "git",
                f"{repo} is not a git clone",
                hint="start `reconcile mcp --repo` on a clone of the desired-state repository",
            )
        base = self.git("rev-parse", "--verify", "HEAD^{commit}").strip()
        branch = f"mcp/{verb}-{name}-{secrets.token_hex(3)}"
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="reconcile-mcp-"))
        tree = tmp / "tree"
        self.git("worktree", "add", "--quiet", "-b", branch, str(tree), base)
        committed = False
        try:
            subject = edit(tree)
            desired = load_checked(tree, self.catalog)
            if not desired.state.ok:
                raise ToolFailure.invalid(
                    f"{verb} {name}: the result does not validate; nothing was committed",
                    desired.state.errors,
                    hint="correct the arguments (each problem names the file, line and fix)",
                )
            planned = plan_state(desired, against=against, server=self.server)
            self.git("add", "--all", "--", DEPLOYMENTS_DIR, cwd=tree)
            if not self.git("status", "--porcelain", cwd=tree).strip():
                raise ToolFailure("conflict", f"{verb} {name}: nothing to change")
            self.git(*self._author(), "commit", "--quiet", "-m", subject, cwd=tree)
            commit = self.git("rev-parse", "HEAD", cwd=tree).strip()
            diff = redact(self.git("diff", f"{base}..{commit}", cwd=tree))
            committed = True
            pushed = False
            if self.settings.push:
                self.git("push", "--quiet", self.settings.remote, f"{branch}:{branch}", cwd=tree)
                pushed = True
        finally:
            self.git("worktree", "remove", "--force", str(tree))
            shutil.rmtree(tmp, ignore_errors=True)
            if not committed:
                self.git("branch", "-D", branch)
        return {
            "branch": branch,
            "base": base,
            "commit": commit,
            "subject": subject,
            "pushed": pushed,
            "next": (
                f"pushed to {self.settings.remote}/{branch}: open a merge request"
                if pushed
                else f"review the diff, then merge or push branch {branch} "
                "(this server was started without --push)"
            ),
            "diff": diff[:DIFF_LIMIT],
            "diff_truncated": len(diff) > DIFF_LIMIT,
            "plan": planned,
        }

    def _author(self) -> list[str]:
        probe = subprocess.run(
            ["git", "config", "--get", "user.email"],
            cwd=self.settings.repo,
            capture_output=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip():
            return []
        return ["-c", f"user.name={AUTHOR[0]}", "-c", f"user.email={AUTHOR[1]}"]

    def existing_file(self, tree: pathlib.Path, name: str) -> str | None:
        return deployment_file(tree, name, self.catalog)


def deployment_file(root: pathlib.Path, name: str, catalog: Catalog) -> str | None:
    """The repo-relative file of deployment ``name``, among the files that load.

    A file that fails validation has no trustworthy name; it is matched by its file name
    (``deployments/<name>.yaml`` or ``deployments/<name>/deployment.yaml``) instead.
    """
    state = load_repository(root, catalog=catalog)
    for d in state.deployments:
        if d.name == name:
            return d.file
    for rel in state.files:
        path = pathlib.PurePosixPath(rel)
        if path.stem == name or (path.stem == "deployment" and path.parent.name == name):
            return rel
    return None


def dump_deployment(fields: dict[str, Any]) -> str:
    """A deployment file as people write them: keys in the given order, block style."""
    return yaml.safe_dump(
        {k: v for k, v in fields.items() if v is not None},
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
    )


def set_key(path: pathlib.Path, key: str, value: Any) -> None:
    """Set one top-level scalar key, keeping the rest of the file (comments included).

    The value is written as JSON, which YAML reads as the same scalar, so no value can
    break out of its line.
    """
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        data[key] = value
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        return
    line = f"{key}: {json.dumps(value)}"
    pattern = re.compile(rf"^{re.escape(key)}[ \t]*:.*$", re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _m: line, text, count=1)
    else:
        text = (text if text.endswith("\n") or not text else text + "\n") + line + "\n"
    path.write_text(text, encoding="utf-8")
