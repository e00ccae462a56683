"""The matrix-free path for several variance components: the operator applying every K_j in one
pass (bigmm.ComponentsOperator) and the AI-REML fit by conjugate gradients
(bigmm.fit_components_matrix_free), checked against dense NumPy references written here and
against the exact dense fit (bigmm.fit_components)."""

import json

import numpy as np
import pytest
import zarr
from conftest import local_cluster, random_genotypes

import bigmm
from bigmm.errors import InputError


def _standardized(G, center, scale):
    """X written independently of bigmm: (g − centre) · scale, missing calls 0, dropped variants 0."""
    X = (G.astype(np.float64) - center) * scale
    X[G < 0] = 0.0
    return X


def _cohort(rng, n=60, p=130):
    G = random_genotypes(rng, n, p, missing=0.05)
    G[:, 7] = 1  # monomorphic: dropped by the standardization
    G[:, 40] = -1  # all missing: dropped
    std = bigmm.standardization(bigmm.variant_stats(G))
    assert not std.keep[7] and not std.keep[40]
    # three components, variants interleaved across chunks; 10 variants in none
    comp = np.arange(p) % 3
    comp[rng.choice(p, 10, replace=False)] = -1
    return G, std, comp


def _dense_ks(G, std, comp, rows=None):
    X = _standardized(G, std.center, std.scale)
    X[:, ~std.keep] = 0.0
    if rows is not None:
        X = X[rows]
    Ks, pj = [], []
    for j in range(comp.max() + 1):
        S = (comp == j) & std.keep
        pj.append(int(S.sum()))
        Ks.append(X[:, S] @ X[:, S].T / S.sum())
    return np.stack(Ks), np.array(pj)


def _check_operator(G, std, comp, rng, rows=None, **kw):
    Kref, pj = _dense_ks(G, std, comp, rows)
    op = bigmm.ComponentsOperator(G, std, comp, rows=rows, min_variants=1, **kw)
    assert op.m == 3 and op.n_variants.tolist() == pj.tolist()
    M = rng.normal(size=(op.n, 5))
    KM, diag = op.apply(M, want_diag=True)
    # float64 products of O(1) entries summed over ~100 variants: round-off ~1e-13
    np.testing.assert_allclose(KM, Kref @ M, rtol=0, atol=1e-11)
    np.testing.assert_allclose(diag, np.stack([np.diag(K) for K in Kref]), rtol=0, atol=1e-11)
    return op, Kref, pj, M, KM


def test_components_operator_equals_dense_grms_local_threads(rng):
    G, std, comp = _cohort(rng)
    _check_operator(G, std, comp, rng)
    rows = np.sort(rng.choice(G.shape[0], 41, replace=False))
    op, Kref, pj, M, KM = _check_operator(G, std, comp, rng, rows=rows)
    # restrict composes with rows
    sub = np.arange(0, 41, 2)
    KM2, _ = op.restrict(sub).apply(M[sub])
    np.testing.assert_allclose(KM2, Kref[:, sub][:, :, sub] @ M[sub], rtol=0, atol=1e-11)
    assert op.passes == 1


def test_components_operator_weighted_sum_is_the_grm_of_assigned_variants(rng):
    """Σ_j p_j K_j / Σ p_j = K over the assigned variants, the GrmOperator of those variants."""
    import dataclasses

    G, std, comp = _cohort(rng)
    op = bigmm.ComponentsOperator(G, std, comp, min_variants=1)
    M = rng.normal(size=(G.shape[0], 4))
    KM, _ = op.apply(M)
    assigned = std.keep & (comp >= 0)
    std_a = dataclasses.replace(std, keep=assigned, scale=np.where(assigned, std.scale, 0.0))
    grm = bigmm.GrmOperator(G, std_a)
    assert grm.p == op.p
    ref, _ = grm.apply(M)
    w = op.n_variants / op.n_variants.sum()
    np.testing.assert_allclose(np.tensordot(w, KM, axes=1), ref, rtol=0, atol=1e-11)


