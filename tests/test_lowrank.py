"""Randomized low-rank spectrum from X and REML on the reduced spectrum (docs/math.md, sections 4 and 6)."""

import numpy as np
import pytest
from conftest import random_genotypes
from reference import grm_reference, reml_reference

import bigmm
from bigmm.errors import BigmmError, InputError
from bigmm.passes import GrmOperator
from bigmm.spectrum import DEFAULT_POWER_ITERS, randomized_spectrum


@pytest.fixture(scope="module", autouse=True)
def _single_blas_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def store_of(tmp_path, G, chunks=(128, 256)):
    store = bigmm.create_store(tmp_path / "g.zarr", G, chunks=chunks)
    std = bigmm.standardization(bigmm.variant_stats(store.to_dask()), "gcta")
    return store, std


def phenotypes(K, Z, h2, R, seed):
    rng = np.random.default_rng(seed)
    s, U = np.linalg.eigh(K)
    root = U * np.sqrt(np.clip(h2 * s + (1 - h2), 0, None))
    return Z @ rng.normal(size=(Z.shape[1], 1)) + root @ rng.normal(size=(K.shape[0], R))


def reduced_K(spec):
    """The reduced model's K₁ = U₁ S U₁ᵀ + λ̄ (I − U₁U₁ᵀ), densely (test-side)."""
    U = spec.U
    return (U * spec.s) @ U.T + spec.tail * (np.eye(spec.n) - U @ U.T)


def assert_same_fit(a, b, tol=1e-6):
    assert a.h2 == pytest.approx(b.h2, abs=tol)
    assert a.sigma2_g == pytest.approx(b.sigma2_g, rel=tol, abs=1e-9)
    assert a.sigma2_e == pytest.approx(b.sigma2_e, rel=tol)
    assert a.logl_reml == pytest.approx(b.logl_reml, abs=1e-6)


def test_exact_when_rank_below_k(tmp_path):
    """p = 40 variants: rank K ≤ 40 < k = 60, so the reduced model is K itself (λ̄ = 0)."""
    rng = np.random.default_rng(1)
    G = random_genotypes(rng, 300, 40, missing=0.0)
    store, std = store_of(tmp_path, G)
    spec = randomized_spectrum(GrmOperator(store.genotypes, std), 60, seed=4)
    assert spec.tail == pytest.approx(0.0, abs=1e-12)
    K = grm_reference(G, "gcta")
    Z = np.column_stack([np.ones(300), rng.normal(size=300)])
    Y = phenotypes(K, Z, 0.5, 2, seed=2)
    exact = bigmm.fit_reml(bigmm.exact_spectrum(K), Y, Z)
    low = bigmm.fit_reml(spec, Y, Z)
    for a, b in zip(low.fits, exact.fits):
        assert_same_fit(a, b)


def test_exact_when_k_is_n_minus_1(tmp_path):
    rng = np.random.default_rng(2)
    G = random_genotypes(rng, 120, 500)
    store, std = store_of(tmp_path, G, chunks=(50, 128))
    spec = randomized_spectrum(GrmOperator(store.genotypes, std), 119, seed=1)
    K = grm_reference(G, "gcta")
    np.testing.assert_allclose(spec.s, np.sort(np.linalg.eigvalsh(K))[::-1][:119], rtol=1e-9, atol=1e-12)
    Z = np.column_stack([np.ones(120), rng.normal(size=120)])
    Y = phenotypes(K, Z, 0.6, 2, seed=3)
    exact = bigmm.fit_reml(bigmm.exact_spectrum(K), Y, Z)
    for a, b in zip(bigmm.fit_reml(spec, Y, Z).fits, exact.fits):
        assert_same_fit(a, b)


@pytest.fixture(scope="module")
def structured(tmp_path_factory):
    d = tmp_path_factory.mktemp("structured")
    bigmm.simulate(1500, 4000, h2=0.5, seed=8, n_pops=12, fst=0.1, out_zarr=d / "s.zarr", chunks=(512, 1024))
    store = bigmm.open_store(d / "s.zarr")
    std = bigmm.standardization(bigmm.variant_stats(store.to_dask()), "gcta")
    K = bigmm.grm(store.genotypes, std)
    return store, std, K


def test_eigenpairs_accurate_on_structured_cohort(structured):
    """12 populations: 11 structure eigenvalues well above the bulk; k = 10 at the defaults."""
    store, std, K = structured
    spec = randomized_spectrum(GrmOperator(store.genotypes, std), 10, seed=0)
    assert spec.diagnostics["passes_over_X"] == DEFAULT_POWER_ITERS["krylov"] + 1
    s, U = np.linalg.eigh(K)
    s, U = s[::-1][:10], U[:, ::-1][:, :10]
    np.testing.assert_allclose(spec.s, s, rtol=1e-3)
    # largest principal angle between the two subspaces
    cos = np.linalg.svd(U.T @ spec.U, compute_uv=False)
    assert np.sqrt(1 - cos.min() ** 2) < 1e-2
    assert spec.diagnostics["orthonormality_error"] < 1e-12
    assert spec.diagnostics["max_ritz_residual"] < 1e-2
    assert spec.trace_K == pytest.approx(np.trace(K), rel=1e-12)
    np.testing.assert_allclose(spec.diag_K, np.diag(K), rtol=1e-12)


