"""The results of a REML fit, shared by spectral REML and matrix-free REML.

One phenotype's fit is a :class:`PhenotypeFit`: h², the variance components σ²_g and σ²_e
with their SEs, the fixed effects (:class:`FixedEffect`), the likelihoods and the LRT. The
fits of one call form a :class:`FitsResult`: look-up by phenotype name, the fits table
(the columns of ``results.tsv``, :meth:`FitsResult.to_pandas`), the short and the notebook
reprs, and ``to_dict`` / ``from_dict``. Spectral REML returns a :class:`RemlResult`; matrix-free
REML a :class:`bigmm.mfreml.MatrixFreeResult` of :class:`bigmm.mfreml.MatrixFreeFit`, which
adds its own columns (:data:`MATRIX_FREE_COLUMNS`).

Both take the covariance of (σ̂²_g, σ̂²_e), from which every SE is derived, from the REML
information by the same rule (:func:`information_covariance`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np

from .errors import InputError

LOGL_CONVENTION = "Harville REML without the log det(Z'Z) term"

#: the columns of a fits table, after ``phenotype`` (``results.tsv``, :meth:`FitsResult.to_pandas`);
#: then ``beta_<effect>`` and ``se_<effect>`` for each fixed effect
TABLE_COLUMNS = ("n", "h2", "h2_se", "h2_se_curvature", "pve", "pve_se", "mean_diag_K", "sigma2_g", "sigma2_g_se",
                 "sigma2_e", "sigma2_e_se", "logl_reml", "logl_ml", "lrt_stat", "lrt_pvalue", "boundary",
                 "n_missing", "missing_method", "h2_se_method")
#: the matrix-free REML's own columns (after the common ones, when it ran)
MATRIX_FREE_COLUMNS = ("reml_method", "h2_se_stat", "h2_se_mc", "h2_se_mc_ratio", "h2_he", "lanczos_steps",
                       "passes_over_X", "converged", "delta_h2", "delta_logl", "probes", "deflation_rank")


def design_names(m: int, c: int, phenotype_names=None, covariate_names=None) -> tuple[list, list]:
    """The phenotype and fixed-effect names of a fit of ``m`` phenotypes and ``c`` fixed effects
    (defaults ``pheno1…``, ``intercept``, ``covar1…``), or a refusal when they do not match the
    columns or a phenotype name repeats."""
    names = list(phenotype_names) if phenotype_names is not None else [f"pheno{j + 1}" for j in range(m)]
    znames = list(covariate_names) if covariate_names is not None else \
        (["intercept"] + [f"covar{i}" for i in range(1, c)])
    if len(names) != m or len(znames) != c:
        raise InputError(f"phenotype_names ({len(names)}) / covariate_names ({len(znames)}) do not match "
                         f"the columns of Y ({m}) / Z ({c})")
    if len(set(names)) != m:
        raise InputError("phenotype names must be unique")
    return names, znames


def fits_table_rows(fits) -> tuple[list[str], list[list]]:
    """(header, rows) of the fits table: one row per phenotype, the columns of ``results.tsv``."""
    fits = list(fits)
    fe_names = [fe.name for fe in fits[0].fixed_effects] if fits else []
    columns = fits[0].table_columns if fits else TABLE_COLUMNS
    header = ["phenotype", *columns]
    for name in fe_names:
        header += [f"beta_{name}", f"se_{name}"]
    rows = []
    for f in fits:
        row = [f.name] + [getattr(f, c) for c in columns]
        for fe in f.fixed_effects:
            row += [fe.estimate, fe.se]
        rows.append(row)
    return header, rows


def _pandas():
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is optional
        raise ImportError("to_pandas needs pandas: pip install pandas") from None
    return pd


def fits_to_pandas(fits, kind: str = "phenotypes"):
    """The fits as a pandas DataFrame (see :meth:`FitsResult.to_pandas`)."""
    pd = _pandas()
    if kind == "phenotypes":
        header, rows = fits_table_rows(fits)
        return pd.DataFrame(rows, columns=header)
    if kind == "fixed":
        rows = [(f.name, fe.name, fe.estimate, fe.se) for f in fits for fe in f.fixed_effects]
        return pd.DataFrame(rows, columns=["phenotype", "effect", "estimate", "se"])
    raise ValueError(f"kind must be 'phenotypes' or 'fixed', not {kind!r}")


def _num(v, fmt="{:.4f}") -> str:
    return "NA" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def fits_repr(kind: str, fits, head: str, limit: int = 10) -> str:
    """A short text summary of fits: one line per phenotype (the first ``limit``)."""
    lines = [f"{kind}({len(fits)} phenotype{'s' if len(fits) != 1 else ''}; {head})"]
    for f in list(fits)[:limit]:
        lines.append(f"  {f.name}: n={f.n}, h2={_num(f.h2)} (SE {_num(f.h2_se)}), "
                     f"sigma2_g={_num(f.sigma2_g, '{:.4g}')}, sigma2_e={_num(f.sigma2_e, '{:.4g}')}, "
                     f"LRT p={_num(f.lrt_pvalue, '{:.3g}')}" + (f", boundary {f.boundary}" if f.boundary else ""))
    if len(fits) > limit:
        lines.append(f"  ... {len(fits) - limit} more (to_pandas() lists all)")
    return "\n".join(lines)


def fits_repr_html(kind: str, fits, head: str, limit: int = 50) -> str:
    """An HTML table of the fits (the first ``limit``), for notebooks."""
    import html

    e = html.escape
    cells = ("phenotype", "n", "h²", "SE", "σ²_g", "σ²_e", "LRT p", "boundary")
    body = "".join(
        "<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in (
            f.name, f.n, _num(f.h2), _num(f.h2_se), _num(f.sigma2_g, "{:.4g}"), _num(f.sigma2_e, "{:.4g}"),
            _num(f.lrt_pvalue, "{:.3g}"), f.boundary or "-")) + "</tr>" for f in list(fits)[:limit])
    more = f"<p>... {len(fits) - limit} more</p>" if len(fits) > limit else ""
    return (f"<div><b>{e(kind)}</b>: {len(fits)} phenotypes; {e(head)}<table><tr>"
            + "".join(f"<th>{c}</th>" for c in cells) + f"</tr>{body}</table>{more}</div>")


@dataclass(frozen=True)
class FixedEffect:
    name: str
    estimate: float
    se: float


@dataclass(frozen=True)
class PhenotypeFit:
    """REML estimates for one phenotype (field meanings in docs/math.md)."""

    #: the columns of this fit type in the fits table (after ``phenotype``, before the fixed effects)
    table_columns: ClassVar[tuple] = TABLE_COLUMNS

    name: str
    n: int
    h2: float
    h2_se: float
    h2_se_method: str
    h2_se_curvature: float  # 1/sqrt(−ℓ''): the model-based SE (equals h2_se on a full spectrum)
    pve: float
    mean_diag_K: float
    sigma2_g: float
    sigma2_g_se: float
    sigma2_e: float
    sigma2_e_se: float
    logl_reml: float
    logl_reml_h2_0: float
    logl_ml: float
    h2_ml: float
    lrt_stat: float
    lrt_pvalue: float
    boundary: str  # "", "lower" (h² = 0) or "upper" (h² at its maximum)
    fixed_effects: tuple[FixedEffect, ...]
    n_missing: int
    missing_method: str  # "none", "indicator" or "subset_spectrum"
    sigma2_g_sigma2_e_cov: float = float("nan")
    ml_note: str = ""
    #: SE of pve by the delta method from h2_se: d / (h² d + 1 − h²)² · SE(h²), d = pve's factor
    pve_se: float = float("nan")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fixed_effects"] = [asdict(f) for f in self.fixed_effects]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PhenotypeFit":
        """The fit from :meth:`to_dict` (a ``None``, JSON's null, is read back as NaN)."""
        d = dict(d)
        d["fixed_effects"] = tuple(FixedEffect(**fe) for fe in d["fixed_effects"])
        return cls(**{k: (float("nan") if v is None else v) for k, v in d.items()})

    def __repr__(self) -> str:
        fe = ", ".join(f"{x.name}={_num(x.estimate, '{:.4g}')}" for x in self.fixed_effects[:4])
        more = f", ... {len(self.fixed_effects) - 4} more" if len(self.fixed_effects) > 4 else ""
        return (f"{type(self).__name__}({self.name!r}, n={self.n}, h2={_num(self.h2)} (SE {_num(self.h2_se)}), "
                f"sigma2_g={_num(self.sigma2_g, '{:.4g}')}, sigma2_e={_num(self.sigma2_e, '{:.4g}')}, "
                f"LRT p={_num(self.lrt_pvalue, '{:.3g}')}, fixed effects: {fe}{more})")


class FitsResult:
    """What every REML result shares: the fits of its phenotypes, and how they are shown and stored.

    A base for frozen dataclasses (declared with ``repr=False``) with the fields ``fits`` (one
    :attr:`fit_type` per phenotype) and ``notes`` (a JSON-able dict). A subclass names its own
    facts for :meth:`to_dict` (:meth:`_facts`, :meth:`_facts_from_dict`) and the description in
    its reprs (:meth:`_head`).
    """

    #: the type of one phenotype's fit (what :meth:`from_dict` builds)
    fit_type: ClassVar[type] = PhenotypeFit

    fits: tuple
    notes: dict

    def __getitem__(self, name: str) -> PhenotypeFit:
        for f in self.fits:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_pandas(self, kind: str = "phenotypes"):
        """The fits as a pandas DataFrame.

        ``kind="phenotypes"``: one row per phenotype with the columns of ``results.tsv``
        (``phenotype``, :data:`TABLE_COLUMNS`, the fit type's own columns such as
        :data:`MATRIX_FREE_COLUMNS`, then ``beta_<effect>``, ``se_<effect>``);
        ``kind="fixed"``: the fixed-effect estimates in long form, one row per phenotype and
        effect (``phenotype``, ``effect``, ``estimate``, ``se``), as :meth:`fixed_effects_table`.

        Examples
        --------
        >>> import numpy as np, bigmm
        >>> rng = np.random.default_rng(0)
        >>> G = rng.binomial(2, 0.3, size=(120, 400)).astype(np.int8)
        >>> spec = bigmm.exact_spectrum(bigmm.grm(G, bigmm.standardization(bigmm.variant_stats(G))))
        >>> Z = np.column_stack([np.ones(120), rng.normal(size=120)])
        >>> fit = bigmm.fit_reml(spec, rng.normal(size=(120, 2)), Z, phenotype_names=["a", "b"],
        ...                      covariate_names=["intercept", "age"])
        >>> df = fit.to_pandas()
        >>> list(df["phenotype"]), list(df.columns[:4]), list(df.columns[-2:])
        (['a', 'b'], ['phenotype', 'n', 'h2', 'h2_se'], ['beta_age', 'se_age'])
        >>> fit.to_pandas(kind="fixed")[["phenotype", "effect"]].values.tolist()
        [['a', 'intercept'], ['a', 'age'], ['b', 'intercept'], ['b', 'age']]
        """
        return fits_to_pandas(self.fits, kind)

    def fixed_effects_table(self):
        """The fixed-effect estimates with their SEs, one row per phenotype and effect (a pandas
        DataFrame: ``phenotype``, ``effect``, ``estimate``, ``se``)."""
        return fits_to_pandas(self.fits, "fixed")

    def _head(self) -> str:
        """How the fits were made, for the first line of the text repr."""
        raise NotImplementedError

    def _head_html(self) -> str:
        """How the fits were made, for the notebook repr."""
        return self._head()

    def __repr__(self) -> str:
        return fits_repr(type(self).__name__, self.fits, self._head())

    def _repr_html_(self) -> str:
        return fits_repr_html(type(self).__name__, self.fits, self._head_html())

    def _facts(self) -> dict:
        """The result's own JSON-able facts: the keys of :meth:`to_dict` before ``notes``."""
        raise NotImplementedError

    @classmethod
    def _facts_from_dict(cls, d: dict, fits: tuple) -> dict:
        """The constructor's arguments besides ``fits`` and ``notes``, from :meth:`to_dict`."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """JSON-able: the result's facts, ``notes`` and ``phenotypes`` (one dict per fit)."""
        return {**self._facts(), "notes": self.notes, "phenotypes": [f.to_dict() for f in self.fits]}

    @classmethod
    def from_dict(cls, d: dict, **kwargs):
        """The result from :meth:`to_dict`; ``kwargs`` give the fields that it leaves out."""
        fits = tuple(cls.fit_type.from_dict(p) for p in d["phenotypes"])
        return cls(fits=fits, notes=d.get("notes", {}), **cls._facts_from_dict(d, fits), **kwargs)


@dataclass(frozen=True, repr=False)
class RemlResult(FitsResult):
    """Fits of every phenotype on one spectrum."""

    fits: tuple[PhenotypeFit, ...]
    spectrum_method: str
    logl_convention: str = LOGL_CONVENTION
    notes: dict = field(default_factory=dict)
    #: the rotated design the fits were made on (a :class:`bigmm.reml.RotatedDesign`, for predictions:
    #: :func:`bigmm.blup.genetic_values`); not part of :meth:`to_dict`
    design: "RotatedDesign | None" = field(default=None, repr=False, compare=False)

    @property
    def phenotype_names(self) -> list[str]:
        return [f.name for f in self.fits]

    def _head(self) -> str:
        methods = self.notes.get("missing_methods") if isinstance(self.notes, dict) else None
        return f"spectrum {self.spectrum_method}" + (f", missing values: {', '.join(methods)}" if methods else "")

    def _head_html(self) -> str:
        return f"spectrum {self.spectrum_method}"

    def _facts(self) -> dict:
        return {"spectrum": self.spectrum_method, "logl_convention": self.logl_convention}

    @classmethod
    def _facts_from_dict(cls, d: dict, fits: tuple) -> dict:
        return {"spectrum_method": d["spectrum"], "logl_convention": d.get("logl_convention", LOGL_CONVENTION)}

    @classmethod
    def from_dict(cls, d: dict, design: "RotatedDesign | None" = None) -> "RemlResult":
        """The result from :meth:`to_dict` (as stored in ``reml.json``), with its rotated design if given."""
        return super().from_dict(d, design=design)


def information_covariance(observed: np.ndarray, expected: np.ndarray, boundary: str) -> tuple[np.ndarray, str]:
    """Cov(σ̂²_g, σ̂²_e) and how it was had: the inverse observed REML information, or the
    expected one at a boundary estimate or where the observed is not positive definite."""
    if not boundary:
        try:
            np.linalg.cholesky(observed)
            return np.linalg.inv(observed), "observed_information"
        except np.linalg.LinAlgError:
            pass
    return _safe_inv(expected), ("expected_information (at the boundary)" if boundary
                                 else "expected_information (observed information not positive definite)")


def _safe_inv(M: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.inv(M)
    except np.linalg.LinAlgError:
        return np.full(M.shape, np.nan)


def _delta_se(grad: np.ndarray, cov: np.ndarray) -> float:
    with np.errstate(invalid="ignore"):
        return float(np.sqrt(grad @ cov @ grad))
