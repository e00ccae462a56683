"""Random-effect predictions: genetic values (BLUP), SNP effects, and scores of new samples.

At the REML estimates, with ``r = y − Z ω̂`` and ``w = V⁻¹ r`` (zero for samples
without a phenotype value: the indicator formulation of missing values gives
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
from .io.plink import check_unique_variant_ids
from .reml import RemlResult, RotatedDesign
from .spectrum import Spectrum
from .tasks import run_tasks

log = logging.getLogger("bigmm")


@dataclass(frozen=True)
class Blup:
    """Predictions for m phenotypes over n samples (:func:`predict`)."""

    names: list
    genetic_values: np.ndarray  # (n, m) ĝ
    weights: np.ndarray  # (n, m) w = V⁻¹ (y − Zω̂), zero where y is missing
    sigma2_g: np.ndarray  # (m,)
    notes: dict = field(default_factory=dict)
    #: (p, m) β̂ per standardized genotype (0 for dropped variants), when asked for
    snp_effects: np.ndarray | None = None

    def __repr__(self) -> str:
        n, m = self.genetic_values.shape
        snp = "" if self.snp_effects is None else f", SNP effects of {self.snp_effects.shape[0]} variants"
        names = ", ".join(map(str, self.names[:5])) + (", ..." if m > 5 else "")
        return f"Blup({m} phenotype{'s' if m != 1 else ''} ({names}) x {n} samples{snp})"

    def to_pandas(self, sample_ids=None):
        """ĝ as a pandas DataFrame, one column per phenotype; ``sample_ids`` (a list of
        (FID, IID) pairs, e.g. ``store.sample_ids()``) adds FID and IID columns."""
        from .reml import _pandas

        pd = _pandas()
        df = pd.DataFrame(self.genetic_values, columns=list(self.names))
        if sample_ids is not None:
            ids = list(sample_ids)
            if len(ids) != len(df):
                raise InputError(f"{len(ids)} sample IDs for {len(df)} genetic values")
            df.insert(0, "IID", [i for _, i in ids])
            df.insert(0, "FID", [f for f, _ in ids])
        return df


def _apply_K(spec: Spectrum, w: np.ndarray) -> np.ndarray:
    """K w from the spectrum: U S Uᵀ w (+ λ̄ (w − U Uᵀ w) for a reduced spectrum)."""
    uw = spec.U.T @ w
    out = spec.U @ (spec.s[:, None] * uw)
    if spec.n_tail:
        out += spec.tail * (w - spec.U @ uw)
    return out


def _group_weights(spec: Spectrum, Z: np.ndarray, rot, fit_by_name: dict) -> np.ndarray:
    """w = V⁻¹ r for the phenotypes of one rotated group, in the group's sample space.

    ``spec`` and ``Z`` are the group's spectrum and fixed effects (the subset's for a
    ``subset_spectrum`` group); ω̂ comes from the group's rotated data (:meth:`_Rotated.gls`).
    """
    U = spec.U
    obs = rot.obs if rot.method != "subset_spectrum" else np.ones(spec.n, bool)
    n_g, m = spec.n, len(rot.names)
    Y0 = np.zeros((n_g, m))
    Y0[obs] = rot.Yo
    W = np.zeros((n_g, m))
    miss = np.flatnonzero(~obs)
    Zaug = Z
    if miss.size:
        E = np.zeros((n_g, miss.size))
        E[miss, np.arange(miss.size)] = 1.0
        Zaug = np.hstack([Z, E])
    for j, name in enumerate(rot.names):
        f = fit_by_name[name]
        h, s2 = f.h2, f.sigma2_g + f.sigma2_e
        omega = rot.gls(h, j)
        d = h * rot.s + (1.0 - h)
        rt = rot.Yt[:, j] - rot.Zt @ omega
        w = U @ (rt / (s2 * d))
        if rot.n_tail:
            dt = h * rot.lam + (1.0 - h)
            r = Y0[:, j] - Zaug @ omega
            w += (r - U @ rt) / (s2 * dt)
        w[~obs] = 0.0  # exactly zero in theory (indicator columns absorb y_m); clean round-off
        # Yt, Yo are on the unit residual scale a (see rotate): V⁻¹ r = a (σ'² H)⁻¹ r' / a² ⋅ a²/a
        W[:, j] = w * (float(rot.scale[j]) if rot.scale is not None else 1.0)
    return W


def _fit_context(spectrum: Spectrum, design, result, rows, rows_spectrum, what: str):
    """(design, rows, the spectrum over ``rows``, fits by name) of a fit, checked: the design
    the fits were made on, with each group's observed samples."""
    design = result.design if design is None else design
    if design is None or design.Z is None:
        raise InputError(f"{what} needs the design the fits were made on (a result of "
                         "bigmm.fit_reml, or the RotatedDesign from bigmm.reml.rotate)")
    if any(rot.obs is None for rot in design.groups):
        raise InputError("this RotatedDesign carries no observed samples (saved by an older bigmm); "
                         "rerun its rotate stage")
    given = rows is not None
    rows = np.arange(spectrum.n) if rows is None else np.asarray(rows)
    n_fit = design.Z.shape[0]
    if rows.dtype == bool:
        raise InputError(f"{what}: rows must be sample indices into the spectrum (np.flatnonzero(mask)), "
                         f"not a boolean mask")
    if rows.ndim != 1 or rows.size != n_fit or (rows.size and (rows.min() < 0 or rows.max() >= spectrum.n)):
        got = ("no rows (all of the spectrum's samples)" if not given else f"{rows.size} rows"
               + (f" with indices {int(rows.min())}..{int(rows.max())}" if rows.size else ""))
        raise InputError(
            f"{what}: the fit has {n_fit} samples and the spectrum {spectrum.n}, but {got} given: "
            + ("give the spectrum the fit was made on without rows, or the spectrum of all samples "
               "with rows = the fit's samples" if rows.size != n_fit else
               f"rows must index the spectrum's {spectrum.n} samples (0..{spectrum.n - 1})"))
    if rows_spectrum is not None and rows.size != spectrum.n and rows_spectrum.n != rows.size:
        raise InputError(f"{what}: rows_spectrum has {rows_spectrum.n} samples, rows {rows.size}: give "
                         "spectrum.subset(rows), the spectrum the fit was made on")
    own = spectrum if rows.size == spectrum.n else (rows_spectrum if rows_spectrum is not None
                                                    else spectrum.subset(rows))
    return design, rows, own, {f.name: f for f in result.fits}


