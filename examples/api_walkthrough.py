"""bigmm's Python API end to end, as a notebook would run it (each "# %%" is a cell).

    python examples/api_walkthrough.py            # n = 1,000 samples, p = 5,000 variants
    python examples/api_walkthrough.py --small    # n = 200, p = 1,000 (what the tests run)
    python examples/api_walkthrough.py --keep     # keep the files it writes (a temporary folder)

Simulate a cohort, ingest it, compute variant statistics, the GRM and its spectrum on your own
Dask cluster (a LocalCluster on 127.0.0.1), fit REML, look at the results as pandas tables and
predict genetic values (BLUP) and SNP effects.
"""

# %%
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from distributed import Client, LocalCluster

import bigmm

small = "--small" in sys.argv
n, p = (200, 1000) if small else (1000, 5000)

if __name__ == "__main__":  # worker processes import this file: the work runs in the parent only
    # the files go to a temporary folder, removed at the end unless --keep
    work = Path(tempfile.mkdtemp(prefix="bigmm-walkthrough-"))
    # %% A cluster of your own (bigmm uses the default client while one is active)
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, memory_limit="1GiB")
    client = Client(cluster)

    # %% Simulate a cohort with known h² (PLINK files and phenotype/covariate tables), ingest it
    cohort = bigmm.simulate(n, p, h2=[0.6, 0.2], seed=3, phenotype_missing=0.1, out_plink=work / "c")
    bigmm.write_tables(cohort, work / "pheno.tsv", work / "covar.tsv")
    store = bigmm.ingest_plink(work / "c", work / "c.zarr", chunks=(128, 512))
    print(store)

    # %% Variant statistics and the standardization (one pass over the genotypes)
    stats = bigmm.variant_stats(store.to_dask())
    std = bigmm.standardization(stats, "gcta", min_maf=0.01, max_missing=0.05)
    print(stats)
    print(std)

    # %% The GRM and its spectrum (or, never forming K: bigmm.randomized_spectrum(bigmm.GrmOperator(...), k))
    K = bigmm.grm(store.genotypes, std)
    spec = bigmm.exact_spectrum(K)
    print(spec)

    # %% Phenotypes and covariates aligned to the genotyped samples (sex is categorical)
    design = bigmm.build_design(store.sample_ids(), work / "pheno.tsv", covar_path=work / "covar.tsv",
                                covar_columns=["age", "sex"], categorical=["sex"])
    print(design)
    rows = np.flatnonzero(design.analysed)

    # %% REML (samples with a missing value of one trait are left out of that trait exactly)
    sub = spec if rows.size == spec.n else spec.subset(rows)
    fit = bigmm.fit_reml(sub, design.Y[rows], design.Z[rows], phenotype_names=design.phenotype_names,
                         covariate_names=design.covariate_names)
    print(fit)
    print("true h2:", cohort.truth["h2"])

    # %% The results as pandas tables: one row per phenotype, and the fixed effects with their SEs
    with pd.option_context("display.width", 120, "display.max_columns", 8):
        print(fit.to_pandas()[["phenotype", "n", "h2", "h2_se", "sigma2_g", "sigma2_e", "lrt_pvalue"]])
        print("fixed effects:")
        print(fit.fixed_effects_table())

    # %% BLUP of every genotyped sample and SNP effects, in one call
    blup = bigmm.predict(fit, spec, rows=rows, rows_spectrum=sub, genotypes=store.genotypes, std=std)
    print("BLUP:", blup)
    g = blup.to_pandas(store.sample_ids())
    print(g.head())
    # accuracy: correlation of ĝ with y over the analysed samples with a value (samples without
    # one get a ĝ too: a prediction from their relatives)
    for j, name in enumerate(blup.names):
        y = design.Y[:, j]
        held_out = np.isnan(y)
        gj = blup.genetic_values[~held_out, j]
        acc = f"{np.corrcoef(gj, y[~held_out])[0, 1]:.3f}" if np.ptp(gj) > 0 else "undefined (h2 = 0: g = 0)"
        print(f"{name}: accuracy r(ĝ, y) = {acc} on {int((~held_out).sum())} samples with a value"
              + (f"; {int(held_out.sum())} samples without one get a prediction too" if held_out.any() else ""))

    client.close()
    cluster.close()
    if "--keep" in sys.argv:
        print(f"the files are kept in {work}")
    else:
        shutil.rmtree(work)
