#!/usr/bin/env bash
# Install podman (Debian) and configure it for this kind of machine: no
# rlimit changes and the cgroupfs manager, without which `podman run` fails
# with "setrlimit RLIMIT_NPROC" or "cgroups in hybrid mode not supported".
# Idempotent; needs root.
set -euo pipefail

if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq podman runc debootstrap >/dev/null
fi

conf=/etc/containers/containers.conf
if ! grep -q 'batchline' "$conf" 2>/dev/null; then
  mkdir -p /etc/containers
  cat > "$conf" <<'CONF'
# Written by batchline images/setup-podman.sh
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
CONF
fi
podman --version
