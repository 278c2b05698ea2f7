# The OpenAI-compatible REST edge (Falcon on gunicorn), without any engine dependency.
#
#   docker build -f deploy/edge.Dockerfile -t llm-serving/rest-edge:0.1.0 .
#
# Build from the repository root (the context); see deploy/README.md.

# --- builder: the edge's dependencies into /opt/venv (all wheels, no compiler) -----------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY inference_service ./inference_service
COPY rest_edge ./rest_edge
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install ".[edge]"

# --- runtime: non-root ----------------------------------------------------------------------
FROM python:3.11-slim

RUN groupadd --system --gid 10001 edge \
 && useradd --system --uid 10001 --gid edge --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin edge

COPY --from=builder /opt/venv /opt/venv

# The edge listens on all interfaces of its container; INFERENCE_TARGET names the service.
# gunicorn's heartbeat files and the workers' metrics directory go to $TMPDIR (/tmp):
# writable, a tmpfs or emptyDir when the root file system is read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EDGE_BIND=0.0.0.0:8000 \
    INFERENCE_TARGET=127.0.0.1:50051

USER 10001:10001
WORKDIR /
EXPOSE 8000

# /health is 200 when the inference service behind the edge is SERVING, else 503.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# gunicorn's arbiter: SIGTERM stops gracefully (workers finish their requests within
# graceful_timeout, 30 s, see rest_edge/gunicorn_conf.py).
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "rest_edge"]
