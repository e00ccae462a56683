"""Matrix-free REML and its BLUP: Lanczos quadrature on passes over X, no GRM and no spectrum
(``reml.json``, its final state ``reml_state.npz``, and ``blup.tsv``).

At most ``reml.max_steps`` passes (it stops when converged), each of 4·n·p·w flops for a pass of w
vectors; resumable by step (``reml.partial/state.npz``). Its BLUP makes one more pass, SNP effects
another. A spectrum is planned only to deflate the probes or for PCs as covariates.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from ...blup import Blup
from ...errors import InputError
from ...mfreml import blup_matrix_free, fit_matrix_free, restore_matrix_free
from ...passes import least_task_bytes, plan_pass
from ...store import remove_path
from ..memory import matrix_free_width
from ..outputs import StepCheckpoint, save_reml, write_blup
from . import Context, Costs, Facts, Stage
from .blup_files import BLUP_EXTRA_FILES, predict_inputs, write_snp_effect_sizes
from .fingerprints import table_inputs
from .rotate import with_pcs

log = logging.getLogger("bigmm")

MODEL = "matrix_free"


def needs_spectrum(cfg) -> bool:
    """Only to deflate the probes or for PCs as covariates."""
    return cfg.reml.deflate > 0 or cfg.covariates.pcs > 0


def memory(cfg, n: int, method: str, design, variant_chunk: int, mem: int | None) -> tuple[list, object]:
    """Refuse deflation settings no memory could make work; the vectors of the widest pass (its
    first: per missing-value pattern its fixed effects, phenotypes, probes and a ones vector, and
    the deflation vectors for a pattern with missing samples) and the least bytes of its task; and
    a function giving the plan's figures, called once the tasks are known to fit."""
    r = cfg.reml
    if r.deflate >= n:
        raise InputError(f"reml.deflate = {r.deflate} must be below the number of genotyped samples "
                         f"n = {n}; with all eigenpairs use reml.method: spectral on an exact spectrum")
    if r.deflate > 0 and method == "randomized" and r.deflate > cfg.spectrum.rank:
        raise InputError(f"reml.deflate = {r.deflate} exceeds spectrum.rank = {cfg.spectrum.rank}: "
                         f"the deflation vectors are the top eigenpairs of the spectrum; raise "
                         f"spectrum.rank or lower reml.deflate")
    width = None if design is None else matrix_free_width(np.isnan(design.Y), design.Z.shape[1] + cfg.covariates.pcs,
                                                           r.probes, r.deflate)
    itemsize = 4 if r.dtype == "float32" else 8
    task = (f"matrix-free REML: a pass carries {width} vectors (fixed effects, phenotypes and "
            f"{r.probes} probes per missing-value pattern)", least_task_bytes(n, width or 1, variant_chunk, itemsize),
            "; or fit the phenotypes in smaller groups (phenotypes.columns) or with fewer reml.probes")

    def figures() -> dict:
        """Bytes per task of its widest pass, passes at most, the driver's Krylov basis."""
        plan = plan_pass(n, width or 1, [(0, variant_chunk)], mem, 1, itemsize)
        return dict(mf_pass_vectors=width, mf_pass_task_bytes=plan.task_bytes, mf_max_passes=r.max_steps,
                    # the kept [Z, Y] Krylov basis and the probes' last two blocks, float64
                    mf_driver_bytes=8 * n * (width + r.max_steps * max(1, width - r.probes - 1)))

    return [task], figures


def _model(ctx: Context, spectrum: Stage) -> tuple[dict, object]:
    """The fit's inputs (Y with NaN where missing or not analysed, Z with PCs zero outside the
    analysed samples, the deflation pairs, the settings) and the spectrum's top pairs."""
    r, d = ctx.cfg.reml, ctx.inp.design
    spec = ctx.value(spectrum) if ctx.cfg.covariates.pcs else None
    Z, znames = with_pcs(ctx.cfg, spec, d.Z, list(d.covariate_names), rows=d.analysed) if spec is not None \
        else (d.Z, list(d.covariate_names))
    deflate = None
    if r.deflate:
        spec = ctx.value(spectrum)
        deflate = (spec.U[:, :r.deflate], spec.s[:r.deflate])
    return dict(phenotype_names=d.phenotype_names, covariate_names=znames, probes=r.probes, max_steps=r.max_steps,
                tol=r.tol, deflate=deflate, seed=r.seed, grid_size=r.grid_size), Z


