"""The run configuration: a YAML file parsed once into typed objects.

YAML is read with ``yaml.safe_load`` (no Python object tags). Unknown keys and
wrong types are errors that name the key and the file. Relative paths are
resolved against the directory of the config file.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator
from typing_extensions import Annotated

from .. import mf_components, mfreml
from ..components import MIN_COMPONENT_VARIANTS
from ..errors import ConfigError
from ..genotypes import RUN_DTYPE  # the rule for the precision of passes over X
from ..store import resolve_path
from .config_rg import RgConfig
from .config_yaml import MAX_CONFIG_BYTES, MAX_CONFIG_NODES, read_yaml  # noqa: F401  (re-exported)

#: an integer that YAML wrote as one: ``true`` or ``"12"`` is refused, not taken as 1 or 12
Int = Annotated[int, Strict()]
#: such an integer, from 1 on
PosInt = Annotated[int, Strict(), Field(ge=1)]


class _Section(BaseModel):
    # each field's docstring is its description: ``bigmm init`` writes it beside the key
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class GenotypesConfig(_Section):
    plink: Optional[Path] = None
    """PLINK .bed/.bim/.fam fileset prefix (give one of plink, zarr, vcf_zarr)"""
    zarr: Optional[Path] = None
    """a bigmm cohort store (bigmm ingest)"""
    vcf_zarr: Optional[Path] = None
    """a VCF Zarr store (bio2zarr/sgkit layout)"""
    #: a precomputed GRM instead of genotypes: GCTA's PREFIX.grm.bin/.grm.id (.grm.N.bin) or
    #: PLINK 2's PREFIX.rel.bin/.rel.id, told apart by which files exist (or name one file)
    grm: Optional[Path] = None
    """a precomputed GRM instead of genotypes: GCTA PREFIX.grm.bin/.grm.id or PLINK 2 PREFIX.rel.bin/.rel.id"""
    #: VCF samples as FID = IID = the name ("id"), or FID_IID names (PLINK 2's export) split
    #: at the first underscore ("iid")
    vcf_sample_ids: Literal["id", "iid"] = "id"
    """VCF sample names as FID = IID ("id"), or FID_IID names split at the first underscore ("iid")"""
    chunks: tuple[int, int] = (2048, 8192)
    """[samples, variants] per chunk of the store that ingest makes from PLINK"""
    layout: Literal["2bit", "int8"] = "2bit"
    """how the store that ingest makes from PLINK holds the genotypes: 2bit (four per byte) or int8"""

    @model_validator(mode="after")
    def _one_source(self):
        if sum(x is not None for x in (self.plink, self.zarr, self.vcf_zarr, self.grm)) != 1:
            raise ValueError("give exactly one of 'plink' (fileset prefix), 'zarr' (cohort store), "
                             "'vcf_zarr' (VCF Zarr store) or 'grm' (a GCTA .grm.bin or PLINK 2 .rel.bin "
                             "prefix)")
        if self.grm is not None and self.chunks != GenotypesConfig.model_fields["chunks"].default:
            raise ValueError("chunks is for genotype input (ingest); a GRM is read as it is")
        if min(self.chunks) < 1:
            raise ValueError("chunks must be positive")
        if self.plink is None and self.layout != GenotypesConfig.model_fields["layout"].default:
            raise ValueError("layout is for the store that ingest makes from PLINK; a given store is read "
                             "as it is (convert one with `bigmm convert`)")
        if self.vcf_sample_ids != "id" and self.vcf_zarr is None:
            raise ValueError("vcf_sample_ids is for vcf_zarr input")
        return self


#: what ``variants.chr: autosomes`` stands for
AUTOSOMES = tuple(str(c) for c in range(1, 23))


class VariantsConfig(_Section):
    """Variant filters and standardization (docs/math.md §2). Monomorphic and all-heterozygous
    variants (sample SD 0) are always dropped, as GEMMA drops them, and counted in
    ``variants_dropped``."""

    #: drop variants whose minor allele frequency (over the called genotypes) is below this
    min_maf: float = Field(0.0, ge=0.0, le=0.5)
    """drop variants with minor allele frequency below this (PLINK --maf)"""
    #: drop variants whose missing fraction (n − calls) / n is above this (GEMMA's -miss test)
    max_missing: float = Field(1.0, ge=0.0, le=1.0)
    """drop variants with a larger fraction (n - calls) / n of missing calls (PLINK --geno)"""
    #: "gcta": (g − 2f)/√(2f(1 − f)); "center": g − 2f (GEMMA -gk 1); "sample_sd": (g − 2f)/sd with
    #: sd² = Σ over called genotypes of (g − 2f)² divided by ALL n samples (GEMMA -gk 2 exactly,
    #: missing calls included); missing calls are mean-imputed (x = 0) in every case
    standardize: Literal["gcta", "center", "sample_sd"] = "gcta"
    """gcta: (g - 2f)/sqrt(2f(1-f)); center: g - 2f (GEMMA -gk 1); sample_sd: GEMMA -gk 2"""
    #: variant IDs to keep (PLINK --extract), one per line; ``include`` is its older name
    extract: Optional[Path] = None
    """file of variant IDs (first column) to keep (PLINK --extract)"""
    include: Optional[Path] = None
    """the older name of extract"""
    #: variant IDs to drop (PLINK --exclude), one per line
    exclude: Optional[Path] = None
    """file of variant IDs (first column) to drop (PLINK --exclude)"""
    #: chromosomes to keep (PLINK --chr): a list such as [1, 2, X], or "autosomes" (1-22)
    chr: Optional[Union[Literal["autosomes"], list[Union[Int, str]]]] = None
    """chromosomes to keep (PLINK --chr): a list such as [1, 2, X], or autosomes (1-22)"""
    @field_validator("chr", mode="before")
    @classmethod
    def _chr(cls, v):
        return [v] if isinstance(v, (int, str)) and v != "autosomes" else v

    @model_validator(mode="after")
    def _one_extract(self):
        if self.extract is not None and self.include is not None:
            raise ValueError("give 'extract' or its older name 'include', not both")
        if self.include is not None:
            object.__setattr__(self, "extract", self.include)
            object.__setattr__(self, "include", None)
        if isinstance(self.chr, list) and not self.chr:
            raise ValueError("chr is an empty list; leave it out to keep every chromosome")
        return self

    def chromosomes(self) -> list[str] | None:
        """The chromosome codes to keep, as text (None: all)."""
        if self.chr is None:
            return None
        return list(AUTOSOMES) if self.chr == "autosomes" else [str(c) for c in self.chr]


class SamplesConfig(_Section):
    """Sample selection, as PLINK's --keep / --remove: files of FID IID (or IID alone) per line."""

    keep: Optional[Path] = None
    """file of FID IID (or IID alone) per line: the samples to keep (PLINK --keep)"""
    remove: Optional[Path] = None
    """file of FID IID (or IID alone) per line: the samples to drop (PLINK --remove)"""


