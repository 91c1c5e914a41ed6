"""Where the desired-state repository comes from: a local directory, or a git URL at a ref.

Why this module is paranoid: the reconciler runs unattended, often as root, against
repositories that many people can push to.  Git itself is a large attack surface when
pointed at untrusted input -- option injection through a URL or ref beginning with
``-``, the ``ext::`` transport that runs commands, hooks and fsmonitor commands from
configuration, submodules that fetch further URLs, credential helpers that leak tokens,
symlinks in a checkout that point at ``/etc``.  So every git call here runs with a
fixed, minimal configuration (no system, global or user config; hooks pointed at
``/dev/null``; only the transports we allow), and the tree we hand to the loader is
checked for escaping symlinks before anybody reads a file from it.

Why a cache: a reconcile runs on every push and on a timer.  Cloning the repository each
time would be slow and rude to the remote, so each URL gets one bare repository under
``<cache>/git/<sha256(url)[:16]>/`` that later runs update with an incremental
``git fetch --prune --force`` (force, so a force-pushed branch is followed).  A commit's
files are extracted once into ``<cache>/worktrees/<sha>/`` (built in a temporary
directory and renamed into place, so a reader never sees half a tree) and reused: the
sha names the content, so a tree never changes once it exists.

Why the sha: the plan records the exact commit it was made from, so "what will run" is
never "whatever ``main`` is by the time the agent gets to it".
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import fcntl
import hashlib
import os
import pathlib
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from reconciler.load.files import PathEscape, inside, resolve_inside
from reconciler.model.errors import InvalidSpec, Problem, TemporaryError
from reconciler.model.redact import redact

if TYPE_CHECKING:  # gitpython is imported lazily: `import git` runs `git --version`.
    from git import Repo
    from git.exc import GitCommandError

__all__ = [
    "DEFAULT_REF",
    "Checkout",
    "check_ref",
    "check_url",
    "default_cache_dir",
    "open_source",
    "resolve_remote_ref",
]

DEFAULT_REF = "main"
ALLOWED_SCHEMES = ("https", "ssh", "file")
FETCH_TIMEOUT = 600.0
#: How long a caller should wait before retrying after the remote could not be read.
RETRY_AFTER = 30.0
MAX_SUBMODULE_DEPTH = 5

_FULL_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_SHORT_SHA = re.compile(r"^[0-9a-f]{4,63}$")
# Characters git forbids in ref names (git-check-ref-format), plus whitespace/controls.
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:")
_TAR_FILTER_ERRORS = (tarfile.FilterError,)


@dataclass(frozen=True)
class Checkout:
    """A directory holding the desired-state files, and which revision they are.

    ``path`` is the directory the loader reads (the repository root, or ``subpath``
    inside it).  ``revision`` is the full commit sha for a git source -- recorded in the
    plan and in the spec hash -- and ``None`` for a plain directory, which has no
    revision we could honestly claim.  ``source`` is what the user gave, for display.
    """

    path: pathlib.Path
    revision: str | None
    source: str


def default_cache_dir() -> pathlib.Path:
    """``$RECONCILE_CACHE_DIR``, else ``$XDG_CACHE_HOME/reconciler``, else ``~/.cache/reconciler``.

    A cache, not state: deleting it costs one fresh clone per URL and nothing else.
    """
    explicit = os.environ.get("RECONCILE_CACHE_DIR")
    if explicit:
        return pathlib.Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return pathlib.Path(xdg).expanduser() / "reconciler"
    return pathlib.Path.home() / ".cache" / "reconciler"


def open_source(
    spec: str,
    *,
    ref: str | None = None,
    subpath: str | None = None,
    cache_dir: pathlib.Path | None = None,
    allow_submodules: bool = False,
    timeout: float = FETCH_TIMEOUT,
) -> Checkout:
    """Make the desired state named by ``spec`` available as a directory.

    ``spec`` is a local directory (used in place; a git work tree there is *not*
    cloned: what is on disk is what you get, uncommitted edits included, which is what
    ``reconcile --dry-run .`` in a pull request wants) or an ``https://``, ``ssh://``
    or ``file://`` URL, fetched into ``cache_dir`` (default :func:`default_cache_dir`)
    and checked out at ``ref`` (a branch, a tag or a commit sha; default ``main``).

    Raises :class:`InvalidSpec` when the spec, the ref or the repository's content is
    unusable (retrying will not help) and :class:`TemporaryError` when the remote could
    not be read (unreachable, timed out, refused): the caller backs off and retries.
    """
    spec = spec.strip()
    if "://" not in spec:
        return _open_directory(spec, ref=ref, subpath=subpath)
    url = check_url(spec)
    ref = DEFAULT_REF if ref is None else ref
    check_ref(ref)
    rel = _check_subpath(subpath)
    cache = (cache_dir if cache_dir is not None else default_cache_dir()).absolute()
    source = f"{url}@{ref}" + (f" path={rel}" if rel else "")
    from reconciler.load.gitauth import source_host

    with source_host(url), _CachedRepo.locked(cache, url, timeout=timeout) as cached:
        sha = cached.resolve(ref)
        tree = _worktree(cache, cached, sha, allow_submodules=allow_submodules)
    return Checkout(path=_enter_subpath(tree, rel, source), revision=sha, source=source)


def resolve_remote_ref(url: str, ref: str, *, timeout: float = 30) -> str:
    """The full commit sha ``ref`` names on the remote, read with ``git ls-remote``.

    Used at plan time for ``git_url`` deployments so the plan says exactly which commit
    will be built, without fetching the repository.  A branch or a tag (annotated tags
    are peeled to their commit) is looked up on the remote; a full sha is returned as
    given (a remote cannot be asked whether it has an arbitrary commit without a
    fetch); a short sha is accepted only when it abbreviates the tip of some ref.
    A name that is both a branch and a tag must be qualified (``refs/heads/x``).
    """
    url = check_url(url)
    check_ref(ref)
    if _FULL_SHA.match(ref):
        return ref
    with _git_env(url) as (env, options, home):
        from git.cmd import Git
        from git.exc import GitCommandError

        runner = Git(str(home))
        # No repository: a GIT_DIR that does not exist stops discovery and inheritance.
        runner.update_environment(**env, GIT_DIR=str(home / "none"), GIT_WORK_TREE=str(home))
        runner.set_persistent_git_options(c=options)
        started = time.monotonic()
        try:
            out = str(runner.ls_remote("--", url, kill_after_timeout=timeout))
        except GitCommandError as exc:
            raise _remote_error(url, exc, time.monotonic() - started, timeout) from None
    refs: dict[str, str] = {}
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        if name:
            refs[name] = sha
    found = _pick_ref(ref, refs, url)
    if found is not None:
        return found
    if _SHORT_SHA.match(ref):
        tips = {sha for name, sha in refs.items() if sha.startswith(ref)}
        if len(tips) == 1:
            return tips.pop()
        if len(tips) > 1:
            raise InvalidSpec(f"short sha {ref!r} is ambiguous on {url}: use the full sha")
        raise InvalidSpec(
            f"{ref!r} is not a branch or tag of {url}, nor the tip of one: "
            "give the full 40-character commit sha"
        )
    raise _missing_ref(ref, url, refs)


# --------------------------------------------------------------------------- checks


def check_url(url: str) -> str:
    """Refuse what git would turn into an attack or a leak; return the URL unchanged.

    The refusal never repeats a credential the URL carries, even a malformed URL's."""
    try:
        return _check_url(url)
    except InvalidSpec as exc:
        raise InvalidSpec(redact(str(exc))) from None


