"""Genetic correlations of every pair of phenotypes from the univariate matrix-free build.

A :func:`bigmm.fit_matrix_free` run keeps, per missing-value pattern, the block Gauss rule of
its ``[Z, Ỹ]`` block Lanczos (Ritz values θ of K and ``G = R₀ᵀE₁ᵀS``, so that
``[Z, Ỹ]ᵀ f(K) [Z, Ỹ] ≈ G diag(f(θ)) Gᵀ`` for any f) and the probes' Gauss rules of
``log det(hK + (1 − h)I)``. For two phenotypes a, b of the same pattern, ``[Z, y_a, y_b]`` is a
fixed linear map of ``[Z, Ỹ]`` (``y = a (ỹ + Z shift)``, a the unit scale the fit used), so
every quadratic form of the pair's bivariate REML comes from the same rule, and the log det
from the same probes: :func:`pair_measure` builds the pair's
:class:`bigmm.bivariate.PairMeasure` without a pass over X, and
:func:`fit_bivariate_matrix_free` fits every pair with :func:`bigmm.bivariate.fit_pair` and a
delete-one-probe jackknife of the Monte Carlo error.

Pairs whose phenotypes have different missing values (different patterns) have no cross
forms in the build (each pattern's Krylov space is of its own ``K_oo``): they need a build on
the samples observed for both, which :func:`fit_bivariate_matrix_free` makes (one more set of
passes shared by every such pair) when it is given the operator, and refuses otherwise.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from .bivariate import BivariateResult, PairMeasure, _univariate, fit_pair
from .errors import InputError


def _models(result) -> tuple:
    """The quadrature models of a matrix-free result, or a clear refusal."""
    models = getattr(result, "models", None)
    if not models:
        raise InputError("this matrix-free result holds no quadrature models (a result read back with "
                         "from_dict keeps the fits only): rebuild it with bigmm.restore_matrix_free from "
                         "the fit's saved state, or fit again with bigmm.fit_matrix_free")
    return tuple(models)


def _locate(result, which) -> tuple:
    """(model, column j in the model, unit scale, name) of phenotype ``which`` (name or column)."""
    names = list(result.phenotype_names)
    if isinstance(which, (int, np.integer)) and not isinstance(which, bool):
        if not 0 <= int(which) < len(names):
            raise InputError(f"phenotype column {which} is out of range: the fit has {len(names)} phenotypes")
        name = names[int(which)]
    else:
        name = str(which)
        if name not in names:
            raise InputError(f"phenotype {name!r} is not in the matrix-free fit (it has "
                             f"{', '.join(map(repr, names[:10]))}{', ...' if len(names) > 10 else ''})")
    col = names.index(name)
    scale = float(result.scales[col]) if result.scales else 1.0
    for mdl in _models(result):
        if name in mdl.names:
            return mdl, mdl.names.index(name), scale, name
    raise InputError(f"phenotype {name!r} has no quadrature model in the matrix-free fit")  # unreachable


class CrossPatternError(InputError):
    """The two phenotypes of a pair have different missing values: the build has no cross forms."""


def _cross_pattern_message(na: str, nb: str, ma, mb) -> str:
    common = int(np.intersect1d(ma.idx, mb.idx).size)
    return (f"phenotypes {na!r} ({ma.n_obs} samples) and {nb!r} ({mb.n_obs} samples) have different missing "
            f"values ({common} samples observed in both): the univariate matrix-free build has no cross forms "
            f"for them. Fit the pair on its common samples: pass the operator, Y and Z to "
            f"fit_bivariate_matrix_free (one more build for all such pairs), or use the exact path "
            f"(bigmm.fit_bivariate on a spectrum)")


def pair_measure(result, a, b) -> PairMeasure:
    """What K contributes to the bivariate REML of phenotypes ``a`` and ``b``, from the
    univariate matrix-free build (no pass over X).

    Parameters
    ----------
    result : MatrixFreeResult
        A :func:`bigmm.fit_matrix_free` (or :func:`bigmm.restore_matrix_free`) result; it keeps
        each missing-value pattern's quadrature model.
    a, b : str or int
        The two phenotypes, by name or column; they must share their missing values.

    Returns
    -------
    PairMeasure
        ``nodes``: the Ritz values θ of K from the pattern's ``[Z, Ỹ]`` block Lanczos (K as the
        fit's operator applies it, unnormalised: h² is on the scale of the univariate fit's);
        ``G`` ((c + 2) x dim T): ``[Z, y_a, y_b]ᵀ f(K) [Z, y_a, y_b] ≈ G diag(f(θ)) Gᵀ`` with the
        original y (the OLS shift and the fit's unit scale undone); ``n``, ``c``: the pattern's
        samples and covariates; ``logdet``: ``h ↦ (L, L', L'')`` of ``log det(hK + (1 − h)I)``
        on those samples by the probes (control variates and deflation included, exactly as in
        the univariate fit); ``logdet_per_probe``: ``h (P,) ↦ (N, P)``, each probe's own
        estimate of the log det (their mean is ``L``).

    Raises
    ------
    CrossPatternError
        If a and b have different missing values (the message names the pair and what to do).

    Notes
    -----
    With ``B = [Z, Ỹ]`` the fit's start block and ``y_j = s_j (ỹ_j + Z t_j)`` (``t_j`` the OLS
    coefficients removed, ``s_j`` the unit scale), ``[Z, y_a, y_b] = B M`` for a fixed M, so
    ``[Z, y_a, y_b]ᵀ f(K) [Z, y_a, y_b] = Mᵀ Bᵀ f(K) B M ≈ (Mᵀ G) diag(f(θ)) (Mᵀ G)ᵀ``: the rows
    of G are mapped, exact once the Krylov space is exhausted, otherwise the block Gauss rule's
    error (the one the univariate fit converged on). Cost O((c + 2) dim T).
    """
    ma, ja, sa, na = _locate(result, a)
    mb, jb, sb, nb = _locate(result, b)
    if ma is not mb:
        raise CrossPatternError(_cross_pattern_message(na, nb, ma, mb))
    return measure_from_model(ma, ja, jb, sa, sb)


def measure_from_model(mdl, ja: int, jb: int, scale_a: float = 1.0, scale_b: float = 1.0) -> PairMeasure:
    """The :class:`PairMeasure` of columns ``ja``, ``jb`` of one pattern's quadrature model
    (:class:`bigmm.mf_likelihood.QuadratureModel`), y_j = scale_j (ỹ_j + Z shift_j)."""
    GZ, GY, shift = mdl.rule.GZ, mdl.rule.GY, mdl.shift
    rows = [scale_a * (GY[ja] + shift[:, ja] @ GZ), scale_b * (GY[jb] + shift[:, jb] @ GZ)]
    G = np.vstack([GZ, *rows])
    return PairMeasure(nodes=np.asarray(mdl.rule.theta, dtype=np.float64).copy(), G=G, n=int(mdl.n_obs),
                       c=int(mdl.c), logdet=_Logdet(mdl.slq), logdet_per_probe=_LogdetPerProbe(mdl.slq))


class _Logdet:
    """``h ↦ (L, L', L'')`` of log det(hK + (1 − h)I) from a :class:`LogdetRule`, optionally with
    probe ``drop`` left out (the delete-one-probe estimate of the jackknife).

    The full estimate is folded once into one discrete measure (the rule's sum rearranged): with
    the deflated Rayleigh values ``s`` (weight 1), every probe's Gauss nodes ``θ_jt`` (weight
    ``τ²_jt / N``) and the Ritz control variate's nodes ``ϑ_r`` (weight ``−mean_j dev_jr``),

        L(h) = Σ_i ω_i log(h ν_i + 1 − h) + a(h) α + b(h) β,

    ``a + bλ`` the linear control variate, ``α = n_⊥ − Σ ω`` and ``β = tr K_⊥ − Σ ω ν`` over the
    probe and Ritz nodes. It is the same number as :meth:`LogdetRule.logdet` (to round-off) at a
    fraction of its cost, which matters because a pair's fit evaluates it a hundred times or more.
    """

    def __init__(self, slq, drop: int | None = None):
        self.slq, self.drop = slq, drop
        nodes, weights = [np.asarray(slq.sd, dtype=np.float64)], [np.ones(len(slq.sd))]
        self.alpha = self.beta = 0.0
        self.tail = slq.n_perp > 0 and slq.N > 0
        if self.tail:
            th, w = np.asarray(slq.nodes).ravel(), np.asarray(slq.weights).ravel() / slq.N
            rt = np.asarray(slq.ritz_theta, dtype=np.float64)
            rw = -np.asarray(slq.ritz_dev, dtype=np.float64).reshape(slq.N, rt.size).mean(axis=0)
            nodes += [th, rt]
            weights += [w, rw]
            trp = slq.trK_perp if np.isfinite(slq.trK_perp) else 0.0
            self.alpha = slq.n_perp - float(w.sum() + rw.sum())
            self.beta = trp - float(w @ th + rw @ rt)
        self.nu = np.concatenate(nodes)
        self.omega = np.concatenate(weights)

    def _full(self, h: np.ndarray):
        d = h[..., None] * self.nu + (1.0 - h)[..., None]
        t = (self.nu - 1.0) / d
        L = np.log(d) @ self.omega
        L1 = t @ self.omega
        L2 = -(t * t) @ self.omega
        if self.tail:
            a, a1, a2, b, b1, b2 = self.slq._cv(h)
            L, L1, L2 = L + a * self.alpha + b * self.beta, L1 + a1 * self.alpha + b1 * self.beta, \
                L2 + a2 * self.alpha + b2 * self.beta
        return L, L1, L2

    def __call__(self, h):
        h = np.asarray(h, dtype=np.float64)
        if self.drop is None:
            return self._full(h)
        L, L1, L2, y0, y1, y2 = self.slq.logdet(h, per_probe=True)
        N, j = y0.shape[-1], self.drop
        # mean over the other N − 1 probes = mean − (y_j − mean) / (N − 1)
        return tuple(v - (y[..., j] - y.mean(axis=-1)) / (N - 1) for v, y in ((L, y0), (L1, y1), (L2, y2)))


class _LogdetPerProbe:
    """``h (P,) ↦ (N, P)``: each probe's own estimate of the log det (the deterministic part,
    the control variates' known means, plus that probe's term); their mean is ``logdet(h)[0]``."""

    def __init__(self, slq):
        self.slq = slq

    def __call__(self, h):
        h = np.asarray(h, dtype=np.float64)
        L, _, _, y0, _, _ = self.slq.logdet(h, per_probe=True)
        if y0.shape[-1] == 0:
            return np.zeros((0,) + h.shape)
        return np.moveaxis(L[..., None] - y0.mean(axis=-1, keepdims=True) + y0, -1, 0)


# --------------------------------------------------------------------------------------
# Every pair: the fits and their Monte Carlo error
# --------------------------------------------------------------------------------------

#: the estimates whose Monte Carlo SD the jackknife reports (column ``<name>_se_mc``)
MC_FIELDS = ("sg_a", "sg_b", "cov_g", "ve_a", "ve_b", "cov_e", "h2_a", "h2_b", "rg", "re", "rp")


@dataclass(frozen=True, repr=False)
class BivariateMatrixFreeResult(BivariateResult):
    """Bivariate fits from a matrix-free build (:func:`fit_bivariate_matrix_free`).

    ``fits`` as :class:`bigmm.bivariate.BivariateResult`, plus per pair (same order) ``mc_sd``:
    the Monte Carlo SD of each estimate of :data:`MC_FIELDS` due to the log det probes
    (delete-one-probe jackknife; 0 where the log det is exact, NaN where it cannot be formed),
    and ``builds``: "univariate" (the pair's forms from the univariate build) or
    "common_samples" (from the build on the samples observed for both). The cost beyond the
    univariate build: ``extra_passes`` (passes over X of the common-samples build, 0 when every
    pair shares its missing values) and ``seconds`` (driver time of all pairs, jackknife included).
    """

    mc_sd: tuple = ()
    builds: tuple = ()
    probes: int = 0
    extra_passes: int = 0
    seconds: float = float("nan")

    def to_pandas(self):
        """The table of :meth:`BivariateResult.to_pandas` with ``<estimate>_se_mc`` columns and
        ``build``."""
        df = super().to_pandas()
        for k in MC_FIELDS:
            df[f"{k}_se_mc"] = [mc.get(k, float("nan")) for mc in self.mc_sd]
        df["build"] = list(self.builds)
        return df

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update(mc_sd=[{k: (v if math.isfinite(v) else None) for k, v in mc.items()} for mc in self.mc_sd],
                 builds=list(self.builds), probes=self.probes, extra_passes=self.extra_passes, seconds=self.seconds)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BivariateMatrixFreeResult":
        base = BivariateResult.from_dict(d)
        mc = tuple({k: (float("nan") if v is None else float(v)) for k, v in m.items()} for m in d.get("mc_sd", ()))
        return cls(fits=base.fits, method=base.method, notes=base.notes, mc_sd=mc, builds=tuple(d.get("builds", ())),
                   probes=int(d.get("probes", 0)), extra_passes=int(d.get("extra_passes", 0)),
                   seconds=float(d.get("seconds", float("nan"))))


def fit_bivariate_matrix_free(result, pairs="all", *, op=None, Y=None, Z=None, deflate=None,
                              jackknife: str | None = "newton", constrain: bool = True, lrt: bool = True,
                              tol: float = 1e-10, max_iter: int = 100,
                              workers: int | None = 1, checkpoint=None) -> BivariateMatrixFreeResult:
    """Bivariate REML (genetic correlation) of every pair of phenotypes, or of ``pairs``, from a
    univariate matrix-free build.

    Parameters
    ----------
    result : MatrixFreeResult
        The :func:`bigmm.fit_matrix_free` (or :func:`bigmm.restore_matrix_free`) fit of the
        phenotypes; it keeps each missing-value pattern's quadrature model.
    pairs : "all" or a sequence of (a, b)
        Phenotype names or columns; "all": every pair a < b in the fit's column order.
    op, Y, Z, deflate : optional
        Only for pairs whose phenotypes have different missing values: the operator, phenotypes,
        covariates and deflation of the univariate fit. Those pairs are fitted on the samples
        observed for both from ONE more matrix-free build holding every such pair (the fit's
        probes, seed, tolerance and step limit); without ``op`` and ``Y`` they are refused
        (:class:`CrossPatternError`, naming the pair and what to do).
    jackknife : {"newton", "refit", None}
        Monte Carlo SD of the estimates by the delete-one-probe jackknife (no pass over X):
        "newton" takes one AI-REML step from the estimate on each delete-one likelihood (a pair
        estimated on the |r_g| = 1 boundary is refitted instead); "refit" refits each; None skips it.
    constrain, lrt, tol, max_iter
        As :func:`bigmm.bivariate.fit_pair`.
    workers : int or None
        Processes that fit the pairs (``concurrent.futures.ProcessPoolExecutor``, contiguous
        chunks of the pairs, BLAS to one thread in each); None: one per CPU core. 1 (default):
        in this process. The results do not depend on it (but for round-off: each process fits
        its pairs as one stack).
    checkpoint : object, optional
        For the common-samples build only (passed to :func:`bigmm.fit_matrix_free`, which saves
        its state after every Lanczos step and resumes from a state of the same inputs): an
        interrupted build is resumed after its last saved step instead of starting again.

    Returns
    -------
    BivariateMatrixFreeResult
        One :class:`bigmm.bivariate.BivariateFit` per pair, in the order asked, with its Monte
        Carlo SDs and the cost beyond the univariate build.

    Notes
    -----
    For a pair of one missing-value pattern the pattern's block Gauss rule gives
    ``[Z, y_a, y_b]ᵀ f(K) [Z, y_a, y_b]`` for every f and its probes ``log det(hK + (1 − h)I)``
    at every h (:func:`pair_measure`), so the bivariate likelihood, its score, AI matrix and
    maximiser need no pass over X. Cost per pair: O(M (c + 2)²) per AI iteration, M the dimension
    of the pattern's block tridiagonal matrix (steps x (c + phenotypes of the pattern)),
    independent of n; the pairs of a pattern are fitted together (:mod:`bigmm.bivariate_batch`:
    one array operation per step for a stack of pairs, the same iterations as
    :func:`bigmm.bivariate.fit_pair`, which fits any pair the stack does not finish), about 2–2.5 ms
    of CPU per pair without the LRTs and 5.5–6 ms with them at M ≈ 800 (docs/benchmarks.md); the
    "newton" jackknife adds N score evaluations (N the probes), a pair on the |r_g| = 1 boundary
    N refits (as one stack). The approximation is that of the
    univariate fit: the block Gauss rule (exact once the Krylov space is exhausted, converged
    where the univariate fits converged) and the probes' Monte Carlo error, which the jackknife
    measures: ``SD = √((N − 1)/N Σ_j (θ̂_(j) − θ̄)²)`` over the estimates ``θ̂_(j)`` without probe j.
    """
    from .bivariate import _pairs

    t0 = time.perf_counter()
    if jackknife not in ("newton", "refit", None):
        raise InputError(f"jackknife must be 'newton', 'refit' or None, not {jackknife!r}")
    names = list(result.phenotype_names)
    models = _models(result)
    pairs = [(names[i], names[j]) for i, j in _pairs(names, pairs)]
    where, cross = {}, []
    for a, b in pairs:
        ma, ja, sa, _ = _locate(result, a)
        mb, jb, sb, _ = _locate(result, b)
        if ma is mb:
            where[(a, b)] = (ma, ja, jb, sa, sb, 0, "univariate")
        else:
            cross.append((a, b))
    extra_passes = 0
    if cross:
        if op is None or Y is None:
            a, b = cross[0]
            more = f"{len(cross)} of the pairs asked for have different missing values, e.g.: " if len(cross) > 1 else ""
            raise CrossPatternError(more + _cross_pattern_message(a, b, _locate(result, a)[0], _locate(result, b)[0]))
        built, extra_passes = _common_sample_build(op, result, cross, Y, Z, deflate, checkpoint)
        where.update(built)
    kw = dict(covariate_names=tuple(result.covariate_names), constrain=constrain, tol=tol, max_iter=max_iter)
    tasks = [((a, b),) + where[(a, b)] for a, b in pairs]
    builds = [t[-1] for t in tasks]
    workers = _n_workers(workers, len(tasks))
    if workers == 1:
        done = _fit_pairs(tasks, lrt, jackknife, kw)
    else:
        # contiguous chunks, one per process: each model is sent to a process once with its chunk
        bounds = np.linspace(0, len(tasks), workers + 1).round().astype(int)
        with ProcessPoolExecutor(max_workers=workers) as ex:
            parts = [ex.submit(_fit_pairs, tasks[lo:hi], lrt, jackknife, kw)
                     for lo, hi in zip(bounds[:-1], bounds[1:])]
            done = [x for part in parts for x in part.result()]
    fits = [f for f, _ in done]
    mcs = [mc for _, mc in done]
    return BivariateMatrixFreeResult(
        fits=tuple(fits), method="matrix-free", mc_sd=tuple(mcs), builds=tuple(builds), probes=int(result.probes),
        extra_passes=extra_passes, seconds=round(time.perf_counter() - t0, 3),
        notes={"patterns": len(models), "pairs_common_samples": len(cross), "jackknife": jackknife,
               "univariate_converged": bool(result.converged),
               "constrained": constrain, "lanczos_steps": int(result.lanczos_steps), "workers": workers,
               "logl_convention": "Harville REML of the 2n stacked observations without the log det(X'X) term, "
                                  "X = I2 (x) Z"})


def _n_workers(workers, n_tasks: int) -> int:
    """The number of processes: ``workers`` (None: one per CPU core), at most one per pair."""
    if workers is None:
        workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise InputError(f"workers must be a positive number of processes (or None: one per CPU core), not {workers!r}")
    return max(1, min(int(workers), n_tasks))


#: fit the pairs of a pattern together (:mod:`bigmm.bivariate_batch`); False: one by one by
#: :func:`bigmm.bivariate.fit_pair` (the reference, and what a pair the batch cannot finish gets)
_BATCHED = True


def _fit_pairs(tasks: list, lrt: bool, jackknife, kw: dict) -> list:
    """[(fit, Monte Carlo SDs)] of each task ``((a, b), model, ja, jb, scale_a, scale_b, n_left_out, build)``,
    in order. Each phenotype's univariate REML on its pattern's measure is computed once and
    starts all its pairs. The pairs of one pattern are fitted together (:func:`_fit_batched`),
    any pair the batch does not finish by :func:`bigmm.bivariate.fit_pair`. BLAS runs on one
    thread for the call (in this process or a worker process): the arrays are small, and a second
    BLAS thread doubled the CPU time of all pairs of 100 phenotypes for 15% less wall time
    (docs/benchmarks.md); processes (``workers``) are the parallelism."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _fit_tasks(tasks, lrt, jackknife, kw)


def _fit_tasks(tasks: list, lrt: bool, jackknife, kw: dict) -> list:
    uni = {}
    out = _fit_batched(tasks, lrt, jackknife, kw, uni) if _BATCHED else [None] * len(tasks)
    for i, ((a, b), mdl, ja, jb, sa, sb, left, _build) in enumerate(tasks):
        if out[i] is not None:
            continue
        measure, offset = _residual_measure(mdl, ja, jb, sa, sb)
        starts = tuple(_start(uni, mdl, j, s) for j, s in ((ja, sa), (jb, sb)))
        fit = fit_pair(measure, names=(a, b), lrt=lrt, n_left_out=left, offset=offset, univariate=starts, **kw)
        mc = (_jackknife(measure, mdl.slq, fit, jackknife, dict(kw, names=(a, b), offset=offset, univariate=starts))
              if jackknife else {})
        out[i] = (fit, mc)
    return out


def _start(uni: dict, mdl, j: int, s: float):
    """The univariate REML (h², σ²_g, σ²_e) of column j of a pattern (unit scale s), computed once."""
    if (id(mdl), j) not in uni:
        uni[(id(mdl), j)] = _univariate(_residual_measure(mdl, j, j, s, s)[0], 0)
    return uni[(id(mdl), j)]


def _fit_batched(tasks: list, lrt: bool, jackknife, kw: dict, uni: dict) -> list:
    """[(fit, Monte Carlo SDs) or None] of each task: the pairs of each pattern fitted together by
    :func:`bigmm.bivariate_batch.fit_pairs_batched`, started as :func:`bigmm.bivariate.fit_pair`
    starts each, with the "newton" jackknife of the whole stack (:func:`_jackknife_batched`).
    None: a degenerate pair, or one the batch did not finish (fit_pair fits it)."""
    from .bivariate import DEGENERATE_R
    from .bivariate_batch import CHUNK_ELEMENTS, _Shared, fit_pairs_batched

    out = [None] * len(tasks)
    groups = {}
    for i, t in enumerate(tasks):
        groups.setdefault(id(t[1]), []).append(i)
    for idx in groups.values():
        mdl = tasks[idx[0]][1]
        GZ, GY, c, n = mdl.rule.GZ, mdl.rule.GY, int(mdl.c), int(mdl.n_obs)
        sh = _Shared(mdl.rule.theta, GZ, n, c, _Logdet(mdl.slq))
        M = sh.lam.size
        chunk = max(8, CHUNK_ELEMENTS // max(20 * M, 1))
        # each phenotype's residual after OLS on Z (the Gram matrix of its pairs, f ≡ 1)
        Szz = GZ @ GZ.T
        for lo in range(0, len(idx), chunk):
            part = idx[lo:lo + chunk]
            ja = np.array([tasks[i][2] for i in part])
            jb = np.array([tasks[i][3] for i in part])
            sa = np.array([tasks[i][4] for i in part])
            sb = np.array([tasks[i][5] for i in part])
            Gy = np.stack([sa[:, None] * GY[ja], sb[:, None] * GY[jb]], axis=1)  # (P, 2, M)
            Szy = Gy @ GZ.T  # (P, 2, c)
            R = Gy @ np.swapaxes(Gy, 1, 2) - Szy @ np.linalg.solve(Szz, np.swapaxes(Szy, 1, 2))
            R = R / (n - c)
            r_res = R[:, 0, 1] / np.sqrt(R[:, 0, 0] * R[:, 1, 1])
            good = np.abs(r_res) < DEGENERATE_R
            if not good.any():
                continue
            part = [i for i, g in zip(part, good) if g]
            Gy, r_res = Gy[good], r_res[good]
            theta0, floors = [], []
            for i, r in zip(part, r_res):
                (_, ga, ea), (_, gb, eb) = (_start(uni, mdl, tasks[i][2], tasks[i][4]),
                                            _start(uni, mdl, tasks[i][3], tasks[i][5]))
                fl_a, fl_b = 1e-3 * (ga + ea), 1e-3 * (gb + eb)
                ga0, gb0, ea0, eb0 = max(ga, fl_a), max(gb, fl_b), max(ea, fl_a), max(eb, fl_b)
                rho = 0.5 * float(r)
                theta0.append([ga0, gb0, rho * math.sqrt(ga0 * gb0), ea0, eb0, rho * math.sqrt(ea0 * eb0)])
                floors.append([fl_a, fl_b])
            offsets = np.stack([np.column_stack([tasks[i][4] * mdl.shift[:, tasks[i][2]],
                                                 tasks[i][5] * mdl.shift[:, tasks[i][3]]]) for i in part])
            theta0, floors = np.array(theta0), np.array(floors)
            fits = fit_pairs_batched(sh, Gy, theta0, floors, names=[tasks[i][0] for i in part],
                                     covariate_names=kw["covariate_names"], n_obs=n,
                                     n_left_out=[tasks[i][6] for i in part], offsets=offsets, lrt=lrt,
                                     constrain=kw["constrain"], ml=True, tol=kw["tol"], max_iter=kw["max_iter"])
            mcs = _jackknife_batched(fits, mdl.slq) if jackknife == "newton" else [None] * len(fits)
            if jackknife:  # "refit", or a fit on the boundary: the N delete-one fits of all such pairs together
                k = [q for q, (fit, mc) in enumerate(zip(fits, mcs)) if fit is not None and mc is None]
                for q, mc in zip(k, _jackknife_refits(mdl, sh, [tasks[part[q]] for q in k], uni, Gy[k], theta0[k],
                                                      floors[k], offsets[k], kw)):
                    mcs[q] = mc
            for i, fit, mc in zip(part, fits, mcs):
                if fit is not None:
                    out[i] = (fit, mc if jackknife else {})
    return out


class _LogdetDrop:
    """``(h, rows) ↦ (L, L', L'')`` of the log det without probe ``drops[row]`` for each row
    (:class:`_Logdet` with ``drop``, one probe per row of a stack)."""

    def __init__(self, slq, drops: np.ndarray):
        self.slq, self.drops = slq, drops

    def __call__(self, h, rows):
        L, L1, L2, y0, y1, y2 = self.slq.logdet(np.asarray(h, dtype=np.float64), per_probe=True)
        N = y0.shape[-1]
        j = self.drops[rows][:, None, None]  # h is (rows, 2)
        return tuple(v - (np.take_along_axis(y, j, axis=-1)[..., 0] - y.mean(axis=-1)) / (N - 1)
                     for v, y in ((L, y0), (L1, y1), (L2, y2)))


def _jackknife_refits(mdl, sh, tasks: list, uni: dict, Gy, theta0, floors, offsets, kw: dict) -> list:
    """The jackknife of :func:`_jackknife` by refitting (``"refit"``, or a fit on the boundary) of
    each pair of ``tasks``: the N delete-one fits of all of them as one stack
    (:func:`bigmm.bivariate_batch.fit_pairs_batched`, started as fit_pair starts them), any it
    does not finish by fit_pair. ``Gy``, ``theta0``, ``floors``, ``offsets``: the pairs' rows."""
    from .bivariate_batch import CHUNK_ELEMENTS, _Shared, fit_pairs_batched

    slq = mdl.slq
    N = int(slq.N) if slq.n_perp > 0 else 0
    if N == 0 or not tasks:
        return [{k: 0.0 for k in MC_FIELDS} for _ in tasks]
    Q = len(tasks)
    fits = []
    per = max(1, CHUNK_ELEMENTS // max(20 * sh.lam.size * N, 1))  # pairs per stack of Q x N rows
    for lo in range(0, Q, per):
        sel = np.arange(lo, min(Q, lo + per))
        rep = lambda x: np.repeat(np.asarray(x)[sel], N, axis=0)  # noqa: E731
        drops = _LogdetDrop(slq, np.tile(np.arange(N), sel.size))
        shj = _Shared(sh.lam, sh.Gz, sh.n, sh.c, None, logdet_rows=drops)
        fits += fit_pairs_batched(shj, rep(Gy), rep(theta0), rep(floors),
                                  names=[tasks[q][0] for q in sel for _ in range(N)],
                                  covariate_names=kw["covariate_names"], n_obs=sh.n,
                                  n_left_out=[tasks[q][6] for q in sel for _ in range(N)], offsets=rep(offsets),
                                  lrt=False, constrain=kw["constrain"], ml=False, tol=kw["tol"],
                                  max_iter=kw["max_iter"])
    out = []
    for q, ((a, b), _, ja, jb, sa, sb, _, _) in enumerate(tasks):
        rows = []
        for j in range(N):
            fj = fits[q * N + j]
            if fj is None:
                measure, off = _residual_measure(mdl, ja, jb, sa, sb)
                starts = (_start(uni, mdl, ja, sa), _start(uni, mdl, jb, sb))
                fj = fit_pair(replace(measure, logdet=_Logdet(slq, drop=j), logdet_per_probe=None), lrt=False,
                              ml=False, **dict(kw, names=(a, b), offset=off, univariate=starts))
            rows.append(_derived(_theta(fj)))
        mc = {}
        for k in MC_FIELDS:
            v = np.array([r[k] for r in rows])
            mc[k] = float(math.sqrt((N - 1) / N * np.sum((v - v.mean()) ** 2)))
        out.append(mc)
    return out


def _residual_measure(mdl, ja: int, jb: int, sa: float, sb: float):
    """The pair's measure with y_j replaced by its OLS residual on Z (``s_j ỹ_j``: REML does not
    depend on it, and it keeps the quadratic forms free of cancellation when y is far from 0),
    and the OLS coefficients ``s_j t_j`` (c x 2) that fit_pair adds back to the fixed effects."""
    GZ, GY = mdl.rule.GZ, mdl.rule.GY
    G = np.vstack([GZ, sa * GY[ja], sb * GY[jb]])
    m = PairMeasure(nodes=np.asarray(mdl.rule.theta, dtype=np.float64).copy(), G=G, n=int(mdl.n_obs),
                    c=int(mdl.c), logdet=_Logdet(mdl.slq), logdet_per_probe=_LogdetPerProbe(mdl.slq))
    return m, np.column_stack([sa * mdl.shift[:, ja], sb * mdl.shift[:, jb]])


def _common_sample_build(op, result, cross: list, Y, Z, deflate, checkpoint=None):
    """One more matrix-free build holding, for every pair of ``cross``, both phenotypes on the
    samples observed for both (pairs with the same common samples share a pattern, and all
    patterns share each pass). Returns {pair: (model, ja, jb, scale_a, scale_b, n_left_out,
    "common_samples")} and the passes it took."""
    from .mfreml import fit_matrix_free

    Y = np.asarray(Y, dtype=np.float64)
    names = list(result.phenotype_names)
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.shape != (result.n, len(names)):
        raise InputError(f"Y has shape {Y.shape}; the matrix-free fit has {result.n} samples and {len(names)} "
                         f"phenotypes: pass the Y of that fit")
    obs = ~np.isnan(Y)
    for j, nm in enumerate(names):
        if not np.array_equal(np.flatnonzero(obs[:, j]), _locate(result, nm)[0].idx):
            raise InputError(f"phenotype {nm!r}: Y's missing values are not those of the matrix-free fit; "
                             f"pass the Y of that fit")
    c = len(result.covariate_names)
    cols, keys, col_names = [], {}, []
    for a, b in cross:
        ia, ib = names.index(a), names.index(b)
        common = obs[:, ia] & obs[:, ib]
        if common.sum() < c + 3:
            raise InputError(f"phenotypes {a!r} and {b!r} are observed together on {int(common.sum())} samples: "
                             f"too few for a bivariate fit with {c} covariates; leave the pair out")
        for i, other in ((ia, b), (ib, a)):
            key = (i, common.tobytes())
            if key not in keys:
                keys[key] = len(cols)
                cols.append(np.where(common, Y[:, i], np.nan))
                col_names.append(f"{names[i]} (with {other}) #{len(cols)}")
    built = fit_matrix_free(op, np.column_stack(cols), Z, phenotype_names=col_names,
                            covariate_names=result.covariate_names, probes=result.probes,
                            max_steps=result.max_steps, tol=result.tol, deflate=deflate, seed=result.seed,
                            checkpoint=checkpoint)
    out = {}
    for a, b in cross:
        ia, ib = names.index(a), names.index(b)
        common = obs[:, ia] & obs[:, ib]
        ma, ja, sa, _ = _locate(built, keys[(ia, common.tobytes())])
        mb, jb, sb, _ = _locate(built, keys[(ib, common.tobytes())])
        assert ma is mb  # the same observed samples: one pattern
        out[(a, b)] = (ma, ja, jb, sa, sb, int(np.sum(obs[:, ia] ^ obs[:, ib])), "common_samples")
    return out, int(built.notes.get("passes_this_run", built.passes_over_X))


def _derived(theta: np.ndarray) -> dict:
    """The estimates of :data:`MC_FIELDS` from θ = (σ²_g,a, σ²_g,b, cov_g, σ²_e,a, σ²_e,b, cov_e)."""
    ga, gb, gab, ea, eb, eab = (float(x) for x in theta)
    nan = float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        return dict(zip(MC_FIELDS, (ga, gb, gab, ea, eb, eab, ga / (ga + ea), gb / (gb + eb),
                                    gab / math.sqrt(ga * gb) if ga > 0 and gb > 0 else nan,
                                    eab / math.sqrt(ea * eb) if ea > 0 and eb > 0 else nan,
                                    (gab + eab) / math.sqrt((ga + ea) * (gb + eb)))))


def _theta(fit) -> np.ndarray:
    return np.array([fit.sg_a, fit.sg_b, fit.cov_g, fit.ve_a, fit.ve_b, fit.cov_e], dtype=np.float64)


#: ∂(G₀, E₀)/∂θ_i for θ in :data:`bigmm.bivariate.PARAMS` order: (genetic?, 2 x 2 pattern)
_DTHETA = ((True, np.array([[1.0, 0.0], [0.0, 0.0]])), (True, np.array([[0.0, 0.0], [0.0, 1.0]])),
           (True, np.array([[0.0, 1.0], [1.0, 0.0]])), (False, np.array([[1.0, 0.0], [0.0, 0.0]])),
           (False, np.array([[0.0, 0.0], [0.0, 1.0]])), (False, np.array([[0.0, 1.0], [1.0, 0.0]])))


def _delete_one_scores(G0: np.ndarray, E0: np.ndarray, slq) -> np.ndarray:
    """``s_(j) − s`` at (G₀, E₀) for every probe j (N x 6): the change of the score when probe j
    is left out of the log det.

    Only the term ``−½ Σ_k log det(h_k K + (1 − h_k)I)`` of ℓ_R depends on the probes, with
    ``h_k = d_k / (1 + d_k)`` and ``d_k`` the eigenvalues of ``W G₀ Wᵀ`` (``W E₀ Wᵀ = I``). So
    ``∂/∂θ_i`` of its change is ``−½ Σ_k ΔL'_j(h_k) / (1 + d_k)² · ∂d_k/∂θ_i``, with
    ``∂d_k/∂θ_i = w_kᵀ (∂G₀/∂θ_i − d_k ∂E₀/∂θ_i) w_k`` and ``ΔL'_j = −(y'_j − ȳ') / (N − 1)``
    from the per-probe derivatives y' of the rule: one evaluation of the rule for all N probes.
    """
    Li = np.linalg.inv(np.linalg.cholesky(E0))
    d, Q = np.linalg.eigh(Li @ G0 @ Li.T)
    W = Q.T @ Li
    y1 = slq.logdet(d / (1.0 + d), per_probe=True)[4]  # (2, N)
    N = y1.shape[-1]
    dL1 = -(y1 - y1.mean(axis=-1, keepdims=True)) / (N - 1)
    dd = np.array([[W[k] @ (E if gen else -d[k] * E) @ W[k] for gen, E in _DTHETA] for k in range(2)])  # (2, 6)
    return -0.5 * (dL1 / (1.0 + d[:, None]) ** 2).T @ dd


def _derived_rows(t: np.ndarray) -> np.ndarray:
    """:func:`_derived` of a stack of θ (..., 6): the estimates of :data:`MC_FIELDS` (..., 11)."""
    ga, gb, gab, ea, eb, eab = np.moveaxis(t, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rg = np.where((ga > 0) & (gb > 0), gab / np.sqrt(np.abs(ga * gb)), np.nan)
        re = np.where((ea > 0) & (eb > 0), eab / np.sqrt(np.abs(ea * eb)), np.nan)
        rp = (gab + eab) / np.sqrt((ga + ea) * (gb + eb))
        return np.stack([ga, gb, gab, ea, eb, eab, ga / (ga + ea), gb / (gb + eb), rg, re, rp], axis=-1)


def _jackknife_batched(fits: list, slq) -> list:
    """The "newton" :func:`_jackknife` of every fit of one pattern at once (None for a fit that is
    None, on the boundary or without a finite covariance: :func:`_jackknife` does those)."""
    from .bivariate_batch import decouple
    from .bivariate_likelihood import _KIND, _PATTERN

    N = int(slq.N) if slq.n_perp > 0 else 0
    out = [None] * len(fits)
    rows = [i for i, f in enumerate(fits) if f is not None and not f.boundary
            and np.all(np.isfinite(np.array(f.covariance, dtype=np.float64)))]
    if not rows:
        return out
    if N == 0:
        for i in rows:
            out[i] = {k: 0.0 for k in MC_FIELDS}
        return out
    theta = np.array([_theta(fits[i]) for i in rows])
    cov = np.array([fits[i].covariance for i in rows], dtype=np.float64)
    ok, W, d = decouple(theta)
    y1 = slq.logdet(d / (1.0 + d), per_probe=True)[4]  # (P, 2, N)
    dL1 = -(y1 - y1.mean(axis=-1, keepdims=True)) / (N - 1)
    # ∂d_k/∂θ_i = w_kᵀ (∂G₀/∂θ_i − d_k ∂E₀/∂θ_i) w_k, as in _delete_one_scores
    dd = np.einsum("pka,iab,pkb->pki", W, _PATTERN, W) * np.where(_KIND == 0, 1.0, -d[:, :, None])
    ds = -0.5 * np.einsum("pkn,pki->pni", dL1 / (1.0 + d[:, :, None]) ** 2, dd)  # (P, N, 6)
    v = _derived_rows(theta[:, None, :] + ds @ np.swapaxes(cov, 1, 2))  # (P, N, 11)
    sd = np.sqrt((N - 1) / N * np.sum((v - v.mean(axis=1, keepdims=True)) ** 2, axis=1))
    for k, i in enumerate(rows):
        if ok[k]:
            out[i] = {name: float(x) for name, x in zip(MC_FIELDS, sd[k])}
    return out


def _jackknife(measure: PairMeasure, slq, fit, how: str, kw: dict) -> dict:
    """Delete-one-probe jackknife SD of each estimate of :data:`MC_FIELDS` (no pass over X).

    The delete-one likelihood ℓ_(j) differs from ℓ only in its log det (the mean over the other
    N − 1 probes, :class:`_Logdet`). "newton": ``θ̂_(j) = θ̂ + AI⁻¹ (s_(j) − s)`` with s, s_(j)
    the scores of ℓ and ℓ_(j) at θ̂ (:func:`_delete_one_scores`) and AI⁻¹ the fit's covariance
    (one AI-REML step; its error is second order in the probe's share); "refit" (and a fit on the |r_g| = 1 boundary, where the
    step would leave the constraint): fit_pair on each delete-one measure. 0 without probes (the
    log det is exact); NaN for a degenerate pair.
    """
    N = int(slq.N) if slq.n_perp > 0 else 0
    if fit.boundary == "degenerate":
        return {k: float("nan") for k in MC_FIELDS}
    if N == 0:
        return {k: 0.0 for k in MC_FIELDS}
    theta = _theta(fit)
    cov = np.array(fit.covariance, dtype=np.float64)
    newton = how == "newton" and not fit.boundary and np.all(np.isfinite(cov))
    rows = []
    if newton:
        for ds in _delete_one_scores(fit.G0, fit.E0, slq):
            rows.append(_derived(theta + cov @ ds))
    else:
        for j in range(N):
            # only θ̂_(j) is used: no LRT or ML refits; started, as the full fit, from the univariate fits
            fj = fit_pair(replace(measure, logdet=_Logdet(slq, drop=j), logdet_per_probe=None), lrt=False, ml=False,
                          **kw)
            rows.append(_derived(_theta(fj)))
    out = {}
    for k in MC_FIELDS:
        v = np.array([r[k] for r in rows])
        out[k] = float(math.sqrt((N - 1) / N * np.sum((v - v.mean()) ** 2)))
    return out
