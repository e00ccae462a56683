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
        self.X[:, cols] += D * alpha
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
