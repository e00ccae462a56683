"""REML on the exact spectrum against an independent dense REML (tests/reference.py).

The reference factorises V = σ²_g K + σ²_e I by Cholesky at every evaluation and takes SEs
from a finite-difference Hessian; bigmm rotates once by the eigenvectors of K and uses
analytic information. Tolerances:
- h², σ²'s: both optimisers locate the optimum of a smooth 1-D profile to ~1e-7 (the
  likelihood is flat to second order there), so estimates agree to 1e-6;
- log-likelihoods are evaluated, not located: float64 round-off, 1e-8 absolute;
- SEs: the reference's finite differences are accurate to ~1e-6 relative (its docs): 1e-4.
"""

import numpy as np
import pandas as pd
import pytest
from conftest import random_genotypes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import grm_reference, ml_reference, pve_reference, reml_reference

import bigmm
from bigmm.errors import InputError


@pytest.fixture(scope="module", autouse=True)
def _single_blas_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def make_problem(seed, n=240, p=400, h2=0.5, c=3, kind="gcta", pd=False):
    rng = np.random.default_rng(seed)
    G = random_genotypes(rng, n, p, missing=0.01)
    K = grm_reference(G, kind)
    if pd:
        K = 0.8 * K + 0.2 * np.eye(n)
    Z = np.column_stack([np.ones(n)] + [rng.normal(size=n) for _ in range(c - 1)])
    L = np.linalg.cholesky(h2 * K + (1 - h2) * np.eye(n) + 1e-12 * np.eye(n))
    y = Z @ rng.normal(size=c) + L @ rng.normal(size=n)
    return K, y, Z


