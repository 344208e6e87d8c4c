#!/usr/bin/env bash
# Training throughput on this machine's CPU, `fl baseline` against PyTorch, as whole epochs
# of the real training images (issue: speed, acceptance 1): the reference CNN from the same
# initial model, SGD with momentum and weight decay, no augmentation, the images held in
# memory by both; one epoch each at each batch size, in turn, RUNS times. Prints each run's
# images/s, the ratio pair by pair, and the host's vector extensions (PyTorch's oneDNN uses
# AVX-512 where the host has it).
#
#   FL_TORCH_PYTHON=python-with-torch experiments/cpu_throughput.sh [DATA] [RUNS] [BATCHES]
#
# DATA defaults to ../shared/datasets/cifar10 (relative to the repo root), RUNS to 2,
# BATCHES to "64 256". The release `fl` is built if missing. The throughput test's steps
# (synthetic images) are the other half of the comparison:
#   FL_TORCH_PYTHON=... FL_BENCH_BATCHES=64,256 cargo test --release -p fl-core \
#       --features train --test model throughput -- --ignored --nocapture
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/datasets/cifar10}"
RUNS="${2:-2}"
BATCHES="${3:-64 256}"
PY="${FL_TORCH_PYTHON:-python3}"
OUT="experiments/out/cpu-throughput"
rm -rf "$OUT" && mkdir -p "$OUT"
[ -x target/release/fl ] || cargo build --release -p fl
export FL_REPO="$OUT/repo"

echo "host: $(nproc) cores; vector extensions: $(grep -o -w 'avx2\|fma\|avx512[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
for batch in $BATCHES; do
    ARGS=(--epochs 1 --batch "$batch" --lr 0.05 --momentum 0.9 --weight-decay 5e-4 --seed 0 --no-augment)
    for run in $(seq 1 "$RUNS"); do
        fl_out="$OUT/fl-$batch-$run.jsonl"
        target/release/fl baseline --data "$DATA" "${ARGS[@]}" --jsonl "$fl_out" 2> "$OUT/fl-$batch-$run.err"
        if [ ! -f "$OUT/init.safetensors" ]; then
            INIT=$(head -1 "$fl_out" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["init"])')
            target/release/fl ipfs get "$INIT" -o "$OUT/init.safetensors" 2>/dev/null
        fi
        "$PY" experiments/pytorch/fedavg_cnn.py baseline "$OUT/init.safetensors" "$DATA" \
            "${ARGS[@]}" > "$OUT/torch-$batch-$run.jsonl" 2> "$OUT/torch-$batch-$run.err"
        "$PY" - "$fl_out" "$OUT/torch-$batch-$run.jsonl" "$batch" "$run" <<'PY'
import json, sys
def epoch(path):
    lines = [json.loads(l) for l in open(path) if l.strip().startswith("{")]
    return next(l for l in lines if l.get("event") == "epoch" or "images_per_sec" in l)
ours, torch = epoch(sys.argv[1]), epoch(sys.argv[2])
a, b = ours["images_per_sec"], torch["images_per_sec"]
print(f"batch {sys.argv[3]}, run {sys.argv[4]}: fl baseline {a:.0f} images/s, "
      f"PyTorch {b:.0f} images/s, ratio {a / b:.3f}")
PY
    done
done
