#!/usr/bin/env python3
"""What each node did when, round by round, from `fl simulate --json` output.

    fl simulate --steps 5 --rounds 20 --json ... > run.jsonl
    experiments/timeline.py run.jsonl [--nodes]

Times are seconds from the round's opening: the first adoption of the round before (the
nodes train the round from then on). For each round after the first: when the first node
started training and the last announced its update (training includes waiting for a
training slot: the nodes of one process share the machine's cores), when the aggregator
started and published (its own adoption), when the first and last node adopted, the
recomputations of the round's manifest (made while the next round trains), and the sum of
the nodes' training seconds. The last line is the mean over rounds 2.. . With --nodes, one
line per node and round as well: trained [start, end], adopted, checked.
"""

import json
import statistics
import sys
from collections import defaultdict


def load(path):
    events = []
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        d = json.loads(line)
        if d.get("type") == "node" and "at" in d:
            events.append(d)
    return events


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    per_node = "--nodes" in sys.argv
    if len(args) != 1:
        sys.exit(__doc__)
    events = load(args[0])
    if not events:
        sys.exit("no node events with times (`fl simulate --json` of this version)")
    by_round = defaultdict(lambda: defaultdict(list))
    for e in events:
        if "round" in e:
            by_round[e["round"]][e["event"]].append(e)
    rows = []
    header = (
        f"{'round':>5} {'train from':>10} {'last update':>11} {'aggregating':>11} "
        f"{'published':>9} {'all adopted':>11} {'training s':>10} "
        f"{'recomputed':>10} {'check s':>7}"
    )
    print(header)
    for r in sorted(by_round):
        prev = by_round.get(r - 1, {}).get("adopted")
        if not prev:
            continue
        opened = min(e["at"] for e in prev)
        ev = by_round[r]
        announced = ev.get("announced", [])
        adopted = ev.get("adopted", [])
        if not announced or not adopted:
            continue
        starts = [e["at"] - e["train_seconds"] - opened for e in announced]
        last = max(e["at"] for e in announced) - opened
        aggregating = min((e["at"] for e in ev.get("aggregating", [])), default=None)
        aggregator = adopted[0]["aggregator"]
        published = min(e["at"] for e in adopted) - opened
        all_adopted = max(e["at"] for e in adopted) - opened
        training = sum(e["train_seconds"] for e in announced)
        checks = [e for e in ev.get("checked", []) if e["recomputed"]]
        check_s = max((e["seconds"] for e in checks), default=0.0)
        row = {
            "round": r,
            "train_from": min(starts),
            "last_update": last,
            "aggregating": (aggregating - opened) if aggregating is not None else float("nan"),
            "published": published,
            "all_adopted": all_adopted,
            "training": training,
            "recomputed": len(checks),
            "check_s": check_s,
        }
        rows.append(row)
        print(
            f"{r:>5} {row['train_from']:>10.2f} {last:>11.2f} {row['aggregating']:>11.2f} "
            f"{published:>9.2f} {all_adopted:>11.2f} {training:>10.2f} "
            f"{len(checks):>10} {check_s:>7.2f}"
        )
        if per_node:
            nodes = defaultdict(dict)
            for e in announced:
                nodes[e["node"]]["trained"] = (
                    e["at"] - e["train_seconds"] - opened,
                    e["at"] - opened,
                )
            for e in adopted:
                nodes[e["node"]]["adopted"] = e["at"] - opened
            for e in ev.get("checked", []):
                nodes[e["node"]]["checked"] = (
                    e["at"] - e["seconds"] - opened,
                    e["at"] - opened,
                    e["recomputed"],
                )
            for n in sorted(nodes):
                d = nodes[n]
                t = d.get("trained")
                c = d.get("checked")
                print(
                    f"      node {n:>3}: trained {t[0]:6.2f}-{t[1]:6.2f}" if t else f"      node {n:>3}: no update",
                    f" adopted {d['adopted']:6.2f}" if "adopted" in d else "",
                    (f" checked {c[0]:6.2f}-{c[1]:6.2f}" + (" (recomputed)" if c[2] else " (claims)"))
                    if c
                    else "",
                    " aggregator" if any(
                        e["node"] == n for e in ev.get("aggregating", [])
                    ) else "",
                    sep="",
                )
    rest = [x for x in rows if x["round"] > 1] or rows
    if rest:
        mean = {k: statistics.mean(x[k] for x in rest) for k in rest[0] if k != "round"}
        print(
            f"{'mean':>5} {mean['train_from']:>10.2f} {mean['last_update']:>11.2f} "
            f"{mean['aggregating']:>11.2f} {mean['published']:>9.2f} {mean['all_adopted']:>11.2f} "
            f"{mean['training']:>10.2f} {mean['recomputed']:>10.2f} "
            f"{mean['check_s']:>7.2f}"
        )
        print(
            f"a round takes {mean['published']:.2f} s: its updates are in at {mean['last_update']:.2f} s, "
            f"the manifest {mean['published'] - mean['last_update']:.2f} s later; "
            f"the nodes trained {mean['training']:.2f} s in all"
        )


if __name__ == "__main__":
    main()
