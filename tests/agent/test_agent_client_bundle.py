"""Bundle extraction treats the tar as hostile: every attack here is a real tar, crafted
with ``tarfile`` (or byte by byte where ``tarfile`` would refuse to write it), unpacked by
the real :func:`extract_bundle`.  Each must be refused with a reason, leave the target
empty and write nothing outside it."""

from __future__ import annotations

import gzip
import io
import os
import pathlib
import subprocess
import sys
import tarfile

import pytest

from agent.bundle import MAX_HEADER_BYTES, BundleError, extract_bundle
from reconciler.model.bundle import LINK_INSIDE, LINK_PAX_KEY
from reconciler.server.worker import build_bundle
from tests.agent.bundle_attacks import pax_bomb
from tests.conftest import REPO_ROOT

Member = tuple[tarfile.TarInfo, bytes | None]


def _file(name: str, data: bytes = b"x") -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _dir(name: str) -> Member:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info, None


def _link(name: str, target: str, *, hard: bool = False, marked: bool = True) -> Member:
    """A link; ``marked`` as the server marks the links the repository had inside."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    if marked:
        info.pax_headers = {LINK_PAX_KEY: LINK_INSIDE}
    return info, None


def _tar(members: list[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _extract(tmp_path: pathlib.Path, data: bytes, **kwargs: object) -> pathlib.Path:
    archive = tmp_path / "b.tar"
    archive.write_bytes(data)
    root = tmp_path / "box" / "repo"
    extract_bundle(archive, root, **kwargs)  # type: ignore[arg-type]
    return root


def _refused(tmp_path: pathlib.Path, data: bytes, match: str, **kwargs: object) -> None:
    """Refused with ``match`` in the reason; the target is left empty, the box holds it alone."""
    with pytest.raises(BundleError, match=match):
        _extract(tmp_path, data, **kwargs)
    assert list((tmp_path / "box" / "repo").iterdir()) == []
    assert [p.name for p in (tmp_path / "box").iterdir()] == ["repo"]


# ------------------------------------------------------------------ what is accepted


def test_a_server_made_bundle_round_trips_with_its_inner_links(tmp_path: pathlib.Path) -> None:
    """build_bundle and extract_bundle agree: links the repository had inside travel as
    links and resolve there; a link to a file elsewhere in the repo travels as content;
    hard-linked files arrive as two plain files."""
    repo = tmp_path / "src"
    blog = repo / "deployments/blog"
    (blog / "public/v2").mkdir(parents=True)
    (repo / "shared").mkdir()
    (repo / "shared/logo.svg").write_text("<svg/>")
    (blog / "compose.yaml").write_text("services: {}\n")
    (blog / "public/v2/index.html").write_text("<h1>hi</h1>")
    (blog / "public/current").symlink_to("v2")  # a directory link, inside
    (blog / "public/home.html").symlink_to("v2/index.html")  # a file link, inside
    (blog / "public/logo.svg").symlink_to("../../../shared/logo.svg")  # outside: content
    os.link(blog / "compose.yaml", blog / "compose.copy.yaml")
    archive = tmp_path / "cmd_1.tar"
    build_bundle(repo, ["deployments/blog"], archive)

    root = tmp_path / "box" / "repo"
    extract_bundle(archive, root, link_roots=["deployments/blog"])
    public = root / "deployments/blog/public"
    assert (public / "current").is_symlink() and os.readlink(public / "current") == "v2"
    assert (public / "current/index.html").read_text() == "<h1>hi</h1>"
    assert (public / "home.html").is_symlink()
    assert (public / "home.html").read_text() == "<h1>hi</h1>"
    assert not (public / "logo.svg").is_symlink()
    assert (public / "logo.svg").read_text() == "<svg/>"
    copy = root / "deployments/blog/compose.copy.yaml"
    assert copy.read_text() == "services: {}\n" and copy.stat().st_nlink == 1
    assert not (root / "shared").exists()


def test_a_gzipped_bundle_is_unpacked(tmp_path: pathlib.Path) -> None:
    data = gzip.compress(_tar([_file("d/a.txt", b"alpha"), _file("d/b.txt", b"beta")]))
    root = _extract(tmp_path, data)
    assert (root / "d/a.txt").read_bytes() == b"alpha"


# ------------------------------------------------------------------ links


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([_file("../x")], "contains '..'"),
        ([_file("deployments/../../x")], "contains '..'"),
        ([_file("/etc/evil")], "absolute path"),
        ([_link("deployments/out", "../../etc/passwd")], "leaves the bundle"),
        ([_link("deployments/out", "/etc/passwd")], "points outside"),
        ([_link("a", "..")], "leaves the bundle"),
        ([_link("a", "missing")], "does not lead to a file"),
        ([_link("a", "ok.txt", marked=False)], "not marked"),
        ([_link("b", "ok.txt", hard=True)], "hard link"),
        ([_link("b", "../ok.txt", hard=True)], "hard link"),
        ([_link("a", "a")], "does not lead|another link"),
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "absolute",
        "symlink-up",
        "symlink-abs",
        "symlink-parent",
        "symlink-dangling",
        "symlink-unmarked",
        "hardlink-inside",
        "hardlink-up",
        "symlink-self",
    ],
)
def test_escaping_members_are_refused_and_nothing_is_written(
    tmp_path: pathlib.Path, members: list[Member], reason: str
) -> None:
    _refused(tmp_path, _tar([_file("ok.txt"), *members]), reason)
    assert not (tmp_path / "x").exists()


def test_a_link_chain_through_links_is_refused(tmp_path: pathlib.Path) -> None:
    # Each link looks harmless on its own; together a/.. is the parent of the root.
    data = _tar([_link("b", "."), _link("a", "b/b/.."), _file("a/escaped")])
    _refused(tmp_path, data, "under 'a', a link")
    data = _tar([_link("b", "."), _link("a", "b/b/..")])
    _refused(tmp_path, data, "through directories only|another link")
    assert not (tmp_path / "box" / "escaped").exists()


def test_the_cve_2025_4517_link_chain_writes_nothing_outside(tmp_path: pathlib.Path) -> None:
    """The published pattern: 16 links to long directory names make ``realpath`` give up
    (PATH_MAX) before the last link, which points 16 levels up; ``escape`` goes through it
    to a sibling of the work dir.  Python 3.11.7's ``data`` filter lets it write there."""
    victim = tmp_path / "victim"
    victim.mkdir()
    dest = tmp_path / "box" / "repo"
    steps = "abcdefghijklmnop"
    comp = "d" * ((4096 - len(str(dest)) - 1) // (len(steps) + 1))
    members: list[Member] = []
    path = ""
    for step in steps:
        members += [_dir(os.path.join(path, comp)), _link(os.path.join(path, step), comp)]
        path = os.path.join(path, comp)
    linkpath = os.path.join("/".join(steps), "l" * 254)
    members.append(_link(linkpath, "../" * len(steps)))
    members.append(_link("escape", linkpath + "/../../victim"))
    members.append(_file("escape/newfile", b"pwned\n"))
    _refused(tmp_path, _tar(members), "lies under 'a', a link")
    assert list(victim.iterdir()) == []


def test_a_link_must_stay_inside_its_shipped_directory(tmp_path: pathlib.Path) -> None:
    """Inside the bundle is not enough: the build context is copied on its own."""
    data = _tar([_file("blog/secret.txt"), _link("site/leak", "../blog/secret.txt")])
    _refused(tmp_path, data, "leaves its shipped directory 'site'", link_roots=["blog", "site"])
    root = _extract(tmp_path, data)  # without roots the bundle root is the scope
    assert (root / "site/leak").read_text() == "x"


# ------------------------------------------------------------------ crashes that were


def test_a_file_where_a_directory_is_expected_is_refused(tmp_path: pathlib.Path) -> None:
    _refused(tmp_path, _tar([_file("a"), _file("a/b")]), "under 'a', a file")
    _refused(tmp_path, _tar([_file("a/b"), _file("a")]), "under 'a', a file")
    _refused(tmp_path, _tar([_file("a"), _dir("a")]), "appears twice")
    _refused(tmp_path, _tar([_file("a"), _file("a")]), "appears twice")


def test_a_truncated_archive_is_refused(tmp_path: pathlib.Path) -> None:
    tar = _tar([_file("d/a.txt", os.urandom(4096)), _file("d/b.txt", b"b")])
    _refused(tmp_path, gzip.compress(tar)[:1500], "not a readable tar|truncated")
    _refused(tmp_path, tar[:2048], "truncated")
    _refused(tmp_path, b"this is not a tar archive at all" * 40, "bad tar header")


def test_a_pax_header_bomb_is_refused_in_little_memory(tmp_path: pathlib.Path) -> None:
    """1.09 GiB of pax header in ~1 MiB of gzip.  Run in a child process so its peak RSS
    is its own: the old extraction peaked at 3.5 GiB on it."""
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(pax_bomb())
    assert archive.stat().st_size < 2 * 1024 * 1024
    script = (
        "import pathlib, resource, sys\n"
        "from agent.bundle import BundleError, extract_bundle\n"
        "try:\n"
        f"    extract_bundle(pathlib.Path({str(archive)!r}),\n"
        f"                   pathlib.Path({str(tmp_path / 'out')!r}))\n"
        "except BundleError as exc:\n"
        "    print('refused:', exc)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        check=True,
    )
    reason, peak_mib = child.stdout.strip().splitlines()
    assert "pax header bomb" in reason and str(MAX_HEADER_BYTES) in reason
    assert int(peak_mib) < 200
    assert list((tmp_path / "out").iterdir()) == []


def _raw_pax(records: bytes) -> bytes:
    """A tar whose first member carries the given pax records (tarfile would not write them)."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = len(records)
    body = records + b"\0" * (-len(records) % 512)
    return header.tobuf(format=tarfile.USTAR_FORMAT) + body + _tar([_file("f", b"x")])


def test_headers_that_would_desynchronise_the_checks_are_refused(tmp_path: pathlib.Path) -> None:
    _refused(tmp_path, _raw_pax(b"16 size=9999999\n"), "sets 'size'")
    _refused(tmp_path, _raw_pax(b"99 path=x\n"), "malformed pax")
    glob = tarfile.TarInfo("g")
    glob.type = tarfile.XGLTYPE
    _refused(tmp_path, _tar([(glob, None), _file("f")]), "global pax")
    big = "p" * (MAX_HEADER_BYTES + 1)
    _refused(tmp_path, _tar([_file(big)]), "pax header bomb")
    # tarfile reads a run of extended headers by recursion: 2,000 would be a RecursionError
    chain = _raw_pax(b"10 path=a\n")[:1024] * 2000 + _tar([_file("f")])
    _refused(tmp_path, chain, "headers in a row")


def test_devices_and_fifos_are_refused(tmp_path: pathlib.Path) -> None:
    for kind in (tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE):
        info = tarfile.TarInfo("dev")
        info.type = kind
        _refused(tmp_path, _tar([(info, None)]), "not a file")


def test_oversized_bundles_are_refused(tmp_path: pathlib.Path) -> None:
    data = _tar([_file("a", b"a" * 600), _file("b", b"b" * 600)])
    _refused(tmp_path, data, "unpacks to more than", max_bytes=1000)
    big = _tar([_file("a", b"a" * 600), _file("b", b"b" * 600)])
    assert (_extract(tmp_path, big, max_bytes=len(big)) / "b").stat().st_size == 600


def test_too_many_members_are_refused(tmp_path: pathlib.Path) -> None:
    data = _tar([_file(f"f{i}") for i in range(5)])
    _refused(tmp_path, data, "more than 4 members", max_members=4)


def test_other_compressions_are_refused(tmp_path: pathlib.Path) -> None:
    import bz2

    _refused(tmp_path, bz2.compress(_tar([_file("f")])), "bzip2 or xz")


def test_the_target_must_be_fresh(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "box" / "repo"
    root.mkdir(parents=True)
    (root / "keep").write_text("mine")
    archive = tmp_path / "b.tar"
    archive.write_bytes(_tar([_file("f")]))
    with pytest.raises(BundleError, match="not empty"):
        extract_bundle(archive, root)
    assert (root / "keep").read_text() == "mine"


def test_the_server_refuses_a_directory_link_outside_its_shipped_directory(
    tmp_path: pathlib.Path,
) -> None:
    """Inside the repository but outside what is shipped: as content it could be any
    size, as a link it would dangle (or leave the app dir) on the host."""
    from reconciler.model.errors import InvalidSpec

    repo = tmp_path / "src"
    (repo / "shared").mkdir(parents=True)
    (repo / "deployments/blog").mkdir(parents=True)
    (repo / "deployments/blog/shared").symlink_to("../../shared")
    with pytest.raises(InvalidSpec, match=r"symlink to '\.\./\.\./shared' refused"):
        build_bundle(repo, ["deployments/blog"], tmp_path / "b.tar")
    assert not (tmp_path / "b.tar").exists()
