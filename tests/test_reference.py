"""Checks of the dense reference implementation (tests/reference.py) against
facts that do not depend on it: closed forms, brute-force formulas, exact
invariances and optimality conditions.  These make the reference itself
trustworthy before it is used to check bigmm.
"""

import numpy as np
import pytest
import scipy.stats

try:  # works whether or not tests/ is a package
    from . import reference as R
except ImportError:
    import reference as R

LOG_2PI = np.log(2 * np.pi)


@pytest.fixture(scope="module", autouse=True)
def _single_threaded_blas():
    """The matrices here are tiny (n <= 120); multi-threaded BLAS only adds
    overhead and, on a loaded machine, severe thread contention.  The limit is
    restored after this module (optional: needs threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# ---------------------------------------------------------------------------
# helpers independent of the reference
# ---------------------------------------------------------------------------

def brute_reml(K, y, Z, sg, se):
    """Harville l_R without log det Z'Z, via slogdet and explicit inverses."""
    n, c = Z.shape
    V = sg * K + se * np.eye(n)
    Vi = np.linalg.inv(V)
    A = Z.T @ Vi @ Z
    w = np.linalg.inv(A) @ Z.T @ Vi @ y
    r = y - Z @ w
    return -0.5 * ((n - c) * LOG_2PI + np.linalg.slogdet(V)[1]
                   + np.linalg.slogdet(A)[1] + r @ Vi @ r)


def brute_ml(K, y, Z, sg, se):
    n, c = Z.shape
    V = sg * K + se * np.eye(n)
    Vi = np.linalg.inv(V)
    w = np.linalg.solve(Z.T @ Vi @ Z, Z.T @ Vi @ y)
    r = y - Z @ w
    return -0.5 * (n * LOG_2PI + np.linalg.slogdet(V)[1] + r @ Vi @ r)


def analytic_score_hessian(K, y, Z, sg, se):
    """Analytic REML score and observed Hessian in (sigma2_g, sigma2_e):
    dl/dt_i = -1/2 tr(P V_i) + 1/2 y'P V_i P y,
    d2l/dt_i dt_j = 1/2 tr(P V_i P V_j) - y'P V_i P V_j P y  (V_ij = 0)."""
    n = len(y)
    V = sg * K + se * np.eye(n)
    Vi = np.linalg.inv(V)
    P = Vi - Vi @ Z @ np.linalg.inv(Z.T @ Vi @ Z) @ Z.T @ Vi
    Vs = [K, np.eye(n)]
    g = np.zeros(2)
    H = np.zeros((2, 2))
    for i in range(2):
        g[i] = -0.5 * np.trace(P @ Vs[i]) + 0.5 * y @ P @ Vs[i] @ P @ y
        for j in range(2):
            H[i, j] = (0.5 * np.trace(P @ Vs[i] @ P @ Vs[j])
                       - y @ P @ Vs[i] @ P @ Vs[j] @ P @ y)
    return g, H


def random_grm(rng, n, p):
    f = rng.uniform(0.05, 0.5, p)
    G = rng.binomial(2, f, size=(n, p))
    X = (G - G.mean(0)) / np.maximum(G.std(0), 1e-12)
    X = X[:, G.std(0) > 0]
    return X @ X.T / X.shape[1]


def simulate(rng, K, Z, h2, beta):
    n = K.shape[0]
    L = np.linalg.cholesky(h2 * K + (1 - h2) * np.eye(n) + 1e-12 * np.eye(n))
    return Z @ beta + L @ rng.normal(size=n)


@pytest.fixture(scope="module")
def grm_problem():
    rng = np.random.default_rng(20240601)
    n = 120
    K = random_grm(rng, n, 400)
    Z = np.column_stack([np.ones(n), rng.normal(size=n), rng.uniform(size=n)])
    y = simulate(rng, K, Z, 0.6, np.array([1.0, 0.5, -0.3]))
    return K, y, Z


@pytest.fixture(scope="module")
def grm_fit(grm_problem):
    K, y, Z = grm_problem
    return R.reml_reference(K, y, Z)


# ---------------------------------------------------------------------------
# standardisation / GRM / PVE
# ---------------------------------------------------------------------------

