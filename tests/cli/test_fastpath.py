"""The fast path's pure parts: which ``apply`` forms it answers, the names it spells
without importing their modules, and that the console script imports no heavy module
before it decides."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from reconciler.cli import fastpath


def test_the_names_it_spells_agree_with_their_modules() -> None:
    from agent.engine import DEFAULT_SOCKET
    from agent.proxy import PROXY_CONTAINER_ENV, ProxySettings
    from reconciler.model.ids import LABEL_DEPLOYMENT

    assert fastpath.LABEL_DEPLOYMENT == LABEL_DEPLOYMENT
    assert fastpath.PROXY_CONTAINER_ENV == PROXY_CONTAINER_ENV
    assert fastpath.DEFAULT_SOCKET == DEFAULT_SOCKET
    settings = ProxySettings(state_dir=pathlib.Path("/x"))
    assert settings.container == fastpath.PROXY_CONTAINER
    assert settings.image == fastpath.PROXY_IMAGE
    assert settings.admin_socket == pathlib.Path("/x/proxy/run/admin.sock")


def test_it_reads_the_status_words_the_observer_reads() -> None:
    from agent import observe

    assert tuple(marker for marker, _ in observe._HEALTH) == fastpath._HEALTH
    assert fastpath._CODE_RE.pattern == observe._CODE_RE.pattern


def test_the_state_dir_is_the_one_apply_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.statedir import default_state_dir

    monkeypatch.setenv("RECONCILE_STATE_DIR", "/some/where")
    assert fastpath.state_dir({}) == default_state_dir()
    monkeypatch.delenv("RECONCILE_STATE_DIR")
    assert fastpath.state_dir({}) == default_state_dir()
    assert fastpath.state_dir({"--state-dir": "/s"}) == pathlib.Path("/s")


@pytest.mark.parametrize(
    "extra",
    [
        ["--watch"],
        ["--ref", "main"],
        ["--subpath", "x"],
        ["--help"],
        ["-yf", "json"],
        ["-f", "yaml"],
        ["-f"],
        ["--unknown"],
        ["other-positional"],
    ],
)
def test_other_forms_take_the_normal_path(tmp_path: pathlib.Path, extra: list[str]) -> None:
    assert fastpath.parse_apply(["apply", str(tmp_path), *extra]) is None


def test_sources_it_cannot_fingerprint_take_the_normal_path(tmp_path: pathlib.Path) -> None:
    assert fastpath.parse_apply(["apply", "https://example.com/repo.git"]) is None
    assert fastpath.parse_apply(["apply", "git@example.com:repo.git"]) is None
    assert fastpath.parse_apply(["apply", str(tmp_path / "missing")]) is None
    assert fastpath.parse_apply(["plan", str(tmp_path)]) is None


def test_the_supported_forms(tmp_path: pathlib.Path) -> None:
    got = fastpath.parse_apply(
        ["apply", str(tmp_path), "--yes", "-f", "json", "--state-dir=/s", "--settle", "1"]
    )
    assert got == {
        "source": str(tmp_path),
        "--format": "json",
        "--state-dir": "/s",
        "--settle": "1",
    }
    assert fastpath.parse_apply(["apply"]) == {"source": "."}


def test_a_symlink_in_the_tree_is_a_doubt(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a").write_text("x")
    before = fastpath._tree(tmp_path, content=True)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    with pytest.raises(fastpath._Unsupported):
        fastpath._tree(tmp_path, content=True)
    (tmp_path / "link").unlink()
    (tmp_path / "a").write_text("y")
    assert fastpath._tree(tmp_path, content=True) != before


def test_the_console_script_decides_before_importing_the_cli(tmp_path: pathlib.Path) -> None:
    # No Docker daemon on this socket: the fingerprint fails, the normal path runs (and
    # says so); what matters here is what was imported before that decision.
    code = (
        "import sys\n"
        "from reconciler.cli import fastpath\n"
        "fastpath.begin(['apply', sys.argv[1]])\n"
        "print(' '.join(m for m in ('typer', 'pydantic', 'yaml', 'rich') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock", "PATH": "/usr/bin:/bin"},
        timeout=120,
        check=True,
    )
    assert proc.stdout.strip() == ""
