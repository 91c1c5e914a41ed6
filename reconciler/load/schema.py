"""JSON Schema validation of loaded documents, with errors placed and phrased for humans.

The schemas in ``schemas/`` are the contract users' editors see; the pydantic models
mirror them, and ``tests/schemas`` proves both give one verdict on the same documents.
That lets :func:`checked_model` run the (compiled, fast) model first and consult the
schema only to *explain* a refusal: its errors carry paths we map to ``line:col`` and
turn into fixes.  A valid repository never imports jsonschema at all.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic

from reconciler.load.yamlsafe import Document, Path
from reconciler.model.errors import Problem

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError
    from referencing import Registry

__all__ = ["SCHEMA_NAMES", "checked_model", "pydantic_problems", "schema", "validate_against"]

T = TypeVar("T")

SCHEMA_NAMES = ("manifest", "deployment", "reconcile")

_FRIENDLY_PATTERNS = {
    "name": "lowercase letters, digits, '-' and '_', 3 to 100 characters, "
    "starting and ending with a letter or digit",
    "domain": "a lowercase DNS name such as app.example.com",
    "agent": "`local`, an alias from reconcile.yaml, or an agt_<16 hex> id",
    "agent_id": "`local`, an alias from reconcile.yaml, or an agt_<16 hex> id",
    "git_url": "an https://, ssh:// or file:// URL",
    "git_ref": "a branch, tag or commit that does not start with '-'",
    "app": "a catalog app name such as vaultwarden",
}


@cache
def schema(name: str) -> dict[str, Any]:
    """A schema shipped with the package (``schemas/<name>.schema.json``)."""
    text = resources.files("reconciler").joinpath("_schemas", f"{name}.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def checked_model(
    doc: Document,
    name: str,
    build: Callable[[], T],
    *,
    fragment: str = "",
    data: Any = None,
    base: Path = (),
) -> tuple[T | None, list[Problem]]:
    """Build the model; on refusal, explain with the schema's placed errors."""
    try:
        return build(), []
    except pydantic.ValidationError as exc:
        problems = validate_against(doc, name, fragment=fragment, data=data, base=base)
        return None, problems or pydantic_problems(doc, exc, base)


def pydantic_problems(
    doc: Document, error: pydantic.ValidationError, base: Path = ()
) -> list[Problem]:
    """Model errors the schema did not catch (it should catch all; this is the backstop)."""
    out = []
    for item in error.errors():
        loc = tuple(x for x in item["loc"] if isinstance(x, (str, int)))
        out.append(doc.problem((*base, *loc), "schema", f"{item['msg']}"))
    return out


@cache
def _registry() -> Registry:
    from referencing import Registry, Resource

    return Registry().with_resources(
        (schema(n)["$id"], Resource.from_contents(schema(n))) for n in SCHEMA_NAMES
    )


@cache
def _validator(name: str, fragment: str = "") -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    root = schema(name)
    target = {"$ref": f"{root['$id']}#{fragment}"} if fragment else root
    return Draft202012Validator(target, registry=_registry())


def validate_against(
    doc: Document,
    name: str,
    *,
    fragment: str = "",
    data: Any = None,
    base: tuple[str | int, ...] = (),
) -> list[Problem]:
    """All schema violations of ``doc`` (or of ``data`` found at ``base`` inside it)."""
    instance = doc.data if data is None else data
    errors = sorted(
        _validator(name, fragment).iter_errors(instance),
        key=lambda e: (list(map(str, e.absolute_path)), e.validator),
    )
    return [p for e in _leaves(errors) for p in _to_problems(doc, e, base)]


def _leaves(errors: Iterable[ValidationError]) -> Iterator[ValidationError]:
    """For ``oneOf``/``anyOf`` report the branch that came closest, not the umbrella."""
    from jsonschema.exceptions import best_match

    for error in errors:
        if error.validator in ("oneOf", "anyOf") and error.context:
            yield best_match(error.context)
        else:
            yield error


