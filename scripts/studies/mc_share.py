"""The Monte Carlo share of matrix-free REML's SE on a real cohort, against the number of probes.

For one phenotype of a PLINK fileset (column 6 of the .fam, ``NA``/``-9`` missing; intercept only)
and a ``gcta`` GRM over all samples of the fileset, restricted to those with the phenotype: exact
REML once, then matrix-free REML with several probe seeds at each number of probes, in memory
(the operator is the dense K: the numbers of Lanczos steps are those of a run, the seconds are
not). Prints per number of probes the estimates, their SD over seeds, the range of the reported
``h2_se_mc`` and of ``h2_se_mc_ratio = h2_se_mc / h2_se_stat``, and the steps.

    python scripts/studies/mc_share.py --bfile mouse_hs1940 [--probes 30 120] [--seeds 6]

GEMMA's example data (``mouse_hs1940.bed/.bim/.fam``, in GEMMA's ``example/`` folder) is the
related, structured cohort quoted in docs/matrix_free.md.
"""

from __future__ import annotations

import argparse

import numpy as np
from bed_reader import open_bed
from threadpoolctl import threadpool_limits

import bigmm
from bigmm.mfreml import fit_matrix_free
from bigmm.passes import DenseOperator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bfile", required=True, help="PLINK fileset prefix; the phenotype is the .fam's column 6")
    ap.add_argument("--probes", type=int, nargs="+", default=[30, 120])
    ap.add_argument("--seeds", type=int, default=6)
    args = ap.parse_args()
    G = open_bed(f"{args.bfile}.bed").read(dtype="int8")
    G = np.where(G < 0, -1, G).astype(np.int8)
    with open(f"{args.bfile}.fam") as fh:
        col = [ln.split()[5] for ln in fh]
    y = np.array([np.nan if v in ("NA", "-9") else float(v) for v in col])
    a = ~np.isnan(y)
    std = bigmm.standardization(bigmm.variant_stats(G), "gcta")
    K = bigmm.grm(G, std)[np.ix_(a, a)]
    ex = bigmm.fit_reml(bigmm.exact_spectrum(K), y[a]).fits[0]
    print(f"{args.bfile}: n = {int(a.sum())} analysed of {a.size}, p = {std.n_kept}; "
          f"exact REML h2 {ex.h2:.4f} (SE {ex.h2_se:.4f})")
    print("| probes | ĥ² over seeds | SD over seeds | h2_se_mc | h2_se_mc_ratio | SD / h2_se_stat | steps |")
    print("| ---: | --- | ---: | --- | --- | ---: | --- |")
    with threadpool_limits(1):
        for N in args.probes:
            fits = [fit_matrix_free(DenseOperator(K), y[a], probes=N, seed=s).fits[0] for s in range(args.seeds)]
            h = np.array([f.h2 for f in fits])
            mc = np.array([f.h2_se_mc for f in fits])
            ratio = np.array([f.h2_se_mc_ratio for f in fits])
            stat = np.mean([f.h2_se_stat for f in fits])
            steps = [f.lanczos_steps for f in fits]
            print(f"| {N} | {h.min():.4f}–{h.max():.4f} | {h.std(ddof=1):.4f} | {mc.min():.4f}–{mc.max():.4f} | "
                  f"{ratio.min():.3f}–{ratio.max():.3f} | {h.std(ddof=1) / stat:.3f} | {min(steps)}–{max(steps)} |")


if __name__ == "__main__":
    main()
