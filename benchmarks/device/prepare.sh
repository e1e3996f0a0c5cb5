#!/usr/bin/env bash
# Build the carry bundle of the gpu-profile device run in benchmarks/device/bundle (git-ignored):
# wheels for Python 3.12 of the packages the device image lacks, Kvasir-SEG and colon-normal packed at 256 px,
# the encodings of every prompt the run uses, then a size check (< 64 MiB). Needs the shared datasets beside the
# checkout and, for the wheels, network access to PyPI.
#   bash benchmarks/device/prepare.sh             # the real bundle
#   bash benchmarks/device/prepare.sh --dry-run   # tiny (32 px), no wheels, nothing downloaded
set -euo pipefail
cd "$(dirname "$0")/../.."
DRY=""
[[ "${1:-}" == "--dry-run" ]] && DRY="--dry-run"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
BUNDLE=benchmarks/device/bundle
mkdir -p "$BUNDLE"

if [[ -z "$DRY" ]]; then
  # Not on the device image (KINDS.md's package list), pinned as in pyproject.toml; torch, numpy, transformers,
  # accelerate, safetensors, scipy, scikit-image, opencv, pillow, typer, rich, PyYAML are there already.
  rm -rf "$BUNDLE/wheels"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$BUNDLE/wheels" \
    diffusers==0.42.1 monai==1.6.1 pydantic==2.14.3 pydantic-core annotated-types typing-inspection \
    ImageHash==4.3.2 PyWavelets nibabel==5.4.2 pytorch-msssim==1.0.0 importlib-metadata
fi
"$PY" benchmarks/device/bundle.py pack $DRY
"$PY" benchmarks/device/bundle.py check
