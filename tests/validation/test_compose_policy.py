"""The compose security policy: each rule fires where it must, and only there.

Every rule is pinned by its code, its exact position (so an editor jumps to the right
key) and its fix text, next to the closest allowed spelling, which must stay silent:
a policy that cries wolf gets switched off.
"""

from __future__ import annotations

import os
import pathlib
import textwrap
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.load.rules.compose_policy import check_compose_policy
from reconciler.load.yamlsafe import Document, load_yaml
from reconciler.model.errors import Problem, Severity


def check(text: str, **kw: Any) -> list[Problem]:
    kw.setdefault("base_dir", None)
    return check_compose_policy(load_yaml(textwrap.dedent(text), "compose.yaml"), **kw)


def rules(problems: list[Problem]) -> list[str]:
    return [p.rule for p in problems]


def one(problems: list[Problem], rule: str) -> Problem:
    found = [p for p in problems if p.rule == rule]
    assert len(found) == 1, [p.render() for p in problems]
    return found[0]


def at(problem: Problem) -> tuple[int, int]:
    return (problem.line, problem.col)


def service(body: str, name: str = "app") -> str:
    """A compose file whose service ``name`` starts on line 2; ``body`` from line 3, col 5."""
    indented = textwrap.indent(textwrap.dedent(body), "    ")
    return f"services:\n  {name}:\n{indented}"


# --------------------------------------------------------------------------- clean


def test_a_clean_file_has_no_findings() -> None:
    assert (
        check(
            """\
            services:
              app:
                image: nginx:1.27
                user: "1000:1000"
                expose: ["80"]
                volumes:
                  - ./data/app:/var/lib/app
                  - cache:/cache
                  - /tmp/anonymous
                  - type: volume
                    source: cache
                    target: /more
                  - type: tmpfs
                    target: /run/app
                networks: [impreza-proxy]
                healthcheck: {test: ["CMD", "true"]}
                cap_add: [NET_BIND_SERVICE, NET_RAW, CHOWN]
                security_opt: ["no-new-privileges:true"]
                network_mode: bridge
            volumes:
              cache: {}
            networks:
              impreza-proxy: {external: true}
            """,
            routed_services=frozenset({"app"}),
        )
        == []
    )


# --------------------------------------------------------------------------- invalid


@pytest.mark.parametrize(
    ("text", "pos", "message"),
    [
        ("- a\n- b\n", (1, 1), "must be a mapping"),
        ("volumes: {}\n", (1, 1), "has no `services:` mapping"),
        ("x: 1\nservices: [app]\n", (2, 1), "must be a mapping of service names"),
        ("just a string\n", (1, 1), "must be a mapping"),
    ],
)
def test_invalid_document(text: str, pos: tuple[int, int], message: str) -> None:
    problems = check(text)
    assert rules(problems) == ["compose-invalid"]
    assert at(problems[0]) == pos
    assert message in problems[0].message
    assert problems[0].fix is not None
    assert "`services:`" in problems[0].fix


def test_empty_document_is_invalid() -> None:
    doc = load_yaml("", "compose.yaml")
    assert rules(check_compose_policy(doc, base_dir=None)) == ["compose-invalid"]


def test_broken_service_is_reported_and_the_others_still_checked() -> None:
    problems = check(
        """\
        services:
          broken: just-a-string
          empty:
          app:
            privileged: true
        """
    )
    assert [(p.rule, p.line, p.col) for p in problems] == [
        ("compose-invalid", 2, 3),
        ("compose-invalid", 3, 3),
        ("compose-privileged", 5, 5),
    ]
    assert "service 'broken' must be a mapping" in problems[0].message


def test_top_level_sections_are_checked_even_without_services() -> None:
    problems = check(
        """\
        secrets:
          key: {file: /etc/ssl/private/key.pem}
        """
    )
    assert rules(problems) == ["compose-invalid", "compose-path-escape"]


# --------------------------------------------------------------------------- privileged


@pytest.mark.parametrize("value", ["true", "yes", '"true"', "on"])
def test_privileged(value: str) -> None:
    p = one(check(service(f"image: a:1\nprivileged: {value}\n")), "compose-privileged")
    assert at(p) == (4, 5)
    assert p.severity is Severity.ERROR
    assert p.fix == "remove `privileged: true` from service 'app'"


