"""Random-effect predictions (BLUP) with several variance components (docs/math.md §14).

At the REML estimates θ̂ = (σ²_1, ..., σ²_m, σ²_e) of a phenotype, with ``o`` its observed samples,
``V_oo = Σ_j σ²_j K_j[o, o] + σ²_e I`` and ω̂ the GLS fixed effects at θ̂:

    P y = V_oo⁻¹ (y_o − Z_o ω̂)               (the REML projection of y; 0 outside o)
    û_j = σ²_j K_j[:, o] P y                 (every sample of K_j's rows, observed or not)
    ĝ = Σ_j û_j,        ê = σ²_e P y         (the residual, on the observed samples)

so that ``y_o = Z_o ω̂ + ĝ_o + ê_o`` exactly (``V_oo P y = y_o − Z_o ω̂``). These are GCTA
``--reml-pred-rand``'s random effects (its ``.indi.blp`` has, per component and then for the
residual, ``σ²_j (P y)_i`` and ``û_j``), and with m = 1 the genetic values of
:func:`bigmm.genetic_values`: a sample without a value is predicted from the observed ones through
``K_j[miss, o]``, as there.

Two paths, one function (:func:`blup_components`): the exact one on dense GRMs (one Cholesky of
V_oo per phenotype, O(n_o³)), and the matrix-free one on a :class:`bigmm.ComponentsOperator`
(conjugate gradients on ``V_oo [Z_o, y_o]`` at θ̂ for every phenotype together, one pass over the
genotypes per CG step, ``K_j x`` accumulated alongside x by :class:`bigmm.mf_cg.CGSystem`; one more
pass for the samples without a value, all components and phenotypes in it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import solve_triangular

from .errors import InputError
from .mf_cg import CGSystem, IndefiniteError

log = logging.getLogger("bigmm")

#: CG stops a column at ‖b − V x‖ / ‖b‖ < CG_TOL: the predictions' relative error is of the
#: order of CG_TOL (measured on tests/test_component_blup.py's 60-sample, 3-component cohort:
#: max |ĝ_mf − ĝ_exact| / max |ĝ_exact| = 6e-6, 1e-8, 9e-11 at cg_tol 1e-5, 1e-8, 1e-10, in 11,
#: 16, 20 passes)
CG_TOL = 1e-8
#: CG steps (passes over the genotypes) at most; a solve that has not converged then is reported
MAX_CG_STEPS = 1000


@dataclass(frozen=True)
class ComponentsBlup:
    """Predictions of q phenotypes over n samples with m variance components
    (:func:`blup_components`).

    ``components[j]`` (n x q) is û_j of component j, ``genetic_values`` their sum ĝ, ``residuals``
    ê = σ²_e P y (NaN for a sample without a value), ``weights`` P y (0 for a sample without a
    value), ``sigma2`` (q x (m + 1)) the θ̂ they were made at, ``omega`` (q x c) the GLS fixed
    effects there.
    """

    names: list
    component_names: list
    components: np.ndarray  # (m, n, q)
    genetic_values: np.ndarray  # (n, q)
    residuals: np.ndarray  # (n, q)
    weights: np.ndarray  # (n, q)
    sigma2: np.ndarray  # (q, m + 1)
    omega: np.ndarray  # (q, c)
    notes: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        m, n, q = self.components.shape
        return (f"ComponentsBlup({q} phenotype{'s' if q != 1 else ''} x {n} samples, {m} components: "
                f"{', '.join(map(str, self.component_names))})")

    def columns(self) -> tuple[list[str], np.ndarray]:
        """(names, values n x k) of the table a run writes (``blup.tsv``): first the total ĝ of
        each phenotype (named as the phenotype, as a single-component BLUP), then per phenotype
        each component's û_j (``<phenotype>_<component>``) and the residual ê
        (``<phenotype>_residual``)."""
        names = list(map(str, self.names))
        cols = [self.genetic_values]
        for k, nm in enumerate(self.names):
            names += [f"{nm}_{c}" for c in self.component_names] + [f"{nm}_residual"]
            cols += [self.components[:, :, k].T, self.residuals[:, k:k + 1]]
        return names, np.hstack(cols)

    def to_pandas(self, sample_ids=None):
        """:meth:`columns` as a pandas DataFrame; ``sample_ids`` ((FID, IID) pairs) adds FID and IID."""
        from .reml import _pandas

        names, values = self.columns()
        df = _pandas().DataFrame(values, columns=names)
        if sample_ids is not None:
            ids = list(sample_ids)
            if len(ids) != len(df):
                raise InputError(f"{len(ids)} sample IDs for {len(df)} predictions")
            df.insert(0, "IID", [i for _, i in ids])
            df.insert(0, "FID", [f for f, _ in ids])
        return df


# --------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------

def _theta(fit, Y: np.ndarray, m: int) -> tuple[np.ndarray, list, list | None]:
    """θ̂ per phenotype (q x (m + 1)), the phenotype names and the component names of ``fit``
    (a ComponentsResult, or θ itself), checked against Y's columns and the m components."""
    q = Y.shape[1]
    fits = getattr(fit, "fits", None)
    if fits is None:
        theta = np.atleast_2d(np.asarray(fit, dtype=np.float64))
        if theta.shape != (q, m + 1):
            raise InputError(f"blup_components: theta must be (σ²_1..σ²_{m}, σ²_e) for each of the {q} "
                             f"phenotypes, shape ({q}, {m + 1}); got {theta.shape}")
        return theta, [f"pheno{k + 1}" for k in range(q)], None
    if len(fits) != q:
        raise InputError(f"blup_components: the fit has {len(fits)} phenotypes, Y {q} columns: give the Y the fit "
                         f"was made on")
    theta = np.empty((q, m + 1))
    for k, f in enumerate(fits):
        comps = getattr(f, "components", ())
        if len(comps) != m:
            raise InputError(f"blup_components: phenotype {f.name!r} was fitted with {len(comps)} components, "
                             f"the GRMs are {m}")
        n_obs = int(np.isfinite(Y[:, k]).sum())
        if f.n != n_obs:
            raise InputError(f"blup_components: phenotype {f.name!r} was fitted on {f.n} samples, Y's column {k + 1} "
                             f"has {n_obs} values: give the Y (NaN where missing) the fit was made on")
        theta[k] = [c.sigma2 for c in comps] + [f.sigma2_e]
    return theta, [f.name for f in fits], list(fit.component_names)


