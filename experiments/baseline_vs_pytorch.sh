#!/usr/bin/env bash
# `fl baseline` next to PyTorch with the same model, initial weights, data, epochs and
# hyper-parameters (issue: local training, acceptance 2). Runs one after the other, each on
# the whole machine; prints both runs' per-epoch test accuracy and the final difference.
#
#   FL_TORCH_PYTHON=python-with-torch experiments/baseline_vs_pytorch.sh [DATA] [EPOCHS] [SEED] [SCHEDULE]
#
# DATA defaults to ../shared/datasets/cifar10 (relative to the repo root); the release `fl`
# is built if missing. Output goes to experiments/out/baseline-SEED-SCHEDULE/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/datasets/cifar10}"
EPOCHS="${2:-10}"
SEED="${3:-0}"
SCHEDULE="${4:-constant}"
PY="${FL_TORCH_PYTHON:-python3}"
ARGS=(--epochs "$EPOCHS" --batch 64 --lr 0.05 --momentum 0.9 --weight-decay 5e-4 --seed "$SEED" --schedule "$SCHEDULE")
OUT="experiments/out/baseline-$SEED-${SCHEDULE//:/_}"
rm -rf "$OUT" && mkdir -p "$OUT"
[ -x target/release/fl ] || cargo build --release -p fl
export FL_REPO="$OUT/repo"

/usr/bin/time -v target/release/fl baseline --data "$DATA" "${ARGS[@]}" --jsonl "$OUT/fl.jsonl" 2> "$OUT/fl.err"
INIT=$(head -1 "$OUT/fl.jsonl" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["init"])')
target/release/fl ipfs get "$INIT" -o "$OUT/init.safetensors" 2>/dev/null
/usr/bin/time -v "$PY" experiments/pytorch/fedavg_cnn.py baseline "$OUT/init.safetensors" "$DATA" \
    "${ARGS[@]}" > "$OUT/torch.jsonl" 2> "$OUT/torch.err"

"$PY" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def runs(name):
    return [json.loads(l) for l in open(f"{out}/{name}.jsonl")]
ours, torch = runs("fl"), runs("torch")
print(f"{'epoch':>5} {'fl test acc':>12} {'torch test acc':>15} {'fl img/s':>9} {'torch img/s':>12}")
for a, b in zip([r for r in ours if r["event"] == "epoch"], [r for r in torch if r["event"] == "epoch"]):
    print(f"{a['epoch']:>5} {100*a['test_accuracy']:>11.2f}% {100*b['test_accuracy']:>14.2f}% "
          f"{a['images_per_sec']:>9.0f} {b['images_per_sec']:>12.0f}")
fa, fb = ours[-1]["test_accuracy"], torch[-1]["test_accuracy"]
print(f"final: fl {100*fa:.2f}%, PyTorch {100*fb:.2f}%, difference {100*(fa-fb):+.2f} pp; model {ours[-1]['model']}")
PY