def genetic_values(spectrum: Spectrum, design: RotatedDesign | None, result: RemlResult,
                   rows: np.ndarray | None = None, rows_spectrum: Spectrum | None = None) -> Blup:
    """BLUP of the genetic values of every sample of ``spectrum``.

    Parameters
    ----------
    spectrum : Spectrum
        The spectrum of all samples for which ĝ is wanted (e.g. all genotyped).
    design : RotatedDesign or None
        The design the fits were made on (:func:`bigmm.reml.rotate`), over the samples
        ``rows`` of ``spectrum``; None takes ``result.design`` (the design a
        :func:`bigmm.fit_reml` result carries).
    result : RemlResult
        The fits of the design's phenotypes (their h² and σ² are used).
    rows : int array, optional
        Rows of ``spectrum`` the design's samples are (default: all).
    rows_spectrum : Spectrum, optional
        ``spectrum.subset(rows)`` if the caller has it (the spectrum the design was rotated on);
        else it is recomputed here when ``rows`` is not all of ``spectrum`` (O(n_o k²) for a
        reduced spectrum, an eigendecomposition of the subset for an exact one).

    Examples
    --------
    >>> import numpy as np, bigmm
    >>> rng = np.random.default_rng(0)
    >>> G = rng.binomial(2, 0.3, size=(80, 300)).astype(np.int8)
    >>> spec = bigmm.exact_spectrum(bigmm.grm(G, bigmm.standardization(bigmm.variant_stats(G))))
    >>> fit = bigmm.fit_reml(spec, rng.normal(size=80))
    >>> bigmm.genetic_values(spec, None, fit).genetic_values.shape   # or bigmm.predict(fit, spec)
    (80, 1)
    """
    design, rows, own, fits = _fit_context(spectrum, design, result, rows, rows_spectrum, "genetic_values")
    n, m = spectrum.n, len(design.phenotype_names)
    W = np.zeros((n, m))
    for rot in design.groups:
        if rot.method == "subset_spectrum":
            Wg = _group_weights(own.subset(rot.obs), design.Z[rot.obs], rot, fits)
            grows = rows[np.flatnonzero(rot.obs)]
        else:
            Wg = _group_weights(own, design.Z, rot, fits)
            grows = rows
        W[np.ix_(grows, rot.cols)] = Wg
    sg = np.array([fits[nm].sigma2_g for nm in design.phenotype_names])
    g = _apply_K(spectrum, W) * sg
    return Blup(names=list(design.phenotype_names), genetic_values=g, weights=W, sigma2_g=sg,
                notes={"spectrum": spectrum.method})


