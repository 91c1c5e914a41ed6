"""Bundle extraction treats the tar as untrusted: nothing may land outside the root."""

from __future__ import annotations

import pathlib
import tarfile

import pytest

from agent.bundle import BundleError, extract_bundle
from tests.agent.agent_fakes import tar_with


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str, *, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


def _extract(tmp_path: pathlib.Path, data: bytes, **kwargs: int) -> pathlib.Path:
    archive = tmp_path / "b.tar"
    archive.write_bytes(data)
    root = tmp_path / "box" / "repo"
    extract_bundle(archive, root, **kwargs)
    return root


def test_a_normal_bundle_is_unpacked_with_inner_links(tmp_path: pathlib.Path) -> None:
    data = tar_with(
        [
            _file("deployments/blog/compose.yaml", b"services: {}\n"),
            _file("deployments/blog/public/index.html", b"<h1>hi</h1>"),
            _link("deployments/blog/public/home.html", "index.html"),
            _link("deployments/blog/up.html", "public/../public/index.html"),
        ]
    )
    root = _extract(tmp_path, data)
    assert (root / "deployments/blog/compose.yaml").read_bytes() == b"services: {}\n"
    assert (root / "deployments/blog/public/home.html").read_text() == "<h1>hi</h1>"
    assert (root / "deployments/blog/up.html").is_symlink()


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([_file("../x")], "contains '..'"),
        ([_file("deployments/../../x")], "contains '..'"),
        ([_file("/etc/evil")], "absolute path"),
        ([_link("deployments/out", "../../etc/passwd")], "points outside"),
        ([_link("deployments/out", "/etc/passwd")], "points outside"),
        ([_link("a", "..")], "points outside"),
        ([_file("a"), _link("b", "../a", hard=True)], "hard link"),
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "absolute",
        "symlink-up",
        "symlink-abs",
        "symlink-parent",
        "hardlink",
    ],
)
def test_escaping_members_are_refused_and_nothing_is_written(
    tmp_path: pathlib.Path, members: list[tuple[tarfile.TarInfo, bytes | None]], reason: str
) -> None:
    data = tar_with([_file("ok.txt"), *members])
    with pytest.raises(BundleError, match=reason):
        _extract(tmp_path, data)
    box = tmp_path / "box"
    assert [p.name for p in box.rglob("*")] == ["repo"]  # checked before anything is written
    assert not (tmp_path / "x").exists()


def test_a_link_chain_that_escapes_on_disk_is_refused(tmp_path: pathlib.Path) -> None:
    # Each link looks harmless on its own; together a/.. is the parent of the root.
    data = tar_with([_link("b", "."), _link("a", "b/b/.."), _file("a/escaped")])
    with pytest.raises(BundleError, match="bundle refused"):
        _extract(tmp_path, data)
    assert not (tmp_path / "box" / "escaped").exists()


def test_devices_and_fifos_are_refused(tmp_path: pathlib.Path) -> None:
    info = tarfile.TarInfo("fifo")
    info.type = tarfile.FIFOTYPE
    with pytest.raises(BundleError, match="not a file"):
        _extract(tmp_path, tar_with([(info, None)]))


def test_oversized_bundles_are_refused(tmp_path: pathlib.Path) -> None:
    data = tar_with([_file("a", b"a" * 600), _file("b", b"b" * 600)])
    with pytest.raises(BundleError, match="unpacks to more than"):
        _extract(tmp_path, data, max_bytes=1000)
    assert not (tmp_path / "box" / "repo" / "a").exists()
    assert (_extract(tmp_path, data, max_bytes=1200) / "b").stat().st_size == 600


def test_too_many_members_are_refused(tmp_path: pathlib.Path) -> None:
    data = tar_with([_file(f"f{i}") for i in range(5)])
    with pytest.raises(BundleError, match="more than 4 members"):
        _extract(tmp_path, data, max_members=4)


def test_not_a_tar_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(BundleError, match="not a readable tar"):
        _extract(tmp_path, b"this is not a tar archive at all" * 40)
