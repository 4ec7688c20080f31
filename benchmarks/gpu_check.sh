#!/usr/bin/env bash
# The GPU check as one command: benchmarks/step_speed.py, a second step_speed process (second-run compile
# warm-up), then benchmarks/gpu_e2e.py, back to back from the source tree with PYTHONPATH=src and no install
# (torch, transformers, lightning and torchmetrics must be present). It ends within CAMIM_GPU_CHECK_S seconds
# (default 465, under 8 minutes): each stage has its own budget, which the benchmark treats as an end time,
# and no stage runs past the overall deadline. JSON and logs are written under OUT_DIR as they go, so a run cut
# short still leaves what it measured. A variant or run that fails is said and written as failed, the stage
# goes on with the next and exits 1; gpu_check exits 1 when any stage did (or was killed), naming them.
#
#   benchmarks/gpu_check.sh [OUT_DIR] [--small]     # --small: tiny sizes, a CPU check of under 4 minutes
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-gpu-check}"
small=""
[ "${2:-}" = "--small" ] && small="--small"
mkdir -p "$out"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
cd "$root" || exit 1
start=$SECONDS
deadline=$((start + ${CAMIM_GPU_CHECK_S:-465}))
{
    date -u
    timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
        || echo "no nvidia-smi"
    timeout 60 "$py" -c 'import torch, transformers, lightning, torchmetrics as tm
print("torch", torch.__version__, "cuda", torch.version.cuda, "| transformers", transformers.__version__,
      "| lightning", lightning.__version__, "| torchmetrics", tm.__version__)'
} 2>&1 | tee "$out/env.txt"

if [ -n "$small" ]; then
    step_args=(--small --batch-sizes 4 --steps 2 --warmup 1 --rounds 1 --variants released fast frozen frozen-bf16)
    e2e_args=(--small --train 32 --eval 8 --batch-size 8 --workers 0 --warm-batches 2 --repeat-fast 1
              --presets tmr-cam-mi hvpnet-cam-mi --image-cache --profile-batches 1)
    # (inductor's CPU compile takes minutes here: the CPU check reruns the eager fast variant instead)
    rerun_args=(--small --batch-sizes 4 --steps 2 --warmup 1 --rounds 1 --variants fast)
    step_budget=60; rerun_budget=40; e2e_budget=120
else
    # the targets first (fine-tuned and frozen-visual graphs, batch 16 and 64), then the first-run regional
    # compile, then what only explains them; whatever the budget no longer holds is skipped, and said so
    step_args=(--batch-sizes 16 64 --steps 10 --warmup 3 --rounds 2 --variant-timeout-s 100
               --variants released fast-graphs frozen-graphs frozen-graphs-percast fast-regional fast frozen fast-skip
               --first-batch-only fast-regional fast-skip
               --profile 3 --profile-variants released fast-graphs frozen-graphs)
    # the second process's regional compile finds the first one's caches: second-run warm-up
    rerun_args=(--batch-sizes 16 --steps 10 --warmup 3 --rounds 1 --variants fast-regional)
    e2e_args=(--train 320 --eval 32 --batch-size 16 --workers 8 --warm-batches 5 --repeat-fast 2
              --run-timeout-s 120 --image-cache --profile-batches 3)
    step_budget=198; rerun_budget=55; e2e_budget=162  # 415 s: 465 less ~5 s of start-up and 3 x 15 s of grace
fi

# a shorter CAMIM_GPU_CHECK_S (or a slow start) shrinks every stage's budget alike (45 s: the stages' graces)
avail=$((deadline - SECONDS - 45)) sum=$((step_budget + rerun_budget + e2e_budget))
if [ "$avail" -lt "$sum" ]; then
    step_budget=$((step_budget * avail / sum)) rerun_budget=$((rerun_budget * avail / sum))
    e2e_budget=$((e2e_budget * avail / sum))
fi

# run_stage NAME BUDGET RESERVE CMD...: CMD gets --budget-s BUDGET, cut to what is left before the deadline
# less RESERVE (the later stages' share) and less the 15 s after its budget at which it is stopped, whatever
# happens (a step that overruns its budget, teardown); the benchmark's clock starts at its launch (--started-at)
run_stage() {
    local name=$1 budget=$2 reserve=$3; shift 3
    local left=$((deadline - SECONDS - reserve - 15))
    [ "$left" -lt "$budget" ] && budget=$left
    if [ "$budget" -lt 20 ]; then
        echo "$name skipped: its budget would be ${budget} s ($((deadline - SECONDS)) s left before the deadline)"
        return
    fi
    echo "== $name (budget ${budget} s; $((deadline - SECONDS)) s left in all)"
    timeout -k 5 $((budget + 10)) "$@" --budget-s "$budget" --started-at "$(date +%s.%N)"
}

# stage_done NAME STATUS: say a stage's exit status and remember the stages that failed
failed=""
stage_done() {
    echo "$1 exit $2"
    [ "$2" -eq 0 ] || failed="${failed:+$failed, }$1"
}

run_stage step_speed "$step_budget" $((rerun_budget + e2e_budget + 35)) \
    "$py" benchmarks/step_speed.py "${step_args[@]}" \
    --compile-cache "${CAMIM_COMPILE_CACHE:-/tmp/camim-compile-cache}" --json "$out/step_speed.json" 2>&1 | tee "$out/step_speed.log"
stage_done step_speed "${PIPESTATUS[0]}"

echo "== step_speed again: fast-regional with the compile caches of the run above (second-run warm-up)"
# a second run only if the first one finished its regional compile; say which this is
timeout 30 "$py" - "$out/step_speed.json" <<'PY' 2>&1 | tee "$out/step_speed_rerun.kind"
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["rows"]
except (OSError, ValueError, KeyError):
    rows = []
done = [r for r in rows if r.get("variant") == "fast-regional" and r.get("samples_per_s")]
print("this is a second run: the first compiled fast-regional in %.1f s" % done[0]["warmup_s"] if done else
      "this is NOT a second run: the step run above did not finish fast-regional (its caches may be partial)")
PY
run_stage "step_speed rerun" "$rerun_budget" $((e2e_budget + 15)) \
    "$py" benchmarks/step_speed.py "${rerun_args[@]}" \
    --compile-cache "${CAMIM_COMPILE_CACHE:-/tmp/camim-compile-cache}" --json "$out/step_speed_rerun.json" 2>&1 | tee "$out/step_speed_rerun.log"
stage_done "step_speed rerun" "${PIPESTATUS[0]}"

run_stage gpu_e2e "$e2e_budget" 0 \
    "$py" benchmarks/gpu_e2e.py "${e2e_args[@]}" --json "$out/gpu_e2e.json" 2>&1 | tee "$out/gpu_e2e.log"
stage_done gpu_e2e "${PIPESTATUS[0]}"
echo "gpu_check done in $((SECONDS - start)) s${failed:+; stages with failures: $failed}"
[ -z "$failed" ]