@pytest.mark.parametrize("value", ["false", "no", '"false"', "${PRIV}"])
def test_not_privileged(value: str) -> None:
    assert check(service(f"image: a:1\nprivileged: {value}\n")) == []


def test_privileged_build_and_insecure_entitlement() -> None:
    problems = check(
        service(
            """\
            build:
              context: ./app
              privileged: true
              entitlements: [security.insecure]
            """
        )
    )
    assert [(p.rule, p.line, p.col) for p in problems] == [
        ("compose-privileged", 5, 7),
        ("compose-privileged", 6, 22),
    ]
    assert "from `build:` of service 'app'" in (problems[0].fix or "")


# --------------------------------------------------------------------------- host mounts


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("/var/run/docker.sock:/var/run/docker.sock", "Docker socket"),
        ("/run/docker.sock:/var/run/docker.sock:ro", "Docker socket"),
        ("/home/me/.docker/desktop/docker.sock:/s", "Docker socket"),
        ("${SOCK:-/var/run/docker.sock}:/var/run/docker.sock", "Docker socket"),
        ("/:/host", "root filesystem"),
        ("/etc:/host-etc:ro", "host system path (under /etc)"),
        ("/etc/passwd:/etc/passwd:ro", "host system path (under /etc)"),
        ("//proc/../sys/kernel:/k", "host system path (under /sys)"),
        ("/var/lib/docker/volumes:/v", "host system path (under /var/lib/docker)"),
        ("/home/alice:/alice", "host system path (under /home)"),
        ("/usr/bin:/b", "host system path (under /usr)"),
        ("/dev:/dev", "host system path (under /dev)"),
        ("/srv/app:/var/lib/app", "absolute host path /srv/app"),
        ("/${DATA}:/data", "absolute host path"),
        ("~/secrets:/secrets", "home directory"),
    ],
)
def test_host_mount_short_syntax(entry: str, message: str) -> None:
    p = one(check(service(f"image: a:1\nvolumes:\n  - {entry}\n")), "compose-host-mount")
    assert at(p) == (5, 9)
    assert message in p.message
    assert p.fix is not None
    if "socket" in message:
        assert f"remove the `{entry}` mount from service 'app'" in p.fix
    else:
        target = entry.split(":")[1]
        assert p.fix.startswith("mount a path under ./data/ instead, e.g. `./data/app:" + target)


def test_host_mount_fix_keeps_the_mode() -> None:
    p = one(check(service("volumes: [/srv/app:/var/lib/app:ro]\n")), "compose-host-mount")
    assert p.fix == "mount a path under ./data/ instead, e.g. `./data/app:/var/lib/app:ro`"


@pytest.mark.parametrize(
    "entry",
    [
        "./data/app:/var/lib/app",
        "./data:/data:ro",
        ".:/app",
        "data:/var/lib/app",
        "named-volume:/x:ro",
        "/only/a/container/path",
        "${DATA_DIR}/app:/data",
        "./data/${APP}:/data",
        "./docker.socket.d:/x",
    ],
)
def test_allowed_short_mounts(entry: str) -> None:
    assert check(service(f"image: a:1\nvolumes:\n  - {entry}\n")) == []


def test_host_mount_long_syntax() -> None:
    problems = check(
        service(
            """\
            image: a:1
            volumes:
              - type: bind
                source: /var/run/docker.sock
                target: /var/run/docker.sock
              - type: bind
                source: /etc
                target: /host/etc
                read_only: true
              - type: volume
                source: data
                target: /data
              - type: bind
                source: ./data/app
                target: /app
            """
        )
    )
    assert [(p.rule, p.line, p.col) for p in problems] == [
        ("compose-host-mount", 6, 9),
        ("compose-host-mount", 9, 9),
    ]
    assert "Docker socket" in problems[0].message
    assert problems[1].fix == "mount a path under ./data/ instead, e.g. `source: ./data/app`"


