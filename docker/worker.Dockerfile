# The hps image: Ray head, Ray GPU workers and the study driver all run it, so torch, Ray and hps
# are identical on every node. torch 2.14.1 from PyPI bundles its CUDA libraries; the NVIDIA
# container toolkit provides the driver at run time.
FROM python:3.11.7-slim-bookworm AS build
RUN python -m venv /opt/hps
COPY pyproject.toml README.md /src/
COPY search /src/search
COPY trainers /src/trainers
RUN /opt/hps/bin/pip install --no-cache-dir /src

FROM python:3.11.7-slim-bookworm
RUN useradd --create-home --uid 1000 hps && mkdir -p /data /artifacts && chown hps:hps /data /artifacts
COPY --from=build /opt/hps /opt/hps
COPY spaces /app/spaces
ENV PATH=/opt/hps/bin:$PATH PYTHONUNBUFFERED=1 HPS_ARTIFACTS=/artifacts
WORKDIR /app
USER hps
