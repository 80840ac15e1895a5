# syntax=docker/dockerfile:1
# The orchestrator image: `dh serve` (REST API, jobs, pipeline) on a slim Python 3.11.
# docker compose builds it (docker-compose.yml, service `orchestrator`); by hand:
#   docker build -t digital-human .
# It holds no model, no onnxruntime and no torch: Triton serves the models.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtual environment with the project and its dependencies -------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so that a code change reuses this layer.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip install --requirement requirements.txt
# Every dependency installs from a binary wheel, so this stage needs no compiler either.
COPY orchestrator ./orchestrator
# The import is a smoke test: every wheel loads on this base (OpenCV, PyAV, gRPC, NVML).
RUN pip install --no-deps . && python -c "import orchestrator.api.app" && dh --help > /dev/null

# --- runtime: the environment, a non-root user, nothing else ------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG DH_UID=10001
RUN useradd --system --uid ${DH_UID} --home-dir /data --shell /usr/sbin/nologin dh \
    && mkdir -p /data \
    && chown dh:dh /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DH_HOST=0.0.0.0 \
    DH_PORT=8080 \
    DH_DATA_DIR=/data
# Jobs, avatars and results; docker-compose.yml mounts a named volume here.
VOLUME ["/data"]
WORKDIR /data
USER dh
EXPOSE 8080
# Liveness only (the process answers); readiness (Triton and models) is GET /readyz.
# urllib, not curl: the slim image has no curl and needs none. start-period covers the
# start-up wait for Triton (DH_TRITON_READY_TIMEOUT_S, 120 s by default).
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DH_PORT', '8080'), timeout=4)"]
# Exec form: `dh` is PID 1 and gets SIGTERM itself, so uvicorn shuts down gracefully and
# running jobs go back to the queue.
ENTRYPOINT ["dh"]
CMD ["serve"]
