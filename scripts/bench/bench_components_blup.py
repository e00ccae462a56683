#!/usr/bin/env python
"""Benchmark: the several-component BLUP (bigmm.blup_components), exact and matrix-free, on the
400 HS1940 mice of tests/data/gemma_vc (5,067 SNPs, components A/B/C by chromosome, pheno1 and
pheno6 with missing values, sex as a covariate).

The fit is bigmm.fit_components on the dense GRMs (its estimates are where both BLUPs are made).
Prints, for the exact path (one Cholesky of V per phenotype) and for the matrix-free path at each
``--cg-tol`` (conjugate gradients at the estimates on a ComponentsOperator, one pass over the
genotypes per step, plus one for the samples without a value): the passes over X, the wall and
CPU seconds (this process, local threaded Dask scheduler) and the largest relative difference
of ĝ and of each û_j from the exact path's.

Usage::

    .venv/bin/python scripts/bench/bench_components_blup.py --cg-tol 1e-5 1e-8
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

import bigmm
from bigmm.io.tables import build_design

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import wall_cpu  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "gemma_vc"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cg-tol", type=float, nargs="+", default=[1e-5, 1e-8])
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = bigmm.ingest_plink(DATA / "cohort", Path(tmp) / "c.zarr")
        std = bigmm.standardization(bigmm.variant_stats(store.to_dask()))
        ids = [str(v) for v in store.variant_table()["id"]]
        ann = Path(tmp) / "ann.txt"
        with open(DATA / "components.tsv") as fh:
            ann.write_text("".join(f"{r['SNP']} {r['component']}\n" for r in csv.DictReader(fh, delimiter="\t")))
        split = bigmm.read_components(ann, ids)
        d = build_design(store.sample_ids(), DATA / "pheno.tsv", ["pheno1", "pheno6"], DATA / "covar.tsv", ["sex"])
        a = d.analysed
        Y = np.where(a[:, None], d.Y, np.nan)
        Z = np.where(a[:, None], d.Z, 0.0)
        grms = bigmm.component_grms(store.genotypes, std, split)
        Ks = [np.asarray(K) for K in grms.K]
        fit = bigmm.fit_components([K[np.ix_(a, a)] for K in Ks], d.Y[a], d.Z[a], component_names=grms.names,
                                   lrt=False, ml=False)
        exact, w, c = wall_cpu(lambda: bigmm.blup_components(Ks, Y, Z, fit))
        print(f"n = {store.n_samples} ({int(a.sum())} analysed), m = {len(grms.names)}, phenotypes "
              f"{', '.join(d.phenotype_names)}; h2 = " + ", ".join(f"{f.h2:.3f}" for f in fit.fits))
        print("| path | cg_tol | passes over X | wall s | CPU s | max rel. diff ĝ | max rel. diff û_j |")
        print("|---|---|---|---|---|---|---|")
        print(f"| exact | - | 0 | {w:.2f} | {c:.2f} | - | - |")
        op = bigmm.ComponentsOperator(store.genotypes, std, split)
        for tol in args.cg_tol:
            mf, w, c = wall_cpu(lambda: bigmm.blup_components(op, Y, Z, fit, cg_tol=tol))
            dg = np.abs(mf.genetic_values - exact.genetic_values).max() / np.abs(exact.genetic_values).max()
            du = max(np.abs(mf.components[j] - exact.components[j]).max() / np.abs(exact.components[j]).max()
                     for j in range(len(grms.names)))
            print(f"| matrix-free | {tol:g} | {mf.notes['passes']} | {w:.2f} | {c:.2f} | {dg:.1e} | {du:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
