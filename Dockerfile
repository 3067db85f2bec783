# The serving image: the shipped models baked in, onnxruntime, no torch.
#   docker build -t ebm-serve .
#   docker run -p 8000:8000 ebm-serve            # embedded mode
# GPU workers for queue mode (docker/compose.gpu.yml passes the same arguments):
#   docker build -t ebm-serve:gpu \
#     --build-arg BASE_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 \
#     --build-arg ONNXRUNTIME=onnxruntime-gpu==1.31.1 .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# onnxruntime-gpu ships the same `onnxruntime` module, so it replaces the CPU wheel.
ARG ONNXRUNTIME=onnxruntime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    EBM_MODELS_DIR=/srv/models \
    EBM_BACKEND=onnx \
    EBM_HOST=0.0.0.0 \
    EBM_PORT=8000 \
    EBM_LOG_FORMAT=json

# CUDA bases ship no Python: install the distribution's (>= 3.11) when missing. The venv
# keeps pip off a distribution Python (PEP 668) and gives every base the same paths.
RUN if ! python3 -c 'import ensurepip, sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv

WORKDIR /srv/app
COPY pyproject.toml README.md constraints.txt ./
COPY app ./app
# The versions `make` installs everywhere else (constraints.txt); only what serving needs.
RUN pip install -c constraints.txt . \
    && if [ "$ONNXRUNTIME" != onnxruntime ]; then \
        pip uninstall -y onnxruntime && pip install "$ONNXRUNTIME"; \
    fi
COPY models /srv/models

# A numeric user, so Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 10001 ebm \
    && useradd --system --uid 10001 --gid 10001 --no-create-home ebm
USER 10001:10001

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
CMD ["ebm", "serve", "--host", "0.0.0.0", "--port", "8000"]