def check_against_reference(fit, ref, n_fixed):
    assert fit.h2 == pytest.approx(ref["h2"], abs=1e-6)
    assert fit.sigma2_g == pytest.approx(ref["sigma2_g"], rel=1e-6, abs=1e-9)
    assert fit.sigma2_e == pytest.approx(ref["sigma2_e"], rel=1e-6)
    assert fit.logl_reml == pytest.approx(ref["logl_reml"], abs=1e-8)
    assert fit.logl_reml_h2_0 == pytest.approx(ref["logl_reml_h2_0"], abs=1e-8)
    assert fit.lrt_stat == pytest.approx(ref["lrt"], abs=2e-8)
    assert fit.lrt_pvalue == pytest.approx(ref["pvalue"], rel=1e-5)
    est = np.array([fe.estimate for fe in fit.fixed_effects])
    se = np.array([fe.se for fe in fit.fixed_effects])
    assert len(est) == n_fixed
    np.testing.assert_allclose(est, ref["omega"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(se, ref["se_omega"], rtol=1e-5)


@pytest.mark.parametrize("seed,h2,kind,pd", [(1, 0.5, "gcta", False), (2, 0.4, "center", False),
                                             (3, 0.5, "gcta", True), (4, 0.35, "gcta", True)])
def test_reml_equals_dense_reference(seed, h2, kind, pd):
    K, y, Z = make_problem(seed, h2=h2, kind=kind, pd=pd)
    res = bigmm.fit_reml(bigmm.exact_spectrum(K), y, Z)
    fit = res.fits[0]
    ref = reml_reference(K, y, Z)
    assert not fit.boundary and not ref["at_upper_bound"]
    check_against_reference(fit, ref, Z.shape[1])
    # standard errors: analytic observed information vs the inverse finite-difference Hessian
    assert fit.h2_se_method == "observed_information"
    assert fit.sigma2_g_se == pytest.approx(ref["se_sigma2_g"], rel=1e-4)
    assert fit.sigma2_e_se == pytest.approx(ref["se_sigma2_e"], rel=1e-4)
    assert fit.h2_se == pytest.approx(ref["se_h2"], rel=1e-4)
    assert fit.pve == pytest.approx(pve_reference(K, fit.sigma2_g, fit.sigma2_e), rel=1e-12)
    assert fit.mean_diag_K == pytest.approx(np.mean(np.diag(K)), rel=1e-12)
    if pd:  # ML is bounded only when K is non-singular (see tests/reference.py)
        ml = ml_reference(K, y, Z)
        assert fit.h2_ml == pytest.approx(ml["h2_ml"], abs=1e-6)
        assert fit.logl_ml == pytest.approx(ml["logl_ml"], abs=1e-8)
    else:
        assert fit.ml_note == "" or "singular" in fit.ml_note


def test_missing_phenotypes_equal_reml_of_observed_subset():
    """Indicator columns (docs/math.md, "Missing phenotypes") give exactly the REML of the observed samples."""
    K, y, Z = make_problem(7, n=200, h2=0.6)
    rng = np.random.default_rng(70)
    Y = np.column_stack([y, y, y + rng.normal(size=200)])
    Y[rng.choice(200, 15, replace=False), 1] = np.nan
    Y[rng.choice(200, 40, replace=False), 2] = np.nan
    spec = bigmm.exact_spectrum(K)
    for method, expect in (("indicator", "indicator"), ("subset", "subset_spectrum"), ("auto", None)):
        res = bigmm.fit_reml(spec, Y, Z, missing=method)
        assert res.fits[0].missing_method == "none"
        for j in (1, 2):
            fit = res.fits[j]
            if expect:
                assert fit.missing_method == expect
            obs = ~np.isnan(Y[:, j])
            ref = reml_reference(K[np.ix_(obs, obs)], Y[obs, j], Z[obs])
            assert fit.n == obs.sum() and fit.n_missing == (~obs).sum()
            check_against_reference(fit, ref, Z.shape[1])
            assert fit.h2_se == pytest.approx(ref["se_h2"], rel=1e-4)
            assert fit.pve == pytest.approx(pve_reference(K[np.ix_(obs, obs)], fit.sigma2_g,
                                                          fit.sigma2_e), rel=1e-10)


def test_many_phenotypes_at_once_equal_one_at_a_time():
    K, y, Z = make_problem(8, n=150)
    rng = np.random.default_rng(80)
    Y = np.column_stack([y, rng.normal(size=150), y * 3 + 1])
    spec = bigmm.exact_spectrum(K)
    together = bigmm.fit_reml(spec, Y, Z)
    for j in range(3):
        alone = bigmm.fit_reml(spec, Y[:, j], Z).fits[0]
        assert together.fits[j].h2 == pytest.approx(alone.h2, abs=1e-9)
        assert together.fits[j].logl_reml == pytest.approx(alone.logl_reml, abs=1e-9)


def test_phenotypes_are_not_modified_and_their_dtype_does_not_matter():
    """rotate() subtracts the OLS fit in place only from its own copy: the caller's float64 Y
    (one group, or several missing patterns) is left as it was, and a float32 or list input
    (converted, so overwritten) gives the same fit, and a pandas frame (whose array may be a
    view) is left as it was; all give the same fit as its float64 values, to round-off of the
    float64 arithmetic on identical numbers (1e-12)."""
    K, y, Z = make_problem(9, n=150)
    rng = np.random.default_rng(90)
    Y = np.column_stack([y, rng.normal(size=150), y * 2 - 1]).astype(np.float32).astype(np.float64)
    Ym = Y.copy()
    Ym[::7, 1] = np.nan
    spec = bigmm.exact_spectrum(K)
    for arr in (Y, Ym):
        before = arr.copy()
        fit = bigmm.fit_reml(spec, arr, Z)
        np.testing.assert_array_equal(arr, before)
        frame = pd.DataFrame(arr.copy())  # np.asarray of a float64 frame can be a view of it
        frame_before = frame.to_numpy(copy=True)
        for other in (arr.astype(np.float32), arr.tolist(), frame):
            again = bigmm.fit_reml(spec, other, Z)
            for a, b in zip(fit.fits, again.fits):
                assert a.h2 == pytest.approx(b.h2, abs=1e-12)
                assert a.logl_reml == pytest.approx(b.logl_reml, abs=1e-12)
        np.testing.assert_array_equal(frame.to_numpy(), frame_before)


def test_lower_boundary_is_flagged():
    """y whose variance sits on the eigenvectors of K with the smallest eigenvalues: ĥ² = 0."""
    K, _, Z = make_problem(9, n=150, pd=True)
    s, U = np.linalg.eigh(K)
    rng = np.random.default_rng(90)
    y = Z @ [1.0, 0.5, -0.2] + U[:, :100] @ rng.normal(size=100)
    fit = bigmm.fit_reml(bigmm.exact_spectrum(K), y, Z).fits[0]
    ref = reml_reference(K, y, Z)
    assert ref["h2"] == 0.0
    assert fit.h2 == 0.0 and fit.boundary == "lower"
    assert fit.lrt_stat == 0.0 and fit.lrt_pvalue == 1.0
    assert fit.h2_se_method.startswith("expected_information")
    assert fit.logl_reml == pytest.approx(ref["logl_reml"], abs=1e-8)
    assert fit.sigma2_e == pytest.approx(ref["sigma2_e"], rel=1e-9)


def test_upper_boundary_is_flagged():
    """y drawn with V ∝ K (h² = 1) on a non-singular K: the optimum is h² = 1 exactly."""
    K, _, Z = make_problem(10, n=150, pd=True)
    s, U = np.linalg.eigh(K)
    rng = np.random.default_rng(100)
    y = Z @ [1.0, 0.5, -0.2] + U[:, -60:] @ (np.sqrt(s[-60:]) * rng.normal(size=60) * 3)
    fit = bigmm.fit_reml(bigmm.exact_spectrum(K), y, Z).fits[0]
    ref = reml_reference(K, y, Z)
    assert ref["at_upper_bound"]
    assert fit.boundary == "upper" and fit.h2 == 1.0
    # the reference stops at 1 - 1e-9: its likelihood differs by O(1e-9 · n)
    assert fit.logl_reml == pytest.approx(ref["logl_reml"], abs=1e-5)


def test_input_validation():
    K, y, Z = make_problem(11, n=60)
    spec = bigmm.exact_spectrum(K)
    with pytest.raises(InputError, match="constant"):
        bigmm.fit_reml(spec, np.ones(60), Z)
    with pytest.raises(InputError, match="rows"):
        bigmm.fit_reml(spec, y[:50], Z)
    with pytest.raises(InputError, match="at least"):
        yy = np.full(60, np.nan)
        yy[:4] = [1, 2, 3, 4]
        bigmm.fit_reml(spec, yy, Z)
    with pytest.raises(InputError, match="collinear"):
        bigmm.fit_reml(spec, y, np.column_stack([Z, Z[:, 1] * 2]))


@pytest.fixture(scope="module")
def small_problem():
    K, y, Z = make_problem(12, n=80, p=150)
    return K, y, Z, bigmm.fit_reml(bigmm.exact_spectrum(K), y, Z).fits[0]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2 ** 31 - 1))
