"""Bivariate REML (genetic correlations) on a spectrum against a dense NumPy/SciPy bivariate REML.

The reference here stacks the pair, ``y = [y_a; y_b]`` (2n), ``V = G₀ ⊗ K + E₀ ⊗ I``,
``X = I₂ ⊗ Z``, and evaluates Harville's restricted log-likelihood (without log det XᵀX) by a
Cholesky factor of the 2n x 2n V; it is maximised by SciPy over a Cholesky parametrisation of
G₀ and E₀ (which keeps G₀ positive semi-definite, the constraint bigmm applies by default).
Nothing here uses bigmm's decoupling or its measure.
"""

import math

import numpy as np
import pytest
from scipy.optimize import minimize

import bigmm
from bigmm.bivariate import (BivariateFit, BivariateResult, fit_bivariate, pair_loglik, pair_score_ai,
                             spectral_measure)
from bigmm.reml import rotate

LOG2PI = math.log(2 * math.pi)


# ------------------------------------------------------------------ the dense reference


def dense_parts(G0, E0, Y, Z, K):
    """(ℓ_R, P, y) of the stacked pair by dense linear algebra (rows with a NaN in either trait dropped)."""
    o = ~np.isnan(Y).any(axis=1)
    Y, Z, K = Y[o], Z[o], K[np.ix_(o, o)]
    n, c = Z.shape
    V = np.kron(G0, K) + np.kron(E0, np.eye(n))
    X = np.kron(np.eye(2), Z)
    y = Y.T.ravel()
    L = np.linalg.cholesky(V)
    Vi = np.linalg.inv(V)
    A = X.T @ Vi @ X
    P = Vi - Vi @ X @ np.linalg.solve(A, X.T @ Vi)
    ll = -0.5 * ((2 * n - 2 * c) * LOG2PI + 2 * np.log(np.diag(L)).sum() + np.linalg.slogdet(A)[1] + y @ P @ y)
    return ll, P, y, K


def dense_loglik(G0, E0, Y, Z, K, ml=False):
    """ℓ_R (or the ML log-likelihood, fixed effects profiled out) of the stacked pair, densely."""
    o = ~np.isnan(Y).any(axis=1)
    Y, Z, K = Y[o], Z[o], K[np.ix_(o, o)]
    n, c = Z.shape
    V = np.kron(G0, K) + np.kron(E0, np.eye(n))
    X = np.kron(np.eye(2), Z)
    y = Y.T.ravel()
    try:
        L = np.linalg.cholesky(V)
    except np.linalg.LinAlgError:
        return -np.inf
    LX, Ly = np.linalg.solve(L, X), np.linalg.solve(L, y)
    A = LX.T @ LX
    b = LX.T @ Ly
    yPy = Ly @ Ly - b @ np.linalg.solve(A, b)
    if ml:
        return -0.5 * (2 * n * LOG2PI + 2 * np.log(np.diag(L)).sum() + yPy)
    return -0.5 * ((2 * n - 2 * c) * LOG2PI + 2 * np.log(np.diag(L)).sum() + np.linalg.slogdet(A)[1] + yPy)


DERIV = [(0, [[1, 0], [0, 0]]), (0, [[0, 0], [0, 1]]), (0, [[0, 1], [1, 0]]),
         (1, [[1, 0], [0, 0]]), (1, [[0, 0], [0, 1]]), (1, [[0, 1], [1, 0]])]


def dense_vi(K, n):
    """dV/dθ_i, θ = (σ²_g,a, σ²_g,b, cov_g, σ²_e,a, σ²_e,b, cov_e)."""
    return [np.kron(np.array(E, float), K if e == 0 else np.eye(n)) for e, E in DERIV]


def dense_score_ai_expected(G0, E0, Y, Z, K, expected=True):
    """Score ½(yᵀPV_iPy − tr PV_i), AI ½ yᵀPV_iPV_jPy and expected information ½ tr(PV_iPV_j), densely."""
    _, P, y, Ko = dense_parts(G0, E0, Y, Z, K)
    Vi = dense_vi(Ko, Ko.shape[0])
    Py = P @ y
    score = np.array([0.5 * (Py @ D @ Py - np.sum(P * D)) for D in Vi])
    PVPy = [P @ (D @ Py) for D in Vi]
    AI = np.array([[0.5 * (Di @ Py) @ PVPy[j] for j in range(6)] for Di in Vi])
    if not expected:
        return score, AI, None
    PV = [P @ D for D in Vi]
    expected = np.array([[0.5 * np.sum(PV[i] * PV[j].T) for j in range(6)] for i in range(6)])
    return score, AI, expected


def theta_of(x):
    """G₀ = L_g L_gᵀ, E₀ = L_e L_eᵀ from x = (L_g11, L_g21, L_g22, L_e11, L_e21, L_e22)."""
    Lg = np.array([[x[0], 0.0], [x[1], x[2]]])
    Le = np.array([[x[3], 0.0], [x[4], x[5]]])
    return Lg @ Lg.T, Le @ Le.T


