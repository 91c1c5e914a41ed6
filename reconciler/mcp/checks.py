"""``validate`` and ``plan`` for the tools: a repository directory, or one file's text inline.

Inline text is checked in a copy of the clone (without ``.git``), in place of the file of
the deployment it names, so it sees the repository's ``reconcile.yaml``, catalog and
neighbours exactly as a commit would -- and the clone itself is never written.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from reconciler.load.catalog import Catalog
from reconciler.load.desired import Desired, load_desired
from reconciler.load.repo import DEPLOYMENTS_DIR, DesiredState, load_repository
from reconciler.mcp.errors import ToolFailure, problem_json
from reconciler.mcp.remote import ServerClient
from reconciler.model.errors import InvalidSpec, ReconcilerError
from reconciler.model.ids import deployment_id
from reconciler.model.state import ActualState
from reconciler.plan import Plan, PlanOptions, plan
from reconciler.plan.report import json_plan, summary_line, text_plan
from reconciler.render import RenderContext, agents_of, render_all

__all__ = [
    "Against",
    "Checked",
    "declared_name",
    "inline_copy",
    "load_checked",
    "plan_state",
    "validation_report",
]

Against = Literal["auto", "empty", "server"]

#: An inline file is one deployment file's text, not a repository.
MAX_INLINE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Checked:
    desired: Desired
    inline_file: str | None = None  # where the inline text was checked, repo-relative

    @property
    def state(self) -> DesiredState:
        return self.desired.state


def validation_report(checked: Checked) -> dict[str, Any]:
    state = checked.state
    out: dict[str, Any] = {
        "valid": state.ok,
        "deployments": [
            {
                "name": d.name,
                "kind": str(d.kind),
                "file": d.file,
                "id": deployment_id(state.config.namespace, d.name),
            }
            for d in state.deployments
        ],
        "files": len(state.files),
        "problems": [problem_json(p) for p in state.problems],
    }
    if checked.inline_file is not None:
        out["inline_file"] = checked.inline_file
    return out


def load_checked(root: pathlib.Path, catalog: Catalog) -> Desired:
    try:
        return load_desired(str(root), catalog=catalog)
    except InvalidSpec as exc:
        raise ToolFailure.invalid(str(exc), exc.problems) from None
    except ReconcilerError as exc:
        raise ToolFailure("invalid", str(exc)) from None


@contextmanager
def inline_copy(
    repo: pathlib.Path, text: str, catalog: Catalog
) -> Iterator[tuple[pathlib.Path, str]]:
    """A throw-away copy of ``repo`` holding ``text`` as a deployment file: (root, file)."""
    if len(text.encode("utf-8", "replace")) > MAX_INLINE_BYTES:
        raise ToolFailure("invalid", f"the inline YAML is larger than {MAX_INLINE_BYTES} bytes")
    name = declared_name(text)
    existing = _file_of(repo, name, catalog) if name else None
    rel = existing or f"{DEPLOYMENTS_DIR}/{name or 'inline'}.yaml"
    with tempfile.TemporaryDirectory(prefix="reconcile-mcp-") as tmp:
        root = pathlib.Path(tmp) / "repo"
        shutil.copytree(repo, root, symlinks=True, ignore=shutil.ignore_patterns(".git"))
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        yield root, rel


def declared_name(text: str) -> str | None:
    """The ``name:`` the text declares, if it parses; the loader reports every other fault."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if isinstance(data, dict) and isinstance(data.get("name"), str):
        candidate = data["name"]
        if "/" not in candidate and candidate not in (".", "..") and candidate.strip():
            return str(candidate)
    return None


def _file_of(repo: pathlib.Path, name: str, catalog: Catalog) -> str | None:
    state = load_repository(repo, catalog=catalog)
    for d in state.deployments:
        if d.name == name:
            return d.file
    return None


def actual_state(
    against: Against, state: DesiredState, server: ServerClient | None
) -> tuple[ActualState, str]:
    if against == "server" or (against == "auto" and server is not None):
        if server is None:
            raise ToolFailure(
                "not_supported",
                "against=server needs a control plane: start `reconcile mcp` with RECONCILE_SERVER",
            )
        data = server.get("/v1/actual-state")
        try:
            actual = ActualState.model_validate(data)
        except ValueError as exc:
            raise ToolFailure(
                "unavailable", f"the control plane sent an unreadable state: {exc}"
            ) from None
        return actual, f"control plane {server.base_url}"
    return (
        ActualState.empty(agents_of(state)),
        "empty (every agent online, running nothing: every deployment is an install)",
    )


def plan_state(
    desired: Desired,
    *,
    against: Against,
    server: ServerClient | None,
    allow_mass_prune: bool = False,
) -> dict[str, Any]:
    """The plan as the CLI's ``--format json`` document, plus its text lines and summary."""
    state = desired.state
    if not state.ok:
        raise ToolFailure.invalid(
            "the desired state is invalid: no plan (nothing was touched)",
            state.errors,
            hint="fix each problem at its file and line, then call validate again",
        )
    actual, where = actual_state(against, state, server)
    rendered = render_all(
        state,
        RenderContext(
            config=state.config,
            source_revision=desired.revision,
            git_revisions=desired.git_revisions,
        ),
        actual=actual,
    )
    result: Plan = plan(
        rendered,
        actual,
        namespace=state.config.namespace,
        options=PlanOptions(
            prune=state.config.prune,
            allow_mass_prune=allow_mass_prune,
            max_prune_share=state.config.max_prune_share,
        ),
        unresolved=desired.unresolved,
    )
    return {
        "against": where,
        "plan": json.loads(json_plan(result)),
        "text": [line for _style, line in text_plan(result)],
        "summary": summary_line(result),
        "has_changes": result.has_changes,
    }
