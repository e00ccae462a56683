"""variant_stats: per-variant counts, the filters and the standardization (``variants.zarr``).

One pass over the genotypes.
"""

from __future__ import annotations

import logging

from ...errors import InputError
from ...genotypes import Standardization, standardization, variant_stats
from ...store import file_fingerprint
from ..outputs import load_variants, save_variants
from . import Context, Facts, Stage
from .fingerprints import genotype_inputs

log = logging.getLogger("bigmm")


def variant_filters(v, std: Standardization) -> dict:
    """Each variant filter and selection of the run: its setting (None: off) and the variants it
    dropped (each variant counted under the first that drops it, in this order)."""
    d = std.dropped
    out = {}
    if v.chr is not None:
        out["chr"] = {"setting": v.chr, "dropped": d.get("chr", 0)}
    if v.extract is not None:
        out["extract"] = {"setting": str(v.extract), "dropped": d.get("not_in_extract", 0)}
    if v.exclude is not None:
        out["exclude"] = {"setting": str(v.exclude), "dropped": d.get("in_exclude", 0)}
    out["all_missing"] = {"setting": "always", "dropped": d.get("all_missing", 0)}
    out["zero_variance"] = {"setting": "always (monomorphic)", "dropped": d.get("monomorphic", 0)}
    out["all_heterozygous"] = {"setting": "always (every call heterozygous: zero variance)",
                               "dropped": d.get("all_heterozygous", 0)}
    out["max_missing"] = {"setting": v.max_missing if v.max_missing < 1.0 else None,
                          "dropped": d.get("max_missing", 0)}
    out["min_maf"] = {"setting": v.min_maf if v.min_maf > 0.0 else None, "dropped": d.get("min_maf", 0)}
    return out


def describe_filters(filters: dict) -> str:
    """One line for the log: ``min_maf 0.01: 3 dropped; max_missing off; ...``."""
    return "; ".join(f"{k} off (set variants.{k} to filter)" if f["setting"] is None
                     else f"{k} {f['setting']}: {f['dropped']} dropped" for k, f in filters.items())


def inputs(f: Facts) -> dict:
    """The variant settings and lists; for a given store (no ingest stage), the store too.
    ``rules``: the definitions a committed output was made with (sample_sd over all n,
    all-heterozygous variants dropped; N in the GRM store), so an older output reruns."""
    cfg = f.cfg
    out = {"variants": cfg.section_fingerprint("variants"), "extract": file_fingerprint(cfg.variants.extract),
           "exclude": file_fingerprint(cfg.variants.exclude), "rules": 2}
    if not f.from_plink:
        out["store"] = genotype_inputs(f)
    return out


def declare(name: str, ingest: Stage) -> Stage:
    def body(ctx: Context):
        store = ctx.value(ingest)
        if store.sample_ids() != ctx.inp.ids:
            raise InputError(f"the samples of {store.path} differ from the genotype input")
        stats = variant_stats(store.genotypes)
        v = ctx.cfg.variants
        std = standardization(stats, v.standardize, min_maf=v.min_maf, max_missing=v.max_missing,
                              drop=ctx.inp.variant_drop)
        save_variants(ctx.out / "variants.zarr", stats, std)
        log.info("variant filters: %s", describe_filters(variant_filters(v, std)))
        log.info("variants: %d of %d kept; dropped %s", std.n_kept, store.n_variants,
                 {k: c for k, c in std.dropped.items() if c} or "none")
        return std, {"passes_over_X": 1, "n_kept": std.n_kept, "dropped": std.dropped}

    return Stage(name=name, outputs=("variants.zarr",), body=body, inputs=inputs,
                 upstream=lambda f: (ingest,) if f.from_plink else (),
                 needed=lambda f: not f.given_grm and not f.genotypes_unread, reads_genotypes=lambda f: True, passes=lambda f, c: 1.0,
                 load=lambda ctx: load_variants(ctx.out / "variants.zarr"), stamped="variants.zarr")
