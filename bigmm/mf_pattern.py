"""One missing-value pattern of the matrix-free REML: its recurrences on ``K_oo``.

The phenotypes with the same observed samples share one pattern. Every vector lives in the
coordinates of those n_o samples; the operator is ``K_oo``, applied as ``(K [v; 0])_o`` so
that every pattern shares one pass. A pattern holds

* the block Lanczos recurrence of its ``[Z_o, Ỹ_o]`` block (:class:`bigmm.lanczos.BlockLanczos`);
* the deflation vectors on its samples (:class:`PatternDeflation`);
* the Lanczos recurrences of its log det probes (:class:`bigmm.lanczos.ProbeLanczos`);
* the first-pass moments (``tr K``, ``1ᵀK1``, the Haseman–Elston estimate, :func:`haseman_elston`);

and writes and reads its part of the checkpoint (:meth:`Pattern.export`, :meth:`Pattern.restore`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import eigh

from .lanczos import BlockLanczos, ProbeLanczos, colnorm2


class PatternDeflation:
    """The deflation vectors U on one pattern's observed samples.

    With every sample observed, U itself with its Rayleigh values ``s`` and the coupling
    ``‖(I − UUᵀ)KU‖_F`` given by the caller. With missing samples, an orthonormal basis of U's
    observed rows whose Rayleigh matrix (hence ``s``, the coupling and ``‖KU‖²_F``) comes from
    the first pass (:meth:`rayleigh`; ``need_rayleigh``). ``U`` is None without deflation.
    """

    def __init__(self, deflation, idx: np.ndarray, full: bool):
        self.U = None
        self.s = None
        self.need_rayleigh = False
        self.coupling = float("nan")
        self.KU2 = 0.0  # ‖K U‖²_F (for tr K² of the Haseman–Elston estimate)
        if deflation is None:
            return
        U, s, cross = deflation
        if full:
            self.U, self.s = U, s
            self.coupling = float(math.sqrt(np.sum(cross))) if cross is not None else float("nan")
            self.KU2 = float(np.sum(s ** 2) + (np.sum(cross) if cross is not None else 0.0))
            return
        # orthonormal basis of U's observed rows; its Rayleigh matrix from the first pass
        Uo = U[idx]
        lam, E = eigh(Uo.T @ Uo)
        keep = lam > 1e-10 * max(float(lam.max(initial=0.0)), 1e-300)
        Ud = Uo @ (E[:, keep] / np.sqrt(lam[keep]))
        Ud, _ = np.linalg.qr(Ud)  # one more round: orthonormal to working precision
        self.U = np.ascontiguousarray(Ud)
        self.need_rayleigh = True

    @property
    def k(self) -> int:
        """The number of deflation vectors on this pattern."""
        return 0 if self.U is None else self.U.shape[1]

    def project_out(self, v: np.ndarray) -> np.ndarray:
        """``(I − UUᵀ) v`` in place, twice (orthogonal to U to working precision)."""
        for _ in range(2):
            v -= self.U @ (self.U.T @ v)
        return v

    def rayleigh(self, KU: np.ndarray) -> float:
        """Rotate U to the eigenvectors of its Rayleigh matrix ``UᵀKU`` (from ``KU``, the first
        pass), setting ``s``, the coupling and ``‖KU‖²_F``; returns ``max |s|``."""
        S = self.U.T @ KU
        s, E = eigh(0.5 * (S + S.T))
        self.U = np.ascontiguousarray(self.U @ E)
        KU = KU @ E
        self.s = np.maximum(s, 0.0)  # K is positive semi-definite
        C = KU - self.U * s
        C -= self.U @ (self.U.T @ C)
        self.coupling = float(np.sqrt(np.sum(C * C)))
        self.KU2 = float(np.sum(KU * KU))
        return float(np.abs(s).max(initial=0.0))


def haseman_elston(BKB: np.ndarray, KZ: np.ndarray, ZtZ: np.ndarray, yy: np.ndarray, trK: float,
                   trK2: float, n_obs: int):
    """σ²_g, σ²_e, h² of every phenotype by Haseman–Elston regression.

    With ``P = I − Z(ZᵀZ)⁻¹Zᵀ`` and ``ỹ = Py``, solves
    ``[[tr(PKPK), tr(PK)], [tr(PK), n − c]] [σ²_g, σ²_e]ᵀ = [ỹᵀKỹ, ỹᵀỹ]ᵀ`` (the least-squares fit
    of ``ỹỹᵀ`` by ``σ²_g PKP + σ²_e P``). ``BKB = [Z, Ỹ]ᵀK[Z, Ỹ]`` ((c + m) square), ``KZ = K Z``,
    ``yy = ‖ỹ‖²``; ``tr K`` and ``tr K²`` as known. NaN where the system is singular.
    """
    c = ZtZ.shape[0]
    m = BKB.shape[0] - c
    ZKZ = BKB[:c, :c]
    ZK2Z = KZ.T @ KZ
    yKy = np.diag(BKB)[c:]
    G = np.linalg.solve(ZtZ, ZKZ)
    trPK = trK - float(np.trace(G))
    trPKPK = trK2 - 2.0 * float(np.trace(np.linalg.solve(ZtZ, ZK2Z))) + float(np.sum(G * G.T))
    nc = n_obs - c
    det = trPKPK * nc - trPK ** 2
    if det > 0:
        sg = (nc * yKy - trPK * yy) / det
        se = (trPKPK * yy - trPK * yKy) / det
        with np.errstate(divide="ignore", invalid="ignore"):
            h = sg / (sg + se)
    else:
        sg = se = h = np.full(m, np.nan)
    return sg, se, h


class Pattern:
    """The phenotypes sharing one pattern of missing values, and their Lanczos recurrences.

    ``Zo``, ``Yo``: the fixed effects and the phenotypes' OLS residuals on the observed samples
    ``obs``; ``shift``: the OLS coefficients removed from Y (c x m), added back to ω̂.
    """

    def __init__(self, gi: int, cols: list, names: list, obs: np.ndarray, Zo: np.ndarray,
                 Yo: np.ndarray, shift: np.ndarray, deflation, n_probes: int, seed: int):
        self.gi = gi
        self.cols = list(cols)
        self.names = list(names)
        self.obs = obs
        self.idx = np.flatnonzero(obs)
        self.full = bool(obs.all())
        self.n_obs = int(self.idx.size)
        self.c = Zo.shape[1]
        self.m = len(cols)
        self.shift = shift
        self.ZtZ = Zo.T @ Zo
        self.yy = colnorm2(Yo)  # ‖ỹ‖² of the OLS residuals
        self.block = BlockLanczos(np.hstack([Zo, Yo]))
        self.R0 = self.block.R0
        self.defl = PatternDeflation(deflation, self.idx, self.full)
        self.k = self.defl.k
        self.n_perp = self.n_obs - self.k
        self.seed = seed
        self.probes = ProbeLanczos(self._projected_probes(n_probes if self.n_perp > 0 else 0), self.n_perp)
        self.N = self.probes.N
        # first-pass quantities
        self.trK = float("nan")
        self.sumK = float("nan")
        self.he = (float("nan"), float("nan"), float("nan"))
        self.scale = 0.0
        #: (θ, deviations) of the Ritz control variate of the previous step's model
        self.prev_ritz = None

    def probe_vectors(self, N: int) -> np.ndarray:
        """The Rademacher probe vectors (n_o x N) of this pattern, before projection (seeded)."""
        return np.random.default_rng([self.seed, 1, self.gi]).choice(np.array([-1.0, 1.0]), size=(self.n_obs, N))

    def _projected_probes(self, N: int) -> np.ndarray:
        """The probe vectors projected on the complement of the deflation vectors."""
        v = self.probe_vectors(N)
        if self.defl.U is not None and N:
            self.defl.project_out(v)
        return v

    @property
    def active(self) -> bool:
        """Whether any recurrence of the pattern still needs a product."""
        return self.block.active or bool(self.probes.pactive.any())

    def pieces(self, step: int) -> list:
        """The (key, columns) this pattern puts into the pass of ``step``."""
        out = []
        if self.block.active:
            out.append(("block", self.block.blocks[-1]))
        if self.probes.pactive.any():
            out.append(("probes", self.probes.current()))
        if step == 1:
            out.append(("ones", np.ones((self.n_obs, 1))))
            if self.defl.need_rayleigh and self.k:
                out.append(("ud", self.defl.U))
        return out

    def absorb(self, step: int, prods: dict, diag) -> None:
        """Advance every recurrence with the products of this step's pass."""
        if step == 1:
            if diag is not None:
                self.trK = float(np.sum(diag[self.idx]))
                self.scale = max(self.scale, self.trK / self.n_obs)
            self.sumK = float(prods["ones"].sum())
            if "ud" in prods:
                self.scale = max(self.scale, self.defl.rayleigh(prods["ud"]))
        if "block" in prods:
            W = np.array(prods["block"], dtype=np.float64, copy=True)
            self.scale = max(self.scale, float(np.sqrt(colnorm2(W).max(initial=0.0))))
            if step == 1:
                self._KQ0 = W.copy()
            self.block.absorb(W, self.scale)
        if "probes" in prods:
            W = np.array(prods["probes"], dtype=np.float64, copy=True)
            nrm2 = colnorm2(W)
            self.scale = max(self.scale, float(np.sqrt(nrm2.max(initial=0.0))))
            self.probes.absorb(W, nrm2, self.defl.U, self.scale, step == 1)
        if step == 1:
            self._haseman_elston()

    def _haseman_elston(self) -> None:
        """The Haseman–Elston estimate from the first products of the block and the probes."""
        KQ = self._KQ0
        del self._KQ0
        R0 = self.R0
        BKB = R0.T @ (self.block.blocks[0].T @ KQ) @ R0
        BKB = 0.5 * (BKB + BKB.T)
        KZ = KQ @ R0[:, :self.c]
        trK = self.trK
        p = self.probes
        if not np.isfinite(trK):  # no diagonal from the operator: Hutchinson
            trK = float(np.sum(self.defl.s) if self.defl.s is not None else 0.0)
            if self.N:
                trK += float(np.mean(p.wn2 * p.alpha[:, 0]))
        trK2 = self.defl.KU2 + (float(np.mean(p.wn2 * p.kq2)) if self.N else 0.0)
        self.he = haseman_elston(BKB, KZ, self.ZtZ, self.yy, trK, trK2, self.n_obs)

    # ---- checkpoint state (the layout of STATE_VERSION 1: keys g{i}_…)
    def export(self) -> tuple[dict, dict]:
        """This pattern's arrays and JSON-able metadata for the checkpoint."""
        p = f"g{self.gi}_"
        basis, T, bmeta = self.block.export()
        arrays = {p + "basis": basis, p + "T": T}
        arrays.update({p + k: v for k, v in self.probes.export().items()})
        arrays[p + "he"] = np.array([np.asarray(x, dtype=float) for x in self.he]).reshape(3, self.m)
        if self.defl.U is not None:
            arrays[p + "Ud"] = self.defl.U
            arrays[p + "sd"] = np.asarray(self.defl.s, dtype=float)
        if self.prev_ritz is not None:
            arrays[p + "ritz_theta"], arrays[p + "ritz_dev"] = self.prev_ritz
        meta = {**bmeta, "block_active": self.block.active, "scale": self.scale, "trK": self.trK,
                "sumK": self.sumK, "coupling": self.defl.coupling, "KU2": self.defl.KU2}
        return arrays, meta

    def restore(self, arrays: dict, meta: dict) -> None:
        """Back to the state :meth:`export` wrote."""
        p = f"g{self.gi}_"
        self.block.restore(np.asarray(arrays[p + "basis"]), np.asarray(arrays[p + "T"]), meta)
        self.probes.restore({k: arrays[p + k] for k in ("pq_prev", "pq_cur", "alpha", "beta", "plen",
                                                         "pactive", "kq2")})
        he = np.array(arrays[p + "he"], dtype=np.float64)
        self.he = (he[0], he[1], he[2])
        if p + "Ud" in arrays:
            self.defl.U = np.ascontiguousarray(arrays[p + "Ud"], dtype=np.float64)
            self.defl.s = np.array(arrays[p + "sd"], dtype=np.float64)
        if p + "ritz_theta" in arrays:
            self.prev_ritz = (np.array(arrays[p + "ritz_theta"], dtype=np.float64),
                              np.array(arrays[p + "ritz_dev"], dtype=np.float64))
        for k in ("scale", "trK", "sumK"):
            setattr(self, k, float(meta[k]))
        self.defl.coupling = float(meta["coupling"])
        self.defl.KU2 = float(meta["KU2"])
