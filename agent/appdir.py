"""One app dir of the state dir, and nothing but its files (STYLE 2.4's ``AppDir``).

The executor decides and orders; this class writes and reads ``apps/<id>``: the files
compose runs (``compose.yaml``, ``.env``, a bundle or build context), the kept releases
a rollback restores, and the record.  The id is checked by :func:`agent.statedir.app_dir`
when the object is made, so no path is ever built from an id that is not ``dpl_<16 hex>``.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import time
from collections.abc import Mapping
from typing import Any

import yaml

from agent.onion import KEY_DIR, ensure_identity
from agent.secrets import env_file_text, resolve_secrets
from agent.statedir import AppRecord, app_dir, atomic_write, read_record, write_record
from reconciler.render.model import RenderedDeployment

__all__ = ["BUNDLE_LIST", "KEEP_RELEASES", "RESERVED", "AppDir", "pin_images"]

BUNDLE_LIST = ".bundle-files.json"  # the top-level entries the bundle put in the app dir
RESERVED = frozenset(
    {
        "compose.yaml",
        ".env",
        "state.json",
        "secrets.json",
        "data",
        "releases",
        "build",
        ".lock",
        "onion",
        "backups",  # agent.operations.backup keeps the backup hook's output here
        "history.jsonl",  # agent.statedir.write_record
        BUNDLE_LIST,
    }
)
KEEP_RELEASES = 5


class AppDir:
    def __init__(self, state_dir: pathlib.Path, dpl_id: str) -> None:
        self.state_dir = state_dir
        self.id = dpl_id
        self.path = app_dir(state_dir, dpl_id)  # ValueError for an id that is not ours

    def record(self) -> AppRecord | None:
        return read_record(self.state_dir, self.id)

    def write_record(self, rec: AppRecord) -> None:
        write_record(self.state_dir, rec)

    def write_files(
        self, want: RenderedDeployment, repo_root: pathlib.Path, environ: Mapping[str, str]
    ) -> None:
        """``compose.yaml``, ``.env`` (0600) and what they need (secrets, the onion key,
        a bundle, a build context), each written atomically."""
        directory = self.path
        (directory / "data").mkdir(parents=True, exist_ok=True)
        values, keep = resolve_secrets(want, directory, environ)
        if keep:
            atomic_write(
                directory / "secrets.json", json.dumps(keep, sort_keys=True).encode(), 0o600
            )
        env = {**want.env, **values}
        if want.onion:
            # made before the first `up`, so an onion-only app boots with its address
            address = ensure_identity(directory / KEY_DIR).address
            if not want.domain:
                env["DOMAIN"] = address
                env["DOMAIN_URL"] = f"http://{address}"
        atomic_write(directory / ".env", env_file_text(env).encode(), 0o600)
        if want.bundle and want.build is None:
            _place_bundle(repo_root / want.bundle, directory)
        if want.build is not None:
            self._prepare_build(want, repo_root, directory / "build")
        atomic_write(directory / "compose.yaml", want.compose_yaml.encode(), 0o644)

    @staticmethod
    def _prepare_build(
        want: RenderedDeployment, repo_root: pathlib.Path, target: pathlib.Path
    ) -> None:
        build = want.build
        assert build is not None
        fresh = target.with_name("build.new")
        shutil.rmtree(fresh, ignore_errors=True)
        if build.kind == "repo":
            assert build.path is not None
            shutil.copytree(repo_root / build.path, fresh, symlinks=True)
        else:
            from agent.gitfetch import fetch_revision

            assert build.url is not None
            assert build.revision is not None
            fetch_revision(build.url, build.revision, fresh)
        shutil.rmtree(target, ignore_errors=True)
        fresh.rename(target)

    def save_release(
        self, want: RenderedDeployment, image_ids: Mapping[str, str], rec: AppRecord
    ) -> pathlib.Path:
        """Keep this working release (files, images pinned to ``image_ids``, the record
        ``rec``) for a later rollback; the last :data:`KEEP_RELEASES` stay."""
        directory = self.path
        releases = directory / "releases"
        releases.mkdir(exist_ok=True)
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{want.spec_hash[:12]}"
        target = releases / name
        tmp = releases / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        pinned = pin_images(want.compose_yaml, image_ids)
        (tmp / "compose.yaml").write_text(pinned)
        shutil.copy2(directory / ".env", tmp / ".env")
        os.chmod(tmp / ".env", 0o600)
        _save_bundle(directory, tmp)
        (tmp / "state.json").write_text(rec.model_dump_json(indent=2))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        kept = sorted(p for p in releases.iterdir() if not p.name.startswith("."))
        for old in kept[:-KEEP_RELEASES]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def latest_release(self) -> pathlib.Path | None:
        """The newest kept release, or None."""
        releases = self.path / "releases"
        if not releases.is_dir():
            return None
        kept = sorted(p for p in releases.iterdir() if not p.name.startswith("."))
        return kept[-1] if kept else None

    def restore_files(self, release: pathlib.Path) -> AppRecord:
        """Put a kept release's files back (``compose.yaml``, ``.env``, its bundle) and
        return the record it was saved with."""
        for name in ("compose.yaml", ".env"):
            src = release / name
            if src.exists():
                atomic_write(self.path / name, src.read_bytes(), 0o600 if name == ".env" else 0o644)
        _restore_bundle(release, self.path)
        return AppRecord.model_validate_json((release / "state.json").read_text())


def pin_images(compose_yaml: str, image_ids: Mapping[str, str]) -> str:
    """The compose file with each service's image pinned to the id that ran."""
    data: dict[str, Any] = yaml.safe_load(compose_yaml) or {}
    for service, spec in (data.get("services") or {}).items():
        if service in image_ids and isinstance(spec, dict):
            spec["image"] = image_ids[service]
            spec.pop("build", None)
            spec["pull_policy"] = "never"
    return yaml.safe_dump(data, sort_keys=False, width=1 << 16)