def test_krylov_at_least_as_accurate_as_subspace_iteration(structured):
    """With the same Ω and the same number of passes over X, the block Krylov space contains
    the subspace iteration's K^q Ω, so by the min-max principle every Ritz value of the Krylov
    run lies between the subspace iteration's and the true eigenvalue (up to round-off, 1e-10
    relative). On the bulk (k = 40, beyond the 11 structure eigenvalues) it is strictly closer:
    mean relative error 0.107 against 0.191 for this seed, asserted below 0.75x."""
    store, std, K = structured
    lam = np.sort(np.linalg.eigvalsh(K))[::-1][:40]
    kr = randomized_spectrum(GrmOperator(store.genotypes, std), 40, seed=5, oversample=10, power_iters=2)
    ss = randomized_spectrum(GrmOperator(store.genotypes, std), 40, seed=5, oversample=10, power_iters=1,
                             algorithm="subspace")
    assert kr.diagnostics["passes_over_X"] == ss.diagnostics["passes_over_X"] == 3
    assert kr.diagnostics["subspace_dim"] == 150 and ss.diagnostics["subspace_dim"] == 50
    assert np.all(kr.s >= ss.s * (1 - 1e-10))
    assert np.all(kr.s <= lam * (1 + 1e-10))
    err_kr, err_ss = (lam - kr.s) / lam, (lam - ss.s) / lam
    assert err_kr[11:].mean() < 0.75 * err_ss[11:].mean(), (err_kr[11:].mean(), err_ss[11:].mean())
    # the reported residuals are the true ones: ‖K u − θ u‖ / θ from the dense K
    R = K @ kr.U - kr.U * kr.s
    np.testing.assert_allclose(np.linalg.norm(R, axis=0) / kr.s, kr.diagnostics["ritz_residuals"],
                               rtol=1e-6, atol=1e-12)


def test_reduced_reml_equals_dense_reml_on_reduced_model(structured):
    """Tail totals without U₂ give exactly the REML of K₁ = U₁SU₁ᵀ + λ̄(I − U₁U₁ᵀ),
    also with missing values through indicators on the shared spectrum."""
    store, std, K = structured
    spec = randomized_spectrum(GrmOperator(store.genotypes, std), 30, seed=0, power_iters=1)
    rng = np.random.default_rng(5)
    n = spec.n
    Z = np.column_stack([np.ones(n), rng.normal(size=n)])
    Y = phenotypes(K, Z, 0.5, 2, seed=6)
    Y[rng.choice(n, 25, replace=False), 1] = np.nan
    K1 = reduced_K(spec)
    refs = []
    for j in range(2):
        obs = ~np.isnan(Y[:, j])
        # a 41-point grid brackets the single maximum of these profiles before Brent refines it
        # to 1e-12 (the default 201 points cost 30 s of dense n = 1500 solves here)
        refs.append(reml_reference(K1[np.ix_(obs, obs)], Y[obs, j], Z[obs], n_grid=41))
    # the observed rows of a reduced spectrum form a reduced spectrum again (QR of U_o), or
    # indicator columns keep the shared one: both are exact for the reduced model
    for missing, method in (("indicator", "indicator"), ("subset", "subset_spectrum")):
        res = bigmm.fit_reml(spec, Y, Z, missing=missing)
        assert [f.missing_method for f in res.fits] == ["none", method]
        for fit, ref in zip(res.fits, refs):
            assert fit.h2 == pytest.approx(ref["h2"], abs=1e-6)
            assert fit.logl_reml == pytest.approx(ref["logl_reml"], abs=1e-7)
            assert fit.h2_se_curvature == pytest.approx(ref["se_h2"], rel=1e-4)


