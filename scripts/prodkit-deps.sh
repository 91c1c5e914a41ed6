#!/usr/bin/env bash
# scripts/prodkit-deps.sh - what the production-kit tests need beyond Docker; idempotent.
#
#   bash scripts/prodkit-deps.sh
#
# * OpenSSH (openssh-server, openssh-client): tests/sources/test_private_remotes.py runs a
#   real sshd on a 127.0.0.1 port with a temporary config (the HTTPS side uses git's own
#   `git http-backend`, part of git);
# * debootstrap and the image reconciler-debian:trixie (scripts/debian-base.sh): the
#   fresh Debian host tests/install/test_install_docker.py runs the install one-liner in.
# Called by `scripts/setup.sh --docker`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

missing=()
for pkg in openssh-server openssh-client debootstrap; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" = installed ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "prodkit-deps: apt-get install ${missing[*]}" >&2
  {
    apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  } </dev/null >&2
fi
bash "$ROOT/scripts/debian-base.sh"