def _names(v):
    """Column names; a headerless (GCTA-layout) file's columns (1, 2, ...; PHENO1, PHENO2, ... of a phenotype
    file) may be given as numbers."""
    if isinstance(v, list):
        return [str(x) for x in v]
    return v


class PhenotypesConfig(_Section):
    file: Optional[Path] = None
    """phenotype table: FID IID then values (header or GCTA's headerless layout), or GEMMA's layout"""
    #: the N-th phenotype column of the .fam (1: column 6; GEMMA's -n N) instead of a file; a
    #: list of such numbers, or "all", fits several
    fam: Union[PosInt, list[PosInt], Literal["all"], None] = None
    """instead of file, the N-th phenotype column(s) of the PLINK .fam (1 = column 6; GEMMA -n): N, [N, M] or all"""
    #: "fid_iid": FID IID then values (with or without a header); "gemma": no IDs, one column
    #: per phenotype, rows in .fam order (GEMMA's -p)
    layout: Literal["fid_iid", "gemma"] = "fid_iid"
    """fid_iid: FID IID then values; gemma: no IDs, one column per phenotype, rows in .fam order"""
    columns: Union[list[str], Literal["all"]] = "all"
    """the phenotypes to fit (column names, or numbers in a headerless file), or all"""
    missing: Literal["auto", "indicator", "subset"] = "auto"
    """missing values: indicator columns, a spectrum of the observed subset, or auto"""
    #: population prevalence of a binary (0/1 or 1/2) trait: h² is also reported on the
    #: liability scale (GCTA --prevalence)
    prevalence: Optional[float] = Field(None, gt=0.0, lt=1.0)
    """population prevalence of a binary trait: h2 also on the liability scale (GCTA --prevalence)"""

    _columns = field_validator("columns", mode="before")(classmethod(lambda cls, v: _names(v)))

    @model_validator(mode="after")
    def _one_source(self):
        if (self.file is None) == (self.fam is None):
            raise ValueError("give exactly one of 'file' (a phenotype table) or 'fam' (the N-th "
                             "phenotype column of the PLINK .fam, 1 = column 6)")
        if self.fam is not None and self.columns != "all":
            raise ValueError("'columns' is for a phenotype file; with 'fam' the column is fam: N")
        if isinstance(self.fam, list) and (not self.fam or len(set(self.fam)) != len(self.fam)):
            raise ValueError(f"'fam' lists the .fam phenotype columns to fit, each once (got {self.fam})")
        if self.fam is not None and self.layout != "fid_iid":
            raise ValueError("'layout' is for a phenotype file, not 'fam'")
        return self


