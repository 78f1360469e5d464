# syntax=docker/dockerfile:1
# The images of the four services, from one recipe (issue 22). Build one from the repository
# root by its target:
#
#   docker build --target provider -t chorus-provider .     # history, orchestrator, gateway
#
# builder: uv installs exactly what uv.lock pins for each service (`uv sync --locked`, no dev
#          tools) into its own virtual environment (/opt/venv in the image); dependencies first, in a
#          layer that only changes with the lock, then the code (non-editable).
# runtime: python:3.11-slim with no compiler, no uv and no pip cache; one venv copied in;
#          a non-root user (uid 10001) and a file system the service never writes to except
#          /tmp and history-svc's data directory (Kubernetes mounts the root read-only).
# The services' targets differ only in the venv they copy, their port and their health check.
# BuildKit builds the builder stage once for all four targets (`docker compose build`).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
# The same uv as `make install` (Makefile UV_VERSION): the lock reads the same everywhere.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
# uv's download cache lives in a BuildKit cache mount: shared by the four services' syncs and
# by later builds, never part of a layer.
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /src
# Every workspace member's pyproject.toml: `--locked` checks the lock against all of them.
COPY pyproject.toml uv.lock ./
COPY core/pyproject.toml core/
COPY provider-svc/pyproject.toml provider-svc/
COPY history-svc/pyproject.toml history-svc/
COPY orchestrator-svc/pyproject.toml orchestrator-svc/
COPY gateway/pyproject.toml gateway/
COPY cli/pyproject.toml cli/
# Each venv is built at /opt/venv, where the runtime has it, and parked in /opt/build/<service>.
ENV UV_PROJECT_ENVIRONMENT=/opt/venv
RUN --mount=type=cache,target=/root/.cache/uv \
    set -eu; for service in provider history orchestrator gateway; do \
      uv sync --locked --no-dev --no-editable --no-install-workspace --package chorus-$service; \
      mkdir -p /opt/build && mv /opt/venv /opt/build/$service; \
    done
COPY core/src core/src
COPY provider-svc/src provider-svc/src
COPY history-svc/src history-svc/src
COPY orchestrator-svc/src orchestrator-svc/src
COPY gateway/src gateway/src
RUN --mount=type=cache,target=/root/.cache/uv \
    set -eu; for service in provider history orchestrator gateway; do \
      mv /opt/build/$service /opt/venv; \
      uv sync --locked --no-dev --no-editable --package chorus-$service; \
      /opt/venv/bin/python -c "import chorus.$service.__main__"; \
      mv /opt/venv /opt/build/$service; \
    done

FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --create-home --uid 10001 --user-group chorus
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    CHORUS_HOST=0.0.0.0 CHORUS_LOG_JSON=true
WORKDIR /home/chorus

FROM runtime AS provider
COPY --from=builder /opt/build/provider /opt/venv
USER 10001:10001
EXPOSE 50051
# The port the service was configured with (CHORUS_PROVIDER_PORT), read by the shell when the
# check runs (the same in every gRPC service's target).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["sh", "-c", "exec python -m chorus.core.healthcheck 127.0.0.1:${CHORUS_PROVIDER_PORT:-50051} chorus.v1.ProviderService"]
CMD ["python", "-m", "chorus.provider"]

FROM runtime AS history
COPY --from=builder /opt/build/history /opt/venv
# The embedded SQLite default (no CHORUS_DATABASE_URL) keeps its files here.
ENV CHORUS_DATA_DIR=/home/chorus/data
RUN mkdir -p /home/chorus/data && chown 10001:10001 /home/chorus/data
VOLUME /home/chorus/data
USER 10001:10001
EXPOSE 50052
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["sh", "-c", "exec python -m chorus.core.healthcheck 127.0.0.1:${CHORUS_HISTORY_PORT:-50052} chorus.v1.HistoryService"]
CMD ["python", "-m", "chorus.history"]

FROM runtime AS orchestrator
COPY --from=builder /opt/build/orchestrator /opt/venv
USER 10001:10001
EXPOSE 50053
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["sh", "-c", "exec python -m chorus.core.healthcheck 127.0.0.1:${CHORUS_ORCHESTRATOR_PORT:-50053} chorus.v1.RunService"]
CMD ["python", "-m", "chorus.orchestrator"]

FROM runtime AS gateway
COPY --from=builder /opt/build/gateway /opt/venv
ENV CHORUS_GATEWAY_HOST=0.0.0.0
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('CHORUS_GATEWAY_PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "chorus.gateway"]