def test_host_mount_through_a_volume_definition() -> None:
    problems = check(
        """\
        services:
          app:
            image: a:1
            volumes: [hostdata:/data, plain:/plain, nfs:/nfs]
        volumes:
          hostdata:
            driver: local
            driver_opts:
              type: none
              o: bind
              device: /srv/hostdata
          plain: {}
          nfs:
            driver_opts: {type: nfs, o: "addr=10.0.0.1,rw", device: ":/export"}
        """
    )
    p = one(problems, "compose-host-mount")
    assert at(p) == (11, 7)
    assert "volume 'hostdata' mounts the absolute host path /srv/hostdata" in p.message
    assert p.fix is not None
    assert "drop `driver_opts` from volume 'hostdata'" in p.fix
    assert len(problems) == 1


def test_volume_definition_escaping_by_relative_device() -> None:
    p = one(
        check(
            """\
            services: {}
            volumes:
              up: {driver_opts: {type: none, o: "rbind,ro", device: ../../elsewhere}}
            """
        ),
        "compose-path-escape",
    )
    assert at(p) == (3, 49)


# --------------------------------------------------------------------------- namespaces


@pytest.mark.parametrize("key", ["network_mode", "pid", "ipc", "uts", "userns_mode", "cgroup"])
def test_host_namespace(key: str) -> None:
    p = one(check(service(f"image: a:1\n{key}: host\n")), "compose-host-namespace")
    assert at(p) == (4, 5)
    assert p.fix is not None
    assert p.fix.startswith(f"remove `{key}: host` from service 'app'")


@pytest.mark.parametrize(
    "line",
    [
        "network_mode: bridge",
        "network_mode: none",
        'network_mode: "service:db"',
        'network_mode: "container:sidecar"',
        'pid: "service:db"',
        "ipc: shareable",
        "ipc: private",
        'userns_mode: ""',
    ],
)
def test_not_host_namespace(line: str) -> None:
    assert check(service(f"image: a:1\n{line}\n")) == []


@pytest.mark.parametrize(
    ("networks", "pos"),
    [
        ("networks:\n  host: {external: true}\n", (6, 3)),
        ("networks:\n  hostnet: {external: true, name: host}\n", (6, 29)),
        ("networks:\n  hostnet:\n    external: {name: host}\n", (7, 16)),
    ],
)
def test_host_network_declared_as_a_network(networks: str, pos: tuple[int, int]) -> None:
    text = service("image: a:1\nnetworks: [x]\n") + networks
    p = one(check(text), "compose-host-namespace")
    assert at(p) == pos
    assert "the host's network namespace" in p.message


def test_external_proxy_network_is_fine() -> None:
    text = service("image: a:1\n") + "networks:\n  impreza-proxy: {external: true}\n"
    assert check(text) == []


def test_build_on_host_network() -> None:
    p = one(
        check(service("build: {context: ., network: host}\n")),
        "compose-host-namespace",
    )
    assert at(p) == (3, 25)
    assert p.fix == "remove `network: host` from `build:` of service 'app'"


# --------------------------------------------------------------------------- devices


def test_devices() -> None:
    problems = check(
        service(
            """\
            image: a:1
            devices:
              - /dev/kvm
              - "/dev/sda:/dev/xvda:rwm"
            device_cgroup_rules: ["b *:* rwm"]
            """
        )
    )
    assert [(p.rule, p.line, p.col) for p in problems] == [
        ("compose-devices", 5, 9),
        ("compose-devices", 6, 9),
        ("compose-devices", 7, 27),
    ]
    assert problems[0].fix == "remove `/dev/kvm` from `devices:` of service 'app'"


def test_empty_devices_are_fine() -> None:
    assert check(service("image: a:1\ndevices: []\n")) == []


# --------------------------------------------------------------------------- capabilities


