# syntax=docker/dockerfile:1
# otelbridge: the webhook daemon (`otelbridge serve`) as a small, non-root image that runs with a
# read-only root filesystem. State (SQLite) lives on the volume at /var/lib/otelbridge.
#
#   docker build -t otelbridge .
#   docker run --read-only -v otelbridge-state:/var/lib/otelbridge \
#     -e OTELBRIDGE_WEBHOOK_SECRET="$(openssl rand -hex 32)" -p 8080:8080 -p 127.0.0.1:9464:9464 otelbridge
#
# BASE must provide `python3` with the venv module (python:3.12-slim does; so does Debian's
# python3 + python3-venv, which the container tests build on: --build-arg BASE=...). By default it
# is the python-base stage below: python:3.12-slim pinned by the digest of its multi-arch index
# (linux/amd64 and linux/arm64), so a rebuild cannot pick up a different base behind the tag. The
# image is named in a FROM line, not in this ARG, because Dependabot updates FROM lines only;
# docs/supply-chain.md says how the digest is refreshed.
ARG BASE=python-base

FROM python:3.12-slim@sha256:78387bc3881b8273120a12ebe6c1ab22b018ccc2c9adf565ae1ac9b536e184ea AS python-base

# --- build: a virtualenv with otelbridge and its dependencies ----------------------------------
FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first, from the lock (requirements/image.txt: pyproject.toml's dependencies and the
# postgres extra, every file checked against its sha256, wheels only), so that a change to the
# code alone reuses this (slow) layer; otelbridge itself is installed without dependencies below.
# The build tools (setuptools for the wheel, cyclonedx-bom for the SBOM) go into a throwaway
# virtualenv from their own lock; nothing of it reaches the final stage.
COPY requirements/image.txt requirements/build-tools.txt ./requirements/
RUN python3 -m venv /opt/otelbridge \
 && /opt/otelbridge/bin/pip install --require-hashes --only-binary=:all: -r requirements/image.txt \
 && python3 -m venv /tmp/build-tools \
 && /tmp/build-tools/bin/pip install --require-hashes --only-binary=:all: -r requirements/build-tools.txt
COPY pyproject.toml README.md LICENSE ./
COPY otelbridge ./otelbridge
COPY scripts/sbom.py ./scripts/
# pip compiles the .pyc files here (the root filesystem is read-only at run time); pip and
# setuptools are not needed to run, so they do not go into the final image. The SBOM (CycloneDX
# JSON) lists what the virtualenv holds once they are gone: otelbridge and its dependencies.
RUN /tmp/build-tools/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
 && /opt/otelbridge/bin/pip install --no-deps /tmp/dist/otelbridge-*.whl \
 && /opt/otelbridge/bin/python -m pip uninstall --yes pip setuptools wheel \
 && /opt/otelbridge/bin/otelbridge --version \
 && /tmp/build-tools/bin/python scripts/sbom.py --python /opt/otelbridge/bin/python \
        --output /opt/otelbridge/sbom.cdx.json

# --- run -----------------------------------------------------------------------------------------
FROM ${BASE}
ARG VERSION=0.1.0
ARG SOURCE=https://github.com/otelbridge/otelbridge
LABEL org.opencontainers.image.title="otelbridge" \
      org.opencontainers.image.description="Cartesia voice-agent webhooks to OpenTelemetry traces and metrics over OTLP" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.github.otelbridge.sbom="/opt/otelbridge/sbom.cdx.json"

# A fixed numeric user (Kubernetes' runAsNonRoot can only verify a numeric UID). Lines appended
# directly: Debian's minimal roots have no useradd.
RUN echo 'otelbridge:x:10001:10001:otelbridge:/var/lib/otelbridge:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'otelbridge:x:10001:' >> /etc/group \
 && mkdir -p /var/lib/otelbridge \
 && chown 10001:10001 /var/lib/otelbridge \
 && chmod 0700 /var/lib/otelbridge
COPY --from=build /opt/otelbridge /opt/otelbridge

# Both listeners on all interfaces (the pod's network is the boundary); nothing is written
# outside the state volume: no bytecode, and SQLite's temporary files fall back to the working
# directory when /var/tmp and /tmp are read-only.
ENV PATH=/opt/otelbridge/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OTELBRIDGE_LISTEN_HOST=0.0.0.0 \
    OTELBRIDGE_ADMIN_HOST=0.0.0.0 \
    OTELBRIDGE_STATE_DIR=/var/lib/otelbridge \
    OTELBRIDGE_SHUTDOWN_TIMEOUT=10
WORKDIR /var/lib/otelbridge
VOLUME ["/var/lib/otelbridge"]
USER 10001:10001
EXPOSE 8080 9464
# SIGTERM starts the drain: up to OTELBRIDGE_SHUTDOWN_TIMEOUT (10 s) of flushing, well inside
# Kubernetes' default 30 s terminationGracePeriodSeconds (raise both together).
STOPSIGNAL SIGTERM
ENTRYPOINT ["otelbridge"]
CMD ["serve"]
