"""Bivariate REML from the univariate matrix-free build, against dense NumPy.

Every check uses a K of rank r < n (n = 120, r = 40 variants), so the [Z, Y] block Lanczos
exhausts its Krylov space (tol 1e-300 is never met: the fit runs until every recurrence is done),
and deflation by all r eigenpairs with λ > 0 makes the log det exact (the projected operator is
0). Tolerances and why:
- quadratic forms [Z, y_a, y_b]ᵀ (hK + (1 − h)I)⁻ᵏ [Z, y_a, y_b] and the log det: the Gauss
  rules are then exact, so they agree with dense solves / slogdet to the round-off of a Lanczos
  process with full re-orthogonalisation (1e-8 relative, as in tests/test_mfreml.py);
- the per-probe log det estimates: their mean is the log det estimate by construction (1e-10).
"""

import numpy as np
import pytest
from conftest import MemoryCheckpoint, random_genotypes
from reference import grm_reference

import bigmm
from bigmm.bivariate import fit_bivariate
from bigmm.errors import InputError
from bigmm.mf_bivariate import CrossPatternError, fit_bivariate_matrix_free, pair_measure
from bigmm.mfreml import fit_matrix_free


class DenseOp:
    """K in memory behind the operator interface; counts applications (passes over X)."""

    def __init__(self, K):
        self.K = np.asarray(K, dtype=np.float64)
        self.calls = 0

    @property
    def n(self):
        return self.K.shape[0]

    def apply(self, M, want_diag=False):
        self.calls += 1
        return self.K @ M, (np.diag(self.K).copy() if want_diag else None)


def bivariate_problem(seed, n=120, p=40, c=2, rg=0.6, h2=(0.4, 0.7), m=3):
    """K of rank p < n; m phenotypes with Var = G₀ ⊗ K + E₀ ⊗ I for the first two (genetic
    correlation rg), the third independent; covariates with effects and a large offset/scale
    on one trait so that the OLS shift and the unit scale have something to undo."""
    rng = np.random.default_rng(seed)
    K = grm_reference(random_genotypes(rng, n, p, missing=0.0))
    s, U = np.linalg.eigh(K)
    Z = np.column_stack([np.ones(n)] + [rng.normal(size=n) for _ in range(c - 1)])
    G0 = np.array([[h2[0], rg * np.sqrt(h2[0] * h2[1])], [rg * np.sqrt(h2[0] * h2[1]), h2[1]]])
    E0 = np.array([[1 - h2[0], 0.2], [0.2, 1 - h2[1]]])
    Kroot = U * np.sqrt(np.clip(s, 0, None))
    g = Kroot @ rng.normal(size=(n, 2)) @ np.linalg.cholesky(G0).T
    e = rng.normal(size=(n, 2)) @ np.linalg.cholesky(E0).T
    Y = np.empty((n, m))
    Y[:, :2] = Z @ rng.normal(size=(c, 2)) + g + e
    Y[:, 0] = 50.0 + 30.0 * Y[:, 0]  # a unit scale and an offset far from 1 and 0
    for j in range(2, m):
        Y[:, j] = Z @ rng.normal(size=c) + Kroot @ rng.normal(size=n) * 0.6 + rng.normal(size=n)
    keep = s > 1e-10 * s.max()
    deflate = (U[:, keep][:, ::-1], s[keep][::-1])  # every eigenpair with λ > 0: exact log det
    return K, Z, Y, deflate


@pytest.fixture(scope="module")
def exhausted():
    """One exhausted, exactly deflated build of three phenotypes, 2 covariates."""
    K, Z, Y, deflate = bivariate_problem(1)
    op = DenseOp(K)
    res = fit_matrix_free(op, Y, Z, deflate=deflate, max_steps=200, tol=1e-300, probes=4,
                          phenotype_names=["a", "b", "c"])
    assert res.notes["exhausted"]
    return K, Z, Y, res, op.calls


def dense_forms(K, B, h, k=0):
    """Bᵀ (d/dh)ᵏ H⁻¹ B with H = hK + (1 − h)I, by dense solves."""
    n = K.shape[0]
    H = h * K + (1 - h) * np.eye(n)
    Hi = np.linalg.inv(H)
    D = K - np.eye(n)
    F = (Hi, -Hi @ D @ Hi, 2 * Hi @ D @ Hi @ D @ Hi)[k]
    return B.T @ F @ B


