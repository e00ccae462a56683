"""Bivariate REML of many pairs of one missing-value pattern at once (the matrix-free driver).

Pairs of phenotypes with the same missing values share their pattern's quadrature nodes, the
covariates' rows of the rule and the probes' log det; only the two phenotype rows of the rule
and the six parameters differ. :func:`fit_pairs_batched` runs what :func:`bigmm.bivariate._fit_from`
does for one pair (the AI-REML fit, the |r_g| = 1 fit at the boundary or for its LRT, the
r_g = 0 fit, the ML fit) for a stack of P pairs, with arrays of shape (P, ...) and the 2 x 2
algebra in closed form: the same iteration (AI step, the same step halving, the same stopping
rule, per pair), so the same estimates to the tolerance of the maximisation. A pair whose fit
does anything else (a start that is not a valid model, an iteration that stops without
converging, a singular AI matrix, a degenerate pair) is reported as not done, and the caller
fits it with :func:`bigmm.bivariate.fit_pair`.
"""

from __future__ import annotations

import numpy as np
from scipy.special import chdtrc

from .bivariate_likelihood import _KIND, _PATTERN, LOG2PI
from .bivariate_results import BivariateFit

#: pairs evaluated together: P = CHUNK_ELEMENTS / (20 M), so that their node products (P, M, 28) take ~90 MB
CHUNK_ELEMENTS = 1 << 23


class _Shared:
    """What the pairs of one pattern share: nodes λ (M,), the covariates' rows Gz (c, M) of the
    rule, n, c and ``logdet(h) -> (L, L', L'')`` (any shape of h), or ``logdet_rows(h, rows)`` where
    the rows of a stack have log dets of their own (the delete-one-probe fits of the jackknife)."""

    def __init__(self, nodes, Gz, n: int, c: int, logdet, logdet_rows=None):
        self.logdet_rows = logdet_rows
        self.lam = np.asarray(nodes, dtype=np.float64)
        self.Gz = np.asarray(Gz, dtype=np.float64)
        self.n, self.c, self.logdet = int(n), int(c), logdet
        self.lmax = float(self.lam.max()) if self.lam.size else 0.0
        self.D = np.stack([self.lam, np.ones_like(self.lam)])  # (genetic, residual) weights of the nodes
        c_ = self.Gz.shape[0]
        self.GG = (self.Gz[:, None, :] * self.Gz[None, :, :]).reshape(c_ * c_, -1).T.copy()  # (M, c²)
        lam_ = self.lam[:, None]
        self.GGE = np.hstack([self.GG, lam_ * self.GG, lam_ * lam_ * self.GG])  # z zᵀ λ^e, e = 0, 1, 2
        # the slot (kind g, block l) of each parameter's W E_i Wᵀ row in the AI matrix's 4 x 4 forms
        self.onehot = np.eye(2)[_KIND][None, :, None, :, None]  # (1, 6, 1, 2 kinds, 1)


def decouple(theta: np.ndarray):
    """(ok, W (P, 2, 2), d (P, 2)) of each row of θ (P, 6): the closed forms of
    :func:`bigmm.bivariate_likelihood._decouple` (``W E₀ Wᵀ = I``, ``W G₀ Wᵀ = diag(d)``, d
    ascending); ok is False where E₀ is not positive definite."""
    ga, gb, gab, ea, eb, eab = theta.T
    with np.errstate(all="ignore"):
        l11 = np.sqrt(ea)
        l21 = eab / l11
        s22 = eb - l21 * l21
        l22 = np.sqrt(s22)
        p, r, s = 1.0 / l11, -l21 / (l11 * l22), 1.0 / l22  # L⁻¹ = [[p, 0], [r, s]]
        a = p * p * ga
        b = p * (r * ga + s * gab)
        c = (r * ga + s * gab) * r + (r * gab + s * gb) * s
        phi = 0.5 * np.arctan2(2.0 * b, a - c)
        cs, sn = np.cos(phi), np.sin(phi)
        mid, rad = 0.5 * (a + c), np.hypot(0.5 * (a - c), b)
        d = np.stack([mid - rad, mid + rad], axis=1)
        W = np.empty((theta.shape[0], 2, 2))
        W[:, 0, 0], W[:, 0, 1] = -sn * p + cs * r, cs * s
        W[:, 1, 0], W[:, 1, 1] = cs * p + sn * r, sn * s
        ok = (ea > 0) & (s22 > 0) & np.isfinite(s22) & np.isfinite(d).all(axis=1) & np.isfinite(W).all(axis=(1, 2))
    return ok, W, d


