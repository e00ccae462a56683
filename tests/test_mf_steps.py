"""The matrix-free REML solver's named pieces, each against an independent dense NumPy reference,
and the restore of a finished fit from its saved state (no operator, no pass).

Tolerances and why:
- Block Lanczos with full re-orthogonalisation on a 40 x 40 well-conditioned K: the recurrence
  identity QᵀKQ = T and the orthonormality of Q hold to float64 round-off times ‖K‖ (1e-12).
- Ritz values after 3 steps against the Rayleigh–Ritz values of K on an orthonormal basis of the
  power Krylov space [B, KB, K²B] (built by NumPy QR): the same subspace, so the same values up
  to the conditioning of the power basis (1e-8 relative).
- Once the Krylov space is exhausted (or a probe's Lanczos has run n steps) the Gauss rules are
  exact: quadratic forms and log det agree with dense solves / slogdet to 1e-9 relative (the
  probes keep only local re-orthogonalisation, which loses ~1e-12 per step on a 12 x 12 K).
- The restored result is the fit's own result: compared with == (NaN equal to NaN).
"""

import dataclasses
import math

import numpy as np
import pytest
from conftest import MemoryCheckpoint, random_genotypes
from reference import grm_reference, reml_reference

import bigmm
import bigmm.mf_solver as mf_solver
from bigmm.errors import InputError
from bigmm.lanczos import BlockLanczos, ProbeLanczos, rank_revealing_qr
from bigmm.mf_pattern import haseman_elston
from bigmm.mf_quadrature import BlockGaussRule, LogdetRule, schur
from bigmm.mfreml import blup_matrix_free, fit_matrix_free, restore_matrix_free


