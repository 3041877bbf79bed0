# optuna-dashboard with psycopg2 and plotly (server-side plots), served by `hps dashboard` so
# that every hps storage (hps+postgresql:// and the journal included) can be browsed. No torch: hps is
# installed without its training dependencies; the dashboard command imports none of them.
FROM python:3.11.7-slim-bookworm AS build
RUN python -m venv /opt/dash && /opt/dash/bin/pip install --no-cache-dir \
      "optuna==5.0.*" "optuna-dashboard==0.21.*" "psycopg2-binary>=2.9" "plotly>=5" "typer>=0.12" "rich>=13"
COPY pyproject.toml README.md /src/
COPY search /src/search
COPY trainers /src/trainers
RUN /opt/dash/bin/pip install --no-cache-dir --no-deps /src

FROM python:3.11.7-slim-bookworm
RUN useradd --create-home --uid 1000 hps && mkdir -p /artifacts && chown hps:hps /artifacts
COPY --from=build /opt/dash /opt/dash
ENV PATH=/opt/dash/bin:$PATH PYTHONUNBUFFERED=1
USER hps