def gauss(measure, h, k=0):
    """G diag(f(nodes)) Gᵀ for f(λ) = 1/(hλ + 1 − h) (k = 0) or its h-derivatives."""
    th = measure.nodes
    d = h * th + 1 - h
    f = (1 / d, -(th - 1) / d ** 2, 2 * (th - 1) ** 2 / d ** 3)[k]
    return (measure.G * f) @ measure.G.T


@pytest.mark.parametrize("pair", [("a", "b"), ("b", "a"), ("a", "c"), (1, 2)])
def test_measure_gives_dense_quadratic_forms_of_the_raw_pair(exhausted, pair):
    """G diag(f(θ)) Gᵀ = [Z, y_a, y_b]ᵀ f(K) [Z, y_a, y_b] for the solve and its two h-derivatives,
    with the ORIGINAL y (the OLS shift and the unit scale of the fit undone)."""
    K, Z, Y, res, _ = exhausted
    m = pair_measure(res, *pair)
    cols = [res.phenotype_names.index(x) if isinstance(x, str) else x for x in pair]
    B = np.column_stack([Z, Y[:, cols]])
    assert m.n == K.shape[0] and m.c == 2 and m.G.shape == (4, m.nodes.size)
    assert np.all(m.nodes >= 0)
    for h in (0.0, 0.3, 0.8, 0.99):
        for k in range(3):
            want = dense_forms(K, B, h, k)
            np.testing.assert_allclose(gauss(m, h, k), want, rtol=1e-8, atol=1e-8 * np.abs(want).max())


def test_measure_logdet_equals_dense_slogdet(exhausted):
    """logdet(h) = log det(hK + (1 − h)I) and its h-derivatives tr(H⁻¹(K − I)), −tr((H⁻¹(K − I))²);
    each probe's own estimate (N x P) is it too (the probes see the projected operator, which is 0
    here, so every probe's term vanishes)."""
    K, Z, Y, res, _ = exhausted
    m = pair_measure(res, "a", "b")
    n = K.shape[0]
    h = np.array([0.0, 0.2, 0.6, 0.95])
    L, L1, L2 = m.logdet(h)
    for i, hi in enumerate(h):
        H = hi * K + (1 - hi) * np.eye(n)
        D = np.linalg.solve(H, K - np.eye(n))
        assert L[i] == pytest.approx(np.linalg.slogdet(H)[1], rel=1e-8, abs=1e-9)
        assert L1[i] == pytest.approx(np.trace(D), rel=1e-8, abs=1e-9)
        assert L2[i] == pytest.approx(-np.trace(D @ D), rel=1e-8, abs=1e-9)
    per = m.logdet_per_probe(h)
    assert per.shape == (4, h.size)
    np.testing.assert_allclose(per, np.broadcast_to(L, per.shape), rtol=1e-10, atol=1e-10)


def test_per_probe_estimates_average_to_the_logdet_without_deflation():
    """Without deflation the log det has Monte Carlo error: each probe's estimate is the whole
    estimator on one probe, so their mean is the reported log det (to round-off, 1e-10), and the
    univariate fit's own profile reports the same log det."""
    K, Z, Y, _ = bivariate_problem(2)
    res = fit_matrix_free(DenseOp(K), Y[:, :2], Z, max_steps=8, tol=1e-300, probes=6, seed=3)
    m = pair_measure(res, 0, 1)
    h = np.array([0.1, 0.5, 0.9])
    per = m.logdet_per_probe(h)
    assert per.shape == (6, 3)
    L = m.logdet(h)[0]
    np.testing.assert_allclose(per.mean(axis=0), L, rtol=1e-10)
    assert per.std(axis=0).min() > 0  # the probes differ: there is Monte Carlo error to measure
    np.testing.assert_allclose(res.loglik_profile(h, "pheno1")["logdet_H"], L, rtol=1e-12)


