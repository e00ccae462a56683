"""rotate (spectral REML): phenotypes and fixed effects (with PCs if asked) rotated onto the
analysed samples' spectrum (``rotated.npz``). No pass over X.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import InputError
from ...reml import RotatedDesign, rotate
from ...spectrum import Spectrum
from ..outputs import load_rotated, save_rotated
from . import Context, Stage
from .fingerprints import table_inputs


@dataclass(frozen=True)
class Rotated:
    """The rotated design, and the analysed samples' spectrum it was rotated on when this run made
    it (None when loaded: the BLUP then takes the subset itself)."""

    design: RotatedDesign
    analysed_spectrum: Spectrum | None = None


def with_pcs(cfg, spec: Spectrum, Z: np.ndarray, names: list, rows=None) -> tuple[np.ndarray, list]:
    """Z with the top ``covariates.pcs`` eigenvectors appended (zero outside ``rows`` when given)."""
    m = cfg.covariates.pcs
    if not m:
        return Z, names
    if m > spec.k:
        raise InputError(f"covariates.pcs = {m} but the spectrum has only {spec.k} eigenvectors")
    pcs = spec.U[:, :m] if rows is None else np.where(rows[:, None], spec.U[:, :m], 0.0)
    return np.hstack([Z, pcs]), names + [f"PC{i + 1}" for i in range(m)]


def declare(name: str, spectrum: Stage, model: str) -> Stage:
    def body(ctx: Context):
        spec = ctx.value(spectrum)
        d = ctx.inp.design
        analysed = d.analysed
        Z, znames = with_pcs(ctx.cfg, spec, d.Z, list(d.covariate_names))
        sub = spec if analysed.all() else spec.subset(np.flatnonzero(analysed))
        rd = rotate(sub, d.Y[analysed], Z[analysed], phenotype_names=d.phenotype_names,
                    covariate_names=znames, missing=ctx.cfg.phenotypes.missing)
        save_rotated(ctx.out / "rotated.npz", rd)
        return Rotated(rd, sub), {"n_analysed": int(analysed.sum()),
                                  "missing_methods": sorted({g.method for g in rd.groups})}

    return Stage(name=name, outputs=("rotated.npz",), body=body, inputs=table_inputs,
                 upstream=lambda f: (spectrum,), model=model,
                 load=lambda ctx: Rotated(load_rotated(ctx.out / "rotated.npz")),
                 needs_spectrum=lambda cfg: True, warn_reduced=True)
