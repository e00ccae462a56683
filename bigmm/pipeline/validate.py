"""The one validator: every problem of a run configuration, found once, before any compute.

:func:`validate` reads each input once (the genotype samples and variants, the phenotype and
covariate tables, the variant list), checks sample overlap, columns, the memory plan, the free
disk space and the output directory, and either raises one error listing every problem or
returns the parsed :class:`Inputs` the run then uses. ``bigmm check`` and ``bigmm run`` share it;
``check`` prints the plan it checked (:meth:`Inputs.describe`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from dask.utils import format_bytes

from ..errors import BigmmError, ConfigError, InputError
from ..io.plink import PlinkFileset, read_plink
from ..io.tables import Design, build_design, read_table
from ..spectrum import subspace_width
from ..store import open_store
from .config import (ClusterConfig, CovariatesConfig, GenotypesConfig, PhenotypesConfig, RunConfig,
                     VariantsConfig, _resolve, parse_config, read_yaml)
from .plan import (check_memory, cluster_threads, grm_block_size, matrix_free_width, needs_grm, needs_spectrum,
                   planned_stages, reml_method, spectrum_method, stage_flops, stage_passes)
from .rundir import check_output_dir


@dataclass(frozen=True)
class Inputs:
    """What a run uses, read once: samples, the design, the variant list and the plan checked."""

    ids: list
    design: Design
    include: list | None
    n_variants: int
    method: str
    reml_method: str
    variant_chunk: int
    plink: PlinkFileset | None = None
    store: object = None  # the cohort or VCF Zarr store a config names (not for PLINK input)
    memory_plan: dict = field(default_factory=dict)
    replace_other_run: bool = False
    spectrum_needed: bool = True
    stage_passes: dict = field(default_factory=dict)  # passes over X per stage (plan.stage_passes)
    stage_flops: dict = field(default_factory=dict)  # arithmetic per stage (plan.stage_flops)
    workers: str = ""  # the cluster's workers and their memory, for a person
    filters: str = ""  # the variant filters, for a person

    @property
    def genotype_provenance(self) -> dict | None:
        if self.store is None:
            return None
        attrs = self.store.attrs
        return {"created": attrs.get("created"), "provenance": attrs.get("provenance")}

    def describe(self, flops_per_second: float | None = None) -> str:
        """The plan checked, for a person: samples, variants, methods, stages and their passes
        over X, memory per task, worker and driver, and with ``flops_per_second`` (a rate
        measured on this machine, :func:`bigmm.pipeline.plan.matmul_rate`) a rough time estimate."""
        d = self.design
        mp = self.memory_plan
        lines = [f"samples: {len(self.ids)} genotyped, {int(d.analysed.sum())} analysed; "
                 f"{len(d.phenotype_names)} phenotype(s), {d.Z.shape[1]} fixed effects",
                 f"variants: {self.n_variants} in the genotype input"
                 + (f", {len(self.include)} in the include list" if self.include is not None else "")
                 + (f"; kept: those passing {self.filters} (counted by the variant statistics, the run's "
                    f"first pass over X)" if self.filters else ""),
                 f"REML: {self.reml_method}; spectrum: "
                 + (self.method if self.spectrum_needed else "none (matrix-free REML without deflation or PCs)")]
        if self.stage_passes:
            total = sum(self.stage_passes.values())
            mf = self.reml_method == "matrix_free"
            lines.append(f"stages: {', '.join(self.stage_passes)}; passes over X: {'at most ' if mf else ''}"
                         f"{total:g} in all (" + ", ".join(f"{k} {v:g}" for k, v in self.stage_passes.items() if v)
                         + ("; matrix-free REML stops when converged" if mf else "") + ")")
        if "mf_pass_vectors" in mp:
            lines.append(f"matrix-free passes over X: at most {mp['mf_max_passes']} Lanczos steps of "
                         f"{mp['mf_pass_vectors']} vectors ({format_bytes(mp['mf_pass_task_bytes'])} per task), "
                         f"driver up to {format_bytes(mp['mf_driver_bytes'])}")
        if "passes_over_X" in mp and self.spectrum_needed:
            lines.append(f"randomized spectrum: {mp['passes_over_X']} passes over X, the widest of "
                         f"{mp['pass_vectors']} vectors")
        if mp.get("task_memory_bytes"):
            lines.append(f"memory per task: {format_bytes(mp['task_memory_bytes'])} allowed"
                         + (f", widest pass needs {format_bytes(mp['pass_task_bytes'])}" if "pass_task_bytes" in mp else "")
                         + (f", a GRM block needs {format_bytes(mp['grm_block_task_bytes'])}"
                            if "grm_block_task_bytes" in mp else ""))
        if self.workers:
            lines.append(f"workers: {self.workers}")
        if mp.get("driver_bytes"):
            lines.append(f"driver memory: {format_bytes(mp['driver_bytes'])}")
        if flops_per_second and self.stage_flops:
            total = sum(self.stage_flops.values())
            lines.append(f"estimated time: about {_rough_duration(total / flops_per_second)} of arithmetic (a rough "
                         f"estimate: {total:.2g} floating-point operations of the plan ("
                         + ", ".join(f"{k} {v:.2g}" for k, v in self.stage_flops.items())
                         + f") at {flops_per_second / 1e9:.0f} GFLOP/s, the rate of a float32 NumPy matrix product "
                         f"measured just now on this machine; it assumes the cluster computes as fast as this "
                         f"machine with all its cores, and leaves out reading the genotypes, starting the "
                         f"cluster and the report)")
        return "\n".join(lines)


def _rough_duration(seconds: float) -> str:
    """``0.0042 s``, ``4.2 s``, ``12 s``, ``3.5 min``, ``2.1 h``.

    >>> _rough_duration(0.00421), _rough_duration(4.21), _rough_duration(12.3), _rough_duration(210), _rough_duration(7560)
    ('0.0042 s', '4.2 s', '12 s', '3.5 min', '2.1 h')
    """
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _attempt(problems: list[str], fn, *args):
    try:
        return fn(*args)
    except BigmmError as exc:
        problems.append(str(exc))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    return None


def read_id_list(path: Path) -> list[str]:
    """Variant IDs, one per line (first field), ``#`` comments allowed."""
    if not path.exists():
        raise InputError(f"variant list {path} does not exist")
    ids = [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not ids:
        raise InputError(f"variant list {path} is empty")
    return ids


def estimate_disk(cfg: RunConfig, n: int, p: int, method: str, rmethod: str = "spectral") -> dict[str, int]:
    """Bytes the run will write, by output (upper bounds; stores are compressed)."""
    need = {}
    if cfg.genotypes.plink is not None:
        need["genotypes.zarr (int8, before compression)"] = n * p
    if needs_grm(cfg, method, rmethod):
        need["grm.zarr (float64 n x n)"] = 8 * n * n
    if cfg.gcta_prefix() is not None:
        need["GCTA .grm.bin + .grm.N.bin"] = 4 * n * (n + 1)
    if not needs_spectrum(cfg, rmethod):
        return need
    k = n if method == "exact" else cfg.spectrum.rank
    need["spectrum.zarr (U, float64 n x k)"] = 8 * n * k
    if method == "randomized":
        l = subspace_width(cfg.spectrum.rank, cfg.spectrum.oversample, n)
        need["spectrum checkpoint (float64 n x l)"] = 8 * n * l
    return need


def _check_disk(cfg: RunConfig, n: int, p: int, method: str, rmethod: str) -> None:
    need = estimate_disk(cfg, n, p, method, rmethod)
    total = sum(need.values())
    where = Path(cfg.output)
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if total > free:
        detail = "; ".join(f"{k} {format_bytes(v)}" for k, v in need.items())
        raise ConfigError(f"not enough disk space for the run: it writes up to {format_bytes(total)} "
                          f"({detail}) under {cfg.output}, but {where} has {format_bytes(free)} free")


def _check_cluster(cc: ClusterConfig) -> None:
    if cc.backend == "address":
        from distributed import Client

        from .cluster import _security

        try:
            client = Client(cc.address, timeout="5s", security=_security(cc))
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cluster.address: cannot reach the Dask scheduler at {cc.address} ({exc})") from None
        client.close()
    elif cc.backend in ("slurm", "pbs", "sge"):
        try:
            import dask_jobqueue  # noqa: F401
        except ImportError:
            raise ConfigError(f"cluster.backend {cc.backend!r} needs dask-jobqueue: "
                              f"pip install 'bigmm[jobqueue]'") from None


def _open_genotype_store(g: GenotypesConfig):
    if g.vcf_zarr is not None:
        from ..io.vcfzarr import open_vcf_zarr

        return open_vcf_zarr(g.vcf_zarr)
    return open_store(g.zarr)


def _check_inputs(problems: list[str], genotypes: GenotypesConfig | None, phenotypes: PhenotypesConfig | None,
                  covariates: CovariatesConfig | None, variants: VariantsConfig | None) -> dict:
    """Read and check the input files of the sections given (None: a section that is itself
    invalid), each once; problems are appended. Returns what was read."""
    got: dict = {}
    g = genotypes
    ids = p = None
    if g is not None and g.plink is not None:
        fs = _attempt(problems, read_plink, g.plink)
        if fs is not None:
            got.update(plink=fs, variant_chunk=g.chunks[1])
            ids, p = fs.sample_ids, fs.n_variants
    elif g is not None:
        store = _attempt(problems, _open_genotype_store, g)
        if store is not None:
            got.update(store=store, variant_chunk=store.chunks[1])
            ids, p = store.sample_ids(), store.n_variants
    if ids is not None:
        seen: dict = {}
        for i, key in enumerate(ids):
            if key in seen:
                problems.append(f"genotype samples: duplicate ID {key[0]}/{key[1]} (rows {seen[key] + 1} "
                                f"and {i + 1}); sample IDs must be unique")
                break
            seen[key] = i
        got.update(ids=ids, n_variants=p)
    if ids is not None and phenotypes is not None and covariates is not None:
        c = covariates
        before = len(problems)
        design = _attempt(problems, build_design, ids, phenotypes.file, phenotypes.columns, c.file,
                          c.columns, c.categorical, c.qcovar, c.covar)
        if design is not None:
            got["design"] = design
        else:
            del problems[before:]
    if "design" not in got:
        # each table and its columns on its own, so that problems in both are reported (read
        # again only on this error path)
        before = len(problems)
        for section, what in ((phenotypes, "phenotype"), (covariates, "covariate")):
            if section is None or section.file is None:
                continue
            t = _attempt(problems, read_table, section.file, what)
            if t is not None and section.columns != "all":
                for col in section.columns:
                    _attempt(problems, t.column_index, col)
        if len(problems) == before and ids is not None and phenotypes is not None and covariates is not None:
            c = covariates
            _attempt(problems, build_design, ids, phenotypes.file, phenotypes.columns, c.file, c.columns,
                     c.categorical, c.qcovar, c.covar)
    if variants is not None and variants.include is not None:
        got["include"] = _attempt(problems, read_id_list, variants.include)
    return got


def _workers_text(cc: ClusterConfig) -> str:
    """The cluster's workers and the memory of each, for a person."""
    if cc.backend == "local":
        return (f"local cluster of {cc.workers} worker processes x {cc.threads_per_worker} threads, "
                f"{cc.memory_limit} each")
    if cc.backend == "address":
        return f"those of the scheduler at {cc.address} (their memory is theirs)"
    jq = cc.jobqueue
    jobs = f"{jq.adaptive.minimum}..{jq.adaptive.maximum}" if jq.adaptive is not None else f"{cc.workers}"
    return f"{jobs} {cc.backend} jobs of {jq.cores} cores and {jq.memory} ({jq.processes} worker processes each)"


def collect(cfg: RunConfig, *, force: bool = False, contact_cluster: bool = False) -> tuple[list[str], Inputs | None]:
    """Every problem of a parsed configuration and its inputs, and the inputs when there are none."""
    problems: list[str] = []
    got = _check_inputs(problems, cfg.genotypes, cfg.phenotypes, cfg.covariates, cfg.variants)
    ids = got.get("ids")
    method = rmethod = None
    memory_plan: dict = {}
    if ids is not None:
        method = spectrum_method(cfg, len(ids))
        rmethod = reml_method(cfg, len(ids))
        mf_width = None
        if rmethod == "matrix_free" and "design" in got:
            d = got["design"]
            mf_width = matrix_free_width(np.isnan(d.Y), d.Z.shape[1] + cfg.covariates.pcs, cfg.reml.probes,
                                         cfg.reml.deflate)
        memory_plan = _attempt(problems, check_memory, cfg, len(ids), method, got["variant_chunk"], rmethod,
                               mf_width) or {}
        if cfg.covariates.pcs and method == "randomized" and cfg.covariates.pcs > cfg.spectrum.rank:
            problems.append(f"covariates.pcs = {cfg.covariates.pcs} exceeds spectrum.rank = {cfg.spectrum.rank}")
        if got.get("n_variants") is not None:
            _attempt(problems, _check_disk, cfg, len(ids), got["n_variants"], method, rmethod)
    replace = _attempt(problems, check_output_dir, Path(cfg.output), cfg, force)
    if contact_cluster:
        _attempt(problems, _check_cluster, cfg.cluster)
    if problems or "design" not in got:
        return problems, None
    n, p = len(ids), got["n_variants"]
    stages = planned_stages(cfg, method, rmethod)
    threads = cluster_threads(cfg.cluster) or os.cpu_count() or 1
    block = grm_block_size(cfg, n, threads, min(cfg.genotypes.chunks[0], n), min(got["variant_chunk"], p)) \
        if "grm" in stages else None
    passes = stage_passes(cfg, n, method, rmethod, block, memory_plan, stages)
    flops = stage_flops(cfg, n, p, method, rmethod, memory_plan, passes, len(got["design"].phenotype_names))
    return problems, Inputs(ids=ids, design=got["design"], include=got.get("include"),
                            n_variants=got["n_variants"], method=method, reml_method=rmethod,
                            variant_chunk=got["variant_chunk"],
                            plink=got.get("plink"), store=got.get("store"), memory_plan=memory_plan,
                            replace_other_run=bool(replace), spectrum_needed=needs_spectrum(cfg, rmethod),
                            stage_passes=passes, stage_flops=flops, workers=_workers_text(cfg.cluster),
                            filters=f"min_maf {cfg.variants.min_maf}, max_missing {cfg.variants.max_missing}")


def validate(cfg: RunConfig, *, force: bool = False, contact_cluster: bool = False) -> Inputs:
    """The inputs of a run, read once; one error listing every problem if there are any."""
    problems, inputs = collect(cfg, force=force, contact_cluster=contact_cluster)
    if len(problems) == 1:
        raise InputError(problems[0])
    if problems:
        raise InputError(f"{len(problems)} problems" + (f" in {cfg.source}" if cfg.source else "") + ":\n"
                         + "\n".join(f"  - {p}" for p in problems))
    return inputs


def check_config(cfg: RunConfig, contact_cluster: bool = True, force: bool = False) -> list[str]:
    """Every problem of a parsed configuration's inputs (empty list: ready to run)."""
    return collect(cfg, force=force, contact_cluster=contact_cluster)[0]


def check_file(path: str | Path, contact_cluster: bool = True) -> tuple[list[str], Inputs | None]:
    """Every problem of a YAML config file: the schema (all keys at once), then its inputs;
    and the inputs (with the plan checked) when there are none."""
    path = Path(path)
    try:
        raw = read_yaml(path)
    except ConfigError as exc:
        return [str(exc)], None
    if raw is None:
        return [f"{path} is empty"], None
    if not isinstance(raw, dict):
        return [f"{path}: the configuration must be a mapping of sections"], None
    try:
        cfg = parse_config(raw, base=path.resolve().parent, source=path.resolve())
    except ConfigError as exc:
        problems = [ln.strip() for ln in str(exc).splitlines()[1:]]
        problems = [f"{path}: {ln}" for ln in problems] or [str(exc)]
        # sections that are valid on their own still get their inputs checked
        problems += _check_valid_sections(raw, path, contact_cluster)
        return problems, None
    return collect(cfg, contact_cluster=contact_cluster)


def _check_valid_sections(raw: dict, path: Path, contact_cluster: bool) -> list[str]:
    """Input and cluster checks for the sections of an invalid config that are themselves valid."""
    resolved = _resolve(raw, path.resolve().parent)
    valid: dict = {}
    for key, model in (("genotypes", GenotypesConfig), ("phenotypes", PhenotypesConfig),
                       ("covariates", CovariatesConfig), ("variants", VariantsConfig),
                       ("cluster", ClusterConfig)):
        section = resolved.get(key, None if key in ("genotypes", "phenotypes") else {})
        if not isinstance(section, dict):
            continue
        try:
            valid[key] = model.model_validate(section)
        except Exception:  # noqa: BLE001 - its schema errors are already reported
            continue
    problems: list[str] = []
    _check_inputs(problems, *(valid.get(k) for k in ("genotypes", "phenotypes", "covariates", "variants")))
    if contact_cluster and "cluster" in valid:
        _attempt(problems, _check_cluster, valid["cluster"])
    return problems