def test_standardize_by_hand():
    G = np.array([
        [0, 2, 1, -1, 0, 1],
        [1, 2, -1, -1, 0, 2],
        [2, 2, 1, -1, 0, 0],
        [-1, 2, 0, -1, 0, 1],
    ])
    # col0: called 0,1,2 -> f = 3/6 = .5 ; col1: f = 1 (drop); col2: 1,1,0 -> f = 2/6
    # col3: all missing (drop); col4: f = 0 (drop); col5: 1,2,0,1 -> f = 4/8 = .5
    X, kept = R.standardize_reference(G, "gcta")
    np.testing.assert_array_equal(kept, [0, 2, 5])
    s05 = np.sqrt(2 * 0.5 * 0.5)
    f2 = 1 / 3
    s2 = np.sqrt(2 * f2 * (1 - f2))
    expected = np.array([
        [(0 - 1) / s05, (1 - 2 * f2) / s2, (1 - 1) / s05],
        [(1 - 1) / s05, 0.0, (2 - 1) / s05],
        [(2 - 1) / s05, (1 - 2 * f2) / s2, (0 - 1) / s05],
        [0.0, (0 - 2 * f2) / s2, (1 - 1) / s05],
    ])
    np.testing.assert_allclose(X, expected, rtol=0, atol=1e-15)

    Xc, kept_c = R.standardize_reference(G, "center")
    np.testing.assert_array_equal(kept_c, [0, 2, 5])
    np.testing.assert_allclose(Xc, expected * np.array([s05, s2, s05]), atol=1e-15)

    keep = np.array([True, True, False, True, True, True])
    Xk, kept_k = R.standardize_reference(G, "gcta", keep=keep)
    np.testing.assert_array_equal(kept_k, [0, 5])
    np.testing.assert_allclose(Xk, expected[:, [0, 2]], atol=1e-15)

    K = R.grm_reference(G, "gcta")
    # element-wise definition K_ij = (1/p) sum_k x_ik x_jk
    Kloop = np.array([[sum(expected[i, k] * expected[j, k] for k in range(3)) / 3
                       for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(K, Kloop, atol=1e-14)


def test_standardize_random_vs_masked_formula():
    rng = np.random.default_rng(7)
    n, p = 50, 40
    G = rng.binomial(2, rng.uniform(0, 0.6, p), size=(n, p))
    G[rng.uniform(size=(n, p)) < 0.1] = -1
    G[:, 3] = 0
    G[:, 7] = -1
    X, kept = R.standardize_reference(G, "gcta")
    Gm = np.ma.masked_equal(G, -1).astype(float)
    f = Gm.mean(0).filled(np.nan) / 2
    ok = np.isfinite(f) & (f > 0) & (f < 1)
    np.testing.assert_array_equal(kept, np.flatnonzero(ok))
    Xe = ((Gm - 2 * f) / np.sqrt(2 * f * (1 - f))).filled(0.0)[:, ok]
    np.testing.assert_allclose(X, Xe, atol=1e-13)
    np.testing.assert_allclose(R.grm_reference(G), Xe @ Xe.T / ok.sum(), atol=1e-13)


def test_pve():
    n = 10
    # K = I: d = 1 - 1/n
    d = 1 - 1 / n
    assert R.pve_reference(np.eye(n), 2.0, 3.0) == pytest.approx(2 * d / (2 * d + 3), rel=1e-14)
    # K = J (all ones): d = 0 -> pve 0
    assert R.pve_reference(np.ones((n, n)), 2.0, 3.0) == pytest.approx(0.0, abs=1e-15)


# ---------------------------------------------------------------------------
# log-likelihood evaluation
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("sg,se", [(0.0, 1.0), (0.7, 0.4), (2.5, 0.05), (1e-3, 3.0)])
def test_loglik_cholesky_vs_bruteforce(grm_problem, sg, se):
    K, y, Z = grm_problem
    assert R.reml_loglik(K, y, Z, sg, se) == pytest.approx(brute_reml(K, y, Z, sg, se),
                                                            rel=0, abs=1e-10)
    assert R.ml_loglik(K, y, Z, sg, se) == pytest.approx(brute_ml(K, y, Z, sg, se),
                                                          rel=0, abs=1e-10)


def test_profile_equals_loglik_at_profiled_sigma2(grm_problem):
    """The sigma2-profiled likelihood is l_R at (h2 s2hat, (1-h2) s2hat) and
    is the maximum over sigma2 along that ray."""
    K, y, Z = grm_problem
    for h2 in [0.0, 0.3, 0.8]:
        lp = R.reml_profile_loglik(K, y, Z, h2)
        vals = [brute_reml(K, y, Z, h2 * s, (1 - h2) * s) for s in np.linspace(0.3, 3, 40)]
        assert lp >= max(vals) - 1e-10
        # and equals l_R at the closed-form s2hat
        n, c = Z.shape
        H = h2 * K + (1 - h2) * np.eye(n)
        Hi = np.linalg.inv(H)
        r = y - Z @ np.linalg.solve(Z.T @ Hi @ Z, Z.T @ Hi @ y)
        s2 = r @ Hi @ r / (n - c)
        assert lp == pytest.approx(brute_reml(K, y, Z, h2 * s2, (1 - h2) * s2), abs=1e-10)


def test_reml_Z_reparametrisation(grm_problem, grm_fit):
    """l_R(Z T) = l_R(Z) - log|det T| exactly (Harville without log det Z'Z);
    the maximiser is unchanged and omega transforms as T^-1 omega."""
    K, y, Z = grm_problem
    rng = np.random.default_rng(3)
    T = rng.normal(size=(3, 3)) + 2 * np.eye(3)
    logabsdet = np.linalg.slogdet(T)[1]
    assert abs(logabsdet) > 0.5  # make the check non-trivial
    ZT = Z @ T
    for sg, se in [(0.2, 1.0), (1.0, 0.5), (0.0, 2.0)]:
        assert R.reml_loglik(K, y, ZT, sg, se) == pytest.approx(
            R.reml_loglik(K, y, Z, sg, se) - logabsdet, abs=1e-10)
        # ML is exactly invariant
        assert R.ml_loglik(K, y, ZT, sg, se) == pytest.approx(
            R.ml_loglik(K, y, Z, sg, se), abs=1e-10)
    fitT = R.reml_reference(K, y, ZT)
    assert fitT["logl_reml"] == pytest.approx(grm_fit["logl_reml"] - logabsdet, abs=1e-9)
    assert fitT["h2"] == pytest.approx(grm_fit["h2"], abs=1e-6)
    np.testing.assert_allclose(T @ fitT["omega"], grm_fit["omega"], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(T @ fitT["cov_omega"] @ T.T, grm_fit["cov_omega"],
                               rtol=1e-5, atol=1e-10)
    assert fitT["lrt"] == pytest.approx(grm_fit["lrt"], abs=1e-8)


def test_no_covariates_reml_equals_ml():
    rng = np.random.default_rng(11)
    n = 60
    K = random_grm(rng, n, 200)
    y = simulate(rng, K, np.zeros((n, 0)), 0.5, np.zeros(0))
    Z0 = np.zeros((n, 0))
    assert R.reml_loglik(K, y, Z0, 0.5, 0.5) == pytest.approx(R.ml_loglik(K, y, Z0, 0.5, 0.5),
                                                               abs=1e-12)
    a, b = R.reml_reference(K, y, Z0), R.ml_reference(K, y, Z0)
    assert a["logl_reml"] == pytest.approx(b["logl_ml"], abs=1e-12)
    assert a["h2"] == pytest.approx(b["h2_ml"], abs=1e-12)


# ---------------------------------------------------------------------------
# closed form 1: K = I
# ---------------------------------------------------------------------------

def test_K_identity_total_variance_is_ols_mse():
    rng = np.random.default_rng(5)
    n, c = 80, 3
    Z = np.column_stack([np.ones(n), rng.normal(size=(n, c - 1))])
    y = Z @ np.array([2.0, -1.0, 0.5]) + 1.7 * rng.normal(size=n)
    beta, rss, *_ = np.linalg.lstsq(Z, y, rcond=None)
    rss = float(rss[0])

    fit = R.reml_reference(np.eye(n), y, Z)
    s2 = rss / (n - c)
    assert fit["sigma2_g"] + fit["sigma2_e"] == pytest.approx(s2, rel=1e-12)
    np.testing.assert_allclose(fit["omega"], beta, rtol=1e-10)
    np.testing.assert_allclose(fit["cov_omega"], s2 * np.linalg.inv(Z.T @ Z), rtol=1e-10)
    l_closed = -0.5 * ((n - c) * (LOG_2PI + np.log(s2) + 1) + np.linalg.slogdet(Z.T @ Z)[1])
    assert fit["logl_reml"] == pytest.approx(l_closed, abs=1e-10)
    assert fit["logl_reml_h2_0"] == pytest.approx(l_closed, abs=1e-10)
    # only the total is identified: singular information -> NaN SEs
    assert np.isnan(fit["se_h2"]) and np.isnan(fit["se_sigma2_g"])

    ml = R.ml_reference(np.eye(n), y, Z)
    s2ml = rss / n
    assert ml["sigma2_g_ml"] + ml["sigma2_e_ml"] == pytest.approx(s2ml, rel=1e-12)
    assert ml["logl_ml"] == pytest.approx(-0.5 * n * (LOG_2PI + np.log(s2ml) + 1), abs=1e-10)


def test_logl_h2_0_closed_form(grm_problem, grm_fit):
    K, y, Z = grm_problem
    n, c = Z.shape
    _, rss, *_ = np.linalg.lstsq(Z, y, rcond=None)
    s2 = float(rss[0]) / (n - c)
    l0 = -0.5 * ((n - c) * (LOG_2PI + np.log(s2) + 1) + np.linalg.slogdet(Z.T @ Z)[1])
    assert grm_fit["logl_reml_h2_0"] == pytest.approx(l0, abs=1e-10)
    assert grm_fit["sigma2_e_h2_0"] == pytest.approx(s2, rel=1e-12)
    t = 2 * (grm_fit["logl_reml"] - l0)
    assert t > 1  # the simulated signal is real
    assert grm_fit["lrt"] == pytest.approx(t, abs=1e-9)
    assert grm_fit["pvalue"] == pytest.approx(0.5 * scipy.stats.chi2.sf(t, 1), rel=1e-8)


# ---------------------------------------------------------------------------
# closed form 2: Z = intercept, K = diag(a on group 1, b on group 2)
# ---------------------------------------------------------------------------
#
# V = diag(v1 on group 1, v2 on group 2), v_k = sigma2_g a_k + sigma2_e, a
# one-to-one linear map (a != b).  If both groups have the same mean, the GLS
# mean is that common value for all (v1, v2), so with SS_k the within-group
# sums of squares and w = n1/v1 + n2/v2,
#   l_R = -1/2 [ (n-1) log 2pi + n1 log v1 + n2 log v2 + log w + SS1/v1 + SS2/v2 ].
# dl/dv_k = 0  <=>  v_k = s_k + 1/w,  s_k = SS_k / n_k.  Writing u = 1/w and
# substituting into w = n1/(s1+u) + n2/(s2+u) gives the quadratic
#   (n-1) u^2 + [(n1-1) s2 + (n2-1) s1] u - s1 s2 = 0
# with one positive root.  Then sigma2_g = (v1-v2)/(a-b), sigma2_e = v1 - a sigma2_g.

def _two_group_problem(n1, n2, a, b, sd1, sd2, mu=3.0, seed=0):
    rng = np.random.default_rng(seed)
    e1 = rng.normal(size=n1)
    e2 = rng.normal(size=n2)
    e1 = (e1 - e1.mean()) / e1.std() * sd1
    e2 = (e2 - e2.mean()) / e2.std() * sd2
    y = np.concatenate([e1, e2]) + mu          # identical group means
    K = np.diag(np.r_[np.full(n1, a), np.full(n2, b)])
    Z = np.ones((n1 + n2, 1))
    return K, y, Z


def _two_group_closed_form(y, n1, n2, a, b):
    n = n1 + n2
    s1 = np.sum((y[:n1] - y[:n1].mean()) ** 2) / n1
    s2 = np.sum((y[n1:] - y[n1:].mean()) ** 2) / n2
    B = (n1 - 1) * s2 + (n2 - 1) * s1
    u = (-B + np.sqrt(B * B + 4 * (n - 1) * s1 * s2)) / (2 * (n - 1))
    v1, v2 = s1 + u, s2 + u
    sg = (v1 - v2) / (a - b)
    se = v1 - a * sg
    return sg, se


def _fd_grad(f, th, h):
    return np.array([(f(th + h * e) - f(th - h * e)) / (2 * h) for e in np.eye(2)])


def test_two_group_closed_form_interior():
    n1, n2, a, b = 40, 60, 2.0, 0.5
    K, y, Z = _two_group_problem(n1, n2, a, b, sd1=1.6, sd2=0.9)
    sg_cf, se_cf = _two_group_closed_form(y, n1, n2, a, b)
    assert sg_cf > 0.1 and se_cf > 0.1  # interior optimum by construction
    # the closed form really is a stationary point of the (brute) l_R
    g, _ = analytic_score_hessian(K, y, Z, sg_cf, se_cf)
    assert np.max(np.abs(g)) < 1e-10

    fit = R.reml_reference(K, y, Z)
    assert not fit["at_upper_bound"]
    assert fit["sigma2_g"] == pytest.approx(sg_cf, rel=1e-6)
    assert fit["sigma2_e"] == pytest.approx(se_cf, rel=1e-6)
    assert fit["omega"][0] == pytest.approx(3.0, rel=1e-12)
    assert fit["logl_reml"] == pytest.approx(brute_reml(K, y, Z, sg_cf, se_cf), abs=1e-10)

    # score equations at the reference optimum, by central finite differences.
    # Tolerance: the maximiser is located to ~1e-7 in h2 (documented), giving
    # |dl/dtheta| * sigma2 ~ n * 1e-7; the FD gradient (h = 1e-5 sigma2) has
    # truncation error ~h^2 |l'''| ~ 1e-8 and rounding ~1e-13/h ~ 1e-8.
    # Hence |grad| * sigma2 < n * 1e-6 (10x margin) means "zero" on the scale
    # of a single observation's score, O(1/sigma2).
    n = n1 + n2
    s2 = fit["sigma2"]
    th = np.array([fit["sigma2_g"], fit["sigma2_e"]])
    f = lambda t: brute_reml(K, y, Z, t[0], t[1])
    g_fd = _fd_grad(f, th, 1e-5 * s2)
    assert np.max(np.abs(g_fd)) * s2 < n * 1e-6
    g_an, H_an = analytic_score_hessian(K, y, Z, *th)
    assert np.max(np.abs(g_an)) * s2 < n * 1e-6

    # global optimality against 200 random parameter values (half broad,
    # half local perturbations of up to +-20 %)
    rng = np.random.default_rng(99)
    lhat = fit["logl_reml"]
    pts = np.column_stack([rng.uniform(0, 3 * s2, 100), rng.uniform(0.01 * s2, 3 * s2, 100)])
    pts = np.vstack([pts, th * rng.uniform(0.8, 1.2, size=(100, 2))])
    for sg, se in pts:
        assert lhat >= brute_reml(K, y, Z, sg, se) - 1e-10

    # FD observed information matches the analytic one; SEs accordingly
    np.testing.assert_allclose(fit["hessian"], H_an, rtol=1e-5)
    cov = np.linalg.inv(-H_an)
    assert fit["se_sigma2_g"] == pytest.approx(np.sqrt(cov[0, 0]), rel=1e-5)
    assert fit["se_sigma2_e"] == pytest.approx(np.sqrt(cov[1, 1]), rel=1e-5)


def test_two_group_boundary_h2_0():
    # s1 < s2 with a > b would need sigma2_g < 0 -> constrained optimum at h2 = 0
    n1, n2, a, b = 40, 60, 2.0, 0.5
    K, y, Z = _two_group_problem(n1, n2, a, b, sd1=0.8, sd2=1.2, seed=1)
    sg_cf, _ = _two_group_closed_form(y, n1, n2, a, b)
    assert sg_cf < 0
    fit = R.reml_reference(K, y, Z)
    assert fit["h2"] == 0.0 and fit["sigma2_g"] == 0.0
    assert fit["logl_reml"] == fit["logl_reml_h2_0"]
    assert fit["lrt"] == 0.0 and fit["pvalue"] == 1.0
    # KKT: dl/dsigma2_g <= 0 at the boundary, dl/dsigma2_e = 0
    g, _ = analytic_score_hessian(K, y, Z, 0.0, fit["sigma2_e"])
    assert g[0] < 0 and abs(g[1]) * fit["sigma2_e"] < 1e-8


def test_two_group_boundary_h2_1():
    # v1/v2 > a/b would need sigma2_e < 0 -> optimum at the h2 cap
    n1, n2, a, b = 40, 60, 2.0, 0.5
    K, y, Z = _two_group_problem(n1, n2, a, b, sd1=3.0, sd2=0.5, seed=2)
    _, se_cf = _two_group_closed_form(y, n1, n2, a, b)
    assert se_cf < 0
    fit = R.reml_reference(K, y, Z)
    assert fit["at_upper_bound"] and fit["h2"] == R.H2_MAX
    # the limit h2 -> 1 is finite here (K positive definite)
    sg_lim = brute_reml(K, y, Z, fit["sigma2"], 0.0)
    assert fit["logl_reml"] == pytest.approx(sg_lim, abs=1e-6)


# ---------------------------------------------------------------------------
# GRM problem: optimality, analytic score/Hessian, SEs, delta method, ML
# ---------------------------------------------------------------------------

def test_grm_fit_optimality_and_ses(grm_problem, grm_fit):
    K, y, Z = grm_problem
    fit = grm_fit
    n = len(y)
    assert 0 < fit["h2"] < 1
    th = np.array([fit["sigma2_g"], fit["sigma2_e"]])
    s2 = fit["sigma2"]
    g, H = analytic_score_hessian(K, y, Z, *th)
    assert np.max(np.abs(g)) * s2 < n * 1e-6
    np.testing.assert_allclose(fit["hessian"], H, rtol=1e-5)
    cov = np.linalg.inv(-H)
    np.testing.assert_allclose(fit["cov_sigma2"], cov, rtol=1e-5)
    dh = np.array([th[1], -th[0]]) / s2 ** 2
    assert fit["se_h2"] == pytest.approx(np.sqrt(dh @ cov @ dh), rel=1e-5)
    # fixed effects: GLS at the optimum, covariance (Z'V^-1Z)^-1
    V = th[0] * K + th[1] * np.eye(n)
    Vi = np.linalg.inv(V)
    A = Z.T @ Vi @ Z
    np.testing.assert_allclose(fit["omega"], np.linalg.solve(A, Z.T @ Vi @ y), rtol=1e-9)
    np.testing.assert_allclose(fit["cov_omega"], np.linalg.inv(A), rtol=1e-9)
    np.testing.assert_allclose(fit["se_omega"], np.sqrt(np.diag(np.linalg.inv(A))), rtol=1e-9)
    # random points
    rng = np.random.default_rng(1234)
    pts = np.column_stack([rng.uniform(0, 3 * s2, 100), rng.uniform(0.01 * s2, 3 * s2, 100)])
    pts = np.vstack([pts, th * rng.uniform(0.8, 1.2, size=(100, 2))])
    for sg, se in pts:
        assert fit["logl_reml"] >= brute_reml(K, y, Z, sg, se) - 1e-10


def test_ml_optimality(grm_problem):
    # K made positive definite: with a centred GRM (K 1 = 0) and an intercept
    # in Z the ML likelihood is unbounded as h2 -> 1 (see next test).
    K0, y, Z = grm_problem
    K = 0.8 * K0 + 0.2 * np.eye(len(y))
    ml = R.ml_reference(K, y, Z)
    assert not ml["at_upper_bound"] and 0 < ml["h2_ml"] < 1
    th = np.array([ml["sigma2_g_ml"], ml["sigma2_e_ml"]])
    s2 = th.sum()
    assert ml["logl_ml"] == pytest.approx(brute_ml(K, y, Z, *th), abs=1e-10)
    f = lambda t: brute_ml(K, y, Z, t[0], t[1])
    g = _fd_grad(f, th, 1e-5 * s2)
    assert np.max(np.abs(g)) * s2 < len(y) * 1e-6
    rng = np.random.default_rng(5)
    pts = np.column_stack([rng.uniform(0, 3 * s2, 100), rng.uniform(0.01 * s2, 3 * s2, 100)])
    pts = np.vstack([pts, th * rng.uniform(0.8, 1.2, size=(100, 2))])
    for sg, se in pts:
        assert ml["logl_ml"] >= brute_ml(K, y, Z, sg, se) - 1e-10


def test_ml_unbounded_for_centred_grm_with_intercept(grm_problem):
    """Fact about the model, not a bug: if K 1 = 0 and 1 is in col(Z), the
    residual along 1 is exactly 0 while its variance is sigma2_e, so the ML
    profile grows like -1/2 log(1 - h2) as h2 -> 1 (REML does not: the
    log det Z'V^-1 Z term cancels it).  ml_reference then stops at the cap."""
    K, y, Z = grm_problem
    np.testing.assert_allclose(K @ np.ones(len(y)), 0, atol=1e-10)
    l3 = R.ml_profile_loglik(K, y, Z, 1 - 1e-3)
    l6 = R.ml_profile_loglik(K, y, Z, 1 - 1e-6)
    assert l6 - l3 == pytest.approx(0.5 * np.log(1e3), abs=0.05)
    r3 = R.reml_profile_loglik(K, y, Z, 1 - 1e-3)
    r6 = R.reml_profile_loglik(K, y, Z, 1 - 1e-6)
    assert abs(r6 - r3) < 0.1
    assert R.ml_reference(K, y, Z)["at_upper_bound"]
