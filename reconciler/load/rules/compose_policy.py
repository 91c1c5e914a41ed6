"""Security policy for compose files: what an app may not ask of the host it runs on.

The reconciler runs compose files it did not write, several apps to a host, with
``docker compose up`` -- which does whatever the file asks.  A single
``privileged: true``, a bind of ``/var/run/docker.sock`` or ``network_mode: host``
hands the app the whole host and every other app on it, and a ``build: ../..`` or an
``env_file: /etc/shadow`` reads files that are not the deployment's.  None of that can
be expressed in JSON Schema (it depends on string syntax, on the filesystem, and on
the repository's policy), so it is checked here, before anything reaches an agent.

The checks are lexical on the file as written.  A value that uses ``${...}``
interpolation is judged only by its literal part before the first ``$``: what a
variable expands to is decided later, where the variables are known.
"""

from __future__ import annotations

import pathlib
import posixpath
from collections import deque
from collections.abc import Iterator
from typing import Any

from reconciler.load.budget import Budget, BudgetExceeded
from reconciler.load.files import load_once
from reconciler.load.yamlsafe import Document
from reconciler.model.errors import InvalidSpec, Problem, Severity

__all__ = ["check_compose_policy"]

_Where = tuple[Any, ...]

# Paths whose bind mount gives a container the host (or the Docker daemon) itself.
_SYSTEM_PATHS = (
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/root",
    "/var/run",
    "/run",
    "/var/lib/docker",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/home",
)

# Capabilities that break out of the container or reach every other container on the
# host.  NET_RAW is in Docker's default set, so flagging it would only add noise.
_DANGEROUS_CAPS = frozenset(
    {
        "ALL",
        "SYS_ADMIN",
        "NET_ADMIN",
        "SYS_PTRACE",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_TIME",
        "DAC_READ_SEARCH",
        "SYS_BOOT",
        "MAC_ADMIN",
        "MAC_OVERRIDE",
        "BPF",
        "PERFMON",
    }
)

# ``security_opt`` values (``=`` normalised to ``:``) that switch a confinement off.
# ``label:type:spc_t``/``unconfined_t`` are SELinux's spelling of the same thing.
_UNCONFINED_OPTS = frozenset(
    {
        "seccomp:unconfined",
        "apparmor:unconfined",
        "label:disable",
        "systempaths:unconfined",
        "label:type:spc_t",
        "label:type:unconfined_t",
    }
)

_HOST_NAMESPACE_KEYS = ("network_mode", "pid", "ipc", "uts", "userns_mode", "cgroup")

_REMOTE_PREFIXES = ("http://", "https://", "git://", "git@", "ssh://", "github.com/")

_TRUE_STRINGS = frozenset({"true", "yes", "y", "on"})

_PRIVILEGED = "compose-privileged"
_HOST_MOUNT = "compose-host-mount"
_HOST_NAMESPACE = "compose-host-namespace"
_DEVICES = "compose-devices"
_CAP_ADD = "compose-cap-add"
_SECURITY_OPT = "compose-security-opt"
_PORTS = "compose-ports"
_PATH_ESCAPE = "compose-path-escape"
_INVALID = "compose-invalid"
_NO_HEALTHCHECK = "compose-no-healthcheck"
_IMAGE_UNPINNED = "compose-image-unpinned"
_ROOT_USER = "compose-root-user"


def check_compose_policy(
    compose: Document,
    *,
    base_dir: pathlib.Path | None,
    allow_host_ports: bool = False,
    routed_services: frozenset[str] = frozenset(),
    budget: Budget | None = None,
) -> list[Problem]:
    """Every way ``compose`` reaches past its own containers and directory, as Problems.

    Collects instead of stopping at the first finding so a user fixes a file in one
    round.  ``base_dir`` adds the on-disk checks that lexical ones cannot do (a
    symlink inside the deployment that points out of it); catalog manifests have no
    directory, so they pass ``None`` and get the lexical checks only.
    ``allow_host_ports`` is the repository's opt-in for apps that must publish ports
    (a mail server, say); ``routed_services`` decides which services need a
    healthcheck for the deploy's health gate to mean anything.  ``budget`` (the
    repository's) bounds the time spent, and loads each included file once.
    """
    budget = budget if budget is not None else Budget()
    checker = _Checker(compose, base_dir, allow_host_ports, routed_services, budget)
    checker.run()
    found = list(checker.problems)
    if base_dir is not None and checker.stopped is None:
        found.extend(
            _check_nested(compose, checker.compose_refs, base_dir, allow_host_ports, budget)
        )
    unique = {(p.file, p.line, p.col, p.rule, p.message): p for p in found}  # a cycle repeats
    return sorted(unique.values(), key=lambda p: (p.file != compose.name, p.file, p.line, p.col))


