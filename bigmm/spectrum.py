"""Spectra of the GRM: ``K = U diag(s) Uᵀ`` (exact) or its top-k part plus a tail.

A :class:`Spectrum` is what REML needs: eigenvectors ``U`` (n x k), eigenvalues
``s`` (k, descending), ``tr K`` and, when ``k < n``, the tail eigenvalue
``λ̄ = (tr K − Σ s) / (n − k)`` shared by the remaining directions
(DESIGN.md §2 "Low rank").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Spectrum:
    """Eigenpairs of a GRM over ``n`` samples.

    Attributes
    ----------
    U : (n, k) ndarray
        Orthonormal eigenvectors, columns ordered by decreasing eigenvalue.
    s : (k,) ndarray
        Eigenvalues, descending, clipped at 0 (K is positive semi-definite).
    n : int
    trace_K : float
        ``tr K`` (needed for the tail when ``k < n``).
    diag_K : (n,) ndarray or None
        The diagonal of K (for ``mean_diag_K`` and ``pve`` on sample subsets).
    method : str
        "exact" or "randomized".
    rank : int
        Numerical rank of K (eigenvalues above ``n · eps · max(s)``).
    diagnostics : dict
    """

    U: np.ndarray
    s: np.ndarray
    n: int
    trace_K: float
    diag_K: np.ndarray | None = None
    method: str = "exact"
    rank: int = 0
    diagnostics: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.s.shape[0])

    @property
    def n_tail(self) -> int:
        return self.n - self.k

    @property
    def tail(self) -> float:
        """``λ̄``, the eigenvalue shared by the n − k directions not in U."""
        if self.n_tail == 0:
            return 0.0
        return max(0.0, (self.trace_K - float(self.s.sum())) / self.n_tail)

    def subset(self, rows: np.ndarray) -> "Spectrum":
        """Spectrum of ``K[rows][:, rows]`` by a new eigendecomposition (exact spectra only)."""
        if self.n_tail:
            raise ValueError("a reduced spectrum cannot be restricted to a subset exactly")
        Ur = self.U[rows]
        K = (Ur * self.s) @ Ur.T
        return exact_spectrum(K)


def exact_spectrum(K: np.ndarray) -> Spectrum:
    """All eigenpairs of a symmetric GRM by ``scipy.linalg.eigh`` (LAPACK syevd).

    Cost: O(n³) flops and 2 n² doubles of memory (K and U).
    """
    from scipy.linalg import eigh

    K = np.asarray(K, dtype=np.float64)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"K must be square, got shape {K.shape}")
    n = K.shape[0]
    diag = np.diag(K).copy()
    trace = float(diag.sum())
    s, U = eigh(K, driver="evd", check_finite=True)
    s = s[::-1].copy()
    U = np.ascontiguousarray(U[:, ::-1])
    smin = float(s[-1])
    tol = n * np.finfo(float).eps * max(float(s[0]), 0.0)
    rank = int((s > tol).sum())
    np.maximum(s, 0.0, out=s)
    return Spectrum(U=U, s=s, n=n, trace_K=trace, diag_K=diag, method="exact", rank=rank,
                    diagnostics={"min_eigenvalue_before_clip": smin})
