"""Validation before compute: every problem of a run configuration, reported together.

``bigmm check CONFIG.yaml`` and the first step of ``bigmm run`` read the config
and all inputs (genotype files, phenotype and covariate tables, variant lists),
check sample overlap, columns, the memory plan, the output directory, the
cluster's reachability and the free disk space for what the run will write,
and list every problem found, before any expensive stage starts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from .config import (ClusterConfig, CovariatesConfig, GenotypesConfig, PhenotypesConfig, RunConfig,
                     VariantsConfig, parse_config)
from .errors import BigmmError, ConfigError, InputError


def _attempt(problems: list[str], fn, *args):
    try:
        return fn(*args)
    except BigmmError as exc:
        problems.append(str(exc))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    return None


def estimate_disk(cfg: RunConfig, n: int, p: int, method: str) -> dict[str, int]:
    """Bytes the run will write, by output (upper bounds; stores are compressed)."""
    need = {}
    if cfg.genotypes.plink is not None:
        need["genotypes.zarr (int8, before compression)"] = n * p
    if method == "exact" or cfg.gcta_prefix() is not None:
        need["grm.zarr (float64 n x n)"] = 8 * n * n
    if cfg.gcta_prefix() is not None:
        need["GCTA .grm.bin + .grm.N.bin"] = 4 * n * (n + 1)
    k = n if method == "exact" else cfg.spectrum.rank
    need["spectrum.zarr (U, float64 n x k)"] = 8 * n * k
    if method == "randomized":
        from .spectrum import DEFAULT_OVERSAMPLE

        l = cfg.spectrum.rank + (cfg.spectrum.oversample or DEFAULT_OVERSAMPLE)
        need["spectrum checkpoint (float64 n x l)"] = 8 * n * l
    return need


def _check_disk(cfg: RunConfig, n: int, p: int, method: str) -> None:
    from dask.utils import format_bytes

    need = estimate_disk(cfg, n, p, method)
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


def _check_inputs(problems: list[str], genotypes: GenotypesConfig | None, phenotypes: PhenotypesConfig | None,
                  covariates: CovariatesConfig | None, variants: VariantsConfig | None):
    """Problems of the input files of the sections given (None: a section that is itself invalid).

    Returns the genotype sample IDs and the number of variants (None if unreadable).
    """
    from .io.plink import check_bed, plink_paths, read_bim, read_fam
    from .io.tables import build_design, read_table
    from .pipeline import _read_id_list
    from .store import open_store

    ids = p = None
    g = genotypes
    if g is not None and g.plink is not None:
        paths = _attempt(problems, plink_paths, g.plink)
        if paths:
            fam = _attempt(problems, read_fam, paths["fam"])
            bim = _attempt(problems, read_bim, paths["bim"])
            if fam:
                ids = list(zip(*fam))
            if bim:
                p = len(bim["id"])
            if fam and bim:
                _attempt(problems, check_bed, paths["bed"], len(ids), p)
    elif g is not None and g.vcf_zarr is not None:
        from .io.vcfzarr import open_vcf_zarr

        store = _attempt(problems, open_vcf_zarr, g.vcf_zarr)
        if store is not None:
            ids, p = store.sample_ids(), store.n_variants
    elif g is not None:
        store = _attempt(problems, open_store, g.zarr)
        if store is not None:
            ids, p = store.sample_ids(), store.n_variants
    if ids is not None:
        seen = set()
        for key in ids:
            if key in seen:
                problems.append(f"genotype samples: duplicate ID {key[0]}/{key[1]}")
                break
            seen.add(key)
    # each table and its columns on its own, so that problems in both are reported; then the
    # design (values, sample overlap) when both are readable
    before = len(problems)
    for section, what in ((phenotypes, "phenotype"), (covariates, "covariate")):
        if section is None or section.file is None:
            continue
        t = _attempt(problems, read_table, section.file, what)
        if t is not None and section.columns != "all":
            for c in section.columns:
                _attempt(problems, t.column_index, c)
    if ids is not None and phenotypes is not None and covariates is not None and len(problems) == before:
        _attempt(problems, build_design, ids, phenotypes.file, phenotypes.columns, covariates.file,
                 covariates.columns, covariates.categorical, covariates.qcovar, covariates.covar)
    if variants is not None and variants.include is not None:
        _attempt(problems, _read_id_list, variants.include)
    return ids, p


def check_config(cfg: RunConfig, contact_cluster: bool = True, force: bool = False) -> list[str]:
    """Every problem of a parsed configuration's inputs (empty list: ready to run)."""
    from .pipeline import check_memory, check_output_dir, spectrum_method

    problems: list[str] = []
    ids, p = _check_inputs(problems, cfg.genotypes, cfg.phenotypes, cfg.covariates, cfg.variants)
    if ids is not None:
        method = spectrum_method(cfg, len(ids))
        _attempt(problems, check_memory, cfg, len(ids), method)
        if p is not None:
            _attempt(problems, _check_disk, cfg, len(ids), p, method)
    if not force:
        _attempt(problems, check_output_dir, Path(cfg.output), cfg, False)
    if contact_cluster:
        _attempt(problems, _check_cluster, cfg.cluster)
    return problems


def check_file(path: str | Path, contact_cluster: bool = True) -> list[str]:
    """Every problem of a YAML config file: the schema (all keys at once), then its inputs."""
    from .config import load_config

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        return [f"{path}: not valid YAML ({exc})"]
    if raw is None or not isinstance(raw, dict):
        try:
            load_config(path)
        except BigmmError as exc:
            return [str(exc)]
        return [f"{path}: the configuration must be a mapping of sections"]
    try:
        cfg = parse_config(raw, base=path.resolve().parent, source=path.resolve())
    except ConfigError as exc:
        problems = [ln.strip() for ln in str(exc).splitlines()[1:]]
        problems = [f"{path}: {ln}" for ln in problems] or [str(exc)]
        # sections that are valid on their own still get their inputs checked
        problems += _check_valid_sections(raw, path, contact_cluster)
        return problems
    return check_config(cfg, contact_cluster)


def _check_valid_sections(raw: dict, path: Path, contact_cluster: bool) -> list[str]:
    """Input and cluster checks for the sections of an invalid config that are themselves valid."""
    from .config import _resolve

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


def raise_problems(cfg: RunConfig, force: bool = False) -> None:
    """Raise one error listing every problem (the first step of ``bigmm run``)."""
    problems = check_config(cfg, contact_cluster=False, force=force)
    if len(problems) == 1:
        raise InputError(problems[0])
    if problems:
        raise InputError(f"{len(problems)} problems" + (f" in {cfg.source}" if cfg.source else "") + ":\n"
                         + "\n".join(f"  - {p}" for p in problems))
