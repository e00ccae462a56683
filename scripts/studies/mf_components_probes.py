"""Matrix-free AI-REML with several components: passes, CG steps and Monte Carlo error per probe count.

A simulated cohort (independent normal "genotypes", n samples, m components of p_each variants
each, true h²_j given below), one phenotype, intercept and one covariate. For each N in --probes and
each probe seed: bigmm.fit_components_matrix_free on a DenseComponentsOperator (the passes are
counted the same as on the genotype store). Printed per N: passes, AI iterations, CG steps per AI
iteration, seconds, the reported Monte Carlo SD / statistical SE of every h²_j and of the total
(mean over seeds), the SD of ĥ²_j over the probe seeds / SE (the empirical Monte Carlo error),
and the difference from the exact AI-REML fit (bigmm.fit_components on the same K_j).

    python scripts/studies/mf_components_probes.py [--n 3000] [--m 3] [--probes 10,30,60] [--seeds 4]
           [--no-control-variates] [--cg-tol 1e-5] [--tol 1e-4] [--no-exact]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

import bigmm
import bigmm.mf_components


def cohort(n: int, m: int, p_each: int, seed: int):
    rng = np.random.default_rng(seed)
    h2 = np.linspace(0.3, 0.0, m) if m > 1 else np.array([0.4])  # the last component has no effect
    Ks, g = [], np.zeros(n)
    for j in range(m):
        X = rng.normal(size=(n, p_each))
        X -= X.mean(axis=0)
        X /= X.std(axis=0)
        Ks.append(X @ X.T / p_each)
        g += X @ rng.normal(0, np.sqrt(h2[j] / p_each), p_each)
    Z = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = g + Z[:, 1] + rng.normal(0, np.sqrt(1 - h2.sum()), n)
    return Ks, y, Z, h2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--m", type=int, default=3)
    ap.add_argument("--p-each", type=int, default=2000)
    ap.add_argument("--probes", default="10,30,60")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-control-variates", action="store_true")
    ap.add_argument("--no-exact", action="store_true")
    ap.add_argument("--cg-tol", type=float, default=bigmm.mf_components.DEFAULT_CG_TOL)
    ap.add_argument("--tol", type=float, default=bigmm.mf_components.DEFAULT_TOL)
    a = ap.parse_args()
    with threadpool_limits(a.threads):
        t = time.perf_counter()
        Ks, y, Z, h2 = cohort(a.n, a.m, a.p_each, 7)
        print(f"cohort n={a.n} m={a.m} p_each={a.p_each} true h2_j={np.round(h2, 3).tolist()} "
              f"({time.perf_counter() - t:.1f} s)")
        op = bigmm.DenseComponentsOperator(Ks)
        exact = None
        if not a.no_exact:
            t = time.perf_counter()
            exact = bigmm.fit_components(Ks, y, Z, lrt=False, ml=False).fits[0]
            print(f"exact AI-REML: h2_j={[round(c.h2, 4) for c in exact.components]} "
                  f"SE={[round(c.h2_se, 4) for c in exact.components]} total {exact.h2:.4f} ({exact.h2_se:.4f}) "
                  f"{time.perf_counter() - t:.1f} s")
        print("N  passes  AI_it  CG/AI  sec   | reported MC SD / SE: h2_j..., total | SD over seeds / SE: h2_j..., "
              "total | max |h2_mf - h2_exact| / SE")
        for N in [int(x) for x in a.probes.split(",")]:
            rows = []
            for s in range(a.seeds):
                t = time.perf_counter()
                f = bigmm.fit_components_matrix_free(op, y, Z, n_probes=N, seed=s, cg_tol=a.cg_tol, tol=a.tol,
                                                     control_variates=not a.no_control_variates).fits[0]
                rows.append((f, time.perf_counter() - t))
            fs = [r[0] for r in rows]
            se = np.array([[c.h2_se for c in f.components] + [f.h2_se] for f in fs]).mean(axis=0)
            mc = np.array([[c.h2_se_mc for c in f.components] + [f.h2_se_mc] for f in fs]).mean(axis=0)
            est = np.array([[c.h2 for c in f.components] + [f.h2] for f in fs])
            sd = est.std(axis=0, ddof=1) if len(fs) > 1 else np.full(est.shape[1], np.nan)
            dev = (np.abs(est - np.array([c.h2 for c in exact.components] + [exact.h2])).max(axis=0) / se
                   if exact is not None else np.full(est.shape[1], np.nan))
            passes = np.mean([f.passes for f in fs])
            it = np.mean([f.iterations for f in fs])
            cg = np.mean([f.cg_iterations / f.iterations for f in fs])
            sec = np.mean([r[1] for r in rows])
            print(f"{N:<3d}{passes:7.1f}{it:7.1f}{cg:7.1f}{sec:6.1f}  | "
                  + " ".join(f"{v:.3f}" for v in mc / se) + " | "
                  + " ".join(f"{v:.3f}" for v in sd / se) + " | " + " ".join(f"{v:.3f}" for v in dev),
                  "" if all(f.converged for f in fs) else "(not all converged)")


if __name__ == "__main__":
    main()