# How deep ``include``/``extends`` chains are followed; Compose itself has no limit, but a
# deployment that nests compose files deeper than this is refused rather than half-checked.
MAX_NESTED_COMPOSE = 8


def _check_nested(
    compose: Document,
    refs: list[tuple[_Where, str]],
    base_dir: pathlib.Path,
    allow_host_ports: bool,
    budget: Budget,
) -> list[Problem]:
    """The policy on every compose file ``compose`` includes or extends, each file once.

    Without this a deployment could keep its main file clean and put ``privileged:
    true`` or a Docker socket bind in an ``include:``d file, which ``docker compose``
    merges in at deploy time.  Nested files are judged against their own directory
    (Compose resolves their relative paths there), which must itself be inside the
    deployment directory (the reference was checked before it is followed).

    Breadth first, with one set of files seen for the whole tree: a file reached on
    many paths is checked once, at the shallowest depth it is reached (following
    every path was N^depth checks), and a cycle ends where it closes.  A file's
    findings are kept in ``budget`` for the other deployments that include it.
    """
    problems: list[Problem] = []
    seen: set[pathlib.Path] = set()
    queue: deque[tuple[Document, list[tuple[_Where, str]], pathlib.Path, int]] = deque(
        [(compose, refs, base_dir, 0)]
    )
    while queue:
        doc, doc_refs, base, depth = queue.popleft()
        for where, value in doc_refs:
            if "$" in value:
                continue  # decided at deploy time; the interpolated pass sees the literal
            target = _safe_resolve(base / value)
            if target is None or target in seen or not target.is_file():
                continue  # missing: Compose fails loudly at deploy; a cycle: already checked
            name = posixpath.normpath(posixpath.join(posixpath.dirname(doc.name), value))
            if depth >= MAX_NESTED_COMPOSE:
                problems.append(
                    doc.problem(
                        where,
                        "compose-invalid",
                        f"'{value}' nests compose files more than {MAX_NESTED_COMPOSE} deep",
                        "flatten the include/extends chain",
                    )
                )
                continue
            seen.add(target)
            try:
                budget.tick()
                nested = load_once(target, name, budget)
            except BudgetExceeded as exc:
                problems.append(doc.problem(where, exc.rule, exc.message, exc.fix))
                return problems
            except InvalidSpec as exc:
                problems.extend(exc.problems)
                if budget.exhausted is not None:
                    return problems
                continue
            key = (target, allow_host_ports)
            if key not in budget.checked:
                checker = _Checker(nested, target.parent, allow_host_ports, frozenset(), budget)
                checker.run()
                budget.checked[key] = (checker.problems, checker.compose_refs, checker.stopped)
            found, nested_refs, stopped = budget.checked[key]
            problems.extend(found)
            if stopped is not None:
                return problems
            queue.append((nested, nested_refs, target.parent, depth + 1))
    return problems


# --------------------------------------------------------------------------- helpers


def _is_true(value: Any) -> bool:
    """Compose casts ``"yes"``/``"on"`` strings to booleans after interpolation, too."""
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() in _TRUE_STRINGS


def _entries(value: Any) -> Iterator[tuple[tuple[int, ...], Any]]:
    """``(sub-path, item)`` for a list, or the value itself when a list was expected.

    Compose rejects a scalar where it wants a list, but the policy must not depend on
    that: a malformed value is still reported, at its key.
    """
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield (i,), item
    elif value is not None and value != {} and value != "":
        yield (), value


