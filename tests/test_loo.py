"""Leave-one-out predictions from a fit without refitting (bigmm.blup.loo_spectral / leave_one_out),
against the explicit computation: for each sample, GLS and BLUP from the other n − 1 samples with
the same variance components, dense NumPy, written here."""

import numpy as np
import pytest

import bigmm
from bigmm.blup import leave_one_out, loo_accuracy, loo_spectral


def explicit_loo(K, y, Z, h2):
    """ŷ₋ᵢ and ĝ₋ᵢ of each sample from the others: β̂₋ᵢ by GLS on V₋ᵢ, then the conditional mean."""
    n = y.size
    V = h2 * K + (1.0 - h2) * np.eye(n)  # V / σ²: the scale cancels in GLS and BLUP
    pred, gen = np.empty(n), np.empty(n)
    for i in range(n):
        o = np.arange(n) != i
        Vi = np.linalg.inv(V[np.ix_(o, o)])
        beta = np.linalg.solve(Z[o].T @ Vi @ Z[o], Z[o].T @ Vi @ y[o])
        gen[i] = V[i, o] @ Vi @ (y[o] - Z[o] @ beta)  # Cov(g_i, y₋ᵢ) = σ²_g K_i,₋ᵢ = V_i,₋ᵢ
        pred[i] = Z[i] @ beta + gen[i]
    return pred, gen


def model_K(spec):
    """The K a spectrum stands for: U S Uᵀ, plus λ̄ (I − UUᵀ) for a reduced one."""
    K = (spec.U * spec.s) @ spec.U.T
    if spec.n_tail:
        K += spec.tail * (np.eye(spec.n) - spec.U @ spec.U.T)
    return K


@pytest.fixture(scope="module")
def cohort():
    rng = np.random.default_rng(11)
    n = 150
    G = rng.binomial(2, rng.uniform(0.05, 0.5, 600), size=(n, 600)).astype(np.int8)
    spec = bigmm.exact_spectrum(bigmm.grm(G, bigmm.standardization(bigmm.variant_stats(G))))
    Z = np.column_stack([np.ones(n), rng.normal(size=n)])
    g = spec.U @ (np.sqrt(spec.s) * rng.normal(size=spec.k))
    y = 3.0 + 0.5 * Z[:, 1] + 0.8 * g + rng.normal(size=n)
    return spec, Z, y


# 1e-10 relative: the identity is exact; both sides are O(n³) float64 solves of well-conditioned
# (h² < 1: eigenvalues of V ≥ 1 − h²) systems, ~1e-13 apart in practice
@pytest.mark.parametrize("k", [None, 20])
@pytest.mark.parametrize("h2", [0.05, 0.5, 0.9])
def test_identity_equals_explicit_leave_one_out(cohort, k, h2):
    spec, Z, y = cohort
    sp = spec if k is None else spec.top(k)  # k: a reduced spectrum, the tail as one eigenvalue
    pred, gen = loo_spectral(sp, y, Z, h2)
    ref_pred, ref_gen = explicit_loo(model_K(sp), y, Z, h2)
    scale = np.std(y)
    np.testing.assert_allclose(pred, ref_pred, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(gen, ref_gen, rtol=0, atol=1e-10 * scale)
    # not the in-sample BLUP: held out, each sample's own value does not enter its prediction
    assert np.max(np.abs(pred - y)) > 0.1 * scale


@pytest.mark.parametrize("missing", ["indicator", "subset"])
def test_leave_one_out_of_a_fit_with_missing_values(cohort, missing):
    """At the REML estimates, on each phenotype's observed samples; y in large units with an
    offset (the fit runs on a unit scale: the predictions are scaled back)."""
    spec, Z, y = cohort
    rng = np.random.default_rng(3)
    Y = np.column_stack([1e4 * y + 5e5, y + rng.normal(size=y.size)])
    Y[rng.choice(y.size, 12, replace=False), 0] = np.nan
    fit = bigmm.fit_reml(spec, Y, Z, missing=missing)
    assert fit.fits[0].missing_method == ("indicator" if missing == "indicator" else "subset_spectrum")
    loo = leave_one_out(spec, None, fit)
    K = model_K(spec)
    for j in range(2):
        o = ~np.isnan(Y[:, j])
        ref_pred, ref_gen = explicit_loo(K[np.ix_(o, o)], Y[o, j], Z[o], fit.fits[j].h2)
        scale = np.std(Y[o, j])
        np.testing.assert_allclose(loo.predictions[o, j], ref_pred, rtol=0, atol=1e-10 * scale)
        np.testing.assert_allclose(loo.genetic_values[o, j], ref_gen, rtol=0, atol=1e-10 * scale)
        np.testing.assert_allclose(loo.y[o, j], Y[o, j], rtol=1e-13)
        assert np.isnan(loo.predictions[~o, j]).all()
        acc = loo.accuracy()[fit.fits[j].name]
        adj = Y[o, j] - (ref_pred - ref_gen)
        assert acc["n"] == o.sum()
        assert acc["loo"] == pytest.approx(np.corrcoef(ref_pred, Y[o, j])[0, 1], abs=1e-9)
        assert acc["loo_genetic"] == pytest.approx(np.corrcoef(ref_gen, adj)[0, 1], abs=1e-9)
        assert acc["gv"] == pytest.approx(acc["loo_genetic"] / np.sqrt(fit.fits[j].h2), abs=1e-9)


def test_loo_accuracy_leaves_out_missing():
    y = np.array([1.0, 2.0, np.nan, 4.0, 3.0])
    p = np.array([1.5, 1.0, 2.0, 3.0, 3.5])
    out = loo_accuracy(y, p, p - 1.0, 0.25)
    ok = ~np.isnan(y)
    assert out["n"] == 4
    assert out["loo"] == pytest.approx(np.corrcoef(p[ok], y[ok])[0, 1])
    assert out["gv"] == pytest.approx(out["loo_genetic"] / 0.5)


def test_leave_one_out_repr_is_short(cohort):
    """repr and the notebook table summarise per phenotype (samples predicted, h², accuracies)
    like the other result objects; before, the dataclass repr printed every array."""
    spec, Z, y = cohort
    Y = np.column_stack([y, y[::-1]])
    Y[:7, 1] = np.nan
    fit = bigmm.fit_reml(spec, Y, Z, phenotype_names=["a", "b"])
    loo = leave_one_out(spec, None, fit)
    text = repr(loo)
    acc = loo.accuracy()
    assert text.splitlines()[0] == "LeaveOneOut(2 phenotypes x 150 samples)"
    assert len(text.splitlines()) == 3 and len(text) < 600 and "array" not in text
    assert f"b: 143 predicted at h2={fit.fits[1].h2:.4f}, r(y_hat, y)={acc['b']['loo']:.4f}" in text
    html = loo._repr_html_()
    assert html.count("<tr>") == 3 and "array" not in html