@pytest.mark.parametrize(
    ("cap", "name"),
    [
        ("ALL", "ALL"),
        ("SYS_ADMIN", "SYS_ADMIN"),
        ("cap_sys_admin", "SYS_ADMIN"),
        ("CAP_NET_ADMIN", "NET_ADMIN"),
        ("sys_ptrace", "SYS_PTRACE"),
        ("SYS_MODULE", "SYS_MODULE"),
        ("DAC_READ_SEARCH", "DAC_READ_SEARCH"),
        ("BPF", "BPF"),
        ("PERFMON", "PERFMON"),
    ],
)
def test_cap_add(cap: str, name: str) -> None:
    p = one(check(service(f"image: a:1\ncap_add:\n  - CHOWN\n  - {cap}\n")), "compose-cap-add")
    assert at(p) == (6, 9)
    assert f"capability {name}" in p.message
    assert p.fix == f"remove `{cap}` from `cap_add:` of service 'app'"


@pytest.mark.parametrize("cap", ["NET_RAW", "CAP_NET_RAW", "NET_BIND_SERVICE", "CHOWN", "SETUID"])
def test_cap_add_allowed(cap: str) -> None:
    assert check(service(f"image: a:1\ncap_add: [{cap}]\ncap_drop: [ALL]\n")) == []


# --------------------------------------------------------------------------- security_opt


@pytest.mark.parametrize(
    "opt",
    [
        "seccomp:unconfined",
        "seccomp=unconfined",
        "apparmor:unconfined",
        "apparmor=unconfined",
        "label:disable",
        "label=disable",
        "systempaths=unconfined",
        "Seccomp=Unconfined",
    ],
)
def test_security_opt(opt: str) -> None:
    p = one(check(service(f'image: a:1\nsecurity_opt: ["{opt}"]\n')), "compose-security-opt")
    assert at(p) == (4, 20)
    assert p.fix == f"remove `{opt}` from `security_opt:` of service 'app'"


@pytest.mark.parametrize(
    "opt", ["no-new-privileges:true", "no-new-privileges=true", "apparmor=docker-default"]
)
def test_security_opt_allowed(opt: str) -> None:
    assert check(service(f'image: a:1\nsecurity_opt: ["{opt}"]\n')) == []


# --------------------------------------------------------------------------- ports


def test_ports_short_and_long_syntax() -> None:
    problems = check(
        service(
            """\
            image: a:1
            ports:
              - "8080:80"
              - 9000
              - "127.0.0.1:5432:5432/tcp"
              - target: 53
                published: "5353"
                protocol: udp
            """
        )
    )
    assert [(p.rule, p.line, p.col) for p in problems] == [
        ("compose-ports", n, 9) for n in (5, 6, 7, 8)
    ]
    first = problems[0]
    assert "bypasses the proxy" in first.message
    assert first.fix is not None
    assert first.fix.startswith("remove `8080:80` from `ports:` of service 'app'")
    assert "`policy.allow_host_ports` in reconcile.yaml" in first.fix
    assert "5353:53/udp" in problems[3].message


def test_ports_allowed_by_policy_and_expose_is_fine() -> None:
    text = service('image: a:1\nports: ["8080:80", {target: 80}]\n')
    assert check(text, allow_host_ports=True) == []
    assert check(service('image: a:1\nexpose: ["80", 443]\n')) == []


# --------------------------------------------------------------------------- path escapes


@pytest.mark.parametrize(
    ("body", "pos", "label"),
    [
        ("build: ../other\n", (3, 5), "build '../other' leaves the deployment directory"),
        ("build: ./app/../../x\n", (3, 5), "leaves the deployment directory"),
        ("build: /srv/src\n", (3, 5), "is an absolute path"),
        ("build: ~/src\n", (3, 5), "home directory"),
        ("build:\n  context: ..\n", (4, 7), "build.context '..'"),
        ("build: ../${X}\n", (3, 5), "leaves the deployment directory"),
        (
            "build:\n  context: .\n  dockerfile: ../Dockerfile\n",
            (5, 7),
            "build.dockerfile '../Dockerfile'",
        ),
        ("build:\n  context: ./app\n  dockerfile: /etc/Dockerfile\n", (5, 7), "absolute"),
        ("env_file: ../shared.env\n", (3, 5), "env_file '../shared.env'"),
        ("env_file:\n  - ./app.env\n  - /etc/environment\n", (5, 9), "env_file '/etc/environment'"),
        ("env_file:\n  - path: ../x.env\n    required: false\n", (4, 9), "env_file '../x.env'"),
        ("extends:\n  file: ../base.yaml\n  service: app\n", (4, 7), "extends.file"),
        ("volumes:\n  - ../shared:/shared\n", (4, 9), "mounts ../shared, which leaves"),
        ("volumes:\n  - ./data/../../x:/x\n", (4, 9), "leaves the deployment directory"),
        (
            "volumes:\n  - type: bind\n    source: ..\n    target: /up\n",
            (5, 9),
            "mounts .., which leaves",
        ),
    ],
)
def test_path_escape_in_a_service(body: str, pos: tuple[int, int], label: str) -> None:
    p = one(check(service(body)), "compose-path-escape")
    assert at(p) == pos
    assert label in p.message
    assert p.fix