def test_sample_permutation_invariance(small_problem, seed):
    """Permuting samples (K, y, Z together) leaves every estimate unchanged."""
    K, y, Z, fit = small_problem
    perm = np.random.default_rng(seed).permutation(len(y))
    f2 = bigmm.fit_reml(bigmm.exact_spectrum(K[np.ix_(perm, perm)]), y[perm], Z[perm]).fits[0]
    assert f2.h2 == pytest.approx(fit.h2, abs=1e-7)
    assert f2.logl_reml == pytest.approx(fit.logl_reml, abs=1e-8)
    assert f2.h2_se == pytest.approx(fit.h2_se, rel=1e-6)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scale=st.floats(1e-3, 1e3), shift=st.floats(-100, 100))
def test_scaling_y_scales_variances_and_keeps_h2(small_problem, scale, shift):
    """y → a·y + b: σ²'s scale by a², h² and the LRT are unchanged, logl shifts by −(n−c) log a."""
    K, y, Z, fit = small_problem
    f2 = bigmm.fit_reml(bigmm.exact_spectrum(K), scale * y + shift, Z).fits[0]
    assert f2.h2 == pytest.approx(fit.h2, abs=1e-7)
    assert f2.sigma2_g == pytest.approx(scale ** 2 * fit.sigma2_g, rel=1e-6)
    assert f2.sigma2_e == pytest.approx(scale ** 2 * fit.sigma2_e, rel=1e-6)
    assert f2.lrt_stat == pytest.approx(fit.lrt_stat, abs=1e-7)
    n, c = len(y), Z.shape[1]
    assert f2.logl_reml == pytest.approx(fit.logl_reml - (n - c) * np.log(scale), abs=1e-7)
