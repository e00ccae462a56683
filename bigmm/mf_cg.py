"""Conjugate gradients on ``V = Σ_j θ_j K_j + θ_e I`` for many right-hand sides, one pass per step.

Each column of a :class:`CGSystem` runs its own CG recurrence (its own α and β), and every
column of every system that is still short of its tolerance puts its search direction ``d`` into
the same pass. The pass returns ``K_j d`` for every j, from which ``V d`` follows for any θ and
``K_j x`` is accumulated alongside x (``K_j x += α K_j d``): the solution's products with every
K_j come without a further pass, and a warm start at a new θ needs no pass either
(``r₀ = b − Σ_j θ_j K_j x₀ − θ_e x₀``).
"""

from __future__ import annotations

import numpy as np


class IndefiniteError(ArithmeticError):
    """A CG step met ``dᵀVd ≤ 0``: V is not positive definite at this θ."""


class CGSystem:
    """CG recurrences of one phenotype: ``V x = b`` for every column of ``B`` (n_o x w).

    State: ``X`` the solutions, ``KX`` (m, n_o, w) their products with each K_j, ``R`` the
    residuals, ``D`` the search directions, ``rr = ‖r‖²`` and ``active`` (columns above the
    tolerance).
    """

    KEYS = ("B", "X", "KX", "R", "D", "rr", "active", "theta", "steps")

    def __init__(self, B: np.ndarray, m: int):
        self.B = np.array(B, dtype=np.float64)
        n, w = self.B.shape
        self.X = np.zeros((n, w))
        self.KX = np.zeros((m, n, w))
        self.R = self.B.copy()
        self.D = self.B.copy()
        self.rr = np.einsum("ij,ij->j", self.R, self.R)
        self.active = np.ones(w, dtype=bool)
        self.theta = np.zeros(m + 1)
        self.steps = np.zeros(1, dtype=np.int64)

    def restart(self, theta: np.ndarray, B: np.ndarray | None, tol: float) -> None:
        """Warm start at a new θ (and new right-hand sides ``B``) from the current solutions."""
        self.theta = np.asarray(theta, dtype=np.float64).copy()
        if B is not None:
            self.B = np.array(B, dtype=np.float64)
        self.R = self.B - self.vx(self.X, self.KX)
        self.D = self.R.copy()
        self.rr = np.einsum("ij,ij->j", self.R, self.R)
        self.steps[0] = 0
        self._mark(tol)

    def vx(self, X: np.ndarray, KX: np.ndarray) -> np.ndarray:
        """``V x`` from x and its products ``K_j x``."""
        return np.tensordot(self.theta[:-1], KX, axes=1) + self.theta[-1] * X

    def _mark(self, tol: float) -> None:
        bn2 = np.einsum("ij,ij->j", self.B, self.B)
        self.active = self.rr > (tol * tol) * np.where(bn2 > 0, bn2, 1.0)

    def residual(self) -> float:
        """The largest relative residual ``‖r‖ / ‖b‖`` over the columns."""
        bn2 = np.einsum("ij,ij->j", self.B, self.B)
        return float(np.sqrt(np.max(self.rr / np.where(bn2 > 0, bn2, 1.0), initial=0.0)))

    def directions(self) -> np.ndarray:
        """The search directions of the active columns (n_o x a), for the next pass."""
        return self.D[:, self.active]

    def absorb(self, KD: np.ndarray, tol: float) -> None:
        """One CG step of every active column from ``K_j d`` (m, n_o, a) of this pass."""
        cols = np.flatnonzero(self.active)
        D = self.D[:, cols]
        VD = np.tensordot(self.theta[:-1], KD, axes=1) + self.theta[-1] * D
        dVd = np.einsum("ij,ij->j", D, VD)
        if not np.all(dVd > 0):
            raise IndefiniteError("dᵀVd ≤ 0")
        alpha = self.rr[cols] / dVd
        self._last_alpha = alpha
        self.X[:, cols] += D * alpha
        if self.KX.shape[2]:  # a LanczosCG keeps no K_j x
            self.KX[:, :, cols] += KD * alpha
        R = self.R[:, cols] - VD * alpha
        rr = np.einsum("ij,ij->j", R, R)
        beta = rr / self.rr[cols]
        self.R[:, cols] = R
        self.D[:, cols] = R + D * beta
        self.rr[cols] = rr
        self.steps[0] += 1
        self._mark(tol)

    def export(self, prefix: str) -> dict:
        return {prefix + k: getattr(self, k) for k in self.KEYS}

    @classmethod
    def restore(cls, arrays, prefix: str) -> "CGSystem":
        self = cls.__new__(cls)
        for k in cls.KEYS:
            setattr(self, k, np.array(arrays[prefix + k]))
        return self


