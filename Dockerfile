# syntax=docker/dockerfile:1
# taskgate's image: the wheel, installed into python:3.11-slim, run as a non-root user.
# One image serves every part: `taskgate gateway` (the default), `celery -A worker worker|beat`
# and `celery -A worker flower` (docker-compose.yml picks the command of each service).
#
# Stages: `web` installs the page's npm dependencies (socket.io-client, whose ESM bundle the wheel
# carries), `build` makes the wheel (setup.py copies web/src and the bundle into the package),
# `runtime` pip-installs that wheel and nothing of the source tree.
# tests/deploy/test_containers.py checks this file (no Docker engine runs in CI).

FROM node:22-bookworm-slim AS web
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
# Only the runtime dependency (socket.io-client): the browser-test tools are dev dependencies.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund
COPY web/src ./src

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN pip install --no-cache-dir "build>=1.2"
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY gateway ./gateway
COPY worker ./worker
COPY shared ./shared
COPY client ./client
COPY --from=web /src/web ./web
RUN python -m build --wheel --outdir /dist

FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TASKGATE_HOST=0.0.0.0 \
    TASKGATE_PORT=8080
# tini is PID 1: it forwards SIGTERM to the one child (the gateway, or Celery's main process,
# which then does its warm shutdown itself) and reaps orphans, such as those a timed-out
# healthcheck leaves. Celery or the gateway as PID 1 would also see SIGTERM (both install a
# handler), but PID 1 ignores every signal it has no handler for and adopts all orphans.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 taskgate \
    && useradd --system --uid 10001 --gid taskgate --home-dir /var/lib/taskgate \
       --create-home --shell /usr/sbin/nologin taskgate
COPY --from=build /dist/ /tmp/wheels/
# The wheel with its extras, `fast` (uvloop) by default, and Flower for the `flower` service.
# Workers that hand task bodies to a Ray cluster (TASKGATE_RAY_ADDRESS) need the `ray` extra:
# docker compose build --build-arg TASKGATE_EXTRAS=fast,ray (or TASKGATE_EXTRAS in compose's env).
ARG TASKGATE_EXTRAS=fast
RUN set -eu; \
    wheel="$(echo /tmp/wheels/taskgate-*.whl)"; \
    pip install --no-cache-dir "${wheel}[${TASKGATE_EXTRAS}]" "flower>=2.0,<3"; \
    rm -rf /tmp/wheels
WORKDIR /var/lib/taskgate
USER taskgate:taskgate
EXPOSE 8080
# Liveness of the default command (the gateway); compose gives every service its own check,
# the gateways' on /readyz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TASKGATE_PORT', '8080') + '/healthz', timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["taskgate", "gateway"]
