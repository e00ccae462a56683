"""REML with several variance components (bigmm.vcreml.fit_components) against references
written here: a dense NumPy/SciPy REML likelihood maximised with scipy.optimize, bigmm's own
single-component REML on a spectrum (m = 1), finite-difference information, and a simulation
with known truth. The GEMMA comparison is in tests/test_gemma_vc.py."""

import json
import math

import numpy as np
import pytest
from scipy.optimize import minimize

import bigmm
from bigmm.vcreml import ComponentsFit, ComponentsResult, fit_components

LOG2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------------------
# the reference: dense REML, σ² profiled, maximised by L-BFGS-B from several starts
# --------------------------------------------------------------------------------------

def ref_loglik(h, Ks, y, Z, ml=False):
    """Profiled REML (or ML) log-likelihood at h = (h²_1..h²_m): V = σ² H, H = Σ h_j K_j + (1 − Σh) I,
    σ̂² = yᵀP_H y / (n − c) (ML: / n); Harville's form without log det ZᵀZ (bigmm's convention).
    −inf where H is not positive definite."""
    n, c = Z.shape
    H = (1.0 - sum(h)) * np.eye(n) + sum(hj * K for hj, K in zip(h, Ks))
    try:
        L = np.linalg.cholesky(H)
    except np.linalg.LinAlgError:
        return -np.inf
    Li_y = np.linalg.solve(L, y)
    Li_Z = np.linalg.solve(L, Z)
    A = Li_Z.T @ Li_Z
    b = Li_Z.T @ Li_y
    yPy = Li_y @ Li_y - b @ np.linalg.solve(A, b)
    logdet_H = 2 * np.log(np.diag(L)).sum()
    if ml:
        return -0.5 * (n * (LOG2PI + np.log(yPy / n) + 1) + logdet_H)
    return -0.5 * ((n - c) * (LOG2PI + np.log(yPy / (n - c)) + 1) + logdet_H + np.linalg.slogdet(A)[1])


def ref_fit(Ks, y, Z, constrain=True, ml=False, starts=4, seed=0):
    """(ĥ², ℓ̂) maximising ref_loglik over h ≥ 0 (constrain) from several starts (L-BFGS-B with a
    central-difference gradient, step 1e-6: gradient error ~1e-9, far below the 1e-6 asked)."""
    m = len(Ks)
    rng = np.random.default_rng(seed)

    def f(h):
        v = ref_loglik(h, Ks, y, Z, ml)
        return -v if np.isfinite(v) else 1e10

    def jac(h, e=1e-6):
        return np.array([(f(h + e * u) - f(h - e * u)) / (2 * e) for u in np.eye(m)])

    bounds = [(0.0, 0.999)] * m if constrain else [(-0.5, 0.999)] * m
    x0s = [np.full(m, 0.5 / m)] + [rng.dirichlet(np.ones(m + 1))[:m] * 0.9 for _ in range(starts - 1)]
    best = None
    for x0 in x0s:
        r = minimize(f, x0, jac=jac, method="L-BFGS-B", bounds=bounds,
                     options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 2000})
        if best is None or r.fun < best.fun:
            best = r
    return best.x, -best.fun


def ref_reml_theta(theta, Ks, y, Z):
    """ℓ_R at θ = (σ²_1..σ²_m, σ²_e), not profiled: −½[(n − c) log 2π + log|V| + log|ZᵀV⁻¹Z| + yᵀPy]."""
    n, c = Z.shape
    V = theta[-1] * np.eye(n) + sum(t * K for t, K in zip(theta[:-1], Ks))
    Vi = np.linalg.inv(V)
    A = Z.T @ Vi @ Z
    P = Vi - Vi @ Z @ np.linalg.solve(A, Z.T @ Vi)
    return -0.5 * ((n - c) * LOG2PI + np.linalg.slogdet(V)[1] + np.linalg.slogdet(A)[1] + y @ P @ y)


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------

