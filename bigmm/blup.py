"""Random-effect predictions: genetic values (BLUP), SNP effects, and scores of new samples.

At the REML estimates, with ``r = y − Z ω̂`` and ``w = V⁻¹ r`` (zero for samples
without a phenotype value: the indicator formulation of DESIGN.md §2 gives
exactly the observed samples' ``V_oo⁻¹ r_o``, padded):

    ĝ = σ²_g K w                    (every genotyped sample, phenotyped or not)
    β̂ = (σ²_g / p) Xᵀ w            (per standardized genotype; X β̂ = ĝ for the exact K)

``w`` and ``K w`` come from the spectrum (with the tail term for a reduced one);
``β̂`` takes one streamed pass over X. Per allele, ``β̂_allele = β̂ · scale`` counts
allele 1 of the variant table; a new sample's score is ``Σ_j x_j β̂_j`` with x
standardized by the training frequencies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .reml import RemlResult, RotatedDesign
from .spectrum import Spectrum

log = logging.getLogger("bigmm")


@dataclass(frozen=True)
class Blup:
    """Predictions for m phenotypes over n samples."""

    names: list
    genetic_values: np.ndarray  # (n, m) ĝ
    weights: np.ndarray  # (n, m) w = V⁻¹ (y − Zω̂), zero where y is missing
    sigma2_g: np.ndarray  # (m,)
    notes: dict = field(default_factory=dict)


def _apply_K(spec: Spectrum, w: np.ndarray) -> np.ndarray:
    """K w from the spectrum: U S Uᵀ w (+ λ̄ (w − U Uᵀ w) for a reduced spectrum)."""
    uw = spec.U.T @ w
    out = spec.U @ (spec.s[:, None] * uw)
    if spec.n_tail:
        out += spec.tail * (w - spec.U @ uw)
    return out


def _group_weights(rot, fit_by_name: dict) -> np.ndarray:
    """w = V⁻¹ r for the phenotypes of one rotated group, in the group's sample space."""
    spec, rows, Y, Z, obs = rot.source
    U = spec.U
    n_g, m = Y.shape
    W = np.zeros((n_g, m))
    miss = np.flatnonzero(~obs)
    E = np.zeros((n_g, miss.size))
    E[miss, np.arange(miss.size)] = 1.0
    Zaug = np.hstack([Z, E])
    Y0 = np.where(np.isnan(Y), 0.0, Y)
    for j, name in enumerate(rot.names):
        f = fit_by_name[name]
        h, s2 = f.h2, f.sigma2_g + f.sigma2_e
        d = h * rot.s + (1.0 - h)
        A = (rot.Zt / d[:, None]).T @ rot.Zt
        b = rot.Zt.T @ (rot.Yt[:, j] / d)
        if rot.n_tail:
            dt = h * rot.lam + (1.0 - h)
            A = A + rot.ZZt / dt
            b = b + rot.Zyt[:, j] / dt
        omega = np.linalg.solve(A, b)
        rt = rot.Yt[:, j] - rot.Zt @ omega
        w = U @ (rt / (s2 * d))
        if rot.n_tail:
            r = Y0[:, j] - Zaug @ omega
            w += (r - U @ rt) / (s2 * dt)
        w[~obs] = 0.0  # exactly zero in theory (indicator columns absorb y_m); clean round-off
        W[:, j] = w
    return W


def genetic_values(spectrum: Spectrum, design: RotatedDesign, result: RemlResult,
                   rows: np.ndarray | None = None, n_total: int | None = None) -> Blup:
    """BLUP of the genetic values of every sample of ``spectrum``.

    Parameters
    ----------
    spectrum : Spectrum
        The spectrum of all samples for which ĝ is wanted (e.g. all genotyped).
    design : RotatedDesign
        From :func:`bigmm.reml.rotate` in this session (it keeps the rotation's
        sources in memory), over the samples ``rows`` of ``spectrum``.
    result : RemlResult
        The fits of the design's phenotypes.
    rows : int array, optional
        Rows of ``spectrum`` the design's samples are (default: all).
    """
    n = spectrum.n
    rows = np.arange(n) if rows is None else np.asarray(rows)
    fits = {f.name: f for f in result.fits}
    m = len(design.phenotype_names)
    W = np.zeros((n, m))
    for rot in design.groups:
        if rot.source is None:
            raise InputError("genetic_values needs a RotatedDesign made by rotate() in this session")
        Wg = _group_weights(rot, fits)
        grows = rows[rot.source[1]]
        for jj, j in enumerate(rot.cols):
            W[grows, j] = Wg[:, jj]
    sg = np.array([fits[nm].sigma2_g for nm in design.phenotype_names])
    g = _apply_K(spectrum, W) * sg
    return Blup(names=list(design.phenotype_names), genetic_values=g, weights=W, sigma2_g=sg,
                notes={"spectrum": spectrum.method})


def _xt_task(G, rows, center, scale, bounds, W, dtype):
    out = []
    Wd = W.astype(dtype, copy=False)
    from .genotypes import standardize_block

    for a, b in bounds:
        g = np.asarray(G[:, a:b])
        if rows is not None:
            g = g[rows]
        X = standardize_block(g, center[a:b], scale[a:b], dtype)
        out.append((a, b, (X.T @ Wd).astype(np.float64)))
    return out


