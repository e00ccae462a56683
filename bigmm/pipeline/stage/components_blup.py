"""The BLUP of a several-component fit (:func:`bigmm.blup_components`): ``blup.tsv`` with, per
phenotype, the total genetic value ĝ (the columns a single-component BLUP writes), each
component's û_j (``<phenotype>_<component>``) and the residual ê (``<phenotype>_residual``, NA
for a sample without a value).

Exact model: from the component_grms stage's m GRMs, one Cholesky of V over each phenotype's
observed samples (no pass over X); predictions for every sample the GRMs cover (all genotyped
samples, or the analysed ones of precomputed GRMs; NA for the others). Matrix-free model:
conjugate gradients at the fit's estimates on the same operator as its fit, one pass over X per
CG step (stopped at ``components.cg_tol``) and one more when some sample has no value.
"""

from __future__ import annotations

import logging

import numpy as np

from ...component_blup import blup_components
from ..outputs import write_blup
from . import Context, Costs, Facts, Stage
from . import reml_components as exact
from . import reml_components_mf as mf
from .blup_files import BLUP_EXTRA_FILES, predict_inputs
from .rotate import with_pcs

log = logging.getLogger("bigmm")

#: passes over X of the matrix-free BLUP, for the plan's time estimate (not a bound): one CG
#: solve from zero at the fit's estimates to components.cg_tol, plus the pass for the samples
#: without a value; measured (scripts/bench/bench_components_blup.py) on the 400 related mice of
#: tests/data/gemma_vc with 3 components: 24 + 1 passes at cg_tol 1e-5, 36 + 1 at 1e-8
TYPICAL_PASSES = 30


def _phenotypes(ctx: Context, rows: np.ndarray) -> np.ndarray:
    """Y over ``rows`` of the genotyped samples, NaN where missing or not analysed (the fit's)."""
    d = ctx.inp.design
    return np.where(d.analysed[:, None], d.Y, np.nan)[rows]


def _write(ctx: Context, b, rows: np.ndarray, fits) -> dict:
    """blup.tsv over every genotyped sample (NA outside ``rows``), and the log."""
    names, values = b.columns()
    table = np.full((len(ctx.inp.ids), values.shape[1]), np.nan)
    table[rows] = values
    write_blup(ctx.out / "blup.tsv", ctx.inp.ids, names, table)
    for k, f in enumerate(fits):
        log.info("BLUP %s: genetic values of %d samples, %d components (%s)%s", f.name, rows.size,
                 len(b.component_names), ", ".join(map(str, b.component_names)),
                 f"; {b.notes['passes']} passes over X" if "passes" in b.notes else "")
    return {"phenotypes": len(b.names), "components": list(map(str, b.component_names)),
            **({"passes_over_X": b.notes["passes"], "cg_residual": b.notes["cg_residual"]}
               if "passes" in b.notes else {})}


def declare_exact(name: str, reml: Stage, component_grms: Stage, spectrum: Stage) -> Stage:
    def body(ctx: Context):
        """û_j, ĝ and ê of every phenotype from the m dense GRMs (no pass over X)."""
        result = ctx.value(reml)
        grms, rows = ctx.value(component_grms)
        d = ctx.inp.design
        spec = ctx.value(spectrum) if ctx.cfg.covariates.pcs else None
        Z = with_pcs(ctx.cfg, spec, d.Z, list(d.covariate_names))[0] if spec is not None else d.Z
        b = blup_components(list(grms.K), _phenotypes(ctx, rows), Z[rows], result)
        return b, _write(ctx, b, rows, result.fits)

    def flops(f: Facts, c: Costs, k: float) -> float:
        m = c.memory_plan.get("components_m", 1)
        return (c.n ** 3 / 3.0 + 2.0 * m * c.n ** 2) * c.n_phenotypes

    return Stage(name=name, outputs=("blup.tsv",), body=body, model=exact.MODEL, inputs=predict_inputs,
                 upstream=lambda f: (reml,), needed=lambda f: f.cfg.predict.blup, flops=flops,
                 extra_files=lambda ctx: list(BLUP_EXTRA_FILES), needs_spectrum=exact.needs_spectrum)


def declare_matrix_free(name: str, reml: Stage, ingest: Stage, stats: Stage, ld_scores: Stage,
                        spectrum: Stage) -> Stage:
    def body(ctx: Context):
        """û_j, ĝ and ê of every phenotype by CG at the fit's estimates (passes over X)."""
        result = ctx.value(reml)
        d = ctx.inp.design
        spec = ctx.value(spectrum) if ctx.cfg.covariates.pcs else None
        Z = with_pcs(ctx.cfg, spec, d.Z, list(d.covariate_names), rows=d.analysed)[0] if spec is not None else d.Z
        op = mf._operator(ctx, ingest, stats, ld_scores)
        rows = np.arange(len(ctx.inp.ids))
        b = blup_components(op, _phenotypes(ctx, rows), Z, result, cg_tol=ctx.cfg.components.cg_tol)
        return b, _write(ctx, b, rows, result.fits)

    def flops(f: Facts, c: Costs, k: float) -> float:
        # a pass carries each phenotype's c fixed effects and itself (c + 1 vectors; c taken as 2)
        return 4.0 * c.n * c.p * c.n_phenotypes * 3 * k

    return Stage(name=name, outputs=("blup.tsv",), body=body, model=mf.MODEL, inputs=predict_inputs,
                 upstream=lambda f: (reml,), needed=lambda f: f.cfg.predict.blup, reads_genotypes=lambda f: True,
                 passes=lambda f, c: float(TYPICAL_PASSES), flops=flops,
                 extra_files=lambda ctx: list(BLUP_EXTRA_FILES), needs_spectrum=mf.needs_spectrum)
