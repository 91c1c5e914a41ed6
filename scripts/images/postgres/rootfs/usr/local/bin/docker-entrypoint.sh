#!/bin/bash
# The entrypoint of reconciler-postgres:<major> (scripts/setup.sh builds the image from
# Debian's postgresql): the part of the official postgres image's contract that
# deploy/compose.replicas.yaml uses, and no more.
#
#   PGDATA                  the cluster (default /var/lib/postgresql/data, a volume)
#   POSTGRES_USER           the superuser initdb makes (default postgres)
#   POSTGRES_PASSWORD       its password, or POSTGRES_PASSWORD_FILE: a file holding it (a
#                           compose secret); one of the two is required to initialise
#   POSTGRES_DB             a database made on the first start (default: POSTGRES_USER)
#
# An empty PGDATA is initialised once (scram-sha-256 over TCP from anywhere, trust on the
# socket inside the container, listening on every address of the container's networks);
# a PGDATA that holds a cluster is started as it is, and the variables above are not read
# again (as upstream).  Started as root, it reads the secrets as root (a secret file may be
# 0400 root), fixes the data dir's owner and runs the server as `postgres`.  Not supported
# here (upstream has them): /docker-entrypoint-initdb.d, POSTGRES_INITDB_ARGS,
# POSTGRES_HOST_AUTH_METHOD.  Nor is a data dir the official image made (locale en_US.utf8,
# owned by uid 999) one to start here: move data between the two with pg_dump/pg_restore.
set -Eeuo pipefail

die() { printf 'reconciler-postgres: %s\n' "$*" >&2; exit 1; }

# `docker run IMAGE -c setting=value` means `postgres -c setting=value`, as upstream
if [ "${1:0:1}" = - ]; then set -- postgres "$@"; fi
[ "$1" = postgres ] || exec "$@"

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

if [ "$(id -u)" = 0 ]; then
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    [ -z "${POSTGRES_PASSWORD:-}" ] || die "set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE, not both"
    [ -r "$POSTGRES_PASSWORD_FILE" ] || die "POSTGRES_PASSWORD_FILE=$POSTGRES_PASSWORD_FILE is not a readable file"
    POSTGRES_PASSWORD=$(<"$POSTGRES_PASSWORD_FILE")
    export POSTGRES_PASSWORD
    unset POSTGRES_PASSWORD_FILE
  fi
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 0700 "$PGDATA"
  chmod 3777 /var/run/postgresql
  # the password travels in the environment of this exec only; the server's is cleared below
  exec setpriv --reuid=postgres --regid=postgres --init-groups -- "${BASH_SOURCE[0]}" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then # started as postgres (or any uid): read it here
    [ -z "${POSTGRES_PASSWORD:-}" ] || die "set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE, not both"
    [ -r "$POSTGRES_PASSWORD_FILE" ] || die "POSTGRES_PASSWORD_FILE=$POSTGRES_PASSWORD_FILE is not readable by uid $(id -u)"
    POSTGRES_PASSWORD=$(<"$POSTGRES_PASSWORD_FILE")
  fi
  [ -n "${POSTGRES_PASSWORD:-}" ] ||
    die "the data dir $PGDATA is empty and no password is set: set POSTGRES_PASSWORD_FILE (or POSTGRES_PASSWORD)"
  user=${POSTGRES_USER:-postgres}
  db=${POSTGRES_DB:-$user}
  [[ $user != *$'\n'* && $db != *$'\n'* ]] || die "POSTGRES_USER and POSTGRES_DB must be one line each"
  initdb --username="$user" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
    --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  # other containers of the project's network connect over TCP, with the password; the
  # image has no LLVM (JIT is for long analytic queries, not the store's short ones)
  printf "\n# reconciler-postgres\nlisten_addresses = '*'\njit = off\n" >>"$PGDATA/postgresql.conf"
  printf '\n# reconciler-postgres: with a password, from anywhere the network lets in\nhost all all all scram-sha-256\n' \
    >>"$PGDATA/pg_hba.conf"
  if [ "$db" != postgres ]; then
    # single-user mode: no socket is open yet, so pg_isready says "no" until the real start
    ident=${db//\"/\"\"}
    printf 'CREATE DATABASE "%s"\n' "$ident" | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
  printf 'reconciler-postgres: initialised %s (superuser %s, database %s)\n' "$PGDATA" "$user" "$db"
fi
unset POSTGRES_PASSWORD POSTGRES_PASSWORD_FILE
exec "$@"
