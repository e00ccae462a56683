"""ingest: PLINK .bed/.bim/.fam into a cohort store (``genotypes.zarr``), the kept samples only.

Reads the .bed once (one pass); with a cohort or VCF Zarr store as input there is no ingest (the
stage is not planned) and its value is that store. Not planned either when nothing reads the
genotypes (precomputed GRMs given with them, :attr:`Facts.genotypes_unread`).
"""

from __future__ import annotations

from ...io.plink import ingest_plink
from ...store import CohortStore, open_store
from . import Context, Facts, Stage
from .fingerprints import genotype_inputs


def inputs(f: Facts) -> dict:
    """The genotype input: the PLINK files (the .bed sampled), chunks and the sample selection;
    for a given store or GRM, what the other stages' fingerprints take from it."""
    return genotype_inputs(f)


def body(ctx: Context):
    store = ingest_plink(ctx.inp.plink, ctx.out / "genotypes.zarr", chunks=ctx.cfg.genotypes.chunks,
                         overwrite=True, samples=ctx.inp.sample_rows, layout=ctx.cfg.genotypes.layout)
    return store, {"n_samples": store.n_samples, "n_variants": store.n_variants, "passes_over_X": 1}


def load(ctx: Context) -> CohortStore:
    """The cohort store: the one ingested here, or the store the config names."""
    if ctx.facts.from_plink:
        return open_store(ctx.out / "genotypes.zarr")
    return ctx.inp.store


def declare(name: str) -> Stage:
    return Stage(name=name, outputs=("genotypes.zarr",), body=body, inputs=inputs, load=load,
                 needed=lambda f: f.from_plink and not f.genotypes_unread, reads_genotypes=lambda f: True,
                 passes=lambda f, c: 1.0, stamped="genotypes.zarr",
                 not_planned="external store")
