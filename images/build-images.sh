#!/usr/bin/env bash
# Build one image per stage of the catalog, from images/stage.Dockerfile, and
# the launcher, with podman or docker, whichever works here. BASE_IMAGE
# defaults to the air-gapped Debian base when it exists, else to the public
# python:3.11-slim. PYTHON runs the catalog (default: the project's venv).
set -euo pipefail

version=$(grep -m1 '^version' pyproject.toml | cut -d'"' -f2)
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
registry=${IMAGE_REGISTRY:-localhost}
python=${PYTHON:-.venv/bin/python}
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
# The builder stage of each multi-stage build is left behind as an untagged
# image of 540-800 MB; each carries this run's id, so only ours are removed
# (other builds on the same machine may be running).
build_id="batchline-$$-$(date +%s)"
remove_builders() {
  "$engine" image prune --force --filter "label=org.batchline.builder=$build_id" >/dev/null
}
trap remove_builders EXIT
build() {  # name dockerfile [build args...]
  local name=$1 file=$2; shift 2
  "$engine" build --quiet --network host $format \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "VERSION=$version" \
    --build-arg "REVISION=$revision" --build-arg "BUILD_ID=$build_id" "$@" \
    -f "$file" -t "$registry/batchline-$name:$version" build/wheelhouse >/dev/null
  echo "built $registry/batchline-$name:$version (base $BASE_IMAGE)"
}
# One line per stage: name, extras (or -), system packages (or -).
"$python" -m batchline.stages images | while read -r stage extras packages; do
  [ "$extras" = "-" ] && extras=""
  [ "$packages" = "-" ] && packages=""
  build "$stage" images/stage.Dockerfile --build-arg "STAGE=$stage" \
    --build-arg "EXTRAS=$extras" --build-arg "SYSTEM_PACKAGES=$packages"
done
build launcher images/launcher/Dockerfile
