"""rg: genetic correlations, a bivariate REML fit of each pair of phenotypes asked for by
``rg.pairs`` (``rg.tsv``, ``rg.json`` and GCTA's bivariate table per pair, ``rg/<a>.<b>.hsq``).

One declaration per single-component model, after its ``reml``; none for the several-component
models (``rg.pairs`` given explicitly is refused at validation there, ``auto`` plans nothing):

- spectral: :func:`bigmm.fit_bivariate` on the analysed samples' spectrum the rotate stage used
  (made once in a run that rotates; when rotate was committed before, the exact spectrum is
  restricted to the analysed samples again), ``rg.samples`` (intersection, or GCTA's union on
  an exact spectrum). The phenotypes and covariates are rotated again for the pairs
  (O(n k (c + m)), no pass over X): the library takes a spectrum, not a rotation;
- matrix_free: :func:`bigmm.fit_bivariate_matrix_free` on the committed REML fit (restored from
  ``reml_state.npz`` with each missing-value pattern's quadrature model): no pass over X for
  pairs that share their missing values. Pairs that do not are fitted on their common samples
  from one more matrix-free build shared by all of them (at most ``reml.max_steps`` passes over
  X, on the run's cluster when it is up, else on the driver's threads; its state is saved after
  every Lanczos step in ``rg.partial/`` and an interrupted run resumes it), or refused at
  validation with ``rg.different_missing: refuse``.

The fingerprint covers the rg section and the REML fit upstream: changing ``rg`` reruns this
stage and the report only.
"""

from __future__ import annotations

import logging

import numpy as np

from ...bivariate import BivariateResult, fit_bivariate
from ...mf_bivariate import BivariateMatrixFreeResult, fit_bivariate_matrix_free
from ..config_rg import different_missing, rg_pairs
from ...store import remove_path
from ..outputs import StepCheckpoint, load_rg, save_rg
from ..report import hsq_file_names
from . import Context, Stage
from . import reml_matrix_free as mf
from . import reml_spectral as spectral
from .rotate import with_pcs

log = logging.getLogger("bigmm")

#: the common-samples build's state after each Lanczos step (resumed by a rerun of the same inputs)
PARTIAL = "rg.partial"

#: the CLI and the log list the pairs one per line up to this many; above, the count and the largest |r_g|
SHOWN_PAIRS = 10


def pairs_of(ctx: Context) -> list[tuple[str, str]]:
    """The run's pairs (checked by the validator before any stage)."""
    return rg_pairs(ctx.cfg.rg, list(ctx.inp.design.phenotype_names), ctx.facts.model)


def hsq_names(pairs) -> dict:
    """``rg/`` file of each pair: ``<a>.<b>.hsq``, made safe as the phenotypes' .hsq names are."""
    files = hsq_file_names(f"{a}.{b}" for a, b in pairs)
    return {(a, b): files[f"{a}.{b}"] for a, b in pairs}


def _extra_files(ctx: Context) -> list[str]:
    return [f"rg/{f}" for f in hsq_names(pairs_of(ctx)).values()]


def _commit(ctx: Context, res, pairs) -> tuple:
    """Write the outputs, log the pairs; the value and what run.json records."""
    save_rg(ctx.out, res, hsq_names(pairs))
    fits = sorted(res.fits, key=lambda f: -abs(f.rg) if np.isfinite(f.rg) else 0.0)
    for f in fits[:SHOWN_PAIRS]:
        log.info("rg %s x %s: n = %d (%d left out), r_g = %.4f (SE %.4f), r_e = %.4f, h2 = %.4f, %.4f, "
                 "p(r_g = 0) = %.3g%s", f.trait_a, f.trait_b, f.n, f.n_left_out, f.rg, f.rg_se, f.re, f.h2_a, f.h2_b,
                 f.p_rg0, f", {f.boundary}" if f.boundary else "")
    if len(fits) > SHOWN_PAIRS:
        log.info("rg: %d more pairs in rg.tsv", len(fits) - SHOWN_PAIRS)
    info = {"pairs": len(res.fits), "not_converged": sum(not f.converged for f in res.fits)}
    if isinstance(res, BivariateMatrixFreeResult):
        info.update(passes_over_X=res.extra_passes, driver_seconds=res.seconds)
    return res, info


