"""spectrum: the eigenpairs of K over all genotyped samples (``spectrum.zarr``, ``eigenvalues.tsv``,
``pcs.tsv``).

Exact: LAPACK's eigendecomposition of the committed GRM (no pass over X; about 5n³ flops), or of a
given GRM over the analysed samples. Randomized: its power iterations over X (4·n·p·l flops per
pass), checkpointed per pass (``spectrum.partial``).
"""

from __future__ import annotations

import logging

import numpy as np

from ...spectrum import RITZ_CONVERGED, Spectrum, exact_spectrum, randomized_spectrum, unconverged_pcs
from ...store import remove_path
from ..outputs import PassCheckpoint, load_spectrum, save_spectrum, write_spectrum_tables
from . import Context, Costs, Facts, Stage
from .fingerprints import genotype_inputs

log = logging.getLogger("bigmm")

#: a reduced spectrum whose top k eigenvalues hold less than this share of tr K is warned about:
#: spectral REML on it learns h² from the top k directions only (unbiased, but with a far larger
#: SE: efficiency 2-20% at k = 50-200, n = 5,000; docs/lowrank.md)
MIN_SHARE_TRACE_K = 0.5


def n_pcs_written(cfg, spec: Spectrum) -> int:
    """PCs in pcs.tsv (and the report's PCA files): the PCs used as covariates, at least 20."""
    return min(max(cfg.covariates.pcs, 20), spec.k)


def inputs(f: Facts) -> dict:
    """The method and, for a randomized spectrum, its settings; for a given GRM, its files (there
    is no X: the spectrum is of the GRM files over the analysed samples)."""
    sc = f.cfg.spectrum
    spec = {"method": f.method}
    if f.method == "randomized":
        spec.update(rank=sc.rank, oversample=sc.oversample, power_iters=sc.power_iters, seed=sc.seed,
                    probes=sc.probes, dtype=sc.dtype, algorithm=sc.algorithm)
    if f.given_grm:
        spec["grm_input"] = genotype_inputs(f)
    return spec


def warn_not_psd(grm_bin, spec: Spectrum) -> None:
    """A given GRM with eigenvalues negative beyond round-off: how many, how negative, clipped."""
    d = spec.diagnostics
    m = d.get("negative_eigenvalues", 0)
    if m:
        smin = d["min_eigenvalue_before_clip"]
        log.warning("genotypes.grm %s: K (over the %d analysed samples) is not positive semi-definite: "
                    "%d of its %d eigenvalues are negative beyond the round-off of its values, the most "
                    "negative %.4g (%.3g%% of the largest, %.4g); they were set to 0, i.e. REML uses the "
                    "nearest positive semi-definite matrix to K (as GCTA's --reml-bendV bends V). A GRM "
                    "X Xᵀ/p has no negative eigenvalues: one made with per-pair missing-call counts, "
                    "or edited, can; check how it was made", grm_bin, spec.n, m, spec.n, smin,
                    100 * smin / spec.s[0], spec.s[0])


def warn_reduced(ctx: Context, spec: Spectrum) -> None:
    """What a reduced spectrum leaves out, and which of its PCs are not converged."""
    d = spec.diagnostics
    share, share2 = d.get("share_trace_K"), d.get("share_trace_K2")
    log.info("spectrum: the top k = %d eigenvalues capture %.1f%% of tr K and %.1f%% of tr K² "
             "(tr K² estimated with %d probes, Monte Carlo SE %.2g)", spec.k, 100 * share,
             100 * share2, d.get("probes", 0), d.get("trace_K2_se", float("nan")))
    if share is not None and share < MIN_SHARE_TRACE_K and ctx.facts.warn_reduced:
        log.warning("spectrum: the top k = %d eigenvalues capture only %.0f%% of tr K. REML on a "
                    "reduced spectrum gives the other n − k directions (%.0f%% of tr K) one shared "
                    "eigenvalue, so their structure cannot be told from noise: h² stays unbiased "
                    "(the shared eigenvalue keeps their total) but is learnt from the top k "
                    "directions only, and its SE is several times the exact one (docs/lowrank.md); "
                    "use reml.method: matrix_free (REML without a spectrum, as efficient as exact) "
                    "or spectrum.method: exact, or a larger spectrum.rank",
                    spec.k, 100 * share, 100 * (1 - share))
    m = n_pcs_written(ctx.cfg, spec)
    bad = unconverged_pcs(spec, m)
    if bad:
        res = spec.diagnostics["ritz_residuals"]
        log.warning("spectrum: %d of the %d PCs written (pcs.tsv) are not converged (relative Ritz "
                    "residual ‖Kv − λv‖/λ above %g): %s; their eigenvalues and PCs are approximate "
                    "(eigenvalues.tsv lists each residual); raise spectrum.power_iters or "
                    "oversample, or use spectrum.method: exact", len(bad), m, RITZ_CONVERGED,
                    ", ".join(f"PC{i} ({res[i - 1]:.1e})" for i in bad[:10])
                    + (f" and {len(bad) - 10} more" if len(bad) > 10 else ""))


