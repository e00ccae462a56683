"""The ``rg:`` section of a run configuration (genetic correlations by bivariate REML) and the
pairs it asks for, resolved against the run's phenotypes once, at validation, before any stage.

    rg:
      pairs: all            # none (default) | auto | all | [[bmi, height], [bmi, whr]]
      constrain: true       # G0 positive semi-definite (GCTA's default)
      lrt: true             # likelihood-ratio tests of r_g = 0 and |r_g| = 1
      different_missing: fit  # matrix-free: pairs with different missing values (fit | refuse)
      samples: intersection   # or union (GCTA's, spectral REML on an exact spectrum only)
"""

from __future__ import annotations

from itertools import combinations
from typing import Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from ..errors import InputError

#: the models with several variance components: no bivariate REML (rg is single-component)
COMPONENTS_MODELS = ("components", "components_matrix_free")
#: driver CPU seconds per pair on the matrix-free path with the LRTs, measured by
#: scripts/bench/bench_rg_driver.py (docs/benchmarks.md: 30 phenotypes 5-6 ms, 100 phenotypes 6 ms,
#: 12 ms with the jackknife; more for a longer build): the range ``bigmm check`` quotes. The
#: spectral path has no measured figure: its cost per pair grows with the spectrum's rank
SECONDS_PER_PAIR = (0.005, 0.012)


