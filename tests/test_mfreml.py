"""Matrix-free REML (block Lanczos quadrature) against the independent dense REML of tests/reference.py.

The reference factorises H = h² K + (1 − h²) I by Cholesky at every evaluation; the matrix-free
solver only ever applies K to blocks of vectors. Tolerances and why:
- Exhausted Krylov space (n = 150, K of rank 60 < n): block Gauss quadrature of Bᵀ f(K) B is then
  exact, so quadratic forms agree to float64 round-off of a Lanczos process (1e-8 relative).
- Deflation by U with k ≥ rank K exact eigenvectors makes log det H exact too (the projected
  operator is 0 and the control variate takes its linear part exactly), so estimates agree like
  two exact REML codes: h² to 1e-6 (both optimisers locate a flat optimum to ~1e-7, see
  reference.py), log-likelihoods to 1e-8, SEs to 1e-4 relative (the reference's
  finite-difference Hessian is accurate to ~1e-6).
- Without deflation log det H has Monte Carlo error: checked within 4 reported MC SEs, and the
  reported MC SE against the spread over probe seeds.
"""

import json

import numpy as np
import pytest
from conftest import random_genotypes
from reference import grm_reference, reml_profile_loglik, reml_reference

from bigmm.errors import InputError
from bigmm.mfreml import blup_matrix_free, fit_matrix_free


@pytest.fixture(scope="module", autouse=True)
def _single_blas_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


class DenseOp:
    """The operator interface over a K held in memory; counts applications (passes)."""

    def __init__(self, K):
        self.K = np.asarray(K, dtype=np.float64)
        self.calls = 0
        self.widths = []

    @property
    def n(self):
        return self.K.shape[0]

    def apply(self, M, want_diag=False):
        self.calls += 1
        self.widths.append(M.shape[1])
        return self.K @ M, (np.diag(self.K).copy() if want_diag else None)


def low_rank_problem(seed, n=150, p=60, h2=0.5, m=1, c=1):
    """A GRM of rank p < n (so Krylov spaces exhaust and k = rank K deflation is exact) and m
    phenotypes drawn from N(Zω, h² K + (1 − h²) I)."""
    rng = np.random.default_rng(seed)
    G = random_genotypes(rng, n, p, missing=0.0)
    K = grm_reference(G)
    s, U = np.linalg.eigh(K)
    root = U * np.sqrt(np.clip(h2 * s + 1 - h2, 0, None))
    Z = np.column_stack([np.ones(n)] + [rng.normal(size=n) for _ in range(c - 1)])
    Y = Z @ rng.normal(size=(c, m)) + root @ rng.normal(size=(n, m))
    keep = s > 1e-10 * s.max()
    deflate = (U[:, keep][:, ::-1], s[keep][::-1])  # all eigenpairs with λ > 0: k = rank K
    return K, Z, Y, deflate


def dense_logdet(K, h):
    return np.linalg.slogdet(h * K + (1 - h) * np.eye(K.shape[0]))[1]


