"""Spectral REML and its BLUP: the model fitted on the rotated design (the eigenvectors of K),
``reml.json`` and ``blup.tsv`` (with the leave-one-out predictions ``blup_loo.tsv``).

No pass over X; SNP effects, if asked, make one.
"""

from __future__ import annotations

import logging

import numpy as np

from ...blup import genetic_values, leave_one_out
from ...reml import fit_rotated
from ..outputs import load_reml, save_reml, write_blup
from . import Context, Costs, Facts, Stage
from .blup_files import BLUP_EXTRA_FILES, predict_inputs, write_snp_effect_sizes

log = logging.getLogger("bigmm")

MODEL = "spectral"


def declare_reml(name: str, rotate: Stage) -> Stage:
    def body(ctx: Context):
        result = fit_rotated(ctx.value(rotate).design, grid_size=ctx.cfg.reml.grid_size)
        for f in result.fits:
            log.info("REML %s: n = %d, h2 = %.4f (SE %.4f), sigma2_g = %.4g, sigma2_e = %.4g%s", f.name,
                     f.n, f.h2, f.h2_se, f.sigma2_g, f.sigma2_e, f", boundary {f.boundary}" if f.boundary else "")
        save_reml(ctx.out / "reml.json", result)
        return result, {"phenotypes": len(result.fits)}

    return Stage(name=name, outputs=("reml.json",), body=body, model=MODEL,
                 inputs=lambda f: {"reml": f.cfg.section_fingerprint("reml")}, upstream=lambda f: (rotate,),
                 load=lambda ctx: load_reml(ctx.out / "reml.json", design=ctx.value(rotate).design),
                 outcome=True, needs_spectrum=lambda cfg: True, warn_reduced=True)


def _leave_one_out(ctx: Context, spec, result, analysed, own) -> None:
    """Each analysed sample predicted from the others at the REML variances (no refit)."""
    ids = ctx.inp.ids
    loo = leave_one_out(spec, result.design, result, rows=analysed, rows_spectrum=own)
    write_blup(ctx.out / "blup_loo.tsv", ids, [f"{nm}_{what}" for nm in loo.names for what in ("pred_loo", "g_loo")],
               np.stack([loo.predictions, loo.genetic_values], axis=2).reshape(len(ids), -1))
    for nm, acc in loo.accuracy().items():
        log.info("BLUP %s: held-out (leave-one-out) accuracy r(y_pred, y) = %.4f, of the genetic part "
                 "%.4f (r(g_hat, g) ~ %.4f), %d samples", nm, acc["loo"], acc["loo_genetic"], acc["gv"], acc["n"])


def declare_blup(name: str, reml: Stage, rotate: Stage, spectrum: Stage, ingest: Stage, stats: Stage) -> Stage:
    def body(ctx: Context):
        """ĝ for every genotyped sample (blup.tsv), leave-one-out predictions and, if asked, SNP
        effects (one pass over X)."""
        result = ctx.value(reml)
        analysed = np.flatnonzero(ctx.inp.design.analysed)
        spec = ctx.value(spectrum)
        own = ctx.value(rotate).analysed_spectrum
        if own is None and analysed.size < spec.n:  # the spectrum the fit was rotated on, made once
            own = spec.subset(analysed)
        b = genetic_values(spec, result.design, result, rows=analysed, rows_spectrum=own)
        write_blup(ctx.out / "blup.tsv", ctx.inp.ids, b.names, b.genetic_values)
        _leave_one_out(ctx, spec, result, analysed, own)
        info = {"phenotypes": len(b.names)}
        if ctx.cfg.predict.snp_effects:
            store, std = ctx.value(ingest), ctx.value(stats)
            write_snp_effect_sizes(ctx, ctx.operator(store, std, ctx.cfg.spectrum.dtype), b, store, std)
            info["passes_over_X"] = 1
        return b, info

    def flops(f: Facts, c: Costs, k: float) -> float:
        return 2.0 * c.n * c.p * c.n_phenotypes if f.cfg.predict.snp_effects else 0.0

    return Stage(name=name, outputs=("blup.tsv",), body=body, model=MODEL, inputs=predict_inputs,
                 upstream=lambda f: (reml,), needed=lambda f: f.cfg.predict.blup,
                 reads_genotypes=lambda f: f.cfg.predict.snp_effects,
                 passes=lambda f, c: float(f.cfg.predict.snp_effects), flops=flops,
                 extra_files=lambda ctx: list(BLUP_EXTRA_FILES), needs_spectrum=lambda cfg: True)
