"""Matrix-free log-likelihoods and LRTs with several components: passes and Monte Carlo error.

A simulated cohort (independent normal "genotypes", n samples, two components of p_each variants,
h² 0.35 and 0.15, and with ``--null`` a third with no effect), one phenotype, intercept only. For each probe seed:
bigmm.fit_components_matrix_free on a DenseComponentsOperator (passes counted as on the genotype
store), with the ML fit and the per-component LRTs (``--no-lrt``: log det of the REML fit only).
Printed per seed: passes in all and those only the log-likelihoods needed, the stochastic ℓ_R
against the dense ℓ_R at the same θ̂ (slogdet) in units of its reported Monte Carlo SD, the SDs
of ℓ_R, ℓ_ML and the LRTs, and the SD the log det of the REML fit would have without its control
variate (the per-probe quadratures, read from the fit's state file); then the RMS of those z-scores (≈ 1 for a calibrated SD) and, with
``--exact``, bigmm.fit_components' ℓ_R, ℓ_ML and LRTs on the same K_j.

    python scripts/studies/mf_components_logl.py [--n 2000] [--probes 30] [--seeds 4] [--no-lrt] [--exact]
           [--null]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

import bigmm


def cohort(n: int, p_each: int, seed: int = 11, null: bool = False):
    rng = np.random.default_rng(seed)
    h2 = np.array([0.35, 0.15] + ([0.0] if null else []))
    Ks, g = [], np.zeros(n)
    for j in range(h2.size):
        X = rng.normal(size=(n, p_each))
        Ks.append(X @ X.T / p_each)
        g += X @ rng.normal(0, np.sqrt(h2[j] / p_each), p_each)
    return Ks, g + rng.normal(0, np.sqrt(1 - h2.sum()), n)


def dense_logl_reml(Ks, y, theta):
    """ℓ_R(θ) with Z = 1 by slogdet and solves (Harville's form, bigmm's convention)."""
    n = y.size
    Z = np.ones((n, 1))
    V = sum(t * K for t, K in zip(theta[:-1], Ks)) + theta[-1] * np.eye(n)
    ViZ, Viy = np.linalg.solve(V, Z), np.linalg.solve(V, y)
    A = Z.T @ ViZ
    yPy = y @ Viy - (Z.T @ Viy) @ np.linalg.solve(A, Z.T @ Viy)
    return -0.5 * ((n - 1) * np.log(2 * np.pi) + np.linalg.slogdet(V)[1] + np.linalg.slogdet(A)[1] + yPy)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--p-each", type=int, default=600)
    ap.add_argument("--probes", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--no-lrt", action="store_true")
    ap.add_argument("--exact", action="store_true")
    ap.add_argument("--null", action="store_true", help="a third component without effect")
    a = ap.parse_args(argv)
    Ks, y = cohort(a.n, a.p_each, null=a.null)
    op = bigmm.DenseComponentsOperator(Ks)
    kw = dict(ml=False, lrt=False) if a.no_lrt else {}
    print(f"n = {a.n}, {len(Ks)} components, N = {a.probes} probes" + (", no ML fit or per-component LRT" if a.no_lrt else ""))
    z = []
    for s in range(a.seeds):
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            state = os.path.join(tmp, "state.npz")
            r = bigmm.fit_components_matrix_free(op, y, n_probes=a.probes, seed=s, state=state, **kw)
            with np.load(state) as st:
                raw_sd = float(st["ldq0"].std(ddof=1) / np.sqrt(st["ldq0"].size))
        f = r.fits[0]
        theta = np.r_[[c.sigma2 for c in f.components], f.sigma2_e]
        ll = dense_logl_reml(Ks, y, theta)
        z.append((f.logl_reml - ll) / f.logl_reml_se_mc)
        print(f"seed {s}: {time.perf_counter() - t:.1f} s, passes {f.passes} (log-likelihoods only: "
              f"{r.notes['passes_logl']}), converged {f.converged}; logl_reml {f.logl_reml:.3f} (MC SD "
              f"{f.logl_reml_se_mc:.3f}; SD of its log det {2 * f.logl_reml_se_mc:.2f}, without the control "
              f"variate {raw_sd:.2f}), dense at the same θ {ll:.3f}, z = {z[-1]:+.2f}; logl_ml {f.logl_ml:.3f} "
              f"(SD {f.logl_ml_se_mc:.3f}); LRT all {f.lrt_stat:.2f} (SD {f.lrt_stat_se_mc:.2f}); per component "
              + ", ".join(f"{c.name} {c.lrt_stat:.2f} (SD {c.lrt_stat_se_mc:.2f})" for c in f.components))
    print(f"RMS of z over {len(z)} seeds: {np.sqrt(np.mean(np.square(z))):.2f}")
    if a.exact:
        t = time.perf_counter()
        fe = bigmm.fit_components(Ks, y).fits[0]
        print(f"exact fit_components ({time.perf_counter() - t:.0f} s): logl_reml {fe.logl_reml:.3f}, logl_ml "
              f"{fe.logl_ml:.3f}, LRT all {fe.lrt_stat:.2f}, per component "
              + ", ".join(f"{c.name} {c.lrt_stat:.2f}" for c in fe.components))


if __name__ == "__main__":
    main()
