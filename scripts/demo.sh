#!/usr/bin/env bash
# scripts/demo.sh - the main job on this machine: set up, then reconcile examples/ onto
# the local Docker host behind the Caddy proxy, and show every app answering through it.
#
#   bash scripts/demo.sh            # state in /var/tmp/compose-reconciler-demo
#   DEMO_STATE_DIR=... bash scripts/demo.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh --docker
bin=.venv/bin
export RECONCILE_STATE_DIR=${DEMO_STATE_DIR:-/var/tmp/compose-reconciler-demo}

echo "==> reconcile validate examples"
"$bin/reconcile" validate examples

echo "==> reconcile --dry-run examples   (the plan against the local Docker host)"
rc=0
"$bin/reconcile" --dry-run examples --detailed-exitcode || rc=$?
[ "$rc" -le 2 ] || exit "$rc"

echo "==> reconcile apply examples --yes"
"$bin/reconcile" apply examples --yes

echo "==> reconcile status"
"$bin/reconcile" status

port=$(awk '/http_port:/ {print $2}' examples/reconcile.yaml)
echo "==> every app through the proxy on 127.0.0.1:${port}"
"$bin/reconcile" status --format json | "$bin/python" -c '
import json, sys
state = json.load(sys.stdin)
for app in state["agents"]["local"]["deployments"].values():
    if app["namespace"] == "examples" and app.get("record"):
        for route in app["record"]["routes"]:
            print(route["domain"])
' | sort | while read -r domain; do
  code=$(curl -s -o /tmp/demo-body.$$ -w '%{http_code}' -H "Host: $domain" "http://127.0.0.1:${port}/")
  printf '  %-32s HTTP %s  %s\n' "$domain" "$code" "$(head -c 60 /tmp/demo-body.$$ | tr -s '\n' ' ')"
done
rm -f /tmp/demo-body.$$
echo "==> open http://hello.localhost:${port}/ in a browser; re-run to see an all-noop reconcile"