def _cholesky_rows(A: np.ndarray):
    """(ok (P,), C): the Cholesky factors of a stack, ok False (and C the identity) where one fails."""
    try:
        return np.ones(A.shape[0], bool), np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        pass
    with np.errstate(all="ignore"):
        ok = np.all(np.isfinite(A), axis=(1, 2))
        ok[ok] = np.linalg.eigvalsh(A[ok])[:, 0] > 0.0
    C = np.broadcast_to(np.eye(A.shape[-1]), A.shape).copy()
    try:
        C[ok] = np.linalg.cholesky(A[ok])
    except np.linalg.LinAlgError:  # at the margin: as each one's own Cholesky decides
        for i in np.flatnonzero(ok):
            try:
                C[i] = np.linalg.cholesky(A[i])
            except np.linalg.LinAlgError:
                ok[i], C[i] = False, np.eye(A.shape[-1])
    return ok, C


def pair_products(Gz: np.ndarray, Gy: np.ndarray, lam: np.ndarray):
    """(YB (P, M, 2c + 3), XE (P, M, 3 (2c + 3))): per node the products ``y_a z``, ``y_b z``,
    ``y_a²``, ``y_a y_b``, ``y_b²`` of each pair's rows ``Gy`` (P, 2, M) of the rule with its
    covariates' rows ``Gz`` (c, M), and the same times λ⁰, λ¹, λ²: with the shared ``z zᵀ``, every
    form ``Σ_m w_m g_m g_mᵀ`` of ``g = [z, y_a, y_b]`` is one product of the weights by them."""
    ya, yb = Gy[:, 0], Gy[:, 1]
    YB = np.concatenate([ya[:, :, None] * Gz.T, yb[:, :, None] * Gz.T,
                         np.stack([ya * ya, ya * yb, yb * yb], axis=-1)], axis=-1)
    lam = lam[:, None]
    return YB, np.concatenate([YB, lam * YB, lam * lam * YB], axis=-1)


