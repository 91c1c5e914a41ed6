#!/usr/bin/env bash
# scripts/test.sh - the project's test command: lint, format, types, import layers, then pytest.
# Needs the venv from `bash scripts/setup.sh` (and `--docker` for the Docker tests).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k plan`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=.venv/bin

echo "==> ruff check"
"$bin/ruff" check .

echo "==> ruff format --check"
"$bin/ruff" format --check .

echo "==> mypy"
"$bin/mypy"

echo "==> lint-imports"
"$bin/lint-imports"

echo "==> pytest"
rc=0
"$bin/python" -m pytest -q "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests (exit 5); that is a failure" >&2
elif [ "$rc" -ne 0 ]; then
  echo "test.sh: pytest failed (exit $rc)" >&2
fi
exit "$rc"