def test_pairs_in_one_missing_pattern_use_their_observed_samples():
    """Two phenotypes missing on the same samples: the measure is that of K_oo, Z_o, y_o."""
    K, Z, Y, deflate = bivariate_problem(3)
    miss = np.random.default_rng(30).random(K.shape[0]) < 0.2
    Y[miss, 0] = np.nan
    Y[miss, 1] = np.nan
    res = fit_matrix_free(DenseOp(K), Y, Z, deflate=deflate, max_steps=200, tol=1e-300, probes=4)
    m = pair_measure(res, 0, 1)
    o = ~miss
    Ko = K[np.ix_(o, o)]
    assert m.n == o.sum()
    B = np.column_stack([Z[o], Y[o][:, :2]])
    for h in (0.2, 0.7):
        want = dense_forms(Ko, B, h)
        np.testing.assert_allclose(gauss(m, h), want, rtol=1e-8, atol=1e-8 * np.abs(want).max())
        # U's observed rows deflate K_oo exactly (they span range K_oo): the log det is exact
        assert m.logdet(np.array([h]))[0][0] == pytest.approx(
            np.linalg.slogdet(h * Ko + (1 - h) * np.eye(o.sum()))[1], rel=1e-8)


def test_pair_across_missing_patterns_is_refused_with_what_to_do():
    K, Z, Y, _ = bivariate_problem(4)
    Y[:10, 0] = np.nan
    res = fit_matrix_free(DenseOp(K), Y[:, :2], Z, max_steps=3, probes=2, phenotype_names=["ht", "bmi"])
    with pytest.raises(CrossPatternError, match=r"'ht' \(110 samples\) and 'bmi' \(120 samples\).*110 samples "
                                                r"observed in both.*common samples"):
        pair_measure(res, "ht", "bmi")
    with pytest.raises(InputError, match="'wt' is not in the matrix-free fit"):
        pair_measure(res, "ht", "wt")
    with pytest.raises(InputError, match="column 5 is out of range"):
        pair_measure(res, 0, 5)



# ------------------------------------------------------------------ the bivariate fits
# Exact against matrix-free: both maximise ℓ_R by fit_pair's AI-REML (tol 1e-10 · |ℓ_R| on the
# change of ℓ_R, reached by Newton steps, i.e. quadratically); their measures agree to the
# Lanczos round-off (1e-8 relative, above), which moves a maximiser with curvature O(n) by far
# less than 1e-6. So variance components to 1e-6 relative, r_g and h² to 1e-6, ℓ_R to 1e-6.

PARAMS = ("sg_a", "sg_b", "cov_g", "ve_a", "ve_b", "cov_e")


def check_same_fit(mf, ex):
    for k in PARAMS:
        assert getattr(mf, k) == pytest.approx(getattr(ex, k), rel=1e-6, abs=1e-9), k
    for k in ("h2_a", "h2_b", "rg", "re", "rp"):
        assert getattr(mf, k) == pytest.approx(getattr(ex, k), abs=1e-6), k
    for k in ("rg_se", "h2_a_se", "h2_b_se"):
        assert getattr(mf, k) == pytest.approx(getattr(ex, k), rel=1e-5), k
    for k in ("logL", "logL_rg0", "logL_rg1"):
        assert getattr(mf, k) == pytest.approx(getattr(ex, k), abs=1e-6), k
    assert (mf.n, mf.n_left_out, mf.boundary) == (ex.n, ex.n_left_out, ex.boundary)
    for fm, fe in zip(mf.fixed_effects, ex.fixed_effects):  # (name, β_a, se_a, β_b, se_b)
        assert fm[0] == fe[0]
        np.testing.assert_allclose(fm[1:], fe[1:], rtol=1e-6)


def test_exhausted_build_gives_the_exact_bivariate_fit_of_every_pair_without_a_pass(exhausted):
    """Every pair from the univariate build = bigmm.fit_bivariate on the exact spectrum of K (the
    same covariates; a and b genetically correlated, c not), and no pass over X beyond the
    univariate fit's; the log det is exact (deflation by all of range K), so the Monte Carlo SD vanishes."""
    K, Z, Y, res, calls = exhausted
    op = DenseOp(K)
    op.calls = calls
    mf = fit_bivariate_matrix_free(res, op=op, Y=Y, Z=Z)
    assert op.calls == calls == res.passes_over_X  # the pairs took no pass over X
    assert mf.extra_passes == 0 and set(mf.builds) == {"univariate"}
    ex = fit_bivariate(bigmm.exact_spectrum(K), Y, Z, phenotype_names=["a", "b", "c"])
    assert [(f.trait_a, f.trait_b) for f in mf.fits] == [("a", "b"), ("a", "c"), ("b", "c")]
    for fm, fe in zip(mf.fits, ex.fits):
        check_same_fit(fm, fe)
    assert mf["a", "b"].rg > 0.3 and mf["a", "b"].p_rg0 < 0.05  # the simulated r_g = 0.6 is seen
    # the probes see the projected operator, 0 up to round-off: no Monte Carlo error
    assert max(v for mc in mf.mc_sd for v in mc.values()) < 1e-8