class LanczosCG(CGSystem):
    """Cold-started CG (x₀ = 0) that records each column's α and β: CG from zero on ``b`` is the
    Lanczos process on V started at ``b / ‖b‖``, with the tridiagonal

        T[s, s] = 1/α_s + β_{s−1}/α_{s−1},    T[s, s+1] = √β_s / α_s

    (Golub & Meurant 2010, §3.5), so ``bᵀ f(V) b ≈ ‖b‖² e₁ᵀ f(T) e₁`` (Gauss quadrature) for any f
    after any number of steps. Columns listed in ``quadrature`` also stop when their quadrature of
    f changes by less than ``quad_tol`` in one step (besides the residual rule of CG).

    State beyond :class:`CGSystem`'s: ``LA``, ``LB`` (steps x w, NaN after a column stopped),
    ``quad`` (each column's last quadrature, NaN for others) and ``stopped``; ``KX`` is empty
    (a cold solve is never restarted, so ``K_j x`` is not kept).
    """

    KEYS = CGSystem.KEYS + ("LA", "LB", "quad", "stopped", "qcols")

    def __init__(self, B: np.ndarray, m: int, theta: np.ndarray, quadrature: np.ndarray):
        super().__init__(B, m)
        w = self.B.shape[1]
        self.LA = np.zeros((0, w))
        self.LB = np.zeros((0, w))
        self.quad = np.full(w, np.nan)
        self.stopped = np.zeros(w, dtype=bool)
        self.qcols = np.zeros(w, dtype=bool)
        self.qcols[quadrature] = True
        self.theta = np.asarray(theta, dtype=np.float64).copy()
        self.KX = np.zeros((m, self.B.shape[0], 0))  # never restarted: K_j x is not needed

    def _mark(self, tol: float) -> None:
        super()._mark(tol)
        self.active &= ~self.stopped

    def absorb_quadrature(self, KD: np.ndarray, tol: float, f, quad_tol: float) -> None:
        """One CG step of every active column (recording α, β), then the quadrature test."""
        cols = np.flatnonzero(self.active)
        rr0 = self.rr[cols].copy()
        self.absorb(KD, tol)
        a, b = np.full(self.B.shape[1], np.nan), np.full(self.B.shape[1], np.nan)
        a[cols] = self._last_alpha  # α = ‖r‖² / dᵀVd of this step (absorb keeps it)
        b[cols] = self.rr[cols] / rr0
        self.LA = np.vstack([self.LA, a[None]])
        self.LB = np.vstack([self.LB, b[None]])
        for i in cols[self.qcols[cols]]:
            qi = self.quadrature(i, f)
            if abs(qi - self.quad[i]) < quad_tol or not np.isfinite(qi):
                self.stopped[i] = True
            self.quad[i] = qi
        self.active &= ~self.stopped

    def tridiagonal(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(diagonal, off-diagonal) of column i's Lanczos T from its recorded α, β."""
        a = self.LA[:, i]
        b = self.LB[:, i]
        k = int(np.count_nonzero(np.isfinite(a)))
        a, b = a[:k], b[:k]
        d = 1.0 / a
        d[1:] += b[:-1] / a[:-1]
        e = np.sqrt(np.maximum(b[:-1], 0.0)) / a[:-1]
        return d, e

    def quadrature(self, i: int, f) -> float:
        """``b_iᵀ f(V) b_i`` by the Gauss rule of the steps so far: ‖b_i‖² Σ_k τ_k² f(λ_k)."""
        from scipy.linalg import eigh_tridiagonal

        d, e = self.tridiagonal(i)
        if d.size == 0:
            return float("nan")
        lam, U = eigh_tridiagonal(d, e)
        bn2 = float(self.B[:, i] @ self.B[:, i])
        return bn2 * float(U[0] ** 2 @ f(lam))