# ---------------------------------------------------------------------------------------
# leave-one-out predictions (held-out accuracy without refitting)
# ---------------------------------------------------------------------------------------


def loo_spectral(spec: Spectrum, Y: np.ndarray, Z: np.ndarray, h2) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out predictions of every sample from the others, on a spectrum: no refit.

    For each sample i, the prediction of ``y_i`` from the other n − 1 samples at the given
    variance components: ``ŷ₋ᵢ = z_iᵀ β̂₋ᵢ + ĝ₋ᵢ`` with ``β̂₋ᵢ`` the GLS estimate without sample i
    and ``ĝ₋ᵢ = Cov(g_i, y₋ᵢ) V₋ᵢ⁻¹ (y₋ᵢ − Z₋ᵢ β̂₋ᵢ)``. With ``H = h² K + (1 − h²) I`` (V up to
    its scale, which cancels), ``P = H⁻¹ − H⁻¹Z (ZᵀH⁻¹Z)⁻¹ ZᵀH⁻¹``, ``r = y − Zβ̂`` and the GLS hat
    diagonal ``q_i = [Z (ZᵀH⁻¹Z)⁻¹ ZᵀH⁻¹]_ii`` (docs/math.md, "Leave-one-out predictions"):

        y_i − ŷ₋ᵢ = (P y)_i / P_ii,        ĝ₋ᵢ = r_i − (1 − q_i) (P y)_i / P_ii

    Cost O(n k c) per phenotype (``H⁻¹Z`` and ``diag H⁻¹`` from the spectrum, with the tail
    term of a reduced one): no n x n matrix.

    Parameters
    ----------
    spec : Spectrum
        The spectrum of K over the n samples of ``Y``.
    Y : (n,) or (n, m) array
        Phenotypes, no missing values (see :func:`leave_one_out` for a fitted design's
        observed samples).
    Z : (n, c) array
        Fixed effects (full column rank).
    h2 : float or (m,) array
        h² = σ²_g / (σ²_g + σ²_e) of each phenotype (e.g. the REML estimate).

    Returns
    -------
    (predictions, genetic) : two (n, m) arrays
        ``ŷ₋ᵢ`` and ``ĝ₋ᵢ`` (so ``ŷ₋ᵢ − ĝ₋ᵢ = z_iᵀ β̂₋ᵢ``).
    """
    Y = np.asarray(Y, dtype=np.float64)
    one = Y.ndim == 1
    Y = Y[:, None] if one else Y
    Z = np.asarray(Z, dtype=np.float64)
    Z = Z[:, None] if Z.ndim == 1 else Z
    n, m = Y.shape
    if Z.shape[0] != n or spec.n != n:
        raise InputError(f"loo_spectral: Y has {n} rows, Z {Z.shape[0]}, the spectrum {spec.n} samples")
    if np.isnan(Y).any():
        raise InputError("loo_spectral: Y has missing values (leave_one_out handles a design's missing values)")
    h2 = np.broadcast_to(np.asarray(h2, dtype=np.float64), (m,))
    U, s = spec.U, spec.s
    UZ, UY = U.T @ Z, U.T @ Y
    U2 = U * U
    u2 = U2.sum(axis=1)
    Zperp = Z - U @ UZ if spec.n_tail else None  # (I − UUᵀ) Z: the tail's part
    Yperp = Y - U @ UY if spec.n_tail else None
    pred, gen = np.empty((n, m)), np.empty((n, m))
    for j in range(m):
        h = float(h2[j])
        d = h * s + (1.0 - h)
        HZ = U @ (UZ / d[:, None])
        Hy = U @ (UY[:, j] / d)
        dH = U2 @ (1.0 / d)
        if spec.n_tail:
            dt = h * spec.tail + (1.0 - h)
            HZ += Zperp / dt
            Hy += Yperp[:, j] / dt
            dH += (1.0 - u2) / dt
        A = Z.T @ HZ
        Ainv = np.linalg.inv(0.5 * (A + A.T))
        beta = Ainv @ (HZ.T @ Y[:, j])
        Py = Hy - HZ @ beta  # H⁻¹ r: P y, since P y = H⁻¹ (y − Zβ̂)
        Pii = dH - np.einsum("ic,cd,id->i", HZ, Ainv, HZ)
        q = np.einsum("ic,cd,id->i", Z, Ainv, HZ)
        with np.errstate(divide="ignore", invalid="ignore"):  # P_ii = 0: an indicator-absorbed sample
            gamma = Py / Pii  # y_i − ŷ₋ᵢ
            pred[:, j] = Y[:, j] - gamma
            gen[:, j] = (Y[:, j] - Z @ beta) - (1.0 - q) * gamma
    return (pred[:, 0], gen[:, 0]) if one else (pred, gen)


@dataclass(frozen=True)
class LeaveOneOut:
    """Leave-one-out predictions of the observed samples of a fit (:func:`leave_one_out`); NaN
    for samples without a value of the phenotype (or outside the fit)."""

    names: list
    y: np.ndarray  # (n, m) the phenotype values the fit used
    predictions: np.ndarray  # (n, m) ŷ₋ᵢ: y_i predicted from the other samples
    genetic_values: np.ndarray  # (n, m) ĝ₋ᵢ: the genetic part of ŷ₋ᵢ
    h2: np.ndarray  # (m,) the h² the predictions were made at

    def _rows(self, limit: int) -> list[tuple]:
        acc = self.accuracy()
        return [(nm, acc[nm]["n"], float(self.h2[j]), acc[nm]["loo"], acc[nm]["loo_genetic"], acc[nm]["gv"])
                for j, nm in enumerate(list(self.names)[:limit])]

    def __repr__(self, limit: int = 10) -> str:
        """One line per phenotype (the first ``limit``): samples predicted, h² and the accuracies."""
        from .reml import _num

        n, m = self.predictions.shape
        lines = [f"LeaveOneOut({m} phenotype{'s' if m != 1 else ''} x {n} samples)"]
        lines += [f"  {nm}: {k} predicted at h2={_num(h)}, r(y_hat, y)={_num(r)}, r(g_hat, y - fixed)={_num(rg)}, "
                  f"implied r(g_hat, g)={_num(gv)}" for nm, k, h, r, rg, gv in self._rows(limit)]
        if m > limit:
            lines.append(f"  ... {m - limit} more (accuracy() gives all)")
        return "\n".join(lines)

    def _repr_html_(self, limit: int = 50) -> str:
        """An HTML table of the phenotypes' accuracies, for notebooks."""
        import html

        from .reml import _num

        n, m = self.predictions.shape
        cells = ("phenotype", "predicted", "h²", "r(ŷ, y)", "r(ĝ, y − fixed)", "implied r(ĝ, g)")
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in (
            nm, k, _num(h), _num(r), _num(rg), _num(gv))) + "</tr>" for nm, k, h, r, rg, gv in self._rows(limit))
        more = f"<p>... {m - limit} more</p>" if m > limit else ""
        return (f"<div><b>LeaveOneOut</b>: {m} phenotypes x {n} samples<table><tr>"
                + "".join(f"<th>{c}</th>" for c in cells) + f"</tr>{body}</table>{more}</div>")

    def accuracy(self) -> dict:
        """:func:`loo_accuracy` of each phenotype, by name."""
        return {nm: loo_accuracy(self.y[:, j], self.predictions[:, j], self.genetic_values[:, j], self.h2[j])
                for j, nm in enumerate(self.names)}


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def loo_accuracy(y, predictions, genetic, h2: float) -> dict:
    """Held-out accuracies from leave-one-out predictions (NaN entries left out).

    ``loo``: r(ŷ₋ᵢ, y_i), the correlation of each sample's prediction from the others with its
    value (the whole model: fixed effects and genetic value; the usual predictive ability).
    ``loo_genetic``: r(ĝ₋ᵢ, y_i − z_iᵀβ̂₋ᵢ), of the genetic part with the held-out value corrected
    for the fixed effects (not raised by covariates that predict y). ``gv``: ``loo_genetic / √h²``,
    the implied accuracy r(ĝ, g) of the genetic values (r(ĝ, y*) = r(ĝ, g) · √h² for ĝ independent
    of e). ``n``: samples.
    """
    y, pred, gen = (np.asarray(a, dtype=np.float64) for a in (y, predictions, genetic))
    ok = np.isfinite(y) & np.isfinite(pred) & np.isfinite(gen)
    r_gen = _corr(gen[ok], (y - (pred - gen))[ok])
    return {"n": int(ok.sum()), "loo": _corr(pred[ok], y[ok]), "loo_genetic": r_gen,
            "gv": r_gen / np.sqrt(h2) if h2 > 0 and np.isfinite(r_gen) else float("nan")}


