#!/usr/bin/env bash
# Wheels for the images, built on the host: pip inside a container cannot
# verify PyPI's TLS chain here, and air-gapped sites have no PyPI at all.
# Versions are pinned to what the host's virtualenv runs, so a stage writes
# byte-identical Parquet in a container and on the host.
# Usage: build-wheelhouse.sh PATH/TO/PIP
set -euo pipefail

pip=${1:-.venv/bin/pip}
out=build/wheelhouse
rm -rf "$out"
mkdir -p "$out"
"$pip" freeze --exclude-editable | grep -v '^-e ' > build/constraints.txt
"$pip" wheel --quiet --no-deps -w "$out" .
# Everything any image installs: the core, [ingest], [features], [model], [search],
# [cli,kubernetes,aws].
"$pip" download --quiet --only-binary=:all: -d "$out" -c build/constraints.txt \
  "$(ls "$out"/batchline-*.whl)[ingest,features,model,search,cli,kubernetes,aws]"
echo "wheelhouse: $(ls "$out" | wc -l) wheels in $out"
