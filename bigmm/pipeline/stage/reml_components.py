"""Several-component REML: exact AI-REML (:func:`bigmm.fit_components`) of every phenotype on the
m GRMs of the component_grms stage, restricted to the analysed samples (``reml.json`` =
``ComponentsResult.to_dict()``).

No pass over X. Each phenotype needs 1 + 1 (ML) + m (the LRT of each component) fits of ~10 AI
iterations, each a Cholesky and an inverse of V, ~2·n³ flops. Memory: the m GRMs and the fit's
n x n work arrays (:func:`bigmm.pipeline.memory.components_driver_bytes`), checked before any pass.
A spectrum is planned only for PCs as covariates.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from ...vcreml import ComponentsResult, fit_components
from ..outputs import save_reml
from . import Context, Costs, Facts, Stage
from .fingerprints import table_inputs
from .rotate import with_pcs

log = logging.getLogger("bigmm")

MODEL = "components"


def needs_spectrum(cfg) -> bool:
    """Only for PCs as covariates."""
    return cfg.covariates.pcs > 0


def _log_fits(result: ComponentsResult) -> None:
    for f in result.fits:
        log.info("REML %s (%d components): n = %d, h2 = %.4f (SE %.4f), sigma2_e = %.4g, %d iterations, %s",
                 f.name, f.n_components, f.n, f.h2, f.h2_se, f.sigma2_e, f.iterations,
                 "converged" if f.converged else "NOT CONVERGED")
        for c in f.components:
            log.info("REML %s component %s: h2 = %.4f (SE %.4f), share of h2 %.4f, enrichment %.3g (SE %.3g), "
                     "sigma2 = %.4g, LRT p = %.3g%s", f.name, c.name, c.h2, c.h2_se, c.share, c.enrichment,
                     c.enrichment_se, c.sigma2, c.lrt_pvalue, ", held at 0" if c.boundary else "")


def load_result(ctx: Context) -> ComponentsResult:
    """The committed fit (reml.json)."""
    return ComponentsResult.from_dict(json.loads((ctx.out / "reml.json").read_text()))


def declare_reml(name: str, component_grms: Stage, spectrum: Stage) -> Stage:
    def body(ctx: Context):
        grms, rows = ctx.value(component_grms)
        d = ctx.inp.design
        spec = ctx.value(spectrum) if ctx.cfg.covariates.pcs else None
        Z, znames = with_pcs(ctx.cfg, spec, d.Z, list(d.covariate_names)) if spec is not None \
            else (d.Z, list(d.covariate_names))
        analysed = np.flatnonzero(d.analysed)
        at = np.searchsorted(rows, analysed)  # the analysed samples among the GRMs' rows
        whole = at.size == rows.size
        Ks = [np.asarray(K) if whole else np.asarray(K)[np.ix_(at, at)] for K in grms.K]
        result = fit_components(Ks, d.Y[analysed], Z[analysed], component_names=grms.names,
                                phenotype_names=d.phenotype_names, covariate_names=znames,
                                n_variants=grms.n_variants, constrain=ctx.cfg.components.constrain)
        _log_fits(result)
        save_reml(ctx.out / "reml.json", result)
        return result, {"phenotypes": len(result.fits), "components": len(grms.names),
                        "not_converged": result.notes.get("not_converged", [])}

    def flops(f: Facts, c: Costs, k: float) -> float:
        m = c.memory_plan.get("components_m", 1)
        return 10 * 2.0 * c.n ** 3 * (2 + m) * c.n_phenotypes

    return Stage(name=name, outputs=("reml.json",), body=body, model=MODEL,
                 inputs=lambda f: {"reml": f.cfg.section_fingerprint("reml"), "constrain": f.cfg.components.constrain,
                                   "method": MODEL, **table_inputs(f)},
                 upstream=lambda f: (component_grms,) + ((spectrum,) if f.needs_spectrum else ()),
                 flops=flops, outcome=True, needs_spectrum=needs_spectrum,
                 load=load_result)