def _check(n: int, Y, Z):
    Y = np.asarray(Y, dtype=np.float64)
    Y = Y[:, None] if Y.ndim == 1 else Y
    Z = np.ones((n, 1)) if Z is None else np.asarray(Z, dtype=np.float64)
    Z = Z[:, None] if Z.ndim == 1 else Z
    if Y.shape[0] != n or Z.shape[0] != n:
        raise InputError(f"blup_components: Y has {Y.shape[0]} rows and Z {Z.shape[0]}; the GRMs {n} samples")
    obs = np.isfinite(Y)
    if not np.all(np.isfinite(Z[obs.any(axis=1)])):
        raise InputError("blup_components: Z has missing values on samples with a phenotype value")
    return Y, Z, obs


def _result(theta, names, cnames, U, PY, omega, obs, notes) -> ComponentsBlup:
    """The predictions from θ̂ and û_j / σ²_j = K_j P y (``U``, m x n x q)."""
    U = U * theta[:, :-1].T[:, None, :]
    E = np.where(obs, PY * theta[:, -1], np.nan)
    return ComponentsBlup(names=list(names), component_names=list(cnames), components=U,
                          genetic_values=U.sum(axis=0), residuals=E, weights=PY, sigma2=theta, omega=omega,
                          notes=notes)


# --------------------------------------------------------------------------------------
# the exact path: dense GRMs
# --------------------------------------------------------------------------------------