class RgConfig(BaseModel):
    """Genetic correlations: a bivariate REML fit (``Var([y_a; y_b]) = G₀ ⊗ K + E₀ ⊗ I``) of each
    pair of phenotypes, from the univariate fit's spectrum or matrix-free build (no pass over X)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    #: "none": no genetic correlations; "auto": every pair when the run has two or more
    #: phenotypes and one genetic component (nothing otherwise); "all": every pair (refused with
    #: fewer than two phenotypes or several components); or a list of [a, b] phenotype names
    pairs: Union[Literal["none", "auto", "all"], list[tuple[str, str]]] = "none"
    """none (default), auto (every pair when there are 2+ phenotypes), all, or a list of [a, b] phenotype names"""
    #: GCTA's default: G₀ positive semi-definite (|r_g| <= 1, σ²_g >= 0); false: GCTA
    #: --reml-no-constrain (|r_g| may exceed 1)
    constrain: bool = True
    """keep G0 positive semi-definite (|r_g| <= 1), as GCTA does by default"""
    #: refit with r_g = 0 and with |r_g| = 1 for the likelihood-ratio tests (GCTA's
    #: --reml-bivar-lrt-rg); each costs about one more fit of the pair
    lrt: bool = True
    """likelihood-ratio tests of r_g = 0 and |r_g| = 1 (two more fits per pair, no pass over X)"""
    #: matrix-free REML: a pair whose phenotypes have different missing values has no cross terms
    #: in the univariate build. "fit": fit it on the samples observed for both from one more
    #: matrix-free build shared by all such pairs (passes over X, at most reml.max_steps);
    #: "refuse": stop with the pair named. The spectral path always fits such pairs on their
    #: common samples (no pass over X)
    different_missing: Literal["fit", "refuse"] = "fit"
    """matrix-free: pairs with different missing values: fit (one more build on the common samples) or refuse"""
    #: a pair whose phenotypes have different missing values: "intersection", on the samples
    #: observed for both; "union" (spectral REML on an exact spectrum only), on every sample with a
    #: value of either, as GCTA --reml-bivar (dense REML of the stacked observations: O((n_a + n_b)³)
    #: per AI iteration, for n up to a few thousand)
    samples: Literal["intersection", "union"] = "intersection"
    """pairs with different missing values: intersection (common samples) or union (GCTA's; exact spectrum only)"""

    @field_validator("pairs", mode="before")
    @classmethod
    def _names(cls, v):
        """Phenotype names that YAML read as numbers are names (``[[1, 2]]``: columns named 1, 2)."""
        if isinstance(v, list):
            return [[str(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x for x in p]
                    if isinstance(p, (list, tuple)) else p for p in v]
        return v


def rg_pairs(rg: RgConfig, names: list[str], model: str) -> list[tuple[str, str]]:
    """The pairs ``rg.pairs`` asks for among the run's phenotypes ``names``, for REML model
    ``model``; an unknown name, a repeated pair, ``all`` with one phenotype or pairs asked for with
    several variance components are refused (one line naming what to change)."""
    names = [str(n) for n in names]
    if rg.pairs == "none":
        return []
    if model in COMPONENTS_MODELS:
        if rg.pairs == "auto":
            return []
        raise InputError(f"rg.pairs: genetic correlations (bivariate REML) are fitted for one genetic component "
                         f"(reml.method spectral or matrix_free), not with several variance components "
                         f"(reml.method {model}); leave rg.pairs out (or none)")
    if rg.pairs in ("auto", "all"):
        if len(names) < 2 and rg.pairs == "all":
            raise InputError(f"rg.pairs: all needs two or more phenotypes; the run has {len(names)} "
                             f"({', '.join(names)}): add phenotypes (phenotypes.columns) or leave rg.pairs out")
        return [(names[i], names[j]) for i, j in combinations(range(len(names)), 2)]
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    out, seen = [], set()
    for a, b in rg.pairs:
        for x in (a, b):
            if x not in names:
                raise InputError(f"rg.pairs: no phenotype named {x!r} in the pair [{a}, {b}] (the run's "
                                 f"phenotypes: {shown})")
        if frozenset((a, b)) in seen:
            raise InputError(f"rg.pairs: the pair [{a}, {b}] is given twice; give each pair once")
        seen.add(frozenset((a, b)))
        out.append((a, b))
    return out


def different_missing(Y: np.ndarray, names: list[str], pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs whose phenotypes have different missing values in ``Y`` (analysed samples)."""
    obs = ~np.isnan(Y)
    idx = {str(n): j for j, n in enumerate(names)}
    return [(a, b) for a, b in pairs if not np.array_equal(obs[:, idx[a]], obs[:, idx[b]])]


def describe_rg(rg: RgConfig, pairs: list, model: str, crossing: list) -> str:
    """``bigmm check``'s line on the genetic correlations ("" when none are asked for)."""
    if not pairs:
        return "" if rg.pairs in ("none",) or model in COMPONENTS_MODELS else \
            "genetic correlations (rg.pairs auto): none, the run has fewer than two phenotypes"
    lo, hi = (len(pairs) * s for s in SECONDS_PER_PAIR)
    line = (f"genetic correlations: {len(pairs)} pair(s) by bivariate REML on the univariate "
            f"{'spectrum' if model == 'spectral' else 'matrix-free build'}, no pass over X; driver "
            + (f"about {lo:.2g}-{hi:.2g} CPU s ({SECONDS_PER_PAIR[0] * 1e3:.0f}-{SECONDS_PER_PAIR[1] * 1e3:.0f} ms "
               f"per pair measured by scripts/bench/bench_rg_driver.py with 30-100 phenotypes; more "
               f"for a longer build)" if model == "matrix_free" else
               "work per pair grows with the spectrum's rank (all n eigenvalues on an exact spectrum)"))
    if crossing and model == "matrix_free":
        line += (f"; {len(crossing)} pair(s) have different missing values: "
                 + ("fitted on their common samples from one more matrix-free build (at most reml.max_steps "
                    "passes over X)" if rg.different_missing == "fit" else "refused (rg.different_missing: refuse)"))
    elif crossing:
        line += f"; {len(crossing)} pair(s) with different missing values fitted on their common samples"
    return line


def check_rg(rg: RgConfig, design, model: str, method: str | None = None) -> str:
    """The run's pairs checked against its phenotypes (``design``: the validated
    :class:`bigmm.io.tables.Design`) and the spectrum's ``method`` before any stage; returns
    ``bigmm check``'s line."""
    names = list(design.phenotype_names)
    pairs = rg_pairs(rg, names, model)
    if pairs and rg.samples == "union" and (model != "spectral" or method != "exact"):
        raise InputError("rg.samples: union fits a pair on every sample with a value of either phenotype "
                         "by dense REML over the exact spectrum: it needs reml.method spectral on an exact "
                         f"spectrum (this run: {model}" + (f", spectrum {method}" if model == "spectral" else "")
                         + "); use rg.samples: intersection (each pair on its common samples)")
    crossing = different_missing(design.Y[design.analysed], names, pairs)
    if crossing and model == "matrix_free" and rg.different_missing == "refuse":
        a, b = crossing[0]
        raise InputError(f"rg.pairs: phenotypes {a!r} and {b!r}" + (f" (and {len(crossing) - 1} more pairs)"
                                                                   if len(crossing) > 1 else "")
                         + " have different missing values, which the univariate matrix-free build cannot pair; "
                         "set rg.different_missing: fit (one more build on their common samples) or leave "
                         "such pairs out of rg.pairs")
    return describe_rg(rg, pairs, model, crossing)