def test_path_escape_fixes_name_the_edit() -> None:
    problems = check(service("build: ../site\nenv_file: /etc/app.env\n"))
    assert [p.fix for p in problems] == [
        "move the build context inside the deployment directory and use `build: ./site`",
        "copy the file into the deployment directory and use `env_file: ./app.env`",
    ]


@pytest.mark.parametrize(
    "context",
    [
        "https://github.com/acme/app.git",
        "http://example.com/ctx.tar.gz",
        "git@github.com:acme/app.git#main",
        "github.com/acme/app",
        "ssh://git@example.com/app.git",
    ],
)
def test_remote_build_context(context: str) -> None:
    for body, pos in (
        (f"build: {context}\n", (3, 5)),
        (f"build: {{context: '{context}'}}\n", (3, 13)),
    ):
        p = one(check(service(body)), "compose-path-escape")
        assert at(p) == pos
        assert "remote build contexts are not allowed" in p.message
        assert p.fix is not None
        assert "put the sources in the repository" in p.fix


@pytest.mark.parametrize(
    "body",
    [
        "build: .\n",
        "build: ./app\n",
        "build: app\n",
        "build: ./a/../b\n",
        "build: {context: ./app, dockerfile: ../Dockerfile}\n",
        "build: {context: ., dockerfile: docker/Dockerfile.prod}\n",
        "build: {dockerfile: Dockerfile.dev}\n",
        "build: ${CONTEXT}\n",
        "build: {context: ./app, additional_contexts: {base: 'docker-image://alpine:3.20'}}\n",
        "env_file: [.env, ./conf/app.env, {path: ./opt.env, required: false}]\n",
        "env_file: ${ENV_FILE}\n",
        "env_file: ./${ENV}.env\n",
        "extends: {file: ./base.yaml, service: app}\n",
        "extends: other\n",
    ],
)
def test_paths_inside_the_directory_are_fine(body: str) -> None:
    assert rules(check(service(body))) == []


def test_dockerfile_is_not_reported_twice_when_the_context_escapes() -> None:
    problems = check(service("build: {context: ../x, dockerfile: Dockerfile}\n"))
    assert [(p.rule, p.line, p.col) for p in problems] == [("compose-path-escape", 3, 13)]


def test_additional_context_escape() -> None:
    problems = check(
        service("build:\n  context: .\n  additional_contexts:\n    - shared=../shared\n")
    )
    p = one(problems, "compose-path-escape")
    assert at(p) == (6, 11)


