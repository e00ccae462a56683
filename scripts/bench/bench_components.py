#!/usr/bin/env python
"""Benchmark: exact AI-REML with several variance components (``bigmm.fit_components``).

A cohort of n samples (random genotypes, p = 2n variants, split into m components of unequal
size, K_j = X_j X_jᵀ / p_j), one phenotype with h² spread over the components, c = 2 fixed
effects. Timed (wall clock, the BLAS threads the environment gives):

    evaluate     one likelihood evaluation (Cholesky of V, its inverse, the traces, the AI
                 matrix): the cost of one iteration
    fit          ``fit_components(..., lrt=False, ml=False)``: the REML fit alone
    fit+tests    ``fit_components(...)`` with the defaults: the REML fit, the ML fit and the m
                 refits for the likelihood-ratio tests

Prints a Markdown table (one row per n) and the peak resident memory of the process.

Usage::

    python scripts/bench/bench_components.py                  # n = 2000, m = 4
    python scripts/bench/bench_components.py --n 1000 2000 --m 4 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np

from bigmm.vcreml import _start, evaluate, fit_components


def cohort(n: int, m: int, rng):
    """GRMs of m groups of variants (sizes 4:3:2:1 ... of p = 2n) and a phenotype."""
    p = 2 * n
    sizes = np.maximum(1, np.round(p * np.arange(m, 0, -1) / (m * (m + 1) / 2))).astype(int)
    Ks, y = [], rng.normal(0, np.sqrt(0.5), n)
    for j, pj in enumerate(sizes):
        f = rng.uniform(0.05, 0.5, pj)
        X = (rng.binomial(2, f, size=(n, pj)) - 2 * f) / np.sqrt(2 * f * (1 - f))
        Ks.append(X @ X.T / pj)
        y += X @ rng.normal(0, np.sqrt(0.5 / m / pj), pj)
    Z = np.column_stack([np.ones(n), rng.normal(size=n)])
    return Ks, y + Z @ np.array([1.0, 0.3]), Z, sizes


def best_of(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[2000])
    ap.add_argument("--m", type=int, default=4, help="number of components")
    ap.add_argument("--repeats", type=int, default=1, help="the best of this many runs is shown")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    threads = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "default"
    print(f"fit_components, m = {args.m} components, c = 2 fixed effects, BLAS threads: {threads}, "
          f"cores: {os.cpu_count()}\n")
    print("| n | evaluate (s) | fit (s) | iterations | fit+tests (s) | total iterations | h² |")
    print("|---|---|---|---|---|---|---|")
    for n in args.n:
        rng = np.random.default_rng(args.seed)
        Ks, y, Z, _ = cohort(n, args.m, rng)
        theta = _start(Ks, float(np.var(y)))
        _, t_eval = best_of(lambda: evaluate(Ks, y, Z, theta), args.repeats)
        res, t_fit = best_of(lambda: fit_components(Ks, y, Z, lrt=False, ml=False), args.repeats)
        full, t_all = best_of(lambda: fit_components(Ks, y, Z), args.repeats)
        f = res.fits[0]
        print(f"| {n} | {t_eval:.2f} | {t_fit:.1f} | {f.iterations} | {t_all:.1f} | "
              f"{f.iterations} + ML + {args.m} refits | {full.fits[0].h2:.3f} |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS: {peak:.0f} MiB (the m GRMs are {args.m * max(args.n) ** 2 * 8 / 2 ** 20:.0f} MiB)")


if __name__ == "__main__":
    main()
