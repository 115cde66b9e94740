# syntax=docker/dockerfile:1.7
#
# One image for Google Cloud Run (gunicorn: the default CMD) and AWS Lambda (Terraform's
# image_config runs awslambdaric with infra.lambda_handler.handler instead).
#
#   docker buildx build --platform linux/amd64 --provenance=false \
#     [--build-arg MODEL_VARIANTS="english"] [--build-arg PYTHON_IMAGE=python:3.11-slim-bookworm] -t clipserve .
#
# Layer order, slowest-changing first: python deps -> baked weights (changes only with models/)
# -> the code. A change to handler/, engine/, inputs/, infra/ or batch/ reuses both heavy layers,
# and the download cache mount means even a re-bake (models/ changed) does not re-download.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# checkov:skip=CKV_DOCKER_7:the base is ${PYTHON_IMAGE}, whose default above carries a pinned tag (checkov cannot read ARGs)

# ---------------------------------------------------------------- search-index: empty unless named
# `docker buildx build --build-context search-index=DIR` puts an index version folder here (deploy.sh --index).
FROM scratch AS search-index

# ---------------------------------------------------------------- deps: CPU torch + requirements
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python -m venv /opt/venv
# The PyTorch wheel index: CPU (the default: no CUDA libraries) or a CUDA build for GPU instances
# (deploy.sh cloudrun --gpu sets https://download.pytorch.org/whl/cu126: same code, same bundles).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY requirements.txt /tmp/requirements.txt
# torch and torchvision come first, from the PyTorch CPU wheel index (no CUDA libraries: about
# 700 MB instead of several GB), at exactly the versions requirements.txt pins; the plain
# `pip install -r` then finds them already satisfied (2.x.y+cpu meets ==2.x.y).
RUN grep -E '^(torch|torchvision)==' /tmp/requirements.txt > /tmp/torch-pins.txt \
 && test "$(wc -l < /tmp/torch-pins.txt)" -eq 2 \
 && pip install --no-cache-dir --index-url "${TORCH_INDEX}" -r /tmp/torch-pins.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt

# ---------------------------------------------------------------- weights: bake at build time
FROM deps AS weights
# Space-separated variants to bake; MODEL_VARIANT picks one of them at deploy time, no rebuild.
ARG MODEL_VARIANTS="english multilingual"
# Empty (default): every file must be pinned in models/registry.py, as the shipped entries are.
# "--allow-unpinned" only for a new registry entry without pins yet (bake records what it fetched).
ARG BAKE_FLAGS=""
WORKDIR /src
COPY models/ models/
RUN --mount=type=cache,target=/root/.cache \
    for variant in ${MODEL_VARIANTS}; do \
      python -m models.bake --variant "$variant" --out /models ${BAKE_FLAGS:+"$BAKE_FLAGS"} || exit 1; \
    done \
 && chmod -R a+rX /models

# ---------------------------------------------------------------- runtime: slim, non-root
FROM ${PYTHON_IMAGE} AS runtime
ARG MODEL_VARIANT=english
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    XDG_CACHE_HOME=/tmp/.cache \
    MODEL_DIR=/models \
    MODEL_VARIANT=${MODEL_VARIANT} \
    PORT=8080
# A fixed numeric user (Kubernetes-style runAsNonRoot checks need a number; Lambda runs its own
# uid, so everything the app reads is world-readable and nothing needs writing outside /tmp).
RUN groupadd --system --gid 10001 clipserve \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin clipserve
COPY --from=deps /opt/venv /opt/venv
COPY --from=weights /models /models
# A search index baked in (Lambda has no bucket mounts): `deploy.sh --index DIR` replaces the empty
# search-index stage with the version folder (--build-context search-index=DIR) and sets INDEX_DIR=/index.
# Otherwise /index stays empty and so does INDEX_DIR (no search; on Cloud Run the index comes from a bucket).
ARG INDEX_DIR=""
COPY --from=search-index / /index/
ENV INDEX_DIR=${INDEX_DIR}
WORKDIR /app
COPY pyproject.toml ./
COPY models/ models/
COPY inputs/ inputs/
COPY engine/ engine/
COPY handler/ handler/
COPY search/ search/
COPY ingest/ ingest/
COPY batch/ batch/
COPY infra/ infra/
COPY clients/python/ clients/python/
# Editable install, as in development: the code stays in /app, the package gets its version
# metadata and the clipserve-batch console script; the Python client (batch's HTTP target, handler/local.py)
# beside it; then byte-compile for faster cold starts.
RUN pip install --no-cache-dir --no-deps --editable . --editable clients/python \
 && python -m compileall -q /app \
 && chmod -R a+rX /app
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=240s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8080'), timeout=4)"]
# Checks MODEL_VARIANT was baked (exits 78 naming what was) and the env settings, then execs CMD.
ENTRYPOINT ["python", "-m", "infra.preflight"]
CMD ["gunicorn", "-c", "infra/gunicorn.conf.py", "handler.wsgi:app"]
