# The stock optuna-dashboard (compose runs `optuna-dashboard postgresql://hps@postgres/hps`, the
# password from PGPASSWORD) with psycopg 3 (what SQLAlchemy 2.1 picks for postgresql://) and plotly
# (server-side plots). No hps, no torch. Build args as in hps.Dockerfile.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
FROM ${PYTHON_IMAGE}
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_TRUSTED_HOST=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 1000 hps && mkdir -p /artifacts && chown hps:hps /artifacts \
    && python -m venv /opt/dash \
    && /opt/dash/bin/pip install "optuna==5.0.*" "optuna-dashboard==0.21.*" "psycopg[binary]>=3.2" "plotly>=5"
ENV PATH=/opt/dash/bin:$PATH PYTHONUNBUFFERED=1
USER hps
