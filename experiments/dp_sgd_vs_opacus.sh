#!/usr/bin/env bash
# `fl baseline --dp-epsilon` (DP-SGD in burn) next to Opacus 1.6 with the same model, initial
# weights, data, recipe and noise (issue: private training that still learns, acceptance 3
# and 4). Runs one after the other, each on the whole machine; prints both runs' per-epoch
# test accuracy, images/s and epsilon, and the final difference and speed ratio.
#
#   FL_TORCH_PYTHON=python-with-opacus experiments/dp_sgd_vs_opacus.sh [DATA] [EPOCHS] [SEED] [EPSILON]
#
# EPSILON "none" runs the same recipe without privacy on both sides (plain SGD, shuffled
# batches of BATCH, no clipping, no noise). The recipe, from the environment: BATCH (expected
# batch, default 256), LR (0.1), MOMENTUM (0.9), WD (weight decay, 0), CLIP (1.0), DELTA
# (1e-5). The noise multiplier is ours (the smallest that reaches EPSILON after EPOCHS), passed
# to Opacus as is, so both add the same noise; each prints its own accountant's epsilon.
# DATA defaults to ../shared/datasets/cifar10; the release `fl` is built if missing. Output
# goes to experiments/out/dp-SEED-EPSILON/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/datasets/cifar10}"
EPOCHS="${2:-10}"
SEED="${3:-0}"
EPSILON="${4:-8}"
PY="${FL_TORCH_PYTHON:-python3}"
BATCH="${BATCH:-256}" LR="${LR:-0.1}" MOMENTUM="${MOMENTUM:-0.9}" WD="${WD:-0}"
CLIP="${CLIP:-1.0}" DELTA="${DELTA:-1e-5}"
RECIPE=(--epochs "$EPOCHS" --batch "$BATCH" --lr "$LR" --momentum "$MOMENTUM" --weight-decay "$WD" --seed "$SEED")
OUT="experiments/out/dp-$SEED-$EPSILON"
rm -rf "$OUT" && mkdir -p "$OUT"
[ -x target/release/fl ] || cargo build --release -p fl
export FL_REPO="$OUT/repo"

if [ "$EPSILON" = none ]; then
    OURS=(--no-augment)
else
    OURS=(--dp-epsilon "$EPSILON" --dp-clip "$CLIP" --dp-delta "$DELTA")
fi
/usr/bin/time -v target/release/fl baseline --data "$DATA" "${RECIPE[@]}" "${OURS[@]}" \
    --jsonl "$OUT/fl.jsonl" 2> "$OUT/fl.err"
read -r INIT Z < <(head -1 "$OUT/fl.jsonl" | "$PY" -c '
import json, sys
start = json.load(sys.stdin)
print(start["init"], (start.get("dp") or {}).get("noise_multiplier", "none"))')
target/release/fl ipfs get "$INIT" -o "$OUT/init.safetensors" 2>/dev/null
if [ "$EPSILON" = none ]; then
    THEIRS=(--mode none)
else
    THEIRS=(--mode opacus --noise-multiplier "$Z" --clip "$CLIP" --delta "$DELTA")
fi
/usr/bin/time -v "$PY" experiments/pytorch/dp_sgd.py "$OUT/init.safetensors" "$DATA" \
    "${RECIPE[@]}" "${THEIRS[@]}" > "$OUT/opacus.jsonl" 2> "$OUT/opacus.err"

"$PY" - "$OUT" "$EPSILON" <<'PY'
import json, sys
out, target = sys.argv[1], sys.argv[2]
def runs(name):
    return [json.loads(l) for l in open(f"{out}/{name}.jsonl")]
ours, theirs = runs("fl"), runs("opacus")
who = "PyTorch" if target == "none" else "Opacus"
print(f"{'epoch':>5} {'fl test acc':>12} {who + ' test acc':>16} {'fl img/s':>9} {who + ' img/s':>13} {'fl eps':>8} {who + ' eps':>11}")
fmt = lambda e: "-" if e is None else f"{e:.3f}"
pairs = list(zip([r for r in ours if r["event"] == "epoch"], [r for r in theirs if r["event"] == "epoch"]))
for a, b in pairs:
    print(f"{a['epoch']:>5} {100*a['test_accuracy']:>11.2f}% {100*b['test_accuracy']:>15.2f}% "
          f"{a['images_per_sec']:>9.1f} {b['images_per_sec']:>13.1f} {fmt(a.get('epsilon')):>8} {fmt(b.get('epsilon')):>11}")
fa, fb = ours[-1]["test_accuracy"], theirs[-1]["test_accuracy"]
speed_a = sum(a["images_per_sec"] for a, _ in pairs) / len(pairs)
speed_b = sum(b["images_per_sec"] for _, b in pairs) / len(pairs)
print(f"final: fl {100*fa:.2f}%, {who} {100*fb:.2f}%, difference {100*(fa-fb):+.2f} pp; "
      f"mean images/s fl {speed_a:.1f}, {who} {speed_b:.1f}, ratio {speed_a/speed_b:.2f}; "
      f"epsilon fl {fmt(ours[-1].get('epsilon'))}, {who} {fmt(theirs[-1].get('epsilon'))}; model {ours[-1]['model']}")
print(json.dumps({"event": "summary", "epsilon_target": target, "fl_accuracy": fa, "other_accuracy": fb,
                  "fl_images_per_sec": speed_a, "other_images_per_sec": speed_b,
                  "fl_epsilon": ours[-1].get("epsilon"), "other_epsilon": theirs[-1].get("epsilon")}))
PY