def cohort(n, sizes, seed):
    """Standardized genotypes split into groups of ``sizes`` variants and their GRMs K_j = X_j X_jᵀ / p_j."""
    rng = np.random.default_rng(seed)
    p = sum(sizes)
    f = rng.uniform(0.05, 0.5, p)
    G = rng.binomial(2, f, size=(n, p)).astype(float)
    X = (G - G.mean(0)) / np.maximum(G.std(0), 1e-12)
    X = X[:, G.std(0) > 0]
    edges = np.cumsum([0] + list(sizes))
    Xs = [X[:, a:b] for a, b in zip(edges[:-1], edges[1:])]
    return [Xj @ Xj.T / Xj.shape[1] for Xj in Xs], Xs, rng


def phenotype(Xs, h2s, rng, Z=None, beta=None):
    """y = Zβ + Σ_j X_j b_j + e with Var(X_j b_j) ≈ h2s[j] and Var(e) = 1 − Σ h2s."""
    n = Xs[0].shape[0]
    y = rng.normal(0, math.sqrt(1 - sum(h2s)), n)
    for Xj, h in zip(Xs, h2s):
        y += Xj @ rng.normal(0, math.sqrt(h / Xj.shape[1]), Xj.shape[1])
    if Z is not None:
        y += Z @ beta
    return y


@pytest.fixture(scope="module")
def three():
    """n = 240, three components (300, 200, 100 variants), intercept + two covariates, two
    phenotypes: one complete, one with 10% missing values."""
    Ks, Xs, rng = cohort(240, [300, 200, 100], seed=11)
    n = 240
    Z = np.column_stack([np.ones(n), rng.normal(size=n), rng.integers(0, 2, n)])
    y1 = phenotype(Xs, [0.3, 0.15, 0.1], rng, Z, np.array([1.0, 0.5, -0.3]))
    y2 = phenotype(Xs, [0.1, 0.3, 0.2], rng, Z, np.array([-2.0, 0.1, 0.4]))
    y2[rng.choice(n, 24, replace=False)] = np.nan
    Y = np.column_stack([y1, y2])
    res = fit_components(Ks, Y, Z, component_names=["A", "B", "C"], phenotype_names=["t1", "t2"],
                         covariate_names=["intercept", "age", "sex"], n_variants=[300, 200, 100])
    return Ks, Y, Z, res


# --------------------------------------------------------------------------------------
# against the dense reference
# --------------------------------------------------------------------------------------

def _check_against_reference(Ks, y, Z, f, constrain=True):
    obs = ~np.isnan(y)
    Ko = [K[np.ix_(obs, obs)] for K in Ks]
    h_ref, ll_ref = ref_fit(Ko, y[obs], Z[obs], constrain=constrain)
    h = np.array([c.h2 for c in f.components])
    # both maximise the same likelihood: the reference's optimiser stops within ~1e-8 in h² (gradient
    # by central differences, gtol 1e-10), AI-REML at |Δσ²| < 1e-8 Vp; 1e-6 leaves a margin of 100
    np.testing.assert_allclose(h, h_ref, rtol=0, atol=1e-6)
    assert f.logl_reml == pytest.approx(ll_ref, abs=1e-6)
    return h_ref, ll_ref


@pytest.mark.parametrize("trait", ["t1", "t2"])
def test_three_components_equal_the_dense_reference(three, trait):
    """ĥ²_j and ℓ_R = the maximum of the dense REML likelihood (covariates; t2 with missing values,
    fitted on its observed samples only)."""
    Ks, Y, Z, res = three
    j = ["t1", "t2"].index(trait)
    f = res[trait]
    assert f.converged and f.n == int((~np.isnan(Y[:, j])).sum())
    h_ref, _ = _check_against_reference(Ks, Y[:, j], Z, f)
    assert f.h2 == pytest.approx(h_ref.sum(), abs=1e-6)
    # fixed effects: GLS with V at the reported σ², ω̂ = (ZᵀV⁻¹Z)⁻¹ZᵀV⁻¹y, Cov = (ZᵀV⁻¹Z)⁻¹ (dense, here;
    # the same V, so round-off only)
    o = ~np.isnan(Y[:, j])
    V = f.sigma2_e * np.eye(o.sum()) + sum(c.sigma2 * K[np.ix_(o, o)] for c, K in zip(f.components, Ks))
    ViZ = np.linalg.solve(V, Z[o])
    C = np.linalg.inv(Z[o].T @ ViZ)
    np.testing.assert_allclose([fe.estimate for fe in f.fixed_effects], C @ ViZ.T @ Y[o, j], rtol=1e-8)
    np.testing.assert_allclose([fe.se for fe in f.fixed_effects], np.sqrt(np.diag(C)), rtol=1e-8)