def leave_one_out(spectrum: Spectrum, design: RotatedDesign | None, result: RemlResult,
                  rows: np.ndarray | None = None, rows_spectrum: Spectrum | None = None) -> LeaveOneOut:
    """Leave-one-out predictions of every observed sample of a fit, at its REML variances
    (:func:`loo_spectral`; no refit), each phenotype on its own observed samples.

    Parameters as :func:`genetic_values` (the arrays are over the samples of ``spectrum``).
    Missing values as the fit handled them: a group fit on the spectrum of its observed subset
    uses that spectrum; with indicator columns, they are added to Z (the indicator formulation
    gives exactly the observed samples' P), at O(n k (c + n_missing)) per phenotype.
    """
    design, rows, own, fits = _fit_context(spectrum, design, result, rows, rows_spectrum, "leave_one_out")
    n, m = spectrum.n, len(design.phenotype_names)
    y_all, pred, gen = (np.full((n, m), np.nan) for _ in range(3))
    for rot in design.groups:
        obs = rot.obs
        Z = design.Z
        h2 = np.array([fits[nm].h2 for nm in rot.names])
        if rot.method == "subset_spectrum":
            sp, Zg, Yg, keep = own.subset(obs), Z[obs], rot.Yo, slice(None)
        elif obs.all():
            sp, Zg, Yg, keep = own, Z, rot.Yo, slice(None)
        else:  # indicator columns: y_m = 0 and e_m in Z for each missing sample m
            miss = np.flatnonzero(~obs)
            E = np.zeros((own.n, miss.size))
            E[miss, np.arange(miss.size)] = 1.0
            sp, Zg, Yg, keep = own, np.hstack([Z, E]), np.zeros((own.n, len(rot.names))), obs
            Yg[obs] = rot.Yo
        p, g = loo_spectral(sp, Yg, Zg, h2)
        p, g = p[keep], g[keep]
        # back from the unit residual scale of the fit (rotate): y = a y' + Z b_ols; predictions are
        # equivariant (ŷ₋ᵢ = a ŷ'₋ᵢ + z_i b_ols), the genetic part scales (ĝ₋ᵢ = a ĝ'₋ᵢ)
        a = rot.scale if rot.scale is not None else np.ones(len(rot.names))
        shift = rot.shift if rot.shift is not None else np.zeros((Z.shape[1], len(rot.names)))
        zb = Z[obs] @ shift
        grows = rows[np.flatnonzero(obs)]
        idx = np.ix_(grows, rot.cols)
        y_all[idx] = rot.Yo * a + zb
        pred[idx] = p * a + zb
        gen[idx] = g * a
    h2 = np.array([fits[nm].h2 for nm in design.phenotype_names])
    return LeaveOneOut(names=list(design.phenotype_names), y=y_all, predictions=pred, genetic_values=gen, h2=h2)