def test_pair_of_a_phenotype_with_itself(exhausted):
    """r_g of a phenotype with itself is 1, and its h² is the univariate matrix-free fit's (both
    exact here: 1e-6 as two maximisers of the same profile)."""
    K, Z, Y, res, _ = exhausted
    f = fit_bivariate_matrix_free(res, [("b", "b")]).fits[0]
    assert f.rg == 1.0 and f.boundary == "degenerate"
    uni = res.fits[1]
    assert f.h2_a == pytest.approx(uni.h2, abs=1e-6)
    assert f.sg_a == pytest.approx(uni.sigma2_g, rel=1e-6)


def test_pairs_across_missing_patterns_from_one_common_samples_build():
    """Phenotypes with different missing values: refused without the operator (the message names
    the pair); with it, every such pair is fitted on its common samples from ONE more build (its
    passes counted), equal to the exact path's fit on the same common samples (``n_left_out``
    included)."""
    K, Z, Y, deflate = bivariate_problem(5, n=80, p=30, m=3)
    rng = np.random.default_rng(50)
    n = K.shape[0]
    Y[rng.random(n) < 0.15, 0] = np.nan
    Y[rng.random(n) < 0.15, 2] = np.nan
    op = DenseOp(K)
    res = fit_matrix_free(op, Y, Z, deflate=deflate, max_steps=200, tol=1e-300, probes=4,
                          phenotype_names=["a", "b", "c"])
    uni = op.calls
    with pytest.raises(CrossPatternError, match=r"3 of the pairs asked for have different missing values.*'a' "
                                                r"\(\d+ samples\) and 'b'.*pass the operator"):
        fit_bivariate_matrix_free(res)
    pairs = [("a", "c"), ("b", "c")]
    mf = fit_bivariate_matrix_free(res, pairs, op=op, Y=Y, Z=Z, deflate=deflate)
    assert mf.builds == ("common_samples",) * 2
    assert mf.extra_passes == op.calls - uni > 0  # one build for both pairs
    ex = fit_bivariate(bigmm.exact_spectrum(K), Y, Z, phenotype_names=["a", "b", "c"], pairs=pairs)
    for fm, fe in zip(mf.fits, ex.fits):
        check_same_fit(fm, fe)
    with pytest.raises(InputError, match="'a': Y's missing values are not those of the matrix-free fit"):
        fit_bivariate_matrix_free(res, op=op, Y=np.where(np.isnan(Y), 0.0, Y), Z=Z)


class StopAfter(DenseOp):
    """Raises (as a killed run stops) once it has made ``passes`` passes."""

    def __init__(self, K, passes):
        super().__init__(K)
        self.passes = passes

    def apply(self, M, want_diag=False):
        if self.calls == self.passes:
            raise KeyboardInterrupt("stopped")
        return super().apply(M, want_diag)


def test_common_samples_build_resumes_from_its_checkpoint():
    """The common-samples build stopped after 3 passes resumes from its checkpoint: the second call
    makes only the remaining passes (its ``extra_passes``: this call's), and the pairs equal an
    uninterrupted fit's to round-off (the same steps from the saved state: 1e-10)."""
    K, Z, Y, deflate = bivariate_problem(5, n=80, p=30, m=3)
    rng = np.random.default_rng(50)
    Y[rng.random(K.shape[0]) < 0.15, 2] = np.nan
    res = fit_matrix_free(DenseOp(K), Y, Z, max_steps=200, tol=1e-300, probes=4, phenotype_names=["a", "b", "c"])
    pairs = [("a", "c"), ("b", "c")]
    ref = fit_bivariate_matrix_free(res, pairs, op=DenseOp(K), Y=Y, Z=Z, jackknife=None)
    assert ref.extra_passes > 4
    ck = MemoryCheckpoint()
    with pytest.raises(KeyboardInterrupt):
        fit_bivariate_matrix_free(res, pairs, op=StopAfter(K, 3), Y=Y, Z=Z, jackknife=None, checkpoint=ck)
    assert ck.state is not None
    op = DenseOp(K)
    back = fit_bivariate_matrix_free(res, pairs, op=op, Y=Y, Z=Z, jackknife=None, checkpoint=ck)
    assert back.extra_passes == op.calls == ref.extra_passes - 3
    for a, b in zip(back.fits, ref.fits):
        for k in PARAMS + ("rg", "rg_se", "logL"):
            assert getattr(a, k) == pytest.approx(getattr(b, k), rel=1e-10, abs=1e-12), k