def test_ml_loglik_equals_the_dense_reference(three):
    """logl_ml = the maximum of the dense ML likelihood; h2_ml its total h²."""
    Ks, Y, Z, res = three
    f = res["t1"]
    h_ref, ll_ref = ref_fit(Ks, Y[:, 0], Z, ml=True)
    assert f.logl_ml == pytest.approx(ll_ref, abs=1e-6)
    assert f.h2_ml == pytest.approx(h_ref.sum(), abs=1e-6)


def test_lrt_refits_equal_the_dense_reference(three):
    """The LRT of each component refits without it; of all, the fit without any K (closed form)."""
    Ks, Y, Z, res = three
    f = res["t1"]
    y = Y[:, 0]
    _, ll_full = ref_fit(Ks, y, Z)
    for j, c in enumerate(f.components):
        _, ll_without = ref_fit([K for i, K in enumerate(Ks) if i != j], y, Z)
        assert c.logl_reml_without == pytest.approx(ll_without, abs=1e-6)
        # a component held at 0 (B here) has LRT 0: the fit without it is the same maximum
        stat = max(0.0, 2 * (ll_full - ll_without)) if not c.boundary else 0.0
        assert c.lrt_stat == pytest.approx(stat, abs=2e-6)
        # ½χ²₀ + ½χ²₁: P(LRT > x) = ½ P(χ²₁ > x) = P(|N(0,1)| > √x) / 2
        assert c.lrt_pvalue == pytest.approx(0.5 * math.erfc(math.sqrt(stat / 2)), rel=1e-9) if stat > 0 else 1.0
    ll0 = ref_loglik([0.0] * 3, Ks, y, Z)
    assert f.logl_reml_h2_0 == pytest.approx(ll0, abs=1e-8)
    assert f.lrt_stat == pytest.approx(2 * (ll_full - ll0), abs=2e-6)
    # all = 0, GCTA's rule: ½ P(χ²_3 > LRT); P(χ²_3 > x) = erfc(√(x/2)) + √(2x/π) e^(−x/2)
    x = f.lrt_stat
    assert f.lrt_pvalue == pytest.approx(0.5 * (math.erfc(math.sqrt(x / 2)) + math.sqrt(2 * x / math.pi)
                                                * math.exp(-x / 2)), rel=1e-9)


@pytest.mark.parametrize("m", [2, 4])
def test_two_and_four_components_equal_the_dense_reference(m):
    sizes = [250, 150, 120, 80][:m]
    Ks, Xs, rng = cohort(200, sizes, seed=20 + m)
    Z = np.column_stack([np.ones(200), rng.normal(size=200)])
    y = phenotype(Xs, [0.4 / m + 0.05 * j for j in range(m)], rng, Z, np.array([0.5, 1.0]))
    res = fit_components(Ks, y, Z, lrt=False, ml=False)
    _check_against_reference(Ks, y, Z, res.fits[0])


def test_boundary_component_is_held_at_zero():
    """A component with no effect whose unconstrained estimate is negative: with constrain=True the
    estimate is exactly 0 (flagged as boundary) and equals the reference maximised over h ≥ 0; with
    constrain=False it is negative and equals the unconstrained reference."""
    for seed in range(40):
        Ks, Xs, rng = cohort(200, [300, 200], seed=100 + seed)
        y = phenotype(Xs, [0.5, 0.0], rng)
        un = fit_components(Ks, y, constrain=False, lrt=False, ml=False).fits[0]
        if un.components[1].sigma2 < -0.02:
            break
    else:  # pragma: no cover
        pytest.fail("no seed gave a negative unconstrained estimate")
    Z = np.ones((200, 1))
    _check_against_reference(Ks, y, Z, un, constrain=False)
    con = fit_components(Ks, y, constrain=True, ml=False).fits[0]
    assert con.converged
    assert con.components[1].sigma2 == 0.0 and con.components[1].boundary and not con.components[0].boundary
    _check_against_reference(Ks, y, Z, con, constrain=True)
    # at the bound, the model without the component is the same model: LRT 0, p = 1
    assert con.components[1].lrt_stat == pytest.approx(0.0, abs=1e-6) and con.components[1].lrt_pvalue == 1.0


