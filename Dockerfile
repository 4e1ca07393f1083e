# tokengate image: the gateway in a virtualenv on python:3.11-slim.
#   docker build -t tokengate:dev .
#   docker run --rm --read-only --tmpfs /tmp -p 8080:8080 -p 9090:9090 \
#     -v "$PWD/gateway.yaml:/etc/gateway/gateway.yaml:ro" tokengate:dev
# Runs as uid/gid 10001, writes nothing outside /tmp (or a mounted audit dir),
# and handles SIGTERM itself as PID 1 (fails readiness, drains, exits 0).

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
# A venv without pip or setuptools: the base image's pip installs into it, so the
# final image carries only the gateway and its dependencies.
RUN python -m venv --without-pip /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/runtime.lock requirements/runtime.lock
# Dependencies come from the lock file, exact versions with hashes; then the gateway itself
# without resolving anything again. --python goes before the subcommand (pip >= 22.3).
RUN pip --python /opt/venv/bin/python install --no-cache-dir --require-hashes -r requirements/runtime.lock
COPY gateway/ gateway/
RUN pip --python /opt/venv/bin/python install --no-cache-dir --no-deps .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="tokengate" \
      org.opencontainers.image.description="OAuth 2.0 token-enforcing reverse proxy API gateway"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /tmp
# public proxy, admin (/metrics /healthz /readyz), forward-auth decisions
EXPOSE 8080 9090 8081
# No curl in the slim image: the venv's python does the GET (non-2xx raises, exit 1).
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
ENTRYPOINT ["gateway"]
CMD ["serve", "--config", "/etc/gateway/gateway.yaml"]
