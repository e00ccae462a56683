"""The result types of the several-component REML fits (:func:`bigmm.fit_components`,
:func:`bigmm.fit_components_matrix_free`): :class:`ComponentEstimate` (one component of one
phenotype), :class:`ComponentsFit` (one phenotype) and :class:`ComponentsResult` (all of them),
with their table columns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import ClassVar

from .results import LOGL_CONVENTION, TABLE_COLUMNS, FitsResult, PhenotypeFit, _num, _pandas

#: the "all components = 0" test's rule, stated in every result (see fit_components)
LRT_ALL_RULE = ("GCTA's rule: p = 1/2 P(chi2_m > LRT) with m the number of genetic components "
                "(constrained fit); p = P(chi2_m > LRT) unconstrained")

#: one component's columns in the components table (:meth:`ComponentsResult.to_pandas`)
COMPONENT_COLUMNS = ("component", "n_variants", "sigma2", "sigma2_se", "h2", "h2_se", "share", "share_se",
                     "enrichment", "enrichment_se", "pve", "pve_se", "mean_diag_K", "boundary", "lrt_stat",
                     "lrt_pvalue", "logl_reml_without")
#: the phenotype's columns repeated on each of its component rows (after the component's own)
PHENOTYPE_COLUMNS = ("n", "h2_total", "h2_total_se", "sigma2_e", "sigma2_e_se", "logl_reml", "logl_ml",
                     "lrt_all_stat", "lrt_all_pvalue", "converged", "iterations")
#: the fit's field behind each of PHENOTYPE_COLUMNS
PHENOTYPE_FIELDS = dict(zip(PHENOTYPE_COLUMNS, ("n", "h2", "h2_se", "sigma2_e", "sigma2_e_se", "logl_reml",
                                                "logl_ml", "lrt_stat", "lrt_pvalue", "converged", "iterations")))
#: the Monte Carlo SDs of a matrix-free fit (NaN on the exact path): the component's, after
#: COMPONENT_COLUMNS, and the total h²'s (the fit's ``h2_se_mc``), after PHENOTYPE_COLUMNS
COMPONENT_MC_COLUMNS = ("h2_se_mc", "sigma2_se_mc", "lrt_stat_se_mc")
PHENOTYPE_MC_FIELDS = {"h2_total_se_mc": "h2_se_mc", "logl_reml_se_mc": "logl_reml_se_mc",
                       "logl_ml_se_mc": "logl_ml_se_mc", "lrt_all_stat_se_mc": "lrt_stat_se_mc"}
#: the columns of :class:`ComponentsFit` in the one-row-per-phenotype table, after TABLE_COLUMNS
COMPONENTS_FIT_COLUMNS = ("n_components", "reml_method", "iterations", "converged", "delta_logl",
                          "delta_sigma2", "constrain")


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ComponentEstimate:
    """One variance component of one phenotype's fit.

    ``sigma2`` on the scale of its K; ``h2 = σ²_j / Vp`` (GCTA's ``V(Gj)/Vp``, Vp = Σ σ²_k + σ²_e);
    ``share = σ²_j / Σ_k σ²_k`` (its share of h²); ``enrichment = share / (n_variants / Σ_k n_variants)``
    (NaN without variant counts); ``pve = d_j σ²_j / (Σ_k d_k σ²_k + σ²_e)`` with ``d_j = mean diag K_j −
    mean K_j`` over the analysed samples (GEMMA ``-vc``'s pve); each ``*_se`` by the delta method from
    the inverse AI matrix. ``boundary``: the estimate is held at 0 by the constraint. ``lrt_stat`` =
    2 (ℓ_R − ``logl_reml_without``), the REML fit without this component; ``lrt_pvalue`` from the
    ½χ²₀ + ½χ²₁ mixture (constrained) or χ²₁ (unconstrained).
    """

    name: str
    n_variants: float
    sigma2: float
    sigma2_se: float
    h2: float
    h2_se: float
    share: float
    share_se: float
    enrichment: float
    enrichment_se: float
    pve: float
    pve_se: float
    mean_diag_K: float
    boundary: bool
    lrt_stat: float
    lrt_pvalue: float
    logl_reml_without: float
    #: Monte Carlo SDs of h2 and sigma2 from the probes of the matrix-free fit (NaN on the exact
    #: path; left out of ==, so that exact fits read back from JSON, where NaN is a new object, compare equal)
    h2_se_mc: float = field(default=float("nan"), compare=False)
    sigma2_se_mc: float = field(default=float("nan"), compare=False)
    #: the matrix-free fit's Monte Carlo SD of lrt_stat (of 2(ℓ_R − logl_reml_without), estimated
    #: with the same probes); NaN on the exact path
    lrt_stat_se_mc: float = field(default=float("nan"), compare=False)

    @classmethod
    def from_dict(cls, d: dict) -> "ComponentEstimate":
        return cls(**{k: (float("nan") if v is None else v) for k, v in d.items()})


@dataclass(frozen=True, repr=False)  # PhenotypeFit's short repr
class ComponentsFit(PhenotypeFit):
    """The REML fit of one phenotype with several variance components.

    The fields shared with :class:`bigmm.results.PhenotypeFit` are about the whole genetic part:
    ``h2`` is the total h² = Σ σ²_j / Vp, ``sigma2_g`` = Σ σ²_j, ``pve`` GEMMA's total pve,
    ``logl_reml_h2_0`` the REML fit without any genetic component (GCTA's ``logL0``), ``lrt_stat``
    and ``lrt_pvalue`` the test of all components = 0 (rule: ``LRT_ALL_RULE``), ``h2_ml`` the total h²
    of the ML fit whose maximum is ``logl_ml``, ``boundary`` "lower" when every component is 0;
    ``mean_diag_K`` and ``h2_se_curvature`` are NaN (per component: ``components``).
    ``sigma2_cov``: the inverse AI matrix, Cov of (σ²_1, ..., σ²_m, σ²_e), from which every SE comes.
    """

    table_columns: ClassVar[tuple] = TABLE_COLUMNS + COMPONENTS_FIT_COLUMNS

    components: tuple = ()
    sigma2_cov: tuple = ()
    reml_method: str = "ai_reml"
    iterations: int = 0
    converged: bool = False
    delta_logl: float = float("nan")
    delta_sigma2: float = float("nan")
    constrain: bool = True
    #: the matrix-free fit's Monte Carlo SD of the total h², passes over the genotypes and CG
    #: steps (NaN / 0 on the exact path)
    h2_se_mc: float = field(default=float("nan"), compare=False)
    passes: int = 0
    cg_iterations: int = 0
    #: the matrix-free fit's Monte Carlo SDs of logl_reml, logl_ml and lrt_stat (log det V by
    #: stochastic Lanczos quadrature); NaN on the exact path
    logl_reml_se_mc: float = field(default=float("nan"), compare=False)
    logl_ml_se_mc: float = field(default=float("nan"), compare=False)
    lrt_stat_se_mc: float = field(default=float("nan"), compare=False)

    @property
    def n_components(self) -> int:
        return len(self.components)

    def component(self, name: str) -> ComponentEstimate:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["components"] = [asdict(c) for c in self.components]
        d["sigma2_cov"] = [list(r) for r in self.sigma2_cov]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ComponentsFit":
        d = dict(d)
        comps = tuple(ComponentEstimate.from_dict(c) for c in d.pop("components"))
        cov = tuple(tuple(float("nan") if v is None else v for v in r) for r in d.pop("sigma2_cov"))
        return replace(super().from_dict(d), components=comps, sigma2_cov=cov)


@dataclass(frozen=True, repr=False)  # FitsResult's short repr
class ComponentsResult(FitsResult):
    """Fits of every phenotype of one :func:`fit_components` call.

    ``to_pandas()`` gives one row per phenotype × component (:meth:`table_rows`: the component's
    columns, then the phenotype's); ``to_pandas("phenotypes")`` one row per phenotype
    (the shared fits table plus :data:`COMPONENTS_FIT_COLUMNS`); ``to_pandas("fixed")`` the fixed
    effects. ``to_dict`` / ``from_dict`` round-trip through JSON.
    """

    fit_type: ClassVar[type] = ComponentsFit

    fits: tuple
    component_names: tuple
    covariate_names: tuple
    n_variants: tuple | None = None
    constrain: bool = True
    logl_convention: str = LOGL_CONVENTION
    lrt_all_rule: str = LRT_ALL_RULE
    reml_method: str = "ai_reml"
    notes: dict = field(default_factory=dict)

    FACTS = ("reml_method", "logl_convention", "constrain", "lrt_all_rule")

    @property
    def phenotype_names(self) -> list[str]:
        return [f.name for f in self.fits]

    def _head(self) -> str:
        return (f"AI-REML, {len(self.component_names)} components ({', '.join(self.component_names)}), "
                + ("constrained" if self.constrain else "unconstrained"))

    def _facts(self) -> dict:
        return {**{k: getattr(self, k) for k in self.FACTS}, "component_names": list(self.component_names),
                "n_variants": None if self.n_variants is None else list(self.n_variants),
                "covariate_names": list(self.covariate_names)}

    @classmethod
    def _facts_from_dict(cls, d: dict, fits: tuple) -> dict:
        nv = d.get("n_variants")
        return {**{k: d[k] for k in cls.FACTS}, "component_names": tuple(d["component_names"]),
                "n_variants": None if nv is None else tuple(nv), "covariate_names": tuple(d["covariate_names"])}

    def table_rows(self) -> tuple[list[str], list[list]]:
        """(header, rows) of the components table: one row per phenotype × component
        (:data:`COMPONENT_COLUMNS`, :data:`COMPONENT_MC_COLUMNS`, the phenotype's
        :data:`PHENOTYPE_COLUMNS`, then ``h2_total_se_mc``; the Monte Carlo SDs NaN but on the
        matrix-free path); ``results.tsv`` of a several-component run has the same columns."""
        nan = float("nan")
        header = ["phenotype", *COMPONENT_COLUMNS, *COMPONENT_MC_COLUMNS, *PHENOTYPE_COLUMNS, *PHENOTYPE_MC_FIELDS]
        rows = []
        for f in self.fits:
            tail = [getattr(f, k) for k in PHENOTYPE_FIELDS.values()] \
                + [getattr(f, k, nan) for k in PHENOTYPE_MC_FIELDS.values()]
            for c in f.components:
                rows.append([f.name, c.name] + [getattr(c, k) for k in COMPONENT_COLUMNS[1:]]
                            + [getattr(c, k, nan) for k in COMPONENT_MC_COLUMNS] + tail)
        return header, rows

    def to_pandas(self, kind: str = "components"):
        """The fits as a pandas DataFrame: ``kind="components"`` (default) one row per phenotype ×
        component; ``"phenotypes"`` one row per phenotype; ``"fixed"`` the fixed effects."""
        if kind == "components":
            header, rows = self.table_rows()
            return _pandas().DataFrame(rows, columns=header)
        return super().to_pandas(kind)

    def __repr__(self) -> str:
        lines = [super().__repr__()]
        for f in self.fits[:10]:
            lines.append(f"  {f.name} components: " + "; ".join(
                f"{c.name} h2={_num(c.h2)} (SE {_num(c.h2_se)})" for c in f.components))
        return "\n".join(lines)
