#!/usr/bin/env bash
# A round's overhead with N real nodes on loopback (issue: federated rounds, acceptance 6):
# round time minus the slowest node's local training, for the reference CNN on the real
# CIFAR-10 images split into N shards, one local epoch. Each node reports, per round, the
# seconds from opening the round to adopting its manifest and the seconds it trained; the
# round time is the longest of the former, the training the longest of the latter. The
# accuracy is the aggregator's evaluation, published after the manifest.
#
#   [EPOCHS=E] [ENCODING=int8] experiments/round_overhead.sh [NODES] [ROUNDS] [DATA]   e.g. 5 3 ../shared/datasets/cifar10
#
# The release `fl` is built if missing (FL_BIN names another). Output: one line per round and
# the mean overhead over rounds 2.. (round 1 also fetches the data). LOGS=DIR keeps each node's
# events (nI.out) and log (nI.log) there.
set -euo pipefail
cd "$(dirname "$0")/.."
NODES="${1:-5}"
ROUNDS="${2:-3}"
DATA="${3:-../shared/datasets/cifar10}"
FL="${FL_BIN:-$PWD/target/release/fl}"
[ -x "$FL" ] || cargo build --release -p fl
OUT=$(mktemp -d)
[ -n "${LOGS:-}" ] && export RUST_LOG="${RUST_LOG:-info}"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT

export FL_REPO="$OUT/r0"
MANIFEST=$("$FL" data publish --data "$DATA" --clients "$NODES" | tail -1)
TASK=$("$FL" task create --data "$MANIFEST" --rounds "$ROUNDS" --epochs "${EPOCHS:-1}" \
    --min-participants "$NODES" --deadline 3600 --grace 60 --update-encoding "${ENCODING:-f32}")
unset FL_REPO
FL_REPO="$OUT/r0" "$FL" node run --no-mdns --listen /ip4/127.0.0.1/tcp/0 --task "$TASK" \
    --shard 0 --linger 60 > "$OUT/n0.out" 2> "$OUT/n0.log" &
for _ in $(seq 100); do grep -q "listening on" "$OUT/n0.out" && break; sleep 0.1; done
ADDR=$(grep -m1 "listening on" "$OUT/n0.out" | cut -d' ' -f3)
for i in $(seq 1 $((NODES - 1))); do
    FL_REPO="$OUT/r$i" "$FL" node run --no-mdns --listen /ip4/127.0.0.1/tcp/0 --task "$TASK" \
        --shard "$i" --bootstrap "$ADDR" --linger 60 > "$OUT/n$i.out" 2> "$OUT/n$i.log" &
done
wait
[ -n "${LOGS:-}" ] && mkdir -p "$LOGS" && cp "$OUT"/n* "$LOGS"/

python3 - "$OUT" "$NODES" "$ROUNDS" <<'PY'
import glob, json, statistics, sys
out, nodes, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
by_round, accuracy = {}, {}
for path in glob.glob(f"{out}/n*.out"):
    for line in open(path):
        if line.startswith("{"):
            e = json.loads(line)
            if e["event"] == "adopted":
                by_round.setdefault(e["round"], []).append(e)
            if e["event"] == "evaluated":
                accuracy[e["manifest"]] = e["accuracy"]
overheads = []
for r in sorted(by_round):
    es = by_round[r]
    if len(es) != nodes:
        sys.exit(f"round {r}: {len(es)} of {nodes} nodes adopted it")
    if len({e["manifest"] for e in es}) != 1:
        sys.exit(f"round {r}: nodes adopted different manifests")
    total = max(e["seconds"] for e in es)
    train = max(e["train_seconds"] for e in es)
    over = total - train
    if r > 1:
        overheads.append(over / total)
    print(f"round {r}: {total:.1f} s, slowest training {train:.1f} s, overhead {over:.1f} s "
          f"({100 * over / total:.1f}%), test accuracy {accuracy.get(es[0]['manifest'], float('nan')):.4f}")
if overheads:
    print(f"{nodes} nodes: mean overhead over rounds 2-{rounds}: {100 * statistics.mean(overheads):.1f}% of the round")
PY
