"""What ``report.html`` shows besides ``results.json``: :class:`ReportData`, the relatedness
summary of a saved GRM, the legend groups of the PC plots, and Vp with its SE (also in the .hsq
files). Nothing here takes a pass over the genotypes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def vp_and_se(fit: dict) -> tuple[float, float]:
    """Vp = σ²_g + σ²_e and its SE from the variances' covariance (one phenotype's dict)."""
    def val(key):  # JSON null (NaN, ±inf) as NaN, in float64 arithmetic: no OverflowError
        v = fit.get(key)
        return np.float64("nan") if v is None else np.float64(v)

    with np.errstate(over="ignore", invalid="ignore"):
        vp = val("sigma2_g") + val("sigma2_e")
        var_vp = val("sigma2_g_se") ** 2 + val("sigma2_e_se") ** 2 + 2 * val("sigma2_g_sigma2_e_cov")
        se_vp = float(np.sqrt(var_vp)) if var_vp > 0 else float("nan")
    return float(vp), se_vp


def is_components(fits: list) -> bool:
    """The fits (``reml.json``'s ``phenotypes``) are several-component fits
    (:meth:`bigmm.ComponentsResult.to_dict`): each carries a ``components`` list."""
    return bool(fits) and all(isinstance(f.get("components"), list) for f in fits)


#: GRM entries ≈ 2 × kinship: KING's kinship cut-offs (0.354, 0.177, 0.0884, 0.0442) doubled, applied
#: to the normalised relatedness K_ij / sqrt(K_ii K_jj) (1 for a duplicate, whatever the inbreeding)
RELATEDNESS_CLASSES = ((0.707, "duplicate or MZ twin"), (0.354, "1st degree"), (0.177, "2nd degree"),
                       (0.088, "3rd degree"))
#: the largest off-diagonal pairs of K listed in the report
TOP_PAIRS = 20
#: relatedness_summary works on tiles of at most TILE x TILE entries of a band it has read
TILE = 1024


@dataclass
class ReportData:
    """What the report shows besides ``results.json``, from outputs the run already has (nothing
    here takes a pass over the genotypes). Every field is optional."""

    #: phenotype name -> values of the analysed samples (NaN missing)
    phenotypes: dict = field(default_factory=dict)
    #: (column name, label per genotyped sample): colours the PC plots (report.labels' column, else
    #: the first categorical covariate)
    labels: tuple | None = None
    #: where the labels came from and how they matched (report.labels: file, column, counts)
    label_source: dict | None = None
    #: per variant: minor allele frequency and missing fraction (variant statistics)
    maf: np.ndarray | None = None
    missing: np.ndarray | None = None
    #: :func:`relatedness_summary` of the saved GRM (exact path only)
    relatedness: dict | None = None
    #: phenotype name -> (ĝ, y) over the genotyped samples (y NaN where not analysed or missing)
    blup: dict = field(default_factory=dict)
    #: phenotype name -> {"n", "in_sample": r(ĝ, y), and from the leave-one-out predictions (spectral
    #: REML) "loo": r(ŷ₋ᵢ, y), "loo_genetic": r(ĝ₋ᵢ, y − zβ̂₋ᵢ), "gv": loo_genetic / √h²}
    blup_accuracy: dict = field(default_factory=dict)


#: at most this many labels get their own colour in the PC plots; the rarer ones are grouped as "other"
MAX_LABELS = 12
#: labels drawn in grey beneath the others (a sample without a label, or not analysed)
UNLABELLED = ("no label", "not analysed")


def label_groups(labels, cap: int = MAX_LABELS) -> list[tuple[str, np.ndarray]]:
    """The legend of the PC plots: (entry, samples) pairs. The labels by decreasing count (ties
    alphabetically), at most ``cap`` entries: beyond that the ``cap − 1`` most frequent and
    ``other (m labels)``; then the :data:`UNLABELLED` groups."""
    lab = np.array([str(x) for x in labels], dtype=object)
    levels, counts = np.unique(lab, return_counts=True)
    named = sorted(((int(c), str(v)) for v, c in zip(levels, counts) if v not in UNLABELLED),
                   key=lambda t: (-t[0], t[1]))
    keep = named if len(named) <= cap else named[:cap - 1]
    groups = [(v, lab == v) for _, v in keep]
    if len(named) > len(keep):
        rest = [v for _, v in named[len(keep):]]
        groups.append((f"other ({len(rest)} labels)", np.isin(lab, rest)))
    groups += [(v, lab == v) for v in UNLABELLED if v in levels]
    return groups



def relatedness_summary(K, ids, top: int = TOP_PAIRS, block: int = 2048, bins: int = 120, on_rows=None) -> dict:
    """The report's relatedness section from a saved GRM: the off-diagonal entries (their moments
    and the histogram of their normalised values), and the ``top`` pairs with the largest normalised
    relatedness ``K_ij / sqrt(K_ii K_jj)``, each classed by that value (:data:`RELATEDNESS_CLASSES`).

    Why normalised: with inbred or structured samples ``K_ii = 1 + F_i`` exceeds 1 and the raw
    ``K_ij`` of relatives scales with it (a duplicate of a sample with ``K_ii = 1.31`` has
    ``K_ij = 1.31``; a pair of ``K_ij = 0.93`` between two such samples is 0.71 normalised, first
    degree, not a duplicate). The normalised value is 1 for a duplicate whatever the inbreeding,
    and also undoes the shrinkage of ``K_ij`` towards 0 by missing calls (mean-imputed to 0).

    Cost: one read of the lower triangle of ``K`` (diagonal included) in bands of rows
    ``K[r0:r1, 0:r1]`` whose edges are chunk edges (``block`` rounded down to whole chunks, at
    least one), so each chunk of a Zarr ``K`` is read and decoded at most once, and the chunks
    above the bands' diagonal squares (the same numbers as below) not at all. The diagonal comes from that read. Memory: one band
    (``r1 − r0`` rows × ``r1`` columns), a few tiles of :data:`TILE`² numbers and O(n + top).

    ``on_rows(K_rows)``, if given, is called with each band in turn, from row 0 to n: the GCTA
    export of K (:func:`bigmm.io.gcta.gcta_grm_writer`) is written from the same read.
    """
    n = int(K.shape[0])
    b = band_rows(K, block)
    pairs = _PairStats(top, bins)
    diag = np.empty(n, dtype=np.float64)
    for r0 in range(0, n, b):
        r1 = min(n, r0 + b)
        band = np.asarray(K[r0:r1, 0:r1], dtype=np.float64)
        if on_rows is not None:
            on_rows(band)
        diag[r0:r1] = band[np.arange(r1 - r0), np.arange(r0, r1)]
        for s0, s1, c0, c1 in lower_tiles(r0, r1):
            pairs.add(band[s0 - r0:s1 - r0, c0:c1], diag[s0:s1], diag[c0:c1], s0, c0)
    return pairs.summary(ids, diag)


def band_rows(K, block: int) -> int:
    """Rows per band of :func:`relatedness_summary`: ``block`` rounded down to whole chunks of
    ``K`` in both directions (at least one chunk); ``block`` itself when ``K`` is not chunked."""
    chunks = getattr(K, "chunks", None)
    c = int(chunks[0]) if chunks and isinstance(chunks[0], (int, np.integer)) else 0
    if chunks and isinstance(chunks[1], (int, np.integer)) and int(chunks[1]) != c:
        c = int(np.lcm(c, int(chunks[1])))  # band edges that are chunk edges in both directions
    return c * max(1, int(block) // c) if c else int(block)


def lower_tiles(r0: int, r1: int) -> list[tuple[int, int, int, int]]:
    """The tiles ``(s0, s1, c0, c1)`` of at most :data:`TILE` x :data:`TILE` entries that cover
    the lower triangle of the band of rows ``r0..r1`` (diagonal included) once: for rows
    ``s0..s1``, the square diagonal tile, then columns 0..s0."""
    return [(s0, min(r1, s0 + TILE), c0, c1) for s0 in range(r0, r1, TILE)
            for c0, c1 in [(s0, min(r1, s0 + TILE))] + [(c, min(s0, c + TILE)) for c in range(0, s0, TILE)]]


class _PairStats:
    """The off-diagonal pairs of K seen so far, tile by tile: the moments of their raw values, the
    histogram of their normalised values, and the ``top`` pairs by normalised value."""

    def __init__(self, top: int, bins: int):
        self.top = top
        self.lo, self.hi = -0.25, 1.25
        self.edges = np.linspace(self.lo, self.hi, bins + 1)
        self.counts = np.zeros(bins, dtype=np.int64)
        self.best = np.empty(0)  # the normalised values of the candidate pairs, their (a, b) and raw K_ab
        self.best_ij = np.empty((0, 2), dtype=np.int64)
        self.best_raw = np.empty(0)
        self.vmin, self.vmax, self.total, self.total_sq, self.m = np.inf, -np.inf, 0.0, 0.0, 0
        self.undefined = 0  # pairs with a sample whose K_ii ≤ 0 (no called genotype): no normalised value

    def add(self, tile, diag_rows, diag_cols, s0: int, c0: int) -> None:
        """Count the pairs of one tile ``K[s0:s1, c0:c1]`` (only its strict lower triangle when it
        is on the diagonal), given the diagonal of K over its rows and its columns."""
        dd = np.outer(diag_rows, diag_cols)
        with np.errstate(invalid="ignore", divide="ignore"):
            norm = tile / np.sqrt(dd)
        norm[~(dd > 0)] = np.nan
        if c0 == s0:  # the strict lower triangle of the diagonal tile
            below = np.tri(tile.shape[0], k=-1, dtype=bool)
            vals, nv = tile[below], norm[below]
            norm[~below] = np.nan
        else:
            vals, nv = tile.ravel(), norm.ravel()
        if vals.size == 0:
            return
        self._add_moments(vals, nv)
        self._add_candidates(tile, norm, s0, c0)

    def _add_moments(self, vals, nv) -> None:
        """Min, max, sum and sum of squares of the raw values; histogram of the normalised ones."""
        self.vmin, self.vmax = min(self.vmin, float(vals.min())), max(self.vmax, float(vals.max()))
        self.total += float(vals.sum())
        self.total_sq += float(np.dot(vals, vals))
        self.m += vals.size
        ok = np.isfinite(nv)
        self.undefined += int(vals.size - ok.sum())
        self.counts += np.histogram(np.clip(nv[ok], self.lo, self.hi - 1e-12), self.edges)[0]

    def _add_candidates(self, tile, norm, s0: int, c0: int) -> None:
        """Merge the tile's ``top`` largest normalised pairs into the ``top`` kept so far (ties by
        sample index)."""
        top = self.top
        flat = np.where(np.isfinite(norm), norm, -np.inf).ravel()
        k = min(top, flat.size)
        cand = np.argpartition(flat, flat.size - k)[flat.size - k:]
        cand = cand[np.isfinite(flat[cand])]
        if cand.size == 0:
            return
        i, j = np.unravel_index(cand, norm.shape)
        best = np.concatenate([self.best, flat[cand]])
        best_raw = np.concatenate([self.best_raw, tile[i, j]])
        best_ij = np.concatenate([self.best_ij, np.column_stack([j + c0, i + s0])])  # j < i: (a, b) = (j, i)
        keep = np.lexsort((best_ij[:, 1], best_ij[:, 0], -best))[:top]
        self.best, self.best_raw, self.best_ij = best[keep], best_raw[keep], best_ij[keep]

    def summary(self, ids, diag) -> dict:
        """The dict :func:`relatedness_summary` returns, given the sample IDs and the diagonal."""
        n, m = diag.size, self.m
        pairs = []
        for v, raw, (a, c) in zip(self.best, self.best_raw, self.best_ij):
            pairs.append({"a": list(ids[a]), "b": list(ids[c]), "K": float(raw), "K_aa": float(diag[a]),
                          "K_bb": float(diag[c]), "K_normalised": float(v), "class": relatedness_class(v)})
        mean = self.total / m if m else float("nan")
        return {"n": n, "pairs": m, "min": self.vmin, "max": self.vmax, "mean": mean,
                "sd": float(np.sqrt(max(self.total_sq / m - mean ** 2, 0.0))) if m else float("nan"),
                "diag_mean": float(diag.mean()) if n else float("nan"),
                "diag_min": float(diag.min()) if n else float("nan"),
                "diag_max": float(diag.max()) if n else float("nan"),
                "pairs_without_normalised": self.undefined,
                "edges": self.edges.tolist(), "counts": self.counts.tolist(), "top": pairs}


def relatedness_class(normalised: float) -> str:
    """The class of a pair from its normalised relatedness ``K_ij / sqrt(K_ii K_jj)`` ("" below
    the third-degree cut-off)."""
    return next((name for cut, name in RELATEDNESS_CLASSES if normalised >= cut), "")