@pytest.mark.parametrize(
    ("text", "pos", "label", "fix"),
    [
        (
            "secrets:\n  key:\n    file: ../key.pem\n",
            (5, 5),
            "secret 'key': file '../key.pem' leaves the deployment directory",
            "set `file: ./key.pem`",
        ),
        (
            "configs:\n  conf:\n    file: /etc/app.conf\n",
            (5, 5),
            "config 'conf': file '/etc/app.conf' is an absolute path",
            "set `file: ./app.conf`",
        ),
        (
            "include: ../common.yaml\n",
            (3, 1),
            "include path '../common.yaml'",
            "use `path: ./common.yaml`",
        ),
        (
            "include:\n  - ./ok.yaml\n  - /abs.yaml\n",
            (5, 5),
            "include path '/abs.yaml'",
            "use `path: ./abs.yaml`",
        ),
        ("include:\n  - path: ../x.yaml\n", (4, 5), "include path '../x.yaml'", "./x.yaml"),
        (
            "include:\n  - path: [./a.yaml, ../b.yaml]\n",
            (4, 22),
            "include path '../b.yaml'",
            "use `path: ./b.yaml`",
        ),
        (
            "include:\n  - path: ./a.yaml\n    project_directory: ..\n",
            (5, 5),
            "include project_directory '..'",
            "remove `project_directory:`",
        ),
        (
            "include:\n  - path: ./a.yaml\n    env_file: ../a.env\n",
            (5, 5),
            "include env_file '../a.env'",
            "use `env_file: ./a.env`",
        ),
        (
            "include:\n  - oci://registry/app:1\n",
            (4, 5),
            "is remote; remote files are not allowed",
            "put it in the repository",
        ),
    ],
)
def test_top_level_file_references(text: str, pos: tuple[int, int], label: str, fix: str) -> None:
    p = one(check("services:\n  app: {image: 'a:1'}\n" + text), "compose-path-escape")
    assert at(p) == pos
    assert label in p.message
    assert p.fix is not None
    assert fix in p.fix


@pytest.mark.parametrize(
    "text",
    [
        "configs:\n  conf:\n    content: hello\n",
        "configs:\n  conf:\n    file: ./conf/app.conf\n",
        "secrets:\n  env:\n    environment: TOKEN\n",
        "secrets:\n  key:\n    file: ${SECRETS_DIR}/key\n",
        "include:\n  - ./compose.base.yaml\n  - path: sub/compose.yaml\n",
        "include:\n  - path: [a.yaml, b.yaml]\n    env_file: ./a.env\n",
    ],
)
def test_top_level_file_references_inside_are_fine(text: str) -> None:
    assert check("services:\n  app: {image: 'a:1'}\n" + text) == []


# --------------------------------------------------------------------------- on disk


@pytest.fixture
def deployment(tmp_path: pathlib.Path) -> pathlib.Path:
    base = tmp_path / "deployments" / "blog"
    (base / "app").mkdir(parents=True)
    (base / "data").mkdir()
    os.symlink("/etc", base / "ctx")
    os.symlink(base / "app", base / "inner")
    os.symlink("/nonexistent-reconciler-test/target", base / "dangling")
    return base


def test_symlink_out_of_the_directory_as_build_context(deployment: pathlib.Path) -> None:
    text = service("build: ./ctx\n")
    p = one(check(text, base_dir=deployment), "compose-path-escape")
    assert at(p) == (3, 5)
    assert "resolves to /etc" in p.message
    assert "a symlink points out" in p.message
    assert p.fix == "move the build context inside the deployment directory and use `build: ./ctx`"
    # without a directory (catalog manifests) only the lexical checks run
    assert check(text, base_dir=None) == []


def test_symlink_out_as_bind_mount_env_file_and_dockerfile(deployment: pathlib.Path) -> None:
    problems = check(
        service(
            """\
            build: {context: ., dockerfile: ctx/Dockerfile}
            env_file: ./ctx/environment
            volumes:
              - ./ctx/ssl:/ssl:ro
              - ./dangling:/data
            """
        ),
        base_dir=deployment,
    )
    assert [(p.rule, p.line, p.col) for p in problems] == [
        ("compose-path-escape", 3, 25),
        ("compose-path-escape", 4, 5),
        ("compose-path-escape", 6, 9),
        ("compose-path-escape", 7, 9),
    ]
    assert "/nonexistent-reconciler-test/target" in problems[3].message


def test_symlinks_inside_the_directory_are_fine(deployment: pathlib.Path) -> None:
    text = service(
        """\
        build: ./inner
        volumes:
          - ./data:/data
          - ./data/new/sub:/new
          - ./inner:/src:ro
        env_file: ./app/missing.env
        """
    )
    assert check(text, base_dir=deployment) == []


def test_symlink_loop_is_reported(deployment: pathlib.Path) -> None:
    os.symlink(deployment / "loop", deployment / "loop")
    p = one(check(service("build: ./loop\n"), base_dir=deployment), "compose-path-escape")
    assert at(p) == (3, 5)


# --------------------------------------------------------------------------- warnings


