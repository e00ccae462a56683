"""BLUP with several variance components (:func:`bigmm.blup_components`).

Every prediction is checked against a dense NumPy reference written here,
``û_j = σ²_j K_j[:, o] V_oo⁻¹ (y_o − Z_o ω̂)`` with ``V_oo⁻¹`` by ``np.linalg.inv`` and ω̂ the GLS
estimate, on small cohorts (n = 60, 2–3 components, a covariate, missing phenotype values). The
tolerances: the references and the code differ only in how they factor a well-conditioned
60 x 60 V (inverse vs Cholesky; cond(V) < 1e3 here), a float64 round-off of ~1e-13 relative; 1e-8
leaves a wide margin and is far below any real error (a wrong θ, sample or component moves the
predictions by > 1e-3).
"""

from __future__ import annotations

import numpy as np
import pytest

import bigmm
from bigmm.errors import InputError

N = 60
TOL = 1e-8


def cohort(m: int, seed: int = 0, missing: bool = True):
    """m GRMs from disjoint blocks of random genotypes, Z = [1, covariate], two phenotypes with
    different missing values, and a θ per phenotype (q x (m + 1))."""
    rng = np.random.default_rng(seed)
    G = rng.binomial(2, 0.3, size=(N, 80 * m)).astype(float)
    X = (G - G.mean(0)) / G.std(0)
    Ks = [X[:, 80 * j:80 * (j + 1)] @ X[:, 80 * j:80 * (j + 1)].T / 80 for j in range(m)]
    Z = np.column_stack([np.ones(N), rng.normal(size=N)])
    Y = 0.5 * Z[:, 1:2] + X[:, :40] @ rng.normal(0, 0.15, (40, 2)) + rng.normal(size=(N, 2))
    if missing:
        Y[[3, 17, 40], 0] = np.nan
        Y[[5, 17], 1] = np.nan
    theta = np.column_stack([rng.uniform(0.1, 0.6, (2, m)), rng.uniform(0.4, 1.0, 2)])
    return Ks, Y, Z, theta


def reference(Ks, Y, Z, theta):
    """(û (m, n, q), ê (n, q), ω̂ (q, c)) by the textbook formulas, V⁻¹ by np.linalg.inv."""
    m, (n, q) = len(Ks), Y.shape
    U, E, W = np.zeros((m, n, q)), np.full((n, q), np.nan), np.zeros((q, Z.shape[1]))
    for k in range(q):
        o = ~np.isnan(Y[:, k])
        V = sum(t * K[np.ix_(o, o)] for t, K in zip(theta[k, :-1], Ks)) + theta[k, -1] * np.eye(o.sum())
        Vi = np.linalg.inv(V)
        Zo, yo = Z[o], Y[o, k]
        W[k] = np.linalg.solve(Zo.T @ Vi @ Zo, Zo.T @ Vi @ yo)
        a = Vi @ (yo - Zo @ W[k])
        for j in range(m):
            U[j, :, k] = theta[k, j] * Ks[j][:, o] @ a
        E[o, k] = theta[k, -1] * a
    return U, E, W