def _inputs(f) -> dict:
    return {"rg": f.cfg.section_fingerprint("rg")}


def _load(ctx: Context):
    return load_rg(ctx.out / "rg.json")


def _needed(f) -> bool:
    return f.cfg.rg.pairs != "none"


#: bigmm status lists rg (planned, or "not needed") for the single-component models only
MODELS = (spectral.MODEL, mf.MODEL)


def declare_spectral(name: str, reml: Stage, rotate: Stage, spectrum: Stage) -> Stage:
    def body(ctx: Context):
        """Every pair on the spectrum of the analysed samples (no pass over X)."""
        d, r = ctx.inp.design, ctx.cfg.rg
        pairs = pairs_of(ctx)
        if not pairs:
            return _commit(ctx, BivariateResult(fits=(), method="spectral"), pairs)
        spec = ctx.value(spectrum)
        own = ctx.value(rotate).analysed_spectrum
        if own is None:  # rotate was committed before: the subset again (as the BLUP does)
            own = spec if d.analysed.all() else spec.subset(np.flatnonzero(d.analysed))
        Z, znames = with_pcs(ctx.cfg, spec, d.Z, list(d.covariate_names))
        res = fit_bivariate(own, d.Y[d.analysed], Z[d.analysed], phenotype_names=d.phenotype_names,
                            covariate_names=znames, pairs=pairs, constrain=r.constrain, lrt=r.lrt,
                            samples=r.samples)
        return _commit(ctx, res, pairs)

    return Stage(name=name, outputs=("rg.tsv", "rg.json"), body=body, model=spectral.MODEL, inputs=_inputs,
                 upstream=lambda f: (reml,), needed=_needed, load=_load, extra_files=_extra_files,
                 needs_spectrum=lambda cfg: True, for_models=MODELS)


def declare_matrix_free(name: str, reml: Stage, ingest: Stage, stats: Stage, spectrum: Stage) -> Stage:
    def body(ctx: Context):
        """Every pair from the REML fit's quadrature models (no pass over X), pairs with different
        missing values from one more build on their common samples."""
        d, r = ctx.inp.design, ctx.cfg.rg
        pairs = pairs_of(ctx)
        if not pairs:
            return _commit(ctx, BivariateMatrixFreeResult(fits=(), method="matrix-free"), pairs)
        extra = {}
        crossing = different_missing(d.Y, d.phenotype_names, pairs)
        if crossing and r.different_missing == "fit":
            log.info("rg: %d pair(s) with different missing values (e.g. %s x %s): one more matrix-free build "
                     "on their common samples (passes over X)", len(crossing), *crossing[0])
            args, Z = mf._model(ctx, spectrum)
            op = ctx.operator(ctx.value(ingest), ctx.value(stats), ctx.cfg.reml.dtype, "rg common-samples pass")
            extra = dict(op=op, Y=d.Y, Z=Z, deflate=args["deflate"],
                         checkpoint=StepCheckpoint(ctx.out / PARTIAL / "state.npz"))
        res = fit_bivariate_matrix_free(ctx.value(reml), pairs, constrain=r.constrain, lrt=r.lrt, **extra)
        done = _commit(ctx, res, pairs)
        remove_path(ctx.out / PARTIAL)
        return done

    return Stage(name=name, outputs=("rg.tsv", "rg.json"), body=body, model=mf.MODEL, inputs=_inputs,
                 upstream=lambda f: (reml,), needed=_needed, load=_load, extra_files=_extra_files,
                 needs_spectrum=mf.needs_spectrum, for_models=MODELS, checkpoint=PARTIAL)