def ref_reml_score(theta, Ks, y, Z):
    """The REML score ∂ℓ_R/∂θ_k = ½[yᵀPK_kPy − tr(PK_k)] for k = 1..m and K_{m+1} = I, by dense NumPy."""
    n = Z.shape[0]
    Vi = np.linalg.inv(theta[-1] * np.eye(n) + sum(t * K for t, K in zip(theta[:-1], Ks)))
    P = Vi - Vi @ Z @ np.linalg.solve(Z.T @ Vi @ Z, Z.T @ Vi)
    Py = P @ y
    return np.array([0.5 * (Py @ K @ Py - np.vdot(P, K)) for K in list(Ks) + [np.eye(n)]])


@pytest.mark.parametrize("m, seed, missing", [(2, 2, False), (3, 5, True)])
def test_the_maximum_on_the_residual_boundary_is_reached(m, seed, missing):
    """Small n (80) with 200 independent normal 'genotypes' per component, so V = Σ_j σ²_j K_j stays
    positive definite at σ²_e = 0, and seeds where the REML maximum lies on that boundary (the
    second with 20 missing values and σ²_1 at 0 as well). The fit must stop at the maximum: cutting
    the whole AI step halfway to σ²_e = 0 moved every σ²_j by the same fraction and stalled,
    reporting convergence 0.014 and 0.81 below the maximum in ℓ_R. Reference: ℓ_R over σ²_j ≥ 1e-9
    (V stays invertible) at σ²_e = 0 by L-BFGS-B with the dense score; at its optimum the score of
    each σ²_j off its bound is 0 and that of a σ²_j at its bound and of σ²_e negative (the
    Karush–Kuhn–Tucker conditions of the boundary maximum). Tolerance 1e-6: the fit stops at
    |Δθ| < 1e-8 Vp with σ²_e ~ 1e-8 Vp (ℓ_R off by |s_e| σ²_e ~ 1e-8), the reference at a projected
    gradient below 1e-10 with a σ²_j at its bound off 0 by 1e-9."""
    n, p = 80, 200
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, m * p))
    Ks = [X[:, p * j:p * (j + 1)] @ X[:, p * j:p * (j + 1)].T / p for j in range(m)]
    sd = np.sqrt(np.r_[0.4, 0.2, np.zeros(m - 2)] / p)
    b = np.concatenate([rng.normal(0, s, p) for s in sd])
    Z = np.column_stack([np.ones(n), rng.normal(size=n)])
    Y = np.column_stack([X @ b + rng.normal(0, np.sqrt(0.4), n) + Z[:, 1], X @ b[::-1] + rng.normal(size=n)])
    Y[rng.choice(n, 20, replace=False), 1] = np.nan
    y = Y[:, 1] if missing else Y[:, 0]
    f = fit_components(Ks, y, Z, lrt=False, ml=False).fits[0]
    obs = ~np.isnan(y)
    Ko, yo, Zo = [K[np.ix_(obs, obs)] for K in Ks], y[obs], Z[obs]

    def neg(g):
        th = np.r_[g, 0.0]
        return -ref_reml_theta(th, Ko, yo, Zo), -ref_reml_score(th, Ko, yo, Zo)[:-1]

    opt = minimize(neg, np.full(m, np.var(yo) / m), jac=True, method="L-BFGS-B", bounds=[(1e-9, None)] * m,
                   options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 1000})
    ref = np.r_[opt.x, 0.0]
    score = ref_reml_score(ref, Ko, yo, Zo)
    off = opt.x > 1e-8
    assert np.max(np.abs(score[:-1][off])) < 1e-6 and np.all(score[:-1][~off] < 0) and score[-1] < -0.1
    assert f.converged
    np.testing.assert_allclose([c.sigma2 for c in f.components] + [f.sigma2_e], ref, rtol=0, atol=1e-6)
    assert f.logl_reml == pytest.approx(-opt.fun, abs=1e-6)
    assert [c.boundary for c in f.components] == list(~off)


