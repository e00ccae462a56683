"""Lanczos recurrences on a symmetric positive semi-definite operator K, one product at a time.

The recurrences never apply K themselves: the caller applies K once to a block holding the
current vectors of every recurrence side by side (one pass over the genotypes), and hands each
recurrence its columns of the product (:meth:`BlockLanczos.absorb`, :meth:`ProbeLanczos.absorb`).

* :class:`BlockLanczos`: block Lanczos with full re-orthogonalisation from a start block
  ``B = Q₀R₀``; its block tridiagonal ``T`` gives the block Gauss rule of ``Bᵀ f(K) B``.
* :class:`ProbeLanczos`: scalar Lanczos of N probe vectors side by side (local
  re-orthogonalisation, optionally on the projected operator ``(I − UUᵀ) K (I − UUᵀ)``); each
  probe's tridiagonal matrix gives the Gauss rule of ``w_jᵀ f(K) w_j``.

References: G. H. Golub, G. Meurant (2010), *Matrices, Moments and Quadrature with
Applications*, Princeton University Press, chapters 4 and 7.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import eigh, eigh_tridiagonal

#: relative size (to ‖K‖) below which a new Krylov direction is dropped: the Krylov space is
#: exhausted in it (an invariant subspace of K has been found)
RANK_TOL = 1e-10


def colnorm2(W: np.ndarray) -> np.ndarray:
    """Squared Euclidean norm of every column of W."""
    return np.einsum("ij,ij->j", W, W)


def coldot(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Inner product of the matching columns of A and B."""
    return np.einsum("ij,ij->j", A, B)


def rank_revealing_qr(W: np.ndarray, thr: float) -> tuple[np.ndarray, np.ndarray, float]:
    """``W ≈ Q R`` with Q an orthonormal basis of the directions of W with singular value
    above ``thr`` (the others are dropped). R = QᵀW is r x b. Also returns the smallest kept
    singular value (inf if none).

    From the eigendecomposition of the Gram matrix ``WᵀW = E Λ Eᵀ``: the kept directions
    ``W E_r Λ_r^(-1/2)`` are orthonormalised by two rounds of Cholesky QR. Only matrix
    products touch the n rows (no Householder QR of an n-row block, which runs on level-2
    BLAS); singular values are resolved down to ~1e-8 ‖W‖, so a dropped direction is one the
    Krylov space has exhausted, and a kept noisy one is merely an extra orthonormal direction.
    """
    from scipy.linalg import cholesky, solve_triangular

    n, b = W.shape
    if b == 0:
        return np.zeros((n, 0)), np.zeros((0, 0)), float("inf")
    lam, E = eigh(W.T @ W)
    keep = lam > thr ** 2
    if not keep.any():
        return np.zeros((n, 0)), np.zeros((0, b)), float("inf")
    sig = np.sqrt(lam[keep])
    Q = W @ (E[:, keep] / sig)
    for _ in range(2):  # Q ← Q R⁻¹ (R⁻¹ of the small b x b factor, then one product over the rows)
        R = cholesky(Q.T @ Q, lower=False)
        Q = Q @ solve_triangular(R, np.eye(R.shape[0]), lower=False)
    Q = np.ascontiguousarray(Q)
    return Q, Q.T @ W, float(sig.min())


