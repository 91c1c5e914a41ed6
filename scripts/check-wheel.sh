#!/usr/bin/env bash
# scripts/check-wheel.sh - the package as a new user gets it: build the wheel, install it (not
# editable) into a fresh venv, and run it from a directory outside the checkout.
#
#   bash scripts/check-wheel.sh [--keep]
#
# Checks, each failing the script with the reason:
#   - `reconcile --version` and `reconcile-agent --version` print the version in pyproject.toml
#   - `reconcile catalog list -f json` lists every app of the checkout's catalog (same count,
#     same names), each valid
#   - `reconcile validate examples` exits 0, and `reconcile --dry-run examples --against empty`
#     plans every deployment
#   - a schema error (examples/invalid/schema-unknown-field) is reported as such: exit 1 and
#     the rule, never a traceback (the schemas are in the wheel)
#   - with the installed catalog moved away, `catalog list` exits 1 with the reason
#
#   --keep   leave the work dir (wheel, venv, outputs) for inspection
#
# Environment:
#   PYTHON           the interpreter for the fresh venv (default python3; >= 3.11)
#   CHECK_WHEEL_DIR  work dir (default: a new one under ${TMPDIR:-/tmp})
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
BUILD_PY=$ROOT/.venv/bin/python
[ -x "$BUILD_PY" ] || BUILD_PY=$PYTHON
keep=0
for arg in "$@"; do
  case $arg in
    --keep) keep=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "check-wheel.sh: unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

usec() { local t=$EPOCHREALTIME; echo "${t//[!0-9]/}"; }
T_STEP=$(usec)
step() { T_STEP=$(usec); }
done_() { printf 'check-wheel: %-56s %6d ms\n' "$*" $((($(usec) - T_STEP) / 1000)); }
die() { printf 'check-wheel: FAILED: %s\n' "$*" >&2; exit 1; }

WORK=${CHECK_WHEEL_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/check-wheel.XXXXXX")}
mkdir -p "$WORK"
cleanup() { [ "$keep" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT

version=$("$BUILD_PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$ROOT/pyproject.toml")

step
"$BUILD_PY" -m build --wheel -o "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 ||
  { tail -n 25 "$WORK/build.log" >&2; die "python -m build --wheel failed (log $WORK/build.log)"; }
wheels=("$WORK"/dist/compose_reconciler-"$version"-py3-none-any.whl)
[ -f "${wheels[0]}" ] || die "no wheel compose_reconciler-$version-py3-none-any.whl in $WORK/dist"
wheel=${wheels[0]}
done_ "built $(basename "$wheel")"

step
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q "$wheel" >"$WORK/pip.log" 2>&1 ||
  { tail -n 25 "$WORK/pip.log" >&2; die "pip install of the wheel failed (log $WORK/pip.log)"; }
done_ "installed into a fresh venv ($("$WORK/venv/bin/python" -V 2>&1))"

# From outside the checkout, with nothing of it on sys.path: the installed files only.
OUTSIDE=$WORK/elsewhere
mkdir -p "$OUTSIDE"
cd "$OUTSIDE"
unset PYTHONPATH RECONCILE_CATALOG
BIN=$WORK/venv/bin
origin=$("$BIN/python" -c 'import reconciler; print(reconciler.__file__)')
case $origin in "$ROOT"/*) die "reconciler imports from the checkout ($origin), not the wheel" ;; esac

step
out=$("$BIN/reconcile" --version) || die "reconcile --version exited $?"
[ "$out" = "reconcile (compose-reconciler) $version" ] || die "reconcile --version printed: $out"
out=$("$BIN/reconcile-agent" --version) || die "reconcile-agent --version exited $?"
[ "$out" = "reconcile-agent (compose-reconciler) $version" ] || die "reconcile-agent --version printed: $out"
"$BIN/reconcile" -h >/dev/null || die "reconcile -h exited $?"
done_ "reconcile / reconcile-agent --version: $version"

step
"$BIN/reconcile" catalog list -f json >"$WORK/catalog.json" || die "reconcile catalog list exited $?"
want=$(cd "$ROOT/reconciler/catalog" && find . -mindepth 2 -maxdepth 2 -name '*.y*ml' | cut -d/ -f2 | sort -u)
"$BIN/python" - "$WORK/catalog.json" "$want" <<'PYEOF' || die "catalog list does not match the checkout's catalog"
import json, sys
rows = json.load(open(sys.argv[1]))
have = sorted(r["name"] for r in rows)
want = sorted(sys.argv[2].split())
if have != want:
    sys.exit(f"catalog list: {len(have)} apps {have}, the checkout has {len(want)} {want}")
bad = [r["name"] for r in rows if not r["valid"]]
if bad:
    sys.exit(f"catalog list: invalid manifests {bad}")
PYEOF
done_ "catalog list: $(echo "$want" | wc -l) apps, as many as catalog/ holds"

step
"$BIN/reconcile" validate "$ROOT/examples" >"$WORK/validate.txt" 2>&1 ||
  { cat "$WORK/validate.txt" >&2; die "reconcile validate examples exited non-zero"; }
"$BIN/reconcile" --dry-run "$ROOT/examples" --against empty -f json >"$WORK/plan.json" 2>"$WORK/plan.err" ||
  { cat "$WORK/plan.err" >&2; die "reconcile --dry-run examples --against empty failed"; }
planned=$("$BIN/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["summary"].get("install", 0))' "$WORK/plan.json")
[ "$planned" -gt 0 ] || die "the plan of examples/ installs nothing"
done_ "validate examples: ok; --dry-run --against empty: $planned installs"

step
code=0
"$BIN/reconcile" validate "$ROOT/examples/invalid/schema-unknown-field" >"$WORK/invalid.txt" 2>&1 || code=$?
[ "$code" = 1 ] || { cat "$WORK/invalid.txt" >&2; die "validate of a schema error exited $code, not 1"; }
! grep -q Traceback "$WORK/invalid.txt" || { cat "$WORK/invalid.txt" >&2; die "validate of a schema error crashed"; }
grep -q 'schema' "$WORK/invalid.txt" || { cat "$WORK/invalid.txt" >&2; die "no schema problem reported"; }
done_ "a schema error: exit 1, reported with its rule"
step
# an installation that lost its catalog says so and fails; it never lists 0 apps
site=$("$BIN/python" -c 'import pathlib, reconciler; print(pathlib.Path(reconciler.__file__).parent)')
mv "$site/catalog" "$site/catalog.moved"
code=0
"$BIN/reconcile" catalog list >"$WORK/no-catalog.txt" 2>&1 || code=$?
mv "$site/catalog.moved" "$site/catalog"
[ "$code" = 1 ] || { cat "$WORK/no-catalog.txt" >&2; die "catalog list without a catalog exited $code, not 1"; }
grep -q "catalog .* is not a directory" "$WORK/no-catalog.txt" ||
  { cat "$WORK/no-catalog.txt" >&2; die "catalog list without a catalog gave no reason"; }
done_ "a missing catalog: exit 1 with the reason"
echo "check-wheel: ok ($wheel)"