def test_one_component_reproduces_fit_reml():
    """m = 1: the same model as bigmm.fit_reml on the exact spectrum of K (with covariates and a
    missing value): h², σ², logl_reml, logl_ml, the LRT and the fixed effects agree to 1e-6."""
    Ks, Xs, rng = cohort(220, [500], seed=5)
    Z = np.column_stack([np.ones(220), rng.normal(size=220)])
    y = phenotype(Xs, [0.5], rng, Z, np.array([1.0, -0.5]))
    y[[3, 50, 77]] = np.nan
    one = fit_components(Ks, y, Z).fits[0]
    ref = bigmm.fit_reml(bigmm.exact_spectrum(Ks[0]), y, Z, missing="subset").fits[0]
    assert one.n == ref.n == 217
    for key in ("h2", "pve"):
        assert getattr(one, key) == pytest.approx(getattr(ref, key), abs=1e-6), key
    for key in ("sigma2_g", "sigma2_e"):
        assert getattr(one, key) == pytest.approx(getattr(ref, key), rel=1e-6), key
    for key in ("logl_reml", "logl_reml_h2_0", "logl_ml", "lrt_stat"):
        assert getattr(one, key) == pytest.approx(getattr(ref, key), abs=1e-6), key
    assert one.lrt_pvalue == pytest.approx(ref.lrt_pvalue, rel=1e-5)
    for a, b in zip(one.fixed_effects, ref.fixed_effects):
        assert a.estimate == pytest.approx(b.estimate, rel=1e-6, abs=1e-9)
        assert a.se == pytest.approx(b.se, rel=1e-6)
    # the SEs differ by their information: fit_reml inverts the observed information, this fit the
    # average information (at the optimum, the mean of the observed and the expected); O(1/√n) apart
    assert one.h2_se == pytest.approx(ref.h2_se, rel=0.1)


# --------------------------------------------------------------------------------------
# standard errors
# --------------------------------------------------------------------------------------

def test_ai_matrix_is_the_mean_of_observed_and_expected_information(three):
    """SEs come from the inverse AI matrix. For V linear in θ, AI = ½ yᵀP K_k P K_l P y equals
    (observed + expected)/2 exactly. Observed: −Hessian of ℓ_R(θ) by central differences (step
    1e-3 σ²: truncation ~1e-6 relative); expected: ½ tr(P K_k P K_l), both dense, here."""
    Ks, Y, Z, res = three
    f = res["t1"]
    y = Y[:, 0]
    theta = np.array([c.sigma2 for c in f.components] + [f.sigma2_e])
    q = theta.size
    AI = np.linalg.inv(np.array(f.sigma2_cov))
    step = np.full(q, 1e-3 * theta.sum())  # also for a component at 0 (V stays positive definite)
    H = np.zeros((q, q))
    for k in range(q):
        for l in range(q):
            ek, el = np.eye(q)[k] * step[k], np.eye(q)[l] * step[l]
            H[k, l] = (ref_reml_theta(theta + ek + el, Ks, y, Z) - ref_reml_theta(theta + ek - el, Ks, y, Z)
                       - ref_reml_theta(theta - ek + el, Ks, y, Z)
                       + ref_reml_theta(theta - ek - el, Ks, y, Z)) / (4 * step[k] * step[l])
    n = y.size
    V = theta[-1] * np.eye(n) + sum(t * K for t, K in zip(theta[:-1], Ks))
    Vi = np.linalg.inv(V)
    P = Vi - Vi @ Z @ np.linalg.solve(Z.T @ Vi @ Z, Z.T @ Vi)
    PK = [P @ K for K in Ks] + [P]
    expected = 0.5 * np.array([[np.sum(a * b.T) for b in PK] for a in PK])
    np.testing.assert_allclose(AI, 0.5 * (-H + expected), rtol=1e-4)
    # the reported SEs: from AI⁻¹; the observed-information SEs differ by O(1/√n)
    se_obs = np.sqrt(np.diag(np.linalg.inv(-H)))
    se_ai = np.array([c.sigma2_se for c in f.components] + [f.sigma2_e_se])
    np.testing.assert_allclose(se_ai, np.sqrt(np.diag(np.linalg.inv(AI))), rtol=1e-12)
    np.testing.assert_allclose(se_ai, se_obs, rtol=0.25)


