#!/usr/bin/env bash
# The GPU check as one command: benchmarks/step_speed.py then benchmarks/gpu_e2e.py, back to back, each with
# its own time budget (about 9 minutes in all on one H200), from the source tree with PYTHONPATH=src and no
# install (torch, transformers, lightning and torchmetrics must be present). JSON and logs are written under
# OUT_DIR as they go, so a run cut short still leaves what it measured.
#
#   benchmarks/gpu_check.sh [OUT_DIR] [--small]     # --small: tiny sizes, a few seconds' CPU check
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-gpu-check}"
small=""
[ "${2:-}" = "--small" ] && small="--small"
mkdir -p "$out"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
cd "$root" || exit 1
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
        || echo "no nvidia-smi"
    "$py" -c 'import torch, transformers, lightning, torchmetrics as tm
print("torch", torch.__version__, "cuda", torch.version.cuda, "| transformers", transformers.__version__,
      "| lightning", lightning.__version__, "| torchmetrics", tm.__version__)'
} 2>&1 | tee "$out/env.txt"

if [ -n "$small" ]; then
    step_args=(--small --batch-sizes 4 --steps 2 --warmup 1 --rounds 1 --variants released fast frozen)
    e2e_args=(--small --train 32 --eval 8 --batch-size 8 --workers 0 --warm-batches 2 --repeat-fast 1
              --presets tmr-cam-mi --image-cache --profile-batches 1)
    # (inductor's CPU compile takes minutes here: the CPU check reruns the eager fast variant instead)
    rerun_args=(--small --batch-sizes 4 --steps 2 --warmup 1 --rounds 1 --variants fast)
    step_budget=60; e2e_budget=120
else
    step_args=(--batch-sizes 16 64 --steps 10 --warmup 3 --rounds 2 --variant-timeout-s 100
               --variants released fast fast-graphs frozen frozen-graphs fast-regional fast-skip
               --profile 3 --profile-variants released fast-graphs frozen-graphs)
    # the second process's regional compile finds the first one's caches: second-run warm-up
    rerun_args=(--batch-sizes 16 --steps 10 --warmup 3 --rounds 1 --variants fast-regional --variant-timeout-s 60)
    e2e_args=(--train 480 --eval 48 --batch-size 16 --workers 8 --warm-batches 5 --repeat-fast 2
              --run-timeout-s 120 --image-cache --profile-batches 3)
    step_budget=170; e2e_budget=170
fi

echo "== step_speed (budget ${step_budget} s)"
timeout $((step_budget + 70)) "$py" benchmarks/step_speed.py "${step_args[@]}" --budget-s "$step_budget" \
    --compile-cache "${CAMIM_COMPILE_CACHE:-/tmp/camim-compile-cache}" --json "$out/step_speed.json" 2>&1 | tee "$out/step_speed.log"
echo "step_speed exit ${PIPESTATUS[0]}"

echo "== step_speed again: fast-regional with the compile caches of the run above (second-run warm-up)"
# a second run only if the first one finished its regional compile; say which this is
"$py" - "$out/step_speed.json" <<'PY' 2>&1 | tee "$out/step_speed_rerun.kind"
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["rows"]
except (OSError, ValueError, KeyError):
    rows = []
done = [r for r in rows if r.get("variant") == "fast-regional" and r.get("samples_per_s")]
print("this is a second run: the first compiled fast-regional in %.1f s" % done[0]["warmup_s"] if done else
      "this is NOT a second run: the step run above did not finish fast-regional (its caches may be partial)")
PY
timeout 90 "$py" benchmarks/step_speed.py "${rerun_args[@]}" \
    --compile-cache "${CAMIM_COMPILE_CACHE:-/tmp/camim-compile-cache}" --json "$out/step_speed_rerun.json" 2>&1 | tee "$out/step_speed_rerun.log"
echo "step_speed rerun exit ${PIPESTATUS[0]}"

echo "== gpu_e2e (budget ${e2e_budget} s)"
timeout $((e2e_budget + 90)) "$py" benchmarks/gpu_e2e.py "${e2e_args[@]}" --budget-s "$e2e_budget" \
    --json "$out/gpu_e2e.json" 2>&1 | tee "$out/gpu_e2e.log"
echo "gpu_e2e exit ${PIPESTATUS[0]}"
