#!/usr/bin/env bash
# Federated against centralized accuracy at the same total epochs (the main job's comparison,
# issue: the main job and the evaluation, acceptance 1), for probing settings quickly: a
# federation of NODES real nodes (`fl simulate`, IID, 1 local epoch per round) for EPOCHS
# rounds, then `fl baseline` for EPOCHS epochs on the same first IMAGES training images,
# same model and seed. Extra arguments go to `fl simulate` only (a setting to probe);
# CENTRAL="..." gives `fl baseline` its own (default: the main job's batch 32, lr 0.05,
# cosine).
#
#   [NODES=8] experiments/accuracy_gap.sh IMAGES EPOCHS [DATA] [-- SIMULATE FLAGS...]
#   e.g. experiments/accuracy_gap.sh 4000 10 ../shared/datasets/cifar10 -- --batch 16
#
# The release `fl` is built if missing (FL_BIN names another). Output: the accuracy after
# every round and every epoch, then both final accuracies and the gap in points. OUT=DIR
# keeps the JSON lines of both runs.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGES="${1:?IMAGES}"
EPOCHS="${2:?EPOCHS}"
shift 2
DATA=../shared/datasets/cifar10
if [ $# -gt 0 ] && [ "$1" != "--" ]; then DATA="$1"; shift; fi
[ "${1:-}" = "--" ] && shift
FL="${FL_BIN:-$PWD/target/release/fl}"
[ -x "$FL" ] || cargo build --release -p fl-node
KEEP="${OUT:-}"
DIR="${KEEP:-$(mktemp -d)}"
mkdir -p "$DIR"
[ -z "$KEEP" ] && trap 'rm -rf "$DIR"' EXIT

# The test accuracies of a run's JSON lines: `"KEY":0.123` per line, as percentages.
accuracies() { grep -o "\"$1\":[0-9.e-]*" "$2" | cut -d: -f2 | awk '{printf "%.2f ", 100 * $1}'; }

"$FL" simulate --nodes "${NODES:-8}" --rounds "$EPOCHS" --images "$IMAGES" --data "$DATA" \
    --json "$@" 2> "$DIR/federated.log" | grep '"type":"round"' > "$DIR/federated.jsonl"
# shellcheck disable=SC2086 # CENTRAL is a list of flags
"$FL" --repo "$DIR/repo" baseline --data "$DATA" --images "$IMAGES" --epochs "$EPOCHS" \
    ${CENTRAL:---batch 32 --lr 0.05 --schedule cosine} --jsonl "$DIR/centralized.jsonl" > /dev/null
grep '"event":"epoch"' "$DIR/centralized.jsonl" > "$DIR/epochs.jsonl"

fed=$(accuracies accuracy "$DIR/federated.jsonl")
central=$(accuracies test_accuracy "$DIR/epochs.jsonl")
echo "federated, by round:   $fed"
echo "centralized, by epoch: $central"
last() { echo "$1" | awk '{print $NF}'; }
awk -v f="$(last "$fed")" -v c="$(last "$central")" \
    'BEGIN { printf "final: federated %.2f%%, centralized %.2f%%, gap %+.2f points\n", f, c, f - c }'