def unpack(x, model):
    """(G₀, E₀) of the dense optimiser's parameters: "full" (G₀ = L Lᵀ: PSD), "rg0" (G₀ = diag(a², b²)),
    "rg1" (G₀ = v vᵀ); E₀ = L_e L_eᵀ from the last three."""
    Le = np.array([[x[-3], 0.0], [x[-2], x[-1]]])
    if model == "full":
        Lg = np.array([[x[0], 0.0], [x[1], x[2]]])
        G0 = Lg @ Lg.T
    elif model == "rg0":
        G0 = np.diag([x[0] ** 2, x[1] ** 2])
    else:
        G0 = np.outer(x[:2], x[:2])
    return G0, Le @ Le.T


def vec(G0, E0):
    return np.array([G0[0, 0], G0[1, 1], G0[0, 1], E0[0, 0], E0[1, 1], E0[0, 1]])


def dense_fit(Y, Z, K, x0, model="full"):
    """Maximum of the dense ℓ_R over the parametrisation ``model`` (see :func:`unpack`): Newton steps
    in x with the dense score and AI matrix by the chain rule through θ(x) (J = ∂θ/∂x and the second
    derivatives of θ(x) by central differences, exact as θ is quadratic in x), the curvature
    −JᵀAI J + Σ s_i ∂²θ_i, step halving, until the gradient in x is below 1e-9."""
    def derivs(x):
        J = np.empty((6, x.size))
        H2 = np.empty((6, x.size, x.size))
        for k in range(x.size):
            e = np.zeros(x.size)
            e[k] = 1e-3
            J[:, k] = (vec(*unpack(x + e, model)) - vec(*unpack(x - e, model))) / 2e-3
            for l in range(x.size):
                f = np.zeros(x.size)
                f[l] = 1e-3
                H2[:, k, l] = (vec(*unpack(x + e + f, model)) - vec(*unpack(x + e - f, model))
                               - vec(*unpack(x - e + f, model)) + vec(*unpack(x - e - f, model))) / 4e-6
        return J, H2

    def ll(x):
        return dense_loglik(*unpack(x, model), Y, Z, K)

    x = np.asarray(x0, float)
    for _ in range(100):
        G0, E0 = unpack(x, model)
        s, AI, _ = dense_score_ai_expected(G0, E0, Y, Z, K, expected=False)
        J, H2 = derivs(x)
        g = J.T @ s
        if np.abs(g).max() < 1e-9:
            break
        H = J.T @ AI @ J - np.einsum("i,ikl->kl", s, H2)
        if np.linalg.eigvalsh(H).min() <= 0:
            H = J.T @ AI @ J
        step = np.linalg.solve(H, g)
        t, l0 = 1.0, ll(x)
        while not ll(x + t * step) >= l0 - 1e-12 * abs(l0) and t > 1e-8:
            t /= 2
        x = x + t * step
    else:
        raise AssertionError("the dense reference did not converge")
    G0, E0 = unpack(x, model)
    return G0, E0, dense_loglik(G0, E0, Y, Z, K)


# ------------------------------------------------------------------ a small cohort


@pytest.fixture(scope="module")
def cohort():
    """n = 150 samples, 500 variants, an exact spectrum, two covariates, two correlated traits
    (simulated r_g = 0.6, r_e = −0.3, h² = 0.5 and 0.4) and a third that is noise."""
    rng = np.random.default_rng(4)  # a seed whose estimates are interior (|r_g| < 1)
    n, p = 150, 500
    G = rng.binomial(2, rng.uniform(0.1, 0.5, p), size=(n, p)).astype(np.int8)
    X = (G - G.mean(0)) / G.std(0)
    K = X @ X.T / p  # a GRM (no bigmm.grm: its Dask set-up costs seconds here)
    spec = bigmm.exact_spectrum(K)
    Cg = np.array([[0.5, 0.6 * math.sqrt(0.2)], [0.6 * math.sqrt(0.2), 0.4]])
    Ce = np.array([[0.5, -0.3 * math.sqrt(0.3)], [-0.3 * math.sqrt(0.3), 0.6]])
    g = X @ rng.normal(size=(p, 2)) / math.sqrt(p) @ np.linalg.cholesky(Cg).T
    e = rng.normal(size=(n, 2)) @ np.linalg.cholesky(Ce).T
    Z = np.column_stack([np.ones(n), rng.normal(50, 10, n), rng.integers(0, 2, n)])
    Y = np.column_stack([3.0 + 0.02 * Z[:, 1] + g[:, 0] + e[:, 0], -1.0 + 0.5 * Z[:, 2] + g[:, 1] + e[:, 1],
                         rng.normal(size=n)])
    return spec, K, Y, Z


