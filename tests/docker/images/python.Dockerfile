# Stand-in for python:3.11.7-slim-bookworm where Docker Hub is out of reach: Debian bookworm's own
# Python 3.11 on a base image made with debootstrap (tests/docker/engine.py builds it).
ARG DEBIAN_IMAGE=local/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* && ln -s /usr/bin/python3 /usr/local/bin/python
CMD ["python3"]
