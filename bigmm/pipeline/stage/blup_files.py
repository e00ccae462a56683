"""What a BLUP stage writes besides ``blup.tsv``, whichever model made the fit."""

from __future__ import annotations

from ...blup import snp_effects
from ..outputs import write_snp_effects

#: files a BLUP stage may write besides its committed ``blup.tsv`` (removed when it reruns)
BLUP_EXTRA_FILES = ["blup_loo.tsv", "snp_effects.tsv", "snp_effects.zarr"]


def predict_inputs(f) -> dict:
    """A BLUP's fingerprint beyond its REML: the predict settings."""
    return {"predict": f.cfg.section_fingerprint("predict")}


def write_snp_effect_sizes(ctx, op, b, store, std) -> None:
    """β̂ = Xᵀ w for every variant (one pass over X), per standardized genotype and per allele."""
    beta = snp_effects(op, b)
    write_snp_effects(ctx.out, store.variant_table(), std, b.names, beta)