def test_routed_service_without_healthcheck() -> None:
    text = service("image: a:1\n", name="web") + "  worker:\n    image: b:1\n"
    problems = check(text, routed_services=frozenset({"web"}))
    p = one(problems, "compose-no-healthcheck")
    assert at(p) == (2, 3)
    assert p.severity is Severity.WARNING
    assert not p.is_error
    assert p.fix is not None
    assert p.fix.startswith("add a `healthcheck:` to service 'web'")
    assert len(problems) == 1  # the unrouted worker needs none


@pytest.mark.parametrize(
    ("health", "pos"),
    [
        ("healthcheck:\n  disable: true\n", (5, 7)),
        ("healthcheck:\n  test: [NONE]\n", (5, 7)),
    ],
)
def test_routed_service_with_healthcheck_disabled(health: str, pos: tuple[int, int]) -> None:
    problems = check(service("image: a:1\n" + health), routed_services=frozenset({"app"}))
    p = one(problems, "compose-no-healthcheck")
    assert at(p) == pos
    assert "disabled" in p.message


def test_routed_service_with_healthcheck_is_fine() -> None:
    text = service('image: a:1\nhealthcheck:\n  test: ["CMD", "wget", "-q", "localhost"]\n')
    assert check(text, routed_services=frozenset({"app"})) == []


@pytest.mark.parametrize(
    ("image", "what", "repo"),
    [
        ("nginx", "has no tag", "nginx"),
        ("nginx:latest", "`latest`", "nginx"),
        ("library/nginx", "has no tag", "library/nginx"),
        ("registry.local:5000/team/app", "has no tag", "registry.local:5000/team/app"),
        ("registry.local:5000/team/app:latest", "`latest`", "registry.local:5000/team/app"),
    ],
)
def test_image_unpinned(image: str, what: str, repo: str) -> None:
    p = one(check(service(f"image: {image}\n")), "compose-image-unpinned")
    assert at(p) == (3, 5)
    assert p.severity is Severity.WARNING
    assert what in p.message
    assert (
        p.fix
        == f"pin a version: `image: {repo}:<version>`, or a digest `image: {repo}@sha256:<digest>`"
    )


@pytest.mark.parametrize(
    "image",
    [
        "nginx:1.27",
        "nginx:1.27-alpine",
        "registry.local:5000/team/app:2.0",
        "nginx@sha256:" + "a" * 64,
        "nginx:latest@sha256:" + "b" * 64,
        "${IMAGE}",
        "nginx:${TAG}",
    ],
)
def test_image_pinned(image: str) -> None:
    assert check(service(f"image: '{image}'\n")) == []


def test_built_service_needs_no_pinned_image() -> None:
    assert check(service("build: .\n")) == []
    assert check(service("build: .\nimage: myapp\n")) == []


@pytest.mark.parametrize("user", ["root", "0", '"0:0"', "root:root", "'0'", "root:1000"])
def test_root_user(user: str) -> None:
    p = one(check(service(f"image: a:1\nuser: {user}\n")), "compose-root-user")
    assert at(p) == (4, 5)
    assert p.severity is Severity.WARNING
    assert p.fix is not None
    assert 'e.g. `user: "1000:1000"`' in p.fix


@pytest.mark.parametrize("user", ['"1000:1000"', "app", "1000", "nobody", "rootless", "${UID}"])
def test_non_root_user(user: str) -> None:
    assert check(service(f"image: a:1\nuser: {user}\n")) == []


# --------------------------------------------------------------------------- whole-file


def test_findings_come_in_file_order_with_the_file_name() -> None:
    problems = check(
        """\
        services:
          b:
            image: b
            privileged: true
          a:
            network_mode: host
            image: a:1
        """
    )
    assert [(p.line, p.rule) for p in problems] == [
        (3, "compose-image-unpinned"),
        (4, "compose-privileged"),
        (6, "compose-host-namespace"),
    ]
    assert {p.file for p in problems} == {"compose.yaml"}
    assert problems[1].render().startswith("compose.yaml:4:5: service 'b' runs privileged")


