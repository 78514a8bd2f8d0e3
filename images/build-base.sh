#!/usr/bin/env bash
# The air-gapped base image: Debian bookworm from Debian packages alone
# (debootstrap), imported as localhost/base-python:bookworm. No container
# registry is contacted; hospitals and other regulated sites build this way.
set -euo pipefail

image=${BASE_IMAGE:-localhost/base-python:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
engine=$(command -v podman || command -v docker)

if "$engine" image inspect "$image" >/dev/null 2>&1; then
  echo "$image exists"
  exit 0
fi
root=$(mktemp -d /var/tmp/batchline-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
# libgomp1 is LightGBM's OpenMP runtime; the rest is Python itself.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,libgomp1 \
  bookworm "$root" "$mirror" >/dev/null
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | "$engine" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' - "$image"
echo "built $image"