def predict(fit, spectrum: Spectrum | None = None, *, genotypes=None, std=None, rows=None,
            rows_spectrum: Spectrum | None = None, dtype="float64") -> Blup:
    """Genetic values (BLUP) of every sample and, given the genotypes, SNP effects: one call.

    Parameters
    ----------
    fit : RemlResult or MatrixFreeResult
        A fit from :func:`bigmm.fit_reml` (it carries the design it was made on) or
        :func:`bigmm.mfreml.fit_matrix_free`.
    spectrum : Spectrum
        The spectrum of all samples for which ĝ is wanted (for a ``fit_reml`` fit; the fit's
        own spectrum, or that of all genotyped samples with ``rows``). Not used for a
        matrix-free fit.
    genotypes, std : optional
        The genotypes (n x p: a cohort store's ``genotypes``, a NumPy array, or an xarray
        Dataset in the VCF Zarr layout) and their :class:`bigmm.Standardization`: with them,
        the SNP effects ``β̂ = (σ²_g / p) Xᵀ w`` are computed too (one pass over X), and for a
        matrix-free fit ``ĝ = σ²_g K w`` (one more pass).
    rows, rows_spectrum
        As :func:`genetic_values`: the rows of ``spectrum`` the fit's samples are.
    dtype : numpy dtype
        Precision of the products of the passes over X (default float64, the library's rule:
        :data:`bigmm.genotypes.LIBRARY_DTYPE`; accumulated in float64).

    Returns
    -------
    Blup
        ``genetic_values`` (n x m), ``weights``, and ``snp_effects`` (p x m) when asked.

    Examples
    --------
    >>> import numpy as np, bigmm
    >>> rng = np.random.default_rng(0)
    >>> G = rng.binomial(2, 0.3, size=(100, 300)).astype(np.int8)
    >>> std = bigmm.standardization(bigmm.variant_stats(G))
    >>> spec = bigmm.exact_spectrum(bigmm.grm(G, std))
    >>> fit = bigmm.fit_reml(spec, rng.normal(size=100))
    >>> b = bigmm.predict(fit, spec, genotypes=G, std=std)
    >>> b.genetic_values.shape, b.snp_effects.shape
    ((100, 1), (300, 1))
    >>> X = bigmm.standardized(G, std).compute()   # the identity X β̂ = ĝ of the exact GRM
    >>> bool(np.allclose(X @ b.snp_effects, b.genetic_values))
    True
    """
    from .genotypes import genotype_matrix
    from .passes import GrmOperator

    op = None
    if genotypes is not None:
        if std is None:
            raise InputError("predict: SNP effects need the standardization (std) of the genotypes")
        op = GrmOperator(genotype_matrix(genotypes), std, dtype=dtype)
    if hasattr(fit, "blup_weights"):  # matrix-free: weights from the fit, K w by a pass over X
        if op is None:
            raise InputError("predict: a matrix-free fit needs genotypes and std (K w takes a pass over X)")
        if op.n != fit.n:
            raise InputError(f"predict: the genotypes have {op.n} samples, the fit {fit.n}")
        w = fit.blup_weights()  # as bigmm.mfreml.blup_matrix_free (not imported: no import circle)
        g = np.asarray(op.apply(w, want_diag=False)[0]) * np.array([f.sigma2_g for f in fit.fits])
        b = Blup(names=list(fit.phenotype_names), genetic_values=g, weights=w,
                 sigma2_g=np.array([f.sigma2_g for f in fit.fits]), notes={"reml": "matrix_free"})
    else:
        if spectrum is None:
            raise InputError("predict: give the spectrum the fit was made on (or that of all samples, with rows)")
        b = genetic_values(spectrum, None, fit, rows=rows, rows_spectrum=rows_spectrum)
    if op is None:
        return b
    beta = snp_effects(op, b)
    return Blup(names=b.names, genetic_values=b.genetic_values, weights=b.weights, sigma2_g=b.sigma2_g,
                notes=b.notes, snp_effects=beta)