def reduced_K(spec):
    """The GRM the reduced spectrum models: U S Uᵀ + λ̄ (I − U Uᵀ)."""
    U = spec.U
    return (U * spec.s) @ U.T + spec.tail * (np.eye(spec.n) - U @ U.T)


def measure_of(spec, Y, Z, missing="auto"):
    design = rotate(spec, Y, Z, missing=missing)
    assert len(design.groups) == 1
    rot = design.groups[0]
    m = spectral_measure(rot, 0, 1)
    m.G[-2] *= rot.scale[0]
    m.G[-1] *= rot.scale[1]
    return m, rot


# arbitrary (G₀, E₀): PSD, an indefinite G₀ (allowed unconstrained while V is positive definite)
POINTS = [(np.array([[0.7, 0.25], [0.25, 0.4]]), np.array([[0.9, -0.1], [-0.1, 1.3]])),
          (np.array([[0.3, 0.3], [0.3, 0.2]]), np.array([[1.1, 0.4], [0.4, 0.8]]))]


@pytest.mark.parametrize("kind", ["exact", "reduced", "missing-indicator", "missing-subset", "reduced-missing"])
def test_decoupled_loglik_equals_dense(cohort, kind):
    """The decoupling identity ℓ_R(G₀, E₀) = Σ_k ℓ_R,k(y*_k) − ½(n − c) log det E₀, evaluated from the
    measure, equals the dense stacked ℓ_R at arbitrary (G₀, E₀): exact spectrum, reduced spectrum
    (against the dense likelihood of the K the reduced model stands for), and samples missing in one
    trait (the pair's common samples; indicator columns or a subset spectrum). Tolerance 1e-10
    relative: float64 round-off of a 300 x 300 Cholesky and the 150-term eigen sums."""
    spec, K, Y, Z = cohort
    Y = Y[:, :2].copy()
    Kref = K
    missing = "auto"
    if kind.startswith("reduced"):
        spec = spec.top(40)
        Kref = reduced_K(spec)
    if "missing" in kind:
        Y[::7, 1] = np.nan
        missing = "subset" if kind == "missing-subset" else "indicator"
        Y[np.isnan(Y).any(axis=1)] = np.nan  # the pair's rows: those observed for both
    m, rot = measure_of(spec, Y, Z, missing)
    for G0, E0 in POINTS:
        ours = pair_loglik(m, G0, E0)
        ref = dense_loglik(G0, E0, Y, Z, Kref)
        assert np.isfinite(ref)
        assert abs(ours - ref) < 1e-10 * abs(ref), (kind, ours, ref)
        if not m.n_indicators:  # ML: −½ [2n log 2π + log det V + yᵀPy], same tolerance
            ref_ml = dense_loglik(G0, E0, Y, Z, Kref, ml=True)
            assert abs(pair_loglik(m, G0, E0, ml=True) - ref_ml) < 1e-10 * abs(ref_ml)


def test_score_and_ai_equal_dense(cohort):
    """The score −½ tr(PV_i) + ½ yᵀPV_iPy and the AI matrix ½ yᵀPV_iPV_jPy from the measure (traces
    from the log-determinant's h-derivatives) equal the dense ones (1e-8 relative to the largest
    entry: round-off of dense 300 x 300 products)."""
    spec, K, Y, Z = cohort
    Y = Y[:, :2]
    m, _ = measure_of(spec.top(60), Y, Z)
    Kr = reduced_K(spec.top(60))
    for G0, E0 in POINTS:
        s, ai = pair_score_ai(m, G0, E0)
        s_ref, ai_ref, _ = dense_score_ai_expected(G0, E0, Y, Z, Kr)
        np.testing.assert_allclose(s, s_ref, atol=1e-8 * np.abs(s_ref).max())
        np.testing.assert_allclose(ai, ai_ref, atol=1e-8 * np.abs(ai_ref).max())


def _x0(fit):
    """A Cholesky start for the dense optimiser, near bigmm's estimate but not at it."""
    G0 = fit.G0 * 0.8 + 0.05 * np.eye(2)
    E0 = fit.E0 * 1.1 + 0.05 * np.eye(2)
    Lg, Le = np.linalg.cholesky(G0), np.linalg.cholesky(E0)
    return np.array([Lg[0, 0], Lg[1, 0], Lg[1, 1], Le[0, 0], Le[1, 0], Le[1, 1]])