def check_exact(fit, ref):
    assert fit.h2 == pytest.approx(ref["h2"], abs=1e-6)
    assert fit.sigma2_g == pytest.approx(ref["sigma2_g"], rel=1e-6, abs=1e-9)
    assert fit.sigma2_e == pytest.approx(ref["sigma2_e"], rel=1e-6)
    assert fit.logl_reml == pytest.approx(ref["logl_reml"], abs=1e-8)
    assert fit.logl_reml_h2_0 == pytest.approx(ref["logl_reml_h2_0"], abs=1e-8)
    assert fit.lrt_stat == pytest.approx(ref["lrt"], abs=2e-8)
    assert fit.lrt_pvalue == pytest.approx(ref["pvalue"], rel=1e-5)
    est = np.array([fe.estimate for fe in fit.fixed_effects])
    se = np.array([fe.se for fe in fit.fixed_effects])
    np.testing.assert_allclose(est, ref["omega"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(se, ref["se_omega"], rtol=1e-5)
    # statistical SEs from the analytic quadrature information vs the reference's FD Hessian
    assert fit.h2_se_stat == pytest.approx(ref["se_h2"], rel=1e-4)
    assert fit.sigma2_g_se == pytest.approx(ref["se_sigma2_g"], rel=1e-4)
    assert fit.sigma2_e_se == pytest.approx(ref["se_sigma2_e"], rel=1e-4)
    # log det is exact here: no Monte Carlo error, h2_se is the statistical SE
    assert fit.h2_se_mc < 1e-10
    assert fit.h2_se == pytest.approx(fit.h2_se_stat, rel=1e-12)


# ------------------------------------------------------------------ 1. exhausted Krylov space

def test_exhausted_krylov_quadratic_forms_equal_dense_solves():
    """Bᵀ H⁻¹ B by block Gauss quadrature = dense solves once the Krylov space is exhausted."""
    K, Z, Y, deflate = low_rank_problem(1, c=2, m=2)
    op = DenseOp(K)
    # tol 1e-300 is never met: the run goes on until every recurrence has exhausted its space
    res = fit_matrix_free(op, Y, Z, deflate=deflate, max_steps=200, tol=1e-300, probes=4)
    assert res.notes["exhausted"] and res.converged
    # rank K = 60, block of c + m = 4: the space [Z, Y, KZ, KY, ...] has ≤ 64 dimensions, found in
    # far fewer than n = 150 steps (blocks shrink as directions exhaust); one pass per step
    assert res.lanczos_steps < 40 and op.calls == res.lanczos_steps
    n = K.shape[0]
    for h in (0.0, 0.1, 0.5, 0.9, 0.999):
        H = h * K + (1 - h) * np.eye(n)
        HiZ = np.linalg.solve(H, Z)
        for j, name in enumerate(res.phenotype_names):
            A, b, yy = res.quadratic_forms(h, name)
            y = Y[:, j]
            np.testing.assert_allclose(A, Z.T @ HiZ, rtol=1e-8)
            np.testing.assert_allclose(b, HiZ.T @ y, rtol=1e-8)
            assert yy == pytest.approx(y @ np.linalg.solve(H, y), rel=1e-8)


def test_profile_equals_reference_up_to_logdet_mc_error():
    """ℓ_R(h) = ℓ_R^ref(h) − ½ (log det H estimate − exact log det H) on a grid of h², and the
    log det error is within 4 of its reported Monte Carlo SEs (no deflation)."""
    K, Z, Y, _ = low_rank_problem(2)
    y = Y[:, 0]
    res = fit_matrix_free(DenseOp(K), y, max_steps=80, tol=1e-300, probes=40, seed=3)
    hs = np.array([0.0, 0.2, 0.5, 0.8, 0.95])
    prof = res.loglik_profile(hs, "pheno1")
    for i, h in enumerate(hs):
        exact_ld = dense_logdet(K, h)
        err = prof["logdet_H"][i] - exact_ld
        ref = reml_profile_loglik(K, y, Z, h)
        # every other term of ℓ_R is a converged quadrature (round-off after 80 steps)
        assert prof["logl_reml"][i] + 0.5 * err == pytest.approx(ref, abs=1e-8)
        assert abs(err) <= 4 * prof["logdet_H_mc_se"][i] + 1e-9
    assert prof["logdet_H"][0] == 0.0  # h² = 0: H = I, exact


@pytest.mark.parametrize("seed,h2", [(3, 0.5), (4, 0.2), (5, 0.85)])
def test_exact_deflation_equals_reference(seed, h2):
    """With k = rank K exact eigenvectors log det H is exact: the fit IS dense REML."""
    K, Z, Y, deflate = low_rank_problem(seed, h2=h2)
    res = fit_matrix_free(DenseOp(K), Y[:, 0], deflate=deflate, max_steps=100, tol=1e-12, probes=5)
    fit = res.fits[0]
    check_exact(fit, reml_reference(K, Y[:, 0]))
    assert fit.converged and fit.deflation_rank == deflate[1].size
    assert fit.reml_method == "matrix_free" and fit.boundary == ""
    json.dumps(res.to_dict())  # JSON-able


# ------------------------------------------------------------------ 2. Monte Carlo error

@pytest.fixture(scope="module")
def unrelated_problem():
    rng = np.random.default_rng(7)
    n, p = 400, 1200
    G = random_genotypes(rng, n, p, missing=0.0)
    K = grm_reference(G)
    s, U = np.linalg.eigh(K)
    y = 1.0 + (U * np.sqrt(0.5 * s + 0.5)) @ rng.normal(size=n)
    return K, y, reml_reference(K, y)


def test_many_probes_close_to_reference(unrelated_problem):
    """400 probes, no deflation: |ĥ² − ĥ²_ref| ≤ 4 reported MC SEs (+ the quadrature tolerance)."""
    K, y, ref = unrelated_problem
    fit = fit_matrix_free(DenseOp(K), y, probes=400, seed=11, tol=1e-5).fits[0]
    assert fit.converged
    assert abs(fit.h2 - ref["h2"]) <= 4 * fit.h2_se_mc + 1e-4
    assert fit.h2_se_mc < 0.1 * fit.h2_se_stat  # 400 probes: the MC part is small
    assert fit.h2_se == pytest.approx(np.hypot(fit.h2_se_stat, fit.h2_se_mc))
    assert fit.h2_se_stat == pytest.approx(ref["se_h2"], rel=0.02)


def test_reported_mc_se_matches_spread_over_seeds(unrelated_problem):
    """The jackknife h2_se_mc estimates the SD of ĥ² over probe draws: over 20 seeds the empirical
    SD is within a factor 1.5 of the mean reported h2_se_mc (the SD of 20 draws is itself
    uncertain by ~16%, so 1.5 is ~2.5 of its SEs), and the seeds' mean is within 4 MC SEs of
    dense REML (no quadrature or MC bias)."""
    K, y, ref = unrelated_problem
    op = DenseOp(K)
    fits = [fit_matrix_free(op, y, probes=10, seed=s, tol=1e-5).fits[0] for s in range(20)]
    h = np.array([f.h2 for f in fits])
    mc = np.array([f.h2_se_mc for f in fits])
    sd = h.std(ddof=1)
    assert 1 / 1.5 < sd / mc.mean() < 1.5
    assert abs(h.mean() - ref["h2"]) < 4 * sd / np.sqrt(h.size) + 1e-4


def structured_K(seed, n=300, p=900, pops=3, fst=0.1):
    """A GRM with population structure: pops − 1 eigenvalues far above the bulk."""
    rng = np.random.default_rng(seed)
    f = rng.uniform(0.05, 0.5, p)
    fp = rng.beta(f * (1 - fst) / fst, (1 - f) * (1 - fst) / fst, size=(pops, p))
    G = rng.binomial(2, fp[np.arange(n) % pops]).astype(np.int8)
    return grm_reference(G)


def test_structured_cohort_mc_error_and_ritz_control_variate():
    """Population structure (2 eigenvalues ≫ the bulk): the [Z, Y] block's converged Ritz pairs
    are a zero-mean control variate for the probes. Over 30 seeds the estimates stay unbiased
    (mean within 4 SEs of dense REML) and the reported MC SE matches their spread (factor 1.6)."""
    K = structured_K(17)
    s, U = np.linalg.eigh(K)
    assert s[-2] > 5 * s[-3]  # the structure eigenvalues stand out
    y = 1.0 + (U * np.sqrt(0.5 * s + 0.5)) @ np.random.default_rng(18).normal(size=K.shape[0])
    ref = reml_reference(K, y)
    res = [fit_matrix_free(DenseOp(K), y, probes=10, seed=sd, tol=1e-5) for sd in range(30)]
    assert res[0].models[0].ritz_theta.max() > 5 * s[-3]  # the outliers are in the control variate
    h = np.array([r.fits[0].h2 for r in res])
    mc = np.array([r.fits[0].h2_se_mc for r in res])
    assert 1 / 1.6 < h.std(ddof=1) / mc.mean() < 1.6
    assert abs(h.mean() - ref["h2"]) < 4 * h.std(ddof=1) / np.sqrt(h.size) + 1e-4
    assert mc.mean() < 0.25 * res[0].fits[0].h2_se_stat


def test_estimate_maximises_the_reported_profile(unrelated_problem):
    """ĥ² (safeguarded Newton on the analytic derivative, probes + control variates included)
    maximises the reported quadrature likelihood, and the curvature SE equals 1/sqrt(−ℓ'') of
    that profile by central differences (step 1e-4: truncation ~1e-8 relative)."""
    K, y, _ = unrelated_problem
    res = fit_matrix_free(DenseOp(K), y, probes=10, seed=4)
    f = res.fits[0]
    d = 1e-4
    ll = res.loglik_profile([f.h2 - d, f.h2, f.h2 + d], "pheno1")["logl_reml"]
    assert ll[1] >= ll[0] and ll[1] >= ll[2]
    assert ll[1] == pytest.approx(f.logl_reml, abs=1e-10)
    curv = -(ll[0] - 2 * ll[1] + ll[2]) / d ** 2
    assert f.h2_se_curvature == pytest.approx(1 / np.sqrt(curv), rel=1e-4)


# ------------------------------------------------------------------ 3. missing values

def test_missing_patterns_equal_dense_reml_of_observed_subsets():
    """Each phenotype with NaNs = dense REML on its observed samples (K_oo, Z_o, y_o); the
    patterns share every pass (one application of K per step), and U's observed rows,
    re-orthonormalised with their Rayleigh matrix from the first pass, deflate exactly
    (range K_oo ⊆ span U_o when U spans range K)."""
    K, Z, Y, deflate = low_rank_problem(8, m=4, c=3)
    rng = np.random.default_rng(80)
    n = K.shape[0]
    Y[rng.random(n) < 0.2, 1] = np.nan
    Y[rng.random(n) < 0.1, 2] = np.nan
    Y[:, 3] = np.where(np.isnan(Y[:, 1]), np.nan, Y[:, 3])  # the same pattern as phenotype 2
    op = DenseOp(K)
    res = fit_matrix_free(op, Y, Z, deflate=deflate, max_steps=100, tol=1e-12, probes=4)
    assert res.notes["patterns"] == 3
    assert op.calls == res.lanczos_steps  # every pattern's columns in the same pass
    for j, fit in enumerate(res.fits):
        o = ~np.isnan(Y[:, j])
        check_exact(fit, reml_reference(K[np.ix_(o, o)], Y[o, j], Z[o]))
        assert fit.n == o.sum() and fit.n_missing == n - o.sum()
        assert fit.missing_method == ("none" if o.all() else "observed_subset")
        if not o.all():
            assert fit.deflation_coupling < 1e-10  # exact invariant subspace
        d = np.diag(K)[o].mean() - K[np.ix_(o, o)].mean()  # GEMMA's pve on the observed samples
        assert fit.pve == pytest.approx(fit.sigma2_g * d / (fit.sigma2_g * d + fit.sigma2_e), rel=1e-10)
        assert fit.mean_diag_K == pytest.approx(np.diag(K)[o].mean(), rel=1e-12)


def test_missing_pattern_partial_deflation_within_mc_error(unrelated_problem):
    """Deflation by the top 30 eigenvectors of the FULL K for a phenotype with 15% missing: U_o
    is not invariant for K_oo; the estimate stays within 4 MC SEs of dense REML of the observed
    samples (the coupling error is second order)."""
    K, y, _ = unrelated_problem
    rng = np.random.default_rng(9)
    y = y.copy()
    y[rng.random(y.size) < 0.15] = np.nan
    o = ~np.isnan(y)
    s, U = np.linalg.eigh(K)
    fit = fit_matrix_free(DenseOp(K), y, deflate=(U[:, -30:], s[-30:]), probes=60, seed=2, tol=1e-5).fits[0]
    ref = reml_reference(K[np.ix_(o, o)], y[o])
    assert fit.converged and fit.deflation_rank == 30 and np.isfinite(fit.deflation_coupling)
    assert abs(fit.h2 - ref["h2"]) <= 4 * fit.h2_se_mc + 1e-4


# ------------------------------------------------------------------ 4. covariates

def test_covariates_fixed_effects_and_ses():
    """c = 3: ω̂ and SE(ω̂) = sqrt(diag σ̂² (ZᵀH⁻¹Z)⁻¹) from the quadrature equal the reference."""
    K, Z, Y, deflate = low_rank_problem(10, c=3, h2=0.4)
    res = fit_matrix_free(DenseOp(K), Y[:, 0], Z, deflate=deflate, max_steps=100, tol=1e-12,
                          covariate_names=["intercept", "age", "sex"])
    fit = res.fits[0]
    check_exact(fit, reml_reference(K, Y[:, 0], Z))
    assert [fe.name for fe in fit.fixed_effects] == ["intercept", "age", "sex"]


# ------------------------------------------------------------------ 5. resume

class NpzCheckpoint:
    """Saves each state through np.savez + JSON (the export format); can fail after a step."""

    def __init__(self, path, fail_after=None):
        self.path = path
        self.fail_after = fail_after
        self.saved_steps = []

    def save(self, state):
        json.dumps(state["meta"])  # metadata must be JSON-able
        np.savez(self.path / "state.npz", **state["arrays"])
        (self.path / "meta.json").write_text(json.dumps(state["meta"]))
        self.saved_steps.append(state["meta"]["step"])
        if self.fail_after is not None and state["meta"]["step"] == self.fail_after:
            raise KeyboardInterrupt("simulated interruption")

    def load(self):
        if not (self.path / "meta.json").exists():
            return None
        with np.load(self.path / "state.npz", allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        return {"meta": json.loads((self.path / "meta.json").read_text()), "arrays": arrays}


def test_resume_after_interruption_gives_identical_results(tmp_path, unrelated_problem):
    """Interrupted after step 3 and resumed from the saved state = one uninterrupted run, bit for bit."""
    K, y, _ = unrelated_problem
    Y = np.column_stack([y, y[::-1].copy()])
    Y[:20, 1] = np.nan  # two patterns
    kw = dict(probes=8, seed=5, tol=1e-5)
    full = fit_matrix_free(DenseOp(K), Y, **kw)
    ck = NpzCheckpoint(tmp_path, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        fit_matrix_free(DenseOp(K), Y, checkpoint=ck, **kw)
    assert ck.saved_steps == [1, 2, 3]
    ck.fail_after = None
    op = DenseOp(K)
    resumed = fit_matrix_free(op, Y, checkpoint=ck, **kw)
    assert resumed.notes["resumed_after_step"] == 3
    assert op.calls == full.lanczos_steps - 3
    assert resumed.lanczos_steps == full.lanczos_steps
    # (compared as JSON text: NaN fields, e.g. an unknown deflation coupling, compare equal there)
    assert json.dumps(resumed.to_dict()["phenotypes"]) == json.dumps(full.to_dict()["phenotypes"])
    np.testing.assert_array_equal(resumed.blup_weights(), full.blup_weights())
    # a checkpoint of other inputs is not used
    other = fit_matrix_free(DenseOp(K), Y, checkpoint=NpzCheckpoint(tmp_path), probes=8, seed=6, tol=1e-5)
    assert "resumed_after_step" not in other.notes and "ignored" in other.notes["checkpoint"]


# ------------------------------------------------------------------ 6. Haseman–Elston

def dense_he(K, y, Z):
    """HE regression: least-squares fit of P y yᵀ P by σ²_g PKP + σ²_e P, P = I − Z(ZᵀZ)⁻¹Zᵀ."""
    n = K.shape[0]
    P = np.eye(n) - Z @ np.linalg.solve(Z.T @ Z, Z.T)
    PKP = P @ K @ P
    r = P @ y
    A = np.array([[np.sum(PKP * PKP), np.trace(PKP)], [np.trace(PKP), np.trace(P)]])
    sg, se = np.linalg.solve(A, [r @ K @ r, r @ r])
    return sg / (sg + se)


def test_haseman_elston_equals_dense_formula():
    """With exact deflation tr K² = ‖KU‖²_F is exact, so h2_he equals the dense HE estimate."""
    K, Z, Y, deflate = low_rank_problem(12, c=2, m=2)
    Y[:15, 1] = np.nan
    res = fit_matrix_free(DenseOp(K), Y, Z, deflate=deflate, max_steps=3, probes=4)
    for j, fit in enumerate(res.fits):
        o = ~np.isnan(Y[:, j])
        assert fit.h2_he == pytest.approx(dense_he(K[np.ix_(o, o)], Y[o, j], Z[o]), rel=1e-8)


def test_haseman_elston_close_to_truth():
    """Seeded simulation, h² = 0.5, 10 replicates, first pass only (max_steps = 2): the mean
    h2_he is within 3 SEs (SD/√10) of the truth, and each is near the probe-free dense HE."""
    rng = np.random.default_rng(13)
    n, p = 1000, 400
    G = random_genotypes(rng, n, p, missing=0.0)
    K = grm_reference(G)
    s, U = np.linalg.eigh(K)
    Y = 2.0 + (U * np.sqrt(0.5 * s + 0.5)) @ rng.normal(size=(n, 10))
    res = fit_matrix_free(DenseOp(K), Y, max_steps=2, probes=30)
    he = np.array([f.h2_he for f in res.fits])
    assert abs(he.mean() - 0.5) < 3 * he.std(ddof=1) / np.sqrt(he.size)
    exact = np.array([dense_he(K, Y[:, j], np.ones((n, 1))) for j in range(10)])
    # tr K² from 30 probes: its MC error moves h2_he a little, the same way for every phenotype
    np.testing.assert_allclose(he, exact, atol=0.05)


class NoDiagOp(DenseOp):
    def apply(self, M, want_diag=False):
        return super().apply(M)[0], None


def test_operator_without_diagonal_and_spectrum_deflation():
    """An operator that cannot give diag K: tr K comes from the probes (no linear control
    variate, no pve), and the fit stays within MC error of dense REML. A bigmm Spectrum deflates
    like (U, s), with coupling 0 for exact eigenvectors."""
    import bigmm

    K, Z, Y, deflate = low_rank_problem(19, p=100, n=200)
    y = Y[:, 0]
    ref = reml_reference(K, y)
    f = fit_matrix_free(NoDiagOp(K), y, probes=30, seed=1, tol=1e-5).fits[0]
    assert np.isnan(f.mean_diag_K) and np.isnan(f.pve) and np.isfinite(f.h2_he)
    assert abs(f.h2 - ref["h2"]) <= 4 * f.h2_se_mc + 1e-4
    spec = bigmm.exact_spectrum(K).top(20)
    g = fit_matrix_free(DenseOp(K), y, deflate=spec, probes=30, seed=1, tol=1e-5).fits[0]
    assert g.deflation_rank == 20 and g.deflation_coupling == 0.0
    assert abs(g.h2 - ref["h2"]) <= 4 * g.h2_se_mc + 1e-4


def test_lower_boundary():
    """No genetic signal (y ⟂ everything but noise; the reference puts ĥ² at 0): ĥ² = 0,
    boundary "lower", LRT 0 and p = 1, SE from the expected information."""
    K, Z, Y, deflate = low_rank_problem(20)
    for seed in range(30):
        y = np.random.default_rng(seed).normal(size=K.shape[0])
        ref = reml_reference(K, y)
        if ref["h2"] == 0.0:
            break
    else:
        pytest.fail("no seed gave a boundary estimate")
    f = fit_matrix_free(DenseOp(K), y, deflate=deflate, max_steps=100, tol=1e-12).fits[0]
    assert f.h2 == 0.0 and f.boundary == "lower" and f.lrt_stat == 0.0 and f.lrt_pvalue == 1.0
    assert f.logl_reml == pytest.approx(ref["logl_reml"], abs=1e-8)
    assert f.h2_se_method.startswith("expected_information") and np.isfinite(f.h2_se_stat)


# ------------------------------------------------------------------ 7. bad input

def test_bad_input_errors_before_any_pass():
    K, Z, Y, deflate = low_rank_problem(14)
    y = Y[:, 0]
    op = DenseOp(K)
    n = K.shape[0]
    cases = [
        (dict(max_steps=1), "max_steps"),
        (dict(probes=1), "probes"),
        (dict(deflate=(np.linalg.qr(np.random.default_rng(0).normal(size=(n, n)))[0], np.ones(n))),
         "deflation rank"),
        (dict(deflate=(deflate[0] * 2, deflate[1])), "orthonormal"),
        (dict(tol=0.0), "tol"),
    ]
    for kw, msg in cases:
        with pytest.raises(InputError, match=msg):
            fit_matrix_free(op, y, **kw)
    with pytest.raises(InputError, match="rows"):
        fit_matrix_free(op, y[:-1])
    with pytest.raises(InputError, match="non-finite"):
        Zb = np.column_stack([np.ones(n), np.r_[np.nan, np.ones(n - 1)]])
        fit_matrix_free(op, y, Zb)
    with pytest.raises(InputError, match="constant"):
        fit_matrix_free(op, np.where(np.arange(n) < 5, np.nan, 3.0))
    with pytest.raises(InputError, match="collinear"):
        # a covariate that is constant on the observed samples of the phenotype
        z = np.where(np.arange(n) < 10, 1.0, 0.0)
        yb = np.where(np.arange(n) < 10, np.nan, y)
        fit_matrix_free(op, yb, np.column_stack([np.ones(n), z]))
    assert op.calls == 0


def test_not_converged_is_reported(unrelated_problem, caplog):
    K, y, _ = unrelated_problem
    with caplog.at_level("WARNING", logger="bigmm"):
        res = fit_matrix_free(DenseOp(K), y, max_steps=3, tol=1e-9, probes=4)
    assert not res.converged and not res.fits[0].converged
    assert res.lanczos_steps == 3 and np.isfinite(res.delta_h2)
    assert "did not converge" in caplog.text


def test_tiny_n_exhausts_every_recurrence_cleanly():
    """n = 12 < steps · width: the block and every probe recurrence stop when their Krylov space
    is exhausted (or at n − k vectors), without NaN; the result equals dense REML within MC."""
    rng = np.random.default_rng(15)
    n = 12
    X = rng.normal(size=(n, 30))
    K = X @ X.T / 30
    y = rng.normal(size=n)
    res = fit_matrix_free(DenseOp(K), y, max_steps=50, tol=1e-300, probes=6)
    f = res.fits[0]
    assert res.notes["exhausted"] and res.lanczos_steps <= n + 1
    assert all(np.isfinite(v) for v in (f.h2, f.logl_reml, f.h2_se_stat, f.h2_se_mc))
    ref = reml_reference(K, y)
    assert abs(f.h2 - ref["h2"]) <= 4 * f.h2_se_mc + 1e-6


# ------------------------------------------------------------------ 8. BLUP

def test_blup_weights_equal_dense_solve():
    """w = V⁻¹(y − Zω̂) from the kept Krylov basis = the dense solve at the fit's own (ĥ², σ̂², ω̂)
    once the space is exhausted; ĝ = σ²_g K w takes exactly one more pass; w = 0 where y is missing."""
    K, Z, Y, deflate = low_rank_problem(16, c=2, m=2, h2=0.6)
    Y[::7, 1] = np.nan
    op = DenseOp(K)
    res = fit_matrix_free(op, Y, Z, deflate=deflate, max_steps=200, tol=1e-300, probes=4)
    assert res.notes["exhausted"]
    calls = op.calls
    g_hat, W = blup_matrix_free(op, res)
    assert op.calls == calls + 1
    for j, fit in enumerate(res.fits):
        o = ~np.isnan(Y[:, j])
        V = fit.sigma2_g * K[np.ix_(o, o)] + fit.sigma2_e * np.eye(o.sum())
        omega = np.array([fe.estimate for fe in fit.fixed_effects])
        w = np.linalg.solve(V, Y[o, j] - Z[o] @ omega)
        np.testing.assert_allclose(W[o, j], w, rtol=1e-8, atol=1e-10 * np.abs(w).max())
        assert np.all(W[~o, j] == 0)
        np.testing.assert_allclose(g_hat[:, j], fit.sigma2_g * K[:, o] @ w, rtol=1e-7,
                                   atol=1e-10 * np.abs(g_hat[:, j]).max())


def test_mc_ratio_reported_and_warned(unrelated_problem, caplog, monkeypatch):
    """Each fit reports h2_se_mc / h2_se_stat; above MC_SE_RATIO_WARN the fit warns and names the
    probes that bring the ratio to MC_SE_RATIO_TARGET (N (ratio / target)², the MC SD falling as
    1/√N). Then, with that many probes, the ratio is near the target (within the jackknife's own
    error, about 1/√(2N) relative, and the seeds' spread: a factor 1.6)."""
    import logging
    import math

    import bigmm.mfreml as mf

    K, y, ref = unrelated_problem
    Y = np.column_stack([y, y + np.random.default_rng(1).normal(size=y.size)])
    monkeypatch.setattr(mf, "MC_SE_RATIO_WARN", 0.0)  # every fit warns
    monkeypatch.setattr(mf, "MC_SE_RATIO_TARGET", 0.03)  # (4 probes give ~0.1 on this cohort)
    with caplog.at_level(logging.WARNING, logger="bigmm"):
        res = fit_matrix_free(DenseOp(K), Y, probes=4, seed=5, tol=1e-5, phenotype_names=["a", "b"])
    for f in res.fits:
        assert f.h2_se_mc_ratio == pytest.approx(f.h2_se_mc / f.h2_se_stat, rel=1e-12)
        assert res.to_pandas()["h2_se_mc_ratio"].notna().all()
    worst = max(res.fits, key=lambda f: f.h2_se_mc_ratio)
    want = math.ceil(4 * (worst.h2_se_mc_ratio / 0.03) ** 2)
    msg = [r.getMessage() for r in caplog.records if "Monte Carlo SD of h2" in r.getMessage()]
    assert len(msg) == 1 and f"for 2 of 2 phenotypes (up to {worst.h2_se_mc_ratio:.3f}, {worst.name};" in msg[0]
    assert f"reml.probes: {want} would bring it to about 0.03" in msg[0]
    more = fit_matrix_free(DenseOp(K), Y[:, [res.fits.index(worst)]], probes=want, seed=6, tol=1e-5).fits[0]
    assert 0.03 / 1.6 < more.h2_se_mc_ratio < 0.03 * 1.6
    monkeypatch.setattr(mf, "MC_SE_RATIO_WARN", 10.0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bigmm"):
        fit_matrix_free(DenseOp(K), y, probes=4, seed=5, tol=1e-5)
    assert not [r for r in caplog.records if "Monte Carlo SD of h2" in r.getMessage()]
