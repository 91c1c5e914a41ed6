#!/usr/bin/env bash
# scripts/demo-server.sh - the control plane on this machine: `reconcile serve` watching a
# git repository made from examples/, `reconcile-agent` applying it onto the local Docker
# host, and a signed GitHub push webhook that redeploys a changed app.
#
#   bash scripts/demo-server.sh
#
# Everything runs on 127.0.0.1: the server on :8800, the apps behind the proxy on :8080
# (as in scripts/demo.sh; both demos share the host's state dir, so running one after
# the other hands the same apps over instead of installing them twice). The server's
# data and the demo repository live in /var/tmp/compose-reconciler-demo, so a re-run
# finds the agent it registered before. The server and agent stop at the end; the apps
# keep running (`reconcile status`).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DEMO=${RECONCILE_DEMO_DIR:-/var/tmp/compose-reconciler-demo}
PORT=8800
SERVER=http://127.0.0.1:$PORT
say() { printf '==> %s\n' "$*"; }

bash scripts/setup.sh --docker >/dev/null
BIN=$ROOT/.venv/bin
export RECONCILE_ADMIN_TOKEN=${RECONCILE_ADMIN_TOKEN:-demo-admin-token}
export RECONCILE_WEBHOOK_SECRET=${RECONCILE_WEBHOOK_SECRET:-demo-webhook-secret}
export GIT_AUTHOR_NAME=demo GIT_AUTHOR_EMAIL=demo@example.invalid
export GIT_COMMITTER_NAME=demo GIT_COMMITTER_EMAIL=demo@example.invalid
mkdir -p "$DEMO"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

say "desired-state repository: $DEMO/origin.git (examples/, deployments on agent host1)"
[ -d "$DEMO/origin.git" ] || git init -q --bare -b main "$DEMO/origin.git"
rm -rf "$DEMO/work"
git clone -q "$DEMO/origin.git" "$DEMO/work" 2>/dev/null
git -C "$DEMO/work" checkout -q -B main

say "reconcile serve on $SERVER (log $DEMO/serve.log)"
"$BIN/reconcile" serve --source "$DEMO/origin.git" --branch main --data-dir "$DEMO/server-data" \
  --port "$PORT" --poll-interval 60 --heartbeat 2 --log-level warning >"$DEMO/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fs "$SERVER/healthz" >/dev/null && break; sleep 0.1; done

say "reconcile-agent (one-time token; log $DEMO/agent.log)"
token=$("$BIN/reconcile" agent token --data-dir "$DEMO/server-data")
"$BIN/reconcile-agent" --server "$SERVER" --token "$token" --settle 1 --poll-wait 10 \
  >"$DEMO/agent.log" 2>&1 &
pids+=($!)
creds=$("$BIN/python" -c 'from agent.statedir import default_state_dir as d; print(d() / "agent" / "credentials.json")')
for _ in $(seq 100); do [ -s "$creds" ] && break; sleep 0.1; done
agent_id=$("$BIN/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["agent_id"])' "$creds")
say "agent $agent_id"

push() { # push MESSAGE: commit the work tree, push, announce it with a signed webhook
  git -C "$DEMO/work" add -A
  git -C "$DEMO/work" commit -q --allow-empty -m "$1"
  git -C "$DEMO/work" push -q origin main
  local sha body sig
  sha=$(git -C "$DEMO/work" rev-parse HEAD)
  body="{\"ref\":\"refs/heads/main\",\"after\":\"$sha\"}"
  sig=$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$RECONCILE_WEBHOOK_SECRET" | awk '{print $NF}')
  printf '    webhook: '
  curl -s -X POST "$SERVER/hooks/github" -H 'Content-Type: application/json' \
    -H 'X-GitHub-Event: push' -H "X-GitHub-Delivery: demo-$sha-$RANDOM" \
    -H "X-Hub-Signature-256: sha256=$sig" --data-binary "$body"
  echo
}

find "$DEMO/work" -mindepth 1 -maxdepth 1 ! -name .git -exec rm -rf {} +
cp -a examples/. "$DEMO/work/"
rm -rf "$DEMO/work/invalid" "$DEMO/work/upstream"
sed -i "s/^namespace: examples$/namespace: examples\nagents:\n  host1: $agent_id/" "$DEMO/work/reconcile.yaml"
find "$DEMO/work/deployments" -name '*.yaml' -exec sed -i 's/^agent: local$/agent: host1/' {} +
say "push the examples"
push "examples on host1"

wait_for() { # wait_for HOST TEXT SECONDS
  local end=$((SECONDS + $3))
  while [ $SECONDS -lt $end ]; do
    curl -fs -H "Host: $1" http://127.0.0.1:8080/ 2>/dev/null | grep -qF "$2" && return 0
    sleep 0.2
  done
  echo "timed out waiting for $1 to serve '$2'; see $DEMO/agent.log" >&2
  return 1
}
settled() { # settled NAME: the agent finished the deployment's last command (probe included)
  local end=$((SECONDS + 120))
  while [ $SECONDS -lt $end ]; do
    curl -fs -H "Authorization: Bearer $RECONCILE_ADMIN_TOKEN" "$SERVER/v1/deployments/$1" |
      grep -q '"state":"done"' && return 0
    sleep 0.5
  done
}
wait_for hello.localhost "Welcome" 240
settled hello
"$BIN/reconcile" status --server "$SERVER"

say "change hello's greeting, push, webhook: the agent updates only hello"
sed -i 's/greeting: .*/greeting: Hello from a push/' "$DEMO/work/deployments/hello.yaml"
start=$SECONDS
push "hello: a new greeting"
wait_for hello.localhost "Hello from a push" 120
say "hello serves the new greeting ($((SECONDS - start)) s after the push):"
curl -s -H 'Host: hello.localhost' http://127.0.0.1:8080/ | grep -o '<h1>.*</h1>'
settled hello
"$BIN/reconcile" status --server "$SERVER"
say "done; the apps keep running (reconcile status), the server and agent stop now"