def test_delta_method_ses(three):
    """h²_j, total h², shares and enrichments: SEs = √(∇ᵀ Σ ∇) with ∇ by central differences of the
    ratio here and Σ = sigma2_cov (linear forms: the differences are exact to round-off)."""
    _, _, _, res = three
    f = res["t2"]
    theta = np.array([c.sigma2 for c in f.components] + [f.sigma2_e])
    cov = np.array(f.sigma2_cov)
    nv = np.array([300.0, 200.0, 100.0])

    def se(fun):
        g = np.array([(fun(theta + 1e-6 * e) - fun(theta - 1e-6 * e)) / 2e-6 for e in np.eye(4)])
        return math.sqrt(g @ cov @ g)

    for j, c in enumerate(f.components):
        assert c.h2 == pytest.approx(theta[j] / theta.sum(), rel=1e-12)
        assert c.h2_se == pytest.approx(se(lambda t: t[j] / t.sum()), rel=1e-6)
        assert c.share == pytest.approx(theta[j] / theta[:3].sum(), rel=1e-12)
        assert c.share_se == pytest.approx(se(lambda t: t[j] / t[:3].sum()), rel=1e-6)
        assert c.enrichment == pytest.approx(c.share / (nv[j] / nv.sum()), rel=1e-12)
        assert c.enrichment_se == pytest.approx(se(lambda t: t[j] / t[:3].sum() / (nv[j] / nv.sum())), rel=1e-6)
    assert f.h2_se == pytest.approx(se(lambda t: t[:3].sum() / t.sum()), rel=1e-6)
    assert sum(c.share for c in f.components) == pytest.approx(1.0, abs=1e-12)


# --------------------------------------------------------------------------------------
# simulation with known truth
# --------------------------------------------------------------------------------------

def test_simulation_recovers_the_components():
    """Seeded, n = 600, two components of 400 variants each with true σ² = (0.4, 0.1), σ²_e = 0.5:
    each estimate within 4 SEs of the truth (|z| > 4 has probability 6e-5 per estimate)."""
    Ks, Xs, rng = cohort(600, [400, 400], seed=7)
    y = phenotype(Xs, [0.4, 0.1], rng)
    f = fit_components(Ks, y, component_names=["big", "small"], lrt=False, ml=False).fits[0]
    truth = {"big": 0.4, "small": 0.1}
    for c in f.components:
        assert abs(c.sigma2 - truth[c.name]) < 4 * c.sigma2_se, (c.name, c.sigma2, c.sigma2_se)
    assert abs(f.sigma2_e - 0.5) < 4 * f.sigma2_e_se


# --------------------------------------------------------------------------------------
# the result type
# --------------------------------------------------------------------------------------

def test_result_table_and_json_round_trip(three):
    _, _, _, res = three
    assert isinstance(res, ComponentsResult) and isinstance(res, bigmm.results.FitsResult)
    assert all(isinstance(f, ComponentsFit) for f in res.fits)
    df = res.to_pandas()
    assert len(df) == 2 * 3
    assert list(df["phenotype"]) == ["t1"] * 3 + ["t2"] * 3 and list(df["component"]) == ["A", "B", "C"] * 2
    row = df.iloc[4]
    c = res["t2"].component("B")
    assert row["h2"] == c.h2 and row["enrichment_se"] == c.enrichment_se and row["h2_total"] == res["t2"].h2
    ph = res.to_pandas("phenotypes")
    assert list(ph["phenotype"]) == ["t1", "t2"] and list(ph["n_components"]) == [3, 3]
    assert "beta_sex" in ph.columns
    text = json.dumps(res.to_dict())
    back = ComponentsResult.from_dict(json.loads(text))
    assert json.dumps(back.to_dict()) == text  # NaN != NaN: compare the JSON texts
    assert back.fits[1].components == res.fits[1].components and back.component_names == ("A", "B", "C")
    assert "AI-REML, 3 components (A, B, C)" in repr(res) and "t2 components: A h2=" in repr(res)