def test_components_operator_on_a_zarr_store_and_a_local_cluster(rng, tmp_path):
    from distributed import Client

    G, std, comp = _cohort(rng)
    Gz = zarr.create_array(str(tmp_path / "g.zarr"), shape=G.shape, chunks=(G.shape[0], 32), dtype="i1")
    Gz[:] = G
    rows = np.sort(rng.choice(G.shape[0], 50, replace=False))
    with local_cluster() as cluster, Client(cluster):
        op = bigmm.ComponentsOperator(Gz, std, comp, rows=rows, min_variants=1, n_tasks=3)
        assert op.chunk_width == 32 and len(op.plan(5).groups) == 3
        M = rng.normal(size=(50, 5))
        KM, diag = op.apply(M, want_diag=True)
    Kref, _ = _dense_ks(G, std, comp, rows)
    np.testing.assert_allclose(KM, Kref @ M, rtol=0, atol=1e-11)
    np.testing.assert_allclose(diag, np.stack([np.diag(K) for K in Kref]), rtol=0, atol=1e-11)


def test_components_operator_memory_counts_the_m_output_blocks(rng):
    from bigmm.passes import task_bytes

    G, std, comp = _cohort(rng)
    op = bigmm.ComponentsOperator(G, std, comp, min_variants=1)
    plan = op.plan(10)
    assert plan.task_bytes == task_bytes(op.n, 10, plan.chunk_width, plan.sub_width, 8, out_blocks=3)
    # a limit that fits one GRM's task but not three output blocks is refused before the pass
    one = task_bytes(op.n, 10, plan.chunk_width, 1, 8)
    bigmm.GrmOperator(G, std, memory=one).plan(10)  # fits one output block
    with pytest.raises(InputError, match="memory limit"):
        bigmm.ComponentsOperator(G, std, comp, min_variants=1, memory=one).plan(10)


# --------------------------------------------------------------------------------------
# the fit
# --------------------------------------------------------------------------------------