@pytest.mark.parametrize("m", [2, 3])
def test_exact_predictions_equal_the_dense_reference(m):
    Ks, Y, Z, theta = cohort(m, seed=m)
    b = bigmm.blup_components(Ks, Y, Z, theta, component_names=[f"c{j}" for j in range(m)])
    U, E, W = reference(Ks, Y, Z, theta)
    np.testing.assert_allclose(b.components, U, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(b.genetic_values, U.sum(axis=0), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(b.residuals, E, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(b.omega, W, rtol=TOL, atol=TOL)
    # the samples without a value are predicted (from K_j[miss, o]), their residual is not
    assert np.all(b.genetic_values[17] != 0) and np.all(np.isnan(b.residuals[17]))
    # y_o = Z_o ω̂ + ĝ_o + ê_o: the decomposition is exact on the observed samples
    for k in range(2):
        o = ~np.isnan(Y[:, k])
        np.testing.assert_allclose(Z[o] @ b.omega[k] + b.genetic_values[o, k] + b.residuals[o, k], Y[o, k],
                                   rtol=TOL, atol=TOL)


def test_predictions_at_a_fit_use_its_variances_and_check_its_samples():
    """A fit_components result gives θ̂ (its σ²_j and σ²_e) and the names; a Y other than the
    fit's is refused."""
    Ks, Y, Z, _ = cohort(2, seed=5)
    fit = bigmm.fit_components(Ks, Y, Z, component_names=["a", "b"], lrt=False, ml=False)
    b = bigmm.blup_components(Ks, Y, Z, fit)
    theta = np.array([[c.sigma2 for c in f.components] + [f.sigma2_e] for f in fit.fits])
    U, _, W = reference(Ks, Y, Z, theta)
    np.testing.assert_allclose(b.components, U, rtol=TOL, atol=TOL)
    # ω̂ at θ̂ is the fit's own GLS estimate (to the fit's convergence, 1e-8·Vp in σ²)
    np.testing.assert_allclose(b.omega, [[fe.estimate for fe in f.fixed_effects] for f in fit.fits], rtol=1e-5)
    assert b.names == ["pheno1", "pheno2"] and b.component_names == ["a", "b"]
    names, table = b.columns()
    assert names == ["pheno1", "pheno2", "pheno1_a", "pheno1_b", "pheno1_residual", "pheno2_a", "pheno2_b",
                     "pheno2_residual"]
    np.testing.assert_array_equal(table[:, 3], b.components[1, :, 0])
    Y2 = Y.copy()
    Y2[0, 0] = np.nan
    with pytest.raises(InputError, match="phenotype 'pheno1' was fitted on 57 samples, Y's column 1 has 56 values"):
        bigmm.blup_components(Ks, Y2, Z, fit)
    with pytest.raises(InputError, match="fitted with 2 components, the GRMs are 3"):
        bigmm.blup_components(Ks + [Ks[0]], Y, Z, fit)


def test_one_component_equals_the_single_component_blup():
    """m = 1 at the spectral fit's (σ²_g, σ²_e): bigmm.genetic_values (the eigenvectors of K, the
    indicator columns for missing values) and the Cholesky of V_oo here give the same ĝ. Both are
    float64 factorizations of the same well-conditioned system: 1e-8."""
    Ks, Y, Z, _ = cohort(1, seed=7)
    spec = bigmm.exact_spectrum(Ks[0])
    fit = bigmm.fit_reml(spec, Y, Z)
    assert all(0.05 < f.h2 < 0.95 for f in fit.fits)  # away from the boundary: both terms matter
    theta = np.array([[f.sigma2_g, f.sigma2_e] for f in fit.fits])
    single = bigmm.genetic_values(spec, None, fit)
    b = bigmm.blup_components(Ks, Y, Z, theta)
    np.testing.assert_allclose(b.genetic_values, single.genetic_values, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(b.weights, single.weights, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("missing", [True, False])
def test_matrix_free_predictions_equal_the_exact_ones(missing):
    """CG to a relative residual of 1e-12 on every solve: the matrix-free predictions equal the
    exact path's to 1e-8 (the CG error times cond(V) < 1e3). With every value observed, K_j P y
    comes from the CG's accumulated products (no extra pass); with missing values, from one pass."""
    Ks, Y, Z, theta = cohort(3, seed=11, missing=missing)
    exact = bigmm.blup_components(Ks, Y, Z, theta)
    op = bigmm.DenseComponentsOperator(Ks)
    mf = bigmm.blup_components(op, Y, Z, theta, cg_tol=1e-12)
    assert mf.notes["converged"] and mf.notes["passes"] == op.passes
    assert mf.notes["passes"] == mf.notes["cg_steps"] + int(missing)
    np.testing.assert_allclose(mf.components, exact.components, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(mf.residuals, exact.residuals, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(mf.omega, exact.omega, rtol=TOL, atol=TOL)