@pytest.fixture(scope="module")
def probed():
    """A build whose log det has Monte Carlo error (no deflation, 8 probes)."""
    K, Z, Y, _ = bivariate_problem(6, n=150, p=50)
    res = fit_matrix_free(DenseOp(K), Y[:, :2], Z, max_steps=60, probes=8, seed=2, phenotype_names=["a", "b"])
    return K, Z, Y, res


def test_jackknife_newton_step_agrees_with_refitting(probed):
    """The one-step jackknife against refitting each delete-one likelihood: the step's error is
    second order in one probe's share of the log det (1/N), so the SDs agree to a few percent
    (measured 1–4% at N = 8; 15% allowed); both are > 0 (the log det is estimated)."""
    _, _, _, res = probed
    a = fit_bivariate_matrix_free(res, jackknife="newton")
    b = fit_bivariate_matrix_free(res, jackknife="refit", lrt=False)
    assert a.fits[0].rg == b.fits[0].rg
    for k in ("rg", "h2_a", "h2_b", "sg_a", "cov_g", "ve_b"):
        assert a.mc_sd[0][k] > 0
        assert a.mc_sd[0][k] == pytest.approx(b.mc_sd[0][k], rel=0.15), k


def test_delete_one_logdet_is_the_mean_of_the_other_probes(probed):
    """The log det the jackknife leaves probe j out of is the mean of the other N − 1 probes' own
    estimates (1e-10: the same sums), and its h-derivatives are those of that mean (central
    differences with step 1e-5: first derivative to ~1e-9 (1e-6 allowed), second to ~1e-6 by
    round-off over eps² (1e-4 allowed))."""
    from bigmm.mf_bivariate import _Logdet

    _, _, _, res = probed
    m = pair_measure(res, "a", "b")
    slq = res.models[0].slq
    h = np.array([0.2, 0.5, 0.8])
    per = m.logdet_per_probe(h)
    N = per.shape[0]
    for j in (0, N - 1):
        L, L1, L2 = _Logdet(slq, drop=j)(h)
        keep = np.arange(N) != j
        np.testing.assert_allclose(L, per[keep].mean(axis=0), rtol=1e-10)
        eps = 1e-5
        up, dn = m.logdet_per_probe(h + eps)[keep].mean(0), m.logdet_per_probe(h - eps)[keep].mean(0)
        np.testing.assert_allclose(L1, (up - dn) / (2 * eps), rtol=1e-6)
        np.testing.assert_allclose(L2, (up - 2 * per[keep].mean(0) + dn) / eps ** 2, rtol=1e-4)


@pytest.mark.parametrize("setting", ["ritz", "deflated", "no_diagonal"])
def test_folded_logdet_equals_the_fits_logdet_rule(setting):
    """The pair's log det (the rule folded into one measure) = the univariate fit's
    LogdetRule.logdet with its two h-derivatives, to round-off (1e-11 relative): with the Ritz
    control variate (no deflation), with partial deflation, and without tr K (no diagonal)."""
    K, Z, Y, deflate = bivariate_problem(7, n=100, p=60)
    U, s = deflate
    op = DenseOp(K)
    if setting == "no_diagonal":
        op.apply = lambda M, want_diag=False: (K @ M, None)
    res = fit_matrix_free(op, Y[:, :2], Z, max_steps=6, probes=5, seed=1,
                          deflate=(U[:, :5], s[:5]) if setting == "deflated" else None)
    slq = res.models[0].slq
    if setting == "ritz":
        assert slq.ritz_theta.size  # the control variate is there to fold in
    m = pair_measure(res, 0, 1)
    h = np.array([0.0, 0.1, 0.5, 0.9, 0.999])
    for got, want in zip(m.logdet(h), slq.logdet(h)):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11 * np.abs(want).max())


