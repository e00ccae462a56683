"""Bivariate REML results: one pair's estimates (:class:`BivariateFit`, its GCTA-style ``.hsq``
text) and the fits of several pairs (:class:`BivariateResult`), with the delta-method SEs of
h², r_g, r_e and the phenotypic correlation (:func:`_ratios`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .bivariate_likelihood import LOG2PI, PARAMS
from .results import _num, _pandas


@dataclass(frozen=True)
class BivariateFit:
    """Bivariate REML estimates of one pair of phenotypes (docs/math.md, "Bivariate REML").

    Variances and covariances are on the scale of K (GCTA's V(G)_tr1 ...); ``h2_*`` = σ²_g / Vp;
    ``rg`` = cov_g / √(σ²_g,a σ²_g,b), ``re`` likewise for E₀, ``rp`` the phenotypic correlation
    (cov_g + cov_e) / √(Vp_a Vp_b). SEs from the inverse AI matrix at the estimate, delta method
    for ratios. ``lrt_rg0`` = 2 (ℓ − ℓ|cov_g = 0), p-value from χ²₁; ``lrt_rg1`` = 2 (ℓ − ℓ|r_g = ±1,
    the sign of the estimate), p-value from ½χ²₀ + ½χ²₁ (|r_g| = 1 is the boundary of the
    parameter space; GCTA's ``--reml-bivar-lrt-rg``).
    """

    table_columns = ("trait_a", "trait_b", "n", "n_left_out", "sg_a", "sg_a_se", "sg_b", "sg_b_se", "cov_g",
                     "cov_g_se", "ve_a", "ve_a_se", "ve_b", "ve_b_se", "cov_e", "cov_e_se", "h2_a", "h2_a_se",
                     "h2_b", "h2_b_se", "rg", "rg_se", "re", "re_se", "rp", "rp_se", "logL", "logL_rg0",
                     "lrt_rg0", "p_rg0", "logL_rg1", "lrt_rg1", "p_rg1", "logL_ml", "boundary", "converged",
                     "iterations")

    trait_a: str
    trait_b: str
    n: int
    n_left_out: int
    sg_a: float
    sg_b: float
    cov_g: float
    ve_a: float
    ve_b: float
    cov_e: float
    #: covariance of the six estimates (PARAMS order), inverse AI matrix
    covariance: tuple
    h2_a: float
    h2_a_se: float
    h2_b: float
    h2_b_se: float
    rg: float
    rg_se: float
    re: float
    re_se: float
    rp: float
    rp_se: float
    logL: float
    logL_rg0: float
    lrt_rg0: float
    p_rg0: float
    logL_rg1: float
    lrt_rg1: float
    p_rg1: float
    boundary: str  # "", "rank-1 G0" (|r_g| = 1 or a zero genetic variance at the constraint)
    #: the ML log-likelihood at its maximum (same constraint) and the ML estimates (PARAMS order)
    logL_ml: float
    ml_estimates: tuple
    converged: bool
    iterations: int
    constrained: bool
    fixed_effects: tuple  # ((name, beta_a, se_a, beta_b, se_b), ...)
    note: str = ""
    #: stacked observations (GCTA's n): 2n on the common samples, n_a + n_b with samples="union"
    n_observations: int = 0

    def _se(self, i: int) -> float:
        v = self.covariance[i][i]
        return float(math.sqrt(v)) if v is not None and np.isfinite(v) and v >= 0 else float("nan")

    @property
    def sg_a_se(self): return self._se(0)  # noqa: E704
    @property
    def sg_b_se(self): return self._se(1)  # noqa: E704
    @property
    def cov_g_se(self): return self._se(2)  # noqa: E704
    @property
    def ve_a_se(self): return self._se(3)  # noqa: E704
    @property
    def ve_b_se(self): return self._se(4)  # noqa: E704
    @property
    def cov_e_se(self): return self._se(5)  # noqa: E704

    @property
    def G0(self) -> np.ndarray:
        return np.array([[self.sg_a, self.cov_g], [self.cov_g, self.sg_b]])

    @property
    def E0(self) -> np.ndarray:
        return np.array([[self.ve_a, self.cov_e], [self.cov_e, self.ve_b]])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["covariance"] = [[_json(v) for v in row] for row in self.covariance]
        d["fixed_effects"] = [[_json(v) for v in fe] for fe in self.fixed_effects]
        d["ml_estimates"] = [_json(v) for v in self.ml_estimates]
        return {k: (_json(v) if isinstance(v, float) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "BivariateFit":
        d = dict(d)
        d["covariance"] = tuple(tuple(float("nan") if v is None else v for v in row) for row in d["covariance"])
        d["fixed_effects"] = tuple(tuple(float("nan") if v is None else v for v in fe) for fe in d["fixed_effects"])
        d["ml_estimates"] = tuple(float("nan") if v is None else v for v in d["ml_estimates"])
        return cls(**{k: (float("nan") if v is None else v) for k, v in d.items()})

    def row(self) -> list:
        return [getattr(self, c) for c in self.table_columns]

    def hsq_text(self) -> str:
        """GCTA's ``.hsq`` of ``--reml-bivar`` for this pair (its rows, order and 6 decimals), with
        both LRTs (GCTA writes the one of ``--reml-bivar-lrt-rg``).

        logL in GCTA's convention: bigmm's ``logL`` plus ``(N − 2c)/2 · log 2π`` with N = 2n
        stacked observations (GCTA leaves out the constant). GCTA prints ½ P(χ²₁ > LRT) for any
        fixed r_g ("one-tailed test"); here r_g = 0 is interior and its p-value is P(χ²₁ > LRT).
        """
        c = len(self.fixed_effects)
        n_obs = self.n_observations or 2 * self.n
        shift = 0.5 * (n_obs - 2 * c) * LOG2PI
        vp_a, vp_b = self.sg_a + self.ve_a, self.sg_b + self.ve_b
        cov = np.array(self.covariance, dtype=float)
        se_vp_a = _delta_se(np.array([1, 0, 0, 1, 0, 0.0]), cov)
        se_vp_b = _delta_se(np.array([0, 1, 0, 0, 1, 0.0]), cov)

        def f(v):
            return "NA" if v is None or not np.isfinite(v) else f"{v:.6f}"

        rows = [("Source", "Variance", "SE")]
        for name, i in (("V(G)_tr1", 0), ("V(G)_tr2", 1), ("C(G)_tr12", 2), ("V(e)_tr1", 3), ("V(e)_tr2", 4),
                        ("C(e)_tr12", 5)):
            rows.append((name, f(getattr(self, PARAMS[i])), f(self._se(i))))
        rows += [("Vp_tr1", f(vp_a), f(se_vp_a)), ("Vp_tr2", f(vp_b), f(se_vp_b)),
                 ("V(G)/Vp_tr1", f(self.h2_a), f(self.h2_a_se)), ("V(G)/Vp_tr2", f(self.h2_b), f(self.h2_b_se)),
                 ("rG", f(self.rg), f(self.rg_se)),
                 ("logL", f"{self.logL + shift:.3f}" if np.isfinite(self.logL) else "NA")]
        for fixed, ll0, lrt, p, tail in ((0, self.logL_rg0, self.lrt_rg0, self.p_rg0, "two-tailed test"),
                                         (1 if not self.rg < 0 else -1, self.logL_rg1, self.lrt_rg1, self.p_rg1,
                                          "one-tailed test")):
            if not np.isfinite(lrt):
                continue
            rows += [("logL0", f"{ll0 + shift:.3f} (when rG fixed at {fixed})"), ("LRT", f"{lrt:.3f}"), ("df", "1"),
                     ("Pval", f"{p:.4e} ({tail})")]
        rows.append(("n", str(n_obs)))
        text = "\n".join("\t".join(r) for r in rows) + "\n"
        return text + (f"# bigmm: {self.trait_a} (tr1) and {self.trait_b} (tr2) on {self.n} samples; "
                       "logL in GCTA's convention (bigmm's logL + (N - 2c)/2 log(2 pi), N = n below, the "
                       "stacked observations)\n")


def _json(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def _delta_se(grad, cov) -> float:
    with np.errstate(invalid="ignore"):
        v = float(grad @ cov @ grad)
    return math.sqrt(v) if np.isfinite(v) and v >= 0 else float("nan")


@dataclass(frozen=True, repr=False)
class BivariateResult:
    """Bivariate REML fits of pairs of phenotypes (:func:`bigmm.fit_bivariate`)."""

    fits: tuple
    method: str
    notes: dict = field(default_factory=dict)

    def __getitem__(self, pair) -> BivariateFit:
        a, b = pair
        for f in self.fits:
            if (f.trait_a, f.trait_b) == (a, b):
                return f
        raise KeyError(pair)

    def to_pandas(self):
        """One row per pair: :attr:`BivariateFit.table_columns`, then ``beta_<effect>_a``,
        ``se_<effect>_a``, ``beta_<effect>_b``, ``se_<effect>_b`` per fixed effect."""
        pd = _pandas()
        cols = list(BivariateFit.table_columns)
        fe_names = [fe[0] for fe in self.fits[0].fixed_effects] if self.fits else []
        for nm in fe_names:
            cols += [f"beta_{nm}_a", f"se_{nm}_a", f"beta_{nm}_b", f"se_{nm}_b"]
        rows = []
        for f in self.fits:
            r = f.row()
            for fe in f.fixed_effects:
                r += list(fe[1:])
            rows.append(r)
        return pd.DataFrame(rows, columns=cols)

    def to_dict(self) -> dict:
        return {"method": self.method, "notes": self.notes, "pairs": [f.to_dict() for f in self.fits]}

    @classmethod
    def from_dict(cls, d: dict) -> "BivariateResult":
        return cls(fits=tuple(BivariateFit.from_dict(p) for p in d["pairs"]), method=d["method"],
                   notes=d.get("notes", {}))

    def __repr__(self) -> str:
        lines = [f"BivariateResult({len(self.fits)} pair{'s' if len(self.fits) != 1 else ''}; {self.method})"]
        for f in self.fits[:10]:
            lines.append(f"  {f.trait_a} x {f.trait_b}: n={f.n}, rg={_num(f.rg)} (SE {_num(f.rg_se)}), "
                         f"h2={_num(f.h2_a)}, {_num(f.h2_b)}, p(rg=0)={_num(f.p_rg0, '{:.3g}')}")
        if len(self.fits) > 10:
            lines.append(f"  ... {len(self.fits) - 10} more (to_pandas() lists all)")
        return "\n".join(lines)


def _ratios(theta: np.ndarray, cov: np.ndarray) -> dict:
    ga, gb, gab, ea, eb, eab = theta
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for key, (g, e, ig, ie) in {"a": (ga, ea, 0, 3), "b": (gb, eb, 1, 4)}.items():
            vp = g + e
            grad = np.zeros(6)
            grad[ig], grad[ie] = e / vp ** 2, -g / vp ** 2
            out[f"h2_{key}"], out[f"h2_{key}_se"] = float(g / vp), _delta_se(grad, cov)
        for key, (x, y, xy, ix, iy, ixy) in {"rg": (ga, gb, gab, 0, 1, 2), "re": (ea, eb, eab, 3, 4, 5)}.items():
            if x > 0 and y > 0:
                r = xy / math.sqrt(x * y)
                grad = np.zeros(6)
                grad[ixy], grad[ix], grad[iy] = 1.0 / math.sqrt(x * y), -0.5 * r / x, -0.5 * r / y
                out[key], out[f"{key}_se"] = float(r), _delta_se(grad, cov)
            else:
                out[key], out[f"{key}_se"] = float("nan"), float("nan")
        va, vb = ga + ea, gb + eb
        rp = (gab + eab) / math.sqrt(va * vb) if va > 0 and vb > 0 else float("nan")
        grad = np.zeros(6)
        if np.isfinite(rp):
            grad[2] = grad[5] = 1.0 / math.sqrt(va * vb)
            grad[0] = grad[3] = -0.5 * rp / va
            grad[1] = grad[4] = -0.5 * rp / vb
        out["rp"], out["rp_se"] = float(rp), _delta_se(grad, cov) if np.isfinite(rp) else float("nan")
    return out