class CovariatesConfig(_Section):
    file: Optional[Path] = None
    """covariate table with a FID IID header"""
    columns: list[str] = []
    """covariates of file to use"""
    categorical: list[str] = []
    """columns of file that are categories (one indicator per level but the first)"""
    pcs: Int = Field(0, ge=0)
    """add the top principal components of K as fixed effects"""
    #: GCTA-layout files: every column quantitative (--qcovar) or discrete (--covar)
    qcovar: Optional[Path] = None
    """GCTA --qcovar file: headerless, every column quantitative"""
    covar: Optional[Path] = None
    """GCTA --covar file: headerless, every column discrete"""

    _columns = field_validator("columns", "categorical", mode="before")(classmethod(lambda cls, v: _names(v)))

    @model_validator(mode="after")
    def _file_if_columns(self):
        if self.columns and self.file is None:
            raise ValueError("'columns' needs 'file'")
        return self


class SpectrumConfig(_Section):
    method: Literal["exact", "randomized", "auto"] = "exact"
    """exact (all eigenpairs), randomized (top rank), auto (exact up to exact_max_n)"""
    #: eigenpairs k of a randomized spectrum, 1 ≤ k ≤ n − 1 (checked against the cohort before a run)
    rank: Int = Field(200, ge=1, le=100_000)
    """randomized: number of eigenpairs k (1 <= k <= n - 1)"""
    #: l − k (default 50); l = rank + oversample is capped at n
    oversample: Optional[Int] = Field(None, ge=0)
    """randomized: extra subspace columns l - k (default 50; l is capped at n)"""
    #: q (default 3 krylov, 4 subspace); the Krylov space (q + 1)·l is capped at n samples, where
    #: the spectrum is exact (docs/math.md §6.2)
    power_iters: Optional[Int] = Field(None, ge=0)
    """randomized: power iterations q (default 3 krylov, 4 subspace)"""
    #: "krylov" (block Krylov, q + 1 passes) or "subspace" (subspace iteration, q + 2 passes)
    algorithm: Literal["krylov", "subspace"] = "krylov"
    """randomized: krylov (block Krylov, q + 1 passes) or subspace (q + 2 passes)"""
    seed: Int = Field(0, ge=0, le=2**63 - 1)
    """randomized: seed of the random start block and the probes"""
    probes: Int = Field(30, ge=0)
    """randomized: Hutchinson probes for the tail's tr K^2 (calibrated SE)"""
    #: method "auto" uses the exact spectrum up to this many analysed samples
    exact_max_n: Int = Field(10000, ge=1)
    """method auto (and reml.method auto): exact spectrum up to this many samples"""
    #: precision of the products in each pass over X (accumulated in float64)
    dtype: Literal["float32", "float64"] = RUN_DTYPE
    """precision of the products in each pass over X (accumulated in float64)"""


class GrmConfig(_Section):
    block_size: Optional[Int] = Field(None, ge=1)
    """samples per GRM block (default from the cluster's memory)"""
    #: true (prefix gcta/grm in the output directory) or a prefix inside the output directory.
    #: The files follow GCTA / PLINK 2 --make-grm-bin: each entry is averaged over the variants
    #: called in both samples (K·p/N_jk), and .grm.N.bin holds that per-pair count N_jk; bigmm's
    #: own K mean-imputes missing calls and divides by p (equal when nothing is missing)
    export_gcta: Union[bool, str] = False
    """write K as GCTA .grm.bin files: true (gcta/grm) or a prefix in the output"""
    #: precision of each variant chunk's product (accumulated in float64); see docs/performance.md
    dtype: Literal["float32", "float64"] = RUN_DTYPE
    """precision of each variant chunk's product (accumulated in float64)"""


def _check_size(v: str | None, what: str) -> str | None:
    if v is None:
        return v
    from dask.utils import parse_bytes

    try:
        size = parse_bytes(v)
    except Exception:
        raise ValueError(f"{what} {v!r} is not a size such as 4GiB or 500MB") from None
    if size <= 0:
        raise ValueError(f"{what} {v!r} must be a positive size such as 4GiB or 500MB")
    return v


class TlsConfig(_Section):
    ca_file: Path
    """certificate authority of the scheduler's TLS certificate"""
    cert: Path
    """this client's certificate"""
    key: Optional[Path] = None
    """this client's private key (if not in cert)"""


class AdaptiveConfig(_Section):
    minimum: Int = Field(0, ge=0)
    """fewest worker jobs"""
    maximum: Int = Field(1, ge=1)
    """most worker jobs"""


