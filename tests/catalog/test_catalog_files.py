"""Every manifest in ``catalog/<app>/<version>.yaml`` is valid, routable and pinned.

The catalog is data the reconciler ships; these tests read it the way the reconciler does
(the safe YAML loader, the JSON Schema and the pydantic model) and check the rules of the
Impreza Host dialect that a schema cannot express: the routing contract, pinned images,
data kept under the app's state dir, and every interpolated variable declared.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from reconciler.load.packaged import CATALOG_DIR, schema_path
from reconciler.load.yamlsafe import load_yaml
from reconciler.model.manifest import Manifest

CATALOG = CATALOG_DIR
SCHEMA = schema_path("manifest")

PROXY_NETWORK = "impreza-proxy"
PLATFORM_VARS = frozenset({"DEPLOYMENT_ID", "DOMAIN", "DOMAIN_URL"})
REQUIRED_APPS = frozenset(
    {
        "openclaw",
        "vaultwarden",
        "n8n",
        "nextcloud",
        "matrix-synapse",
        "gitea",
        "searxng",
        "memos",
        "uptime-kuma",
        "activepieces",
        "static-site",
        "hello",
    }
)
# Images the project builds locally (scripts/setup.sh): the offline demo apps use only these.
LOCAL_IMAGES = frozenset({"busybox:1.36", "caddy:2"})
OFFLINE_APPS = frozenset({"static-site", "hello"})

MANIFEST_FILES = sorted(CATALOG.glob("*/*.yaml"))
IDS = [str(p.relative_to(CATALOG)) for p in MANIFEST_FILES]

_UPSTREAM_RE = re.compile(r"^(?P<host>[^:\s]+):(?P<port>[0-9]{1,5})$")
_BRACED_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(?::?[-?+])[^}]*)?\}")
_BARE_RE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


# --------------------------------------------------------------------------- helpers


@cache
def _schema_validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@cache
def _manifest_data(path: Path) -> dict[str, Any]:
    doc = load_yaml(path.read_bytes(), f"catalog/{path.relative_to(CATALOG)}")
    assert isinstance(doc.data, dict), f"{path}: a manifest is a mapping"
    return doc.data


def _compose(path: Path) -> dict[str, Any]:
    text = _manifest_data(path)["runtime"]["compose_yaml"]
    doc = load_yaml(text, f"catalog/{path.relative_to(CATALOG)}#runtime.compose_yaml")
    assert isinstance(doc.data, dict), f"{path}: compose_yaml is a mapping"
    return doc.data


def _services(path: Path) -> dict[str, dict[str, Any]]:
    services = _compose(path).get("services")
    assert isinstance(services, dict), f"{path}: compose `services` is not a mapping"
    assert services, f"{path}: compose declares no services"
    return services


def _service_networks(service: dict[str, Any]) -> set[str]:
    nets = service.get("networks")
    if nets is None:
        return {"default"}
    if isinstance(nets, dict):
        return set(nets)
    return set(nets)


def _routes(path: Path) -> list[dict[str, Any]]:
    rp = (_manifest_data(path).get("network") or {}).get("reverse_proxy") or {}
    if rp.get("enabled", True) is False:
        return []
    return list(rp.get("routes") or [])


def _routed_services(path: Path) -> dict[str, dict[str, Any]]:
    names = set()
    for route in _routes(path):
        m = _UPSTREAM_RE.match(route["upstream"])
        assert m, route["upstream"]
        names.add(m["host"].replace("{deployment_id}", "${DEPLOYMENT_ID}"))
    return {
        name: svc for name, svc in _services(path).items() if svc.get("container_name") in names
    }


def _split_image(ref: str) -> tuple[str, str | None]:
    """``repo[:tag][@digest]`` -> (repo, tag); a registry port is not a tag."""
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        return ref, None
    repo, tag = ref.rsplit(":", 1)
    return repo, tag


def _interpolated_names(text: str) -> set[str]:
    text = text.replace("$$", "")
    return set(_BRACED_RE.findall(text)) | set(_BARE_RE.findall(text))


def _volume_sources(service: dict[str, Any]) -> list[str]:
    out = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, str):
            out.append(vol.split(":", 1)[0])
        elif isinstance(vol, dict):
            out.append(str(vol.get("source", "")))
    return out


def _hooks(path: Path) -> dict[str, Any]:
    return dict(_manifest_data(path).get("lifecycle") or {})


# --------------------------------------------------------------------------- the catalog


def test_catalog_has_at_least_twelve_apps() -> None:
    apps = {p.parent.name for p in MANIFEST_FILES}
    assert len(apps) >= 12, sorted(apps)


def test_catalog_has_the_apps_impreza_names() -> None:
    apps = {p.parent.name for p in MANIFEST_FILES}
    assert apps >= REQUIRED_APPS, sorted(REQUIRED_APPS - apps)


def test_catalog_has_an_app_with_a_postgres_sidecar() -> None:
    with_pg = [
        p
        for p in MANIFEST_FILES
        if any(
            _split_image(str(s.get("image", "")))[0].endswith("postgres")
            for s in _services(p).values()
        )
    ]
    assert with_pg


def test_only_yaml_manifests_in_app_dirs() -> None:
    for app_dir in CATALOG.iterdir():
        if app_dir.is_dir():
            stray = [f.name for f in app_dir.iterdir() if f.suffix != ".yaml"]
            assert not stray, f"{app_dir.name}: {stray}"


# --------------------------------------------------------------------------- loading & validity


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=IDS)
def test_loads_with_the_safe_loader(path: Path) -> None:
    data = _manifest_data(path)
    assert {"name", "version", "runtime"} <= set(data)


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=IDS)
def test_valid_against_json_schema(path: Path) -> None:
    errors = sorted(_schema_validator().iter_errors(_manifest_data(path)), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=IDS)
def test_valid_against_pydantic_model(path: Path) -> None:
    manifest = Manifest.model_validate(_manifest_data(path))
    assert manifest.runtime.type == "docker-compose"
    assert manifest.routes, "a catalog app is reachable through the proxy"


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=IDS)
def test_embedded_compose_loads(path: Path) -> None:
    compose = _compose(path)
    assert "version" not in compose, "the compose `version:` key is obsolete"
    assert _services(path)


# --------------------------------------------------------------------------- file layout


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=IDS)
def test_file_name_is_version_and_dir_is_name(path: Path) -> None:
    data = _manifest_data(path)
    assert path.name == f"{data['version']}.yaml"
    assert path.parent.name == data["name"]


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=IDS)
def test_descriptive_metadata_present(path: Path) -> None:
    data = _manifest_data(path)
    for key in ("description", "display_name", "website", "category", "license"):
        assert isinstance(data.get(key), str), key
        assert data[key].strip(), key
    req = data.get("requirements") or {}
    assert req.get("memory_mb"), "requirements.memory_mb"
    assert req.get("cpus"), "requirements.cpus"


# --------------------------------------------------------------------------- routing contract


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=IDS)
def test_every_route_upstream_has_its_container_on_the_proxy_network(path: Path) -> None:
    services = _services(path)
    for route in _routes(path):
        m = _UPSTREAM_RE.match(route["upstream"])
        assert m, f"upstream {route['upstream']!r} is not <container name>:<port>"
        assert "{deployment_id}" in m["host"], "the container name is per deployment"
        assert 0 < int(m["port"]) < 65536
        want = m["host"].replace("{deployment_id}", "${DEPLOYMENT_ID}")
        owners = [n for n, s in services.items() if s.get("container_name") == want]
        assert owners, f"no service has `container_name: {want}`"
        assert len(owners) == 1, f"several services claim {want}: {owners}"
        assert PROXY_NETWORK in _service_networks(services[owners[0]]), (
            f"service {owners[0]!r} serves {route['upstream']} but is not on {PROXY_NETWORK}"
        )
        declared = {v["name"] for v in load_yaml(path.read_text(), path.name).data.get("vars", [])}
        assert route.get("match_var", "domain") in {"domain", *declared}


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=IDS)
def test_proxy_network_is_declared_external(path: Path) -> None:
    networks = _compose(path).get("networks") or {}
    assert networks.get(PROXY_NETWORK, {}).get("external") is True


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=IDS)
def test_routed_services_keep_the_default_network(path: Path) -> None:
    for name, svc in _routed_services(path).items():
        assert "default" in _service_networks(svc), f"{name} must also reach its sidecars"


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=IDS)
def test_sidecars_stay_off_the_proxy_network(path: Path) -> None:
    routed = set(_routed_services(path))
    for name, svc in _services(path).items():
        if name not in routed:
            assert PROXY_NETWORK not in _service_networks(svc), name


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=IDS)
def test_every_image_is_pinned_never_latest(path: Path) -> None:
    for name, svc in _services(path).items():
        image = svc.get("image")
        assert isinstance(image, str), f"{name}: catalog services use an image"
        assert image, f"{name}: empty image"
        assert "$" not in image, f"{name}: the image is fixed by the manifest version"
        _repo, tag = _split_image(image)
        assert tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} is not pinned"
        assert "build" not in svc, f"{name}: catalog apps pull, they do not build"


@pytest.mark.parametrize(
    "path",
    [p for p in MANIFEST_FILES if p.parent.name in OFFLINE_APPS],
    ids=lambda p: str(p.relative_to(CATALOG)),
)
def test_offline_demo_apps_use_only_locally_built_images(path: Path) -> None:
    images = {svc["image"] for svc in _services(path).values()}
    assert images <= LOCAL_IMAGES, images - LOCAL_IMAGES


# --------------------------------------------------------------------------- host isolation


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=IDS)
def test_no_host_ports_privileges_or_host_namespaces(path: Path) -> None:
    for name, svc in _services(path).items():
        assert "ports" not in svc, f"{name}: traffic comes through the proxy, not host ports"
        assert not svc.get("privileged"), name
        for key in ("network_mode", "pid", "ipc", "userns_mode", "devices"):
            assert key not in svc, f"{name}: {key}"
        for cap in svc.get("cap_add") or []:
            assert cap not in {"ALL", "SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE"}, f"{name}: {cap}"


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=IDS)
def test_data_lives_in_relative_bind_mounts_under_data(path: Path) -> None:
    compose = _compose(path)
    assert "volumes" not in compose, "named volumes escape the app's state dir"
    for name, svc in _services(path).items():
        for source in _volume_sources(svc):
            assert "docker.sock" not in source, f"{name}: docker socket"
            assert source.startswith("./data/"), f"{name}: {source!r} is not under ./data/"
            assert ".." not in Path(source).parts, f"{name}: {source!r} escapes ./data/"


# --------------------------------------------------------------------------- service hygiene


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=IDS)
def test_long_running_services_restart_unless_stopped(path: Path) -> None:
    for name, svc in _services(path).items():
        restart = svc.get("restart")
        assert restart in {"unless-stopped", "no"}, f"{name}: restart {restart!r}"
        if restart == "no":  # a one-shot that others wait for
            assert any(
                (other.get("depends_on") or {}).get(name, {}).get("condition")
                == "service_completed_successfully"
                for other in _services(path).values()
                if isinstance(other.get("depends_on"), dict)
            ), f"{name}: a one-shot service nobody waits for"


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=IDS)
def test_routed_services_have_a_healthcheck(path: Path) -> None:
    for name, svc in _routed_services(path).items():
        test = (svc.get("healthcheck") or {}).get("test")
        assert test, f"{name}: no healthcheck"
        assert (svc.get("healthcheck") or {}).get("disable") is not True


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=IDS)
def test_busybox_services_run_with_an_init(path: Path) -> None:
    for name, svc in _services(path).items():
        if _split_image(svc["image"])[0] == "busybox":
            assert svc.get("init") is True, f"{name}: busybox as PID 1 ignores SIGTERM"


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=IDS)
def test_lifecycle_hooks_name_existing_services(path: Path) -> None:
    services = _services(path)
    for hook_name, hook in _hooks(path).items():
        if isinstance(hook, dict) and hook.get("service") is not None:
            assert hook["service"] in services, f"{hook_name}: no service {hook['service']!r}"
        elif len(services) > 1:
            # without `service:` the hook runs in the routed service
            assert len(_routed_services(path)) == 1, hook_name


# --------------------------------------------------------------------------- variables


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=IDS)
def test_var_names_are_impreza_lower_case(path: Path) -> None:
    """Impreza's bodies say ``signups_allowed``; the container's name goes in ``env:``."""
    for var in _manifest_data(path).get("vars") or []:
        assert var["name"] == var["name"].lower(), var["name"]


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=IDS)
def test_every_interpolated_variable_is_declared(path: Path) -> None:
    data = _manifest_data(path)
    declared = {v.get("env") or v["name"] for v in data.get("vars") or []}
    used = _interpolated_names(data["runtime"]["compose_yaml"])
    assert used - PLATFORM_VARS <= declared, sorted(used - PLATFORM_VARS - declared)
    assert not declared & PLATFORM_VARS, "the platform provides these"
    assert "DEPLOYMENT_ID" in used


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=IDS)
def test_every_declared_variable_is_used(path: Path) -> None:
    data = _manifest_data(path)
    names = [v["name"] for v in data.get("vars") or []]
    assert len(names) == len(set(names)), "duplicate var"
    declared = [v.get("env") or v["name"] for v in data.get("vars") or []]
    assert len(declared) == len(set(declared)), "two vars fill one container variable"
    used = _interpolated_names(data["runtime"]["compose_yaml"])
    assert set(declared) <= used, sorted(set(declared) - used)


@pytest.mark.parametrize("path", MANIFEST_FILES, ids=IDS)
def test_deploys_with_zero_vars(path: Path) -> None:
    """Every var is generated or defaulted, so `app: <name>` alone deploys."""
    for var in _manifest_data(path).get("vars") or []:
        assert not var.get("required"), f"{var['name']} is required"
        assert "default" in var or "generate" in var, f"{var['name']} has no value"
        if var.get("secret"):
            assert "generate" in var, f"{var['name']}: a secret is generated"
            assert "default" not in var, f"{var['name']}: a secret never has a default in git"
        if "default" in var:
            assert isinstance(var["default"], str), (
                f"{var['name']}: quote the default; .env values are strings"
            )
