# syntax=docker/dockerfile:1
# The Raftka node image. At the repository root: `docker build -t raftka:dev .`
# The entrypoint is `raftka node`: options come as arguments, RAFTKA_* variables or a TOML file
# (--config), as docs/node.md says. Nothing secret is in the image: the Raft password comes from a
# Kubernetes Secret at run time (k8s/, docs/kubernetes.md).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/raftka
COPY pyproject.toml README.md /src/
COPY storage /src/storage
COPY metadata /src/metadata
COPY node /src/node
COPY raftka /src/raftka
RUN /opt/raftka/bin/pip install /src

FROM ${PYTHON_IMAGE}
# A fixed non-root uid/gid: the StatefulSet's securityContext names the same (runAsUser, fsGroup).
RUN groupadd --system --gid 10001 raftka \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/raftka \
       --shell /usr/sbin/nologin raftka \
    && mkdir -p /var/lib/raftka \
    && chown 10001:10001 /var/lib/raftka
COPY --from=build /opt/raftka /opt/raftka
ENV PATH=/opt/raftka/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/raftka
EXPOSE 9092 9093
ENTRYPOINT ["raftka", "node"]
