"""Matrix-free REML with float32 against float64 products in the passes over X.

Each pass computes ``X (Xᵀ M)`` piece by piece in the chosen precision and accumulates the pieces
in float64 (bigmm.passes). This measures what float32 does to the quadrature: the same cohort,
phenotypes, probes and seed fitted both ways, and the differences in ĥ², ℓ_R and the number of
Lanczos steps set beside the Monte Carlo SD of ĥ² (h2_se_mc) and its statistical SE.

    python scripts/studies/mf_float32.py [--n 4000] [--p 20000] [--phenotypes 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import bigmm
from bigmm.mfreml import fit_matrix_free


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--p", type=int, default=20000)
    ap.add_argument("--phenotypes", type=int, default=20)
    ap.add_argument("--pops", type=int, default=1)
    ap.add_argument("--seed", type=int, default=3)
    a = ap.parse_args()
    h2 = ([0.2, 0.5, 0.8] * a.phenotypes)[:a.phenotypes]
    with tempfile.TemporaryDirectory() as tmp:
        sim = bigmm.simulate(a.n, a.p, h2=h2, seed=a.seed, n_pops=a.pops, fst=0.05 if a.pops > 1 else 0.0,
                             out_zarr=Path(tmp) / "c.zarr")
        G = np.asarray(bigmm.open_store(Path(tmp) / "c.zarr").genotypes[...])
    std = bigmm.standardization(bigmm.variant_stats(G))
    Y = np.column_stack(list(sim.phenotypes.values()))
    fits = {}
    for dtype in ("float64", "float32"):
        t0 = time.perf_counter()
        r = fit_matrix_free(bigmm.GrmOperator(G, std, dtype=dtype), Y, probes=30, seed=1)
        fits[dtype] = (r, time.perf_counter() - t0)
    r64, t64 = fits["float64"]
    r32, t32 = fits["float32"]
    dh = np.array([abs(f.h2 - g.h2) for f, g in zip(r32.fits, r64.fits)])
    dl = np.array([abs(f.logl_reml - g.logl_reml) for f, g in zip(r32.fits, r64.fits)])
    mc = np.array([g.h2_se_mc for g in r64.fits])
    se = np.array([g.h2_se_stat for g in r64.fits])
    print(f"n = {a.n}, p = {std.n_kept}, {a.phenotypes} phenotypes, {a.pops} population(s), 30 probes")
    print(f"steps: float64 {r64.lanczos_steps} ({t64:.1f} s), float32 {r32.lanczos_steps} ({t32:.1f} s)")
    print(f"|Δĥ²| float32 − float64: max {dh.max():.2e}, median {np.median(dh):.2e}")
    print(f"|Δℓ_R|: max {dl.max():.2e}")
    print(f"Monte Carlo SD of ĥ² (float64): median {np.median(mc):.2e}; statistical SE: median {np.median(se):.2e}")
    print(f"max |Δĥ²| / median MC SD: {dh.max() / np.median(mc):.3f}")


if __name__ == "__main__":
    main()