class JobqueueConfig(_Section):
    """Resources of each worker job (dask-jobqueue)."""

    queue: Optional[str] = None
    """batch queue (partition) of the worker jobs"""
    account: Optional[str] = None
    """account charged for the worker jobs"""
    walltime: str = "01:00:00"
    """wall-time limit of each worker job"""
    cores: Int = Field(4, ge=1)
    """cores per worker job"""
    memory: str = "16GiB"
    """memory per worker job"""
    processes: Int = Field(1, ge=1)
    """worker processes per job"""
    job_extra_directives: list[str] = []
    """extra scheduler directives (e.g. --qos=long)"""
    job_script_prologue: list[str] = []
    """shell lines run before each worker starts (e.g. module load)"""
    adaptive: Optional[AdaptiveConfig] = None
    """scale the worker jobs between minimum and maximum"""
    local_directory: Optional[str] = None
    """workers' scratch directory (spill to disk)"""
    log_directory: Optional[str] = None
    """directory of the worker jobs' logs"""
    interface: Optional[str] = None
    """network interface of the workers (e.g. ib0)"""

    @field_validator("memory")
    @classmethod
    def _memory(cls, v):
        return _check_size(v, "memory")


class ClusterConfig(_Section):
    backend: Literal["local", "address", "slurm", "pbs", "sge"] = "local"
    """local (worker processes here), address (a running scheduler), slurm, pbs, sge"""
    workers: Int = Field(2, ge=1)
    """Dask workers (local) or worker jobs (slurm/pbs/sge)"""
    threads_per_worker: Int = Field(1, ge=1)
    """threads of each local worker"""
    memory_limit: str = "4GiB"
    """memory of each local worker"""
    address: Optional[str] = None
    """scheduler address tcp://host:port or tls://host:port (backend address)"""
    tls: Optional[TlsConfig] = None
    """TLS files for a tls:// address"""
    dashboard: bool = False
    """serve the Dask dashboard"""
    jobqueue: JobqueueConfig = JobqueueConfig()
    """resources of each worker job (slurm/pbs/sge)"""
    #: seconds after which the scheduler drops a silent worker (distributed's default is 300)
    worker_ttl: Int = Field(120, ge=10)
    """seconds after which the scheduler drops a silent worker"""

    @field_validator("memory_limit")
    @classmethod
    def _memory(cls, v: str) -> str:
        return _check_size(v, "memory_limit")

    @model_validator(mode="after")
    def _backend(self):
        if self.address and self.backend == "local":
            object.__setattr__(self, "backend", "address")
        if self.backend == "address" and not self.address:
            raise ValueError("backend 'address' needs cluster.address (tcp://host:port or tls://host:port)")
        if self.address and not (self.address.startswith("tcp://") or self.address.startswith("tls://")):
            raise ValueError(f"address {self.address!r} must start with tcp:// or tls://")
        if self.address and self.address.startswith("tls://") and self.tls is None:
            raise ValueError("a tls:// address needs cluster.tls {ca_file, cert, key}")
        return self


class SubmitConfig(_Section):
    """The driver's own batch job, for ``bigmm submit``."""

    scheduler: Literal["slurm"] = "slurm"
    """batch system of bigmm submit"""
    job_name: Optional[str] = None
    """name of the driver's job (default from the output directory)"""
    queue: Optional[str] = None
    """batch queue (partition) of the driver's job"""
    account: Optional[str] = None
    """account charged for the driver's job"""
    walltime: str = "04:00:00"
    """wall-time limit of the driver's job"""
    cores: Int = Field(2, ge=1)
    """cores of the driver's job"""
    memory: str = "8GiB"
    """memory of the driver's job"""
    job_extra_directives: list[str] = []
    """extra #SBATCH directives"""
    setup: list[str] = []
    """shell lines run before bigmm in the job script (e.g. module load)"""

    @field_validator("memory")
    @classmethod
    def _memory(cls, v):
        return _check_size(v, "memory")


class PredictConfig(_Section):
    #: BLUP of genetic values (blup.tsv)
    blup: bool = False
    """BLUP of the genetic values of every genotyped sample (blup.tsv)"""
    #: SNP effects from one more pass over X (snp_effects.tsv, or .zarr for large p x m)
    snp_effects: bool = False
    """SNP effects from one more pass over X (snp_effects.tsv or .zarr)"""

    @model_validator(mode="after")
    def _needs_blup(self):
        if self.snp_effects and not self.blup:
            object.__setattr__(self, "blup", True)
        return self