def _judged_prefix(value: str) -> str | None:
    """The part of ``value`` whose meaning is known before interpolation, or None.

    For a relative path only whole segments count: ``..${X}`` could expand to
    ``..foo``, a name inside the directory.  An absolute or ``~`` path stays one
    whatever follows.
    """
    cut = value.find("$")
    if cut < 0:
        return value or None
    prefix = value[:cut]
    if prefix.startswith(("/", "~")):
        return prefix
    slash = prefix.rfind("/")
    return prefix[: slash + 1] if slash >= 0 else None


def _norm_abs(path: str) -> str:
    """``posixpath.normpath`` keeps a leading ``//``; the kernel does not care."""
    return "/" + posixpath.normpath(path).lstrip("/")


def _system_path(path: str) -> str | None:
    if path == "/":
        return "/"
    for system in _SYSTEM_PATHS:
        if path == system or path.startswith(system + "/"):
            return system
    return None


def _is_remote(value: str) -> bool:
    lowered = value.strip().lower()
    return lowered.startswith(_REMOTE_PREFIXES) or "://" in lowered


def _is_docker_socket(source: str) -> bool:
    """Also catches a socket hidden in an interpolation default (``${S:-/…/docker.sock}``)."""
    return source.rstrip("}").rstrip("/").endswith("docker.sock")