def test_merge_keys_are_checked_too() -> None:
    problems = check(
        """\
        x-danger: &danger
          privileged: true
        services:
          app:
            <<: *danger
            image: a:1
        """
    )
    assert rules(problems) == ["compose-privileged"]


_KEYS = st.sampled_from(
    [
        "services", "app", "volumes", "ports", "build", "context", "dockerfile", "env_file",
        "path", "include", "secrets", "configs", "file", "networks", "external", "name",
        "driver_opts", "o", "device", "type", "source", "target", "image", "user",
        "healthcheck", "disable", "test", "cap_add", "security_opt", "devices", "extends",
        "privileged", "network_mode", "additional_contexts", "entitlements", "project_directory",
    ]
)  # fmt: skip
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(["host", "bind", "/etc", "../x", "${X}", "a:b:c", "$", "", "~", "//", "."]),
    st.text(max_size=12),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_KEYS, children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.dictionaries(_KEYS, _VALUES, max_size=6), services=_VALUES)
def test_never_raises(data: dict[str, Any], services: Any, tmp_path_factory: Any) -> None:
    doc = Document(name="fuzz.yaml", data={**data, "services": services})
    base = tmp_path_factory.getbasetemp()
    for base_dir in (None, base):
        problems = check_compose_policy(
            doc, base_dir=base_dir, allow_host_ports=False, routed_services=frozenset({"app"})
        )
        assert all(isinstance(p, Problem) and p.fix for p in problems)


# --------------------------------------------------------------------------- nested files


def _nested(tmp_path: pathlib.Path, files: dict[str, str]) -> list[Problem]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    doc = load_yaml((tmp_path / "compose.yaml").read_text(), "deployments/x/compose.yaml")
    return check_compose_policy(doc, base_dir=tmp_path)


def test_an_included_file_is_held_to_the_same_policy(tmp_path: pathlib.Path) -> None:
    problems = _nested(
        tmp_path,
        {
            "compose.yaml": "include:\n  - ./parts/db.yaml\nservices:\n  app:\n    image: a:1\n",
            "parts/db.yaml": (
                "services:\n  db:\n    image: b:1\n    privileged: true\n"
                "    volumes: ['/var/run/docker.sock:/sock']\n"
            ),
        },
    )
    nested = [p for p in problems if p.file == "deployments/x/parts/db.yaml" and p.is_error]
    assert {p.rule for p in nested} == {"compose-privileged", "compose-host-mount"}
    assert {(p.line, p.rule) for p in nested} == {
        (4, "compose-privileged"),
        (5, "compose-host-mount"),
    }


def test_an_extended_file_is_held_to_the_same_policy(tmp_path: pathlib.Path) -> None:
    problems = _nested(
        tmp_path,
        {
            "compose.yaml": (
                "services:\n  app:\n    image: a:1\n"
                "    extends: {file: ./base.yaml, service: base}\n"
            ),
            "base.yaml": "services:\n  base:\n    image: a:1\n    network_mode: host\n",
        },
    )
    (found,) = [p for p in problems if p.is_error]
    assert found.file == "deployments/x/base.yaml" and found.rule == "compose-host-namespace"


def test_nested_includes_cycles_and_missing_files(tmp_path: pathlib.Path) -> None:
    problems = _nested(
        tmp_path,
        {
            "compose.yaml": "include: [./a.yaml, ./missing.yaml]\nservices: {}\n",
            "a.yaml": "include: [./b.yaml]\nservices: {}\n",
            "b.yaml": "include: [./a.yaml]\nservices:\n  x:\n    image: c:1\n    pid: host\n",
        },
    )
    errors = [(p.file, p.rule) for p in problems if p.is_error]
    assert errors == [("deployments/x/b.yaml", "compose-host-namespace")]  # once, no loop


def test_a_broken_included_file_is_reported_where_it_is(tmp_path: pathlib.Path) -> None:
    problems = _nested(
        tmp_path,
        {"compose.yaml": "include: [./bad.yaml]\nservices: {}\n", "bad.yaml": "a: [1,\n"},
    )
    assert [(p.file, p.rule) for p in problems if p.is_error] == [
        ("deployments/x/bad.yaml", "yaml-syntax")
    ]
