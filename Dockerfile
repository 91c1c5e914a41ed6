# compose-reconciler:<version>: `reconcile serve` (the control plane) and `reconcile-agent`.
#
# Built by `bash scripts/setup.sh --docker`, offline from any registry:
#   - the base, compose-reconciler-base:trixie, is a minimal Debian 13 rootfs made with
#     debootstrap from Debian's packages (python3 3.13, python3-venv, git, openssh-client,
#     ca-certificates) and imported with `docker import` (Debian 12's python3, 3.11.2,
#     predates the tarfile extraction filters the package needs);
#   - the build context is made at run time: this file, wheels/ (the compose-reconciler
#     wheel and every dependency's, from `pip wheel`), and bin/docker + bin/docker-compose
#     (the host's Docker CLI from Debian's docker.io and the static Compose v2 plugin): the
#     agent shells out to `docker compose`.
#
# Runs as the unprivileged user `reconcile` (uid 10001) by default, for the server:
#   docker run -v reconcile-data:/data compose-reconciler:<version> \
#     reconcile serve --host 0.0.0.0 --source https://git.example.com/ops.git
# The agent needs the Docker socket and its state dir at the SAME path inside and outside
# (compose bind mounts of the apps are resolved by the host's daemon), so as root:
#   docker run --user 0 --network host -v /var/run/docker.sock:/var/run/docker.sock \
#     -v /var/lib/reconciler:/var/lib/reconciler compose-reconciler:<version> \
#     reconcile-agent --server https://cp.example.com --token <token>
ARG BASE=compose-reconciler-base:trixie
FROM ${BASE}

ENV PATH=/opt/compose-reconciler/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    RECONCILE_DATA_DIR=/data

COPY bin/docker /usr/bin/docker
COPY bin/docker-compose /usr/libexec/docker/cli-plugins/docker-compose
COPY wheels/ /tmp/wheels/
RUN python3 -m venv /opt/compose-reconciler \
 && /opt/compose-reconciler/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
      --find-links /tmp/wheels compose-reconciler \
 && rm -rf /tmp/wheels \
 && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin reconcile \
 && mkdir -p /data /var/lib/reconciler \
 && chown reconcile:reconcile /data \
 && reconcile --version && reconcile-agent --version && docker compose version

# the server's SQLite store, event log and git cache; a named volume takes this ownership
VOLUME /data
WORKDIR /data
USER reconcile
EXPOSE 8800
CMD ["reconcile", "--help"]