class BlockLanczos:
    """Block Lanczos on K from the start block ``B = Q₀R₀``, with full re-orthogonalisation.

    ``blocks`` holds the orthonormal Krylov basis block by block (``Q₀, Q₁, …``), ``A_list``
    the diagonal blocks ``A_j = Q_jᵀ K Q_j`` and ``B_list`` the sub-diagonal blocks
    (``K Q_j = Q_{j−1} B_{j−1}ᵀ + Q_j A_j + Q_{j+1} B_j``). A rank-revealing QR drops dependent
    directions; a step that finds no new direction has exhausted the Krylov space (``active``
    turns False): the block Gauss rule is then exact.
    """

    def __init__(self, B: np.ndarray):
        # rank-revealing on unit columns, so a column's size does not decide whether it is kept
        norms = np.sqrt(colnorm2(B))
        Q0, Rs, _ = rank_revealing_qr(B / norms, RANK_TOL * 1e2)
        self.R0 = Rs * norms
        self.blocks = [Q0]
        self.A_list: list[np.ndarray] = []
        self.B_list: list[np.ndarray] = []
        self.active = True

    def absorb(self, W: np.ndarray, scale: float) -> None:
        """One step from ``W = K Q_last`` (a float64 copy, modified in place); ``scale`` ≥ ‖K‖
        sets the size below which a direction is dropped."""
        # full re-orthogonalisation against the kept basis (classical Gram–Schmidt, twice)
        C = [np.zeros((Q.shape[1], W.shape[1])) for Q in self.blocks]
        for _ in range(2):
            Cs = [Q.T @ W for Q in self.blocks]
            for Q, Cj, acc in zip(self.blocks, Cs, C):
                W -= Q @ Cj
                acc += Cj
        A = C[-1]
        self.A_list.append(0.5 * (A + A.T))
        Qn, Bn, dmin = rank_revealing_qr(W, RANK_TOL * scale)
        if Qn.shape[1] and dmin < 1e-4 * scale:
            # small new directions: orthogonality to the basis is ~eps·‖K‖/σ; project once more
            for Q in self.blocks:
                Qn -= Q @ (Q.T @ Qn)
            Qn, R2 = np.linalg.qr(Qn)
            Bn = R2 @ Bn
        self.B_list.append(Bn)
        if Qn.shape[1] == 0:
            self.active = False  # the Krylov space is exhausted: the quadrature is exact
        else:
            self.blocks.append(Qn)

    def tridiagonal(self) -> tuple[np.ndarray, np.ndarray]:
        """The symmetric block tridiagonal ``T`` of the completed steps and the block offsets."""
        tb = len(self.A_list)
        sizes = [Q.shape[1] for Q in self.blocks[:tb]]
        off = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        M = int(off[-1])
        T = np.zeros((M, M))
        for j in range(tb):
            T[off[j]:off[j + 1], off[j]:off[j + 1]] = self.A_list[j]
            if j + 1 < tb:
                Bm = self.B_list[j]
                T[off[j + 1]:off[j + 2], off[j]:off[j + 1]] = Bm
                T[off[j]:off[j + 1], off[j + 1]:off[j + 2]] = Bm.T
        return T, off

    def export(self) -> tuple[np.ndarray, np.ndarray, dict]:
        """The checkpoint form: the basis side by side, the lower block triangle of ``T`` over
        every kept block, and the block sizes and counts."""
        sizes = [Q.shape[1] for Q in self.blocks]
        tot = sum(sizes)
        T = np.zeros((tot, tot))
        off = np.concatenate([[0], np.cumsum(sizes)])
        for j, A in enumerate(self.A_list):
            T[off[j]:off[j + 1], off[j]:off[j + 1]] = A
        for j, Bm in enumerate(self.B_list):
            if Bm.shape[0]:
                T[off[j + 1]:off[j + 2], off[j]:off[j + 1]] = Bm
        return np.hstack(self.blocks), T, {"sizes": sizes, "n_A": len(self.A_list), "n_B": len(self.B_list)}

    def restore(self, basis: np.ndarray, T: np.ndarray, meta: dict) -> None:
        """Back to the state :meth:`export` wrote (``meta`` with "sizes", "n_A", "n_B",
        "block_active")."""
        sizes = meta["sizes"]
        off = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.blocks = [np.ascontiguousarray(basis[:, off[j]:off[j + 1]]) for j in range(len(sizes))]
        self.A_list = [T[off[j]:off[j + 1], off[j]:off[j + 1]].copy() for j in range(meta["n_A"])]
        self.B_list = []
        for j in range(meta["n_B"]):
            if j + 1 < len(sizes):
                self.B_list.append(T[off[j + 1]:off[j + 2], off[j]:off[j + 1]].copy())
            else:  # the exhausted last step: no new block
                self.B_list.append(np.zeros((0, sizes[j])))
        self.active = bool(meta["block_active"])


