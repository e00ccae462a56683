"""Independent dense reference implementation used to check ``bigmm``.

This module deliberately does NOT import ``bigmm``.  It uses plain
numpy/scipy, favours obviously-correct code over speed, and is meant for
problems with n up to roughly 1000 individuals.

Model
-----
    y = Z omega + g + e,   g ~ N(0, sigma2_g K),   e ~ N(0, sigma2_e I)
    V = sigma2_g K + sigma2_e I

Restricted log-likelihood (Harville 1974) WITHOUT the ``log det(Z'Z)`` term::

    l_R = -1/2 [ (n-c) log 2pi + log det V + log det(Z'V^-1 Z) + r'V^-1 r ]
    r = y - Z omega_hat,   omega_hat = (Z'V^-1 Z)^-1 Z'V^-1 y

ML log-likelihood::

    l_ML = -1/2 [ n log 2pi + log det V + r'V^-1 r ]

Every evaluation factorises V (or V / sigma2) by Cholesky
(``scipy.linalg.cho_factor``); no eigendecomposition of K is used anywhere.

Optimisation
------------
Write sigma2 = sigma2_g + sigma2_e, h2 = sigma2_g / sigma2 and
H(h2) = h2 K + (1 - h2) I, so V = sigma2 H.  For fixed h2 the likelihood is
maximised in closed form by

    REML: sigma2_hat = r'H^-1 r / (n - c)
    ML:   sigma2_hat = r'H^-1 r / n

(r does not depend on sigma2).  The resulting profile likelihood in h2 is
maximised by a fine grid scan over [0, H2_MAX] (grid includes both
endpoints), followed by ``minimize_scalar(method='bounded', xatol=1e-12)``
on the bracket made of the grid neighbours of the best grid point; the
best of {refined point, all grid points (in particular 0 and H2_MAX)} wins.

Note: scipy's bounded Brent uses the tolerance
``sqrt(eps)*|x| + xatol/3``, so the h2 optimum is located to about
1.5e-8 * h2 (+3e-13); in any case the likelihood is flat to O(dh2^2) at the
optimum and double-precision noise in l (~1e-12 absolute) limits how well
the maximiser is defined to about 1e-7 in h2 for typical curvatures
(measured against a closed form with n = 100: |h2 error| 5e-9..5e-8).  The
maximised log-likelihood itself is accurate to ~1e-10 or better.

h2 = 1 (sigma2_e = 0)
---------------------
The model requires sigma2_e > 0, and a GRM built from centred genotypes is
always singular (K 1 = 0), so H(1) = K is typically not positive definite.
We therefore cap h2 at ``H2_MAX = 1 - 1e-9`` (i.e. sigma2_e >= 1e-9 *
sigma2).  If the optimum lands on the cap the result has
``at_upper_bound=True``.  If a Cholesky factorisation fails (K not PSD or
numerically singular H) the log-likelihood is reported as -inf for that
point, so such points can never be selected.  Near the cap H is
ill-conditioned (cond ~ 1e9 * lambda_max(K) when K is singular), so
log-likelihood values there are accurate only to ~1e-7.

Caveat for ML: if K 1 = 0 (any GRM built from centred genotypes) and the
intercept is in col(Z), the residual along 1 is exactly 0 while its variance
is sigma2_e, so the ML likelihood grows like -1/2 log(1 - h2) without bound
as h2 -> 1; ml_reference then returns the cap (at_upper_bound=True) and the
value of logl_ml depends on H2_MAX.  REML is unaffected (the
log det Z'V^-1 Z term cancels this).  Use a positive-definite K for ML
comparisons.

Standard errors
---------------
The observed information is minus the Hessian of the (unprofiled) l_R in
(sigma2_g, sigma2_e), computed by central finite differences (3-point
diagonal, 4-point cross term) with the same step for both parameters,

    delta = FD_REL_STEP * (sigma2_g + sigma2_e),   FD_REL_STEP = 1e-4,

i.e. a step relative to the total variance (the natural scale of both
components; a step relative to each component would collapse when a
component is ~0, e.g. sigma2_g = 0 at the h2 = 0 boundary).  l_R is
analytic across sigma2_g = 0 as long as V stays positive definite, so
central differences are valid at the h2 = 0 boundary too.  Only if
sigma2_e <= delta (h2 > 1 - 1e-4) is the sigma2_e step shrunk to
sigma2_e / 2 to keep V positive definite; SEs there are unreliable.
Truncation error is O(delta^2) ~ 1e-8 relative; rounding error is
~ eps_l / delta^2 with eps_l ~ 1e-13..1e-11 the absolute noise of l_R.
Measured against the analytic Hessian 1/2 tr(P V_i P V_j) - y'P V_i P V_j P y
(n = 100..1000, h2 in {0, 0.01..0.95}) the entries agree to ~1e-7
relative (worst seen < 1e-6), so SEs are accurate to ~1e-6 relative
(tests/test_reference.py asserts 1e-5); compare other implementations'
SEs with rtol ~1e-4.  se_h2 uses the delta method with gradient
(sigma2_e, -sigma2_g) / sigma2^2 of h2 = sigma2_g / (sigma2_g + sigma2_e).
If -Hessian is not finite and positive definite (e.g. K = I, where only
the total variance is identified) all SEs and cov_sigma2 are NaN.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.stats

H2_MAX = 1.0 - 1e-9
FD_REL_STEP = 1e-4
DEFAULT_N_GRID = 201
LOG_2PI = np.log(2.0 * np.pi)


# ---------------------------------------------------------------------------
# Genotype standardisation and GRM
# ---------------------------------------------------------------------------

def standardize_reference(G, standardize="gcta", keep=None):
    """Standardise an n x p genotype matrix (0/1/2, -1 = missing).

    For each variant j: f_j = (sum of called genotypes) / (2 * number called),
    x = (g - 2 f) / sqrt(2 f (1 - f)) for "gcta", x = g - 2 f for "center";
    missing entries become 0.  Variants with f == 0, f == 1 or no called
    genotype are dropped, as are variants whose calls are all heterozygous and variants with
    ``keep[j] == False``.

    Returns ``(X, kept_index)`` with X float64 n x p_kept and kept_index the
    (increasing) integer indices of the kept columns of G.
    """
    if standardize not in ("gcta", "center"):
        raise ValueError(f"unknown standardize={standardize!r}")
    G = np.asarray(G)
    if G.ndim != 2:
        raise ValueError("G must be 2-D (n x p)")
    if not np.all(np.isin(G, (-1, 0, 1, 2))):
        raise ValueError("G entries must be in {-1, 0, 1, 2}")
    n, p = G.shape
    if keep is None:
        keep = np.ones(p, dtype=bool)
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (p,):
        raise ValueError("keep must be a boolean vector of length p")

    X_cols = []
    kept = []
    for j in range(p):
        g = G[:, j].astype(np.int64)
        called = g >= 0
        n_called = int(called.sum())
        allele_sum = int(g[called].sum())
        # exact integer tests: f == 0  <=> sum == 0 ; f == 1 <=> sum == 2*n_called
        if n_called == 0 or allele_sum == 0 or allele_sum == 2 * n_called:
            continue
        # every call heterozygous (sample SD 0): dropped too, as GEMMA drops it
        if np.all(g[called] == 1):
            continue
        if not keep[j]:
            continue
        f = allele_sum / (2.0 * n_called)
        x = np.zeros(n, dtype=np.float64)
        x[called] = g[called] - 2.0 * f
        if standardize == "gcta":
            x[called] /= np.sqrt(2.0 * f * (1.0 - f))
        X_cols.append(x)
        kept.append(j)

    if X_cols:
        X = np.column_stack(X_cols)
    else:
        X = np.zeros((n, 0), dtype=np.float64)
    return X, np.asarray(kept, dtype=np.int64)


def grm_reference(G, standardize="gcta", keep=None):
    """K = X X' / p_kept with X from :func:`standardize_reference`."""
    X, kept = standardize_reference(G, standardize=standardize, keep=keep)
    if X.shape[1] == 0:
        raise ValueError("no variant kept")
    return X @ X.T / X.shape[1]