def spd(n, seed, floor=0.1):
    """A random symmetric positive definite matrix with eigenvalues in [floor, floor + 3]."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    return (Q * (floor + 3.0 * rng.random(n))) @ Q.T


def run_block(K, B, steps):
    """Block Lanczos of K from B for ``steps`` products (the caller applies K, as a pass would)."""
    bl = BlockLanczos(B)
    for _ in range(steps):
        if not bl.active:
            break
        bl.absorb(K @ bl.blocks[-1], scale=float(np.linalg.norm(K, 2)))
    return bl


# ------------------------------------------------------------------ the [Z, Y] block recurrence

def test_rank_revealing_qr_drops_dependent_columns():
    """W = [a, b, a + b]: rank 2, Q orthonormal, Q R = W. (Through the Gram matrix a zero singular
    value shows as ~1e-8 ‖W‖, the limit the docstring states: the threshold is above it.)"""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 30))
    W = np.column_stack([a, b, a + b])
    Q, R, smin = rank_revealing_qr(W, 1e-6 * np.linalg.norm(W))
    assert Q.shape == (30, 2)
    np.testing.assert_allclose(Q.T @ Q, np.eye(2), atol=1e-14)
    np.testing.assert_allclose(Q @ R, W, atol=1e-12 * np.abs(W).max())
    assert smin == pytest.approx(np.linalg.svd(W, compute_uv=False)[1], rel=1e-10)


def test_block_lanczos_identity_and_ritz_values_equal_dense_krylov():
    """QᵀKQ = T (the block tridiagonal of the recurrence), Q orthonormal, and T's eigenvalues are
    the Rayleigh–Ritz values of K on the Krylov space span[B, KB, K²B] built densely."""
    K = spd(40, 2)
    B = np.random.default_rng(3).normal(size=(40, 3))
    bl = run_block(K, B, 3)
    T, off = bl.tridiagonal()
    Q = np.hstack(bl.blocks[:3])
    assert Q.shape == (40, 9) and list(off) == [0, 3, 6, 9]
    np.testing.assert_allclose(Q.T @ Q, np.eye(9), rtol=0, atol=1e-12)
    np.testing.assert_allclose(Q.T @ K @ Q, T, rtol=0, atol=1e-12)
    np.testing.assert_allclose(bl.blocks[0] @ bl.R0, B, atol=1e-12 * np.abs(B).max())
    V, _ = np.linalg.qr(np.hstack([B, K @ B, K @ K @ B]))
    ritz = np.linalg.eigvalsh(V.T @ K @ V)
    np.testing.assert_allclose(np.linalg.eigvalsh(T), ritz, rtol=1e-8)


def test_block_gauss_rule_exact_once_krylov_space_exhausted():
    """n = 12, b = 3: four steps exhaust the Krylov space, and then R₀ᵀE₁ᵀ f(T) E₁R₀ equals
    Bᵀ(hK + (1 − h)I)⁻¹B from dense solves, with its two h-derivatives; the Schur complement
    gives yᵀPy = yᵀH⁻¹y − yᵀH⁻¹Z(ZᵀH⁻¹Z)⁻¹ZᵀH⁻¹y and log det ZᵀH⁻¹Z."""
    n = 12
    K = spd(n, 4, floor=0.0)
    rng = np.random.default_rng(5)
    Z = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = rng.normal(size=n)
    bl = run_block(K, np.column_stack([Z, y]), 10)
    assert not bl.active
    rule = BlockGaussRule(bl, c=2)
    for h in (0.0, 0.3, 0.9):
        H = h * K + (1 - h) * np.eye(n)
        Hi = np.linalg.inv(H)
        D = K - np.eye(n)  # dH/dh
        forms = rule.forms(np.array([h]), shared=False, cols=[0])
        for k, Fk in enumerate((Hi, -Hi @ D @ Hi, 2 * Hi @ D @ Hi @ D @ Hi)):
            A, b, s = forms[k]
            np.testing.assert_allclose(A[0], Z.T @ Fk @ Z, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(b[0], Z.T @ Fk @ y, rtol=1e-9, atol=1e-12)
            assert s[0] == pytest.approx(y @ Fk @ y, rel=1e-9)
        R, _, _, ld, _, _, u = schur(forms)
        A0 = Z.T @ Hi @ Z
        want = y @ Hi @ y - (Z.T @ Hi @ y) @ np.linalg.solve(A0, Z.T @ Hi @ y)
        assert R[0] == pytest.approx(want, rel=1e-9)
        assert ld[0] == pytest.approx(np.linalg.slogdet(A0)[1], rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(u[0], np.linalg.solve(A0, Z.T @ Hi @ y), rtol=1e-8)


# ------------------------------------------------------------------ probes: SLQ of log det H

def run_probes(K, w, U=None):
    """Every probe's Lanczos to its end on K (or on (I − UUᵀ)K(I − UUᵀ))."""
    pl = ProbeLanczos(w, n_perp=w.shape[0] - (0 if U is None else U.shape[1]))
    scale = float(np.linalg.norm(K, 2))
    first = True
    while pl.pactive.any():
        W = K @ pl.current()
        pl.absorb(W, np.einsum("ij,ij->j", W, W), U, scale, first)
        first = False
    return pl


@pytest.mark.parametrize("deflate", [0, 3])
def test_logdet_rule_equals_exact_logdet(deflate):
    """With the probes √n e_i (i = 1..n) projected off the k deflation vectors, the mean of the
    probes' Gauss rules is the trace over the complement of U exactly, so the log det rule (deflated
    part + control variate + probes) equals log det(hK + (1 − h)I) and its two h-derivatives
    tr(H⁻¹(K − I)), −tr((H⁻¹(K − I))²) from dense NumPy."""
    n = 12
    K = spd(n, 6, floor=0.05)
    lam, V = np.linalg.eigh(K)
    U = V[:, ::-1][:, :deflate] if deflate else None
    w = math.sqrt(n) * np.eye(n)
    if deflate:
        w = w - U @ (U.T @ w)
    pl = run_probes(K, w, U)
    nodes, weights = pl.gauss_rules()
    sd = lam[::-1][:deflate]
    rule = LogdetRule(sd, n - deflate, float(np.trace(K)), nodes, weights)
    h = np.array([0.0, 0.2, 0.7, 0.95])
    L, L1, L2 = rule.logdet(h)
    for i, hi in enumerate(h):
        H = hi * K + (1 - hi) * np.eye(n)
        G = np.linalg.solve(H, K - np.eye(n))
        assert L[i] == pytest.approx(np.linalg.slogdet(H)[1], rel=1e-9, abs=1e-10)
        assert L1[i] == pytest.approx(np.trace(G), rel=1e-9, abs=1e-10)
        assert L2[i] == pytest.approx(-np.trace(G @ G), rel=1e-9, abs=1e-10)