def _check_url(url: str) -> str:
    if url.startswith("-"):
        raise InvalidSpec(f"git URL {url!r} begins with '-': refused (option injection)")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise InvalidSpec(f"git URL {url!r} contains whitespace or control characters")
    if "://" not in url:
        if _SCP_LIKE.match(url):
            host_path = url.split("@", 1)[1].replace(":", "/", 1)
            user = url.split("@", 1)[0]
            raise InvalidSpec(
                f"git URL {url!r} is in scp form: write it as ssh://{user}@{host_path}"
            )
        raise InvalidSpec(f"{url!r} is not a git URL (https://, ssh:// or file://)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- validates the port
    except ValueError as exc:
        raise InvalidSpec(f"git URL {url!r} is malformed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        hint = " (use https://)" if scheme in ("http", "git") else ""
        raise InvalidSpec(
            f"git URL scheme {scheme + '://'!r} is not allowed{hint}: "
            "only https://, ssh:// and file:// are"
        )
    if parts.password is not None or (parts.username is not None and scheme != "ssh"):
        raise InvalidSpec(
            f"git URL {_redact(url)!r} carries credentials: never put them in the URL; "
            "use an ssh deploy key or a credential the host provides"
        )
    if parts.query or parts.fragment:
        raise InvalidSpec(f"git URL {_redact(url)!r} has a query or fragment: refused")
    host = parts.hostname or ""
    if scheme == "file":
        if host not in ("", "localhost"):
            raise InvalidSpec(f"file:// URL {url!r} names a host: use file:///path")
        if not parts.path.startswith("/"):
            raise InvalidSpec(f"file:// URL {url!r} needs an absolute path")
    elif not host or host.startswith("-") or (parts.username or "").startswith("-"):
        raise InvalidSpec(f"git URL {url!r} has no valid host")
    if parts.path.startswith("-"):
        raise InvalidSpec(f"git URL {url!r} has a path beginning with '-': refused")
    return url


def check_ref(ref: str) -> str:
    """A branch, tag or sha that git cannot mistake for an option or a range."""
    problem = None
    if not ref:
        problem = "is empty"
    elif ref.startswith("-"):
        problem = "begins with '-' (option injection)"
    elif _BAD_REF_CHARS.search(ref):
        problem = "contains whitespace, control characters or one of ~^:?*[\\"
    elif ".." in ref or "@{" in ref or "//" in ref or ref == "@":
        problem = "contains '..', '@{' or '//'"
    elif ref.startswith("/") or ref.endswith(("/", ".", ".lock")):
        problem = "begins with '/' or ends with '/', '.' or '.lock'"
    elif any(part.startswith(".") for part in ref.split("/")):
        problem = "has a component beginning with '.'"
    if problem:
        raise InvalidSpec(f"git ref {ref!r} {problem}: refused")
    return ref


def _check_subpath(subpath: str | None) -> str | None:
    if subpath is None:
        return None
    if subpath.startswith(("/", "~")) or os.path.isabs(subpath) or "\\" in subpath:
        raise InvalidSpec(f"path {subpath!r} must be relative to the repository root")
    parts = [p for p in subpath.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidSpec(f"path {subpath!r} must stay inside the repository (no '..')")
    if any(ord(c) < 0x20 for c in subpath):
        raise InvalidSpec(f"path {subpath!r} contains control characters")
    return "/".join(parts) or None


def _enter_subpath(root: pathlib.Path, rel: str | None, source: str) -> pathlib.Path:
    if rel is None:
        return root
    try:
        target = resolve_inside(root, rel, root)
    except PathEscape as exc:
        raise InvalidSpec(f"path in {source}: {exc}") from None
    if not target.is_dir():
        raise InvalidSpec(f"path {rel!r} is not a directory in {source}")
    return target


def _open_directory(spec: str, *, ref: str | None, subpath: str | None) -> Checkout:
    if ref is not None:
        raise InvalidSpec(
            f"a ref ({ref!r}) applies only to a git URL; for a local repository "
            f"use file://{os.path.abspath(spec)}"
        )
    root = pathlib.Path(spec).expanduser()
    if not root.is_dir():
        if _SCP_LIKE.match(spec):
            check_url(spec)  # raises with the ssh:// spelling
        raise InvalidSpec(f"{spec!r} is neither a directory nor a git URL")
    rel = _check_subpath(subpath)
    root = root.resolve()
    return Checkout(path=_enter_subpath(root, rel, spec), revision=None, source=spec)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return parts._replace(netloc=f"***@{parts.hostname or ''}").geturl()


# ------------------------------------------------------------------ git environment


@contextlib.contextmanager
def _git_env(url: str) -> Iterator[tuple[dict[str, str], list[str], pathlib.Path]]:
    """Environment and ``-c`` options for one git session, with an empty HOME.

    GitPython starts from ``os.environ``, so variables that would redirect git
    (``GIT_DIR``, ``GIT_CONFIG_PARAMETERS``, ``GIT_TEMPLATE_DIR``...) are overridden
    with harmless values rather than removed.  ``file`` is allowed as a transport only
    when the URL itself is a ``file://`` URL: ``GIT_ALLOW_PROTOCOL`` overrides
    ``protocol.file.allow``, so listing ``file`` always would let a submodule of an
    https repository read repositories on this host.
    """
    from reconciler.load.gitauth import GitAuth, auth_settings

    file_ok = urlsplit(url).scheme.lower() == "file"
    auth_env, auth_config = auth_settings(url, GitAuth.from_env())
    with tempfile.TemporaryDirectory(prefix="reconciler-git-home-") as home_str:
        home = pathlib.Path(home_str)
        env = {
            "HOME": home_str,
            "XDG_CONFIG_HOME": home_str,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_SYSTEM": os.devnull,
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_PARAMETERS": "",
            "GIT_CONFIG_COUNT": "0",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": shutil.which("true") or "/bin/true",
            "SSH_ASKPASS": shutil.which("true") or "/bin/true",
            "GIT_ALLOW_PROTOCOL": "https:ssh:file" if file_ok else "https:ssh",
            "GIT_PROTOCOL_FROM_USER": "0",
            "GIT_TEMPLATE_DIR": home_str,
            "GIT_CEILING_DIRECTORIES": str(home.parent),
            "GIT_ALTERNATE_OBJECT_DIRECTORIES": "",
            "GIT_NAMESPACE": "",
            "GIT_HTTP_LOW_SPEED_LIMIT": "1000",
            "GIT_HTTP_LOW_SPEED_TIME": "60",
            "GIT_OPTIONAL_LOCKS": "0",
        }
        if not os.environ.get("GIT_SSH_COMMAND") and not os.environ.get("GIT_SSH"):
            env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes -o ConnectTimeout=20"
        # Private remotes (reconciler.load.gitauth): settings through the environment,
        # never in the URL or the command line.
        env.update(auth_env)
        env["GIT_CONFIG_COUNT"] = str(len(auth_config))
        for i, (key, value) in enumerate(auth_config):
            env[f"GIT_CONFIG_KEY_{i}"] = key
            env[f"GIT_CONFIG_VALUE_{i}"] = value
        options = [
            "protocol.ext.allow=never",
            f"protocol.file.allow={'always' if file_ok else 'never'}",
            "core.hooksPath=/dev/null",
            "core.symlinks=true",
            "core.fsmonitor=false",
            "submodule.recurse=false",
            "credential.helper=",
            "transfer.fsckObjects=true",
            "gc.autoDetach=false",
            "maintenance.autoDetach=false",
            "init.defaultBranch=main",
            "advice.detachedHead=false",
        ]
        yield env, options, home


def _remote_error(
    url: str, exc: GitCommandError, elapsed: float, timeout: float
) -> InvalidSpec | TemporaryError:
    stderr = exc.stderr if isinstance(exc.stderr, str) else str(exc.stderr)
    if elapsed >= timeout or "Timeout: the command" in stderr:
        return TemporaryError(f"{url}: git timed out after {timeout:g} s", RETRY_AFTER)
    # The last lines that say something: ssh's reason ("Host key verification failed.",
    # "Permission denied (publickey).") comes before git's generic advice, which goes.
    lines = [
        line.strip().removeprefix("stderr: ").strip("'").strip()
        for line in stderr.strip().splitlines()
    ]
    said = [line for line in lines if line and line not in _GIT_ADVICE]
    detail = " ".join(said[-3:])
    if re.search(r"fsck error|did not pass fsck|fatal: fsck", stderr):
        return InvalidSpec(f"{url}: the repository's objects fail git's checks: {detail}")
    return TemporaryError(f"cannot read {url}: {detail or exc}", RETRY_AFTER)


_GIT_ADVICE = frozenset(
    {"Please make sure you have the correct access rights", "and the repository exists."}
)


def _pick_ref(ref: str, refs: Mapping[str, str], url: str) -> str | None:
    """The commit ``ref`` names among advertised ``refs`` (``name^{}`` = peeled tag)."""
    candidates = [ref] if ref.startswith("refs/") else [f"refs/heads/{ref}", f"refs/tags/{ref}"]
    hits = [name for name in candidates if name in refs]
    if len(hits) > 1:
        raise InvalidSpec(
            f"{ref!r} is both a branch and a tag on {url}: "
            f"write refs/heads/{ref} or refs/tags/{ref}"
        )
    if not hits:
        return None
    name = hits[0]
    return refs.get(name + "^{}", refs[name])


def _missing_ref(ref: str, url: str, refs: Mapping[str, str]) -> InvalidSpec:
    names = sorted(
        n.removeprefix("refs/heads/").removeprefix("refs/tags/")
        for n in refs
        if n.startswith(("refs/heads/", "refs/tags/")) and not n.endswith("^{}")
    )
    close = difflib.get_close_matches(ref, names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return InvalidSpec(
        Problem(
            file="",
            line=0,
            col=0,
            rule="source-ref",
            message=f"ref {ref!r} not found in {url}{hint}",
            fix="push the branch or tag, or correct the ref",
        )
    )


# -------------------------------------------------------------------- cached repos


class _CachedRepo:
    """One bare repository per URL under ``<cache>/git/``, used under a file lock."""

    def __init__(self, repo: Repo, url: str, timeout: float) -> None:
        self.repo = repo
        self.url = url
        self.timeout = timeout

    @classmethod
    @contextlib.contextmanager
    def locked(
        cls,
        cache: pathlib.Path,
        url: str,
        *,
        timeout: float,
        held: dict[str, _CachedRepo] | None = None,
    ) -> Iterator[_CachedRepo]:
        """Create or fetch the cache repository for ``url``, holding its lock throughout.

        The lock (``flock`` on ``<key>.lock``) serialises fetches and extraction of one
        URL across processes; different URLs proceed in parallel.  ``held`` lets
        submodule recursion reuse a repository this process already holds, since a
        second ``flock`` on a new descriptor of the same file would deadlock.
        """
        if held is not None and url in held:
            yield held[url]
            return
        base = cache / "git"
        base.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha256(url.encode()).hexdigest()[:16]
        path = base / key
        with open(base / f"{key}.lock", "a+b") as lockfile, _git_env(url) as (env, opts, _):
            fcntl.flock(lockfile.fileno(), fcntl.LOCK_EX)
            try:
                if path.exists() and not (path / "HEAD").is_file():
                    shutil.rmtree(path)  # a cache dir that is not a repository: rebuild
                if not path.exists():
                    _clone(base, path, url, env, opts, timeout)
                    cached = cls(_open_repo(path, env, opts), url, timeout)
                else:
                    cached = cls(_open_repo(path, env, opts), url, timeout)
                    _protect(path)
                    cached.fetch()
                try:
                    yield cached
                finally:
                    cached.repo.close()
            finally:
                fcntl.flock(lockfile.fileno(), fcntl.LOCK_UN)

    def fetch(self, *refspecs: str) -> None:
        """Incremental: only objects the cache lacks cross the wire; ``--force`` and
        ``--prune`` make branches and tags mirror the remote, force-pushes included."""
        from git.exc import GitCommandError

        started = time.monotonic()
        try:
            self.repo.git.fetch(
                *(() if refspecs else ("--prune",)),
                "--force",
                "--update-head-ok",
                "--no-recurse-submodules",
                "--no-write-fetch-head",
                "origin",
                *refspecs,
                kill_after_timeout=self.timeout,
            )
        except GitCommandError as exc:
            raise _remote_error(self.url, exc, time.monotonic() - started, self.timeout) from None

    def resolve(self, ref: str) -> str:
        """Full commit sha of ``ref`` in the (just fetched) cache, same rules as ls-remote."""
        refs = self._refs()
        found = _pick_ref(ref, refs, self.url)
        if found is not None:
            return self._commit_of(found, ref)
        if _SHORT_SHA.match(ref):
            sha = self._rev_parse(ref)
            if sha is None and _FULL_SHA.match(ref):
                self._fetch_sha(ref)
                sha = self._rev_parse(ref)
            if sha is not None:
                return sha
        raise _missing_ref(ref, self.url, refs)

    def ensure_commit(self, sha: str) -> None:
        """Make sure the commit (a submodule's gitlink) is in the cache."""
        if self._rev_parse(sha) is None:
            self._fetch_sha(sha)
        if self._rev_parse(sha) is None:
            raise InvalidSpec(f"commit {sha} is not available from {self.url}")

    def _fetch_sha(self, sha: str) -> None:
        # Servers may refuse a want of an unadvertised commit; that is "not found".
        with contextlib.suppress(TemporaryError):
            self.fetch(sha)

    def _refs(self) -> dict[str, str]:
        out = self.repo.git.for_each_ref(
            "--format=%(objectname) %(refname) %(*objectname)", "refs/heads", "refs/tags"
        )
        refs: dict[str, str] = {}
        for line in out.splitlines():
            sha, name, *peeled = line.split(" ")
            refs[name] = sha
            if peeled and peeled[0]:
                refs[name + "^{}"] = peeled[0]
        return refs

    def _rev_parse(self, name: str) -> str | None:
        from git.exc import GitCommandError

        try:
            out: str = self.repo.git.rev_parse("--verify", "--quiet", "--end-of-options", name)
            return self._commit_of(out.strip(), name)
        except (GitCommandError, InvalidSpec):
            return None

    def _commit_of(self, sha: str, ref: str) -> str:
        from git.exc import GitCommandError

        try:
            out: str = self.repo.git.rev_parse("--verify", "--quiet", f"{sha}^{{commit}}")
        except GitCommandError:
            raise InvalidSpec(f"ref {ref!r} of {self.url} does not name a commit") from None
        return out.strip()


def _open_repo(path: pathlib.Path, env: Mapping[str, str], opts: list[str]) -> Repo:
    from git import Repo

    repo = Repo(str(path))
    repo.git.update_environment(
        **env,
        GIT_DIR=str(path),
        GIT_COMMON_DIR=str(path),
        GIT_OBJECT_DIRECTORY=str(path / "objects"),
        GIT_WORK_TREE=str(path),  # irrelevant for a bare repo, but must not be inherited
        GIT_INDEX_FILE=str(path / "index"),
    )
    repo.git.set_persistent_git_options(c=opts)
    return repo


def _clone(
    base: pathlib.Path,
    path: pathlib.Path,
    url: str,
    env: Mapping[str, str],
    opts: list[str],
    timeout: float,
) -> None:
    """First use of a URL: a bare repository whose ``origin`` mirrors the remote's
    branches and tags, initialised and fetched in a temporary directory and renamed into
    place, so a failed or interrupted first clone leaves nothing behind."""
    from git.cmd import Git

    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=base))
    try:
        runner = Git(str(tmp))
        # `init --bare` refuses an inherited GIT_WORK_TREE, which we can only override
        # (GitPython starts from os.environ): init with both pinned, then make it bare.
        runner.update_environment(**env, GIT_DIR=str(tmp), GIT_WORK_TREE=str(tmp))
        runner.set_persistent_git_options(c=opts)
        runner.init("--quiet", f"--template={env['GIT_TEMPLATE_DIR']}")
        repo = _open_repo(tmp, env, opts)
        try:
            with repo.config_writer() as config:
                config.set_value("core", "bare", "true")
                config.remove_option("core", "worktree")
                config.set_value("core", "logAllRefUpdates", "false")
                config.set_value('remote "origin"', "url", url)
                config.set_value('remote "origin"', "fetch", "+refs/heads/*:refs/heads/*")
                config.add_value('remote "origin"', "fetch", "+refs/tags/*:refs/tags/*")
                config.set_value('remote "origin"', "tagOpt", "--no-tags")
            _protect(tmp)
            _CachedRepo(repo, url, timeout).fetch()
        finally:
            repo.close()
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _protect(git_dir: pathlib.Path) -> None:
    """``git archive`` obeys ``export-ignore``/``export-subst`` from the repository's own
    ``.gitattributes``; ``info/attributes`` has the last word, so the extracted tree is
    exactly the commit's content."""
    info = git_dir / "info"
    info.mkdir(exist_ok=True)
    wanted = "* -export-ignore -export-subst\n"
    attributes = info / "attributes"
    if not attributes.is_file() or attributes.read_text() != wanted:
        attributes.write_text(wanted)


# ---------------------------------------------------------------------- worktrees


def _worktree(
    cache: pathlib.Path, cached: _CachedRepo, sha: str, *, allow_submodules: bool
) -> pathlib.Path:
    """``<cache>/worktrees/<sha>[+submodules]/``: reused if present, else built atomically."""
    base = cache / "worktrees"
    base.mkdir(parents=True, exist_ok=True)
    final = base / (sha + ("+submodules" if allow_submodules else ""))
    if final.is_dir():
        with contextlib.suppress(OSError):
            os.utime(final)  # in use: the pruning below goes by this time
        return final
    _prune_worktrees(base)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{sha[:12]}-", dir=base))
    try:
        previous = None if allow_submodules else _newest_worktree(base)
        if previous is None or not _derive(cached.repo, previous, sha, tmp):
            if any(tmp.iterdir()):  # a derivation given up half way
                shutil.rmtree(tmp)
                tmp.mkdir(mode=0o700)
            _extract(cached.repo, sha, tmp)
        if allow_submodules:
            held = {cached.url: cached}
            _submodules(cache, cached, sha, tmp, tmp, held=held, depth=1)
        _check_symlinks(tmp)
        os.chmod(tmp, 0o755)  # noqa: S103 -- mkdtemp makes 0700; files are 0644/0755
        try:
            os.rename(tmp, final)
        except OSError as exc:  # someone else published the same sha first: theirs is equal
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# Every push leaves a worktree behind; a server reconciling for months would fill the disk.
KEEP_WORKTREES = 5  # the newest ones, whatever their age
PRUNE_AFTER = 3600.0  # seconds unused before an older worktree (or a crashed build) goes


def _prune_worktrees(base: pathlib.Path, *, now: float | None = None) -> list[str]:
    """Remove worktrees beyond the newest :data:`KEEP_WORKTREES` that nobody used for
    :data:`PRUNE_AFTER` seconds (a reconcile still reading one keeps touching it), and
    temporary builds a killed process left.  Returns the names removed."""
    now = time.time() if now is None else now
    entries = []
    for entry in base.iterdir():
        with contextlib.suppress(OSError):
            entries.append((entry.stat().st_mtime, entry))
    entries.sort(key=lambda item: item[0], reverse=True)
    removed = []
    finished = [(m, e) for m, e in entries if not e.name.startswith(".")]
    stale = [(m, e) for m, e in entries if e.name.startswith(".")]
    for mtime, entry in [*finished[KEEP_WORKTREES:], *stale]:
        if now - mtime >= PRUNE_AFTER:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


def _extract(repo: Repo, sha: str, dest: pathlib.Path) -> None:
    """``git archive <sha> | tar -x`` with Python's ``data`` filter, which refuses links
    leaving ``dest``, absolute names and device files as it goes."""
    proc = repo.git.archive("--format=tar", sha, as_process=True)
    try:
        stdout = proc.proc.stdout if proc.proc is not None else None
        assert stdout is not None
        with tarfile.open(fileobj=stdout, mode="r|") as tar:
            for member in tar:
                try:
                    tar.extract(member, dest, filter="data")
                except _TAR_FILTER_ERRORS as exc:
                    raise _symlink_problem(member.name, member.linkname or str(exc)) from None
        proc.wait()
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait()


# A push to a large repository changes a few files: the new worktree is the last one plus
# that diff (its unchanged files hard-linked) instead of a whole ``git archive`` written
# out again (1,000 deployment files: 0.25-0.6 s of a 1.4 s reconcile on the test machine).
# Anything the plain diff might not reproduce byte for byte takes the full extraction: a
# ``.gitattributes`` (eol and filter attributes change what ``git archive`` writes), a
# symlink or submodule among the changes, a path that is not a plain relative one, or a
# diff touching more than half the files.
_PLAIN_MODES = {"100644": 0o644, "100755": 0o755}
_NO_FILE = "000000"


def _newest_worktree(base: pathlib.Path) -> tuple[str, pathlib.Path] | None:
    """The most recently used finished worktree without submodules: ``(sha, path)``."""
    best: tuple[float, str, pathlib.Path] | None = None
    for entry in base.iterdir():
        if not _FULL_SHA.match(entry.name):
            continue
        with contextlib.suppress(OSError):
            mtime = entry.lstat().st_mtime
            if stat.S_ISDIR(entry.lstat().st_mode) and (best is None or mtime > best[0]):
                best = (mtime, entry.name, entry)
    return None if best is None else (best[1], best[2])


def _derive(repo: Repo, previous: tuple[str, pathlib.Path], sha: str, dest: pathlib.Path) -> bool:
    """Build ``dest`` as the worktree of ``sha`` from ``previous`` and the diff between
    them; False (``dest`` left empty) when the diff could not be applied exactly."""
    from git.exc import GitCommandError

    old_sha, old_dir = previous
    try:
        raw = repo.git.diff_tree("-r", "-z", "--no-renames", "--raw", old_sha, sha)
        names = repo.git.ls_tree("-r", "-z", "--name-only", sha)
    except GitCommandError:  # the old commit is gone from the cache, say
        return False
    if any(posixpath.basename(name) == ".gitattributes" for name in names.split("\0")):
        return False
    fields = raw.split("\0")
    changes: list[tuple[str, str, str]] = []  # (path, new mode, new blob)
    for meta, path in zip(fields[0::2], fields[1::2], strict=False):
        parts = meta.lstrip(":").split()
        if len(parts) != 5:
            return False
        old_mode, new_mode, _, blob, _ = parts
        if {old_mode, new_mode} - {*_PLAIN_MODES, _NO_FILE} or not _plain_path(path):
            return False
        changes.append((path, new_mode, blob))
    if 2 * len(changes) > max(1, names.count("\0") + 1):
        return False
    try:
        shutil.copytree(old_dir, dest, symlinks=True, copy_function=os.link, dirs_exist_ok=True)
        for path, mode, _ in changes:  # removals first: a file may become a directory
            if mode == _NO_FILE:
                _remove_file(dest, path)
        for path, mode, blob in changes:
            if mode == _NO_FILE:
                continue
            target = dest / path
            _make_parents(dest, target.parent)
            if os.path.islink(target) or target.is_dir():
                raise _NotDerivable(path)
            with contextlib.suppress(FileNotFoundError):
                target.unlink()  # never write through a hard link into the older worktree
            data = repo.odb.stream(bytes.fromhex(blob)).read()
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.chmod(target, _PLAIN_MODES[mode])
    except (_NotDerivable, OSError, shutil.Error):
        return False
    return True


def _plain_path(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def _remove_file(root: pathlib.Path, path: str) -> None:
    target = root / path
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    parent = target.parent
    while parent != root:  # git archive writes no empty directory
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent


def _make_parents(root: pathlib.Path, directory: pathlib.Path) -> None:
    """Create ``directory`` under ``root`` as plain directories (0755, as the archive's
    are).  A symlink or a file on the way means the old tree was not what the diff says."""
    here = root
    for part in directory.relative_to(root).parts:
        here = here / part
        if os.path.islink(here) or (os.path.lexists(here) and not here.is_dir()):
            raise _NotDerivable(here.relative_to(root).as_posix())
        if not here.is_dir():
            here.mkdir()
            os.chmod(here, 0o755)  # noqa: S103 -- as the archive's directories


class _NotDerivable(Exception):
    """The previous worktree plus the diff would not be the commit's tree: extract it."""


def _check_symlinks(root: pathlib.Path) -> None:
    """Every symlink must resolve inside ``root`` -- checked before anyone reads a file."""
    real_root = pathlib.Path(os.path.realpath(root))
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = pathlib.Path(dirpath) / name
            if not stat.S_ISLNK(path.lstat().st_mode):
                continue
            target = pathlib.Path(os.path.realpath(path))
            if not inside(target, real_root):
                rel = path.relative_to(root).as_posix()
                raise _symlink_problem(rel, os.readlink(path))


def _symlink_problem(rel: str, target: str) -> InvalidSpec:
    return InvalidSpec(
        Problem(
            file=rel,
            line=0,
            col=0,
            rule="source-symlink",
            message=f"symlink points outside the repository (-> {target})",
            fix="make it a relative link to a file inside the repository, or remove it",
        )
    )


def _submodules(
    cache: pathlib.Path,
    parent: _CachedRepo,
    sha: str,
    top: pathlib.Path,
    here: pathlib.Path,
    *,
    held: dict[str, _CachedRepo],
    depth: int,
) -> None:
    """Fill the gitlinks of commit ``sha`` (extracted at ``here``) from their own caches.

    Why not ``git submodule update``: that needs a work tree with a ``.git`` and fetches
    each submodule from scratch; going through :meth:`_CachedRepo.locked` gives every
    submodule URL the same checks, protections and incremental cache as the top level.
    """
    gitlinks: dict[str, str] = {}
    listing = parent.repo.git.ls_tree("-r", "-z", sha)
    for entry in listing.split("\0"):
        meta, _, path = entry.partition("\t")
        fields = meta.split()
        if len(fields) == 3 and fields[0] == "160000":
            gitlinks[path] = fields[2]
    if not gitlinks:
        return
    if depth > MAX_SUBMODULE_DEPTH:
        raise InvalidSpec(f"submodules of {parent.url} nest deeper than {MAX_SUBMODULE_DEPTH}")
    urls = _gitmodules(parent, sha)
    for path, commit in sorted(gitlinks.items()):
        raw = urls.get(path)
        if raw is None:
            raise InvalidSpec(
                Problem(".gitmodules", 0, 0, "source-submodule", f"no url for {path}")
            )
        url = check_url(_join_url(parent.url, raw))
        if urlsplit(url).scheme == "file" and urlsplit(parent.url).scheme != "file":
            # A remote repository must not make this host read its own local repositories.
            raise InvalidSpec(f"submodule {path!r} of {parent.url} points at {url}: refused")
        try:
            target = resolve_inside(here, path, top)
        except PathEscape as exc:
            raise InvalidSpec(f"submodule {path!r}: {exc}") from None
        target.mkdir(parents=True, exist_ok=True)
        with _CachedRepo.locked(cache, url, timeout=parent.timeout, held=held) as sub:
            held[url] = sub
            sub.ensure_commit(commit)
            _extract(sub.repo, commit, target)
            _submodules(cache, sub, commit, top, target, held=held, depth=depth + 1)


def _gitmodules(repo: _CachedRepo, sha: str) -> dict[str, str]:
    """``path -> url`` from the commit's ``.gitmodules`` (read from the blob, not a file)."""
    from git.exc import GitCommandError

    try:
        out = repo.repo.git.config(
            "--blob", f"{sha}:.gitmodules", "-z", "--get-regexp", r"^submodule\..*\.(path|url)$"
        )
    except GitCommandError:
        return {}
    by_name: dict[str, dict[str, str]] = {}
    for item in out.split("\0"):
        key, _, value = item.partition("\n")
        name, _, field = key.removeprefix("submodule.").rpartition(".")
        by_name.setdefault(name, {})[field] = value
    return {v["path"]: v["url"] for v in by_name.values() if "path" in v and "url" in v}


def _join_url(base: str, rel: str) -> str:
    """Resolve a ``./`` or ``../`` submodule URL against its superproject's URL, as git does."""
    if not rel.startswith(("./", "../")):
        return rel
    parts = urlsplit(base)
    path = parts.path.rstrip("/")
    for piece in rel.split("/"):
        if piece == "..":
            path = posixpath.dirname(path)
        elif piece not in ("", "."):
            path = f"{path}/{piece}"
    return parts._replace(path=path).geturl()
