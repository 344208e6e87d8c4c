#!/usr/bin/env bash
# Fetching one CID (a 7 MB model file) from 1 provider against from 4 at once (issue:
# libp2p networking, acceptance 4). Each provider is a separate host: a network namespace
# whose link to a shared bridge sends at most RATE (tc tbf), as a provider's uplink would;
# the fetching host's link is not limited. Each run fetches into a fresh repo and is timed by
# `fl ipfs get`'s own report (node start excluded, dials included). Needs root and iproute2.
#
#   sudo experiments/multi_provider.sh [RUNS] [RATE]      e.g. 5 200mbit
#
# The release `fl` is built if missing (FL_BIN names another). Namespaces are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-5}"
RATE="${2:-200mbit}"
FL="${FL_BIN:-$PWD/target/release/fl}"
[ -x "$FL" ] || cargo build --release -p fl
OUT=$(mktemp -d)
P="flmp$$"
cleanup() {
    kill $(jobs -p) 2>/dev/null || true
    for ns in $(ip netns list | awk '{print $1}' | grep "^$P" || true); do ip netns del "$ns"; done
    rm -rf "$OUT"
}
trap cleanup EXIT

# A bridge in "${P}hub"; host 0 fetches, hosts 1-4 provide.
ip netns add "${P}hub"
ip -n "${P}hub" link add br0 type bridge
ip -n "${P}hub" link set br0 up
for i in 0 1 2 3 4; do
    ns="${P}h$i"
    ip netns add "$ns"
    ip link add eth0 netns "$ns" type veth peer name "vb$i" netns "${P}hub"
    ip -n "${P}hub" link set "vb$i" master br0
    ip -n "${P}hub" link set "vb$i" up
    ip -n "$ns" addr add "10.199.0.$((i + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    if [ "$i" -gt 0 ]; then
        ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$RATE" burst 256kb latency 100ms
    fi
done

head -c 7026632 /dev/urandom > "$OUT/model.bin"
ADDRS=()
for i in 1 2 3 4; do
    FL_REPO="$OUT/p$i" "$FL" ipfs add "$OUT/model.bin" > "$OUT/cid"
    FL_REPO="$OUT/p$i" ip netns exec "${P}h$i" "$FL" node run --no-mdns \
        --listen "/ip4/10.199.0.$((i + 1))/tcp/4101" > "$OUT/p$i.out" 2>/dev/null &
    for _ in $(seq 100); do grep -q "listening on" "$OUT/p$i.out" && break; sleep 0.1; done
    ADDRS+=("$(grep -m1 "listening on" "$OUT/p$i.out" | cut -d' ' -f3)")
done
CID=$(cat "$OUT/cid")

fetch() { # fetch NAME PEER...
    local name=$1 run=$2; shift 2
    local args=()
    for a in "$@"; do args+=(--peer "$a"); done
    FL_REPO="$OUT/c-$name-$run" ip netns exec "${P}h0" "$FL" ipfs get "$CID" -o "$OUT/got" \
        "${args[@]}" --no-mdns --listen /ip4/10.199.0.1/tcp/0 2>&1 \
        | sed -n 's/.* in \([0-9.]*\) s$/\1/p' >> "$OUT/$name.times"
    cmp -s "$OUT/model.bin" "$OUT/got" || { echo "$name: bytes differ" >&2; exit 1; }
    rm -f "$OUT/got"
}
# Alternate the two, so that drift affects both alike; each provider serves in turn alone.
for r in $(seq "$RUNS"); do
    fetch one "$r" "${ADDRS[$(( (r - 1) % 4 ))]}"
    fetch four "$r" "${ADDRS[@]}"
done

python3 - "$OUT" "$RATE" <<'PY'
import statistics, sys
out, rate = sys.argv[1], sys.argv[2]
one = [float(x) for x in open(f"{out}/one.times")]
four = [float(x) for x in open(f"{out}/four.times")]
mb = 7026632 / 1e6
a, b = statistics.median(one), statistics.median(four)
print(f"providers' uplinks: {rate} each")
print(f"1 provider:  median {a*1000:.0f} ms ({mb/a:.1f} MB/s) over {len(one)} runs: {[round(x*1000) for x in one]}")
print(f"4 providers: median {b*1000:.0f} ms ({mb/b:.1f} MB/s) over {len(four)} runs: {[round(x*1000) for x in four]}")
print(f"speedup of 4 providers over 1: {a/b:.2f}x")
PY
