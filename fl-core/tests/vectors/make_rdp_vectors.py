#!/usr/bin/env python3
"""Reference vectors for fl-core's RDP accountant (src/privacy/accountant.rs).

Generated with Google's dp-accounting, pinned: dp-accounting==0.6.0
(with numpy 2.4.6, scipy 1.17.1, mpmath 1.4.1 on CPython 3.11).

Exact command (from the repository root):
    VENV=$(mktemp -d)/dp   # any directory outside the repository
    python3 -m venv "$VENV"
    "$VENV"/bin/pip install dp-accounting==0.6.0 numpy==2.4.6 \
        scipy==1.17.1 mpmath==1.4.1
    "$VENV"/bin/python fl-core/tests/vectors/make_rdp_vectors.py \
        > fl-core/tests/vectors/rdp_vectors.json

It takes about 40 s (the PLD accountant dominates). absl warnings on stderr that
_compute_log_a_frac "failed to converge" for small fractional orders are expected: the
library then gives that order RDP +inf, and the Rust port must do the same.

Contents:
  * default_orders: rdp_privacy_accountant.DEFAULT_RDP_ORDERS, as the library has it.
  * grid: for q in {1, 0.1, 0.01}, z in {0.5, 1, 2, 5}, T in {1, 10, 100, 1000},
    delta = 1e-5: epsilon (and optimal order) from RdpAccountant() with default orders,
    and epsilon from PLDAccountant() with default discretization, both composing
    SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(z)), T).
  * per_order: one-step RDP from the library's _compute_rdp_poisson_subsampled_gaussian
    at every default order plus a few extra fractional/integer orders, for some (q, z).
  * log_a: the library's _compute_log_a on the cases of its own test against
    numerical integration (test_compute_log_a_equals_mp), with that integral.
  * log_erfc: the library's _log_erfc (scipy log_ndtr) and mpmath's exact log(erfc(x)).
"""

import importlib.metadata
import json
import math
import sys
import time

import dp_accounting
import mpmath
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib

VERSION = importlib.metadata.version("dp-accounting")
DELTA = 1e-5
QS = [1.0, 0.1, 0.01]
ZS = [0.5, 1.0, 2.0, 5.0]
TS = [1, 10, 100, 1000]
PER_ORDER_PAIRS = [
    (0.01, 0.5),
    (0.01, 1.0),
    (0.1, 1.0),
    (0.1, 2.0),
    (0.01, 5.0),
    (0.5, 0.8),
    (0.001, 10.0),
    (1.0, 1.5),
    (0.0, 1.0),
]
EXTRA_ORDERS = [1.05, 1.5, 2.5, 3.7, 7.25, 12.5, 33.3, 100.5, 200.0, 1000.0, 2048.0]
# The library's own test_compute_log_a_equals_mp cases (q, sigma, order).
LOG_A_CASES = [
    (1e-7, 0.1, 1.01), (1e-6, 0.1, 256.0), (1e-5, 0.1, 256.1), (1e-6, 1.0, 27.0),
    (1e-4, 1.0, 1.5), (1e-3, 1.0, 2.0), (0.01, 10.0, 20.0), (0.1, 100.0, 20.5),
    (0.99, 0.1, 256.0), (0.999, 100.0, 256.1),
]
LOG_ERFC_XS = [-30.0, -10.0, -3.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.3, 0.5, 0.7, 0.75,
               1.0, 2.0, 3.5, 5.0, 8.0, 10.0, 15.0, 20.0, 25.0, 26.5, 27.0, 30.0, 50.0,
               100.0, 1000.0, 1e5]


def event(q, z, t):
    return dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)), t)


def finite_or_str(x):
    x = float(x)
    return x if math.isfinite(x) else ("inf" if x > 0 else ("-inf" if x < 0 else "nan"))


def log_a_mp(q, sigma, alpha):
    """log(A_alpha) by numerical integration, as the library's own test does."""
    def a_alpha_fn(x):
        mu0 = mpmath.npdf(x, mu=0, sigma=sigma)
        ratio = (1 - q) + q * mpmath.exp((2 * x - 1) / (2 * sigma**2))
        return mu0 * ratio**alpha
    a = mpmath.quad(a_alpha_fn, (-mpmath.inf, mpmath.inf), maxdegree=8)
    return float(mpmath.log(a)) if a > 0 else float("-inf")


def main():
    mpmath.mp.dps = 60
    orders = list(rdp_lib.DEFAULT_RDP_ORDERS)
    grid = []
    for q in QS:
        for z in ZS:
            for t in TS:
                acc = dp_accounting.rdp.RdpAccountant()
                acc.compose(event(q, z, t))
                eps_rdp, order = acc.get_epsilon_and_optimal_order(DELTA)
                start = time.perf_counter()
                pld = dp_accounting.pld.PLDAccountant()
                pld.compose(event(q, z, t))
                eps_pld = pld.get_epsilon(DELTA)
                pld_s = time.perf_counter() - start
                print(f"q={q} z={z} T={t} rdp={eps_rdp:.6g} pld={eps_pld:.6g} "
                      f"({pld_s:.1f}s)", file=sys.stderr)
                grid.append({
                    "q": q, "z": z, "rounds": t, "delta": DELTA,
                    "epsilon_rdp": finite_or_str(eps_rdp),
                    "optimal_order": float(order),
                    "epsilon_pld": finite_or_str(eps_pld),
                })
    per_order = []
    for q, z in PER_ORDER_PAIRS:
        os_ = orders + EXTRA_ORDERS
        rdp = rdp_lib._compute_rdp_poisson_subsampled_gaussian(q, z, os_)
        per_order.append({"q": q, "z": z, "orders": [float(a) for a in os_],
                          "rdp": [finite_or_str(r) for r in rdp]})
    log_a = []
    with mpmath.workdps(30):
        for q, sigma, alpha in LOG_A_CASES:
            log_a.append({"q": q, "sigma": sigma, "order": alpha,
                          "library": float(rdp_lib._compute_log_a(q, sigma, alpha)),
                          "numerical_integration": log_a_mp(q, sigma, alpha)})
    log_erfc = []
    for x in LOG_ERFC_XS:
        exact = mpmath.log(mpmath.erfc(mpmath.mpf(x)))
        log_erfc.append({"x": x, "library": float(rdp_lib._log_erfc(x)),
                         "exact": float(exact)})
    out = {
        "generator": "fl-core/tests/vectors/make_rdp_vectors.py",
        "dp_accounting_version": VERSION,
        "delta": DELTA,
        "default_orders": [float(a) for a in orders],
        "grid": grid,
        "per_order": per_order,
        "log_a": log_a,
        "log_erfc": log_erfc,
    }
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