def _assemble_forms(c: int, zz: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The symmetric (..., c + 2, c + 2) forms from their z zᵀ (..., c, c) and y parts (..., 2c + 3)."""
    F = np.empty(zz.shape[:-2] + (c + 2, c + 2))
    F[..., :c, :c] = zz
    F[..., c, :c] = F[..., :c, c] = y[..., :c]
    F[..., c + 1, :c] = F[..., :c, c + 1] = y[..., c:2 * c]
    F[..., c, c] = y[..., 2 * c]
    F[..., c, c + 1] = F[..., c + 1, c] = y[..., 2 * c + 1]
    F[..., c + 1, c + 1] = y[..., 2 * c + 2]
    return F


def _forms(sh: _Shared, YB: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``Σ_m w_jm g_m g_mᵀ`` (R, J, c + 2, c + 2) for weights w (R, J, M), g = [z, y_a, y_b]."""
    R, J, M = w.shape
    c = sh.c
    return _assemble_forms(c, (w.reshape(R * J, M) @ sh.GG).reshape(R, J, c, c), w @ YB)


def _forms_e(sh: _Shared, XE: np.ndarray, rows, w: np.ndarray) -> np.ndarray:
    """``Σ_m w_jm λ_m^e g_m g_mᵀ`` (R, J, 3, c + 2, c + 2) for e = 0, 1, 2, with the products
    ``XE[rows]`` (a slice: one batched product; else one product per row, not copying XE)."""
    R, J, M = w.shape
    c = sh.c
    zz = (w.reshape(R * J, M) @ sh.GGE).reshape(R, J, 3, c, c)
    if isinstance(rows, slice):
        y = w @ XE[rows]
    else:
        y = np.empty((R, J, XE.shape[-1]))
        for i, r in enumerate(rows):
            np.matmul(w[i], XE[r], out=y[i])
    return _assemble_forms(c, zz, y.reshape(R, J, 3, -1))


# index grids of the derivatives' forms: weights f_k f_l D_g (degree n = k + l in f_1, D_g = λ^e(g),
# e = 1 genetic, 0 residual) and f_k f_l f_l' D_g D_g'
_EG = np.array([1, 0])
_K3, _G3, _L3 = np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij")  # (k, g, l)
_K5, _G5, _L5, _H5, _M5 = np.meshgrid([0, 1], [0, 1], [0, 1], [0, 1], [0, 1], indexing="ij")  # (k, g, l, g', l')
_Gs, _Ks = np.meshgrid([0, 1], [0, 1], indexing="ij")  # (g, k)


class _Evals:
    """ℓ_R (or the ML log-likelihood) of rows of pairs at θ (P, 6), as :class:`_Evaluation` for
    each; :meth:`derivatives` gives the score and AI matrix of chosen rows. ``YB``: the rows'
    :func:`pair_products`. Every quadratic form over the nodes is ``αᵀ (Σ_m w_m g_m g_mᵀ) β``
    with α, β coefficients of g = [z, y_a, y_b] (the decoupled y*_k = W_k y and its residual
    r_k = y*_k − Zβ*_k), so an evaluation costs one product of its weights by ``[z zᵀ, YB]``."""

    def __init__(self, sh: _Shared, stack: "_Stack", theta: np.ndarray, ml: bool):
        P = theta.shape[0]
        self.sh, self.ml = sh, ml
        self.loglik = np.full(P, -np.inf)
        ok, W, d = decouple(theta)
        with np.errstate(all="ignore"):
            ok &= np.all(1.0 + d > 0.0, axis=1) & np.all(1.0 + d * sh.lmax > 0.0, axis=1)
        self.ok = ok
        idx = np.flatnonzero(ok)
        self.pos = np.full(P, -1)  # row -> its place in the arrays below
        self.pos[idx] = np.arange(idx.size)
        if idx.size == 0:
            return
        W, d = W[idx], d[idx]
        n, c, lam = sh.n, sh.c, sh.lam
        self.XE, self.prow = stack.XE, stack.rows[idx]  # the rows' products, for the derivatives
        YB = stack.YB[_rows_or_slice(self.prow)]
        h = d / (1.0 + d)
        L, L1, _ = sh.logdet(h) if sh.logdet_rows is None else sh.logdet_rows(h, self.prow)
        f = 1.0 / (1.0 + d[:, :, None] * lam)  # (P, 2, M)
        F = _forms(sh, YB, f)  # (P, 2, c + 2, c + 2)
        A = F[..., :c, :c]  # Zᵀ f_k(K) Z
        okc, C = _cholesky_rows(A.reshape(-1, c, c))
        okc = okc.reshape(-1, 2).all(axis=1)
        if not okc.all():
            A = A.copy()
            A[~okc] = np.eye(c)
        C = C.reshape(-1, 2, c, c)
        u = np.zeros((idx.size, 2, c + 2))
        u[..., c:] = W  # y*_k = W_k y
        b = np.einsum("rkca,rka->rkc", F[..., :c, :], u)  # Zᵀ f_k y*_k
        Ai = np.linalg.inv(A)
        Ai = 0.5 * (Ai + np.swapaxes(Ai, -1, -2))
        bk = np.linalg.solve(A, b[..., None])[..., 0]
        alpha = u
        alpha[..., :c] -= bk  # r_k = y*_k − Z β*_k
        yPy = np.einsum("rka,rkab,rkb->rk", alpha, F, alpha)
        nc = n if ml else n - c
        logdetV = n * np.log1p(d) + L
        logdetA = 0.0 if ml else 2.0 * np.log(np.diagonal(C, axis1=-2, axis2=-1)).sum(axis=-1)
        t = theta[idx]
        detE = t[:, 3] * t[:, 4] - t[:, 5] * t[:, 5]
        with np.errstate(all="ignore"):
            ll = -0.5 * nc * np.log(detE) - 0.5 * np.sum(nc * LOG2PI + logdetV + logdetA + yPy, axis=1)
        good = okc & np.isfinite(ll) & np.all(np.isfinite(L), axis=1)
        self.ok[idx[~good]] = False
        self.loglik[idx[good]] = ll[good]
        self.W, self.d, self.f, self.Ai, self.bk, self.L1, self.alpha = W, d, f, Ai, bk, L1, alpha

    def derivatives(self, rows: np.ndarray, block: int = 16):
        """(score (R, 6), AI (R, 6, 6)) at the rows ``rows`` (all ok), ``block`` rows at a time
        (their (block, 7, M) weights stay in cache)."""
        if rows.size <= block:
            return self._derivatives(rows)
        parts = [self._derivatives(rows[i:i + block]) for i in range(0, rows.size, block)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _derivatives(self, rows: np.ndarray):
        sh, ml = self.sh, self.ml
        j = self.pos[rows]
        W, d, f, al, Ai = self.W[j], self.d[j], self.f[j], self.alpha[j], self.Ai[j]
        n, c = sh.n, sh.c
        R, M = f.shape[0], f.shape[-1]
        trK = n / (1.0 + d) + self.L1[j] / (1.0 + d) ** 2  # (R, 2)
        trI = n - d * trK
        trP = np.stack([trK, trI], axis=1)  # (R, 2 kinds, 2 blocks)
        # the weights f_0^(2-n) f_1^n (n ≤ 2) and f_0^(3-n) f_1^n (n ≤ 3), each with λ^e (e ≤ 2) by XE
        w = np.empty((R, 7, M))
        f0, f1 = f[:, 0], f[:, 1]
        np.multiply(f0, f0, out=w[:, 0])
        np.multiply(f0, f1, out=w[:, 1])
        np.multiply(f1, f1, out=w[:, 2])
        np.multiply(w[:, 0], f0, out=w[:, 3])
        np.multiply(w[:, 0:3], f1[:, None], out=w[:, 4:7])
        F = _forms_e(sh, self.XE, _rows_or_slice(self.prow[j]), w)  # (R, 7, 3, c + 2, c + 2)
        F1, F2 = F[:, :3, :2], F[:, 3:]  # [n, e]
        if not ml:
            # tr(A_k⁻¹ Zᵀ f_k D_g f_k Z) for kind g and block k
            S = F1[:, 2 * _Ks, _EG[_Gs], :c, :c]  # (R, 2 g, 2 k, c, c)
            trP = trP - np.einsum("rkcd,rgkcd->rgk", Ai, S)
        gen = _KIND
        Mi = np.einsum("rka,iab,rlb->rikl", W, _PATTERN, W)  # W E_i Wᵀ, (R, 6, 2, 2)
        B1 = np.einsum("rla,rneab,rmb->rnelm", al, F1, al)  # (R, 3, 2, 2, 2)
        Pg = B1[:, _K3 + _L3, _EG[_G3], _K3, _L3].swapaxes(1, 2)  # Σ_m pi_k D_g pi_l, [g, k, l]
        score = -0.5 * (Mi[:, :, 0, 0] * trP[:, gen, 0] + Mi[:, :, 1, 1] * trP[:, gen, 1]) \
            + 0.5 * np.einsum("rikl,rikl->ri", Mi, Pg[:, gen])
        # (T V_i Tᵀ) P* y* in block k is Σ_l (W E_i Wᵀ)_kl D_g(i) pi_l: the AI matrix from the
        # 4 x 4 forms T_k = Σ_m f_k E Eᵀ of the slots (g, l), E_(g, l) = D_g pi_l, and Zᵀ f_k E
        B2 = np.einsum("rla,rneab,rmb->rnelm", al, F2, al)  # (R, 4, 3, 2, 2)
        T = B2[:, _K5 + _L5 + _M5, _EG[_G5] + _EG[_H5], _L5, _M5].reshape(R, 2, 4, 4)
        C1 = np.einsum("rneca,rla->rnelc", F1[..., :c, :], al)  # (R, 3, 2, 2, c)
        V = C1[:, _K3 + _L3, _EG[_G3], _L3].reshape(R, 2, 4, c)
        Ak = np.swapaxes((Mi[:, :, :, None, :] * sh.onehot).reshape(R, 6, 2, 4), 1, 2)  # (R, 2, 6, 4)
        Zk = Ak @ V  # (R, 2, 6, c)
        AI = (Ak @ T @ np.swapaxes(Ak, -1, -2)).sum(axis=1) - (Zk @ Ai @ np.swapaxes(Zk, -1, -2)).sum(axis=1)
        AI = 0.5 * AI
        return score, 0.5 * (AI + np.swapaxes(AI, 1, 2))


# ---------------------------------------------------------------------------------------------
# parametrisations θ(φ) of a stack: (θ (P, 6), Jacobian (P, 6, q), second derivatives (6, q, q) or None)


def _linear(keep):
    keep = list(keep)
    J1 = np.zeros((6, len(keep)))
    J1[keep, np.arange(len(keep))] = 1.0

    def theta(phi):
        t = np.zeros((phi.shape[0], 6))
        t[:, keep] = phi
        return t, np.broadcast_to(J1, (phi.shape[0], 6, len(keep))), None
    return theta


_H1 = np.zeros((6, 5, 5))
_H1[0, 0, 0] = _H1[1, 1, 1] = 2.0
_H1[2, 0, 1] = _H1[2, 1, 0] = 1.0


def _rank_one(phi):
    """G₀ = v vᵀ, v = (φ₀, φ₁); E₀ free (as :func:`bigmm.bivariate._rank_one`)."""
    u, v = phi[:, 0], phi[:, 1]
    t = np.column_stack([u * u, v * v, u * v, phi[:, 2], phi[:, 3], phi[:, 4]])
    J = np.zeros((phi.shape[0], 6, 5))
    J[:, 0, 0], J[:, 1, 1], J[:, 2, 0], J[:, 2, 1] = 2 * u, 2 * v, v, u
    J[:, 3, 2] = J[:, 4, 3] = J[:, 5, 4] = 1.0
    return t, J, _H1


class _State:
    """The current point of each row of a maximisation: φ, θ, J, ℓ, score, AI and what the fixed
    effects need (W, A_k⁻¹, β*)."""

    def __init__(self, P: int, q: int, c: int):
        self.phi = np.zeros((P, q))
        self.theta = np.zeros((P, 6))
        self.J = np.zeros((P, 6, q))
        self.ll = np.full(P, -np.inf)
        self.score = np.zeros((P, 6))
        self.AI = np.zeros((P, 6, 6))
        self.W = np.zeros((P, 2, 2))
        self.Ai = np.zeros((P, 2, c, c))
        self.bk = np.zeros((P, 2, c))

    def set(self, rows, ev: _Evals, evrows, phi, theta, J, derive):
        """Rows ``rows`` from rows ``evrows`` of ``ev``; the score and AI matrix where ``derive``."""
        j = ev.pos[evrows]
        self.phi[rows], self.theta[rows], self.J[rows], self.ll[rows] = phi, theta, J, ev.loglik[evrows]
        self.W[rows], self.Ai[rows], self.bk[rows] = ev.W[j], ev.Ai[j], ev.bk[j]
        dr = np.flatnonzero(derive)
        if dr.size:
            self.score[rows[dr]], self.AI[rows[dr]] = ev.derivatives(evrows[dr])


def _solve_rows(Hs, JAJ, g, free):
    """The AI steps of a stack as :func:`bigmm.bivariate._maximise` takes each: Newton on the free
    coordinates with the exact Hessian of θ(φ) if it is positive definite, else its AI part;
    a gradient step where the system is singular."""
    P, q = g.shape
    both = free[:, :, None] & free[:, None, :]
    eye = np.broadcast_to(np.eye(q), (P, q, q))
    Hf = np.where(both, Hs, eye)
    ok, _ = _cholesky_rows(Hf)
    if not ok.all():
        Hf[~ok] = np.where(both[~ok], JAJ[~ok], eye[~ok])
    gf = np.where(free, g, 0.0)
    try:
        return np.linalg.solve(Hf, gf[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        step = np.zeros_like(g)
        for i in range(P):
            try:
                step[i] = np.linalg.solve(Hf[i], gf[i])
            except np.linalg.LinAlgError:
                fr = free[i]
                step[i, fr] = g[i, fr] / max(float(np.abs(np.diag(Hf[i])[fr]).max()), 1e-300)
        return step


class _Stack:
    """Rows ``rows`` of the :func:`pair_products` (YB, XE) of a stack of pairs (not copied)."""

    def __init__(self, YB, XE, rows=None):
        self.YB, self.XE = YB, XE
        self.rows = np.arange(YB.shape[0]) if rows is None else rows


def _take(stack: _Stack, rows) -> _Stack:
    return _Stack(stack.YB, stack.XE, stack.rows[rows])


def _rows_or_slice(r: np.ndarray):
    """A slice for consecutive row numbers (a view instead of a copy), else the rows."""
    if r.size and r[-1] - r[0] == r.size - 1 and np.all(np.diff(r) == 1):
        return slice(int(r[0]), int(r[-1]) + 1)
    return r


def maximise(sh: _Shared, YB, model, phi0, *, lower=None, ml=False, tol: float, max_iter: int,
             step_tol: float = 1e-9, need_derivatives: bool = True):
    """:func:`bigmm.bivariate._maximise` for every row of φ₀ (P, q), each row on its own pair
    ``YB[i]`` (its :func:`pair_products`). Returns (state, iterations (P,),
    converged (P,), valid (P,): False where the start is not a valid model)."""
    P, q = phi0.shape
    need = np.broadcast_to(np.asarray(need_derivatives, bool), (P,))
    st = _State(P, q, sh.c)
    t, J, _ = model(phi0)
    ev = _Evals(sh, YB, t, ml)
    valid = ev.ok.copy()
    rows = np.flatnonzero(valid)
    if rows.size:
        st.set(rows, ev, rows, phi0[rows], t[rows], J[rows], np.ones(rows.size, bool))
    iters = np.zeros(P, int)
    conv = np.zeros(P, bool)
    active = valid.copy()
    for it in range(1, max_iter + 1):
        a = np.flatnonzero(active)
        if a.size == 0:
            break
        iters[a] = it
        phi, Ja, sc, AI = st.phi[a], st.J[a], st.score[a], st.AI[a]
        JT = np.swapaxes(Ja, 1, 2)
        g = (JT @ sc[:, :, None])[:, :, 0]
        JAJ = JT @ AI @ Ja
        _, _, H = model(phi)
        Hs = JAJ - np.einsum("pi,ijk->pjk", sc, H) if H is not None else JAJ
        free = np.ones(phi.shape, bool)
        if lower is not None:
            free &= ~((phi <= lower) & (g <= 0.0))
        step = _solve_rows(Hs, JAJ, g, free)
        decrement = np.sum(g * step, axis=1)
        if lower is not None:
            below = (phi + step < lower) & (step < 0)
            has = below.any(axis=1)
            if has.any():
                with np.errstate(all="ignore"):
                    ratio = np.where(below, (lower - phi) / np.where(below, step, 1.0), np.inf)
                frac = ratio.min(axis=1)
                step[has] *= np.maximum(frac[has], 0.0)[:, None]
                zero = has & (frac <= 0)
                step[zero] = np.where(below[zero], 0.0, step[zero])
        scale = np.ones(a.size)
        searching = np.ones(a.size, bool)
        ll_old = st.ll[a].copy()
        for _ in range(40):
            s = np.flatnonzero(searching)
            if s.size == 0:
                break
            phin = phi[s] + scale[s, None] * step[s]
            if lower is not None:
                phin = np.maximum(phin, lower)
            tn, Jn, _ = model(phin)
            evn = _Evals(sh, _take(YB, a[s]), tn, ml)
            acc = evn.ok & (evn.loglik >= ll_old[s] - 1e-12 * np.maximum(1.0, np.abs(ll_old[s])))
            if acc.any():
                k = s[acc]
                rows = a[k]
                change = evn.loglik[acc] - ll_old[k]
                size = np.max(np.abs(step[k]), axis=1) / np.maximum(np.max(np.abs(phi[k]), axis=1), 1e-300)
                done = (scale[k] == 1.0) & (np.abs(change) < tol * np.maximum(1.0, np.abs(evn.loglik[acc]))) \
                    & (size < step_tol)
                st.set(rows, evn, np.flatnonzero(acc), phin[acc], tn[acc], Jn[acc], need[rows] | ~done)
                conv[rows[done]] = True
                active[rows[done]] = False
                searching[k] = False
            scale[searching] *= 0.5
        fail = np.flatnonzero(searching)
        if fail.size:
            rows = a[fail]
            conv[rows] = np.abs(decrement[fail]) < 1e-6 * np.maximum(1.0, np.abs(ll_old[fail]))
            active[rows] = False
    return st, iters, conv, valid


def _rank_one_fit(sh, YB, theta, sign, *, tol, max_iter, ml=False, need_derivatives=True):
    """:func:`bigmm.bivariate._fit_rank_one` of every row: G₀ = v vᵀ started from θ's variances."""
    scale = 1e-3 * (np.abs(theta[:, 0]) + np.abs(theta[:, 3]) + np.abs(theta[:, 1]) + np.abs(theta[:, 4]))
    u = np.sqrt(np.maximum(theta[:, 0], scale))
    v = sign * np.sqrt(np.maximum(theta[:, 1], scale))
    start = np.column_stack([u, v, theta[:, 3], theta[:, 4], theta[:, 5]])
    bad = ~_Evals(sh, YB, _rank_one(start)[0], ml=False).ok
    if bad.any():
        start[bad, 2:] = np.column_stack([np.abs(theta[bad, 3]) + scale[bad], np.abs(theta[bad, 4]) + scale[bad],
                                          np.zeros(int(bad.sum()))])
    return maximise(sh, YB, _rank_one, start, ml=ml, tol=tol, max_iter=max_iter, need_derivatives=need_derivatives)


def _psd(t):
    return (t[:, 0] >= 0) & (t[:, 1] >= 0) & (t[:, 2] ** 2 <= t[:, 0] * t[:, 1])


def fit_pairs_batched(sh: _Shared, Gy: np.ndarray, theta0: np.ndarray, floors: np.ndarray, *, names, covariate_names,
                      n_obs: int, n_left_out, offsets, lrt: bool, constrain: bool, ml: bool, tol: float,
                      max_iter: int) -> list:
    """:func:`bigmm.bivariate._fit_from` of P pairs of one pattern: ``Gy`` (P, 2, M) their rows of
    the rule, ``theta0`` (P, 6) their starts, ``floors`` (P, 2) those of ``fit_pair``, ``names``,
    ``n_left_out``, ``offsets`` (P, c, 2) per pair. Returns a :class:`BivariateFit` per pair, or None
    for a pair whose fit does something the batch does not (see the module): fit it by ``fit_pair``."""
    P = theta0.shape[0]
    nan = np.full(P, np.nan)
    YB = _Stack(*pair_products(sh.Gz, Gy, sh.lam))
    st, iters, conv, valid = maximise(sh, YB, _linear(range(6)), theta0, tol=tol, max_iter=max_iter)
    ok = valid & conv
    theta, ll, AI = st.theta.copy(), st.ll.copy(), st.AI.copy()
    W, Ai, bk = st.W.copy(), st.Ai.copy(), st.bk.copy()
    boundary = (constrain & ~_psd(theta)) & ok
    ll0, ll1 = nan.copy(), nan.copy()
    need1 = ok & (boundary | lrt)
    if need1.any():
        r = np.flatnonzero(need1)
        sign = np.where(theta[r, 2] >= 0, 1.0, -1.0)
        s1, it1, c1, v1 = _rank_one_fit(sh, _take(YB, r), theta[r], sign, tol=tol, max_iter=max_iter,
                                        need_derivatives=boundary[r])
        b = boundary[r]
        # an LRT refit that stops unconverged gives its ℓ, as fit_pair's; the estimate must converge
        ok[r[~v1 | (b & ~c1)]] = False
        rb = r[b]
        theta[rb], ll[rb], AI[rb], W[rb], Ai[rb], bk[rb] = s1.theta[b], s1.ll[b], s1.AI[b], s1.W[b], s1.Ai[b], s1.bk[b]
        iters[rb] += it1[b]
        if lrt:
            ll1[r] = np.where(b, ll[r], s1.ll)
    if lrt:
        r = np.flatnonzero(ok)
        keep = [0, 1, 3, 4, 5]
        start = theta[r][:, keep]
        lower = None
        if constrain:
            start[:, :2] = np.maximum(start[:, :2], floors[r])
            lower = np.array([0.0, 0.0, -np.inf, -np.inf, -np.inf])
        s0, _, c0, v0 = maximise(sh, _take(YB, r), _linear(keep), start, lower=lower, tol=tol, max_iter=max_iter,
                                 need_derivatives=False)
        ok[r[~v0]] = False
        ll0[r] = s0.ll
    ll_ml, th_ml = nan.copy(), np.full((P, 6), np.nan)
    if ml:
        r = np.flatnonzero(ok)
        sm, _, cm, vm = maximise(sh, _take(YB, r), _linear(range(6)), theta[r], ml=True, tol=tol, max_iter=max_iter,
                                 need_derivatives=False)
        okm = vm & cm
        phm, llm = sm.theta.copy(), sm.ll.copy()
        out_psd = okm & constrain & ~_psd(phm)
        if out_psd.any():
            k = np.flatnonzero(out_psd)
            sign = np.where(phm[k, 2] >= 0, 1.0, -1.0)
            sk, _, ck, vk = _rank_one_fit(sh, _take(YB, r[k]), phm[k], sign, tol=tol, max_iter=max_iter, ml=True,
                                          need_derivatives=False)
            okm[k] &= vk & ck
            phm[k], llm[k] = sk.theta, sk.ll
        ok[r[~okm]] = False
        ll_ml[r], th_ml[r] = llm, phm
    return _assemble(ok, theta, ll, AI, W, Ai, bk, ll0, ll1, ll_ml, th_ml, boundary, iters, names=names,
                     covariate_names=covariate_names, n_obs=n_obs, n_left_out=n_left_out, offsets=offsets, lrt=lrt,
                     constrain=constrain)


def _inv_rows(A):
    """Inverses of a stack, NaN where one is singular (as ``fit_pair`` reports the covariance)."""
    try:
        return np.linalg.inv(A)
    except np.linalg.LinAlgError:
        out = np.full_like(A, np.nan)
        for i in range(A.shape[0]):
            try:
                out[i] = np.linalg.inv(A[i])
            except np.linalg.LinAlgError:
                pass
        return out


def _ratios_rows(theta: np.ndarray, cov: np.ndarray) -> list:
    """:func:`bigmm.bivariate_results._ratios` of each row of θ (P, 6) and its covariance (P, 6, 6)."""
    ga, gb, gab, ea, eb, eab = theta.T
    P = theta.shape[0]
    out, grads = {}, {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for key, g, e, ig, ie in (("a", ga, ea, 0, 3), ("b", gb, eb, 1, 4)):
            vp = g + e
            grad = np.zeros((P, 6))
            grad[:, ig], grad[:, ie] = e / vp ** 2, -g / vp ** 2
            out[f"h2_{key}"], grads[f"h2_{key}_se"] = g / vp, grad
        for key, x, y, xy, ix, iy, ixy in (("rg", ga, gb, gab, 0, 1, 2), ("re", ea, eb, eab, 3, 4, 5)):
            pos = (x > 0) & (y > 0)
            sq = np.sqrt(np.where(pos, x * y, 1.0))
            r = xy / sq
            grad = np.zeros((P, 6))
            grad[:, ixy], grad[:, ix], grad[:, iy] = 1.0 / sq, -0.5 * r / x, -0.5 * r / y
            out[key] = np.where(pos, r, np.nan)
            grads[f"{key}_se"] = np.where(pos[:, None], grad, np.nan)
        va, vb = ga + ea, gb + eb
        okp = (va > 0) & (vb > 0)
        sq = np.sqrt(np.where(okp, va * vb, 1.0))
        rp = np.where(okp, (gab + eab) / sq, np.nan)
        grad = np.zeros((P, 6))
        grad[:, 2] = grad[:, 5] = 1.0 / sq
        grad[:, 0] = grad[:, 3] = -0.5 * rp / va
        grad[:, 1] = grad[:, 4] = -0.5 * rp / vb
        out["rp"], grads["rp_se"] = rp, np.where(np.isfinite(rp)[:, None], grad, np.nan)
        for k, grad in grads.items():
            v = np.einsum("pi,pij,pj->p", grad, cov, grad)
            out[k] = np.where(np.isfinite(v) & (v >= 0), np.sqrt(np.abs(v)), np.nan)
    keys = list(out)
    return [{k: float(out[k][i]) for k in keys} for i in range(P)]


def _assemble(ok, theta, ll, AI, W, Ai, bk, ll0, ll1, ll_ml, th_ml, boundary, iters, *, names, covariate_names,
              n_obs, n_left_out, offsets, lrt, constrain) -> list:
    """The :class:`BivariateFit` of each row that ``ok`` marks (None for the others)."""
    P = theta.shape[0]
    out = [None] * P
    r = np.flatnonzero(ok)
    if r.size == 0:
        return out
    cov = _inv_rows(AI[r])
    with np.errstate(invalid="ignore"):
        lrt0 = np.maximum(0.0, 2.0 * (ll[r] - ll0[r]))
        lrt1 = np.maximum(0.0, 2.0 * (ll[r] - ll1[r]))
    p0 = chdtrc(1, lrt0)
    p1 = np.where(lrt1 <= 0, 1.0, 0.5 * chdtrc(1, lrt1))
    if not lrt:
        lrt0 = p0 = lrt1 = p1 = np.full(r.size, np.nan)
    # fixed effects: β_a = Σ_k Winv[a, k] β*_k, var = Σ_k Winv[a, k]² diag(A_k⁻¹)
    Winv = np.linalg.inv(W[r])
    c_report = len(covariate_names)
    B = (np.swapaxes(bk[r], 1, 2) @ np.swapaxes(Winv, 1, 2))[:, :c_report] + offsets[r]
    var = np.einsum("pak,pkc->pca", Winv ** 2, np.diagonal(Ai[r], axis1=-2, axis2=-1))[:, :c_report]
    SE = np.sqrt(var)
    ratios = _ratios_rows(theta[r], cov)
    for i, p in enumerate(r):
        t = theta[p]
        fe = tuple((nm, float(B[i, j, 0]), float(SE[i, j, 0]), float(B[i, j, 1]), float(SE[i, j, 1]))
                   for j, nm in enumerate(covariate_names))
        out[p] = BivariateFit(
            trait_a=str(names[p][0]), trait_b=str(names[p][1]), n=int(n_obs), n_left_out=int(n_left_out[p]),
            sg_a=float(t[0]), sg_b=float(t[1]), cov_g=float(t[2]), ve_a=float(t[3]), ve_b=float(t[4]),
            cov_e=float(t[5]), covariance=tuple(tuple(float(v) for v in row) for row in cov[i]),
            logL=float(ll[p]), logL_rg0=float(ll0[p]), lrt_rg0=float(lrt0[i]), p_rg0=float(p0[i]),
            logL_rg1=float(ll1[p]), lrt_rg1=float(lrt1[i]), p_rg1=float(p1[i]),
            boundary="rank-1 G0" if boundary[p] else "", logL_ml=float(ll_ml[p]),
            ml_estimates=tuple(float(v) for v in th_ml[p]), converged=True, iterations=int(iters[p]),
            constrained=bool(constrain), fixed_effects=fe, note="", **ratios[i])
    return out