def _copy_bundle(source: pathlib.Path, target: pathlib.Path) -> list[str]:
    """Files shipped with a manifest (e.g. ``./public``) beside the compose file; returns
    the top-level names it placed."""
    placed = []
    for entry in sorted(source.iterdir()):
        if entry.name in RESERVED or entry.name in (
            "deployment.yaml",
            "deployment.yml",
            "deployment.json",
        ):
            continue
        dest = target / entry.name
        _clear_way(entry, dest)
        if entry.is_dir() and not entry.is_symlink():
            for dirpath, dirnames, filenames in os.walk(entry):
                here = dest / pathlib.Path(dirpath).relative_to(entry)
                for name in [*filenames, *dirnames]:
                    _clear_way(pathlib.Path(dirpath, name), here / name)
            shutil.copytree(entry, dest, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, dest, follow_symlinks=False)
        placed.append(entry.name)
    return placed


def _clear_way(source: pathlib.Path, dest: pathlib.Path) -> None:
    """Remove ``dest`` when a copy of ``source`` must replace it rather than write into
    or through it: a link on either side (bundles carry the repository's inner links, and
    a copy onto a link would write to its target), or a file where a directory goes."""
    if not os.path.lexists(dest):
        return
    if source.is_symlink() or dest.is_symlink() or source.is_dir() != dest.is_dir():
        _remove_entry(dest)


def _bundle_entries(directory: pathlib.Path) -> list[str]:
    """The names the last bundle placed in ``directory`` (never a reserved one)."""
    try:
        names = json.loads((directory / BUNDLE_LIST).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(names, list):
        return []
    return [n for n in names if isinstance(n, str) and n not in RESERVED and "/" not in n]


def _remove_entry(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _place_bundle(source: pathlib.Path, directory: pathlib.Path) -> None:
    """Copy the bundle in, and take out what the previous bundle placed that this one no
    longer ships (a file deleted from the repository is deleted here too).  The list of
    placed names is what a release saves and a rollback puts back."""
    before = set(_bundle_entries(directory))
    placed = _copy_bundle(source, directory)
    for stale in sorted(before - set(placed)):
        _remove_entry(directory / stale)
    atomic_write(directory / BUNDLE_LIST, json.dumps(placed).encode(), 0o644)


def _save_bundle(directory: pathlib.Path, release: pathlib.Path) -> None:
    names = _bundle_entries(directory)
    if not (directory / BUNDLE_LIST).exists():
        return  # not a bundle deployment
    target = release / "bundle"
    target.mkdir()
    for name in names:
        entry = directory / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target / name, symlinks=True)
        elif entry.exists() or entry.is_symlink():
            shutil.copy2(entry, target / name, follow_symlinks=False)
    (release / BUNDLE_LIST).write_text(json.dumps(names))


def _restore_bundle(release: pathlib.Path, directory: pathlib.Path) -> None:
    """Put the release's bundle files back, replacing the failed update's."""
    if not (release / "bundle").is_dir():
        return  # saved before releases kept bundles, or not a bundle deployment
    for name in _bundle_entries(directory):
        _remove_entry(directory / name)
    names = _bundle_entries(release)
    for name in names:
        entry = release / "bundle" / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, directory / name, symlinks=True)
        elif entry.exists() or entry.is_symlink():
            shutil.copy2(entry, directory / name, follow_symlinks=False)
    atomic_write(directory / BUNDLE_LIST, json.dumps(names).encode(), 0o644)