class RemlConfig(_Section):
    #: "spectral": REML on the spectrum (exact, or the reduced randomized one); "matrix_free":
    #: Lanczos quadrature on passes over X, no spectrum needed; "components": exact AI-REML of
    #: several variance components on their m dense GRMs (the ``components`` section);
    #: "components_matrix_free": the same model by conjugate gradients on passes over X, no
    #: n x n matrix; "auto": spectral on an exact spectrum up to spectrum.exact_max_n samples,
    #: matrix-free above (with a components section, the default: components up to
    #: spectrum.exact_max_n samples, components_matrix_free above)
    method: Literal["spectral", "matrix_free", "components", "components_matrix_free", "auto"] = "spectral"
    """spectral (on the spectrum), matrix_free (Lanczos on passes over X), components (several GRMs), components_matrix_free, or auto"""
    grid_size: Int = Field(101, ge=3, le=100_001)
    """points of the h2 grid searched before the score is bisected"""
    #: matrix-free: at most this many Lanczos steps (passes over X)
    max_steps: Int = Field(mfreml.DEFAULT_MAX_STEPS, ge=2, le=10_000)
    """matrix-free: at most this many Lanczos steps (passes over X)"""
    #: matrix-free: Rademacher probes for log det H (their Monte Carlo SD is reported)
    probes: Int = Field(mfreml.DEFAULT_PROBES, ge=2, le=10_000)
    """matrix-free: Rademacher probes for log det H"""
    #: matrix-free: stop when |Δĥ²| < tol and |Δℓ_R| < 10·tol between steps (twice)
    tol: float = Field(mfreml.DEFAULT_TOL, gt=0.0, lt=1.0)
    """matrix-free: convergence tolerance on h2 between steps"""
    #: matrix-free: deflate the log det probes by the top-k eigenpairs of a randomized spectrum
    #: (k = this; 0: none). Helps structured cohorts; costs that spectrum's passes
    deflate: Int = Field(0, ge=0, le=100_000)
    """matrix-free: deflate the probes by this many top eigenpairs (0: none)"""
    #: matrix-free: seed of the probes
    seed: Int = Field(0, ge=0, le=2**63 - 1)
    """matrix-free: seed of the probes"""
    #: matrix-free: precision of the products in each pass (accumulated in float64). float32
    #: halves the pass's memory traffic; measured (scripts/studies/mf_float32.py, n = 3,000):
    #: |Δĥ²| ≤ 1e-7 unrelated and ≤ 1.6e-4 with 5 populations, under a tenth of the probes'
    #: Monte Carlo SD and 0.4% of the SE; float64 for bit-level comparisons
    dtype: Literal["float32", "float64"] = RUN_DTYPE
    """matrix-free: precision of the products in each pass (accumulated in float64)"""


#: the LD-score window (kb either side) when ``components.ld_bins`` is given without a window:
#: GCTA's ``--ld-score-region 200``
DEFAULT_LD_WINDOW_KB = 200.0