def _problem(seed=3, n=120, m=3, p_each=200):
    """m GRMs of independent normal 'genotypes', two phenotypes (the second with 20 missing
    values: two missing-value patterns) and a covariate; the last component has no effect."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, m * p_each))
    Ks = [X[:, p_each * j:p_each * (j + 1)] @ X[:, p_each * j:p_each * (j + 1)].T / p_each for j in range(m)]
    sd = np.sqrt(np.r_[0.4, 0.2, np.zeros(m - 2)] / p_each) if m >= 2 else np.sqrt([0.5 / p_each])
    b = np.concatenate([rng.normal(0, s, p_each) for s in sd])
    Z = np.column_stack([np.ones(n), rng.normal(size=n)])
    Y = np.column_stack([X @ b + rng.normal(0, np.sqrt(0.4), n) + Z[:, 1], X @ b[::-1] + rng.normal(size=n)])
    Y[rng.choice(n, 20, replace=False), 1] = np.nan
    return Ks, Y, Z


def _same_fit(ex, mf, rtol):
    for fe, fm in zip(ex.fits, mf.fits):
        assert fm.converged and fm.n == fe.n
        for ce, cm in zip(fe.components, fm.components):
            assert cm.boundary == ce.boundary
            for k in ("sigma2", "h2", "sigma2_se", "h2_se", "share", "pve"):
                np.testing.assert_allclose(getattr(cm, k), getattr(ce, k), rtol=rtol, atol=rtol * 1e-2,
                                           err_msg=f"{fe.name} {ce.name} {k}")
        for k in ("h2", "h2_se", "sigma2_e", "sigma2_e_se", "sigma2_g", "pve"):
            np.testing.assert_allclose(getattr(fm, k), getattr(fe, k), rtol=rtol, err_msg=f"{fe.name} {k}")
        for a, b in zip(fe.fixed_effects, fm.fixed_effects):
            np.testing.assert_allclose([b.estimate, b.se], [a.estimate, a.se], rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.parametrize("m, seed", [(2, 3), (3, 5)])  # seeds where the constraint holds a component
def test_exhausted_spaces_give_the_exact_ai_reml_fit(m, seed):
    """With exact traces (probes = scaled unit vectors) and CG solved to 1e-12, the score is the
    exact REML score, so the fixed point is fit_components' maximum. Tolerance 1e-6: both fits stop
    at |Δθ| ~ 1e-10 Vp, and the SEs come from AI matrices at θ's that differ by that (the
    matrix-free AI is lagged one iteration): agreement is ~1e-9 in practice.

    The log det solves then run Lanczos to the end of each unit vector's Krylov space: the Gauss
    rule is exact, Σ_i n e_iᵀ log(I + A) e_i / n = tr log(I + A), so ℓ_R and the LRT of all
    components equal the exact path's (ℓ moves by O(|Δθ|²) between the two stopping points: 1e-6
    is generous; ~1e-13 in practice)."""
    Ks, Y, Z = _problem(m=m, seed=seed)
    ex = bigmm.fit_components(Ks, Y, Z, tol=1e-12, tol_logl=1e-12, lrt=False, ml=False)
    mf = bigmm.fit_components_matrix_free(bigmm.DenseComponentsOperator(Ks), Y, Z, n_probes="exact", tol=1e-10,
                                          cg_tol=1e-12, slq_tol=1e-12, ml=False, lrt=False)
    _same_fit(ex, mf, 1e-6)
    assert mf.reml_method == "matrix_free_ai_reml"
    for fe, fm in zip(ex.fits, mf.fits):
        np.testing.assert_allclose([fm.logl_reml, fm.lrt_stat, fm.lrt_pvalue, fm.logl_reml_h2_0],
                                   [fe.logl_reml, fe.lrt_stat, fe.lrt_pvalue, fe.logl_reml_h2_0], rtol=1e-6, atol=1e-6)
        assert np.isnan(fm.logl_ml) and np.isnan(fm.components[0].lrt_stat)  # not asked for
    assert np.isnan(mf.fits[0].components[0].h2_se_mc)  # no Monte Carlo error with exact traces
    assert np.isnan(mf.fits[0].logl_reml_se_mc)
    # the constraint holds a component at 0 in both fits
    assert any(c.boundary for f in mf.fits for c in f.components)


def test_exhausted_spaces_unconstrained():
    Ks, Y, Z = _problem(m=2, seed=1)  # the constrained fit holds pheno2's K2 at 0
    ex = bigmm.fit_components(Ks, Y, Z, constrain=False, tol=1e-12, tol_logl=1e-12, lrt=False, ml=False)
    mf = bigmm.fit_components_matrix_free(bigmm.DenseComponentsOperator(Ks), Y, Z, n_probes="exact", tol=1e-10,
                                          cg_tol=1e-12, constrain=False, ml=False, lrt=False)
    _same_fit(ex, mf, 1e-6)
    assert mf.fits[1].components[1].sigma2 < 0


def test_exhausted_spaces_give_the_exact_ml_fit_and_component_lrts():
    """The ML fit and the fits without each component run the same CG AI iteration (ML score:
    tr(V⁻¹K_j) for tr(PK_j)) and their log dets the same Lanczos quadrature: with exhausted spaces
    logl_ml, h2_ml, each logl_reml_without, lrt_stat and p equal fit_components' (1e-6 as above;
    a looser CG tolerance than above, 1e-9, moves ℓ by ~1e-10). A seed where the constraint holds
    pheno1's K1 at 0 (its LRT is 0 by the rule, without a refit) and pheno2 (20 missing) has none."""
    Ks, Y, Z = _problem(m=2, seed=4, n=80)
    ex = bigmm.fit_components(Ks, Y, Z, tol=1e-12, tol_logl=1e-12)
    mf = bigmm.fit_components_matrix_free(bigmm.DenseComponentsOperator(Ks), Y, Z, n_probes="exact", tol=1e-8,
                                          cg_tol=1e-9, slq_tol=1e-9)
    assert [[c.boundary for c in f.components] for f in mf.fits] == [[True, False], [False, False]]
    for fe, fm in zip(ex.fits, mf.fits):
        assert fm.converged
        keys = ("logl_reml", "logl_ml", "h2_ml", "lrt_stat", "lrt_pvalue")
        np.testing.assert_allclose([getattr(fm, k) for k in keys], [getattr(fe, k) for k in keys], rtol=1e-6,
                                   atol=1e-6, err_msg=fe.name)
        for ce, cm in zip(fe.components, fm.components):
            keys = ("lrt_stat", "lrt_pvalue", "logl_reml_without")
            np.testing.assert_allclose([getattr(cm, k) for k in keys], [getattr(ce, k) for k in keys], rtol=1e-6,
                                       atol=1e-6, err_msg=f"{fe.name} {ce.name}")
    assert mf.notes["passes_logl"] > 0 and mf.fits[0].passes == mf.notes["passes"]


