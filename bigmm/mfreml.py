"""Matrix-free REML: block Lanczos quadrature on the GRM operator, no spectrum of K.

Model ``y = Z ω + g + e`` with ``Var(y) = σ²_g K + σ²_e I = σ² H(h)``,
``H(h) = h K + (1 − h) I``, ``h = h² = σ²_g / σ²``. The σ²-profiled restricted
log-likelihood (Harville's form without ``log det ZᵀZ``, the convention of
:mod:`bigmm.reml`, constants included)

    ℓ_R(h) = −½ [ (n − c)(log(2π σ̂²) + 1) + log det H + log det(ZᵀH⁻¹Z) ],
    σ̂² = yᵀPy / (n − c),   yᵀPy = yᵀH⁻¹y − yᵀH⁻¹Z (ZᵀH⁻¹Z)⁻¹ ZᵀH⁻¹y,

is a function of matrix functions of K only:

* the quadratic forms ``Bᵀ f(K) B`` of the block ``B = [Z, Y]`` with
  ``f(λ) = 1 / (hλ + 1 − h)``, by block Gauss quadrature: block Lanczos on K
  started at ``B = Q₀R₀`` gives a block tridiagonal ``T`` (its eigenpairs
  ``θ, S``) and ``Bᵀ f(K) B ≈ R₀ᵀ E₁ᵀ f(T) E₁ R₀``. The Krylov space does not
  depend on h: after one eigendecomposition of ``T`` every h costs O(dim T · b);
* ``log det H = tr log(hK + 1 − h)`` by stochastic Lanczos quadrature (SLQ)
  with Rademacher probes, optionally deflated by k orthonormal vectors U, with
  the linear part of ``log(hλ + 1 − h)`` (whose trace is known exactly from
  ``tr K``) and the converged Ritz pairs of the ``[Z, Y]`` block taken out as
  control variates.

Each Lanczos step applies K ONCE to one block holding every recurrence's
current vectors side by side (the ``[Z, Y]`` block of every missing-value
pattern and every probe), so one step is one pass over the genotypes.

See :func:`fit_matrix_free` for the algorithm, its costs and its outputs, and
:func:`restore_matrix_free` for a finished fit rebuilt from its saved state without a pass.
The pieces: :mod:`bigmm.lanczos` (the block and probe recurrences), :mod:`bigmm.mf_quadrature`
(the Gauss rules), :mod:`bigmm.mf_pattern` (one missing-value pattern: its recurrences,
deflation, Haseman–Elston and its part of the saved state), :mod:`bigmm.mf_likelihood` (ℓ_R,
its maximum and its information) and :mod:`bigmm.mf_solver` (the solver's steps).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.special import chdtrc  # chi2.sf without importing scipy.stats (0.8 s at start-up)

from .errors import InputError
from .lanczos import RANK_TOL  # noqa: F401 (the solver's constants, importable from here as before)
from .mf_likelihood import (H2_MAX, INFO_H2_MAX, LOG2PI, MAX_NEWTON, QuadratureModel, information,  # noqa: F401
                            jackknife_se, maximise, probe_derivatives, upper_boundary)
from .mf_quadrature import RITZ_MAX, RITZ_TOL  # noqa: F401
from .mf_solver import (STATE_VERSION, Problem, SolverState, check_convergence, check_inputs,  # noqa: F401
                        check_operator, fingerprint, log_step, make_patterns, one_pass, plan_widest_pass,
                        restore_state, resume, save_state, state_matches, update_estimates)
from .results import MATRIX_FREE_COLUMNS, TABLE_COLUMNS, FitsResult, FixedEffect, PhenotypeFit, information_covariance

log = logging.getLogger("bigmm")

LOGL_CONVENTION = "Harville REML without the log det(Z'Z) term"


#: Defaults chosen with ``scripts/studies/sim_matrix_free.py`` (docs/matrix_free.md): n = 5,000,
#: p = 10,000, an unrelated and a 10-population (F_ST = 0.05) cohort, h² ∈ {0.2, 0.5, 0.8}, 100
#: replicates each, against exact REML on the same phenotypes. Probes: N = 30 gave Monte Carlo
#: SD / statistical SE ≤ 0.10 and efficiency Var(ĥ²_exact)/Var(ĥ²_mf) ≥ 0.976 (paired: ≥ 0.992)
#: in all six rows; N = 10 met the goal (≤ ¼, ≥ 0.95) only narrowly (≤ 0.17, ≥ 0.956), at the
#: same number of passes.
DEFAULT_PROBES = 30
#: Passes over X at most: at tol = 1e-4 the study converged in 13–14 steps (unrelated) and 20–22
#: (structured, no deflation; 14–15 deflated by the top 20 eigenvectors).
DEFAULT_MAX_STEPS = 100
#: Convergence: |Δĥ²| < tol and |Δℓ_R| < 10·tol between consecutive steps, twice. 1e-3 saved
#: ~2–3 passes but its quadrature error was visible (RMS(ĥ²_mf − ĥ²_exact) up to 1.2x the MC SD,
#: unpaired efficiency down to 0.925); at 1e-4 the error was within the MC SD everywhere.
DEFAULT_TOL = 1e-4
GRID_SIZE = 101
#: h2_se_mc / h2_se_stat above which a fit warns and says how many probes bring it to
#: MC_SE_RATIO_TARGET (the Monte Carlo SD falls as 1/√N): at 0.25, h2_se is 3% above the
#: statistical SE and the efficiency against exact REML about 1 / (1 + 0.25²) = 0.94
MC_SE_RATIO_WARN = 0.25
MC_SE_RATIO_TARGET = 0.1


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------

@dataclass(frozen=True, repr=False)  # PhenotypeFit's short repr
class MatrixFreeFit(PhenotypeFit):
    """Matrix-free REML estimates for one phenotype.

    Field names shared with :class:`bigmm.results.PhenotypeFit` have the same meaning. The
    additional fields: ``h2_se_stat`` (statistical SE from the REML information),
    ``h2_se_mc`` (Monte Carlo SD of ĥ² due to the log det probes, delete-one-probe
    jackknife), ``h2_se = sqrt(h2_se_stat² + h2_se_mc²)``; ``h2_he`` (Haseman–Elston moment
    estimate from the first pass); ``lanczos_steps`` and ``passes_over_X`` (the passes the
    result rests on, including those before a resume from a checkpoint); ``converged``
    with ``delta_h2`` and ``delta_logl`` (|Δĥ²| and |Δℓ_R| between the last two steps);
    ``probes``, ``deflation_rank`` and ``deflation_coupling`` (‖(I − UUᵀ) K U‖_F, NaN where
    unknown); ``h2_se_mc_ratio`` = h2_se_mc / h2_se_stat (falls as 1/√probes: ``probes ·
    (ratio / r)²`` probes give about r).
    """

    table_columns = TABLE_COLUMNS + MATRIX_FREE_COLUMNS

    h2_se_stat: float = float("nan")
    h2_se_mc: float = float("nan")
    h2_se_mc_ratio: float = float("nan")
    h2_he: float = float("nan")
    lanczos_steps: int = 0
    passes_over_X: int = 0
    converged: bool = False
    delta_h2: float = float("nan")
    delta_logl: float = float("nan")
    probes: int = 0
    deflation_rank: int = 0
    deflation_coupling: float = float("nan")
    reml_method: str = "matrix_free"


@dataclass(frozen=True, repr=False)  # FitsResult's short repr
class MatrixFreeResult(FitsResult):
    """Fits of every phenotype of one :func:`fit_matrix_free` call.

    Besides the fits it keeps, per missing-value pattern, the quadrature model (the
    eigenpairs of the block tridiagonal matrix, the kept ``[Z, Y]`` Krylov basis and the
    probes' Gauss rules) so that the likelihood can be evaluated at any h² and the BLUP
    weights formed without another pass over X (:meth:`blup_weights`,
    :func:`blup_matrix_free`). :meth:`to_dict` leaves the quadrature models out: a result
    read back by :meth:`from_dict` has the fits and the solver's summary only.
    """

    fit_type = MatrixFreeFit

    fits: tuple
    phenotype_names: tuple
    covariate_names: tuple
    n: int
    lanczos_steps: int
    passes_over_X: int
    converged: bool
    delta_h2: float
    delta_logl: float
    probes: int
    seed: int
    tol: float
    max_steps: int
    deflation_rank: int
    logl_convention: str = LOGL_CONVENTION
    reml_method: str = "matrix_free"
    notes: dict = field(default_factory=dict)
    models: tuple = field(default=(), repr=False, compare=False)
    #: the scale each phenotype was fitted on (y / scale; the fits are reported on y's scale)
    scales: tuple = field(default=(), repr=False, compare=False)
    #: σ̂² of each phenotype on that unit scale (the BLUP solves are made there)
    unit_sigma2: tuple = field(default=(), repr=False, compare=False)

    #: the solver's summary in :meth:`to_dict`, in its order (``covariate_names`` follows)
    SUMMARY = ("reml_method", "logl_convention", "n", "lanczos_steps", "passes_over_X", "converged", "delta_h2",
               "delta_logl", "probes", "seed", "tol", "max_steps", "deflation_rank")

    def _facts(self) -> dict:
        return {**{k: getattr(self, k) for k in self.SUMMARY}, "covariate_names": list(self.covariate_names)}

    @classmethod
    def _facts_from_dict(cls, d: dict, fits: tuple) -> dict:
        return {**{k: d[k] for k in cls.SUMMARY}, "covariate_names": tuple(d["covariate_names"]),
                "phenotype_names": tuple(f.name for f in fits)}

    def _head(self) -> str:
        return (f"matrix-free, n={self.n}, {self.lanczos_steps} Lanczos steps, {self.passes_over_X} passes over X, "
                f"{self.probes} probes, {'converged' if self.converged else 'NOT converged'}")

    def _where(self, name: str):
        for mdl in self.models:
            if name in mdl.names:
                return mdl, mdl.names.index(name)
        raise KeyError(name)

    def loglik_profile(self, h2, name: str) -> dict:
        """ℓ_R(h²) of phenotype ``name`` at the points ``h2`` from the final quadrature.

        Returns a dict of arrays over ``h2``: ``logl_reml``, ``logdet_H`` (the estimate of
        ``log det H`` on the phenotype's observed samples) and ``logdet_H_mc_se`` (its Monte
        Carlo SE over the probes, 0 where it is exact).
        """
        mdl, j = self._where(name)
        h = np.atleast_1d(np.asarray(h2, dtype=np.float64))
        ll = mdl.eval(h, shared=True, which=0)[0][:, j]
        if self.scales:  # the model is of y / a: back on y's scale
            ll = ll - (mdl.n_obs - mdl.c) * math.log(self.scales[self.phenotype_names.index(name)])
        L, _, _, y, _, _ = mdl.logdet(h, per_probe=True)
        N = y.shape[-1]
        se = y.std(axis=-1, ddof=1) / math.sqrt(N) if N > 1 else np.zeros_like(L)
        return {"h2": h, "logl_reml": ll, "logdet_H": L, "logdet_H_mc_se": se}

    def quadratic_forms(self, h2: float, name: str):
        """(ZᵀH⁻¹Z, ZᵀH⁻¹y, yᵀH⁻¹y) of phenotype ``name`` on its observed samples at h² by
        block Gauss quadrature (the original y, not the OLS residual the solver works with)."""
        mdl, j = self._where(name)
        A, b, c = mdl.quadratic_forms(float(h2), j)[:3]
        a = self.scales[self.phenotype_names.index(name)] if self.scales else 1.0
        return (A, b * a, c * a * a)

    def blup_weights(self) -> np.ndarray:
        """``w = V⁻¹ (y − Z ω̂)`` at the REML estimates (n x m, zero where y is missing).

        From the kept ``[Z, Y]`` Krylov basis ``Q``: ``H⁻¹ r ≈ Q f(T) Qᵀ r`` (the Lanczos /
        conjugate-gradient approximation, exact once the Krylov space is exhausted).
        """
        W = np.zeros((self.n, len(self.phenotype_names)))
        fits = {f.name: f for f in self.fits}
        m = len(self.phenotype_names)
        unit = np.asarray(self.unit_sigma2) if self.unit_sigma2 else \
            np.array([f.sigma2_g + f.sigma2_e for f in self.fits])
        scales = np.asarray(self.scales) if self.scales else np.ones(m)
        for mdl in self.models:
            h = np.array([fits[nm].h2 for nm in mdl.names])
            cols = np.asarray(mdl.cols)
            # the solves are of r' = r / a on the unit scale: V⁻¹ r = (σ'² H)⁻¹ r' / a
            W[np.ix_(mdl.idx, mdl.cols)] = mdl.blup_solve(h) / unit[cols] / scales[cols]
        return W


def blup_matrix_free(op, result: MatrixFreeResult) -> tuple[np.ndarray, np.ndarray]:
    """Genetic values ``ĝ = σ²_g K w`` and weights ``w = V⁻¹(y − Zω̂)`` of a matrix-free fit.

    Parameters
    ----------
    op : operator
        The same K as the fit (``n`` and ``apply(M, want_diag=False) -> (K M, diag)``).
    result : MatrixFreeResult

    Returns
    -------
    g_hat, w : (n, m) arrays
        ``w`` is zero where a phenotype is missing; ``ĝ`` is defined for every sample
        (``K_{·o} w_o``: the prediction for samples without a value too).

    Notes
    -----
    ``w`` comes from the fit's kept Krylov basis (no pass); ``K w`` takes one pass over X.
    """
    if int(op.n) != result.n:
        raise InputError(f"the operator has {op.n} samples, the fit {result.n}")
    w = result.blup_weights()
    KW, _ = op.apply(w, want_diag=False)
    sg = np.array([f.sigma2_g for f in result.fits])
    return np.asarray(KW) * sg, w




# --------------------------------------------------------------------------------------
# The solver: its steps in the order they run (bigmm.mf_solver)
# --------------------------------------------------------------------------------------

def fit_matrix_free(op, Y, Z=None, *, phenotype_names: Sequence[str] | None = None,
                    covariate_names: Sequence[str] | None = None, probes: int = DEFAULT_PROBES,
                    max_steps: int = DEFAULT_MAX_STEPS, tol: float = DEFAULT_TOL, deflate=None,
                    seed: int = 0, grid_size: int = GRID_SIZE, checkpoint=None) -> MatrixFreeResult:
    """REML of h², σ²_g, σ²_e and the fixed effects by Lanczos quadrature on K, never forming K.

    Parameters
    ----------
    op : operator
        The GRM over the n samples of the model: an object with ``n`` (rows) and
        ``apply(M, want_diag=False) -> (K @ M, diag K or None)`` for an n x b float64 M (one
        call is one pass over the genotypes). Without a diagonal, ``mean_diag_K`` and ``pve``
        are NaN and the log det loses its control variate (more Monte Carlo error).
    Y : (n,) or (n, m) array
        Phenotypes; NaN marks a missing value. Each phenotype gets the exact model of its
        observed samples (``K_oo``).
    Z : (n, c) array, optional
        Fixed effects including the intercept (default: intercept only); no missing values.
    phenotype_names, covariate_names : sequence of str, optional
    probes : int
        Rademacher probes N per missing-value pattern for ``log det H`` (≥ 2).
    max_steps : int
        Lanczos steps (passes over X) at most (≥ 2).
    tol : float
        Convergence: ``max |Δĥ²| < tol`` and ``max |Δℓ_R| < 10 tol`` between consecutive steps
        for two consecutive steps.
    deflate : Spectrum or (U, s), optional
        k orthonormal vectors (n x k, k < n) with their Rayleigh values ``uᵢᵀKuᵢ`` (e.g. the
        top-k of :func:`bigmm.randomized_spectrum`); ``log det H`` is then exact on span(U)
        (up to the coupling ``‖(I − UUᵀ)KU‖``, second order) and estimated on the rest.
    seed : int
        Seed of the probes (recorded in the result).
    grid_size : int
        Points of the h² grid on [0, H2_MAX] before the 1-D refinement.
    checkpoint : object, optional
        With ``save(state)`` and ``load() -> state or None``: the full state (a dict with
        "meta", JSON-able, and "arrays", NumPy arrays) is saved after every step, and a run
        whose checkpoint holds a state of the same inputs resumes after that step, with the
        same results as an uninterrupted run. The last state of a finished fit rebuilds its
        result without the operator: :func:`restore_matrix_free`.

    Returns
    -------
    MatrixFreeResult
        One :class:`MatrixFreeFit` per phenotype, and the quadrature models (for
        :meth:`MatrixFreeResult.loglik_profile` and the BLUP).

    Raises
    ------
    InputError
        For unusable inputs, before any application of K.

    Notes
    -----
    **Solves.** Per missing-value pattern, block Lanczos with full re-orthogonalisation runs
    on ``K_oo`` from ``B = [Z_o, Ỹ_o] = Q₀R₀`` (Ỹ: Y with its OLS fit on Z removed; REML is
    invariant to it, and it avoids cancellation). A rank-revealing QR drops dependent
    directions; a block that loses every direction has exhausted its Krylov space, the
    quadrature is then exact and the recurrence stops. With ``T = S diag(θ) Sᵀ``,
    ``Bᵀ H⁻¹ B ≈ R₀ᵀ E₁ᵀ S diag(1/(hθ + 1 − h)) Sᵀ E₁ R₀``: every h, and the h-derivatives,
    from one eigendecomposition of T.

    **log det H.** Stochastic Lanczos quadrature: each probe ``w_j = (I − UUᵀ)v_j``
    (Rademacher v_j, U = deflation vectors or none) runs its own scalar Lanczos on
    ``K_⊥ = (I − UUᵀ)K_oo(I − UUᵀ)`` with local re-orthogonalisation; the Gauss rule gives
    ``w_jᵀ f(K_⊥) w_j``. ``E[w_jᵀ A w_j] = tr((I − UUᵀ) A (I − UUᵀ))``, the trace over the
    n_o − k directions orthogonal to U, so the deflated directions (where ``K_⊥`` is 0 and
    ``f(0) = log(1 − h)``) are never counted. The tangent of f at the tail's mean
    eigenvalue ``tr K_⊥ / (n_o − k)`` is a control variate with exactly known trace
    (``tr K`` comes from the operator's diagonal in the first pass): see :meth:`bigmm.mf_quadrature.LogdetRule.logdet`.
    Without deflation, the converged Ritz pairs of the ``[Z, Y]`` block (the isolated
    eigenvalues of population structure, the null vector of an intercept) give a second,
    zero-mean control variate ``Σ_k r(θ_k)[(x_kᵀv_j)² − 1]`` (:func:`bigmm.mf_quadrature.ritz_control_variate`): it
    removes the χ²₁ noise those eigenvalues put into each probe, which the linear one cannot.
    For a pattern with missing samples U's observed rows are re-orthonormalised and their
    exact Rayleigh matrix taken from the first pass (the columns ride along with it).

    **One step = one pass.** Each step applies K once to the block holding every pattern's
    ``[Z, Y]`` block and all its probes' vectors (zero rows where the pattern is missing);
    the first pass also carries a ones vector per pattern (for ``1ᵀK1``), the deflation
    vectors of patterns with missing samples, and asks for ``diag K``. After every step the
    estimates are recomputed from the Gauss rules (driver work only) and the run stops when
    they have converged (``tol``; the change is measured with the previous step's Ritz
    control variate, so it reflects the quadrature, not a reshuffled zero-mean Monte Carlo
    term) or at ``max_steps``; a fit that did not converge says so (``converged``,
    ``delta_h2``, ``delta_logl``) and a warning is logged.

    **Maximisation** over h² ∈ [0, H2_MAX] by a grid (global optimum of a possibly
    multimodal profile), then safeguarded Newton on the analytic quadrature derivative in the
    best grid bracket (to ~1e-14 in h²).

    **Standard errors.** ``h2_se_stat``: from the observed REML information in
    (σ²_g, σ²_e) (the expected information at a boundary or if the observed is not
    positive definite), both exact functions of the quadrature:
    with ``ℓ(h, σ²) = −½[(n−c) log(2πσ²) + log det H + log det A + R/σ²]``,
    ``−∂²ℓ/∂h² = ½(L'' + (log det A)'' + R''/σ²)``, ``−∂²ℓ/∂h∂σ² = −R'/(2σ⁴)``,
    ``−∂²ℓ/∂σ²² = (n−c)/(2σ⁴)``; expected: ``I_hh = −½(L'' + (log det A)'')``,
    ``I_hσ² = (L' + (log det A)')/(2σ²)``; transformed to (σ²_g, σ²_e) by the chain rule.
    ``h2_se_mc``: delete-one-probe jackknife, each delete-one estimate by one Newton step
    from ĥ² on the delete-one likelihood (exact to second order in the O(1/N) change).
    ``h2_se = sqrt(h2_se_stat² + h2_se_mc²)``; ``sigma2_g_se`` and ``sigma2_e_se`` add the
    Monte Carlo part the same way, through ``dσ̂²_g/dh²`` and ``dσ̂²_e/dh²``.

    **Haseman–Elston** (``h2_he``, from the first pass only): with ``P = I − Z(ZᵀZ)⁻¹Zᵀ``,
    ``ỹ = P y``, solve

        [tr(PKPK)  tr(PK)] [σ²_g]   [ỹᵀKỹ]
        [tr(PK)    n − c ] [σ²_e] = [ỹᵀỹ ]

    (the least-squares fit of ``ỹỹᵀ`` by ``σ²_g PKP + σ²_e P``), ``h2_he = σ²_g/(σ²_g + σ²_e)``;
    ``tr(PKPK) = tr K² − 2 tr((ZᵀZ)⁻¹ZᵀK²Z) + tr(((ZᵀZ)⁻¹ZᵀKZ)²)`` with ``KZ``, ``Kỹ`` from the
    first product of the ``[Z, Y]`` block and ``tr K² = ‖KU‖²_F + mean_j ‖K w_j‖²`` from the
    probes' first products.

    **Cost.** Passes over X = steps (plus one for ĝ in :func:`blup_matrix_free`); each
    applies K to ``Σ_patterns (c + m_pattern + N)`` columns at most (the first pass adds
    1 + k per pattern with missing samples). Driver memory O(n · width) for the recurrences
    plus the kept ``[Z, Y]`` Krylov basis (n_o x steps · (c + m) per pattern) for the BLUP;
    driver flops per step O(n · dim T · (c + m)) for the re-orthogonalisation and
    O(dim T³) for the eigendecomposition of T.

    References
    ----------
    G. H. Golub, G. Meurant (2010), *Matrices, Moments and Quadrature with Applications*,
    Princeton University Press. S. Ubaru, J. Chen, Y. Saad (2017), Fast estimation of
    tr(f(A)) via stochastic Lanczos quadrature, SIAM J. Matrix Anal. Appl. 38(4). P.-R. Loh
    et al. (2015), Contrasting genetic architectures of schizophrenia and other complex
    diseases using fast variance-components analysis (BOLT-REML), Nature Genetics 47.
    """
    t_start = time.perf_counter()
    n = check_operator(op)
    prob = check_inputs(n, Y, Z, phenotype_names=phenotype_names, covariate_names=covariate_names,
                        probes=probes, max_steps=max_steps, tol=tol, deflate=deflate, grid_size=grid_size)
    groups = make_patterns(prob, probes, seed)
    plan_widest_pass(op, groups)
    fp = fingerprint(prob, int(seed), int(probes))
    notes = _start_notes(seed, groups, grid_size)
    run = resume(checkpoint, groups, fp, prob.m, notes)
    grid = np.linspace(0.0, H2_MAX, int(grid_size))
    while not run.finished(groups, max_steps):
        run.step += 1
        width = one_pass(op, groups, run, n)
        estimates = update_estimates(groups, run.step, grid, prob.m)
        check_convergence(run, groups, estimates, prob.tol)
        log_step(run, max_steps, width)
        save_state(checkpoint, groups, run, fp, seed, probes)
    return final_result(prob, groups, run, notes, grid, probes=probes, seed=seed, max_steps=max_steps,
                        t_start=t_start)


def restore_matrix_free(state: dict | None, Y, Z=None, *, phenotype_names: Sequence[str] | None = None,
                        covariate_names: Sequence[str] | None = None, probes: int = DEFAULT_PROBES,
                        max_steps: int = DEFAULT_MAX_STEPS, tol: float = DEFAULT_TOL, deflate=None,
                        seed: int = 0, grid_size: int = GRID_SIZE) -> MatrixFreeResult:
    """The result of a finished :func:`fit_matrix_free` rebuilt from its final saved state,
    without the operator: no pass over X and no further Lanczos step.

    Parameters
    ----------
    state : dict
        The last state the fit saved through its ``checkpoint`` (``checkpoint.load()``: a dict
        with "meta" and "arrays").
    Y, Z, phenotype_names, covariate_names, probes, max_steps, tol, deflate, seed, grid_size
        The arguments of the fit (the number of samples is Y's rows).

    Returns
    -------
    MatrixFreeResult
        Equal to the fit's result (its fits, quadrature models, BLUP weights and likelihood
        profiles, bit for bit); ``notes`` say ``restored_after_step`` and hold no pass timings.

    Raises
    ------
    InputError
        If the inputs are unusable (as for the fit), there is no state, the state is of other
        inputs, or it is the state of a fit that had not finished (resume that with
        :func:`fit_matrix_free` and the checkpoint).

    Notes
    -----
    The state holds every recurrence (the block and probe tridiagonal matrices, the kept
    ``[Z, Y]`` Krylov basis, the first-pass moments); the checked inputs give what is not saved
    (the start block's QR, the seeded probes). The final estimates are then the same driver-side
    operations on the same numbers as at the end of the fit.
    """
    t_start = time.perf_counter()
    n = int(np.shape(Y)[0]) if np.ndim(Y) else 0
    prob = check_inputs(n, Y, Z, phenotype_names=phenotype_names, covariate_names=covariate_names,
                        probes=probes, max_steps=max_steps, tol=tol, deflate=deflate, grid_size=grid_size)
    groups = make_patterns(prob, probes, seed)
    if state is None:
        raise InputError("there is no saved matrix-free REML state to restore; run fit_matrix_free")
    if not state_matches(state, fingerprint(prob, int(seed), int(probes))):
        raise InputError("the saved matrix-free REML state is of other inputs (phenotypes, covariates, seed, "
                         "probes or deflation differ); run fit_matrix_free again")
    run = restore_state(state, groups, prob.m)
    if not run.finished(groups, max_steps):
        raise InputError(f"the saved matrix-free REML state is after step {run.step} of a fit that had not "
                         f"finished; resume it with fit_matrix_free(..., checkpoint=...)")
    notes = _start_notes(seed, groups, grid_size)
    notes["restored_after_step"] = run.step
    grid = np.linspace(0.0, H2_MAX, int(grid_size))
    return final_result(prob, groups, run, notes, grid, probes=probes, seed=seed, max_steps=max_steps,
                        t_start=t_start)


def _start_notes(seed: int, groups: list, grid_size: int) -> dict:
    """The notes every result starts with."""
    return {"seed": int(seed), "patterns": len(groups), "grid_size": int(grid_size), "h2_max": H2_MAX}


# --------------------------------------------------------------------------------------
# The final result
# --------------------------------------------------------------------------------------

def final_result(prob: Problem, groups: list, run: SolverState, notes: dict, grid: np.ndarray, *,
                 probes: int, seed: int, max_steps: int, t_start: float) -> MatrixFreeResult:
    """The fits of every phenotype from the final Gauss rules, on the phenotypes' own scales,
    with the run's convergence figures and notes."""
    if run.step == 0:
        raise InputError("no Lanczos step was run")  # unreachable: max_steps ≥ 2
    m, tol = prob.m, prob.tol
    exhausted_all = not any(g.active for g in groups)
    conv = run.streak >= 2
    converged = bool(conv.all())
    if not converged:
        log.warning("matrix-free REML: %d of %d phenotypes did not converge in %d steps (max |Δh²| %.2e, "
                    "max |Δℓ| %.2e, tol %.1e); raise max_steps", int((~conv).sum()), m, run.step,
                    float(np.nanmax(run.delta_h)), float(np.nanmax(run.delta_ll)), tol)
    notes.update({"pass_seconds": run.pass_seconds, "passes_this_run": run.passes, "exhausted": exhausted_all,
                  "seconds": round(time.perf_counter() - t_start, 3)})
    fits: list = [None] * m
    models = []
    kdef = 0 if prob.deflation is None else prob.deflation[0].shape[1]
    for g in groups:
        mdl = QuadratureModel(g, run.step, H2_MAX)
        models.append(mdl)
        common = dict(steps=run.step, probes=int(probes), tol=float(tol))
        for j, f in zip(g.cols, _group_fits(mdl, grid, prob.znames, run.delta_h[g.cols], run.delta_ll[g.cols],
                                            conv[g.cols], common)):
            fits[j] = f
    _warn_mc_ratio(fits, int(probes))
    unit_sigma2 = tuple(f.sigma2_g + f.sigma2_e for f in fits)
    fits = [_rescale(f, float(a), prob.c) for f, a in zip(fits, prob.scales)]
    return MatrixFreeResult(fits=tuple(fits), phenotype_names=tuple(prob.names), covariate_names=tuple(prob.znames),
                            scales=tuple(float(a) for a in prob.scales), unit_sigma2=unit_sigma2,
                            n=prob.n, lanczos_steps=run.step, passes_over_X=run.step, converged=converged,
                            delta_h2=float(np.nanmax(run.delta_h)), delta_logl=float(np.nanmax(run.delta_ll)),
                            probes=int(probes), seed=int(seed), tol=float(tol), max_steps=int(max_steps),
                            deflation_rank=kdef, notes=notes, models=tuple(models))


def probes_for_ratio(ratio: float, probes: int, target: float | None = None) -> int:
    """Probes that bring h2_se_mc / h2_se_stat from ``ratio`` (at ``probes``) to about ``target``
    (default :data:`MC_SE_RATIO_TARGET`): the Monte Carlo SD of ĥ² falls as 1/√N, so
    N' = ⌈N (ratio / target)²⌉."""
    target = MC_SE_RATIO_TARGET if target is None else target
    return int(math.ceil(probes * (ratio / target) ** 2))


def _warn_mc_ratio(fits, probes: int) -> None:
    """Warn when the probes' Monte Carlo SD is more than MC_SE_RATIO_WARN of the statistical SE."""
    high = [f for f in fits if np.isfinite(f.h2_se_mc_ratio) and f.h2_se_mc_ratio > MC_SE_RATIO_WARN]
    if high:
        worst = max(high, key=lambda f: f.h2_se_mc_ratio)
        log.warning("matrix-free REML: the Monte Carlo SD of h2 from the %d log det probes is more than %.2g of "
                    "the statistical SE for %d of %d phenotypes (up to %.3f, %s; h2_se includes it): "
                    "reml.probes: %d would bring it to about %.2g (it falls as 1/sqrt(probes); each probe "
                    "is one more column of every pass, not one more pass)", probes, MC_SE_RATIO_WARN,
                    len(high), len(fits), worst.h2_se_mc_ratio, worst.name,
                    probes_for_ratio(worst.h2_se_mc_ratio, probes), MC_SE_RATIO_TARGET)


def _rescale(f: MatrixFreeFit, a: float, c: int) -> MatrixFreeFit:
    """A fit made on y / a, back on y's scale: σ² × a², ω̂ × a, ℓ − (error contrasts) log a."""
    from dataclasses import replace

    la = math.log(a)
    a = np.float64(a)
    with np.errstate(over="ignore", under="ignore"):
        a2 = a * a
        fe = tuple(replace(e, estimate=float(e.estimate * a), se=float(e.se * a)) for e in f.fixed_effects)
        return replace(f, sigma2_g=float(f.sigma2_g * a2), sigma2_g_se=float(f.sigma2_g_se * a2),
                       sigma2_e=float(f.sigma2_e * a2), sigma2_e_se=float(f.sigma2_e_se * a2),
                       sigma2_g_sigma2_e_cov=float(f.sigma2_g_sigma2_e_cov * a2 * a2), fixed_effects=fe,
                       logl_reml=f.logl_reml - (f.n - c) * la, logl_reml_h2_0=f.logl_reml_h2_0 - (f.n - c) * la,
                       logl_ml=f.logl_ml - f.n * la)


def _group_estimates(mdl: QuadratureModel, grid: np.ndarray, tol: float) -> dict:
    """ĥ²_REML with ℓ_R there (the upper bound rule applied), ĥ²_ML with ℓ_ML (capped below 1
    when K is singular), and ℓ_R(0), for every phenotype of a pattern."""
    h_reml, ll_reml = maximise(mdl, 0, grid, H2_MAX)
    h_reml, ll_reml = upper_boundary(mdl, h_reml, ll_reml, tol)
    gml = grid[:-1] if mdl.singular else grid
    h_ml, ll_ml = maximise(mdl, 1, gml, float(gml[-1]))
    ll0 = mdl.eval(np.array([0.0]), shared=True, which=0)[0][0]
    return dict(h_reml=h_reml, ll_reml=ll_reml, h_ml=h_ml, ll_ml=ll_ml, ll0=ll0, ml_cap=float(gml[-1]))


def _statistical_se(mdl: QuadratureModel, h: float, j: int):
    """The (σ²_g, σ²_e) covariance from the REML information at ĥ² (at INFO_H2_MAX above it),
    its method, σ̂², R, R' at ĥ², and the SEs of h², σ²_g, σ²_e from it."""
    observed, expected, s2, Rj, R1j = information(mdl, h, j)
    if h > INFO_H2_MAX:  # the information where its quadrature holds
        observed, expected = information(mdl, INFO_H2_MAX, j)[:2]
    sg, se = h * s2, (1.0 - h) * s2
    boundary = "lower" if h <= 0.0 else ("upper" if h >= H2_MAX else "")
    cov, method = information_covariance(observed, expected, boundary)
    grad = np.array([se, -sg]) / (sg + se) ** 2
    with np.errstate(invalid="ignore"):
        se_stat = float(np.sqrt(grad @ cov @ grad))
        sg_se_stat, se_se_stat = float(np.sqrt(cov[0, 0])), float(np.sqrt(cov[1, 1]))
    return dict(cov=cov, method=method, boundary=boundary, s2=s2, R=Rj, R1=R1j, se_stat=se_stat,
                sg_se_stat=sg_se_stat, se_se_stat=se_se_stat)


def _group_fits(mdl: QuadratureModel, grid, znames, dh, dll, conv, common) -> list:
    """One :class:`MatrixFreeFit` per phenotype of a pattern (on its unit scale)."""
    est = _group_estimates(mdl, grid, common["tol"])
    # per-probe terms at each phenotype's ĥ² for the jackknife
    l1, l2, y1, y2, U = probe_derivatives(mdl, est["h_reml"])
    fits = []
    for j, name in enumerate(mdl.names):
        h = float(est["h_reml"][j])
        st = _statistical_se(mdl, h, j)
        se_mc = jackknife_se(h, l1[j], l2[j], y1[j], y2[j], H2_MAX)
        fits.append(_phenotype_fit(mdl, j, name, h, est, st, se_mc, U[j], znames,
                                   dict(common, dh=float(dh[j]), dll=float(dll[j]), conv=bool(conv[j]))))
    return fits


def _phenotype_fit(mdl: QuadratureModel, j: int, name: str, h: float, est: dict, st: dict, se_mc: float,
                   u: np.ndarray, znames, info: dict) -> MatrixFreeFit:
    """The fit of phenotype j of a pattern from its estimates ``est``, its statistical SEs
    ``st``, its Monte Carlo SE and ``u = A⁻¹b`` (the fixed effects of Ỹ)."""
    s2, se_stat, k = st["s2"], st["se_stat"], mdl.n_obs - mdl.c
    sg, se = h * s2, (1.0 - h) * s2
    h_se = math.sqrt(se_stat ** 2 + se_mc ** 2) if np.isfinite(se_stat) else float("nan")
    dsg = (st["R"] + h * st["R1"]) / k  # dσ̂²_g/dh
    dse = ((1.0 - h) * st["R1"] - st["R"]) / k  # dσ̂²_e/dh
    ll_reml, ll0 = float(est["ll_reml"][j]), float(est["ll0"][j])
    lrt = 0.0 if h <= 0.0 else max(0.0, 2.0 * (ll_reml - ll0))
    dpve = mdl.mean_diag_K - mdl.mean_K
    pve = sg * dpve / (sg * dpve + se) if np.isfinite(dpve) and (sg * dpve + se) > 0 else float("nan")
    A, *_ = mdl.quadratic_forms(h, j)
    C = np.linalg.inv(A) * s2
    omega = u + mdl.shift[:, j]
    fe = tuple(FixedEffect(name=zn, estimate=float(omega[i]), se=float(np.sqrt(C[i, i])))
               for i, zn in enumerate(znames))
    return MatrixFreeFit(
        name=name, n=mdl.n_obs, h2=h, h2_se=h_se,
        h2_se_method=f"{st['method']} + probe jackknife (Monte Carlo)",
        h2_se_curvature=se_stat, pve=float(pve), mean_diag_K=float(mdl.mean_diag_K),
        sigma2_g=sg, sigma2_g_se=math.hypot(st["sg_se_stat"], dsg * se_mc), sigma2_e=se,
        sigma2_e_se=math.hypot(st["se_se_stat"], dse * se_mc),
        logl_reml=ll_reml, logl_reml_h2_0=ll0, logl_ml=float(est["ll_ml"][j]),
        h2_ml=float(est["h_ml"][j]), lrt_stat=lrt, lrt_pvalue=1.0 if lrt <= 0 else 0.5 * float(chdtrc(1, lrt)),
        boundary=st["boundary"], fixed_effects=fe,
        n_missing=mdl.n_missing, missing_method="observed_subset" if mdl.n_missing else "none",
        sigma2_g_sigma2_e_cov=float(st["cov"][0, 1]),
        pve_se=(float(dpve / (h * dpve + 1.0 - h) ** 2 * h_se)
                if np.isfinite(dpve) and (h * dpve + 1.0 - h) > 0 else float("nan")),
        ml_note=(f"K is singular: ML is maximised over h2 in [0, {est['ml_cap']:g}] because it can grow "
                 f"without bound as h2 -> 1" if mdl.singular else ""),
        h2_se_stat=se_stat, h2_se_mc=se_mc, h2_he=float(np.asarray(mdl.he[2])[j]),
        h2_se_mc_ratio=se_mc / se_stat if se_stat > 0 else float("nan"),
        lanczos_steps=info["steps"], passes_over_X=info["steps"], converged=info["conv"],
        delta_h2=info["dh"], delta_logl=info["dll"], probes=info["probes"],
        deflation_rank=int(mdl.k), deflation_coupling=float(mdl.coupling))