@pytest.mark.parametrize("missing", [False, True], ids=["complete", "missing-in-one-trait"])
def test_fit_equals_dense_reml(cohort, missing):
    """fit_bivariate's estimates = the dense REML maximum (SciPy over Cholesky factors of G₀, E₀) with
    three covariates, on complete data and with 22 samples missing in trait b (fitted on the common
    samples, n_left_out = 22): r_g, G₀, E₀ to 1e-6 (the dense optimiser's precision: BFGS to a
    gradient of 1e-10 on a likelihood of curvature ~10-100 per unit), ℓ_R to 1e-9 relative. The
    fixed effects equal the dense GLS estimate at bigmm's (G₀, E₀) to 1e-8."""
    spec, K, Y, Z = cohort
    Y = Y[:, :2].copy()
    if missing:
        Y[::7, 1] = np.nan
    res = fit_bivariate(spec, Y, Z, phenotype_names=["a", "b"], covariate_names=["intercept", "age", "sex"])
    f = res["a", "b"]
    assert f.converged and f.boundary == ""
    assert f.n == 150 - (22 if missing else 0) and f.n_left_out == (22 if missing else 0)
    G0, E0, ll = dense_fit(Y, Z, K, _x0(f))
    rg = G0[0, 1] / math.sqrt(G0[0, 0] * G0[1, 1])
    assert abs(f.rg - rg) < 1e-6
    np.testing.assert_allclose(f.G0, G0, atol=1e-6)
    np.testing.assert_allclose(f.E0, E0, atol=1e-6)
    assert abs(f.logL - ll) < 1e-9 * abs(ll)
    assert f.logL >= ll - 1e-9 * abs(ll)  # bigmm's maximum is at least as high
    # fixed effects: GLS at bigmm's estimate, densely
    o = ~np.isnan(Y).any(axis=1)
    n = int(o.sum())
    V = np.kron(f.G0, K[np.ix_(o, o)]) + np.kron(f.E0, np.eye(n))
    X = np.kron(np.eye(2), Z[o])
    Vi = np.linalg.inv(V)
    C = np.linalg.inv(X.T @ Vi @ X)
    beta = C @ X.T @ Vi @ Y[o].T.ravel()
    ours = np.array([[fe[1] for fe in f.fixed_effects], [fe[3] for fe in f.fixed_effects]]).ravel()
    ours_se = np.array([[fe[2] for fe in f.fixed_effects], [fe[4] for fe in f.fixed_effects]]).ravel()
    np.testing.assert_allclose(ours, beta, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ours_se, np.sqrt(np.diag(C)), rtol=1e-8)


def test_ses_from_ai_equal_dense(cohort):
    """SEs: the inverse of the dense AI matrix at bigmm's estimate gives bigmm's SEs of G₀, E₀ and
    (delta method) of r_g and h² to 1e-7; the inverse dense expected information ½ tr(PV_iPV_j)
    gives SEs within 25% of them (the AI matrix is the expected information only on average over
    the data; they differ by O(n^-1/2), measured here 0.1-15% at n = 150)."""
    spec, K, Y, Z = cohort
    f = fit_bivariate(spec, Y[:, :2], Z, lrt=False).fits[0]
    _, AI, expected = dense_score_ai_expected(f.G0, f.E0, Y[:, :2], Z, K)
    cov = np.linalg.inv(AI)
    ses = np.sqrt(np.diag(cov))
    ours = np.array([f.sg_a_se, f.sg_b_se, f.cov_g_se, f.ve_a_se, f.ve_b_se, f.cov_e_se])
    np.testing.assert_allclose(ours, ses, rtol=1e-7)
    ga, gb, gab = f.sg_a, f.sg_b, f.cov_g
    grad = np.zeros(6)
    grad[2], grad[0], grad[1] = 1 / math.sqrt(ga * gb), -0.5 * f.rg / ga, -0.5 * f.rg / gb
    assert abs(f.rg_se - math.sqrt(grad @ cov @ grad)) < 1e-7 * f.rg_se
    np.testing.assert_allclose(ours, np.sqrt(np.diag(np.linalg.inv(expected))), rtol=0.25)


def test_lrts_equal_dense(cohort):
    """LRT of r_g = 0 and of |r_g| = 1: bigmm's refits (cov_g = 0; G₀ = v vᵀ) reach the dense
    constrained maxima to 1e-8 relative in ℓ; p-values χ²₁ and ½χ²₁."""
    from scipy.stats import chi2

    spec, K, Y, Z = cohort
    r = np.arange(100)  # the first 100 samples: the dense refits stay fast
    spec, K, Y, Z = bigmm.exact_spectrum(K[np.ix_(r, r)]), K[np.ix_(r, r)], Y[r, :2], Z[r]
    f = fit_bivariate(spec, Y, Z).fits[0]
    assert f.boundary == "" and f.converged
    Le = np.linalg.cholesky(f.E0)
    e = [Le[0, 0], Le[1, 0], Le[1, 1]]
    _, _, ll0 = dense_fit(Y, Z, K, np.array([math.sqrt(f.sg_a), math.sqrt(f.sg_b), *e]), "rg0")
    _, _, ll1 = dense_fit(Y, Z, K, np.array([math.sqrt(f.sg_a), math.sqrt(f.sg_b), *e]), "rg1")
    assert abs(f.logL_rg0 - ll0) < 1e-8 * abs(ll0) and abs(f.logL_rg1 - ll1) < 1e-8 * abs(ll1)
    assert abs(f.lrt_rg0 - 2 * (f.logL - ll0)) < 1e-5
    assert f.p_rg0 == pytest.approx(chi2.sf(f.lrt_rg0, 1), rel=1e-10)
    assert f.p_rg1 == pytest.approx(0.5 * chi2.sf(f.lrt_rg1, 1), rel=1e-10)


