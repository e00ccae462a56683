#!/usr/bin/env python
"""Benchmark: the driver work of genetic correlations from a matrix-free build, per pair.

Simulates n samples, p variants (allele frequencies U[0.05, 0.5]) and P phenotypes (h² ≈ 0.4,
genetic and residual parts with 3 factors each, intercept and one covariate), fits them with
``bigmm.fit_matrix_free`` (``--probes``), then times ``fit_bivariate_matrix_free`` in this process
with BLAS on one thread, as CPU seconds per pair:

- the pairs of a pattern fitted together (the default driver) on all P(P − 1)/2 pairs;
- the pairs one by one by ``fit_pair`` (the reference the batched driver falls back to) on the
  first ``--reference-pairs`` pairs (its cost per pair does not depend on how many);

each with the LRTs (r_g = 0, |r_g| = 1) and the ML fit (the default), without the LRTs, and with the
LRTs and the "newton" jackknife (after an untimed warm-up of both on 5 pairs); and the largest
difference between the two on the common pairs.

Usage::

    nice .venv/bin/python scripts/bench/bench_rg_driver.py --n 2000 --p 4000 --traits 100
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

import bigmm
import bigmm.mf_bivariate as mfb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--p", type=int, default=4000)
    ap.add_argument("--traits", type=int, default=100)
    ap.add_argument("--probes", type=int, default=30)
    ap.add_argument("--reference-pairs", type=int, default=300, help="pairs fitted one by one (0: none)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    threadpool_limits(1)
    rng = np.random.default_rng(args.seed)
    n, p, T = args.n, args.p, args.traits
    f = rng.uniform(0.05, 0.5, p)
    G = rng.binomial(2, f, size=(n, p)).astype(np.int8)
    std = bigmm.standardization(bigmm.variant_stats(G))
    X = (G - 2 * f) / np.sqrt(2 * f * (1 - f))
    g = X @ (rng.normal(size=(p, 3)) @ rng.normal(size=(3, T))) / np.sqrt(p)
    g /= g.std(0)
    e = rng.normal(size=(n, 3)) @ rng.normal(size=(3, T)) + rng.normal(size=(n, T))
    e /= e.std(0)
    Y = np.sqrt(0.4) * g + np.sqrt(0.6) * e
    Z = np.column_stack([np.ones(n), rng.normal(size=n)])
    t = time.process_time()
    res = bigmm.fit_matrix_free(bigmm.GrmOperator(G, std), Y, Z, probes=args.probes, seed=args.seed)
    M = sum(m.rule.theta.size for m in res.models)
    print(f"n = {n}, p = {p}, {T} phenotypes ({T * (T - 1) // 2} pairs), {args.probes} probes: univariate build "
          f"{time.process_time() - t:.1f} s CPU, {res.lanczos_steps} Lanczos steps, {M} quadrature nodes", flush=True)
    every = [(i, j) for i in range(T) for j in range(i + 1, T)]
    for batched in (True, False):  # warm-up (first calls, allocations), not timed
        mfb._BATCHED = batched
        mfb.fit_bivariate_matrix_free(res, every[:5], jackknife="newton")
    for label, kw in (("LRTs + ML", dict(jackknife=None)), ("no LRT, ML", dict(jackknife=None, lrt=False)),
                      ("LRTs + ML + newton jackknife", dict(jackknife="newton"))):
        out = {}
        for batched, pairs in ((True, every), (False, every[:args.reference_pairs])):
            if not pairs:
                continue
            mfb._BATCHED = batched
            t, w = time.process_time(), time.perf_counter()
            out[batched] = fit = mfb.fit_bivariate_matrix_free(res, pairs, **kw)
            t, w = time.process_time() - t, time.perf_counter() - w
            print(f"{label:30s} {'together' if batched else 'one by one':10s}: {1e3 * t / len(pairs):7.2f} ms CPU per "
                  f"pair ({len(pairs)} pairs, {t:.1f} s CPU, {w:.1f} s wall; "
                  f"{sum(not x.converged for x in fit.fits)} not converged, "
                  f"{sum(bool(x.boundary) for x in fit.fits)} on a boundary)", flush=True)
        mfb._BATCHED = True
        if False in out:
            k = len(out[False].fits)
            keys = ("rg", "rg_se", "sg_a", "ve_b", "logL", "logL_rg0", "logL_rg1", "logL_ml")
            diff = max(abs(getattr(a, q) - getattr(b, q)) / max(1.0, abs(getattr(b, q)))
                       for a, b in zip(out[True].fits[:k], out[False].fits) for q in keys
                       if np.isfinite(getattr(b, q)))
            print(f"{'':30s} largest relative difference over {k} pairs: {diff:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