class ProbeLanczos:
    """Scalar Lanczos of the N columns of ``w`` side by side, on K or on ``(I − UUᵀ)K(I − UUᵀ)``.

    Local re-orthogonalisation against the last two Lanczos vectors (finite-precision loss of
    orthogonality is benign for Gauss quadrature). ``alpha``, ``beta`` (N x steps) hold each
    probe's tridiagonal matrix, ``plen`` its length; a probe stops when its next ``β`` is below
    ``RANK_TOL · scale`` or its length reaches the dimension ``n_perp`` of the space.
    ``kq2`` keeps ``‖K q₁‖²`` of the first product (for ``tr K²``).
    """

    def __init__(self, w: np.ndarray, n_perp: int):
        N = w.shape[1]
        self.N = N
        self.n_perp = n_perp
        self.wn2 = colnorm2(w)
        self.pq_cur = w / np.sqrt(np.where(self.wn2 > 0, self.wn2, 1.0))
        self.pq_prev = np.zeros_like(self.pq_cur)
        self.alpha = np.zeros((N, 0))
        self.beta = np.zeros((N, 0))
        self.plen = np.zeros(N, dtype=np.int64)
        self.pactive = self.wn2 > 0
        self.kq2 = np.zeros(N)

    def current(self) -> np.ndarray:
        """The current Lanczos vectors of the active probes (the columns K is applied to)."""
        return self.pq_cur[:, np.flatnonzero(self.pactive)]

    def absorb(self, W: np.ndarray, nrm2: np.ndarray, U, scale: float, first: bool) -> None:
        """One step from ``W = K q`` of the active probes (a float64 copy, modified in place) with
        its squared column norms ``nrm2``; ``U`` the deflation basis or None."""
        act = np.flatnonzero(self.pactive)
        if first:
            self.kq2[act] = nrm2
        q = self.pq_cur[:, act]
        qp = self.pq_prev[:, act]
        bprev = np.array([self.beta[j, self.plen[j] - 1] if self.plen[j] else 0.0 for j in act])
        if U is not None:
            W -= U @ (U.T @ W)
        a = coldot(q, W)
        W -= q * a + qp * bprev
        # local re-orthogonalisation against the last two Lanczos vectors
        d1 = coldot(q, W)
        W -= q * d1
        a += d1
        d2 = coldot(qp, W)
        W -= qp * d2
        if U is not None:
            W -= U @ (U.T @ W)
        b = np.sqrt(colnorm2(W))
        self._append(act, a, b)
        done = (b <= RANK_TOL * scale) | (self.plen[act] >= self.n_perp)
        self.pq_prev[:, act] = q
        go = act[~done]
        self.pq_cur[:, go] = W[:, ~done] / b[~done]
        self.pactive[act[done]] = False

    def _append(self, act: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        """Append this step's α and β of the active probes (zeros for the others)."""
        N = self.N
        acol = np.zeros((N, 1))
        bcol = np.zeros((N, 1))
        acol[act, 0] = a
        bcol[act, 0] = b
        self.alpha = np.hstack([self.alpha, acol])
        self.beta = np.hstack([self.beta, bcol])
        self.plen[act] += 1

    def gauss_rules(self) -> tuple[np.ndarray, np.ndarray]:
        """Nodes and weights (N x max length, zero-padded) of every probe's Gauss rule:
        ``w_jᵀ f(K) w_j ≈ Σ_k weights_jk f(nodes_jk)`` (nodes clipped at 0: K is PSD)."""
        N = self.N
        L = int(self.plen.max(initial=0))
        nodes = np.zeros((N, max(L, 1)))
        weights = np.zeros((N, max(L, 1)))
        for j in range(N):
            t = int(self.plen[j])
            if t == 0:
                continue
            a = self.alpha[j, :t]
            b = self.beta[j, :t - 1]
            if t == 1:
                lam, vec = a.copy(), np.ones((1, 1))
            else:
                lam, vec = eigh_tridiagonal(a, b)
            nodes[j, :t] = np.maximum(lam, 0.0)
            weights[j, :t] = self.wn2[j] * vec[0] ** 2
        return nodes, weights

    def export(self) -> dict:
        """The recurrences' arrays, as the checkpoint stores them."""
        return {"pq_prev": self.pq_prev, "pq_cur": self.pq_cur, "alpha": self.alpha, "beta": self.beta,
                "plen": self.plen, "pactive": self.pactive, "kq2": self.kq2}

    def restore(self, arrays: dict) -> None:
        """Back to the state :meth:`export` wrote (``wn2`` is recomputed from the seeded probes)."""
        for k in ("pq_prev", "pq_cur", "alpha", "beta", "kq2"):
            setattr(self, k, np.array(arrays[k], dtype=np.float64))
        self.plen = np.array(arrays["plen"], dtype=np.int64)
        self.pactive = np.array(arrays["pactive"], dtype=bool)