def _to_problems(
    doc: Document, error: ValidationError, base: tuple[str | int, ...]
) -> list[Problem]:
    path = (*base, *error.absolute_path)
    if error.validator == "additionalProperties":
        known = (
            sorted((error.schema.get("properties") or {}).keys())
            if isinstance(error.schema, dict)
            else []
        )
        where = _dotted(path)
        problems = []
        for key in _extra_keys(error):
            close = difflib.get_close_matches(key, known, n=1)
            message = f"unknown field {key!r}" + (f" in {where}" if where else "")
            fix = f"did you mean {close[0]!r}?" if close else f"known fields: {', '.join(known)}"
            problems.append(doc.problem((*path, key), "schema", message, fix))
        if problems:
            return problems
    return [_to_problem(doc, error, path)]


def _forbidden_together(value: Any) -> list[str]:
    """Field names of a ``not: {required}`` / ``not: {anyOf: [{required}]}`` clause."""
    if not isinstance(value, dict):
        return []
    if "required" in value:
        return list(value["required"])
    return [f for sub in value.get("anyOf", []) for f in sub.get("required", [])]


def _to_problem(doc: Document, error: ValidationError, path: tuple[str | int, ...]) -> Problem:
    field = next((p for p in reversed(path) if isinstance(p, str)), None)
    where = _dotted(path)
    validator = error.validator
    fix: str | None = None
    if validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else "?"
        message = f"missing required field {missing!r}" + (f" in {where}" if where else "")
        fix = f"add `{missing}:`"
    elif validator == "pattern":
        hint = _FRIENDLY_PATTERNS.get(str(field)) if field else None
        message = f"{where or 'value'} {error.instance!r} is not valid"
        fix = f"use {hint}" if hint else f"it must match {error.validator_value}"
    elif validator == "type":
        want = error.validator_value
        want_s = " or ".join(want) if isinstance(want, list) else str(want)
        message = f"{where or 'value'} must be {_article(want_s)}, not {_typename(error.instance)}"
    elif validator in ("enum", "const"):
        allowed = error.validator_value if validator == "enum" else [error.validator_value]
        message = f"{where or 'value'} {error.instance!r} is not one of {allowed!r}"
    elif validator == "not" and "propertyNames" in error.schema_path:
        message = f"var name {error.instance!r} is reserved"
        fix = "COMPOSE_*, DOCKER_*, DEPLOYMENT_ID, DOMAIN and DOMAIN_URL are set by the reconciler"
        return doc.problem((*path, str(error.instance)), "var-reserved", message, fix)
    elif validator == "not" and _forbidden_together(error.validator_value):
        together = _forbidden_together(error.validator_value)
        instance = error.instance if isinstance(error.instance, dict) else {}
        fields = [f for f in together if f in instance]
        message = "these fields cannot be used together: " + ", ".join(f"`{f}`" for f in fields)
        fix = "keep one of them"
        if set(fields) == {"agent", "agent_id"}:
            fix = "keep one of them (`agent_id` is Impreza's name for `agent`)"
        elif "manifest" in together or "compose" in together:
            message = "`manifest` cannot be combined with `compose` or `routes`"
            fix = "use `manifest:` alone, or `compose:` with `routes:`"
        if fields:
            return doc.problem((*path, fields[-1]), "schema", message, fix)
    elif validator == "propertyNames":
        message = f"{where} has an invalid key {error.instance!r}"
    elif validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        message = f"{where or 'value'} {error.message}"
    else:
        message = f"{where + ': ' if where else ''}{error.message}"
    return doc.problem(path, "schema", message, fix)


def _extra_keys(error: ValidationError) -> list[str]:
    if not isinstance(error.instance, dict) or not isinstance(error.schema, dict):
        return []
    props = error.schema.get("properties") or {}
    return sorted(k for k in error.instance if k not in props)


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _article(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _typename(value: Any) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "empty (null)",
    }.get(type(value), type(value).__name__)
