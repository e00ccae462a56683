"""bigmm: linear mixed models for genotype cohorts too big for one machine's memory.

The Python API mirrors the command line::

    import bigmm
    store = bigmm.ingest_plink("data/cohort", "cohort.zarr")
    stats = bigmm.variant_stats(store.to_dask())
    std = bigmm.standardization(stats, "gcta", min_maf=0.01)
    K = bigmm.grm(store.genotypes, std)          # uses your Dask client if one is active
    spec = bigmm.exact_spectrum(K)                # or bigmm.randomized_spectrum(store.genotypes, std, 200)
    fit = bigmm.fit_reml(spec, Y, Z)

or, from a config: ``bigmm.run(bigmm.load_config("configs/example.yaml"))``.
"""

from ._version import __version__
from .config import RunConfig, load_config, parse_config
from .errors import BigmmError, ConfigError, InputError
from .genotypes import Standardization, VariantStats, standardization, standardized, variant_stats
from .grm import grm, read_gcta_grm, write_gcta_grm
from .io.plink import ingest_plink
from .io.tables import build_design, read_table
from .pipeline import run
from .reml import PhenotypeFit, RemlResult, fit_reml
from .simulate import simulate, write_tables
from .spectrum import Spectrum, exact_spectrum, randomized_spectrum
from .store import CohortStore, create_store, open_store

__all__ = [
    "__version__", "BigmmError", "ConfigError", "InputError", "RunConfig", "load_config",
    "parse_config", "Standardization", "VariantStats", "standardization", "standardized",
    "variant_stats", "grm", "read_gcta_grm", "write_gcta_grm", "ingest_plink", "build_design",
    "read_table", "run", "PhenotypeFit", "RemlResult", "fit_reml", "simulate", "write_tables",
    "Spectrum", "exact_spectrum", "randomized_spectrum", "CohortStore", "create_store", "open_store",
]
