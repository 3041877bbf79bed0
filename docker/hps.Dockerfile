# The hps images, one file, two targets:
# - `ray`: the Ray head. It schedules trials and runs none, so it holds Ray alone (no torch, no CUDA).
# - `worker`: Ray GPU workers and the study driver. torch 2.14.1 from PyPI bundles its CUDA 13
#   libraries; the NVIDIA Container Toolkit provides the driver at run time.
# Build args: PYTHON_IMAGE (the official image by default; any Debian-based Python 3.11 works),
# PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_TRUSTED_HOST (a mirror; pip reads them from the
# environment; each stage that runs pip declares them; build-time only, they stay in the image history, so no credentials in them),
# RAY_VERSION (head and workers must run the same Ray),
# TORCH_INDEX_URL (worker: where torch and torchvision come from; default PyPI, whose torch 2.14.1
# bundles CUDA 13 libraries and needs an NVIDIA driver >= 580 on the host. For older drivers give
# the index of a torch 2.14.1 build for an older CUDA, e.g. https://download.pytorch.org/whl/cu126,
# where your package index has one).
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 1000 hps && mkdir -p /data /artifacts && chown hps:hps /data /artifacts \
    && python -m venv /opt/hps
ENV PATH=/opt/hps/bin:$PATH PYTHONUNBUFFERED=1

FROM base AS ray
ARG RAY_VERSION=2.60.0
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_TRUSTED_HOST=
RUN pip install "ray[default]==${RAY_VERSION}"
USER hps
WORKDIR /home/hps

FROM base AS worker
ARG RAY_VERSION=2.60.0
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_TRUSTED_HOST=
ARG TORCH_INDEX_URL=
# a C++ compiler and Python's headers: `train.compile: true` (inductor and Triton build kernels at run
# time; the official Python image has the headers, a distribution's Python needs python3-dev)
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends g++ \
      $(test -f "$(python -c 'import sysconfig; print(sysconfig.get_path("include"))')/Python.h" || echo python3-dev) \
    && rm -rf /var/lib/apt/lists/*
# dependencies first (a layer that code changes do not rebuild), then hps itself
COPY pyproject.toml /src/
RUN python -c "import tomllib; print(*tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
      > /src/requirements.txt \
    && if [ -n "$TORCH_INDEX_URL" ]; then \
         pip install --index-url "$TORCH_INDEX_URL" $(grep -E '^(torch|torchvision)==' /src/requirements.txt); fi \
    && pip install -r /src/requirements.txt "ray[default,client,tune]==${RAY_VERSION}"
COPY README.md /src/
COPY search /src/search
COPY trainers /src/trainers
# the import name: src/hps links to search/ and trainers/ (the wheel holds real files)
COPY src /src/src
RUN pip install --no-deps /src && rm -rf /src
COPY spaces /app/spaces
ENV HPS_ARTIFACTS=/artifacts HPS_DATA=/data
WORKDIR /app
USER hps
