"""ld_scores (several variance components with ``components.ld_bins``): the LD score of every kept
variant in a window (``components.ld_window_kb`` / ``ld_window_variants``, default 200 kb as
GCTA's ``--ld-score-region``), from one windowed pass over the genotypes (:func:`bigmm.ld_scores`);
``ld_scores.tsv`` (variant ID, chromosome, position, LD score; NA for a dropped variant).

One pass over X (each genotype read ``1 + 2w/B`` times for a window reaching w variants beyond a
block of B); about 2·n·p·(2w + 16) flops.
"""

from __future__ import annotations

import logging

import numpy as np

from ...ldscore import ld_scores
from ...store import atomic_write_text
from ..memory import task_memory
from . import Context, Facts, Stage

log = logging.getLogger("bigmm")

OUTPUT = "ld_scores.tsv"
#: the REML models whose plans need this stage (with components.ld_bins)
MODELS = ("components", "components_matrix_free")


def _reach(f: Facts) -> int:
    """The window's reach in variants, for the flops: the variants of the window, or 1 per kb."""
    kb, nv = f.cfg.components.ld_window()
    return int(nv if nv is not None else kb)


def declare(name: str, ingest: Stage, stats: Stage) -> Stage:
    def body(ctx: Context):
        store, std = ctx.value(ingest), ctx.value(stats)
        table = store.variant_table()
        kb, nv = ctx.cfg.components.ld_window()
        # positions only for a window in kb (a window in variants needs no positions: unknown ones
        # such as PLINK's -9 are then fine)
        ld = ld_scores(store.genotypes, std, window_kb=kb, window_variants=nv,
                       positions=table["pos"] if kb is not None else None,
                       chromosomes=table["chrom"], dtype=np.dtype(ctx.cfg.grm.dtype),
                       memory=task_memory(ctx.cfg.cluster))
        lines = ["ID\tCHR\tPOS\tLD_SCORE"] + [
            f"{v}\t{c}\t{p}\t{x:.17g}" if np.isfinite(x) else f"{v}\t{c}\t{p}\tNA"
            for v, c, p, x in zip(table["id"], table["chrom"], table["pos"], ld)]
        atomic_write_text(ctx.out / OUTPUT, "\n".join(lines) + "\n")
        kept = ld[np.isfinite(ld)]
        log.info("LD scores: %d variants, window %s; median %.3g, quartiles %s", kept.size,
                 " and ".join(x for x in (f"{kb:g} kb" if kb else "", f"{nv} variants" if nv else "") if x),
                 np.median(kept) if kept.size else float("nan"),
                 ", ".join(f"{q:.3g}" for q in np.quantile(kept, [0.25, 0.5, 0.75])) if kept.size else "-")
        return ld, {"passes_over_X": 1, "variants": int(kept.size)}

    def load(ctx: Context) -> np.ndarray:
        col = np.genfromtxt(ctx.out / OUTPUT, skip_header=1, usecols=3, dtype=np.float64, missing_values="NA",
                            filling_values=np.nan, ndmin=1)
        return col

    return Stage(name=name, outputs=(OUTPUT,), body=body,
                 inputs=lambda f: {"window": list(f.cfg.components.ld_window()), "dtype": f.cfg.grm.dtype},
                 upstream=lambda f: (stats,), for_models=MODELS,
                 needed=lambda f: f.model in MODELS and f.cfg.components.ld_bins is not None,
                 reads_genotypes=lambda f: True, passes=lambda f, c: 1.0,
                 flops=lambda f, c, k: 2.0 * c.n * c.p * (2 * _reach(f) + 16), load=load)
