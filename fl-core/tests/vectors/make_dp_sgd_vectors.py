#!/usr/bin/env python3
"""Reference epsilons for DP-SGD accounting (fl-core's `DpSgd::epsilon`, COMMON_ORDERS).

For each (q, z, steps) at delta = 1e-5: epsilon from Opacus's RDP accountant
(`opacus.accountants.RDPAccountant`, its default alphas) and from Google's dp-accounting
(`RdpAccountant()` with its default orders, composing
`SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(z)), steps)`).

Pinned: opacus==1.6.0 (torch==2.15.0), dp-accounting==0.6.0, numpy==2.4.6, scipy==1.17.1.

Exact command (from the repository root):
    VENV=$(mktemp -d)/dp   # any directory outside the repository
    python3 -m venv "$VENV"
    "$VENV"/bin/pip install -r experiments/pytorch/requirements.txt dp-accounting==0.6.0
    "$VENV"/bin/python fl-core/tests/vectors/make_dp_sgd_vectors.py \
        > fl-core/tests/vectors/dp_sgd_vectors.json

The grid: the sampling rates of the runs this project makes (12,000 images at batch 256 and
64, a 1,500-image shard at batch 64) and round numbers, noise multipliers 0.5-5, and 1 to
10,000 steps.
"""

import importlib.metadata
import json
import warnings

import dp_accounting
from dp_accounting import dp_event
from opacus.accountants import RDPAccountant

DELTA = 1e-5
QS = [1 / 47, 1 / 188, 1 / 24, 0.01, 0.1]
ZS = [0.5, 0.8, 1.0, 1.5, 3.0, 5.0]
STEPS = [1, 47, 470, 940, 4700, 10000]


def main():
    warnings.simplefilter("ignore")
    cases = []
    for q in QS:
        for z in ZS:
            for steps in STEPS:
                opacus = RDPAccountant()
                opacus.history = [(z, q, steps)]
                google = dp_accounting.rdp.RdpAccountant()
                google.compose(dp_event.SelfComposedDpEvent(
                    dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)), steps))
                cases.append({
                    "q": q, "z": z, "steps": steps,
                    "opacus": opacus.get_epsilon(DELTA),
                    "dp_accounting": google.get_epsilon(DELTA),
                })
    print(json.dumps({
        "generator": "fl-core/tests/vectors/make_dp_sgd_vectors.py",
        "opacus_version": importlib.metadata.version("opacus"),
        "dp_accounting_version": importlib.metadata.version("dp-accounting"),
        "delta": DELTA,
        "cases": cases,
    }, indent=1))


if __name__ == "__main__":
    main()
