"""The sdist and the wheel carry what the package needs at run time: every catalog
manifest, every schema, the licence, and complete metadata.

Built for real with ``python -m build`` (the sdist first, then the wheel *from the sdist*,
so a file the sdist drops is missing from the wheel too).  ``scripts/check-wheel.sh``
goes on from here: it installs the wheel into a fresh venv and runs it.
"""

from __future__ import annotations

import email.parser
import pathlib
import subprocess
import sys
import tarfile
import tomllib
import zipfile

import pytest

from reconciler import __version__
from reconciler.load.packaged import CATALOG_DIR, SCHEMAS_DIR

ROOT = pathlib.Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]


def _shipped_data() -> list[str]:
    """Paths inside the package of every catalog manifest and schema in the checkout."""
    pkg = CATALOG_DIR.parent
    files = [*CATALOG_DIR.glob("*/*.yaml"), *CATALOG_DIR.glob("*/*.yml")]
    files += SCHEMAS_DIR.glob("*.schema.json")
    return sorted(f"reconciler/{f.relative_to(pkg).as_posix()}" for f in files)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_the_version_is_the_one_in_pyproject() -> None:
    assert __version__ == VERSION


def test_the_checkout_symlinks_point_into_the_package() -> None:
    """One source of truth: ``catalog/`` and ``schemas/`` at the top are the package's."""
    assert (ROOT / "catalog").is_symlink()
    assert (ROOT / "catalog").resolve() == CATALOG_DIR.resolve()
    assert (ROOT / "schemas").is_symlink()
    assert (ROOT / "schemas").resolve() == SCHEMAS_DIR.resolve()
    data = _shipped_data()
    assert len([d for d in data if d.startswith("reconciler/catalog/")]) >= 14
    assert {d.rsplit("/", 1)[1] for d in data if "/schemas/" in d} == {
        "deployment.schema.json",
        "manifest.schema.json",
        "reconcile.schema.json",
    }


def test_the_wheel_carries_every_manifest_and_schema(dist: pathlib.Path) -> None:
    wheel = dist / f"compose_reconciler-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for path in _shipped_data():
            assert path in names, f"{path} missing from the wheel"
            assert zf.read(path) == (CATALOG_DIR.parent / path.split("/", 1)[1]).read_bytes()
        assert "reconciler/py.typed" in names
        assert "agent/daemon.py" in names
        # no symlinked copies and no stray top-level data
        assert not any(n.startswith(("catalog/", "schemas/", "tests/")) for n in names)
        info = f"compose_reconciler-{VERSION}.dist-info"
        assert f"{info}/licenses/LICENSE" in names
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
        metadata = email.parser.Parser().parsestr(zf.read(f"{info}/METADATA").decode())
    assert "reconcile = reconciler.cli:main" in entry_points
    assert "reconcile-agent = agent.daemon:main" in entry_points
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Requires-Python"] == ">=3.11.4"  # tarfile extraction filters
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert {"Homepage", "Source", "Issues", "Changelog"} <= set(urls)
    classifiers = metadata.get_all("Classifier") or []
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "Typing :: Typed" in classifiers
    assert not any(c.startswith("License ::") for c in classifiers)  # the SPDX field says it


def test_the_sdist_carries_the_data_and_the_licence(dist: pathlib.Path) -> None:
    sdist = dist / f"compose_reconciler-{VERSION}.tar.gz"
    top = f"compose_reconciler-{VERSION}"
    with tarfile.open(sdist) as tf:
        members = {m.name: m for m in tf.getmembers()}
    for path in _shipped_data():
        member = members.get(f"{top}/{path}")
        assert member is not None, f"{path} missing from the sdist"
        assert member.isfile()  # a real file, not a symlink that dangles once unpacked
    assert f"{top}/LICENSE" in members
    assert f"{top}/pyproject.toml" in members


def test_the_wheel_carries_the_dashboards_templates_and_assets(dist: pathlib.Path) -> None:
    """The dashboard renders from package data: a wheel without it serves a 500 at /ui."""
    ui = ROOT / "reconciler" / "server" / "ui"
    shipped = sorted(
        f.relative_to(ROOT).as_posix()
        for f in [*(ui / "templates").glob("*.html"), *(ui / "static").iterdir()]
        if f.is_file()
    )
    assert "reconciler/server/ui/static/dashboard.js" in shipped
    assert "reconciler/server/ui/templates/dashboard.html" in shipped
    wheel = dist / f"compose_reconciler-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for path in shipped:
            assert path in names, f"{path} missing from the wheel"
            assert zf.read(path) == (ROOT / path).read_bytes()
        info = f"compose_reconciler-{VERSION}.dist-info"
        metadata = email.parser.Parser().parsestr(zf.read(f"{info}/METADATA").decode())
    requires = metadata.get_all("Requires-Dist") or []
    assert any(r.startswith("Jinja2") for r in requires)