def _randomized(ctx: Context, me: Stage, ingest: Stage, stats: Stage):
    """The randomized spectrum over X, resumable per pass."""
    sc = ctx.cfg.spectrum
    ck = PassCheckpoint(ctx.out / "spectrum.partial", ctx.fingerprint(me))
    spec = randomized_spectrum(ctx.operator(ctx.value(ingest), ctx.value(stats), sc.dtype), sc.rank,
                               oversample=sc.oversample, power_iters=sc.power_iters, seed=sc.seed,
                               n_probes=sc.probes, checkpoint=ck, algorithm=sc.algorithm)
    d = spec.diagnostics
    log.info("spectrum: randomized, k = %d, l = %d, %d passes over X, max Ritz residual %.2e, "
             "||U'U - I|| = %.1e", spec.k, spec.k + d["oversample"], d["passes_over_X"],
             d["max_ritz_residual"], d["orthonormality_error"])
    warn_reduced(ctx, spec)
    return spec, {"passes_over_X": d["passes_over_X"]}


def flops(f: Facts, c: Costs, k: float) -> float:
    """5n³ for an exact spectrum (LAPACK's divide and conquer with vectors); 4·n·p·l per pass
    (X (Xᵀ V) with l vectors) for a randomized one."""
    return 5.0 * c.n ** 3 if f.method == "exact" else 4.0 * c.n * c.p * c.memory_plan.get("pass_vectors", 0) * k


def declare(name: str, ingest: Stage, stats: Stage, grm: Stage) -> Stage:
    def body(ctx: Context):
        inp = ctx.inp
        if inp.grm is not None:  # a given GRM, read once by the validator, over the analysed samples
            spec = exact_spectrum(inp.grm_K, round_off=float(np.finfo(np.dtype(inp.grm.dtype)).eps))
            info = {"passes_over_X": 0, "grm_input": str(inp.grm.bin)}
            warn_not_psd(inp.grm.bin, spec)
        elif ctx.facts.method == "exact":
            spec = exact_spectrum(np.asarray(ctx.value(grm)["K"][...]))
            info = {"passes_over_X": 0}
        else:
            spec, info = _randomized(ctx, ctx.stages[name], ingest, stats)
        save_spectrum(ctx.out / "spectrum.zarr", spec)
        write_spectrum_tables(ctx.out, spec, inp.ids, n_pcs_written(ctx.cfg, spec))
        remove_path(ctx.out / "spectrum.partial")
        log.info("spectrum: %s, n = %d, k = %d, numerical rank %d, top eigenvalue %.4g", spec.method,
                 spec.n, spec.k, spec.rank, spec.s[0])
        return spec, info

    return Stage(name=name, outputs=("spectrum.zarr", "eigenvalues.tsv", "pcs.tsv"), body=body, inputs=inputs,
                 upstream=lambda f: () if f.given_grm else (stats,) + ((grm,) if f.method == "exact" else ()),
                 needed=lambda f: f.needs_spectrum, reads_genotypes=lambda f: not f.given_grm,
                 passes=lambda f, c: float(c.memory_plan.get("passes_over_X", 0)) if f.method == "randomized" else 0.0,
                 flops=flops, checkpoint="spectrum.partial",
                 load=lambda ctx: load_spectrum(ctx.out / "spectrum.zarr"), stamped="spectrum.zarr")
