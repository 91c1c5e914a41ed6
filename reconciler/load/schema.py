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
import re
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic

from reconciler.load.packaged import MissingData, schema_path
from reconciler.load.yamlsafe import Document, Path, load_yaml
from reconciler.model.errors import InvalidSpec, Problem

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
    path = schema_path(name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingData(
            f"the schema {path.name} is missing from this installation ({path.parent}); "
            "reinstall compose-reconciler"
        ) from None
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


# Validators that judge a value: their problem points at the value, as the repository
# rules do; a missing or unknown field points at the key or the mapping instead.
_VALUE_VALIDATORS = frozenset(
    {
        "pattern",
        "type",
        "enum",
        "const",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "format",
        "minItems",
        "maxItems",
        "uniqueItems",
        "contains",
    }
)

# Keys a ``propertyNames`` rule refuses, by the mapping that holds them: what the key
# is called, and what to write instead.
_FRIENDLY_KEYS = {
    "vars": ("var name", "letters, digits and '_', not starting with a digit"),
    "agents": (
        "agent alias",
        "lowercase letters, digits, '-' and '_', starting with a letter or digit",
    ),
}

# Values of a mapping of free-form keys, by the mapping that holds them.
_FRIENDLY_VALUES = {"agents": "an agent id: agt_ followed by 16 hex digits"}

_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")
_INTEGER = re.compile(r"[-+]?\d+")


def _to_problem(doc: Document, error: ValidationError, path: tuple[str | int, ...]) -> Problem:
    field = next((p for p in reversed(path) if isinstance(p, str)), None)
    where = _dotted(path)
    validator = error.validator
    fix: str | None = None
    if "propertyNames" in error.absolute_schema_path and isinstance(error.instance, str):
        return _key_problem(doc, error, path)
    if validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else "?"
        message = f"missing required field {missing!r}" + (f" in {where}" if where else "")
        fix = f"add `{missing}:`"
    elif validator == "pattern":
        hint = _FRIENDLY_PATTERNS.get(str(field)) if field else None
        if hint is None and len(path) >= 2:  # a value in a mapping of free-form keys
            hint = _FRIENDLY_VALUES.get(str(path[-2]))
        message = f"{where or 'value'} {_spelled(error.instance)} is not valid"
        fix = f"use {hint}" if hint else f"it must match {error.validator_value}"
    elif validator == "type":
        want: Any = error.validator_value
        wanted: list[str] = [want] if isinstance(want, str) else list(want)
        want_s = " or ".join(_type_phrase(w) for w in wanted)
        got = _described(doc, path, error.instance)
        message = f"{where or 'value'} must be {want_s}, not {got}"
        fix = _type_fix(wanted, want_s, error.instance)
    elif validator in ("enum", "const"):
        value: Any = error.validator_value
        allowed: list[Any] = list(value) if validator == "enum" else [value]
        choices = _choices(allowed)
        got = _described(doc, path, error.instance, article=False)
        if validator == "const":
            message = f"{where or 'value'} must be `{choices[0]}`, not {got}"
            fix = f"use {choices[0]}"
        else:
            shown = ", ".join(f"`{c}`" for c in choices)
            message = f"{where or 'value'} {got} is not one of {shown}"
            fix = f"use one of: {', '.join(choices)}"
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
        fix = _bound_fix(validator, error.validator_value)
    else:
        message = f"{where + ': ' if where else ''}{error.message}"
    return doc.problem(path, "schema", message, fix, key=validator not in _VALUE_VALIDATORS)


def _key_problem(doc: Document, error: ValidationError, path: tuple[str | int, ...]) -> Problem:
    """A key of the mapping at ``path`` that its ``propertyNames`` rule refuses."""
    key = str(error.instance)
    where = _dotted(path)
    if error.validator == "not":
        message = f"var name {key!r} is reserved"
        fix = "COMPOSE_*, DOCKER_*, DEPLOYMENT_ID, DOMAIN and DOMAIN_URL are set by the reconciler"
        return doc.problem((*path, key), "var-reserved", message, fix)
    label, hint = _FRIENDLY_KEYS.get(str(path[-1]) if path else "", (None, None))
    message = f"{label or (where + ' key' if where else 'key')} {key!r} is not valid"
    if hint:
        fix = f"use {hint}"
    elif error.validator == "pattern":
        fix = f"it must match {error.validator_value}"
    else:
        fix = error.message
    return doc.problem((*path, key), "schema", message, fix)


def _type_fix(wanted: list[str], want_s: str, value: Any) -> str:
    if isinstance(value, str) and (
        ("integer" in wanted and _INTEGER.fullmatch(value.strip()))
        or ("number" in wanted and _NUMBER.fullmatch(value.strip()))
    ):
        return "remove the quotes"
    if "boolean" in wanted and isinstance(value, str):
        return "use true or false"
    if "string" in wanted and isinstance(value, (bool, int, float)):
        return "put the value in quotes to keep it a string"
    return f"write {want_s}"


def _bound_fix(validator: str, bound: Any) -> str:
    return {
        "minimum": f"use {bound} or more",
        "maximum": f"use {bound} or less",
        "exclusiveMinimum": f"use more than {bound}",
        "exclusiveMaximum": f"use less than {bound}",
    }[validator]


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


_TYPE_NAMES = {"object": "mapping", "array": "list"}


def _type_phrase(json_type: str) -> str:
    """A JSON Schema type in YAML words: ``object`` is ``a mapping``."""
    if json_type == "null":
        return "null (empty)"
    return _article(_TYPE_NAMES.get(json_type, json_type))


def _same(a: Any, b: Any) -> bool:
    """Equal and of one type: ``True`` is not ``1``, ``'1'`` is not ``1``."""
    return type(a) is type(b) and a == b


def _spelled(value: Any) -> str:
    """A scalar as YAML spells it: ``true``, ``false``, ``null``, ``8080``, ``'text'``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return ".nan"
        if value in (float("inf"), float("-inf")):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if value.isprintable():
            return "'" + value.replace("'", "''") + "'"
        return json.dumps(value)  # a double-quoted YAML string, escapes and all
    return _typename(value)


def _plain(text: str) -> Any:
    """What ``text`` written as a plain (unquoted) YAML value loads as; ``...`` if it cannot."""
    if not text or text != text.strip() or "\n" in text:
        return ...
    try:
        return load_yaml(f"{text}\n", "").data
    except InvalidSpec:
        return ...


def _choices(allowed: list[Any]) -> list[str]:
    """Allowed values as a user can write them in YAML, each once.

    ``["auto", "off", False]`` is ``auto, off``: a plain ``off`` loads as ``false``, which
    is allowed too, so it needs no quotes and ``false`` needs no entry of its own.
    """
    out: list[str] = []
    covered: list[Any] = []
    for value in allowed:
        if isinstance(value, str):
            plain = _plain(value)
            if _same(plain, value) or any(_same(plain, a) for a in allowed):
                out.append(value)
                covered.append(plain)
                continue
        if any(_same(value, c) for c in covered):
            continue
        out.append(_spelled(value))
        covered.append(value)
    return out


def _described(doc: Document, path: Path, value: Any, *, article: bool = True) -> str:
    """``value`` for a message, saying how YAML read it when the user wrote it otherwise.

    ``tls: on`` loads as ``true``; the message says ``true (YAML reads `on` as true)``.
    """
    if isinstance(value, (dict, list)):
        return _typename(value)
    spelled = _spelled(value)
    if article:
        spelled = {
            bool: f"the boolean {spelled}",
            int: f"the integer {spelled}",
            float: f"the number {spelled}",
            str: f"the string {spelled}",
        }.get(type(value), "null (empty)" if value is None else spelled)
    written = _written(doc, path)
    if (
        written is not None
        and not isinstance(value, str)
        and written != _spelled(value)
        and _same(_plain(written), value)
    ):
        spelled += f" (YAML reads `{written}` as {_spelled(value)})"
    return spelled


def _written(doc: Document, path: Path) -> str | None:
    """The plain scalar as written at ``path``'s own position in the source, if known."""
    if tuple(path) not in doc.positions:
        return None
    lines = doc.source_lines
    line, col = doc.positions[tuple(path)]
    if not lines or not 0 < line <= len(lines):
        return None
    found = re.match(r"[^\s,\[\]{}#]+", lines[line - 1][col - 1 :])
    return found.group(0) if found else None


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
