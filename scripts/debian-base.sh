#!/usr/bin/env bash
# scripts/debian-base.sh - a local Debian base image, built once from Debian packages (no
# registry answers on the test machines).  Idempotent: when the tag exists, it does nothing.
#
#   bash scripts/debian-base.sh [--force]
#
# Builds `reconciler-debian:<suite>` (default trixie: its python3 is new enough for the package, >= 3.11.4; bookworm has 3.11.2) with `debootstrap --variant=minbase`
# from the Debian mirror this machine's apt uses, plus ca-certificates and curl (what a stock
# Debian server image has, and what the agent one-liner `curl ... | sh` needs).  Nothing else:
# the agent install test needs a *fresh* host, on which install.sh installs Python itself.
# Prints the tag on stdout.
#
# Environment:
#   DEBIAN_SUITE     (default trixie: its python3 is new enough for the package, >= 3.11.4; bookworm has 3.11.2)
#   DEBIAN_MIRROR    (default: the first deb.debian.org-style URI in /etc/apt/sources.list*)
set -euo pipefail

SUITE=${DEBIAN_SUITE:-trixie}
TAG=reconciler-debian:$SUITE
force=0
for arg in "$@"; do
  case $arg in
    --force) force=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "debian-base.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

say() { printf 'debian-base: %s\n' "$*" >&2; }
if [ "$force" = 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  say "$TAG present"
  echo "$TAG"
  exit 0
fi

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  # deb822 (`URIs: http://...`) or one-line (`deb http://... suite main`) sources; the first
  # URI that is not the security archive
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -Eo '(URIs:[[:space:]]*|^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)https?://[^[:space:]]+' |
    grep -Eo 'https?://[^[:space:]]+' | grep -v -- '-security' | head -n 1 || true)
fi
[ -n "$mirror" ] || { say "no Debian mirror found in /etc/apt/sources.list*; set DEBIAN_MIRROR"; exit 1; }

if ! command -v debootstrap >/dev/null; then
  say "installing debootstrap (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >&2 </dev/null ||
    { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >&2 </dev/null; }
fi

started=$(date +%s)
root=$(mktemp -d /var/tmp/reconciler-debian-XXXXXX)
trap 'rm -rf "$root"' EXIT
say "debootstrap --variant=minbase $SUITE from $mirror (log $root.log)"
debootstrap --variant=minbase --include=ca-certificates,curl "$SUITE" "$root" "$mirror" >"$root.log" 2>&1 ||
  { tail -n 25 "$root.log" >&2; exit 1; }
# An image, not a machine: no package caches, no machine id, apt lists fetched by whoever needs them
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/etc/machine-id
printf '' >"$root/etc/machine-id"
tar -C "$root" -c . | docker import \
  --change 'CMD ["/bin/bash"]' \
  --change 'ENV LANG=C.UTF-8' \
  --message "debootstrap --variant=minbase $SUITE $mirror" - "$TAG" >/dev/null
rm -f "$root.log"
say "$TAG built in $(($(date +%s) - started)) s ($(docker image inspect -f '{{.Size}}' "$TAG") bytes)"
echo "$TAG"
