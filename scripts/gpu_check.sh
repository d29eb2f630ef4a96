#!/usr/bin/env bash
# The whole GPU measurement in one command, for a lent GPU machine (torch there, no diffusers, no
# network): the speed table, CUDA against CPU, bf16 against fp32, and the tiled path under a forced
# out-of-memory. Writes gpu_check.md, gpu_check.json and speed.json to $OUT (default out/gpu_check).
#
#   make gpu-wheels                      # here, once: the wheels the GPU machine lacks, into .gpu-wheels/
#   device run, carry [".gpu-wheels"]:   bash scripts/gpu_check.sh
#   bash scripts/gpu_check.sh --dry-run  # here, on CPU, tiny sizes (the test suite runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu_check}"
DRY=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY="--dry-run" ;;
    *) echo "gpu_check.sh: unknown argument $arg (only --dry-run)" >&2; exit 2 ;;
  esac
done
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if ! "$PYTHON" -c "import diffusers" 2>/dev/null; then
  # no index: the GPU machine cannot download; --no-deps: never a second torch
  ls .gpu-wheels/diffusers-*.whl >/dev/null 2>&1 || {
    echo "gpu_check.sh: diffusers is not importable and .gpu-wheels/ holds no wheel: run 'make gpu-wheels' here and carry .gpu-wheels" >&2
    exit 2
  }
  SITE="${TMPDIR:-/tmp}/cadfd-gpu-site"
  "$PYTHON" -m pip install -q --no-index --no-deps --target "$SITE" .gpu-wheels/*.whl
  export PYTHONPATH="$PYTHONPATH:$SITE"
fi
exec "$PYTHON" -m cadfd_ros.bench.gpu_check --out "$OUT" $DRY