def _log_fits(result) -> None:
    for f in result.fits:
        log.info("REML %s (matrix-free): n = %d, h2 = %.4f (SE %.4f, of which Monte Carlo %.4f), "
                 "h2_HE = %.4f (Haseman-Elston moment estimate: a rough cross-check, may fall outside [0, 1]), sigma2_g = %.4g, sigma2_e = %.4g, %d steps, %s (|Δh2| %.1e, |Δℓ| %.1e)%s",
                 f.name, f.n, f.h2, f.h2_se, f.h2_se_mc, f.h2_he, f.sigma2_g, f.sigma2_e, f.lanczos_steps,
                 "converged" if f.converged else "NOT CONVERGED", f.delta_h2, f.delta_logl,
                 f", boundary {f.boundary}" if f.boundary else "")


def declare_reml(name: str, ingest: Stage, stats: Stage, spectrum: Stage) -> Stage:
    def body(ctx: Context):
        partial = ctx.out / "reml.partial"
        args, Z = _model(ctx, spectrum)
        op = ctx.operator(ctx.value(ingest), ctx.value(stats), ctx.cfg.reml.dtype, "matrix-free REML pass")
        result = fit_matrix_free(op, ctx.inp.design.Y, Z, checkpoint=StepCheckpoint(partial / "state.npz"), **args)
        _log_fits(result)
        save_reml(ctx.out / "reml.json", result)
        os.replace(partial / "state.npz", ctx.out / "reml_state.npz")
        remove_path(partial)
        return result, {"phenotypes": len(result.fits), "passes_over_X": result.notes.get("passes_this_run"),
                        "lanczos_steps": result.lanczos_steps, "converged": result.converged}

    def load(ctx: Context):
        """The committed fit, rebuilt from its final state: no pass over X, no Lanczos step."""
        args, Z = _model(ctx, spectrum)
        return restore_matrix_free(StepCheckpoint(ctx.out / "reml_state.npz").load(), ctx.inp.design.Y, Z, **args)

    def flops(f: Facts, c: Costs, k: float) -> float:
        return 4.0 * c.n * c.p * c.memory_plan.get("mf_pass_vectors", 0) * k

    return Stage(name=name, outputs=("reml.json", "reml_state.npz"), body=body, model=MODEL,
                 inputs=lambda f: {"reml": f.cfg.section_fingerprint("reml"), "method": MODEL, **table_inputs(f)},
                 upstream=lambda f: (stats,) + ((spectrum,) if f.needs_spectrum else ()),
                 reads_genotypes=lambda f: True, passes=lambda f, c: float(f.cfg.reml.max_steps), flops=flops,
                 passes_at_most=True, checkpoint="reml.partial", load=load, outcome=True,
                 needs_spectrum=needs_spectrum, memory=memory)


def declare_blup(name: str, reml: Stage, ingest: Stage, stats: Stage) -> Stage:
    def body(ctx: Context):
        """ĝ for every genotyped sample from the fit's Krylov basis (one pass over X) and, if asked,
        SNP effects (one more)."""
        result = ctx.value(reml)
        store, std = ctx.value(ingest), ctx.value(stats)
        op = ctx.operator(store, std, ctx.cfg.reml.dtype)
        g, w = blup_matrix_free(op, result)
        b = Blup(names=list(result.phenotype_names), genetic_values=g, weights=w,
                 sigma2_g=np.array([f.sigma2_g for f in result.fits]), notes={"reml": MODEL})
        write_blup(ctx.out / "blup.tsv", ctx.inp.ids, b.names, b.genetic_values)
        info = {"phenotypes": len(b.names), "passes_over_X": 1}
        if ctx.cfg.predict.snp_effects:
            write_snp_effect_sizes(ctx, op, b, store, std)
            info["passes_over_X"] = 2
        return b, info

    def flops(f: Facts, c: Costs, k: float) -> float:
        return 4.0 * c.n * c.p * c.n_phenotypes + (2.0 * c.n * c.p * c.n_phenotypes if f.cfg.predict.snp_effects else 0.0)

    return Stage(name=name, outputs=("blup.tsv",), body=body, model=MODEL, inputs=predict_inputs,
                 upstream=lambda f: (reml,), needed=lambda f: f.cfg.predict.blup, reads_genotypes=lambda f: True,
                 passes=lambda f, c: 1.0 + float(f.cfg.predict.snp_effects), flops=flops,
                 extra_files=lambda ctx: list(BLUP_EXTRA_FILES), needs_spectrum=needs_spectrum)