def test_delete_one_score_change_equals_the_score_of_the_delete_one_likelihood(probed):
    """s_(j) − s from the log det term alone = the difference of fit_pair's scores
    (bigmm.bivariate.pair_score_ai) of the delete-one and the full measure, at the estimate and
    away from it (1e-7 relative to the largest: round-off of two scores of size O(n))."""
    from dataclasses import replace

    from bigmm.bivariate import pair_score_ai
    from bigmm.mf_bivariate import _delete_one_scores, _Logdet

    _, _, _, res = probed
    m = pair_measure(res, "a", "b")
    slq = res.models[0].slq
    G0 = np.array([[0.4, 0.15], [0.15, 0.7]])
    E0 = np.array([[0.6, -0.1], [-0.1, 0.3]])
    got = _delete_one_scores(G0, E0, slq)
    s0 = pair_score_ai(m, G0, E0)[0]
    for j in (0, 3, 7):
        want = pair_score_ai(replace(m, logdet=_Logdet(slq, drop=j)), G0, E0)[0] - s0
        np.testing.assert_allclose(got[j], want, rtol=0, atol=1e-7 * np.abs(want).max())


def test_result_table_and_round_trip(probed):
    """to_pandas has every estimate's Monte Carlo SD as ``<estimate>_se_mc`` and the build; to_dict
    is JSON-able and from_dict gives the same fits, SDs and cost figures back."""
    import json

    from bigmm.mf_bivariate import MC_FIELDS, BivariateMatrixFreeResult

    _, _, _, res = probed
    r = fit_bivariate_matrix_free(res, [(1, 0)], lrt=False)
    df = r.to_pandas()
    assert list(df["trait_a"]) == ["b"] and df.loc[0, "rg_se_mc"] == r.mc_sd[0]["rg"] > 0
    assert all(f"{k}_se_mc" in df for k in MC_FIELDS) and df.loc[0, "build"] == "univariate"
    back = BivariateMatrixFreeResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.mc_sd == r.mc_sd and back.builds == r.builds and back.probes == 8
    assert back.fits[0].rg == r.fits[0].rg and back.extra_passes == 0


def test_pairs_spread_over_processes_give_the_serial_fits(exhausted):
    """workers=2 fits the pairs in two processes: every estimate, log-likelihood, SE and Monte
    Carlo SD equals the serial run's (the same arithmetic in another process; 1e-12 relative allows
    for BLAS threading, one thread in the workers, and for the pairs being stacked differently: each
    process fits its own pairs as one stack, whose array products round differently), in the order
    asked; workers=0 is refused. The Monte Carlo SDs are 0 here up to round-off (the log det is
    exact): 1e-14 absolute."""
    _, _, _, res, _ = exhausted
    one = fit_bivariate_matrix_free(res, workers=1)
    two = fit_bivariate_matrix_free(res, workers=2)
    assert two.notes["workers"] == 2
    fields = ("sg_a", "sg_b", "cov_g", "ve_a", "ve_b", "cov_e", "rg", "rg_se", "h2_a", "h2_b", "logL", "logL_rg0",
              "logL_rg1", "logL_ml", "iterations")
    assert [(f.trait_a, f.trait_b) for f in two.fits] == [(f.trait_a, f.trait_b) for f in one.fits]
    for f1, f2, m1, m2 in zip(one.fits, two.fits, one.mc_sd, two.mc_sd):
        np.testing.assert_allclose([getattr(f2, k) for k in fields], [getattr(f1, k) for k in fields], rtol=1e-12)
        np.testing.assert_allclose([m2[k] for k in m1], list(m1.values()), rtol=1e-12, atol=1e-14)
    with pytest.raises(InputError, match="workers must be a positive number of processes"):
        fit_bivariate_matrix_free(res, workers=0)


# --------------------------------------------------------------------------------------------
# the pairs of one pattern fitted together (bigmm.bivariate_batch) = one by one (fit_pair)


