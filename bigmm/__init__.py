"""bigmm: linear mixed models for genotype cohorts too big for one machine's memory.

The library takes arrays and returns result objects::

    import bigmm
    store = bigmm.ingest_plink("data/cohort", "cohort.zarr")
    stats = bigmm.variant_stats(store.to_dask())
    std = bigmm.standardization(stats, "gcta", min_maf=0.01)
    K = bigmm.grm(store.genotypes, std)          # uses your Dask client if one is active
    spec = bigmm.exact_spectrum(K)                # or, never forming K:
    # spec = bigmm.randomized_spectrum(bigmm.GrmOperator(store.genotypes, std), 200)
    fit = bigmm.fit_reml(spec, Y, Z)
    parts = bigmm.fit_components([K1, K2], Y, Z)  # several GRMs: partitioned h² (exact, dense)
    fit.to_pandas()                               # one row per phenotype (results.tsv's columns)
    blup = bigmm.predict(fit, spec, genotypes=store.genotypes, std=std)   # ĝ and SNP effects

An xarray Dataset in the VCF Zarr layout (``xarray.open_zarr("cohort.vcz")``, sgkit) is taken
wherever genotypes are (``bigmm.variant_stats(ds)``, ``bigmm.grm(ds, std)``); ``bigmm.from_xarray(ds)``
gives its sample IDs and variant table.

Config-driven runs live in the run layer (:mod:`bigmm.pipeline`):
``bigmm.pipeline.run(bigmm.pipeline.load_config("configs/example.yaml"))``; ``bigmm.load_config`` and
``bigmm.run_config`` are shortcuts to it. The mathematics is in ``docs/math.md``.
"""

from ._version import __version__
from .component_blup import ComponentsBlup, blup_components
from .component_grm import ComponentGrms, component_grms
from .components import (Components, chromosome_components, cross, greml_ldms, ld_quantile_bins, maf_bins,
                         read_components, read_variant_lists)
from .blup import Blup, LeaveOneOut, genetic_values, leave_one_out, predict, snp_effects
from .errors import BigmmError, ConfigError, InputError
from .genotypes import Standardization, VariantStats, standardization, standardized, variant_stats
from .grm import grm
from .io.gcta import open_mgrm, read_gcta_grm, write_gcta_grm
from .io.plink import ingest_plink
from .component_passes import ComponentsOperator, DenseComponentsOperator
from .ldscore import ld_scores
from .io.vcfzarr import from_xarray, open_vcf_zarr
from .io.tables import build_design, read_table
from .mf_components import fit_components_matrix_free
from .mfreml import blup_matrix_free, fit_matrix_free, restore_matrix_free
from .passes import DenseOperator, GrmOperator
from .reml import PhenotypeFit, RemlResult, fit_reml
from .simulate import simulate, write_tables
from .spectrum import Spectrum, exact_spectrum, randomized_spectrum
from .store import CohortStore, convert_store, create_store, open_store
from .vcreml import ComponentEstimate, ComponentsFit, ComponentsResult, fit_components

#: names of the run layer offered here for convenience, imported on first use (the library
#: itself never imports the run layer)
_RUN_LAYER = {"RunConfig": "RunConfig", "load_config": "load_config", "parse_config": "parse_config",
              "run": "run", "status": "status"}


def __getattr__(name):
    if name in _RUN_LAYER:
        import importlib

        return getattr(importlib.import_module("bigmm.pipeline"), _RUN_LAYER[name])
    raise AttributeError(f"module 'bigmm' has no attribute {name!r}")


__all__ = [
    "__version__", "BigmmError", "ConfigError", "InputError", "Standardization", "VariantStats",
    "standardization", "standardized", "variant_stats", "grm", "read_gcta_grm", "write_gcta_grm",
    "ingest_plink", "build_design", "read_table", "GrmOperator", "DenseOperator", "PhenotypeFit",
    "RemlResult", "fit_reml", "Blup", "genetic_values", "predict", "snp_effects", "LeaveOneOut", "leave_one_out", "from_xarray", "open_vcf_zarr", "simulate", "write_tables",
    "Spectrum", "exact_spectrum", "randomized_spectrum", "CohortStore", "convert_store", "create_store", "open_store",
    "Components", "read_components", "read_variant_lists", "maf_bins", "chromosome_components", "cross",
    "ld_quantile_bins", "greml_ldms", "ld_scores", "ComponentGrms", "component_grms",
    "fit_components", "ComponentEstimate", "ComponentsFit", "ComponentsResult",
    "ComponentsOperator", "DenseComponentsOperator", "fit_components_matrix_free", "blup_components",
    "ComponentsBlup",
    *_RUN_LAYER,
]
from .bivariate import BivariateFit, BivariateResult, PairMeasure, fit_bivariate, fit_pair  # noqa: E402
__all__ += ["BivariateFit", "BivariateResult", "PairMeasure", "fit_bivariate", "fit_pair"]
from .mf_bivariate import fit_bivariate_matrix_free  # noqa: E402
__all__ += ["fit_bivariate_matrix_free"]
