"""Several-component REML without any n x n matrix: AI-REML with conjugate-gradient solves on
passes over X (:func:`bigmm.fit_components_matrix_free`), every component GRM applied in the
same pass (:class:`bigmm.ComponentsOperator`); ``reml.json`` = ``ComponentsResult.to_dict()`` and
the fit's last state ``reml_state.npz``.

The split is the component_grms stage's (:func:`bigmm.pipeline.components.full_split`: the
validated file, lists or chromosomes, crossed with the MAF bins and the LD-score bins), refused
here before the first pass when a component is empty or tiny. Passes over X: one for the
Haseman–Elston start and the probes' products, then one per conjugate-gradient step of every AI
iteration (every phenotype, probe and fixed effect in the same pass), typically 40-60; each ``4·n·p·w`` flops for w vectors. Resumable by pass
(``reml.partial/state.npz``). A spectrum is planned only for PCs as covariates. Then the
log-likelihoods (log det V by stochastic Lanczos quadrature, the ML fit, the fits without each
component for their LRTs), all in shared passes: ~70% more passes (math.md §13).
"""

from __future__ import annotations

import os

import numpy as np

from ...component_passes import ComponentsOperator
from ...mf_components import fit_components_matrix_free
from ...store import remove_path
from ..components import full_split
from ..memory import task_memory
from ..outputs import save_reml
from . import Context, Costs, Facts, Stage
from .fingerprints import table_inputs
from .reml_components import _log_fits, load_result, needs_spectrum
from .rotate import with_pcs

MODEL = "components_matrix_free"
#: passes over X a fit typically makes (measured 39-55 at n = 3,000 with 3 components, from the
#: Haseman-Elston start, then ~70% more for the log-likelihoods and LRTs: 80-81 in all at
#: n = 2,000 with 2 components; docs/matrix_free.md): the plan's estimate, not a bound (the solver
#: stops when converged, after at most components.max_iter AI iterations)
TYPICAL_PASSES = 90


def _operator(ctx: Context, ingest: Stage, stats: Stage, ld_scores: Stage) -> ComponentsOperator:
    """Every component GRM of the run's split over all genotyped samples, one pass per apply."""
    cc = ctx.cfg.components
    store, std = ctx.value(ingest), ctx.value(stats)
    ld = ctx.value(ld_scores) if cc.ld_bins is not None else None
    split = full_split(cc, ctx.inp.components, std, ld)
    split = split.check(std.keep, cc.min_variants)  # before the first pass: tiny bins refused by name
    return ComponentsOperator(store.genotypes, std, split, dtype=np.dtype(ctx.cfg.reml.dtype),
                              memory=task_memory(ctx.cfg.cluster), label="matrix-free components pass")


def declare_reml(name: str, ingest: Stage, stats: Stage, ld_scores: Stage, spectrum: Stage) -> Stage:
    def body(ctx: Context):
        r, cc, d = ctx.cfg.reml, ctx.cfg.components, ctx.inp.design
        spec = ctx.value(spectrum) if ctx.cfg.covariates.pcs else None
        Z, znames = with_pcs(ctx.cfg, spec, d.Z, list(d.covariate_names), rows=d.analysed) if spec is not None \
            else (d.Z, list(d.covariate_names))
        op = _operator(ctx, ingest, stats, ld_scores)
        partial = ctx.out / "reml.partial"
        partial.mkdir(exist_ok=True)
        result = fit_components_matrix_free(
            op, d.Y, Z, phenotype_names=d.phenotype_names, covariate_names=znames, n_probes=r.probes,
            seed=r.seed, constrain=cc.constrain, tol=cc.tol, cg_tol=cc.cg_tol, max_iter=cc.max_iter,
            state=partial / "state.npz")
        _log_fits(result)
        save_reml(ctx.out / "reml.json", result)
        os.replace(partial / "state.npz", ctx.out / "reml_state.npz")
        remove_path(partial)
        return result, {"phenotypes": len(result.fits), "components": list(op.names),
                        "passes_over_X": op.passes, "not_converged": result.notes.get("not_converged", [])}

    def flops(f: Facts, c: Costs, k: float) -> float:
        # a pass carries per phenotype its fixed effects, itself, the probes and the m + 1 AI vectors
        return 4.0 * c.n * c.p * c.n_phenotypes * (f.cfg.reml.probes + 4) * k

    return Stage(name=name, outputs=("reml.json", "reml_state.npz"), body=body, model=MODEL,
                 inputs=lambda f: {"reml": f.cfg.section_fingerprint("reml"),
                                   "components": f.cfg.section_fingerprint("components"), "method": MODEL,
                                   **table_inputs(f)},
                 upstream=lambda f: (stats,) + ((ld_scores,) if f.cfg.components.ld_bins is not None else ())
                 + ((spectrum,) if f.needs_spectrum else ()),
                 reads_genotypes=lambda f: True, passes=lambda f, c: float(TYPICAL_PASSES),
                 flops=flops, checkpoint="reml.partial", outcome=True,
                 needs_spectrum=needs_spectrum, load=load_result)
