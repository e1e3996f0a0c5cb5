#!/usr/bin/env bash
# Build the carry bundle of a device run in benchmarks/device/bundle (git-ignored): wheels for Python 3.12 of the
# packages the device image lacks, the sweep's dataset packed at its profile resolution (lossless up to 128 px; a
# volume dataset's folder as it is), the sweep's config reading them there (bundle/config.yaml), the encodings of
# every prompt the run uses, then a size check (< 64 MiB). Needs the shared datasets beside the checkout and, for
# the wheels, network access to PyPI.
#   bash benchmarks/device/prepare.sh             # the gpu-profile sweep (kvasir-seg-n32-gpu.yaml)
#   bash benchmarks/device/prepare.sh --config benchmarks/configs/kvasir-seg-cpu.yaml   # any sweep of one dataset
#   bash benchmarks/device/prepare.sh --dry-run   # tiny (32 px), no wheels, nothing downloaded
set -euo pipefail
cd "$(dirname "$0")/../.."
DRY=""
if [[ "${1:-}" == "--dry-run" ]]; then DRY="--dry-run"; shift; fi   # the rest (--config PATH) goes to bundle.py pack
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
BUNDLE=benchmarks/device/bundle
[[ -n "$DRY" ]] && BUNDLE=benchmarks/device/bundle-dry   # its own folder: a prepared bundle stays as it is
rm -rf "$BUNDLE"   # generated files only: rebuilt whole, so nothing stale counts towards the size
mkdir -p "$BUNDLE"

if [[ -z "$DRY" ]]; then
  # Not on the device image (KINDS.md's package list) or too old there, pinned as in pyproject.toml and
  # the dev venv (pydantic pins its core; it needs typing-extensions >= 4.16); torch, numpy, transformers,
  # accelerate, safetensors, scipy, scikit-image, opencv, pillow, typer, rich, PyYAML are there already.
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$BUNDLE/wheels" \
    diffusers==0.42.1 monai==1.6.1 pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 \
    typing-inspection==0.4.5 typing-extensions==4.16.0 ImageHash==4.3.2 PyWavelets==1.9.0 nibabel==5.4.2 \
    pytorch-msssim==1.0.0 importlib-metadata==10.2.0
fi
"$PY" benchmarks/device/bundle.py pack $DRY "$@"
"$PY" benchmarks/device/bundle.py check $DRY