def dense_reml_loglik(K, Z, Y2, G0, E0, ml=False):
    """ℓ_R (Harville, without log det XᵀX; X = I₂ ⊗ Z) or the ML log-likelihood of the stacked pair, dense."""
    n, c = Z.shape
    V = np.kron(G0, K) + np.kron(E0, np.eye(n))
    X = np.kron(np.eye(2), Z)
    y = Y2.T.ravel()
    Vi = np.linalg.inv(V)
    XVX = X.T @ Vi @ X
    P = Vi - Vi @ X @ np.linalg.solve(XVX, X.T @ Vi)
    if ml:
        return -0.5 * (2 * n * np.log(2 * np.pi) + np.linalg.slogdet(V)[1] + y @ P @ y)
    return -0.5 * (2 * (n - c) * np.log(2 * np.pi) + np.linalg.slogdet(V)[1] + np.linalg.slogdet(XVX)[1] + y @ P @ y)


def test_batched_evaluator_equals_dense_and_the_pair_evaluator(exhausted):
    """The stacked evaluator at three (G₀, E₀) for three pairs at once: ℓ_R and the ML
    log-likelihood = the dense formula (exhausted, exactly deflated build: 1e-8 relative, the
    Lanczos round-off), score and AI = the one-pair _Evaluation's (the same sums in another
    order: 1e-10 relative to the largest entry); a θ with E₀ not positive definite is not valid."""
    from bigmm.bivariate_batch import _Evals, _Shared, _Stack, pair_products
    from bigmm.bivariate_likelihood import _Evaluation

    K, Z, Y, res, _ = exhausted
    ms = [pair_measure(res, a, b) for a, b in (("a", "b"), ("a", "c"), ("b", "c"))]
    m0 = ms[0]
    sh = _Shared(m0.nodes, m0.G[:2], m0.n, m0.c, m0.logdet)
    YB = _Stack(*pair_products(m0.G[:2], np.stack([m.G[2:] for m in ms]), m0.nodes))
    theta = np.array([[0.5, 0.3, 0.1, 0.7, 0.4, 0.2], [0.2, 0.9, -0.3, 1.1, 0.5, -0.1],
                      [0.3, 0.3, 0.05, 0.5, 0.6, 0.9]])  # the last: E₀ not positive definite
    cols = [(0, 1), (0, 2), (1, 2)]
    for ml in (False, True):
        ev = _Evals(sh, YB, theta, ml)
        assert list(ev.ok) == [True, True, False]
        score, AI = ev.derivatives(np.array([0, 1]))
        for i in range(2):
            t = theta[i]
            G0, E0 = np.array([[t[0], t[2]], [t[2], t[1]]]), np.array([[t[3], t[5]], [t[5], t[4]]])
            want = dense_reml_loglik(K, Z, Y[:, list(cols[i])], G0, E0, ml=ml)
            assert ev.loglik[i] == pytest.approx(want, rel=1e-8)
            one = _Evaluation(ms[i], t, ml=ml)
            np.testing.assert_allclose(score[i], one.score, rtol=0, atol=1e-10 * np.abs(one.score).max())
            np.testing.assert_allclose(AI[i], one.AI, rtol=0, atol=1e-10 * np.abs(one.AI).max())


@pytest.fixture(scope="module")
def many_pairs():
    """Seven phenotypes of one pattern, 2 covariates, log det by 6 probes (Monte Carlo error):
    a, b (r_g 0.6), c and d with the same genetic values (r_g = 1), f and h with opposite ones
    (r_g = −1), e = 2 a + Z γ exactly (degenerate with a: fit_pair's own handling). With this
    seed the unconstrained r_g of c–d and f–h are beyond ±1 (1.05, −1.02): their constrained fits
    lie on the |r_g| = 1 boundary."""
    n = 120
    K, Z, Y, _ = bivariate_problem(19, n=n, p=40, m=2)
    rng = np.random.default_rng(119)
    s, U = np.linalg.eigh(K)
    g = (U * np.sqrt(np.clip(s, 0, None))) @ rng.normal(size=(n, 2))
    c = 1.2 * g[:, 0] + Z @ [1.0, -0.5] + rng.normal(size=n)
    d = 1.2 * g[:, 0] + rng.normal(size=n)
    f = -1.2 * g[:, 1] + rng.normal(size=n)
    h = 1.2 * g[:, 1] + rng.normal(size=n)
    Yall = np.column_stack([Y, c, d, 2.0 * Y[:, 0] + Z @ [3.0, 1.0], f, h])
    res = fit_matrix_free(DenseOp(K), Yall, Z, max_steps=60, probes=6, seed=3, phenotype_names=list("abcdefh"))
    return res, [("c", "d"), ("f", "h"), ("a", "b"), ("a", "e"), ("a", "c"), ("b", "f")]