class ComponentsConfig(_Section):
    """Several genetic variance components (partitioned heritability, docs/math.md §11-12):
    ``Var(y) = Σ_j σ²_j K_j + σ²_e I``. The variants are split by an annotation file, variant
    lists, chromosomes, MAF bins and LD-score bins within them (GREML-LDMS); several of these
    are crossed (one component per combination present). Or several precomputed GRMs (mgrm)."""

    #: variant ID and component name per line, whitespace-separated (BOLT-REML's --modelSnps)
    file: Optional[Path] = None
    """variant ID and component name per line (BOLT-REML --modelSnps); variants not listed are in no component"""
    #: one variant list per component (first field of each line), the component named by the
    #: file name without its last suffix (coding.snplist -> coding)
    lists: list[Path] = []
    """one variant list per component (as GCTA's --extract per GRM); component name = file stem"""
    #: a file of GRM prefixes, one per line (GCTA's --mgrm); rules out every other key but
    #: constrain; with it genotypes.grm may name one of the GRMs (the run's samples)
    mgrm: Optional[Path] = None
    """file of GCTA/PLINK 2 GRM prefixes, one per line (GCTA --mgrm); excludes file/lists/bins"""
    #: MAF bin edges: bin k holds edges[k] <= MAF < edges[k+1], the last closed
    maf_bins: Optional[list[float]] = None
    """MAF bin edges, e.g. [0.01, 0.05, 0.1, 0.5]: one component per bin (GREML-MS)"""
    #: LD-score quantile bins within each component of the others (GREML-LDMS: within each MAF
    #: bin); LD scores from a windowed pass over the genotypes (ld_scores.tsv)
    ld_bins: Optional[PosInt] = None
    """LD-score quantile bins (4: quartiles) within each MAF bin or other component (GREML-LDMS)"""
    ld_window_kb: Optional[float] = Field(None, gt=0.0)
    """LD-score window: variants within this many kb either side (default 200, GCTA's)"""
    ld_window_variants: Optional[PosInt] = None
    """LD-score window: variants within this many variants either side (with kb: both hold)"""
    by_chromosome: bool = False
    """one component per chromosome (crossed with the others)"""
    #: GCTA's default: every σ²_j >= 0; false: GCTA --reml-no-constrain
    constrain: bool = True
    """keep every component's variance >= 0 (GCTA's default); false: --reml-no-constrain"""
    min_variants: PosInt = MIN_COMPONENT_VARIANTS
    """refuse a component with fewer kept variants than this"""
    #: matrix-free (reml.method components_matrix_free, or auto above spectrum.exact_max_n):
    #: converged when |Δh²_j| < tol for every component and |ΔVp| / Vp < tol between AI iterations
    tol: float = Field(mf_components.DEFAULT_TOL, gt=0.0, lt=1.0)
    """matrix-free: convergence tolerance on every h2_j between AI iterations"""
    #: matrix-free: a conjugate-gradient solve stops at relative residual cg_tol
    cg_tol: float = Field(mf_components.DEFAULT_CG_TOL, gt=0.0, lt=1.0)
    """matrix-free: relative residual at which a conjugate-gradient solve stops"""
    #: matrix-free: AI iterations at most (each a conjugate-gradient solve: one pass per step)
    max_iter: PosInt = mf_components.DEFAULT_MAX_ITER
    """matrix-free: AI iterations at most"""

    @model_validator(mode="after")
    def _defined(self):
        split = [k for k in ("file", "lists", "maf_bins", "ld_bins", "by_chromosome") if getattr(self, k)]
        if self.mgrm is not None and split:
            raise ValueError(f"'mgrm' (precomputed GRMs) cannot be combined with {', '.join(split)}: the "
                             f"GRMs are used as they are")
        if self.mgrm is None and not split:
            raise ValueError("define the components: give file, lists, maf_bins, ld_bins, by_chromosome or "
                             "mgrm")
        if (self.ld_window_kb is not None or self.ld_window_variants is not None) and self.ld_bins is None:
            raise ValueError("ld_window_kb / ld_window_variants are the LD-score window of ld_bins: add ld_bins")
        if self.maf_bins is not None:
            e = self.maf_bins
            if len(e) < 2 or any(b <= a for a, b in zip(e, e[1:])) or e[0] < 0 or e[-1] > 0.5:
                raise ValueError(f"maf_bins must be at least two increasing edges in [0, 0.5], got {e}")
        names = [p.stem if p.suffix else p.name for p in self.lists]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"lists: two files give component name '{dup[0]}' (the name is the file name "
                             f"without its suffix); rename one")
        return self

    def ld_window(self) -> tuple[float | None, int | None]:
        """The LD-score window (kb, variants): the given ones, else :data:`DEFAULT_LD_WINDOW_KB`."""
        if self.ld_window_kb is None and self.ld_window_variants is None:
            return DEFAULT_LD_WINDOW_KB, None
        return self.ld_window_kb, self.ld_window_variants


class ReportConfig(_Section):
    """What report.html shows beyond the fit."""

    #: a table of FID IID and label columns (read like the phenotype and covariate tables,
    #: matched by FID/IID); its label_column colours the PC plots
    labels: Optional[Path] = None
    """table of FID IID and text columns (e.g. population) whose label_column colours the PC plots"""
    #: the column of labels that colours the PC plots; may be left out when the table has one
    label_column: Optional[str] = None
    """the column of labels that colours the PC plots (default: the table's only column)"""
    #: matplotlib's figures take ~2 s of a run of a small cohort (its import and 7 figures); a
    #: batch of many small runs that only needs results.json and the tables may leave them out
    figures: bool = True
    """draw the report's figures; false: report.html with its tables only (no matplotlib)"""

    _column = field_validator("label_column", mode="before")(
        classmethod(lambda cls, v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v))

    @model_validator(mode="after")
    def _column_needs_file(self):
        if self.label_column is not None and self.labels is None:
            raise ValueError("'label_column' needs 'labels' (the table that holds it)")
        return self


def _changed(section: _Section, default: _Section) -> list[str]:
    """The keys of ``section`` whose values differ from ``default``'s."""
    return [k for k in type(section).model_fields if getattr(section, k) != getattr(default, k)]


