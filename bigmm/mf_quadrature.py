"""Gauss rules of the matrix-free REML: quadratic forms ``Bᵀ f(K) B`` and ``log det H``.

``f(λ) = 1 / (hλ + 1 − h)`` for the solves, ``log(hλ + 1 − h)`` for the log det,
``H(h) = hK + (1 − h)I``; every rule gives the value and the first two h-derivatives (the
Gauss rule of a function's h-derivative is the h-derivative of its Gauss rule).

* :class:`BlockGaussRule`: the block Gauss rule of the ``[Z, Y]`` block Lanczos
  (:class:`bigmm.lanczos.BlockLanczos`): with ``T = S diag(θ) Sᵀ`` and ``G = R₀ᵀ E₁ᵀ S``,
  ``Bᵀ f(K) B ≈ G diag(f(θ)) Gᵀ``; the Schur complement gives ``yᵀPy`` and ``log det ZᵀH⁻¹Z``.
* :class:`LogdetRule`: stochastic Lanczos quadrature of ``log det H`` over the probes' Gauss
  rules, with the deflated part exact and two control variates (the tangent of f at the tail's
  mean eigenvalue, and the converged Ritz pairs of the ``[Z, Y]`` block,
  :func:`ritz_control_variate`).

References: G. H. Golub, G. Meurant (2010), *Matrices, Moments and Quadrature with
Applications*; S. Ubaru, J. Chen, Y. Saad (2017), Fast estimation of tr(f(A)) via stochastic
Lanczos quadrature, SIAM J. Matrix Anal. Appl. 38(4).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import eigh

from .lanczos import BlockLanczos, colnorm2

#: Ritz pairs of the [Z, Y] block whose residual ‖K x − θ x‖ is below RITZ_TOL · θ_max enter
#: the Ritz control variate of the log det probes (at most RITZ_MAX, farthest from the tail mean)
RITZ_TOL = 1e-3
RITZ_MAX = 64


class BlockGaussRule:
    """``Bᵀ f(K) B`` for the start block ``B = [Z, Ỹ]`` (c + m columns) of a block Lanczos.

    With ``T = S diag(θ) Sᵀ`` (the completed steps) and ``G = R₀ᵀ E₁ᵀ S`` ((c + m) x dim T),
    every entry of ``Bᵀ f(K) B`` is ``Σ_k G_ik f(θ_k) G_jk``; the h-derivatives use
    ``∂f/∂h = −(θ − 1)/d²`` and ``∂²f/∂h² = 2(θ − 1)²/d³``, ``d = hθ + 1 − h``.
    """

    def __init__(self, block: BlockLanczos, c: int):
        T, off = block.tridiagonal()
        self.off = off
        self.tb = len(block.A_list)
        theta, S = eigh(T, check_finite=True)
        self.theta = np.maximum(theta, 0.0)  # K is positive semi-definite
        self.S = S
        G = block.R0.T @ S[:int(off[1]) if self.tb else 0, :]
        self.GZ = np.ascontiguousarray(G[:c])
        self.GY = np.ascontiguousarray(G[c:])
        self.GY2 = self.GY ** 2
        self.blocks = block.blocks[:self.tb]
        self.dim = int(off[-1])
        tmax = max(float(theta.max(initial=0.0)), 1e-300)
        #: the Krylov space found a null direction of K (e.g. K 1 = 0 with an intercept): ML may
        #: then grow without bound as h² → 1
        self.singular = bool(theta.min(initial=1.0) <= 1e-10 * tmax)

    def f(self, h: np.ndarray):
        """``f(θ) = 1/(hθ + 1 − h)`` at the Ritz values and its two h-derivatives (h.shape + (dim,))."""
        d = h[..., None] * self.theta + (1.0 - h)[..., None]
        f0 = 1.0 / d
        t = self.theta - 1.0
        return f0, -t * f0 ** 2, 2.0 * t ** 2 * f0 ** 3

    def forms(self, h: np.ndarray, shared: bool, cols):
        """(A_k, b_k, s_k) for k = 0, 1, 2 (value and h-derivatives): ZᵀH⁻¹Z, ZᵀH⁻¹ỹ, ỹᵀH⁻¹ỹ.

        shared: h (P,) for all phenotypes ``cols`` → A (P, 1, c, c), b (P, m, c), s (P, m);
        else h (m,) one per phenotype → A (m, c, c), b (m, c), s (m,).
        """
        GZ, GY, GY2 = self.GZ, self.GY[cols], self.GY2[cols]
        out = []
        for f in self.f(h):
            if shared:
                A = (GZ[None] * f[:, None, :]) @ GZ.T  # (P, c, c)
                b = np.einsum("mk,pkc->pmc", GY, f[:, :, None] * GZ.T[None])
                s = f @ GY2.T
                out.append((A[:, None], b, s))
            else:
                A = (GZ[None] * f[:, None, :]) @ GZ.T  # (m, c, c)
                b = (f * GY) @ GZ.T
                s = np.einsum("mk,mk->m", f, GY2)
                out.append((A, b, s))
        return out

    def solve(self, h: np.ndarray, u: np.ndarray) -> np.ndarray:
        """``H⁻¹(ỹ_j − Z u_j)`` per phenotype j at its own h (n_o x m) from the Krylov basis:
        ``Q S diag(f(θ)) Gᵀ c_j`` with ``c_j = (−u_j, e_j)``."""
        f0 = self.f(h)[0]  # (m, M)
        Gc = self.GY - u @ self.GZ  # (m, M): Gᵀ c_j with c_j = (−u_j, e_j)
        coef = self.S @ (f0 * Gc).T  # (M, m)
        out = np.zeros((self.blocks[0].shape[0], self.GY.shape[0]))
        o = 0
        for Q in self.blocks:
            out += Q @ coef[o:o + Q.shape[1]]
            o += Q.shape[1]
        return out


def schur(forms):
    """R = yᵀPy, log det A and their h-derivatives, and u = A⁻¹b, from (A_k, b_k, s_k) of
    :meth:`BlockGaussRule.forms`."""
    (A0, b0, s0), (A1, b1, s1), (A2, b2, s2) = forms
    A0b = np.broadcast_to(A0, b0.shape[:-1] + A0.shape[-2:])
    A1b = np.broadcast_to(A1, A0b.shape)
    A2b = np.broadcast_to(A2, A0b.shape)
    u = np.linalg.solve(A0b, b0[..., None])[..., 0]
    A1u = (A1b @ u[..., None])[..., 0]
    A2u = (A2b @ u[..., None])[..., 0]
    R = s0 - np.sum(b0 * u, axis=-1)
    R1 = s1 - 2.0 * np.sum(b1 * u, axis=-1) + np.sum(u * A1u, axis=-1)
    e = b1 - A1u
    Ae = np.linalg.solve(A0b, e[..., None])[..., 0]
    R2 = s2 - 2.0 * np.sum(b2 * u, axis=-1) + np.sum(u * A2u, axis=-1) - 2.0 * np.sum(e * Ae, axis=-1)
    _, ld = np.linalg.slogdet(A0)
    X1 = np.linalg.solve(A0, A1)
    ld1 = np.trace(X1, axis1=-2, axis2=-1)
    ld2 = np.trace(np.linalg.solve(A0, A2), axis1=-2, axis2=-1) - np.sum(X1 * np.swapaxes(X1, -1, -2),
                                                                        axis=(-2, -1))
    if A0.ndim == 4:  # shared: (P, 1) → broadcast over phenotypes
        ld, ld1, ld2 = ld[:, :1] * np.ones_like(R), ld1[:, :1] * np.ones_like(R), ld2[:, :1] * np.ones_like(R)
    return R, R1, R2, ld, ld1, ld2, u


def ritz_control_variate(rule: BlockGaussRule, block: BlockLanczos, v: np.ndarray, mu: float):
    """The Ritz control variate of the probes ``v`` (n_o x N, before any projection).

    The ``[Z, Y]`` block finds the isolated eigenpairs of K (population structure, the null
    vector 1 of an intercept) within a few steps; its converged Ritz pairs ``(θ_k, x_k)``
    (residual ``‖K x_k − θ_k x_k‖ = ‖B_last S_last,k‖`` below ``RITZ_TOL · θ_max``) do not
    depend on the probes. For each probe v_j, ``c_j = Σ_k r(θ_k) [(x_kᵀv_j)² − 1]`` has mean
    exactly 0 (``E[(xᵀv)²] = ‖x‖² = 1``), and cancels the probe's own Gauss weight
    ``≈ (x_kᵀv_j)²`` on θ_k: ``y_j − c_j`` keeps the estimate unbiased and removes the χ²₁ noise
    of the isolated eigenvalues, which the linear control variate cannot (their r(θ) is far
    from 0). Returns the selected ``θ_k`` (k_R,) and the deviations ``(x_kᵀv_j)² − ‖x_k‖²``
    (N x k_R); ``mu`` (the tail's mean eigenvalue, NaN if unknown) ranks them.
    """
    N = v.shape[1]
    empty = (np.zeros(0), np.zeros((N, 0)))
    S, theta, off, tb = rule.S, rule.theta, rule.off, rule.tb
    if len(block.B_list) >= tb and block.B_list[tb - 1].shape[0]:
        res = np.sqrt(colnorm2(block.B_list[tb - 1] @ S[off[tb - 1]:off[tb], :]))
    else:  # exhausted: every Ritz pair is exact
        res = np.zeros(theta.size)
    sel = np.flatnonzero(res <= RITZ_TOL * max(float(theta.max(initial=0.0)), 1e-300))
    if not sel.size:
        return empty
    mu = mu if np.isfinite(mu) else float(np.mean(theta))
    sel = sel[np.argsort(-np.abs(theta[sel] - mu), kind="stable")[:RITZ_MAX]]
    X = np.zeros((v.shape[0], sel.size))
    for j in range(tb):
        X += block.blocks[j] @ S[off[j]:off[j + 1], sel]
    P = X.T @ v  # (k_R, N)
    return theta[sel], (P * P - colnorm2(X)[:, None]).T  # (N, k_R)


class LogdetRule:
    """``log det H`` on one pattern's samples and its first two h-derivatives (:meth:`logdet`).

    ``sd``: the Rayleigh values of the k deflation vectors; ``n_perp = n_o − k``; ``trK``: the
    exact ``tr K_oo`` (NaN if unknown); ``nodes``, ``weights`` (N x t): the probes' Gauss rules
    on ``K_⊥``. ``ritz_theta``, ``ritz_dev``: the Ritz control variate (empty if none).
    """

    def __init__(self, sd: np.ndarray, n_perp: int, trK: float, nodes: np.ndarray, weights: np.ndarray):
        self.sd = sd
        self.n_perp = n_perp
        self.N = nodes.shape[0]
        self.nodes = nodes
        self.weights = weights
        self.trK_perp = trK - float(sd.sum()) if np.isfinite(trK) else float("nan")
        self.mu = self.trK_perp / n_perp if (n_perp > 0 and np.isfinite(self.trK_perp)) else float("nan")
        self.ritz_theta = np.zeros(0)
        self.ritz_dev = np.zeros((self.N, 0))

    def _cv(self, h: np.ndarray):
        """Control variate ``a(h) + b(h) λ`` (the tangent of log(hλ + 1 − h) at the tail's mean
        eigenvalue μ) and its h-derivatives; with μ unknown, ``a = log(1 − h)``, ``b = 0``."""
        if np.isfinite(self.mu):
            mu = self.mu
            dm = h * mu + 1.0 - h
            b = h / dm
            b1 = 1.0 / dm ** 2
            b2 = -2.0 * (mu - 1.0) / dm ** 3
            a = np.log(dm) - mu * b
            a1 = (mu - 1.0) / dm - mu * b1
            a2 = -((mu - 1.0) / dm) ** 2 - mu * b2
        else:
            z = np.zeros_like(h)
            a, a1, a2 = np.log1p(-h), -1.0 / (1.0 - h), -1.0 / (1.0 - h) ** 2
            b = b1 = b2 = z
        return a, a1, a2, b, b1, b2

    def logdet(self, h: np.ndarray, per_probe: bool = False):
        """``log det H`` on the group's samples and its first two h-derivatives.

        ``Σ_i log(h s_i + 1 − h)`` over the deflated directions (Rayleigh values ``s``) plus
        the tail ``tr_⊥ f(K_⊥)``, ``K_⊥ = P K P``, ``P = I − U Uᵀ``, estimated as

            a(h) n_⊥ + b(h) tr K_⊥ + (1/N) Σ_j ‖w_j‖² Σ_k τ_jk² r(θ_jk),   r = f − a − bλ,

        with ``w_j = P v_j`` (``E[w_jᵀ A w_j] = tr(P A P)``), Gauss nodes θ and weights τ² of
        probe j's Lanczos on K_⊥. Since the rule integrates linear functions exactly, the
        sum is ``w_jᵀ f(K_⊥) w_j − a‖w_j‖² − b w_jᵀK_⊥w_j``: a control variate with known mean
        ``a n_⊥ + b tr K_⊥`` (``tr K_⊥ = tr K − Σ s``). It removes the Monte Carlo variance of
        the linear part of f, and makes the estimate exact when K_⊥ = 0 (U spans range K).

        Returns (L, L', L'') of shape ``h.shape``, plus with ``per_probe`` the probe terms
        (y, y', y'') of shape ``h.shape + (N,)``.
        """
        h = np.asarray(h, dtype=np.float64)
        d = h[..., None] * self.sd + (1.0 - h)[..., None]
        t = self.sd - 1.0
        L = np.log(d).sum(axis=-1)
        L1 = (t / d).sum(axis=-1)
        L2 = -((t / d) ** 2).sum(axis=-1)
        if self.n_perp <= 0 or self.N == 0:
            z = np.zeros(h.shape + (0,))
            return (L, L1, L2, z, z, z) if per_probe else (L, L1, L2)
        a, a1, a2, b, b1, b2 = self._cv(h)
        trp = self.trK_perp if np.isfinite(self.trK_perp) else 0.0
        L = L + a * self.n_perp + b * trp
        L1 = L1 + a1 * self.n_perp + b1 * trp
        L2 = L2 + a2 * self.n_perp + b2 * trp
        y0, y1, y2 = self._probe_terms(h, (a, a1, a2, b, b1, b2))
        L, L1, L2 = L + y0.mean(axis=-1), L1 + y1.mean(axis=-1), L2 + y2.mean(axis=-1)
        if per_probe:
            return L, L1, L2, y0, y1, y2
        return L, L1, L2

    def _probe_terms(self, h: np.ndarray, cv):
        """Each probe's Gauss rule of ``r = f − a − bλ`` and its h-derivatives, less the Ritz
        control variate (h.shape + (N,))."""
        a, a1, a2, b, b1, b2 = cv
        th = self.nodes  # (N, t)
        hh = h[..., None, None]
        dd = hh * th + (1.0 - hh)
        tt = th - 1.0
        ex = (Ellipsis, None, None)
        r0 = np.log(dd) - a[ex] - b[ex] * th
        r1 = tt / dd - a1[ex] - b1[ex] * th
        r2 = -(tt / dd) ** 2 - a2[ex] - b2[ex] * th
        y0 = (self.weights * r0).sum(axis=-1)
        y1 = (self.weights * r1).sum(axis=-1)
        y2 = (self.weights * r2).sum(axis=-1)
        if self.ritz_theta.size:  # Ritz control variate (see ritz_control_variate)
            tr = self.ritz_theta
            hr = h[..., None]
            dr = hr * tr + (1.0 - hr)
            q0 = np.log(dr) - a[..., None] - b[..., None] * tr
            q1 = (tr - 1.0) / dr - a1[..., None] - b1[..., None] * tr
            q2 = -((tr - 1.0) / dr) ** 2 - a2[..., None] - b2[..., None] * tr
            y0 = y0 - q0 @ self.ritz_dev.T
            y1 = y1 - q1 @ self.ritz_dev.T
            y2 = y2 - q2 @ self.ritz_dev.T
        return y0, y1, y2