def test_constrained_at_the_boundary_equals_dense():
    """Simulated r_g = 1 at n = 120: where the unconstrained maximum has |r_g| > 1, the constrained
    fit lies on the PSD boundary (G₀ = v vᵀ, r_g = ±1) and equals the dense maximum over Cholesky
    factors (PSD by construction) to 1e-7 in ℓ; the unconstrained fit has the higher ℓ."""
    rng = np.random.default_rng(7)
    n, p = 120, 300
    G = rng.binomial(2, 0.3, size=(n, p)).astype(np.int8)
    X = (G - G.mean(0)) / G.std(0)
    K = X @ X.T / p
    spec = bigmm.exact_spectrum(K)
    for seed in range(40):
        r = np.random.default_rng(seed)
        g = np.linalg.cholesky(K + 1e-9 * np.eye(n)) @ r.normal(size=n)
        Y = np.column_stack([g + r.normal(size=n), 0.8 * g + r.normal(size=n)])
        free = fit_bivariate(spec, Y, constrain=False, lrt=False).fits[0]
        if free.rg > 1.0:
            break
    else:
        pytest.fail("no replicate with an unconstrained r_g > 1")
    f = fit_bivariate(spec, Y).fits[0]
    assert f.boundary == "rank-1 G0" and f.rg == pytest.approx(1.0, abs=1e-12)
    assert f.lrt_rg1 == 0.0 and f.p_rg1 == 1.0
    Z = np.ones((n, 1))
    _, _, ll = dense_fit(Y, Z, K, _x0(f))
    assert abs(f.logL - ll) < 1e-7 * abs(ll)
    assert free.logL > f.logL


@pytest.mark.parametrize("reduced", [False, True], ids=["exact", "reduced"])
def test_phenotype_with_itself(cohort, reduced):
    """r_g of a phenotype with itself (and with a rescaled, shifted copy) is 1, the LRT of |r_g| = 1
    is 0, and its h² is fit_reml's univariate h² (to 1e-7: fit_reml bisects the score to 1e-14,
    this path maximises the same profile from the measure by Brent's method to ~1e-8 in h²; on a
    reduced spectrum this checks that the measure's complement node reproduces fit_reml's tail)."""
    spec, K, Y, Z = cohort
    if reduced:
        spec = spec.top(30)
    y = Y[:, 0]
    Yp = np.column_stack([y, y, -2.0 * y + 5.0])
    res = fit_bivariate(spec, Yp, Z, phenotype_names=["a", "a2", "neg"], pairs=[("a", "a2"), ("a", "neg")])
    uni = bigmm.fit_reml(spec, y, Z)
    for f, sign in zip(res.fits, (1.0, -1.0)):
        assert f.rg == sign and f.lrt_rg1 == 0.0 and f.boundary == "degenerate"
        assert abs(f.h2_a - uni.fits[0].h2) < 1e-7 and abs(f.h2_b - uni.fits[0].h2) < 1e-7
        assert f.sg_a == pytest.approx(uni.fits[0].sigma2_g, rel=1e-6)


def test_given_univariate_starts_give_the_same_fit(cohort):
    """fit_pair started from univariate fits the caller computed once (as the matrix-free path does
    for all pairs of a phenotype) is the fit that computes them itself: the same start, the same
    iterations, the same numbers; a start elsewhere (h² of a at 0.9) ends at the same maximum within
    the AI-REML tolerance (ℓ_R to 1e-8 relative, r_g to 1e-6)."""
    from bigmm.bivariate import _univariate, fit_pair

    spec, _, Y, Z = cohort
    m, _ = measure_of(spec, Y[:, :2], Z)
    starts = (_univariate(m, 0), _univariate(m, 1))
    a, b = fit_pair(m), fit_pair(m, univariate=starts)
    assert (a.rg, a.h2_a, a.logL, a.logL_rg0, a.logL_rg1, a.iterations) == \
        (b.rg, b.h2_a, b.logL, b.logL_rg0, b.logL_rg1, b.iterations)
    (h, sg, se), other = starts
    far = fit_pair(m, univariate=((0.9, 0.9 * (sg + se), 0.1 * (sg + se)), other), lrt=False)
    assert far.converged and far.logL == pytest.approx(a.logL, rel=1e-8) and far.rg == pytest.approx(a.rg, abs=1e-6)