def test_haseman_elston_equals_dense_least_squares():
    """h2_he from the moments equals the least-squares fit of ỹỹᵀ by σ²_g PKP + σ²_e P."""
    rng = np.random.default_rng(8)
    n = 60
    K = grm_reference(random_genotypes(rng, n, 200, missing=0.0))
    Z = np.column_stack([np.ones(n), rng.normal(size=n)])
    P = np.eye(n) - Z @ np.linalg.solve(Z.T @ Z, Z.T)
    Yt = P @ rng.normal(size=(n, 2))
    B = np.hstack([Z, Yt])
    sg, se, h = haseman_elston(B.T @ K @ B, K @ Z, Z.T @ Z, np.sum(Yt * Yt, axis=0), float(np.trace(K)),
                               float(np.sum(K * K)), n)
    PKP = P @ K @ P
    A = np.array([[np.sum(PKP * PKP), np.trace(PKP)], [np.trace(PKP), np.trace(P)]])
    for j in range(2):
        want = np.linalg.solve(A, [Yt[:, j] @ K @ Yt[:, j], Yt[:, j] @ Yt[:, j]])
        np.testing.assert_allclose([sg[j], se[j]], want, rtol=1e-9)
        assert h[j] == pytest.approx(want[0] / want.sum(), rel=1e-9)


# ------------------------------------------------------------------ the solver's steps

class DenseOp:
    """K in memory; counts passes; ``fail`` makes any application raise."""

    def __init__(self, K, fail=False):
        self.K, self.fail, self.calls = K, fail, 0

    @property
    def n(self):
        return self.K.shape[0]

    def apply(self, M, want_diag=False):
        if self.fail:
            raise AssertionError("the operator was applied")
        self.calls += 1
        return self.K @ M, (np.diag(self.K).copy() if want_diag else None)


@pytest.fixture(scope="module")
def cohort():
    rng = np.random.default_rng(11)
    n = 200
    K = grm_reference(random_genotypes(rng, n, 500, missing=0.0))
    s, U = np.linalg.eigh(K)
    Y = 1.0 + (U * np.sqrt(0.5 * s + 0.5)) @ rng.normal(size=(n, 2))
    Y[:12, 1] = np.nan  # two missing-value patterns
    Z = np.column_stack([np.ones(n), rng.normal(size=n)])
    return K, Y, Z, (U[:, ::-1][:, :5], s[::-1][:5])


def test_check_inputs_groups_phenotypes_by_missing_pattern(cohort):
    """Two phenotypes with different missing samples make two patterns; the OLS residual Ỹ of
    each is orthogonal to Z on its observed samples and Y = Ỹ + Z·shift there."""
    K, Y, Z, _ = cohort
    prob = mf_solver.check_inputs(K.shape[0], Y, Z, phenotype_names=None, covariate_names=None, probes=4,
                                  max_steps=10, tol=1e-4, deflate=None, grid_size=11)
    assert [p[0] for p in prob.patterns] == [[0], [1]]
    for j, (cols, obs, Zo, Yr, shift) in enumerate(prob.patterns):
        assert obs.sum() == (~np.isnan(Y[:, j])).sum()
        np.testing.assert_allclose(Zo.T @ Yr, 0, atol=1e-10)
        np.testing.assert_allclose(Yr + Zo @ shift, Y[obs][:, cols] / prob.scales[cols], atol=1e-12)


