# One batchline stage image; images/build-images.sh builds one per stage of the
# catalog (python -m batchline.stages images), passing its name, the pip extras
# it needs and the system packages those extras need.
# Build context: the host-built wheelhouse (make wheelhouse); no registry or
# PyPI is needed when BASE_IMAGE is the debootstrap base (make base-image).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS install
ARG EXTRAS=""
# Marks this build's builder image so build-images.sh removes it (and only it) afterwards.
ARG BUILD_ID=none
LABEL org.batchline.builder="${BUILD_ID}"
COPY . /wheels
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels "batchline${EXTRAS:+[$EXTRAS]}" \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM ${BASE_IMAGE}
ARG STAGE
ARG SYSTEM_PACKAGES=""
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="batchline-${STAGE}" \
      org.opencontainers.image.description="batchline ${STAGE} stage" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Only what the stage's extras need (LightGBM: the OpenMP runtime), and only if
# the base lacks it: the debootstrap base already has libgomp1.
# hadolint ignore=DL3008,SC2086
RUN missing=""; for p in $SYSTEM_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done; \
    if [ -n "$missing" ]; then apt-get update && apt-get install -y --no-install-recommends $missing \
    && rm -rf /var/lib/apt/lists/*; fi
COPY --from=install /opt/venv /opt/venv
# Runs as a non-root user with a read-only root filesystem: everything that
# writes (Python, DuckDB spill, LightGBM) goes to /tmp, a tmpfs or emptyDir.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "batchline.stage"]
