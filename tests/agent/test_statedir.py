"""agent.statedir: default location, layout, atomic writes, forgiving reads."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import stat

import pytest

from agent import statedir
from agent.statedir import (
    MAX_RECORD_BYTES,
    AppRecord,
    app_dir,
    atomic_write,
    default_state_dir,
    ensure_app_dir,
    list_records,
    read_record,
    record_path,
    write_record,
)
from reconciler.model.ids import deployment_id
from reconciler.model.state import RouteRecord, SpecRecord

DPL = deployment_id("default", "web")


def make_record(dpl_id: str = DPL, name: str = "web", **kw: object) -> AppRecord:
    fields: dict[str, object] = {
        "id": dpl_id,
        "name": name,
        "namespace": "default",
        "spec_hash": "a" * 64,
        "services": ["app"],
        "record": SpecRecord(
            images={"app": "busybox:1.36"},
            compose_digest="0123456789abcdef",
            env={"DOMAIN": "0123456789abcdef", "PASSWORD": "fedcba9876543210"},
            routes=[RouteRecord(domain="web.localhost", upstream=f"{dpl_id}-app:80")],
            domain="web.localhost",
        ),
        "domain": "web.localhost",
        "url": "http://web.localhost:8080",
    }
    fields.update(kw)
    return AppRecord.model_validate(fields)


# ---------------------------------------------------------------- location


def test_env_var_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("RECONCILE_STATE_DIR", str(tmp_path / "s"))
    assert default_state_dir() == tmp_path / "s"


def test_root_uses_var_lib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECONCILE_STATE_DIR", raising=False)
    monkeypatch.setattr(statedir.os, "geteuid", lambda: 0)
    assert default_state_dir() == pathlib.Path("/var/lib/reconciler")


def test_user_uses_xdg_state_home(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.delenv("RECONCILE_STATE_DIR", raising=False)
    monkeypatch.setattr(statedir.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "reconciler"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "reconciler"


def test_layout(tmp_path: pathlib.Path) -> None:
    directory = ensure_app_dir(tmp_path, DPL)
    assert directory == tmp_path / "apps" / DPL
    assert (directory / "data").is_dir()
    assert (directory / "releases").is_dir()
    assert record_path(tmp_path, DPL) == directory / "state.json"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


@pytest.mark.parametrize("bad", ["../etc", "dpl_XYZ", "dpl_0123456789abcde", "", "apps"])
def test_ids_cannot_escape_apps(tmp_path: pathlib.Path, bad: str) -> None:
    with pytest.raises(ValueError, match="not a deployment id"):
        app_dir(tmp_path, bad)
    assert read_record(tmp_path, bad) is None


# ---------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_content_and_sets_mode(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "sub" / "file"
    atomic_write(target, b"one", 0o600)
    assert target.read_bytes() == b"one"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["file"]  # no tmp left over


def test_mode_ignores_umask(tmp_path: pathlib.Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "f", b"x", 0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def test_crash_before_rename_keeps_old_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / ".env"
    atomic_write(target, b"OLD=1\n", 0o600)

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash between write and rename")

    monkeypatch.setattr(statedir.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write(target, b"NEW=2\n", 0o600)
    assert target.read_bytes() == b"OLD=1\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [".env"]  # the tmp file was removed


def test_crash_before_rename_of_a_record(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_record(tmp_path, make_record())
    monkeypatch.setattr(statedir.os, "replace", lambda *_: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError, match="crash"):
        write_record(tmp_path, make_record(status="failed"))
    got = read_record(tmp_path, DPL)
    assert got is not None
    assert got.status == "running"


def test_tmp_file_is_never_more_open_than_the_mode(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real = os.replace

    def spy(src: str, dst: str) -> None:
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        real(src, dst)

    monkeypatch.setattr(statedir.os, "replace", spy)
    atomic_write(tmp_path / "secret", b"s", 0o600)
    assert seen == [0o600]


# ---------------------------------------------------------------- records


def test_record_round_trip(tmp_path: pathlib.Path) -> None:
    rec = make_record(one_shot=["migrate"], last_error=None)
    path = write_record(tmp_path, rec)
    assert path == tmp_path / "apps" / DPL / "state.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    data = json.loads(path.read_text())
    assert data["format_version"] == 1
    assert data["id"] == DPL
    assert data["updated_at"].endswith("Z")
    assert read_record(tmp_path, DPL) == rec


def test_record_refuses_raw_env_values() -> None:
    with pytest.raises(ValueError, match="digests, never values"):
        make_record(record=SpecRecord(env={"PASSWORD": "hunter2"}))


def test_list_records(tmp_path: pathlib.Path) -> None:
    other = deployment_id("default", "api")
    write_record(tmp_path, make_record())
    write_record(tmp_path, make_record(other, "api"))
    (tmp_path / "apps" / "not-an-id").mkdir()
    (tmp_path / "apps" / deployment_id("default", "empty")).mkdir()  # no state.json yet
    assert [r.name for r in list_records(tmp_path)] == sorted(
        ["web", "api"], key=lambda n: deployment_id("default", n)
    )


def test_missing_state_dir_is_no_records(tmp_path: pathlib.Path) -> None:
    assert list_records(tmp_path / "nope") == []
    assert read_record(tmp_path / "nope", DPL) is None


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"{not json", "not a valid record"),
        (b'{"format_version": 2}', "not a valid record"),
        (b"[]", "not a valid record"),
        (b"\xff\xfe", "not a valid record"),
        (b"", "not a valid record"),
    ],
)
def test_corrupt_record_is_none_and_logged(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, content: bytes, why: str
) -> None:
    path = record_path(tmp_path, DPL)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="agent.statedir"):
        assert read_record(tmp_path, DPL) is None
        assert list_records(tmp_path) == []
    assert why in caplog.text


def test_oversized_record_is_none(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    path = record_path(tmp_path, DPL)
    path.parent.mkdir(parents=True)
    path.write_bytes(b" " * (MAX_RECORD_BYTES + 10))
    with caplog.at_level(logging.WARNING, logger="agent.statedir"):
        assert read_record(tmp_path, DPL) is None
    assert "larger than" in caplog.text


def test_record_of_another_id_is_ignored(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = deployment_id("default", "api")
    path = record_path(tmp_path, other)
    path.parent.mkdir(parents=True)
    path.write_text(make_record().model_dump_json())  # DPL's record in other's dir
    with caplog.at_level(logging.WARNING, logger="agent.statedir"):
        assert read_record(tmp_path, other) is None
    assert "record of" in caplog.text


def test_non_regular_record_is_refused(tmp_path: pathlib.Path) -> None:
    path = record_path(tmp_path, DPL)
    path.parent.mkdir(parents=True)
    os.mkfifo(path)  # would block a naive open() forever
    assert read_record(tmp_path, DPL) is None
    path.unlink()
    path.symlink_to("/etc/hostname")
    assert read_record(tmp_path, DPL) is None


def test_record_never_contains_secret_values(tmp_path: pathlib.Path) -> None:
    from reconciler.load.repo import load_repository
    from reconciler.render import render_all, spec_record

    repo = tmp_path / "repo"
    (repo / "deployments").mkdir(parents=True)
    (repo / "deployments" / "api.yaml").write_text(
        "name: api\nimage: busybox:1.36\nvars:\n  PASSWORD: s3cr3t-value-xyz\n"
    )
    state = load_repository(repo)
    assert state.ok, state
    (want,) = render_all(state)
    rec = AppRecord(
        id=want.id,
        name=want.name,
        namespace=want.namespace,
        spec_hash=want.spec_hash,
        services=list(want.services),
        one_shot=list(want.one_shot),
        record=spec_record(want),
        domain=want.domain,
        url=want.url,
    )
    path = write_record(tmp_path / "state", rec)
    assert "s3cr3t-value-xyz" not in path.read_text()
    assert "PASSWORD" in path.read_text()


def test_proxy_settings_are_written_once_and_again_only_when_they_change(
    tmp_path: pathlib.Path,
) -> None:
    from reconciler.model.deployment import ProxyConfig

    path = tmp_path / statedir.PROXY_CONFIG
    assert statedir.saved_proxy_config(tmp_path) == ProxyConfig()  # nothing saved yet
    first = ProxyConfig(http_port=8080, tls="off")
    statedir.save_proxy_config(tmp_path, first)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    inode = path.stat().st_ino
    statedir.save_proxy_config(tmp_path, first)  # a no-op reconcile: no new file
    assert path.stat().st_ino == inode
    assert statedir.saved_proxy_config(tmp_path) == first
    second = ProxyConfig(http_port=8081, tls="off")
    statedir.save_proxy_config(tmp_path, second)  # atomic_write renames a new file in
    assert path.stat().st_ino != inode
    assert statedir.saved_proxy_config(tmp_path) == second