def _dense_reml_score(Ks, y, Z, theta):
    """The REML score ½[yᵀPK_kPy − tr(PK_k)] for k = 1..m and K_{m+1} = I,
    P = V⁻¹ − V⁻¹Z(ZᵀV⁻¹Z)⁻¹ZᵀV⁻¹, by dense NumPy, written independently of bigmm."""
    n = Z.shape[0]
    Vi = np.linalg.inv(sum(t * K for t, K in zip(theta[:-1], Ks)) + theta[-1] * np.eye(n))
    ViZ = Vi @ Z
    P = Vi - ViZ @ np.linalg.solve(Z.T @ ViZ, ViZ.T)
    Py = P @ y
    return np.array([0.5 * (Py @ K @ Py - np.vdot(P, K)) for K in list(Ks) + [np.eye(n)]])


@pytest.mark.parametrize("m, seed, ph", [(2, 2, 0), (3, 5, 1)])
def test_exhausted_spaces_reach_the_maximum_on_the_residual_boundary(m, seed, ph):
    """Seeds (n = 80) where the REML maximum lies on the boundary σ²_e = 0 (V = Σ_j σ²_j K_j stays
    positive definite: 200 variants per component), the second (pheno2, 20 missing) with K1 held
    at 0 as well. The matrix-free fit must stop there, not where halving σ²_e towards 0 (with every
    other parameter cut by the same fraction) stalls: that stall reported convergence 0.058 and
    2.47 below the maximum in ℓ_R. Reference: ℓ_R over σ²_j ≥ 10⁻⁹ (V stays invertible) at
    σ²_e = 0 by L-BFGS-B with the dense score, written here; at its optimum the score of every
    σ²_j off its bound is 0, that of a σ²_j at its bound and that of σ²_e negative (the
    Karush–Kuhn–Tucker conditions of the boundary maximum). Tolerance 1e-6: the fit stops at
    |Δθ| < 1e-8 Vp with σ²_e ~ 1e-8 Vp (ℓ_R moves by |s_e| σ²_e ~ 1e-8), the reference at a
    projected gradient below 1e-9 with a σ²_j at its bound off 0 by 1e-9: θ and ℓ_R agree to
    ~1e-7."""
    from scipy.optimize import minimize

    Ks, Y, Z = _problem(m=m, seed=seed, n=80)
    y = Y[:, ph]
    # σ²_e halves at each iteration: ~25 iterations from ~0.1 Vp to below tol · Vp = 1e-8 Vp
    mf = bigmm.fit_components_matrix_free(bigmm.DenseComponentsOperator(Ks), y, Z, n_probes="exact", tol=1e-8,
                                          cg_tol=1e-10, slq_tol=1e-10, ml=False, lrt=False)
    f = mf.fits[0]
    obs = ~np.isnan(y)
    Ko, yo, Zo = [K[np.ix_(obs, obs)] for K in Ks], y[obs], Z[obs]

    def neg(g):
        th = np.r_[g, 0.0]
        return -_dense_logl_reml(Ko, yo, Zo, th)[0], -_dense_reml_score(Ko, yo, Zo, th)[:-1]

    opt = minimize(neg, np.full(m, np.var(yo) / m), jac=True, method="L-BFGS-B", bounds=[(1e-9, None)] * m,
                   options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 1000})
    ref = np.r_[opt.x, 0.0]
    score = _dense_reml_score(Ko, yo, Zo, ref)
    off = opt.x > 1e-8
    assert np.max(np.abs(score[:-1][off])) < 1e-6 and np.all(score[:-1][~off] < 0) and score[-1] < -0.1
    assert f.converged
    np.testing.assert_allclose([c.sigma2 for c in f.components] + [f.sigma2_e], ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(f.logl_reml, -opt.fun, rtol=0, atol=1e-6)
    assert [c.boundary for c in f.components] == list(~off)


def test_an_unconverged_fit_gets_its_reml_logl_and_no_refits():
    """A REML fit stopped by max_iter gets ℓ_R at its last θ (the dense value there, within 4 MC SDs)
    and the LRT of all, but no ML fit and no fits without each component: NaN, not tests of a
    point that is not the maximum."""
    Ks, Y, Z = _problem(m=2, n=100)
    res = bigmm.fit_components_matrix_free(bigmm.DenseComponentsOperator(Ks), Y[:, 0], Z, n_probes=8, max_iter=1)
    f = res.fits[0]
    assert not f.converged and res.notes["not_converged"] == ["pheno1"]
    theta = np.r_[[c.sigma2 for c in f.components], f.sigma2_e]
    ll, _ = _dense_logl_reml(Ks, Y[:, 0], Z, theta)
    assert abs(f.logl_reml - ll) < 4 * f.logl_reml_se_mc
    assert np.isfinite(f.lrt_stat) and np.isnan(f.logl_ml) and np.isnan(f.h2_ml)
    assert all(np.isnan(c.lrt_stat) and np.isnan(c.logl_reml_without) for c in f.components if not c.boundary)


def test_one_component_equals_the_single_component_reml():
    """m = 1 with exact traces: the REML maximum of bigmm.fit_reml on the dense K (the spectral
    path) and of fit_components."""
    Ks, Y, Z = _problem(m=1)
    y = Y[:, 0]
    mf = bigmm.fit_components_matrix_free(bigmm.DenseComponentsOperator(Ks[:1]), y, Z, n_probes="exact",
                                          tol=1e-10, cg_tol=1e-12, slq_tol=1e-12, ml=False)
    ex = bigmm.fit_components(Ks[:1], y, Z, tol=1e-12, tol_logl=1e-12, ml=False)
    _same_fit(ex, mf, 1e-6)
    # one component: its LRT is the LRT of all, against the model without any K (no refit)
    fe, fm = ex.fits[0], mf.fits[0]
    np.testing.assert_allclose([fm.components[0].lrt_stat, fm.components[0].logl_reml_without, fm.lrt_stat],
                               [fe.components[0].lrt_stat, fe.components[0].logl_reml_without, fe.lrt_stat], rtol=1e-6)
    spec = bigmm.fit_reml(bigmm.exact_spectrum(Ks[0]), y, Z)
    # fit_reml maximises over h² by Brent's method to ~1e-8
    np.testing.assert_allclose(mf.fits[0].h2, spec.fits[0].h2, atol=1e-6)


def test_store_operator_gives_the_dense_operator_fit(rng):
    """The ComponentsOperator over genotypes and the DenseComponentsOperator over the same K_j give
    the same fit: the products differ by round-off (~1e-14) and CG runs the same steps."""
    G = random_genotypes(rng, 90, 400, missing=0.02)
    std = bigmm.standardization(bigmm.variant_stats(G))
    comp = np.repeat([0, 1], 200)
    Kref, pj = _dense_ks(G, std, comp)
    X = _standardized(G, std.center, std.scale)
    y = X[:, :200] @ rng.normal(0, 0.05, 200) + rng.normal(size=90)
    op = bigmm.ComponentsOperator(G, std, comp, min_variants=1)
    a = bigmm.fit_components_matrix_free(op, y, n_probes=8, seed=1, ml=False, lrt=False)
    b = bigmm.fit_components_matrix_free(bigmm.DenseComponentsOperator(Kref, n_variants=pj), y, n_probes=8, seed=1,
                                         ml=False, lrt=False)
    fa, fb = a.fits[0], b.fits[0]
    assert fa.passes == fb.passes and fa.iterations == fb.iterations
    for ca, cb in zip(fa.components, fb.components):
        np.testing.assert_allclose([ca.sigma2, ca.h2, ca.h2_se, ca.h2_se_mc], [cb.sigma2, cb.h2, cb.h2_se, cb.h2_se_mc],
                                   rtol=1e-8, atol=1e-10)
        assert ca.n_variants == cb.n_variants


class _Interrupting:
    """An operator that stops (raises) after ``stop`` passes."""

    def __init__(self, op, stop):
        self.op, self.stop, self.n, self.m, self.names, self.n_variants = op, stop, op.n, op.m, op.names, op.n_variants
        self.calls = 0

    def apply(self, M, want_diag=False, desc=""):
        self.calls += 1
        if self.calls > self.stop:
            raise KeyboardInterrupt("stopped")
        return self.op.apply(M, want_diag=want_diag, desc=desc)


@pytest.mark.parametrize("stop", [1, "log det", "old state"])
def test_resume_after_any_pass_equals_an_uninterrupted_fit(tmp_path, stop):
    """Stopped after pass 1, in the AI iterations, or in the log-likelihood solves (the ML and
    reduced fits and the Lanczos log dets, the last 3 passes), the resumed fit equals the
    uninterrupted one; a state without the log-likelihood part (as bigmm wrote before it had
    one) resumes its AI iterations and does the log-likelihoods afresh."""
    Ks, Y, Z = _problem(m=2, n=100)
    op = bigmm.DenseComponentsOperator(Ks)
    lines = []
    full = bigmm.fit_components_matrix_free(op, Y, Z, n_probes=6, seed=2, progress=lambda p, msg: lines.append((p, msg)))
    # one progress line per pass, numbered by the passes made
    assert [p for p, _ in lines] == list(range(1, full.fits[0].passes + 1))
    assert any("AI iteration" in msg and "max relative residual" in msg for _, msg in lines)
    assert "log det V" in lines[-1][1] and full.notes["passes_logl"] >= 3
    stop = {"log det": full.fits[0].passes - 3, "old state": 4}.get(stop, stop)
    path = tmp_path / "state.npz"
    with pytest.raises(KeyboardInterrupt):
        bigmm.fit_components_matrix_free(_Interrupting(op, stop), Y, Z, n_probes=6, seed=2, state=path)
    assert path.exists()
    if stop == 4:  # the state as an earlier bigmm wrote it: no log-likelihood fingerprint or counter
        with np.load(path) as zf:
            arrays = {k: zf[k] for k in zf.files if k not in ("logl_fp", "nfits", "passes_logl")}
        np.savez(path, **arrays)
    again = _Interrupting(op, 10 ** 6)
    res = bigmm.fit_components_matrix_free(again, Y, Z, n_probes=6, seed=2, state=path)
    assert res.notes["resumed_after_pass"] == stop
    assert again.calls == full.fits[0].passes - stop
    # == on every float (NaN fields included: compared through their JSON text)
    assert json.dumps([f.to_dict() for f in res.fits]) == json.dumps([f.to_dict() for f in full.fits])
    assert np.isfinite([f.logl_reml for f in res.fits]).all()
    # other log-likelihood settings after the REML fits' solves were dropped: a fresh start
    if stop == full.fits[0].passes - 3:
        other = bigmm.fit_components_matrix_free(op, Y, Z, n_probes=6, seed=2, state=path, ml=False)
        assert np.isnan(other.fits[0].logl_ml) and "resumed_after_pass" not in other.notes
        np.testing.assert_allclose(other.fits[0].logl_reml, full.fits[0].logl_reml, rtol=1e-12)
    # a state of other inputs is refused
    Y2 = Y.copy()
    Y2[0, 0] += 1.0
    with pytest.raises(InputError, match="other inputs"):
        bigmm.fit_components_matrix_free(op, Y2, Z, n_probes=6, seed=2, state=path)
    with pytest.raises(InputError, match="other inputs"):
        bigmm.fit_components_matrix_free(op, Y, Z, n_probes=6, seed=3, state=path)


class _Limited:
    """A dense operator whose memory plan refuses passes of more than ``limit`` vectors."""

    def __init__(self, op, limit):
        self.op, self.limit, self.n, self.m, self.names, self.n_variants = op, limit, op.n, op.m, op.names, op.n_variants
        self.widest = 0

    def plan(self, n_cols):
        if n_cols > self.limit:
            raise InputError(f"memory limit: {n_cols} vectors")

    def apply(self, M, want_diag=False, desc=""):
        self.plan(M.shape[1])
        self.widest = max(self.widest, M.shape[1])
        return self.op.apply(M, want_diag=want_diag, desc=desc)


def test_refits_take_turns_when_a_pass_of_all_would_not_fit_the_memory_plan():
    """The ML fit and the two fits without a component of one phenotype run at once when the
    operator's plan allows a pass that wide, else in turns within its limit: the same fits (each
    column's CG steps are the same; the block's products differ by round-off), more passes."""
    Ks, Y, Z = _problem(m=2, n=100)
    y = Y[:, 0]
    op = bigmm.DenseComponentsOperator(Ks)
    wide = bigmm.fit_components_matrix_free(op, y, Z, n_probes=6, seed=2)
    per = Z.shape[1] + 2 + 2 + 6  # a phenotype's AI solves: Z, y, the probes, the m + 1 AI vectors
    narrow_op = _Limited(op, 2 * per)  # the REML fit's log det and one refit at a time
    narrow = bigmm.fit_components_matrix_free(narrow_op, y, Z, n_probes=6, seed=2)
    assert narrow_op.widest <= 2 * per
    fw, fn = wide.fits[0], narrow.fits[0]
    assert fn.passes > fw.passes
    np.testing.assert_allclose([fn.logl_reml, fn.logl_ml, fn.lrt_stat] + [c.lrt_stat for c in fn.components],
                               [fw.logl_reml, fw.logl_ml, fw.lrt_stat] + [c.lrt_stat for c in fw.components],
                               rtol=1e-8)


def test_bad_input_is_refused():
    Ks, Y, Z = _problem(m=2, n=60)
    op = bigmm.DenseComponentsOperator(Ks)
    fit = bigmm.fit_components_matrix_free
    with pytest.raises(InputError, match="n = 60 rows"):
        fit(op, Y[:50], n_probes=4)
    with pytest.raises(InputError, match="infinite"):
        fit(op, np.where(np.arange(60)[:, None] == 3, np.inf, Y), n_probes=4)
    with pytest.raises(InputError, match=r"covariates Z must be \(n, c\)"):
        fit(op, Y, Z[:59], n_probes=4)
    with pytest.raises(InputError, match="n_probes"):
        fit(op, Y, n_probes=1)
    with pytest.raises(InputError, match="cg_tol"):
        fit(op, Y, n_probes=4, cg_tol=0.0)
    with pytest.raises(InputError, match="max_iter"):
        fit(op, Y, n_probes=4, max_iter=0)
    with pytest.raises(InputError, match="ComponentsOperator"):
        fit(bigmm.DenseOperator(Ks[0]), Y, n_probes=4)
    with pytest.raises(InputError, match="expected \\(60, 60\\)"):
        bigmm.DenseComponentsOperator([Ks[0], Ks[1][:50, :50]])
    with pytest.raises(InputError, match="constant"):
        fit(op, np.ones(60), n_probes=4)


def _dense_logl_reml(Ks, y, Z, theta):
    """ℓ_R(θ) = −½[(n − c) log 2π + log det V + log det ZᵀV⁻¹Z + yᵀPy] (Harville's, bigmm's
    convention) by dense Cholesky-free NumPy (slogdet and solves), written independently of bigmm."""
    n, c = Z.shape
    V = sum(t * K for t, K in zip(theta[:-1], Ks)) + theta[-1] * np.eye(n)
    ld = np.linalg.slogdet(V)[1]
    ViZ, Viy = np.linalg.solve(V, Z), np.linalg.solve(V, y)
    A = Z.T @ ViZ
    yPy = y @ Viy - (Z.T @ Viy) @ np.linalg.solve(A, Z.T @ Viy)
    return -0.5 * ((n - c) * np.log(2 * np.pi) + ld + np.linalg.slogdet(A)[1] + yPy), ld


def test_simulation_recovers_the_truth_and_its_monte_carlo_error():
    """n = 2,000, two components with h² = 0.35 and 0.15, N = 10 probes, four probe seeds.

    Checks: every ĥ²_j within 3 combined SEs (statistical and Monte Carlo) of the truth, and the
    reported Monte Carlo SD within a factor 2.5 of the SD of ĥ²_j over the probe seeds (pooled
    over both components: 6 degrees of freedom, whose 99% range of SD / σ is 0.35–1.75). It
    detects a Monte Carlo SD wrong by a factor of ~3 (a missing 1/N, a wrong AI scaling), not a
    miscalibration of 20%; that is for scripts/studies/mf_components_probes.py.

    The log-likelihood: at each fit's estimate θ̂ the stochastic Lanczos estimate of ℓ_R equals the
    dense ℓ_R(θ̂) within 4 of its reported Monte Carlo SDs (a 6e-5 chance each for a calibrated SD),
    and the RMS of the four z-scores lies in 0.2–2 (99.8% range of √(χ²₄/4): 0.19–1.95; it detects
    an SD off by a factor 2.5 either way); the LRT of all components is 2(ℓ_R − ℓ₀), ℓ₀ in closed form."""
    rng = np.random.default_rng(11)
    n, p_each, h2 = 2000, 600, np.array([0.35, 0.15])
    Ks, g = [], np.zeros(n)
    for j in range(2):
        X = rng.normal(size=(n, p_each))
        Ks.append(X @ X.T / p_each)
        g += X @ rng.normal(0, np.sqrt(h2[j] / p_each), p_each)
    y = g + rng.normal(0, np.sqrt(1 - h2.sum()), n)
    op = bigmm.DenseComponentsOperator(Ks)
    fits = [bigmm.fit_components_matrix_free(op, y, n_probes=10, seed=s, ml=False, lrt=False).fits[0]
            for s in range(4)]
    assert all(f.converged for f in fits)
    Z1 = np.ones((n, 1))
    z = []
    for f in fits:
        theta = np.r_[[c.sigma2 for c in f.components], f.sigma2_e]
        ll, _ = _dense_logl_reml(Ks, y, Z1, theta)
        assert f.logl_reml_se_mc > 0
        z.append((f.logl_reml - ll) / f.logl_reml_se_mc)
        np.testing.assert_allclose(f.lrt_stat, 2 * (f.logl_reml - f.logl_reml_h2_0), rtol=1e-12)
        np.testing.assert_allclose(f.lrt_stat_se_mc, 2 * f.logl_reml_se_mc, rtol=1e-12)
    z = np.array(z)
    assert np.all(np.abs(z) < 4) and 0.2 < np.sqrt(np.mean(z ** 2)) < 2, z
    est = np.array([[c.h2 for c in f.components] for f in fits])
    se = np.array([[c.h2_se for c in f.components] for f in fits]).mean(axis=0)
    mc = np.array([[c.h2_se_mc for c in f.components] for f in fits]).mean(axis=0)
    assert np.all(np.abs(est[0] - h2) < 3 * np.sqrt(se ** 2 + mc ** 2))
    sd = np.sqrt(np.mean(est.var(axis=0, ddof=1)))
    assert 1 / 2.5 < sd / np.sqrt(np.mean(mc ** 2)) < 2.5, (sd, mc)
    assert np.all(mc < se)  # the Monte Carlo error is below the statistical error even at N = 10


def test_trace_jackknife():
    """Without control variates the delete-one-probe jackknife of a mean is the sample covariance / N
    (an identity); with them the estimate is mean(t) − β mean(c), β the least-squares slope, and the
    jackknife refits β without each probe (checked against a direct loop)."""
    from bigmm.mf_components import _traces

    rng = np.random.default_rng(4)
    t = rng.normal(size=(3, 12))
    est, cov = _traces(t, None)
    np.testing.assert_allclose(est, t.mean(axis=1), rtol=1e-14)
    np.testing.assert_allclose(cov, np.cov(t) / 12, rtol=1e-12)
    c = rng.normal(size=(2, 12))
    t[:2] += 3 * c
    est, cov = _traces(t, c)

    def estimate(tt, cc):
        out = tt.mean(axis=1)
        for j in range(2):
            beta = (tt[j] - tt[j].mean()) @ cc[j] / (cc[j] @ cc[j])
            out[j] -= beta * cc[j].mean()
        return out

    np.testing.assert_allclose(est, estimate(t, c), rtol=1e-12)
    loo = np.array([estimate(np.delete(t, i, 1), np.delete(c, i, 1)) for i in range(12)])
    d = loo - loo.mean(axis=0)
    np.testing.assert_allclose(cov, 11 / 12 * d.T @ d, rtol=1e-10)
