# The pipeline component image: `make image` (IMAGE=<registry>/safealign:<tag>, set in the Makefile).
# Every pipeline task runs `python -m safealign ...` in it; nothing is installed at run time.
# CUDA base (the GPU stages); the Python packages are the committed lock, the same set as `make setup`.
ARG CUDA_BASE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04
FROM ${CUDA_BASE}

# the lock is built for Python 3.11; devel base: DeepSpeed compiles its ops (CPU Adam, fused Adam) on first use
RUN apt-get update && apt-get install -y --no-install-recommends software-properties-common make git \
    && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
    && rm -rf /var/lib/apt/lists/*

# TORCH / TORCH_INDEX: the CUDA build of the lock's torch (the Makefile passes its own)
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 \
    AXOLOTL_DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.lock pyproject.toml ./
# DS_BUILD_OPS=0: DeepSpeed installs without compiling (as `make setup`)
RUN python3.11 -m venv /opt/venv \
    && DS_BUILD_OPS=0 pip install -r requirements.lock "${TORCH}" --extra-index-url "${TORCH_INDEX}" \
    && pip check

# the checkout: package, templates, recipes, model profiles, shipped data (.dockerignore keeps the rest out)
COPY . .
RUN pip install --no-deps --no-build-isolation -e . && python -m safealign validate recipes/*.yaml
# kfp's components run `python3 -m kfp.dsl.executor_main`: the venv's python3 comes first on PATH