def snp_effects(op, blup: Blup) -> np.ndarray:
    """β̂ = (σ²_g / p) Xᵀ w per standardized genotype (p x m), in one pass over X.

    ``op`` is the :class:`bigmm.passes.GrmOperator` of the samples the BLUP weights are over.
    Dropped variants get 0. Per allele count of allele 1: ``β̂ * std.scale[:, None]``.

    Examples
    --------
    >>> import numpy as np, bigmm
    >>> rng = np.random.default_rng(0)
    >>> G = rng.binomial(2, 0.3, size=(80, 300)).astype(np.int8)
    >>> std = bigmm.standardization(bigmm.variant_stats(G))
    >>> spec = bigmm.exact_spectrum(bigmm.grm(G, std))
    >>> b = bigmm.genetic_values(spec, None, bigmm.fit_reml(spec, rng.normal(size=80)))
    >>> bigmm.snp_effects(bigmm.GrmOperator(G, std), b).shape   # bigmm.predict does both in one call
    (300, 1)
    """
    W = blup.weights
    if W.shape[0] != op.n:
        raise InputError(f"the BLUP weights are over {W.shape[0]} samples, the genotype operator {op.n}")
    beta = op.xt(W, desc="SNP effects: pass over X")
    beta *= blup.sigma2_g[None, :] / op.p
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


