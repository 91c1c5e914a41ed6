#!/usr/bin/env bash
# scripts/demo.sh - the main job on this machine: set up, then reconcile examples/.
#
# Today (issues 3 and 4 done) that is: validate the repository, then print the plan
# against the local Docker host (`reconcile --dry-run`).  Applying it behind the proxy
# arrives with the agent executor (issue 5); this script will then apply and curl.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh --docker
bin=.venv/bin

echo "==> reconcile validate examples"
"$bin/reconcile" validate examples

echo "==> reconcile --dry-run examples   (against the local Docker host)"
rc=0
"$bin/reconcile" --dry-run examples --detailed-exitcode || rc=$?
case $rc in
  0) echo "demo: nothing to change" ;;
  2) echo "demo: the plan above lists the changes apply would make" ;;
  *) echo "demo: plan failed (exit $rc)" >&2; exit "$rc" ;;
esac