def _split_volume(spec: str) -> list[str]:
    """Split ``src:dst[:mode]`` on colons outside ``${...}`` (``${X:-/a}`` is one part)."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    i = 0
    while i < len(spec):
        ch = spec[i]
        if ch == "$" and spec.startswith("${", i):
            depth += 1
            current.append("${")
            i += 2
            continue
        if ch == "}" and depth:
            depth -= 1
        elif ch == ":" and not depth:
            parts.append("".join(current))
            current = []
            i += 1
            continue
        current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _basename(path: str, default: str) -> str:
    name = posixpath.basename(posixpath.normpath(path.rstrip("/"))) if path else ""
    return name if name not in ("", ".", "..", "/") and "$" not in name else default


def _render_port(entry: Any) -> str:
    if isinstance(entry, dict):
        parts = [str(entry[k]) for k in ("host_ip", "published", "target") if k in entry]
        text = ":".join(parts) or "?"
        protocol = entry.get("protocol")
        return f"{text}/{protocol}" if isinstance(protocol, str) and protocol else text
    return str(entry)


def _safe_resolve(path: pathlib.Path) -> pathlib.Path | None:
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):
        return None


# --------------------------------------------------------------------------- checker


class _Checker:
    """One pass over one compose document; state is only the findings so far."""

    def __init__(
        self,
        doc: Document,
        base_dir: pathlib.Path | None,
        allow_host_ports: bool,
        routed_services: frozenset[str],
        budget: Budget,
    ) -> None:
        self.doc = doc
        self.base_dir = base_dir
        self.base_real = _safe_resolve(base_dir) if base_dir is not None else None
        self.allow_host_ports = allow_host_ports
        self.routed_services = routed_services
        self.budget = budget
        self.problems: list[Problem] = []
        # set when the budget ran out: the findings so far are all there will be
        self.stopped: BudgetExceeded | None = None
        # compose files this one pulls in (``include``, ``extends.file``) that stay inside
        # the deployment directory: the caller checks them with the same policy
        self.compose_refs: list[tuple[_Where, str]] = []
        self.at: _Where = ()  # where the check is, to place a budget that runs out

    # -- reporting

    def error(self, where: _Where, rule: str, message: str, fix: str) -> None:
        self.problems.append(self.doc.problem(where, rule, message, fix))

    def warn(self, where: _Where, rule: str, message: str, fix: str) -> None:
        self.problems.append(self.doc.problem(where, rule, message, fix, severity=Severity.WARNING))

    # -- structure

    def run(self) -> None:
        try:
            self.check_document()
        except BudgetExceeded as exc:
            self.stopped = exc
            self.problems.append(self.doc.problem(self.at, exc.rule, exc.message, exc.fix))

    def check_document(self) -> None:
        data = self.doc.data
        if not isinstance(data, dict):
            self.error(
                (),
                _INVALID,
                "a compose file must be a mapping with a `services:` key",
                "start the file with `services:` and one mapping per service under it",
            )
            return
        services = data.get("services")
        if not isinstance(services, dict):
            present = "services" in data
            self.error(
                ("services",) if present else (),
                _INVALID,
                "`services:` must be a mapping of service names to services"
                if present
                else "the compose file has no `services:` mapping",
                "add `services:` with one mapping per service, e.g. `services: {app: {image: …}}`",
            )
        else:
            for name, service in services.items():
                where: _Where = ("services", name)
                self.at = where
                self.budget.tick()
                if not isinstance(service, dict):
                    self.error(
                        where,
                        _INVALID,
                        f"service '{name}' must be a mapping",
                        f"give service '{name}' its settings as a mapping, "
                        "e.g. `image: …` indented under it",
                    )
                    continue
                self.check_service(where, str(name), service)
        self.check_top_level(data)

    def check_service(self, where: _Where, name: str, svc: dict[Any, Any]) -> None:
        self.check_privileged(where, name, svc)
        self.check_namespaces(where, name, svc)
        self.check_devices(where, name, svc)
        self.check_caps(where, name, svc)
        self.check_security_opt(where, name, svc)
        self.check_ports(where, name, svc)
        self.check_volumes(where, name, svc)
        self.check_build(where, name, svc)
        self.check_file_lists(where, name, svc)
        self.check_healthcheck(where, name, svc)
        self.check_image(where, name, svc)
        self.check_user(where, name, svc)

    # -- service: privileges

    def check_privileged(self, where: _Where, name: str, svc: dict[Any, Any]) -> None:
        if _is_true(svc.get("privileged")):
            self.error(
                (*where, "privileged"),
                _PRIVILEGED,
                f"service '{name}' runs privileged: every capability and every host "
                "device, which is root on the host",
                f"remove `privileged: true` from service '{name}'",
            )

    def check_namespaces(self, where: _Where, name: str, svc: dict[Any, Any]) -> None:
        for key in _HOST_NAMESPACE_KEYS:
            value = svc.get(key)
            if isinstance(value, str) and value.strip().lower() == "host":
                what = "network" if key == "network_mode" else key.removesuffix("_mode")
                self.error(
                    (*where, key),
                    _HOST_NAMESPACE,
                    f"service '{name}' shares the host's {what} namespace (`{key}: host`)",
                    f"remove `{key}: host` from service '{name}'"
                    + (
                        " and let the proxy reach it over the proxy network"
                        if key == "network_mode"
                        else ""
                    ),
                )

    def check_devices(self, where: _Where, name: str, svc: dict[Any, Any]) -> None:
        for key, what in (("devices", "maps host device"), ("device_cgroup_rules", "allows")):
            for sub, entry in _entries(svc.get(key)):
                shown = entry.get("source", entry) if isinstance(entry, dict) else entry
                self.error(
                    (*where, key, *sub),
                    _DEVICES,
                    f"service '{name}' {what} '{shown}'"
                    + (" into the container" if key == "devices" else " host device access")
                    + "; apps on a shared host get no host devices",
                    f"remove `{shown}` from `{key}:` of service '{name}'",
                )

    def check_caps(self, where: _Where, name: str, svc: dict[Any, Any]) -> None:
        for sub, entry in _entries(svc.get("cap_add")):
            if not isinstance(entry, str):
                continue
            cap = entry.strip().upper().removeprefix("CAP_")
            if cap in _DANGEROUS_CAPS:
                self.error(
                    (*where, "cap_add", *sub),
                    _CAP_ADD,
                    f"service '{name}' adds capability {cap}, which escapes the container "
                    "or reaches other containers on the host",
                    f"remove `{entry}` from `cap_add:` of service '{name}'",
                )

    def check_security_opt(self, where: _Where, name: str, svc: dict[Any, Any]) -> None:
        for sub, entry in _entries(svc.get("security_opt")):
            if not isinstance(entry, str):
                continue
            normal = entry.strip().lower().replace("=", ":").replace(" ", "")
            if normal in _UNCONFINED_OPTS:
                self.error(
                    (*where, "security_opt", *sub),
                    _SECURITY_OPT,
                    f"service '{name}' switches off its confinement (`{entry}`)",
                    f"remove `{entry}` from `security_opt:` of service '{name}'",
                )

    def check_ports(self, where: _Where, name: str, svc: dict[Any, Any]) -> None:
        if self.allow_host_ports:
            return
        for sub, entry in _entries(svc.get("ports")):
            shown = _render_port(entry)
            self.error(
                (*where, "ports", *sub),
                _PORTS,
                f"service '{name}' publishes port {shown} on the host, which bypasses the "
                "proxy (no TLS, no routing, a clash with other apps)",
                f"remove `{shown}` from `ports:` of service '{name}' and route it through "
                "the proxy (`network.reverse_proxy.routes`), or list this deployment under "
                "`policy.allow_host_ports` in reconcile.yaml",
            )

    # -- service: mounts

    def check_volumes(self, where: _Where, name: str, svc: dict[Any, Any]) -> None:
        for sub, entry in _entries(svc.get("volumes")):
            at: _Where = (*where, "volumes", *sub)
            self.at = at
            self.budget.tick()
            if isinstance(entry, str):
                parts = _split_volume(entry)
                if len(parts) < 2:
                    continue  # an anonymous volume: a container path only
                source, target = parts[0], parts[1]
                mode = f":{parts[2]}" if len(parts) > 2 and parts[2] else ""
                if _is_docker_socket(source) or source.startswith(("/", "~", ".")):
                    self.check_bind(
                        at,
                        f"service '{name}'",
                        source,
                        shown=entry,
                        fix="mount a path under ./data/ instead, "
                        f"e.g. `./data/{name}:{target}{mode}`",
                    )
            elif isinstance(entry, dict):
                kind, long_source = entry.get("type"), entry.get("source")
                if not isinstance(long_source, str):
                    continue
                is_bind = kind == "bind" or (
                    kind is None and long_source.startswith(("/", "~", "."))
                )
                if is_bind or _is_docker_socket(long_source):
                    self.check_bind(
                        (*at, "source"),
                        f"service '{name}'",
                        long_source,
                        shown=f"source: {long_source}",
                        fix=f"mount a path under ./data/ instead, e.g. `source: ./data/{name}`",
                    )

    def check_bind(self, where: _Where, subject: str, source: str, *, shown: str, fix: str) -> None:
        """Classify one bind source: the daemon, the host, outside the directory, or fine."""
        if _is_docker_socket(source):
            self.error(
                where,
                _HOST_MOUNT,
                f"{subject} mounts the Docker socket ({source}), which controls every "
                "container on the host",
                f"remove the `{shown}` mount from {subject}; apps may not drive the host's "
                "Docker daemon",
            )
            return
        judged = _judged_prefix(source)
        if judged is None:
            return
        if judged.startswith("/"):
            whole = judged if judged == source else judged[: judged.rfind("/") + 1]
            normal = _norm_abs(whole)
            system = _system_path(normal) if judged == source or normal != "/" else None
            if system == "/":
                message = f"{subject} mounts the host's root filesystem"
            elif system is not None:
                message = f"{subject} mounts {source}, a host system path (under {system})"
            else:
                message = (
                    f"{subject} mounts the absolute host path {source}; a deployment's data "
                    "belongs under ./data/ in its own directory"
                )
            self.error(where, _HOST_MOUNT, message, fix)
        elif judged.startswith("~"):
            self.error(where, _HOST_MOUNT, f"{subject} mounts {source} from a home directory", fix)
        else:
            reason = self.escape_reason(judged)
            if reason is not None:
                self.error(where, _PATH_ESCAPE, f"{subject} mounts {source}, which {reason}", fix)

    # -- service: files it reads

    def check_build(self, where: _Where, name: str, svc: dict[Any, Any]) -> None:
        build = svc.get("build")
        at: _Where = (*where, "build")
        if isinstance(build, str):
            self.check_context(at, name, build, "build")
            return
        if not isinstance(build, dict):
            return
        context = build.get("context", ".")
        context_ok = "context" not in build or self.check_context(
            (*at, "context"), name, context, "build.context"
        )
        dockerfile = build.get("dockerfile")
        # relative to the context: judged only once the context itself is fine
        if isinstance(dockerfile, str) and isinstance(context, str) and context_ok:
            if dockerfile.startswith(("/", "~")):
                joined = dockerfile
            else:
                base = _judged_prefix(context)
                joined = posixpath.join(base, dockerfile) if base is not None else ""
            self.check_path(
                (*at, "dockerfile"),
                joined,
                f"service '{name}': build.dockerfile '{dockerfile}'",
                "put the Dockerfile inside the build context and set "
                f"`dockerfile: {_basename(dockerfile, 'Dockerfile')}`",
            )
        self.check_additional_contexts((*at, "additional_contexts"), name, build)
        if _is_true(build.get("privileged")):
            self.error(
                (*at, "privileged"),
                _PRIVILEGED,
                f"service '{name}' builds privileged: build steps run as root on the host",
                f"remove `privileged: true` from `build:` of service '{name}'",
            )
        network = build.get("network")
        if isinstance(network, str) and network.strip().lower() == "host":
            self.error(
                (*at, "network"),
                _HOST_NAMESPACE,
                f"service '{name}' builds in the host's network namespace (`network: host`)",
                f"remove `network: host` from `build:` of service '{name}'",
            )
        for sub, entry in _entries(build.get("entitlements")):
            if not isinstance(entry, str):
                continue
            rule = {"security.insecure": _PRIVILEGED, "network.host": _HOST_NAMESPACE}.get(
                entry.strip().lower()
            )
            if rule is not None:
                self.error(
                    (*at, "entitlements", *sub),
                    rule,
                    f"service '{name}' grants its build the `{entry}` entitlement, "
                    "which reaches the host",
                    f"remove `{entry}` from `build.entitlements:` of service '{name}'",
                )

    def check_context(self, where: _Where, name: str, context: Any, key: str) -> bool:
        """Report a remote or escaping context; True when the context is acceptable."""
        if not isinstance(context, str):
            return False
        fix_key = where[-1] if isinstance(where[-1], str) else "build"
        if _is_remote(context):
            self.error(
                where,
                _PATH_ESCAPE,
                f"service '{name}': {key} '{context}' is remote; remote build contexts "
                "are not allowed",
                "put the sources in the repository, inside the deployment directory, and "
                f"use `{fix_key}: ./{_basename(context.split('#')[0], name).removesuffix('.git')}`",
            )
            return False
        return self.check_path(
            where,
            context,
            f"service '{name}': {key} '{context}'",
            "move the build context inside the deployment directory and use "
            f"`{fix_key}: ./{_basename(context, name)}`",
        )

    def check_additional_contexts(self, where: _Where, name: str, build: dict[Any, Any]) -> None:
        raw = build.get("additional_contexts")
        items: list[tuple[_Where, str]] = []
        if isinstance(raw, dict):
            items = [((*where, k), v) for k, v in raw.items() if isinstance(v, str)]
        elif isinstance(raw, list):
            items = [
                ((*where, i), v.split("=", 1)[1])
                for i, v in enumerate(raw)
                if isinstance(v, str) and "=" in v
            ]
        for at, value in items:
            lowered = value.strip().lower()
            if lowered.startswith(("docker-image://", "service:", "target:")):
                continue  # an image or another build, not a directory
            if lowered.startswith("oci-layout://"):
                value = value.strip()[len("oci-layout://") :]
            self.check_context(at, name, value, "build.additional_contexts")

    def check_file_lists(self, where: _Where, name: str, svc: dict[Any, Any]) -> None:
        for key in ("env_file", "label_file"):
            for sub, entry in _entries(svc.get(key)):
                at: _Where = (*where, key, *sub)
                value: Any = entry
                if isinstance(entry, dict):
                    value, at = entry.get("path"), (*at, "path")
                if isinstance(value, str):
                    self.check_path(
                        at,
                        value,
                        f"service '{name}': {key} '{value}'",
                        f"copy the file into the deployment directory and use "
                        f"`{key}: ./{_basename(value, key)}`",
                    )
        extends = svc.get("extends")
        if isinstance(extends, dict) and isinstance(extends.get("file"), str):
            value = extends["file"]
            if self.check_file_ref(
                (*where, "extends", "file"),
                value,
                f"service '{name}': extends.file '{value}'",
                f"copy the file into the deployment directory and use "
                f"`file: ./{_basename(value, 'compose.yaml')}`",
            ):
                self.compose_refs.append(((*where, "extends", "file"), value))

    # -- service: warnings

    def check_healthcheck(self, where: _Where, name: str, svc: dict[Any, Any]) -> None:
        if name not in self.routed_services:
            return
        health = svc.get("healthcheck")
        disabled: _Where | None = None
        if isinstance(health, dict):
            test = health.get("test")
            if _is_true(health.get("disable")):
                disabled = (*where, "healthcheck", "disable")
            elif test == "NONE" or (isinstance(test, list) and test[:1] == ["NONE"]):
                disabled = (*where, "healthcheck", "test")
        if health is not None and disabled is None:
            return
        self.warn(
            disabled or where,
            _NO_HEALTHCHECK,
            f"routed service '{name}' has "
            + ("its healthcheck disabled" if disabled else "no healthcheck")
            + ", so a deploy cannot tell when it is ready to serve and a broken update "
            "is not rolled back",
            f"add a `healthcheck:` to service '{name}', e.g. `healthcheck: {{test: "
            '["CMD-SHELL", "wget -q --spider http://localhost:PORT/ || exit 1"], '
            "interval: 10s}` (ignore this if the image declares its own HEALTHCHECK)",
        )

    def check_image(self, where: _Where, name: str, svc: dict[Any, Any]) -> None:
        image = svc.get("image")
        if "build" in svc or not isinstance(image, str) or not image.strip():
            return  # built here: `image:` only names the result
        if "$" in image or "@" in image:
            return  # decided at deploy time, or pinned by digest
        last = image.rsplit("/", 1)[-1]
        repo, _, tag = image.rpartition(":") if ":" in last else (image, "", "")
        if tag and tag != "latest":
            return
        self.warn(
            (*where, "image"),
            _IMAGE_UNPINNED,
            f"service '{name}' image '{image}' "
            + ("has no tag" if not tag else "uses the moving tag `latest`")
            + ", so two hosts (or two deploys) may run different versions",
            f"pin a version: `image: {repo}:<version>`, or a digest "
            f"`image: {repo}@sha256:<digest>`",
        )

    def check_user(self, where: _Where, name: str, svc: dict[Any, Any]) -> None:
        user = svc.get("user")
        if isinstance(user, bool) or not isinstance(user, (str, int)):
            return
        if str(user).strip().split(":", 1)[0] in ("root", "0"):
            self.warn(
                (*where, "user"),
                _ROOT_USER,
                f"service '{name}' runs as root (`user: {user}`); a container escape "
                "then lands as root on the host",
                f"run service '{name}' as an unprivileged user, e.g. `user: \"1000:1000\"`, "
                "or remove `user:` if the image already sets one",
            )

    # -- top level

    def check_top_level(self, data: dict[Any, Any]) -> None:
        for section in ("secrets", "configs"):
            defs = data.get(section)
            if not isinstance(defs, dict):
                continue
            for key, spec in defs.items():
                if isinstance(spec, dict) and isinstance(spec.get("file"), str):
                    value = spec["file"]
                    self.check_path(
                        (section, key, "file"),
                        value,
                        f"{section[:-1]} '{key}': file '{value}'",
                        "copy the file into the deployment directory and set "
                        f"`file: ./{_basename(value, str(key))}`",
                    )
        self.check_include(data.get("include"))
        self.check_volume_defs(data.get("volumes"))
        self.check_network_defs(data.get("networks"))

    def check_include(self, include: Any) -> None:
        fix_for = "copy the file into the deployment directory and use `{key}: ./{base}`"
        for sub, entry in _entries(include):
            at: _Where = ("include", *sub)
            refs: list[tuple[_Where, Any, str]] = []
            if isinstance(entry, str):
                refs.append((at, entry, "path"))
            elif isinstance(entry, dict):
                for key in ("path", "env_file"):
                    refs.extend(
                        ((*at, key, *inner), value, key)
                        for inner, value in _entries(entry.get(key))
                    )
                refs.append(((*at, "project_directory"), entry.get("project_directory"), ""))
            for ref_at, value, key in refs:
                if not isinstance(value, str):
                    continue
                fix = (
                    fix_for.format(key=key, base=_basename(value, "compose.yaml"))
                    if key
                    else "remove `project_directory:`; included files resolve from the "
                    "deployment directory"
                )
                label = f"include {key or 'project_directory'} '{value}'"
                if self.check_file_ref(ref_at, value, label, fix) and key == "path":
                    self.compose_refs.append((ref_at, value))

    def check_volume_defs(self, volumes: Any) -> None:
        if not isinstance(volumes, dict):
            return
        for key, spec in volumes.items():
            opts = spec.get("driver_opts") if isinstance(spec, dict) else None
            if not isinstance(opts, dict):
                continue
            o, device = opts.get("o"), opts.get("device")
            if not isinstance(o, str) or not isinstance(device, str):
                continue
            if not {part.strip() for part in o.split(",")} & {"bind", "rbind"}:
                continue
            self.check_bind(
                ("volumes", key, "driver_opts", "device"),
                f"volume '{key}'",
                device,
                shown=f"device: {device}",
                fix=f"drop `driver_opts` from volume '{key}' (a plain named volume keeps its "
                f"data in Docker) or bind-mount `./data/{key}` in the service",
            )

    def check_network_defs(self, networks: Any) -> None:
        """``networks: {x: {external: true, name: host}}`` is ``network_mode: host`` in disguise."""
        if not isinstance(networks, dict):
            return
        for key, spec in networks.items():
            spec = spec if isinstance(spec, dict) else {}
            external = spec.get("external")
            names: list[tuple[_Where, Any]] = [(("networks", key, "name"), spec.get("name"))]
            if isinstance(external, dict):
                names.append((("networks", key, "external", "name"), external.get("name")))
            elif _is_true(external) and "name" not in spec:
                names.append((("networks", key), key))
            for at, value in names:
                if isinstance(value, str) and value.strip().lower() == "host":
                    self.error(
                        at,
                        _HOST_NAMESPACE,
                        f"network '{key}' is the host's network namespace",
                        f"remove network '{key}' and let the proxy reach the app over the "
                        "proxy network",
                    )

    # -- paths

    def check_file_ref(self, where: _Where, value: str, label: str, fix: str) -> bool:
        """A reference to another compose/env file: a URL is as foreign as ``../``.
        True when it stays inside the deployment directory."""
        if _is_remote(value):
            self.error(
                where,
                _PATH_ESCAPE,
                f"{label} is remote; remote files are not allowed",
                f"put it in the repository: {fix}",
            )
            return False
        return self.check_path(where, value, label, fix)

    def check_path(self, where: _Where, value: str, label: str, fix: str) -> bool:
        """Report ``value`` if it leaves the deployment directory; True when it does not."""
        judged = _judged_prefix(value)
        if judged is None:
            return True
        reason: str | None
        if judged.startswith("/"):
            reason = "is an absolute path, outside the deployment directory"
        elif judged.startswith("~"):
            reason = "is in a home directory, outside the deployment directory"
        else:
            reason = self.escape_reason(judged)
        if reason is None:
            return True
        self.error(where, _PATH_ESCAPE, f"{label} {reason}", fix)
        return False

    def escape_reason(self, relative: str) -> str | None:
        """Why a relative path leaves the directory: by ``..``, or through a symlink.

        The on-disk check does not require the target to exist: Docker creates a
        missing bind source, following the symlink that points at it.
        """
        normal = posixpath.normpath(relative)
        if normal == ".." or normal.startswith("../"):
            return "leaves the deployment directory"
        if self.base_dir is None or self.base_real is None:
            return None
        resolved = _safe_resolve(self.base_dir / normal)
        if resolved is None:
            return "cannot be resolved on disk (a symlink loop?)"
        if resolved.is_relative_to(self.base_real):
            return None
        return f"resolves to {resolved}, outside the deployment directory (a symlink points out)"