def test_one_pass_applies_k_once_to_every_recurrence(cohort):
    """The first pass: one application of K to Σ_patterns (c + m + N + 1) columns (+ k for a
    pattern with missing samples and deflation), and every recurrence advanced by one step."""
    K, Y, Z, deflate = cohort
    prob = mf_solver.check_inputs(K.shape[0], Y, Z, phenotype_names=None, covariate_names=None, probes=4,
                                  max_steps=10, tol=1e-4, deflate=deflate, grid_size=11)
    groups = mf_solver.make_patterns(prob, 4, 0)
    op = DenseOp(K)
    run = mf_solver.SolverState(prob.m, step=1)
    width = mf_solver.one_pass(op, groups, run, K.shape[0])
    assert op.calls == 1 and run.passes == 1
    assert width == (2 + 1 + 4 + 1) + (2 + 1 + 4 + 1 + 5)
    for g in groups:
        assert len(g.block.A_list) == 1 and (g.probes.plen == 1).all()
    assert not run.finished(groups, max_steps=10)
    assert run.finished(groups, max_steps=1)


def test_state_layout_is_unchanged(cohort):
    """The saved state keeps the layout of STATE_VERSION 1 (old checkpoints resume): its
    metadata keys, and per pattern g{i}_ the arrays of the recurrences."""
    K, Y, Z, deflate = cohort
    ck = MemoryCheckpoint()
    fit_matrix_free(DenseOp(K), Y, Z, probes=4, seed=1, max_steps=3, deflate=deflate, checkpoint=ck)
    meta, arrays = ck.state["meta"], ck.state["arrays"]
    assert sorted(meta) == ["fingerprint", "groups", "probes", "seed", "step", "version"]
    assert meta["version"] == 1 and meta["step"] == 3
    assert [sorted(g) for g in meta["groups"]] == 2 * [sorted(
        ["sizes", "n_A", "n_B", "block_active", "scale", "trK", "sumK", "coupling", "KU2"])]
    per = ["basis", "T", "pq_prev", "pq_cur", "alpha", "beta", "plen", "pactive", "kq2", "he", "Ud", "sd",
           "ritz_theta", "ritz_dev"]
    want = ["prev_h", "prev_ll", "delta_h", "delta_ll", "streak"] + [f"g{i}_{k}" for i in (0, 1) for k in per]
    assert sorted(arrays) == sorted(want)


# ------------------------------------------------------------------ restore a finished fit

def same(a, b):
    """== field by field, NaN equal to NaN."""
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(same(getattr(a, f.name), getattr(b, f.name))
                                          for f in dataclasses.fields(a))
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("setting", ["converged", "max_steps", "deflated"])
def test_restore_equals_committed_fit_without_operator(cohort, setting, monkeypatch):
    """A finished fit rebuilt from its final saved state (restore_matrix_free) equals the fit: every
    field of every phenotype's fit with ==, the BLUP weights and ĝ, the likelihood profile and the
    quadratic forms. No pass and no Lanczos step: the solver's pass step is made to raise."""
    K, Y, Z, deflate = cohort
    kw = dict(probes=4, seed=3, tol=1e-4, phenotype_names=["a", "b"], covariate_names=["mu", "x"])
    kw.update({"max_steps": 3} if setting == "max_steps" else {})
    kw.update({"deflate": deflate} if setting == "deflated" else {})
    ck = MemoryCheckpoint()
    fit = fit_matrix_free(DenseOp(K), Y, Z, checkpoint=ck, **kw)
    assert fit.converged == (setting != "max_steps")

    def no_pass(*a, **k):
        raise AssertionError("a pass over X")

    monkeypatch.setattr(mf_solver, "one_pass", no_pass)
    monkeypatch.setattr(bigmm.mfreml, "one_pass", no_pass)
    back = restore_matrix_free(ck.load(), Y, Z, **kw)
    assert back.notes["restored_after_step"] == fit.lanczos_steps
    assert same(back.fits, fit.fits)
    for f in ("phenotype_names", "covariate_names", "n", "lanczos_steps", "passes_over_X", "converged",
              "delta_h2", "delta_logl", "probes", "seed", "tol", "max_steps", "deflation_rank", "scales",
              "unit_sigma2"):
        assert same(getattr(back, f), getattr(fit, f)), f
    np.testing.assert_array_equal(back.blup_weights(), fit.blup_weights())
    for name in ("a", "b"):
        p, q = back.loglik_profile([0.1, 0.5, 0.9], name), fit.loglik_profile([0.1, 0.5, 0.9], name)
        for k in p:
            np.testing.assert_array_equal(p[k], q[k])
        for x, y in zip(back.quadratic_forms(0.4, name), fit.quadratic_forms(0.4, name)):
            np.testing.assert_array_equal(x, y)
    g1, w1 = blup_matrix_free(DenseOp(K), back)
    g0, w0 = blup_matrix_free(DenseOp(K), fit)
    np.testing.assert_array_equal(g1, g0)
    # the solver's own path from the final state makes no pass either: the operator raises if applied
    again = fit_matrix_free(DenseOp(K, fail=True), Y, Z, checkpoint=ck, **kw)
    assert same(again.fits, fit.fits)


