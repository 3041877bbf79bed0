# The stock optuna-dashboard (compose runs `optuna-dashboard postgresql://...`) with psycopg 3 (what
# SQLAlchemy 2.1 picks for postgresql://), psycopg2 and plotly (server-side plots). hps is installed
# without its training dependencies, for `hps dashboard`; neither command imports torch.
FROM python:3.11.7-slim-bookworm AS build
RUN python -m venv /opt/dash && /opt/dash/bin/pip install --no-cache-dir \
      "optuna==5.0.*" "optuna-dashboard==0.21.*" "psycopg2-binary>=2.9" "psycopg[binary]>=3.2" "plotly>=5" "typer>=0.12" "rich>=13"
COPY pyproject.toml README.md /src/
COPY search /src/search
COPY trainers /src/trainers
RUN /opt/dash/bin/pip install --no-cache-dir --no-deps /src

FROM python:3.11.7-slim-bookworm
RUN useradd --create-home --uid 1000 hps && mkdir -p /artifacts && chown hps:hps /artifacts
COPY --from=build /opt/dash /opt/dash
ENV PATH=/opt/dash/bin:$PATH PYTHONUNBUFFERED=1
USER hps