class RunConfig(_Section):
    genotypes: GenotypesConfig
    """the genotype input (required)"""
    samples: SamplesConfig = SamplesConfig()
    """sample filters (PLINK --keep / --remove)"""
    variants: VariantsConfig = VariantsConfig()
    """variant filters and standardization"""
    phenotypes: PhenotypesConfig
    """the traits to fit (required)"""
    covariates: CovariatesConfig = CovariatesConfig()
    """fixed effects besides the intercept"""
    spectrum: SpectrumConfig = SpectrumConfig()
    """eigendecomposition of the GRM"""
    grm: GrmConfig = GrmConfig()
    """the GRM stage (exact spectrum or GCTA export)"""
    reml: RemlConfig = RemlConfig()
    """the REML fit"""
    components: Optional[ComponentsConfig] = None
    """several genetic variance components (partitioned heritability; reml.method components)"""
    output: Path
    """the run directory (required)"""
    predict: PredictConfig = PredictConfig()
    """predictions after the fit"""
    cluster: ClusterConfig = ClusterConfig()
    """the Dask cluster the passes over the genotypes run on"""
    submit: SubmitConfig = SubmitConfig()
    """the driver's own batch job (bigmm submit)"""
    report: ReportConfig = ReportConfig()
    """what report.html shows beyond the fit (labels for the PC plots)"""
    rg: RgConfig = RgConfig()
    """genetic correlations: bivariate REML of pairs of phenotypes (rg.tsv, rg/*.hsq)"""

    @model_validator(mode="after")
    def _fam_needs_plink(self):
        if self.phenotypes.fam is not None and self.genotypes.plink is None:
            raise ValueError("phenotypes.fam reads the .fam of genotypes.plink; with other genotype "
                             "input give phenotypes.file")
        return self

    @model_validator(mode="after")
    def _components_model(self):
        """A components section fits the components model (the default when it is given); the
        model needs one, and has no SNP effects."""
        c, r = self.components, self.reml
        if c is None:
            if r.method == "components":
                raise ValueError("reml.method: components needs a 'components' section (the variance "
                                 "components: file, lists, mgrm, maf_bins, ld_bins or by_chromosome)")
            return self
        if "method" not in r.model_fields_set:  # not a shared default instance: a copy
            r = r.model_copy(update={"method": "auto"})
            object.__setattr__(self, "reml", r)
        if r.method in ("spectral", "matrix_free"):
            raise ValueError(f"reml.method: {r.method} fits one genetic component; with a 'components' "
                             f"section use reml.method: components (or auto, or leave it out)")
        if self.predict.snp_effects:
            raise ValueError("predict.snp_effects is not available with several components; predict.blup "
                             "writes each component's genetic values (blup.tsv)")
        if c.mgrm is not None and r.method == "components_matrix_free":
            raise ValueError("reml.method: components_matrix_free makes passes over genotypes; precomputed "
                             "GRMs (components.mgrm) are fitted by reml.method: components")
        if self.genotypes.grm is not None and c.mgrm is None:
            raise ValueError("components from variants (file, lists, bins, by_chromosome) need genotypes "
                             "(plink, zarr or vcf_zarr), not genotypes.grm; with precomputed GRMs use "
                             "components.mgrm")
        if self.covariates.pcs and self.genotypes.grm is not None:
            raise ValueError("covariates.pcs with components.mgrm: PCs need genotypes; give them as "
                             "covariates (--qcovar)")
        return self

    @model_validator(mode="after")
    def _grm_needs_no_genotypes(self):
        """With genotypes.grm there is no X: refuse every setting that needs it (all at once)."""
        if self.genotypes.grm is None:
            return self
        why = []
        if self.spectrum.method == "randomized":
            why.append("spectrum.method: randomized computes the spectrum from the genotypes; a given GRM "
                       "is eigendecomposed exactly (leave spectrum.method out, or exact)")
        if self.reml.method == "matrix_free":
            why.append("reml.method: matrix_free makes passes over the genotypes; with a given GRM use "
                       "reml.method: spectral (the default)")
        if self.predict.snp_effects:
            why.append("predict.snp_effects needs the genotypes (β̂ = Xᵀ w); with a given GRM only "
                       "predict.blup (genetic values) is available")
        # settings that differ from their defaults (a saved config repeats every default)
        for key in _changed(self.variants, VariantsConfig()):
            why.append(f"variants.{key} filters or standardizes genotypes; a given GRM is used as it is "
                       f"(filter when making it: plink2 --make-rel / gcta --make-grm-bin)")
        for key in _changed(self.grm, GrmConfig()):
            why.append(f"grm.{key} configures the GRM bigmm computes from genotypes; "
                       + ("the given GRM is already in GCTA's format or PLINK 2's" if key == "export_gcta"
                          else "a given GRM is read as it is"))
        if self.reml.deflate:
            why.append("reml.deflate is for matrix-free REML, which a given GRM does not use")
        if why:
            raise ValueError("genotypes.grm (a precomputed GRM, no genotypes) rules out: " + "; ".join(why))
        return self

    @model_validator(mode="after")
    def _outputs_inside(self):
        exp = self.grm.export_gcta
        if isinstance(exp, str):
            # a prefix: the files are PREFIX.grm.*, so PREFIX must name something inside
            target, out = resolve_path(self.output / exp), resolve_path(self.output)
            if Path(exp).is_absolute() or target == out or not target.is_relative_to(out):
                raise ValueError(f"grm.export_gcta {exp!r} writes outside the output directory "
                                 f"{self.output}; give a prefix relative to it (e.g. gcta/grm)")
        return self

    def gcta_prefix(self) -> Path | None:
        exp = self.grm.export_gcta
        if exp is False:
            return None
        return self.output / ("gcta/grm" if exp is True else exp)

    def _dump(self) -> dict:
        """The configuration as JSON for its hashes; a setting added later with a default that
        keeps what runs did before is left out at that default (report.figures), so that the
        runs made before it keep their fingerprints."""
        dump = self.model_dump(mode="json")
        if (dump.get("report") or {}).get("figures") is True:
            dump["report"].pop("figures")
        return dump

    def section_fingerprint(self, *names: str) -> str:
        """Hash of some sections of the configuration."""
        dump = self._dump()
        blob = json.dumps({n: dump.get(n) for n in names}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    #: where the config came from (not a YAML key)
    source: Optional[Path] = Field(None, exclude=True)
    """where the config came from (not a YAML key)"""

    def fingerprint(self) -> str:
        """Hash of the configuration content (resolved paths included); a config without a
        components section, or with the default rg section, hashes as before they existed."""
        dump = self._dump()
        if dump.get("components") is None:
            dump.pop("components", None)
        if dump.get("rg") == RgConfig().model_dump(mode="json"):  # likewise without an rg section
            dump.pop("rg", None)
        blob = json.dumps(dump, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_PATH_FIELDS = {("genotypes", "plink"), ("genotypes", "zarr"), ("genotypes", "vcf_zarr"), ("genotypes", "grm"),
                ("covariates", "qcovar"), ("covariates", "covar"), ("variants", "include"),
                ("variants", "extract"), ("variants", "exclude"), ("samples", "keep"), ("samples", "remove"),
                ("phenotypes", "file"), ("covariates", "file"), ("output",), ("report", "labels"),
                ("cluster", "tls", "ca_file"), ("cluster", "tls", "cert"), ("cluster", "tls", "key"),
                ("components", "file"), ("components", "mgrm"), ("components", "lists")}


def _resolve(raw: dict, base: Path) -> dict:
    out = json.loads(json.dumps(raw, default=str))
    for path in _PATH_FIELDS:
        node = out
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict) and isinstance(node.get(path[-1]), str):
            p = Path(node[path[-1]]).expanduser()
            node[path[-1]] = str(p if p.is_absolute() else resolve_path(base / p))
        elif isinstance(node, dict) and isinstance(node.get(path[-1]), list):  # a list of paths
            node[path[-1]] = [str(q if (q := Path(x).expanduser()).is_absolute() else resolve_path(base / q))
                              if isinstance(x, str) else x for x in node[path[-1]]]
    return out


def _known_keys(loc: tuple) -> list[str]:
    """The keys allowed beside the last key of ``loc`` (a validation error location)."""
    model = RunConfig
    for key in loc[:-1]:
        field = model.model_fields.get(key)
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return [k for k in model.model_fields if k != "source"]


def _format_errors(exc: ValidationError, where: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            known = _known_keys(err["loc"])
            close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1, cutoff=0.75)
            hint = (f" (did you mean {close[0]!r}?)" if close
                    else f"; the keys here are {', '.join(known)}" if known else "")
            lines.append(f"  {loc}: unknown key{hint}")
        elif err["type"] == "missing":
            lines.append(f"  {loc}: required key is missing")
        else:
            got = err.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  {loc}: {err['msg']}{got_s}")
    return f"invalid configuration {where}:\n" + "\n".join(lines)


def parse_config(raw: dict, base: Path | None = None, source: Path | None = None) -> RunConfig:
    """Validate a configuration mapping; relative paths are taken from ``base``."""
    where = str(source) if source else "(mapping)"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the configuration must be a mapping of sections")
    if "source" in raw:  # a field of RunConfig, but not a YAML key
        raise ConfigError(f"invalid configuration {where}:\n  source: unknown key; the keys here are "
                          f"{', '.join(_known_keys(('source',)))}")
    resolved = _resolve(raw, base or Path.cwd())
    try:
        cfg = RunConfig.model_validate(resolved)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, where)) from None
    return cfg.model_copy(update={"source": source})


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML run configuration."""
    path = Path(path)
    raw = read_yaml(path)
    if raw is None:
        raise ConfigError(f"{path} is empty")
    return parse_config(raw, base=resolve_path(path).parent, source=resolve_path(path))