def test_decoupling_diagonalises_both_covariances():
    """W E₀ Wᵀ = I and W G₀ Wᵀ = diag(d), d ascending, to round-off (1e-12 relative), for a PSD, an
    indefinite, a proportional (equal d) and a zero G₀; None when E₀ is not positive definite."""
    from bigmm.bivariate_likelihood import _decouple

    E0 = np.array([[0.9, -0.4], [-0.4, 1.3]])
    for G0 in (np.array([[0.7, 0.25], [0.25, 0.4]]), np.array([[0.3, 0.5], [0.5, 0.2]]), 0.4 * E0, np.zeros((2, 2))):
        W, d = _decouple(G0, E0)
        np.testing.assert_allclose(W @ E0 @ W.T, np.eye(2), atol=1e-12)
        np.testing.assert_allclose(W @ G0 @ W.T, np.diag(d), atol=1e-12 * max(1.0, np.abs(d).max()))
        assert d[0] <= d[1]
    assert _decouple(G0, np.array([[1.0, 1.0], [1.0, 1.0]])) is None
    assert _decouple(G0, np.array([[-1.0, 0.0], [0.0, 1.0]])) is None


def test_uncorrelated_equals_two_univariate_fits(cohort):
    """At G₀ = diag(σ²_g,a, σ²_g,b), E₀ = diag(σ²_e,a, σ²_e,b) from fit_reml's univariate estimates the
    bivariate ℓ_R is the sum of fit_reml's two ℓ_R: reduced spectrum and samples missing in a (same
    missing pattern in b here) — bigmm's bivariate and univariate conventions agree (1e-9 relative)."""
    spec, K, Y, Z = cohort
    spec = spec.top(50)
    Y = Y[:, :2].copy()
    Y[::9] = np.nan
    m, _ = measure_of(spec, Y, Z)
    uni = bigmm.fit_reml(spec, Y, Z)
    a, b = uni.fits
    ll = pair_loglik(m, np.diag([a.sigma2_g, b.sigma2_g]), np.diag([a.sigma2_e, b.sigma2_e]))
    assert abs(ll - (a.logl_reml + b.logl_reml)) < 1e-9 * abs(ll)


def test_all_pairs_and_outputs(cohort):
    """pairs="all" fits m(m − 1)/2 pairs in column order; the table has one row per pair with the
    documented columns; to_dict/from_dict round-trips; the .hsq text has GCTA's rows in its order."""
    spec, K, Y, Z = cohort
    Y = Y.copy()
    Y[:5, 2] = np.nan
    res = fit_bivariate(spec.top(60), Y, Z, phenotype_names=["a", "b", "c"])
    assert [(f.trait_a, f.trait_b) for f in res.fits] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert [f.n_left_out for f in res.fits] == [0, 5, 5] and [f.n for f in res.fits] == [150, 145, 145]
    df = res.to_pandas()
    assert list(df.columns[:4]) == ["trait_a", "trait_b", "n", "n_left_out"] and len(df) == 3
    for col in ("rg", "rg_se", "re", "re_se", "rp", "h2_a", "h2_b", "logL", "lrt_rg0", "p_rg0", "lrt_rg1",
                "p_rg1", "converged", "iterations", "beta_covar2_b"):
        assert col in df.columns
    back = BivariateResult.from_dict(res.to_dict())
    assert back.fits[0] == res.fits[0] or back.fits[0].to_dict() == res.fits[0].to_dict()
    text = res.fits[0].hsq_text()
    lines = [ln.split("\t")[0] for ln in text.splitlines() if not ln.startswith("#")]
    assert lines[:13] == ["Source", "V(G)_tr1", "V(G)_tr2", "C(G)_tr12", "V(e)_tr1", "V(e)_tr2", "C(e)_tr12",
                          "Vp_tr1", "Vp_tr2", "V(G)/Vp_tr1", "V(G)/Vp_tr2", "rG", "logL"]
    assert lines[-1] == "n" and "logL0" in lines
    with pytest.raises(bigmm.InputError, match="no phenotype named 'x'"):
        fit_bivariate(spec, Y, Z, phenotype_names=["a", "b", "c"], pairs=[("a", "x")])
    assert isinstance(res.fits[0], BivariateFit)


# ------------------------------------------------------------------ GEMMA's multivariate LMM

GEMMA_DIR = __import__("pathlib").Path(__file__).parent / "data" / "gemma_mvlmm"


@pytest.fixture(scope="module")
def gemma_pair():
    """The cohort of tests/data/gemma_vc (400 HS1940 mice) with GEMMA's -gk 1 kinship, computed here
    as GEMMA does (genotypes centred by their mean over the 400 mice, X Xᵀ / p; bigmm's
    ``standardize: center`` GRM equals GEMMA's, tests/test_gemma_vc.py), pheno1 and pheno6 and the
    covariates (intercept, sex), over the mice with both phenotypes: GEMMA's 301 analysed mice."""
    import json

    from bed_reader import open_bed

    from bigmm.io.tables import build_design

    vc = GEMMA_DIR.parent / "gemma_vc"
    ref = json.loads((GEMMA_DIR / "gemma_mvlmm_results.json").read_text())
    with open_bed(vc / "cohort.bed") as bed:
        g = bed.read(dtype="float64")
        ids = list(zip(bed.fid, bed.iid))
    X = g - g.mean(axis=0)
    K = X @ X.T / X.shape[1]
    design = build_design(ids, vc / "pheno.tsv", ["pheno1", "pheno6"], vc / "covar.tsv", ["sex"])
    a = design.analysed
    Y, Z, K = design.Y[a], design.Z[a], K[np.ix_(a, a)]
    both = ~np.isnan(Y).any(axis=1)
    return ref, K, Y, Z, both, design