def snp_effects(G, std, blup: Blup, rows: np.ndarray | None = None, dtype=np.float64) -> np.ndarray:
    """β̂ = (σ²_g / p) Xᵀ w per standardized genotype (p x m), in one pass over X.

    Dropped variants get 0. Per allele count of allele 1: ``β̂ * std.scale[:, None]``.
    """
    import dask

    from .tasks import run_tasks, total_threads

    n_all, p = G.shape
    W = blup.weights
    if W.shape[0] != (n_all if rows is None else len(rows)):
        raise InputError("the BLUP weights and the genotype rows disagree")
    chunks = getattr(G, "chunks", None)
    cw = int(chunks[1]) if chunks is not None else 2048
    bounds = [(a, min(p, a + cw)) for a in range(0, p, cw) if std.scale[a:min(p, a + cw)].any()]
    groups = [list(g) for g in np.array_split(np.arange(len(bounds)), max(1, min(len(bounds), 2 * total_threads())))]
    task = dask.delayed(_xt_task, pure=False)
    Wd = dask.delayed(W, pure=True)
    parts = run_tasks([task(G, rows, std.center, std.scale, [bounds[i] for i in grp], Wd, dtype)
                       for grp in groups if grp], "SNP effects: pass over X")
    beta = np.zeros((p, W.shape[1]))
    for part in parts:
        for a, b, block in part:
            beta[a:b] = block
    beta *= blup.sigma2_g[None, :] / std.n_kept
    beta[~std.keep] = 0.0
    return beta


# ---------------------------------------------------------------------------------------
# scoring new samples
# ---------------------------------------------------------------------------------------

_COMPLEMENT = {"A": "T", "T": "A", "C": "G", "G": "C"}


@dataclass(frozen=True)
class AlleleMatch:
    """How the variants of a target cohort line up with the training effects."""

    target_index: np.ndarray  # (q,) target variant column for each used effect
    effect_index: np.ndarray  # (q,) row of the effect table
    flip: np.ndarray  # (q,) bool: the target counts the other allele
    counts: dict


def match_alleles(train: dict, target: dict) -> AlleleMatch:
    """Match variants by ID, then alleles: same counted allele, swapped (flip), or no match.

    Strand-ambiguous variants (A/T, C/G) are dropped: their flips cannot be told
    from a strand swap. Variants whose alleles differ are dropped; training
    variants absent from the target are counted as missing.
    """
    index = {v: i for i, v in enumerate(target["id"])}
    ti, ei, fl = [], [], []
    counts = {"used": 0, "flipped": 0, "missing_in_target": 0, "strand_ambiguous": 0,
              "allele_mismatch": 0}
    for e, vid in enumerate(train["id"]):
        t = index.get(vid)
        if t is None:
            counts["missing_in_target"] += 1
            continue
        a1, a2 = str(train["allele1"][e]).upper(), str(train["allele2"][e]).upper()
        b1, b2 = str(target["allele1"][t]).upper(), str(target["allele2"][t]).upper()
        if _COMPLEMENT.get(a1) == a2:
            counts["strand_ambiguous"] += 1
            continue
        if (a1, a2) == (b1, b2):
            flip = False
        elif (a1, a2) == (b2, b1):
            flip = True
        else:
            counts["allele_mismatch"] += 1
            continue
        ti.append(t)
        ei.append(e)
        fl.append(flip)
        counts["used"] += 1
        counts["flipped"] += int(flip)
    return AlleleMatch(target_index=np.array(ti, dtype=np.int64), effect_index=np.array(ei, dtype=np.int64),
                       flip=np.array(fl, dtype=bool), counts=counts)


def _score_task(G, cols, flip, center, scale, beta):
    g = np.asarray(G[:, cols.min():cols.max() + 1])[:, cols - cols.min()].astype(np.int16)
    miss = g < 0
    g = np.where(flip[None, :], 2 - g, g)
    x = (g - center[None, :]) * scale[None, :]
    x[miss] = 0.0
    return x @ beta


def score(G, match: AlleleMatch, std, beta_std: np.ndarray, variant_block: int = 4096) -> np.ndarray:
    """Scores ``Σ_j x_j β̂_j`` of the samples of a target genotype array (n' x m), streamed.

    ``x`` is the target genotype, oriented to the training's counted allele,
    standardized with the training centre and scale; missing calls count 0
    (the training mean).
    """
    import dask

    from .tasks import run_tasks

    order = np.argsort(match.target_index)
    t = match.target_index[order]
    e = match.effect_index[order]
    f = match.flip[order]
    keep = std.keep[e]
    t, e, f = t[keep], e[keep], f[keep]
    task = dask.delayed(_score_task, pure=False)
    tasks = [task(G, t[i:i + variant_block], f[i:i + variant_block], std.center[e[i:i + variant_block]],
                  std.scale[e[i:i + variant_block]], beta_std[e[i:i + variant_block]])
             for i in range(0, t.size, variant_block)]

    def combine(state, part):
        return part if state is None else state + part

    out = run_tasks(tasks, "scoring: pass over the target genotypes", combine=combine)
    if out is None:
        return np.zeros((G.shape[0], beta_std.shape[1]))
    return out