def _exact(Ks: list, Y, Z, obs, theta) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K_j P y (m, n, q), P y (n, q) and ω̂ (q, c): one Cholesky of V_oo per phenotype."""
    n, q = Y.shape
    KPy, PY, omega = np.zeros((len(Ks), n, q)), np.zeros((n, q)), np.zeros((q, Z.shape[1]))
    for k in range(q):
        o = np.flatnonzero(obs[:, k])
        V = np.zeros((o.size, o.size))
        for K, t in zip(Ks, theta[k, :-1]):
            V += t * K[np.ix_(o, o)]
        V.flat[::o.size + 1] += theta[k, -1]
        try:
            L = np.linalg.cholesky(V)  # NumPy's LAPACK (see vcreml.evaluate)
        except np.linalg.LinAlgError:
            raise InputError(f"blup_components: V is not positive definite at the variances of phenotype "
                             f"{k + 1} ({', '.join(f'{t:.4g}' for t in theta[k])})") from None
        del V
        B = np.column_stack([Z[o], Y[o, k]])
        X = solve_triangular(L, solve_triangular(L, B, lower=True), lower=True, trans="T")
        c = Z.shape[1]
        omega[k] = np.linalg.solve(Z[o].T @ X[:, :c], Z[o].T @ X[:, c])
        PY[o, k] = X[:, c] - X[:, :c] @ omega[k]
    for j, K in enumerate(Ks):
        KPy[j] = K @ PY  # 0 outside o: K_j[:, o] P y for every sample
    return KPy, PY, omega


# --------------------------------------------------------------------------------------
# the matrix-free path: conjugate gradients on passes over the genotypes
# --------------------------------------------------------------------------------------

def _block(n: int, pieces: list) -> np.ndarray:
    """The pass block: each (rows, columns) piece in its own columns, zero outside its rows."""
    M = np.zeros((n, sum(p.shape[1] for _, p in pieces)))
    c0 = 0
    for rows, p in pieces:
        M[rows, c0:c0 + p.shape[1]] = p
        c0 += p.shape[1]
    return M


def _matrix_free(op, Y, Z, obs, theta, cg_tol: float, max_steps: int):
    """K_j P y (m, n, q), P y, ω̂ and the notes, from CG solves of ``V_oo x = [Z_o, y_o]`` at θ̂."""
    n, q = Y.shape
    c, m = Z.shape[1], int(op.m)
    rows = [np.flatnonzero(obs[:, k]) for k in range(q)]
    systems = []
    for k in range(q):
        s = CGSystem(np.column_stack([Z[rows[k]], Y[rows[k], k]]), m)
        s.restart(theta[k], None, cg_tol)
        systems.append(s)
    passes = 0
    if hasattr(op, "plan"):
        op.plan(q * (c + 1))
    while passes < max_steps:
        todo = [k for k in range(q) if systems[k].active.any()]
        if not todo:
            break
        KM, _ = op.apply(_block(n, [(rows[k], systems[k].directions()) for k in todo]),
                         desc=f"components BLUP: CG step {passes + 1}")
        passes += 1
        c0 = 0
        for k in todo:
            w = int(systems[k].active.sum())
            try:
                systems[k].absorb(KM[:, rows[k], c0:c0 + w], cg_tol)
            except IndefiniteError:
                raise InputError(f"blup_components: V is not positive definite at the variances of phenotype "
                                 f"{k + 1}") from None
            c0 += w
    residual = max(s.residual() for s in systems)
    if residual > cg_tol:
        log.warning("components BLUP: conjugate gradients stopped after %d steps at relative residual %.2e "
                    "(asked %.0e): the predictions carry that error", passes, residual, cg_tol)
    KPy, PY, omega = np.zeros((m, n, q)), np.zeros((n, q)), np.zeros((q, c))
    for k, s in enumerate(systems):
        o, X, KX = rows[k], s.X, s.KX
        omega[k] = np.linalg.solve(Z[o].T @ X[:, :c], Z[o].T @ X[:, c])
        PY[o, k] = X[:, c] - X[:, :c] @ omega[k]
        KPy[:, o, k] = KX[:, :, c] - KX[:, :, :c] @ omega[k]  # K_j x accumulated alongside x
    if not obs.all():  # K_j[miss, o] P y: one pass, every component and phenotype in it
        KPy = op.apply(PY, desc="components BLUP: samples without a value")[0]
        passes += 1
    return KPy, PY, omega, {"passes": passes, "cg_steps": passes - int(not obs.all()), "cg_tol": cg_tol,
                            "cg_residual": residual, "converged": residual <= cg_tol}


def blup_components(K, Y, Z=None, fit=None, *, component_names=None, cg_tol: float = CG_TOL,
                    max_steps: int = MAX_CG_STEPS) -> ComponentsBlup:
    """BLUP of each variance component's random effect, their sum and the residual, at a fit's
    REML estimates.

    Parameters
    ----------
    K : sequence of m (n, n) arrays, or a ComponentsOperator / DenseComponentsOperator
        The GRMs the fit was made on, over the n samples of Y's rows (predictions are made for
        all n, with or without a phenotype value); an operator gives the matrix-free path.
    Y : (n,) or (n, q) array
        The phenotypes the fit was made on, NaN where missing.
    Z : (n, c) array, optional
        The fixed effects the fit was made on (default: intercept only).
    fit : ComponentsResult or array
        :func:`bigmm.fit_components` or :func:`bigmm.fit_components_matrix_free` of these Y, Z and
        GRMs; or θ itself, (σ²_1, ..., σ²_m, σ²_e) per phenotype, a (q, m + 1) array.
    component_names : sequence of str, optional
        With θ given as an array (a fit names its components).
    cg_tol, max_steps
        Matrix-free path: CG stops each column at relative residual ``cg_tol`` or after
        ``max_steps`` steps (reported in ``notes`` and logged if not converged).

    Returns
    -------
    ComponentsBlup
        ``components`` (m x n x q), ``genetic_values``, ``residuals``, ``weights`` = P y.

    Notes
    -----
    ``P y = V_oo⁻¹ (y_o − Z_o ω̂)``, ``û_j = σ²_j K_j[:, o] P y``, ``ê = σ²_e P y`` (module
    docstring). Exact path: one Cholesky of V_oo per phenotype (n_o³/3 flops, two n_o x n_o
    arrays) and m products K_j P y (2 m n² q flops). Matrix-free path: CG on
    ``V_oo [Z_o, y_o]`` for every phenotype at once, one pass over the genotypes per step (c + 1
    vectors per phenotype; warm starts from the fit's own solves are not used: they are at the
    iterate before the last), ``K_j x`` accumulated alongside x; when some sample has no value,
    one more pass applies every K_j to P y of every phenotype.

    Examples
    --------
    >>> import numpy as np, bigmm
    >>> rng = np.random.default_rng(1)
    >>> X = rng.normal(size=(200, 600))
    >>> Ks = [X[:, :300] @ X[:, :300].T / 300, X[:, 300:] @ X[:, 300:].T / 300]
    >>> y = X[:, :300] @ rng.normal(0, np.sqrt(0.5 / 300), 300) + rng.normal(0, np.sqrt(0.5), 200)
    >>> fit = bigmm.fit_components(Ks, y, component_names=["a", "b"])
    >>> b = bigmm.blup_components(Ks, y, None, fit)
    >>> b.components.shape, b.component_names
    ((2, 200, 1), ['a', 'b'])
    >>> bool(np.allclose(b.genetic_values + b.residuals + b.omega[0], y[:, None]))   # y = Zω̂ + ĝ + ê
    True
    """
    if fit is None:
        raise InputError("blup_components needs the fit (or θ) whose variances the predictions are made at")
    dense = not hasattr(K, "apply")
    if dense:
        Ks = [np.asarray(k, dtype=np.float64) for k in K]
        if not Ks or any(k.ndim != 2 or k.shape != Ks[0].shape or k.shape[0] != k.shape[1] for k in Ks):
            raise InputError("blup_components: K must be m square GRMs of the same size, or a components operator")
        n, m = Ks[0].shape[0], len(Ks)
    else:
        n, m = int(K.n), int(K.m)
    Y, Z, obs = _check(n, Y, Z)
    theta, names, cnames = _theta(fit, Y, m)
    cnames = cnames or (list(component_names) if component_names is not None
                        else list(getattr(K, "names", None) or [f"K{j + 1}" for j in range(m)]))
    if len(cnames) != m:
        raise InputError(f"blup_components: {len(cnames)} component names for {m} GRMs")
    if dense:
        KPy, PY, omega = _exact(Ks, Y, Z, obs, theta)
        notes = {"path": "exact"}
    else:
        KPy, PY, omega, notes = _matrix_free(K, Y, Z, obs, theta, float(cg_tol), int(max_steps))
        notes["path"] = "matrix_free"
    return _result(theta, names, cnames, KPy, PY, omega, obs, notes)