def test_equals_gemma_mvlmm(gemma_pair):
    """bigmm's bivariate REML = GEMMA 0.98.5 ``-lmm 1 -n 1 2`` (its null-model REMLE of Vg and Ve) on
    301 mice: every entry of Vg and Ve to 1e-5 relative (GEMMA prints 6 significant digits, ≤ 5e-6,
    and stops its Newton iterations at a relative precision of 1e-5 or better: measured agreement
    ≤ 2e-6); GEMMA's REMLE log-likelihood = bigmm's logL + log det(ZᵀZ) (its ½ log det XᵀX with
    X = I₂ ⊗ Z, as for univariate fits) to its 3 printed decimals."""
    ref, K, Y, Z, both, _ = gemma_pair
    res = fit_bivariate(bigmm.exact_spectrum(K), Y, Z, phenotype_names=["pheno1", "pheno6"],
                        covariate_names=["intercept", "sex"], lrt=False)
    f = res.fits[0]
    assert f.n == ref["n_analyzed"] == 301 and f.converged
    np.testing.assert_allclose(f.G0, ref["reml_Vg"], rtol=1e-5)
    np.testing.assert_allclose(f.E0, ref["reml_Ve"], rtol=1e-5)
    Zo = Z[both]
    assert abs(f.logL + np.linalg.slogdet(Zo.T @ Zo)[1] - ref["remle_logl"]) < 5e-4 + 1e-6


def test_gemma_ses_fixed_effects_and_ml(gemma_pair):
    """GEMMA's se(Vg), se(Ve) are the inverse observed information of the same likelihood: the
    negative Hessian of bigmm's ℓ_R (central differences of the measure's likelihood, steps 1e-4
    relative: O(1e-8) error) inverted at GEMMA's printed estimate gives GEMMA's SEs to 1e-4 relative
    (6 printed digits of the estimate move the Hessian by ~1e-5). bigmm reports SEs from the AI
    matrix (GCTA's choice), within 12% of these here; its fixed effects equal GEMMA's for the
    covariate (sex) and, with the kinship centred over the analysed mice as GEMMA centres it, for
    the intercept too (1e-5 relative: the printed digits); so do its ML estimates and ML
    log-likelihood."""
    ref, K, Y, Z, both, _ = gemma_pair
    Yo, Zo, Ko = Y[both], Z[both], K[np.ix_(both, both)]
    spec = bigmm.exact_spectrum(Ko)
    m, _ = measure_of(spec, Yo, Zo)
    Vg, Ve = np.array(ref["reml_Vg"]), np.array(ref["reml_Ve"])
    th = vec(Vg, Ve)

    def ll(t):
        return pair_loglik(m, np.array([[t[0], t[2]], [t[2], t[1]]]), np.array([[t[3], t[5]], [t[5], t[4]]]))

    h = 1e-4 * np.abs(th)
    H = np.empty((6, 6))
    for i in range(6):
        for j in range(6):
            ei, ej = np.eye(6)[i] * h[i], np.eye(6)[j] * h[j]
            H[i, j] = (ll(th + ei + ej) - ll(th + ei - ej) - ll(th - ei + ej) + ll(th - ei - ej)) / (4 * h[i] * h[j])
    se = np.sqrt(np.diag(np.linalg.inv(-H)))
    sg, ve = np.array(ref["reml_Vg_se"]), np.array(ref["reml_Ve_se"])
    np.testing.assert_allclose(se, vec(sg, ve), rtol=1e-4)
    f = fit_bivariate(spec, Yo, Zo, lrt=False).fits[0]
    ours = np.array([f.sg_a_se, f.sg_b_se, f.cov_g_se, f.ve_a_se, f.ve_b_se, f.cov_e_se])
    np.testing.assert_allclose(ours, se, rtol=0.12)
    log = (GEMMA_DIR / "mvlmm.log.txt").read_text().splitlines()
    i = next(k for k, ln in enumerate(log) if ln.startswith("## estimate for B"))
    B = np.array([[float(v) for v in log[i + 1].split()], [float(v) for v in log[i + 2].split()]])
    i = next(k for k, ln in enumerate(log) if ln.startswith("## se(B)"))
    SB = np.array([[float(v) for v in log[i + 1].split()], [float(v) for v in log[i + 2].split()]])
    assert f.fixed_effects[1][1] == pytest.approx(B[0, 1], rel=1e-5)
    assert f.fixed_effects[1][3] == pytest.approx(B[1, 1], rel=1e-5)
    n = Ko.shape[0]
    P = np.eye(n) - 1.0 / n
    fc = fit_bivariate(bigmm.exact_spectrum(P @ Ko @ P), Yo, Zo, lrt=False).fits[0]
    assert fc.converged and f.converged
    ours_B = np.array([[fe[1] for fe in fc.fixed_effects], [fe[3] for fe in fc.fixed_effects]])
    ours_SB = np.array([[fe[2] for fe in fc.fixed_effects], [fe[4] for fe in fc.fixed_effects]])
    np.testing.assert_allclose(ours_B, B, rtol=1e-5)
    np.testing.assert_allclose(ours_SB, SB, rtol=1e-5)
    # GEMMA's ML fit (its "MLE estimate" of Vg, Ve and "MLE log-likelihood"): ML, unlike REML, sees the
    # centring of the kinship; with GEMMA's centred kinship bigmm's ML maximum equals GEMMA's to its
    # printed digits (the log-likelihood to its 3 decimals, no log det ZᵀZ term in ML)
    np.testing.assert_allclose(fc.ml_estimates, vec(np.array(ref["ml_Vg"]), np.array(ref["ml_Ve"])), rtol=1e-5)
    assert abs(fc.logL_ml - ref["mle_logl"]) < 5e-4 + 1e-6
    assert f.logL == pytest.approx(fc.logL, rel=1e-12)  # REML does not see the centring


