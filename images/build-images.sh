#!/usr/bin/env bash
# Build every stage image and the launcher with podman or docker, whichever
# works here. BASE_IMAGE defaults to the air-gapped Debian base when it exists,
# else to the public python:3.11-slim.
set -euo pipefail

version=$(grep -m1 '^version' pyproject.toml | cut -d'"' -f2)
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
registry=${IMAGE_REGISTRY:-localhost}
# podman defaults to the OCI format, which drops SHELL; docker format keeps it.
if command -v podman >/dev/null; then engine=podman; format="--format docker"; else engine=docker; format=""; fi
if [ -z "${BASE_IMAGE:-}" ]; then
  # `image inspect` rather than podman's `image exists`: docker has only the former.
  if "$engine" image inspect localhost/base-python:bookworm >/dev/null 2>&1; then
    BASE_IMAGE=localhost/base-python:bookworm
  else
    BASE_IMAGE=python:3.11-slim
  fi
fi
for image in ingest features train score launcher; do
  "$engine" build --quiet --network host $format \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "VERSION=$version" \
    --build-arg "REVISION=$revision" \
    -f "images/$image/Dockerfile" -t "$registry/batchline-$image:$version" build/wheelhouse >/dev/null
  echo "built $registry/batchline-$image:$version (base $BASE_IMAGE)"
done