def fits_of(many, monkeypatch, batched, sel=slice(None), **kw):
    import bigmm.mf_bivariate as mfb

    monkeypatch.setattr(mfb, "_BATCHED", batched)
    res, pairs = many
    # 30 AI iterations: every estimate here converges in ≤ 22; |r_g| = 1 refits for the LRT that
    # converge slowly stop there in both paths (as they would at 100), keeping the test short
    return fit_bivariate_matrix_free(res, pairs[sel], **{"max_iter": 30, **kw})


@pytest.mark.parametrize("kw", [dict(sel=slice(0, 4), jackknife=None), dict(sel=slice(2, 6)), dict(sel=slice(0, 1)),
                                dict(lrt=False, jackknife=None, constrain=False)])
def test_pairs_fitted_together_equal_the_one_by_one_fits(many_pairs, monkeypatch, kw):
    """Six pairs through the batched driver and through fit_pair one by one (the reference):
    the same estimates, SEs, log-likelihoods (REML, r_g = 0, |r_g| = 1, ML), LRTs, fixed effects and
    Monte Carlo SDs. Both maximise the same ℓ with the same AI steps and stopping rule (ℓ settled to
    1e-10 relative, steps < 1e-9 of the parameters); they differ only in round-off (summation order),
    so 1e-8 relative (1e-10 absolute for values near 0). Constrained: pairs on the |r_g| = 1 boundary
    are among them; the degenerate pair a–e goes to fit_pair in both; the "newton" jackknife of
    the pairs inside the constraint, and of one on it (its N delete-one refits)."""
    one = fits_of(many_pairs, monkeypatch, False, **kw)
    two = fits_of(many_pairs, monkeypatch, True, **kw)
    if kw.get("sel") == slice(0, 4):
        assert [f.boundary for f in one.fits[:2]] == ["rank-1 G0"] * 2
        assert one["a", "e"].boundary == "degenerate"
    fields = ("sg_a", "sg_b", "cov_g", "ve_a", "ve_b", "cov_e", "rg", "re", "rp", "h2_a", "h2_b", "rg_se", "re_se",
              "h2_a_se", "h2_b_se", "rp_se", "logL", "logL_rg0", "logL_rg1", "lrt_rg0", "lrt_rg1", "p_rg0", "p_rg1",
              "logL_ml")
    for f1, f2, m1, m2 in zip(one.fits, two.fits, one.mc_sd, two.mc_sd):
        assert (f2.trait_a, f2.trait_b, f2.boundary, f2.note, f2.converged, f2.n) == \
            (f1.trait_a, f1.trait_b, f1.boundary, f1.note, f1.converged, f1.n)
        np.testing.assert_allclose([getattr(f2, k) for k in fields], [getattr(f1, k) for k in fields],
                                   rtol=1e-8, atol=1e-10, err_msg=f"{f1.trait_a}-{f1.trait_b}")
        np.testing.assert_allclose(f2.covariance, f1.covariance, rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(f2.ml_estimates, f1.ml_estimates, rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose([x[1:] for x in f2.fixed_effects], [x[1:] for x in f1.fixed_effects], rtol=1e-8)
        assert m2.keys() == m1.keys()
        np.testing.assert_allclose(list(m2.values()), list(m1.values()), rtol=1e-7, atol=1e-12)


def test_pairs_the_batch_cannot_finish_are_fitted_one_by_one(many_pairs, monkeypatch):
    """With 4 AI iterations no fit converges: every pair goes to fit_pair, and reports what it
    reports (not converged, with its note), as the one-by-one run does."""
    one = fits_of(many_pairs, monkeypatch, False, max_iter=4, jackknife=None)
    two = fits_of(many_pairs, monkeypatch, True, max_iter=4, jackknife=None)
    assert not any(f.converged for f in two.fits if f.boundary != "degenerate")
    for f1, f2 in zip(one.fits, two.fits):
        assert f2.note == f1.note and f2.iterations == f1.iterations
        np.testing.assert_allclose([f2.rg, f2.logL, f2.sg_a], [f1.rg, f1.logL, f1.sg_a], rtol=1e-8)