def test_restore_refuses_missing_foreign_or_unfinished_state(cohort):
    """No state, a state of other inputs, or the state of an unfinished fit: a clear InputError
    (an unfinished one is resumed by fit_matrix_free with its checkpoint)."""
    K, Y, Z, _ = cohort
    kw = dict(probes=4, seed=3, max_steps=3)
    ck = MemoryCheckpoint()
    fit_matrix_free(DenseOp(K), Y, Z, checkpoint=ck, **kw)
    with pytest.raises(InputError, match="no saved matrix-free REML state"):
        restore_matrix_free(None, Y, Z, **kw)
    with pytest.raises(InputError, match="of other inputs"):
        restore_matrix_free(ck.load(), Y, Z, **dict(kw, seed=4))
    with pytest.raises(InputError, match="after step 3 of a fit that had not finished"):
        restore_matrix_free(ck.load(), Y, Z, **dict(kw, max_steps=50))


def test_restore_from_run_layer_file(tmp_path, cohort):
    """Through the run layer's state file (reml_state.npz: JSON metadata in the .npz) the restore
    is still the fit, bit for bit."""
    from bigmm.pipeline.outputs import StepCheckpoint

    K, Y, Z, _ = cohort
    ck = StepCheckpoint(tmp_path / "reml_state.npz")
    fit = fit_matrix_free(DenseOp(K), Y, Z, probes=4, seed=9, checkpoint=ck)
    back = restore_matrix_free(ck.load(), Y, Z, probes=4, seed=9)
    assert same(back.fits, fit.fits)
    np.testing.assert_array_equal(back.blup_weights(), fit.blup_weights())


def test_exported_from_bigmm():
    """fit_matrix_free, blup_matrix_free and restore_matrix_free are importable from bigmm."""
    assert bigmm.fit_matrix_free is fit_matrix_free
    assert bigmm.blup_matrix_free is blup_matrix_free
    assert bigmm.restore_matrix_free is restore_matrix_free


def test_restored_fit_matches_dense_reml_when_exact():
    """Sanity of the whole chain on an exhausted problem: n = 40, rank-10 K, exact deflation by
    every eigenpair with λ > 0: the restored fit equals dense REML (h² to 1e-6, as test_mfreml)."""
    rng = np.random.default_rng(21)
    n = 40
    K = grm_reference(random_genotypes(rng, n, 10, missing=0.0))
    s, U = np.linalg.eigh(K)
    keep = s > 1e-10 * s.max()
    y = 1.0 + (U * np.sqrt(np.clip(0.5 * s + 0.5, 0, None))) @ rng.normal(size=n)
    kw = dict(probes=4, seed=1, deflate=(U[:, keep], s[keep]))
    ck = MemoryCheckpoint()
    fit_matrix_free(DenseOp(K), y, checkpoint=ck, **kw)
    back = restore_matrix_free(ck.load(), y, **kw).fits[0]
    assert back.h2 == pytest.approx(reml_reference(K, y)["h2"], abs=1e-6)