def dense_union_loglik(G0, E0, Y, Z, K):
    """ℓ_R of all n_a + n_b observations: the 2n stacked model's rows and columns where observed."""
    n, c = Z.shape
    keep = ~np.isnan(Y.T.ravel())
    V = (np.kron(G0, K) + np.kron(E0, np.eye(n)))[np.ix_(keep, keep)]
    X = np.kron(np.eye(2), Z)[keep]
    y = Y.T.ravel()[keep]
    L = np.linalg.cholesky(V)
    LX, Ly = np.linalg.solve(L, X), np.linalg.solve(L, y)
    A = LX.T @ LX
    b = LX.T @ Ly
    return -0.5 * ((keep.sum() - 2 * c) * LOG2PI + 2 * np.log(np.diag(L)).sum() + np.linalg.slogdet(A)[1]
                   + Ly @ Ly - b @ np.linalg.solve(A, b))


def test_union_equals_dense(cohort):
    """samples="union": a pair with 22 samples missing in b and 15 missing in a (2 in both) is fitted
    on all 135 + 128 observations of 148 samples: bigmm's ℓ_R at its estimate equals the dense likelihood of the
    observed rows of the stacked model (1e-10), the dense score there is ~0 (the maximum: below
    1e-5 of its scale), and its ℓ_R is at least the intersection fit's likelihood evaluated on the
    union (a maximum over the same parameters)."""
    spec, K, Y, Z = cohort
    Y = Y[:, :2].copy()
    Y[::7, 1] = np.nan
    Y[3::10, 0] = np.nan
    inter = fit_bivariate(spec, Y, Z, lrt=False, ml=False).fits[0]
    f = fit_bivariate(spec, Y, Z, samples="union").fits[0]
    n_union = int((~np.isnan(Y).all(axis=1)).sum())  # 148: two samples miss both
    assert f.converged and f.n == n_union and f.n_left_out == 0 and "samples=union" in f.note
    ll = dense_union_loglik(f.G0, f.E0, Y, Z, K)
    assert abs(f.logL - ll) < 1e-10 * abs(ll)
    assert f.logL >= dense_union_loglik(inter.G0, inter.E0, Y, Z, K)
    # the dense score of the union likelihood at bigmm's estimate, by central differences
    th = vec(f.G0, f.E0)

    def llv(t):
        return dense_union_loglik(np.array([[t[0], t[2]], [t[2], t[1]]]), np.array([[t[3], t[5]], [t[5], t[4]]]),
                                  Y, Z, K)
    g = np.array([(llv(th + 1e-6 * e) - llv(th - 1e-6 * e)) / 2e-6 for e in np.eye(6)])
    assert np.abs(g).max() < 1e-4
    assert np.isfinite(f.lrt_rg0) and np.isfinite(f.lrt_rg1)
    # GCTA's .hsq: n = the 263 stacked observations, logL + (263 − 2c)/2 log 2π (GCTA leaves out the constant)
    hsq = dict(ln.split("\t", 1) for ln in f.hsq_text().splitlines() if "\t" in ln and not ln.startswith("#"))
    assert hsq["n"] == "263" and f.n_observations == 263
    assert float(hsq["logL"]) == pytest.approx(f.logL + 0.5 * (263 - 6) * LOG2PI, abs=5e-4)
    with pytest.raises(bigmm.InputError, match="exact spectrum"):
        fit_bivariate(spec.top(20), Y, Z, samples="union")
