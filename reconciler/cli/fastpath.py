"""The no-op fast path of ``reconcile apply``: prove nothing changed, and say so, without
importing typer, pydantic or yaml (issue 15: those imports were ~60% of a no-op process).

A run of a supported ``apply`` form first computes a fingerprint of every input the
normal path reads: this code (version, every file's stat), the interpreter, argv and cwd,
the whole environment (``{from_env}`` values, ``DOCKER_HOST``, the proxy's name), the
terminal (rich renders for it), the source tree (every file's mode, size and content
digest), the catalog in use, the state dir's files, and the host as the no-op sees it:
the labelled container list, the proxy container and its image, and Caddy's live config.
Equal to the record that the last all-no-op run left -> that run's output is printed
again (its ``seconds`` recomputed) with its exit code.  Anything else, or any doubt (a
symlink in the tree, a proxy not running, a socket that does not answer, an
unreadable file), takes the normal path, which writes a new record only when it planned
nothing but no-ops, applied nothing and printed nothing on stderr.

The fingerprint is taken before the normal path runs: a change while it runs makes the
next fingerprint differ, never hides in the record.  Stdlib only, and nothing from
``reconciler`` but ``__version__``: this module is imported before the CLI itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import re
import stat
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterable
from typing import Any, TextIO

__all__ = [
    "DISABLE_ENV",
    "DISABLE_FLAG",
    "RECORD_NAME",
    "Session",
    "begin",
    "mark_noop",
    "parse_apply",
]

DISABLE_FLAG = "--no-fast-path"
DISABLE_ENV = "RECONCILE_NO_FAST_PATH"
RECORD_NAME = "noop-fingerprint.json"
RECORD_VERSION = 1
# agent.proxy and reconciler.model.ids spell these; importing them costs pydantic
# (tests/cli/test_fastpath.py checks that they agree).
LABEL_DEPLOYMENT = "io.reconciler.deployment"
PROXY_CONTAINER_ENV = "RECONCILE_PROXY_CONTAINER"
PROXY_CONTAINER = "reconciler-proxy"
PROXY_IMAGE = "caddy:2"
DEFAULT_SOCKET = "/var/run/docker.sock"
# The words of a container's Status that agent.observe reads (health, the exit code).
_HEALTH = ("(health: starting)", "(unhealthy)", "(healthy)")
_CODE_RE = re.compile(r"^(?:Exited|Restarting) \((-?\d+)\)")
# Options of `apply` whose value is the next word, and its flags; any other word that
# starts with '-' (--watch, --ref, --subpath, --help, combined short flags) is not
# supported here: the normal path.
_VALUED = {"--format", "-f", "--state-dir", "--catalog", "--settle", "--parallel"}
_FLAGS = {"--yes", "-y", "--purge", "--prune", "--no-prune", "--allow-mass-prune"}
_PACKAGES = ("reconciler", "agent")
_BYTECODE = {"__pycache__"}  # written by any run; the sources are fingerprinted
# Set by the normal path (reconcile_once) when its run may be recorded.
_noop: dict[str, bool] = {"ok": False}


class _Unsupported(Exception):
    """Not provable here: take the normal path."""


def mark_noop() -> None:
    """Called by ``reconcile_once`` after a run that planned only no-ops, applied nothing,
    read nothing remote and repaired the proxy without error."""
    _noop["ok"] = True


def parse_apply(args: list[str]) -> dict[str, str] | None:
    """The options of a supported ``apply`` form (argv as `rewrite_argv` left it), or None."""
    if not args or args[0] != "apply":
        return None
    out: dict[str, str] = {}
    positional: list[str] = []
    words = iter(args[1:])
    for word in words:
        if word.startswith("-"):
            name, eq, value = word.partition("=")
            if name in _VALUED and name.startswith("--") and eq:
                out[name] = value
            elif word in _VALUED:
                nxt = next(words, None)
                if nxt is None:
                    return None
                out["--format" if word == "-f" else word] = nxt
            elif word not in _FLAGS:
                return None
        else:
            positional.append(word)
    if len(positional) > 1 or out.get("--format", "text") not in ("text", "json"):
        return None
    source = positional[0] if positional else "."
    if "://" in source or source.startswith("git@") or not os.path.isdir(source):
        return None
    out["source"] = source
    return out


def state_dir(options: dict[str, str]) -> pathlib.Path:
    """As ``agent.statedir.default_state_dir`` picks it (``--state-dir`` first)."""
    if "--state-dir" in options:
        return pathlib.Path(options["--state-dir"])
    env = os.environ.get("RECONCILE_STATE_DIR")
    if env:
        return pathlib.Path(env).expanduser()
    if os.geteuid() == 0:
        return pathlib.Path("/var/lib/reconciler")
    xdg = os.environ.get("XDG_STATE_HOME")
    base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".local" / "state"
    return base / "reconciler"


# ----------------------------------------------------------------------------- inputs


def _tree(
    root: pathlib.Path, *, content: bool, skip: Iterable[str] = (), names: Iterable[str] = ()
) -> list[Any]:
    """Every entry under ``root``, sorted: path, mode, size and the content's digest
    (``content``) or mtime_ns and inode.  A symlink or a special file is a doubt."""
    skipped = set(skip)
    ignored = set(names)
    out: list[Any] = []
    for top, dirs, files in os.walk(root, onerror=_raise):
        rel_top = os.path.relpath(top, root)
        dirs[:] = sorted(d for d in dirs if not _skipped(rel_top, d, skipped, ignored))
        for name in sorted([*files, *dirs]):
            if _skipped(rel_top, name, skipped, ignored):
                continue
            path = os.path.join(top, name)
            rel = os.path.normpath(os.path.join(rel_top, name))
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                out.append((rel, st.st_mode))
                continue
            if not stat.S_ISREG(st.st_mode):
                if stat.S_ISSOCK(st.st_mode) and not content:
                    continue  # the proxy's admin socket: its answer is fingerprinted
                raise _Unsupported(f"{path} is not a regular file")
            if content:
                with open(path, "rb") as f:
                    digest = hashlib.file_digest(f, "blake2b").hexdigest()
                out.append((rel, st.st_mode, st.st_size, digest))
            else:
                out.append((rel, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino))
    return out


def _skipped(top: str, name: str, skipped: set[str], ignored: set[str]) -> bool:
    return name in ignored or os.path.normpath(os.path.join(top, name)) in skipped


def _raise(exc: OSError) -> None:
    raise exc


def _code() -> list[Any]:
    """This installation: an edited module or catalog file changes the output."""
    import reconciler

    here = pathlib.Path(reconciler.__file__).parent
    out: list[Any] = [reconciler.__version__, sys.version, sys.executable]
    for name in _PACKAGES:
        out.append(_tree(here.parent / name, content=False, names=_BYTECODE))
    # Installing or removing a distribution touches site-packages.
    out.append([os.stat(p).st_mtime_ns for p in sys.path if p.endswith("site-packages")])
    return out


def _terminal() -> list[Any]:
    out: list[Any] = []
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        out.append(tty)
        if tty:
            out.append(tuple(os.get_terminal_size(stream.fileno())))
    return out


class _Socket:
    """GETs over a UNIX socket (``agent.engine``'s connection: stdlib only)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def get(self, url: str) -> tuple[int, bytes]:
        from agent.engine import UnixHTTPConnection

        conn = UnixHTTPConnection(self.path, timeout=10.0, connect_timeout=1.0)
        try:
            conn.request("GET", url)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def json(self, url: str) -> Any:
        status, body = self.get(url)
        if status != 200:
            raise _Unsupported(f"GET {url}: {status}")
        return json.loads(body)


def _docker_socket() -> str:
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        return DEFAULT_SOCKET
    for scheme in ("unix://", "http+unix://"):
        if host.startswith(scheme):
            return host[len(scheme) :] or DEFAULT_SOCKET
    raise _Unsupported("DOCKER_HOST is not a UNIX socket")


def _networks(item: dict[str, Any]) -> list[Any]:
    nets = (item.get("NetworkSettings") or {}).get("Networks") or {}
    return sorted((name, (net or {}).get("NetworkID")) for name, net in nets.items())


def _host(state: pathlib.Path) -> list[Any]:
    """What the no-op observes and repairs, as ``agent.observe`` and ``agent.proxy`` read
    it: the labelled container list (with the restart count of those restarting or
    exited), the proxy container and its image, Caddy's live config.

    Not ``/info`` (free networks, total memory): the plan reads those for installs and
    updates only, which a no-op has none of while the repository and containers are the
    same.
    """
    engine = _Socket(_docker_socket())
    filters = urllib.parse.quote(json.dumps({"label": [LABEL_DEPLOYMENT]}))
    listed = engine.json(f"/containers/json?all=1&filters={filters}")
    containers = []
    for item in sorted(listed, key=lambda i: str(i.get("Id"))):
        state_word = str(item.get("State")).lower()
        text = str(item.get("Status") or "")
        health = next((marker for marker in _HEALTH if marker in text), "none")
        code = _CODE_RE.match(text)
        restarts = None
        if state_word in ("restarting", "exited"):
            restarts = engine.json(f"/containers/{item.get('Id')}/json").get("RestartCount")
        containers.append(
            (
                item.get("Id"),
                item.get("Names"),
                item.get("Image"),
                item.get("ImageID"),
                state_word,
                health,
                code.group(1) if code else None,
                restarts,
                sorted((item.get("Labels") or {}).items()),
                _networks(item),
            )
        )
    name = os.environ.get(PROXY_CONTAINER_ENV) or PROXY_CONTAINER
    proxy = engine.json(f"/containers/{urllib.parse.quote(name)}/json")
    image = engine.json(f"/images/{urllib.parse.quote(PROXY_IMAGE)}/json")
    if (proxy.get("State") or {}).get("Status") != "running":
        raise _Unsupported("the proxy is not running")
    admin = _Socket(str(state / "proxy" / "run" / "admin.sock"))
    status, config = admin.get("/config/")
    if status != 200:
        raise _Unsupported("the proxy's admin API did not answer")
    return [
        containers,
        [
            proxy.get("Id"),
            proxy.get("Image"),
            sorted(((proxy.get("Config") or {}).get("Labels") or {}).items()),
            _networks(proxy),
            image.get("Id"),
        ],
        hashlib.blake2b(config).hexdigest(),
    ]


def fingerprint(options: dict[str, str], argv: list[str]) -> str:
    """The digest of every input of this run; raises on any doubt."""
    state = state_dir(options)
    catalog = options.get("--catalog")
    parts: list[Any] = [
        RECORD_VERSION,
        _code(),
        argv,
        os.getcwd(),
        sorted(os.environ.items()),
        _terminal(),
        _tree(pathlib.Path(options["source"]), content=True),
        _tree(pathlib.Path(catalog), content=True) if catalog else None,
        _tree(state, content=False, skip=(RECORD_NAME, "proxy/data", "proxy/run")),
        _host(state),
    ]
    return hashlib.blake2b(json.dumps(parts).encode()).hexdigest()


# ----------------------------------------------------------------------------- the run


class _Tee(io.TextIOBase):
    """A stream that copies what is written to the real one: rich asks the real one
    whether it is a terminal and how wide, so the output is the same."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.copy = io.StringIO()

    def write(self, s: str) -> int:
        self.copy.write(s)
        return self.stream.write(s)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class Session:
    """A supported ``apply`` run that missed: records its output if it was a no-op."""

    def __init__(self, record: pathlib.Path, digest: str | None) -> None:
        self.record = record
        self.digest = digest
        self.out = _Tee(sys.stdout)
        self.err = _Tee(sys.stderr)
        sys.stdout = self.out
        sys.stderr = self.err

    def finish(self, code: Any) -> None:
        """After the normal path: write the record, or remove a stale one.  Never raises."""
        sys.stdout, sys.stderr = self.out.stream, self.err.stream
        try:
            if (
                self.digest is not None
                and code in (0, None)
                and _noop["ok"]
                and not self.err.copy.getvalue()
            ):
                _write(self.record, self.digest, self.out.copy.getvalue())
            else:
                self.record.unlink(missing_ok=True)
        except OSError:
            pass


def _write(record: pathlib.Path, digest: str, stdout: str) -> None:
    data = json.dumps({"version": RECORD_VERSION, "fingerprint": digest, "stdout": stdout})
    fd, tmp = tempfile.mkstemp(dir=record.parent, prefix=f".{RECORD_NAME}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.replace(tmp, record)
    except BaseException:
        os.unlink(tmp)
        raise


def _replay(stdout: str, fmt: str, started: float) -> str:
    """The recorded output; a JSON summary gets this run's ``seconds``."""
    if fmt != "json":
        return stdout
    doc = json.loads(stdout)
    if isinstance(doc, dict) and "seconds" in doc:
        doc["seconds"] = round(time.monotonic() - started, 3)
    return json.dumps(doc, indent=2) + "\n"


def begin(argv: list[str]) -> Session | None:
    """Before the CLI is imported: print the recorded no-op and exit 0 when the inputs
    are unchanged; else a :class:`Session` for the normal path to finish (None when this
    form is not supported or the fast path is off)."""
    started = time.monotonic()
    if DISABLE_FLAG in argv or os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return None
    options = parse_apply(argv)
    if options is None:
        return None
    record = state_dir(options) / RECORD_NAME
    try:
        digest: str | None = fingerprint(options, argv)
    except Exception:  # any doubt: the normal path, which will not record either
        digest = None
    try:
        saved = json.loads(record.read_text())
        hit = (
            digest is not None
            and saved.get("version") == RECORD_VERSION
            and saved.get("fingerprint") == digest
            and isinstance(saved.get("stdout"), str)
        )
    except (OSError, ValueError, AttributeError):
        hit = False
    if hit:
        sys.stdout.write(_replay(saved["stdout"], options.get("--format", "text"), started))
        sys.stdout.flush()
        sys.exit(0)
    return Session(record, digest)
