#!/usr/bin/env bash
# The gpu-profile sweep on the device, from the bundle prepare.sh built: install the carried wheels, run
# Kvasir-SEG N = 32 (3 seeds; baseline, copy-paste, inpaint + copy-paste), write kvasir-seg-n32-gpu.json, its
# report and timings.json into $OUT. One device call (carry benchmarks/device/bundle), e.g.:
#   run(command="bash benchmarks/device/run.sh", carry=["benchmarks/device/bundle"], timeout_s=600)
#   bash benchmarks/device/run.sh --dry-run [OUT]   # on CPU with the dry-run bundle: tiny sizes
set -euo pipefail
cd "$(dirname "$0")/../.."
DRY=""
if [[ "${1:-}" == "--dry-run" ]]; then DRY="--dry-run"; shift; fi
OUT="${1:-${OUT:?set OUT or give a folder}}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
BUNDLE=benchmarks/device/bundle   # the dry run reads bundle-dry (no wheels: it runs in this environment)
SITE=""
if [[ -z "$DRY" ]] && compgen -G "$BUNDLE/wheels/*.whl" > /dev/null; then  # the dry run uses this env
  SITE="$(mktemp -d)/site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$BUNDLE"/wheels/*.whl
fi
export PYTHONPATH="$PWD/src${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" benchmarks/device/bundle.py run "$OUT" $DRY 2>&1 | tee "$OUT/run.log"
