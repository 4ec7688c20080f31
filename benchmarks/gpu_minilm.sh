#!/usr/bin/env bash
# Issue 37's MiniLM grids on a lent GPU in one device call: unpack the MNRE text and captions that
# benchmarks/device_pack.py put into .device/ (carried: the shared data folder does not travel) to
# CAMIM_MNRE_DIR (default /tmp/camim-mnre), then benchmarks/gpu_minilm.py trains the grids' runs into
# CAMIM_GPU_RUNS (default /tmp/camim-gpu-minilm, which a later call on the same warm machine resumes) with the
# fp16 encoder copy, several at once, ending within --budget-s seconds of this script's start (default 330).
# The log, the JSON summary and the finished runs' tarball are written under OUT_DIR as they go (3 files).
# From the source tree with PYTHONPATH=src, no install (torch, transformers, lightning, torchmetrics, pyyaml,
# safetensors, tokenizers, matplotlib and pillow must be present). Exit 1 when a run failed.
#
#   bash benchmarks/gpu_minilm.sh OUT_DIR [--small] [gpu_minilm.py options: --budget-s S --jobs N ...]
set -uo pipefail
started=$(date +%s.%N)
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:?usage: gpu_minilm.sh OUT_DIR [--small] [gpu_minilm.py options]}"
shift
pack="$root/.device"
data="${CAMIM_MNRE_DIR:-/tmp/camim-mnre}"
runs="${CAMIM_GPU_RUNS:-/tmp/camim-gpu-minilm}"
if [ ! -f "$pack/mnre.tar.xz" ] || [ ! -f "$pack/minilm-fp16/PACK.json" ]; then
    echo "gpu_minilm: $pack holds no mnre.tar.xz or minilm-fp16/PACK.json: run benchmarks/device_pack.py first and carry .device" >&2
    exit 1
fi
py="${PYTHON:-python3}"
mkdir -p "$out" "$data"
if ! cmp -s "$pack/mnre.tar.manifest.json" "$data/.manifest.json"; then  # unpacked once per machine
    # Python's tarfile (lzma built in), not tar -J, which needs an xz program that an image may lack
    "$py" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
        "$pack/mnre.tar.xz" "$data" && cp "$pack/mnre.tar.manifest.json" "$data/.manifest.json" || exit 1
fi
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec "$py" "$root/benchmarks/gpu_minilm.py" --data-dir "$data" --encoder "$pack/minilm-fp16" \
    --runs "$runs" --out "$out" --started-at "$started" "$@"