def test_scaling_and_permuting_the_samples():
    """y → s·y scales σ² by s², ω by s, leaves h² and the tests unchanged and moves ℓ_R by −(n − c) log s;
    permuting the samples (of y, Z and both sides of every K) changes nothing (1e-7: two fits, each
    converged to |Δσ²| < 1e-8 Vp)."""
    Ks, Xs, rng = cohort(150, [120, 80], seed=9)
    Z = np.column_stack([np.ones(150), rng.normal(size=150)])
    y = phenotype(Xs, [0.4, 0.2], rng, Z, np.array([2.0, 1.0]))
    base = fit_components(Ks, y, Z).fits[0]
    s = 1e3
    big = fit_components(Ks, s * y, Z).fits[0]
    for a, b in zip(base.components, big.components):
        assert b.h2 == pytest.approx(a.h2, abs=1e-7) and b.sigma2 == pytest.approx(s * s * a.sigma2, rel=1e-6)
        assert b.lrt_stat == pytest.approx(a.lrt_stat, abs=1e-6)
    assert big.logl_reml == pytest.approx(base.logl_reml - (150 - 2) * math.log(s), abs=1e-6)
    assert big.logl_ml == pytest.approx(base.logl_ml - 150 * math.log(s), abs=1e-6)
    assert big.fixed_effects[1].estimate == pytest.approx(s * base.fixed_effects[1].estimate, rel=1e-6)
    perm = rng.permutation(150)
    moved = fit_components([K[np.ix_(perm, perm)] for K in Ks], y[perm], Z[perm]).fits[0]
    for a, b in zip(base.components, moved.components):
        assert b.h2 == pytest.approx(a.h2, abs=1e-7) and b.h2_se == pytest.approx(a.h2_se, rel=1e-6)
    assert moved.logl_reml == pytest.approx(base.logl_reml, abs=1e-7)


def test_a_fit_that_does_not_converge_says_so():
    """max_iter too small: the fit is reported with converged=False and named in the notes."""
    Ks, Xs, rng = cohort(120, [100, 100], seed=2)
    y = phenotype(Xs, [0.3, 0.2], rng)
    res = fit_components(Ks, y, max_iter=2, lrt=False, ml=False)
    assert not res.fits[0].converged and res.fits[0].iterations == 2
    assert res.notes["not_converged"] == ["pheno1"]
    assert fit_components(Ks, y, lrt=False, ml=False).notes["not_converged"] == []


def test_bad_inputs_are_refused():
    Ks, Xs, rng = cohort(50, [60, 60], seed=1)
    y = rng.normal(size=50)
    with pytest.raises(bigmm.InputError, match="component 'b' has shape"):
        fit_components([Ks[0], Ks[1][:49, :49]], y, component_names=["a", "b"])
    with pytest.raises(bigmm.InputError, match="n_variants"):
        fit_components(Ks, y, n_variants=[10, 0])
    with pytest.raises(bigmm.InputError, match="name each"):
        fit_components(Ks, y, component_names=["a", "a"])
    with pytest.raises(bigmm.InputError, match="'pheno1' is constant"):
        fit_components(Ks, np.ones(50))


def test_a_singular_average_information_matrix_is_not_a_converged_fit(monkeypatch):
    """An unconstrained fit can end where V is singular (a direction with no maximum, e.g. a
    component driven negative until V loses rank): its steps stop, but the AI matrix cannot be
    inverted and every SE is NaN. That point is reported as not converged."""
    import bigmm.vcreml as vc

    rng = np.random.default_rng(3)
    n = 60
    Ks = [x @ x.T / x.shape[1] for x in (rng.standard_normal((n, 40)), rng.standard_normal((n, 90)))]
    y = rng.standard_normal(n)
    assert vc.fit_components(Ks, y, lrt=False, ml=False).fits[0].converged
    monkeypatch.setattr(vc, "_inverse_ai", lambda st: np.full((3, 3), np.nan))
    f = vc.fit_components(Ks, y, lrt=False, ml=False).fits[0]
    assert not f.converged and np.isnan(f.h2_se)
    # singular to the fit's precision though invertible: condition number above 1e12 after scaling
    # (whatever the scale of each parameter); a regular AI matrix is not
    assert vc._ill_conditioned(np.array([[1.0, 1.0], [1.0, 1.0 + 1e-14]]) * [[1e6], [1.0]] * [1e6, 1.0])
    assert not vc._ill_conditioned(np.array([[2.0, 1.0], [1.0, 3.0]]) * [[1e6], [1.0]] * [1e6, 1.0])
