#!/usr/bin/env bash
# The sweep prepare.sh packed (bundle/config.yaml; by default Kvasir-SEG N = 32 at the gpu profile, 3 seeds, 4 arms:
# kvasir-seg-n32-gpu.yaml) on the device, from the bundle: install the carried wheels, run it in K worker
# processes sharing the GPU, stopped at a deadline; into $OUT: timings.json, sweep.tar.gz (result JSONs + reports
# when finished, run records, logs), run.log and gpu-load.csv. `--n N` / `--arm A` (repeatable) run a part of it.
# One device call (carry benchmarks/device/bundle), e.g.:
#   run(command="bash benchmarks/device/run.sh --workers 4 --deadline 510", carry=["benchmarks/device/bundle"],
#       timeout_s=600)
#   bash benchmarks/device/run.sh --dry-run [OUT] --workers 2   # on CPU with the dry-run bundle: tiny sizes
set -euo pipefail
cd "$(dirname "$0")/../.."
DRY=""
if [[ "${1:-}" == "--dry-run" ]]; then DRY="--dry-run"; shift; fi
if [[ -n "${1:-}" && "${1:-}" != --* ]]; then OUT="$1"; shift; fi
OUT="${OUT:?set OUT or give a folder}"   # the rest (--workers K, --deadline S, --n, --arm) to bundle.py run
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
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  # GPU load every 10 s while the sweep runs (stopped with this script)
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 10 > "$OUT/gpu-load.csv" & SMI=$!
  trap "kill $SMI 2> /dev/null || true" EXIT
fi
"$PY" benchmarks/device/bundle.py run "$OUT" $DRY "$@" 2>&1 | tee "$OUT/run.log"