def match_alleles(train: dict, target: dict, keep: np.ndarray | None = None) -> AlleleMatch:
    """Match variants by ID, then alleles: same counted allele, swapped (flip), or no match.

    Strand-ambiguous variants (A/T, C/G) are dropped: their flips cannot be told
    from a strand swap. Variants whose alleles differ are dropped; training
    variants absent from the target are counted as missing. ``keep`` (the training
    standardization's kept variants): a variant the training dropped has no effect and is
    counted as ``dropped_in_training``, not used. ``counts["used"]`` is then the number of
    variants that enter the scores, and the counts add up to the training variants. IDs must be
    unique in both tables (a duplicated ID would send an effect to the wrong variant): duplicates
    are refused, naming them.
    """
    check_unique_variant_ids(train["id"], "the training variants (SNP effects)")
    check_unique_variant_ids(target["id"], "the target variants")
    index = {v: i for i, v in enumerate(target["id"])}
    ti, ei, fl = [], [], []
    counts = {"used": 0, "flipped": 0, "dropped_in_training": 0, "missing_in_target": 0,
              "strand_ambiguous": 0, "allele_mismatch": 0}
    for e, vid in enumerate(train["id"]):
        if keep is not None and not keep[e]:
            counts["dropped_in_training"] += 1
            continue
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