def test_sandwich_se_equals_dense_sandwich(structured):
    """h2_se on a reduced spectrum is H⁻¹ J H⁻¹ with the true K: compared with a dense
    computation (P₁ from K₁, J = ½ tr(P₁V_aP₁VP₁V_bP₁V) with V from the full K). bigmm drops
    Z's projection from the tail excess, an O(c/n) term: 2% relative."""
    store, std, K = structured
    exact = bigmm.exact_spectrum(K)
    n = exact.n
    rng = np.random.default_rng(9)
    Z = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = phenotypes(K, Z, 0.5, 1, seed=10)[:, 0]
    for spec in (exact.top(20), randomized_spectrum(GrmOperator(store.genotypes, std), 20, seed=1)):
        fit = bigmm.fit_reml(spec, y, Z).fits[0]
        assert fit.h2_se_method.startswith("sandwich")
        sg, se = fit.sigma2_g, fit.sigma2_e
        K1 = reduced_K(spec)
        V1 = sg * K1 + se * np.eye(n)
        Vi = np.linalg.inv(V1)
        P = Vi - Vi @ Z @ np.linalg.solve(Z.T @ Vi @ Z, Z.T @ Vi)
        V = sg * K + se * np.eye(n)
        # tr(XY) = Σ X ∘ Yᵀ: H_ab = ½ tr(P a P b), J_ab = ½ tr(A_a A_b) with A_a = P a P V
        # (5 products of n x n instead of 40)
        PD = [P @ K1, P]
        A = [PDa @ (P @ V) for PDa in PD]
        H = np.array([[0.5 * np.sum(PD[i] * PD[j].T) for j in range(2)] for i in range(2)])
        J = np.array([[0.5 * np.sum(A[i] * A[j].T) for j in range(2)] for i in range(2)])
        Hi = np.linalg.inv(H)
        cov = Hi @ J @ Hi
        grad = np.array([se, -sg]) / (sg + se) ** 2
        assert fit.h2_se == pytest.approx(np.sqrt(grad @ cov @ grad), rel=0.02)
        assert fit.sigma2_g_se == pytest.approx(np.sqrt(cov[0, 0]), rel=0.02)


def test_lowrank_simulation_unbiased_and_calibrated(structured):
    """Small version of scripts/studies/sim_lowrank.py: 200 phenotypes drawn from the full model,
    fitted on the default randomized spectrum with k = 50. Bias within 3 Monte Carlo SEs;
    mean reported SE within 15% of the empirical SD (SD of 200 draws: ±5% sampling error)."""
    store, std, K = structured
    spec = randomized_spectrum(GrmOperator(store.genotypes, std), 50, seed=2)
    n, R, h2 = spec.n, 200, 0.5
    Z = np.ones((n, 1))
    Y = phenotypes(K, Z, h2, R, seed=11)
    res = bigmm.fit_reml(spec, Y, Z)
    est = np.array([f.h2 for f in res.fits])
    se = np.array([f.h2_se for f in res.fits])
    sd = est.std(ddof=1)
    assert abs(est.mean() - h2) < 3 * sd / np.sqrt(R), (est.mean(), sd)
    assert abs(se.mean() / sd - 1) < 0.15, (se.mean(), sd)


@pytest.mark.distributed
def test_randomized_on_local_cluster_equals_single_process(structured):
    from conftest import local_cluster
    from distributed import Client

    store, std, K = structured
    single = randomized_spectrum(GrmOperator(store.genotypes, std, n_tasks=3), 15, seed=3, power_iters=2)
    with local_cluster(2, 1) as cluster, Client(cluster):
        dist = randomized_spectrum(GrmOperator(store.genotypes, std, n_tasks=3), 15, seed=3, power_iters=2)
    # same Ω and probes (seeded on the driver); partial products summed in another order
    np.testing.assert_allclose(dist.s, single.s, rtol=1e-10)
    np.testing.assert_allclose(np.abs(np.sum(dist.U * single.U, axis=0)), 1.0, atol=1e-8)
    assert dist.tail_trace_K2 == pytest.approx(single.tail_trace_K2, rel=1e-10)


def test_bad_parameters_fail_before_computing(structured, monkeypatch):
    store, std, K = structured
    def no_pass(*a, **k):
        raise AssertionError("a pass over X ran")

    monkeypatch.setattr(GrmOperator, "apply", no_pass)
    n = store.n_samples
    for rank in (0, -3, n, n + 5):
        with pytest.raises(InputError, match="rank must be between 1 and n"):
            randomized_spectrum(GrmOperator(store.genotypes, std), rank)
    with pytest.raises(InputError, match="power_iters"):
        randomized_spectrum(GrmOperator(store.genotypes, std), 10, power_iters=-1)
    with pytest.raises(InputError, match="too small for a pass over X"):
        randomized_spectrum(GrmOperator(store.genotypes, std, memory=1_000_000), 10)
    with pytest.raises(InputError, match="no variant statistics"):
        randomized_spectrum(GrmOperator(store.genotypes, None), 10)
    # a driver without room for the Krylov basis: 8 n (q + 1) l + 5 · 8 n l bytes
    import psutil
    from collections import namedtuple

    from bigmm.spectrum import driver_bytes

    need = driver_bytes(n, 60, 3)
    assert need == 8 * n * (4 * 60 + 5 * 60)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: namedtuple("vm", "available")(need - 1))
    with pytest.raises(InputError, match=r"needs .*B on the driver but .*B is available; use spectrum.algorithm: subspace"):
        randomized_spectrum(GrmOperator(store.genotypes, std), 10, oversample=50)
    assert isinstance(InputError("x"), BigmmError)