def pve_reference(K, sigma2_g, sigma2_e):
    """Proportion of variance explained: d = mean(diag K) - mean(K),
    pve = sigma2_g d / (sigma2_g d + sigma2_e)."""
    K = np.asarray(K, dtype=np.float64)
    d = np.mean(np.diag(K)) - np.mean(K)
    return sigma2_g * d / (sigma2_g * d + sigma2_e)


# ---------------------------------------------------------------------------
# Core GLS pieces (Cholesky only)
# ---------------------------------------------------------------------------

def _check_inputs(K, y, Z):
    K = np.asarray(K, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    n = y.shape[0]
    if Z is None:
        Z = np.ones((n, 1))
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim == 1:
        Z = Z[:, None]
    if K.shape != (n, n):
        raise ValueError("K must be n x n")
    if Z.shape[0] != n:
        raise ValueError("Z must have n rows")
    if Z.shape[1] >= n:
        raise ValueError("need n > number of covariates")
    if np.linalg.matrix_rank(Z) < Z.shape[1]:
        raise ValueError("Z must have full column rank")
    return K, y, Z


def _gls(M, y, Z):
    """For a symmetric positive-definite M (n x n), via Cholesky of M:

    returns dict with logdet_M, logdet_ZtMiZ, quad = r'M^-1 r, omega,
    ZtMiZ (c x c) -- or None if M is not numerically positive definite.
    """
    try:
        cf = scipy.linalg.cho_factor(M, lower=True, check_finite=True)
    except (np.linalg.LinAlgError, ValueError):
        return None
    L = cf[0]
    logdet_M = 2.0 * np.sum(np.log(np.diag(L)))
    Miy = scipy.linalg.cho_solve(cf, y)
    c = Z.shape[1]
    if c > 0:
        MiZ = scipy.linalg.cho_solve(cf, Z)
        A = Z.T @ MiZ                      # Z' M^-1 Z
        A = 0.5 * (A + A.T)
        b = Z.T @ Miy                      # Z' M^-1 y
        try:
            cA = scipy.linalg.cho_factor(A, lower=True)
        except np.linalg.LinAlgError:
            return None
        omega = scipy.linalg.cho_solve(cA, b)
        logdet_A = 2.0 * np.sum(np.log(np.diag(cA[0])))
    else:
        A = np.zeros((0, 0))
        omega = np.zeros(0)
        logdet_A = 0.0
    r = y - Z @ omega
    quad = float(r @ scipy.linalg.cho_solve(cf, r))
    return dict(logdet_M=logdet_M, logdet_A=logdet_A, quad=quad,
                omega=omega, A=A)


# ---------------------------------------------------------------------------
# Log-likelihoods at given variance components
# ---------------------------------------------------------------------------

def reml_loglik(K, y, Z, sigma2_g, sigma2_e):
    """Harville's l_R (without log det Z'Z) at (sigma2_g, sigma2_e); V by
    Cholesky.  Returns -inf if V is not positive definite."""
    K, y, Z = _check_inputs(K, y, Z)
    n, c = Z.shape
    V = sigma2_g * K + sigma2_e * np.eye(n)
    s = _gls(V, y, Z)
    if s is None:
        return -np.inf
    return -0.5 * ((n - c) * LOG_2PI + s["logdet_M"] + s["logdet_A"] + s["quad"])


def ml_loglik(K, y, Z, sigma2_g, sigma2_e):
    """ML log-likelihood at (sigma2_g, sigma2_e) (omega at its GLS value)."""
    K, y, Z = _check_inputs(K, y, Z)
    n = y.shape[0]
    V = sigma2_g * K + sigma2_e * np.eye(n)
    s = _gls(V, y, Z)
    if s is None:
        return -np.inf
    return -0.5 * (n * LOG_2PI + s["logdet_M"] + s["quad"])


def _profile(K, y, Z, h2, method):
    """sigma2-profiled log-likelihood at h2.  Returns (logl, sigma2_hat)."""
    n, c = Z.shape
    H = h2 * K + (1.0 - h2) * np.eye(n)
    s = _gls(H, y, Z)
    if s is None or not s["quad"] > 0:
        return -np.inf, np.nan
    if method == "reml":
        m = n - c
        sigma2 = s["quad"] / m
        # log det V = n log s2 + log det H ; log det Z'V^-1 Z = log det Z'H^-1 Z - c log s2
        logl = -0.5 * (m * LOG_2PI + m * np.log(sigma2) + s["logdet_M"]
                       + s["logdet_A"] + m)
    elif method == "ml":
        sigma2 = s["quad"] / n
        logl = -0.5 * (n * LOG_2PI + n * np.log(sigma2) + s["logdet_M"] + n)
    else:
        raise ValueError(method)
    return float(logl), float(sigma2)


def reml_profile_loglik(K, y, Z, h2):
    """REML log-likelihood at h2, maximised over sigma2 (closed form)."""
    K, y, Z = _check_inputs(K, y, Z)
    return _profile(K, y, Z, float(h2), "reml")[0]


def ml_profile_loglik(K, y, Z, h2):
    """ML log-likelihood at h2, maximised over sigma2 (closed form)."""
    K, y, Z = _check_inputs(K, y, Z)
    return _profile(K, y, Z, float(h2), "ml")[0]


def _maximise_h2(K, y, Z, method, n_grid):
    """Grid scan of the profile likelihood over [0, H2_MAX] + bounded Brent."""
    grid = np.linspace(0.0, H2_MAX, int(n_grid))
    vals = np.array([_profile(K, y, Z, h, method)[0] for h in grid])
    if not np.any(np.isfinite(vals)):
        raise FloatingPointError("likelihood not finite anywhere on the h2 grid")
    i = int(np.argmax(vals))
    lo = grid[max(i - 1, 0)]
    hi = grid[min(i + 1, len(grid) - 1)]
    res = scipy.optimize.minimize_scalar(
        lambda h: -_profile(K, y, Z, h, method)[0],
        bounds=(lo, hi), method="bounded",
        options=dict(xatol=1e-12, maxiter=1000))
    cands = [(vals[i], grid[i])]
    if np.isfinite(res.fun):
        cands.append((-res.fun, float(res.x)))
    # endpoints are grid points already; listed explicitly for clarity
    cands.append((vals[0], grid[0]))
    cands.append((vals[-1], grid[-1]))
    best_val, best_h2 = max(cands, key=lambda t: t[0])
    best_val, sigma2 = _profile(K, y, Z, best_h2, method)
    return float(best_h2), float(best_val), float(sigma2)


def _fd_hessian(f, theta, steps):
    """Central finite-difference Hessian of scalar f at theta."""
    k = len(theta)
    Hs = np.zeros((k, k))
    f0 = f(theta)
    E = np.eye(k)
    for i in range(k):
        di = steps[i] * E[i]
        Hs[i, i] = (f(theta + di) - 2.0 * f0 + f(theta - di)) / steps[i] ** 2
        for j in range(i + 1, k):
            dj = steps[j] * E[j]
            Hs[i, j] = (f(theta + di + dj) - f(theta + di - dj)
                        - f(theta - di + dj) + f(theta - di - dj)) / (4.0 * steps[i] * steps[j])
            Hs[j, i] = Hs[i, j]
    return Hs


def fd_steps(sigma2_g, sigma2_e):
    """Finite-difference steps (for sigma2_g, sigma2_e) used for the observed
    information: FD_REL_STEP * (sigma2_g + sigma2_e) for both, except that the
    sigma2_e step is capped at sigma2_e / 2 to keep V positive definite."""
    delta = FD_REL_STEP * (sigma2_g + sigma2_e)
    return np.array([delta, min(delta, 0.5 * sigma2_e)])


def reml_hessian_fd(K, y, Z, sigma2_g, sigma2_e):
    """Central-FD Hessian of l_R in (sigma2_g, sigma2_e)."""
    K, y, Z = _check_inputs(K, y, Z)
    f = lambda t: reml_loglik(K, y, Z, t[0], t[1])
    theta = np.array([sigma2_g, sigma2_e], dtype=np.float64)
    return _fd_hessian(f, theta, fd_steps(sigma2_g, sigma2_e))


# ---------------------------------------------------------------------------
# Fits
# ---------------------------------------------------------------------------

def reml_reference(K, y, Z=None, n_grid=DEFAULT_N_GRID):
    """REML fit of y = Z omega + g + e, V = sigma2_g K + sigma2_e I.

    Z defaults to an intercept column.  Returns a dict with keys

    h2, sigma2_g, sigma2_e, sigma2 (= sigma2_g + sigma2_e), logl_reml,
    at_upper_bound (h2 hit H2_MAX), omega (c,), cov_omega (c x c,
    (Z'V^-1 Z)^-1 at the optimum), se_omega (c,), hessian (2x2 FD Hessian
    of l_R in (sigma2_g, sigma2_e)), cov_sigma2 (2x2 inverse observed
    information), se_sigma2_g, se_sigma2_e, se_h2, logl_reml_h2_0 (l_R at
    h2 = 0 maximised over sigma2_e), sigma2_e_h2_0, lrt (2 (l_hat - l_0),
    >= 0), pvalue (1/2 chi2_0 + 1/2 chi2_1 mixture), n, c.
    """
    K, y, Z = _check_inputs(K, y, Z)
    n, c = Z.shape
    h2, logl, sigma2 = _maximise_h2(K, y, Z, "reml", n_grid)
    sigma2_g = h2 * sigma2
    sigma2_e = (1.0 - h2) * sigma2

    V = sigma2_g * K + sigma2_e * np.eye(n)
    s = _gls(V, y, Z)
    omega = s["omega"]
    cov_omega = np.linalg.inv(s["A"]) if c > 0 else np.zeros((0, 0))
    cov_omega = 0.5 * (cov_omega + cov_omega.T)

    hess = reml_hessian_fd(K, y, Z, sigma2_g, sigma2_e)
    info = -hess
    try:
        if not np.all(np.isfinite(info)):
            raise np.linalg.LinAlgError("non-finite Hessian")
        np.linalg.cholesky(info)
        cov_s2 = np.linalg.inv(info)
        cov_s2 = 0.5 * (cov_s2 + cov_s2.T)
        grad_h2 = np.array([sigma2_e, -sigma2_g]) / sigma2 ** 2
        se_g = float(np.sqrt(cov_s2[0, 0]))
        se_e = float(np.sqrt(cov_s2[1, 1]))
        se_h2 = float(np.sqrt(grad_h2 @ cov_s2 @ grad_h2))
    except np.linalg.LinAlgError:
        cov_s2 = np.full((2, 2), np.nan)
        se_g = se_e = se_h2 = np.nan

    logl0, sigma2_0 = _profile(K, y, Z, 0.0, "reml")
    lrt = max(2.0 * (logl - logl0), 0.0)
    pvalue = 0.5 * float(scipy.stats.chi2.sf(lrt, 1)) if lrt > 0 else 1.0

    return dict(
        h2=h2, sigma2_g=sigma2_g, sigma2_e=sigma2_e, sigma2=sigma2,
        logl_reml=logl, at_upper_bound=bool(h2 >= H2_MAX),
        omega=omega, cov_omega=cov_omega, se_omega=np.sqrt(np.diag(cov_omega)),
        hessian=hess, cov_sigma2=cov_s2,
        se_sigma2_g=se_g, se_sigma2_e=se_e, se_h2=se_h2,
        logl_reml_h2_0=logl0, sigma2_e_h2_0=sigma2_0,
        lrt=lrt, pvalue=pvalue, n=n, c=c,
    )


def ml_reference(K, y, Z=None, n_grid=DEFAULT_N_GRID):
    """ML fit.  Returns dict with h2_ml, logl_ml, sigma2_g_ml, sigma2_e_ml,
    omega_ml, at_upper_bound.  See the module docstring: with a centred GRM
    and an intercept the ML likelihood is unbounded as h2 -> 1."""
    K, y, Z = _check_inputs(K, y, Z)
    n = y.shape[0]
    h2, logl, sigma2 = _maximise_h2(K, y, Z, "ml", n_grid)
    sigma2_g = h2 * sigma2
    sigma2_e = (1.0 - h2) * sigma2
    s = _gls(sigma2_g * K + sigma2_e * np.eye(n), y, Z)
    return dict(h2_ml=h2, logl_ml=logl, sigma2_g_ml=sigma2_g,
                sigma2_e_ml=sigma2_e, omega_ml=s["omega"],
                at_upper_bound=bool(h2 >= H2_MAX))
