# The DICOM AI node: Storage SCP -> Azure ML models -> DICOM results back to the PACS.
#
#   docker build -t dicom-node .
#   docker run -p 11112:11112 -v /srv/dicom-node:/data \
#       -v /etc/dicom-node/config.yaml:/etc/dicom-node/config.yaml:ro dicom-node
#
# Python comes from Debian, so the same file builds from any Debian bookworm root: BASE_IMAGE picks it
# (scripts/build_image.sh builds it with podman from a debootstrap root). Behind a TLS-intercepting proxy, mount
# its CA bundle into the build and pass its path as PIP_CERT.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

# Declared after FROM, so that the RUN steps below see them. EXTRAS: optional extras of the package, e.g.
# "cluster" (PostgreSQL + Redis drivers, as docker-compose.yml builds it).
ARG PIP_CERT=
ARG EXTRAS=

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/dicom-node/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/dicom-node

# Dependencies first (from pyproject.toml alone), so that a code change does not reinstall them.
COPY pyproject.toml /src/pyproject.toml
RUN set -eu; \
    cert=""; if [ -n "${PIP_CERT}" ]; then cert="--cert=${PIP_CERT}"; fi; \
    /opt/dicom-node/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' > /tmp/requirements.txt; \
    env -u PIP_CERT /opt/dicom-node/bin/pip install ${cert} --upgrade pip setuptools wheel; \
    env -u PIP_CERT /opt/dicom-node/bin/pip install ${cert} -r /tmp/requirements.txt; \
    rm /tmp/requirements.txt

COPY . /src
RUN set -eu; \
    cert=""; if [ -n "${PIP_CERT}" ]; then cert="--cert=${PIP_CERT}"; fi; \
    target=/src; if [ -n "${EXTRAS}" ]; then target="/src[${EXTRAS}]"; fi; \
    env -u PIP_CERT /opt/dicom-node/bin/pip install ${cert} --no-build-isolation "${target}"; \
    rm -rf /src

RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home --shell /usr/sbin/nologin dicomnode \
 && mkdir -p /data /etc/dicom-node \
 && chown dicomnode:dicomnode /data \
 && chmod 0700 /data

# storage_dir (received instances, spool, database) lives here; config.yaml is mounted read-only.
VOLUME ["/data"]
WORKDIR /data
USER dicomnode
# 11112: DICOM; 2762: DICOM TLS when node.tls is configured (port: 2762); 8081: the HTTP side (http.port;
# set http.host: 0.0.0.0 to publish it)
EXPOSE 11112 2762 8081
# /readyz of the HTTP side when http.port is set (database, spool floor, queue, worker), else a C-ECHO
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
    CMD ["/opt/dicom-node/bin/dicom-node", "healthcheck", "--config", "/etc/dicom-node/config.yaml"]

ENTRYPOINT ["/opt/dicom-node/bin/dicom-node"]
CMD ["serve", "--config", "/etc/dicom-node/config.yaml"]
