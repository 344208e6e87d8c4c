#!/usr/bin/env bash
# Federated against centralized accuracy at the same total epochs (the main job's comparison,
# issue: the main job and the evaluation, acceptance 1), for probing settings quickly: a
# federation of NODES real nodes (`fl simulate`, IID, 1 local epoch per round) for EPOCHS
# rounds, then `fl baseline` for EPOCHS epochs on the same first IMAGES training images,
# same model and seed. Extra arguments go to `fl simulate` only (a setting to probe);
# CENTRAL="..." gives `fl baseline` its own (default: the main job's batch 32, lr 0.05,
# cosine). STEPS=S makes the federation's rounds S local steps of batch 32 each (the main
# job's `--steps`), as many rounds as make EPOCHS passes over a node's share.
#
#   [NODES=8] [STEPS=S] experiments/accuracy_gap.sh IMAGES EPOCHS [DATA] [-- SIMULATE FLAGS...]
#   e.g. experiments/accuracy_gap.sh 4000 10 ../shared/datasets/cifar10 -- --batch 16
#
# The release `fl` is built if missing (FL_BIN names another). Output: the accuracy after
# every round ("-" for a round whose evaluation never came) and every epoch, then both
# final accuracies and the gap in points. OUT=DIR keeps the JSON lines of both runs.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGES="${1:?IMAGES}"
EPOCHS="${2:?EPOCHS}"
shift 2
DATA=../shared/datasets/cifar10
if [ $# -gt 0 ] && [ "$1" != "--" ]; then DATA="$1"; shift; fi
[ "${1:-}" = "--" ] && shift
FL="${FL_BIN:-$PWD/target/release/fl}"
[ -x "$FL" ] || cargo build --release -p fl
KEEP="${OUT:-}"
DIR="${KEEP:-$(mktemp -d)}"
mkdir -p "$DIR"
[ -z "$KEEP" ] && trap 'rm -rf "$DIR"' EXIT

# The test accuracies of a run's JSON lines: `"KEY":0.123` per line, as percentages, and
# `-` where the value is null.
accuracies() {
    grep -o "\"$1\":[^,}]*" "$2" | cut -d: -f2 |
        awk '{ if ($1 == "null") printf "- "; else printf "%.2f ", 100 * $1 }'
}

NODES="${NODES:-8}"
ROUNDS=("--rounds" "$EPOCHS")
if [ -n "${STEPS:-}" ]; then
    # Plan::in_steps: batches of 32 in a node's share, times the epochs, over the steps.
    PER_EPOCH=$(( ((IMAGES + NODES - 1) / NODES + 31) / 32 ))
    ROUNDS=("--rounds" "$(( (EPOCHS * PER_EPOCH + STEPS - 1) / STEPS ))" "--steps" "$STEPS")
fi
"$FL" simulate --nodes "$NODES" "${ROUNDS[@]}" --images "$IMAGES" --data "$DATA" \
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
    'BEGIN { if (f == "-") printf "final: federated - (no evaluation came), centralized %.2f%%\n", c
             else printf "final: federated %.2f%%, centralized %.2f%%, gap %+.2f points\n", f, c, f - c }'
