"""The config-driven run: ingest → variant stats → GRM → spectrum → REML → report.

Each stage loads its inputs, calls one function of the numerical core and
commits its output into the run directory (``config.output``) by atomic
rename. All inputs (genotype IDs, phenotype and covariate tables, variant
lists) are read and checked before any expensive stage starts.

Run directory::

    run.json          the run manifest (config, fingerprint, status, stage timings)
    run.log           the log
    genotypes.zarr    the cohort store (PLINK input only)
    variants.zarr     per-variant statistics and the standardization
    grm.zarr          K over all genotyped samples (+ its block ledger)
    spectrum.zarr     eigenpairs of K over the analysed samples
    results.json      written last: its presence means the run finished
    results.tsv
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from ._version import __version__
from .config import RunConfig
from .errors import InputError
from .genotypes import Standardization, VariantStats, standardization, variant_stats
from .io.tables import Design, build_design
from .reml import RemlResult, fit_reml
from .spectrum import Spectrum, exact_spectrum, randomized_spectrum
from .store import CohortStore, atomic_dir, atomic_write_text, new_array, now_utc, open_store, remove_path

log = logging.getLogger("bigmm")

#: files and directories of a run directory that bigmm owns (removed by --force)
RUN_FILES = ("run.json", "run.log", "genotypes.zarr", "variants.zarr", "grm.zarr", "grm.zarr.partial",
             "spectrum.zarr", "results.json", "results.tsv", "gcta", "eigenvalues.tsv", "pcs.tsv")


@dataclass(frozen=True)
class RunOutcome:
    output: Path
    result: RemlResult
    results_json: Path


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def check_output_dir(out: Path, cfg: RunConfig, force: bool) -> None:
    """Refuse an output directory holding another run's results (unless ``force``)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"output {out} exists and is not a directory")
    manifest = out / "run.json"
    other = None
    if manifest.exists():
        try:
            other = json.loads(manifest.read_text()).get("config_fingerprint")
        except (OSError, json.JSONDecodeError):
            other = "unreadable"
    elif (out / "results.json").exists():
        other = "unknown"
    if other is not None and other != cfg.fingerprint():
        if not force:
            raise InputError(f"output directory {out} holds the results of another run "
                             f"(config fingerprint {other}, this config {cfg.fingerprint()}); "
                             f"choose another output or rerun with --force to replace them")
        log.warning("--force: removing the previous run in %s", out)
        for name in RUN_FILES:
            remove_path(out / name)


@contextlib.contextmanager
def _log_to(path: Path):
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


def _genotype_ids(cfg: RunConfig) -> list[tuple[str, str]]:
    if cfg.genotypes.plink is not None:
        from .io.plink import plink_paths, read_fam

        fid, iid = read_fam(plink_paths(cfg.genotypes.plink)["fam"])
        return list(zip(fid, iid))
    return open_store(cfg.genotypes.zarr).sample_ids()


def _read_id_list(path: Path) -> list[str]:
    if not path.exists():
        raise InputError(f"variant list {path} does not exist")
    ids = [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not ids:
        raise InputError(f"variant list {path} is empty")
    return ids


def validate_inputs(cfg: RunConfig) -> tuple[list[tuple[str, str]], Design, list[str] | None]:
    """Read and check every input before any computation."""
    ids = _genotype_ids(cfg)
    if cfg.genotypes.plink is not None:
        from .io.plink import check_bed, plink_paths, read_bim

        paths = plink_paths(cfg.genotypes.plink)
        check_bed(paths["bed"], len(ids), len(read_bim(paths["bim"])["id"]))
    seen = {}
    for i, key in enumerate(ids):
        if key in seen:
            raise InputError(f"genotype samples: duplicate ID {key[0]}/{key[1]} (rows {seen[key] + 1} "
                             f"and {i + 1}); sample IDs must be unique")
        seen[key] = i
    cov = cfg.covariates
    design = build_design(ids, cfg.phenotypes.file, cfg.phenotypes.columns, cov.file, cov.columns,
                          cov.categorical)
    include = _read_id_list(cfg.variants.include) if cfg.variants.include else None
    return ids, design, include


def _stage(name: str, timings: dict):
    @contextlib.contextmanager
    def cm():
        t0 = time.perf_counter()
        log.info("stage %s: start", name)
        yield
        dt = time.perf_counter() - t0
        timings[name] = {"seconds": round(dt, 3), "driver_peak_rss_mib": round(_peak_rss_mib(), 1)}
        log.info("stage %s: done in %.1f s (driver peak RSS %.0f MiB)", name, dt, _peak_rss_mib())
    return cm()


def stage_ingest(cfg: RunConfig, out: Path) -> CohortStore:
    if cfg.genotypes.zarr is not None:
        return open_store(cfg.genotypes.zarr)
    from .io.plink import ingest_plink, plink_fingerprint

    dest = out / "genotypes.zarr"
    fp = plink_fingerprint(cfg.genotypes.plink)
    if dest.exists():
        try:
            store = open_store(dest)
            prev = store.attrs.get("provenance", {}).get("files", {})
            same = all(prev.get(k, {}).get(f) == fp[k][f] for k in fp for f in ("size", "mtime"))
            if same and tuple(store.chunks) == tuple(min(a, b) for a, b in
                                                     zip(cfg.genotypes.chunks, (store.n_samples, store.n_variants))):
                log.info("ingest: reusing %s (source files unchanged)", dest)
                return store
        except InputError:
            pass
    return ingest_plink(cfg.genotypes.plink, dest, chunks=cfg.genotypes.chunks, overwrite=True)


def save_variants(path: Path, stats: VariantStats, std: Standardization) -> None:
    with atomic_dir(path, overwrite=True) as tmp:
        g = zarr.open_group(tmp, mode="w")
        for name, arr in (("n_called", stats.n_called), ("allele_sum", stats.allele_sum),
                          ("allele_sq_sum", stats.allele_sq_sum), ("center", std.center),
                          ("scale", std.scale), ("keep", std.keep.astype(np.int8))):
            new_array(g, name, shape=arr.shape, dtype=arr.dtype, data=arr)
        g.attrs.update({"n_samples": stats.n_samples, "standardize": std.standardize,
                        "dropped": std.dropped, "trace_K": std.trace_K, "n_kept": std.n_kept,
                        "filters": std.filters})


def stage_grm(cfg: RunConfig, out: Path, store: CohortStore, std: Standardization) -> zarr.Array:
    from .grm import create_grm_store, grm, grm_complete

    final = out / "grm.zarr"
    partial = out / "grm.zarr.partial"
    n = store.n_samples
    block = cfg.grm.block_size or store.chunks[0]
    attrs = {"n_samples": n, "n_variants": std.n_kept, "standardize": std.standardize,
             "block_size": block, "samples": "all samples of the genotype store, in store order",
             "bigmm_version": __version__}
    remove_path(final)
    if partial.exists():
        g = zarr.open_group(str(partial), mode="r")
        if {k: g.attrs.get(k) for k in attrs} != attrs:
            remove_path(partial)
    if not partial.exists():
        create_grm_store(partial, n, block, attrs)
    grm(store.genotypes, std, block_size=block, out=partial)
    if not grm_complete(zarr.open_group(str(partial), mode="r")):
        raise RuntimeError("GRM blocks missing after computation")
    from .store import _fsync_tree

    _fsync_tree(partial)
    os.replace(partial, final)
    return zarr.open_group(str(final), mode="r")["K"]


def spectrum_method(cfg: RunConfig, n: int) -> str:
    """The spectrum that will run: ``auto`` is exact up to ``spectrum.exact_max_n`` samples."""
    if cfg.spectrum.method == "auto":
        return "exact" if n <= cfg.spectrum.exact_max_n else "randomized"
    return cfg.spectrum.method


def task_memory(cc) -> int | None:
    """Bytes one task may use: 60% of a worker's memory (Dask starts spilling at 60%) per thread."""
    if cc.address:
        return None
    from dask.utils import parse_bytes

    return int(0.6 * parse_bytes(cc.memory_limit) / cc.threads_per_worker)


def check_memory(cfg: RunConfig, n: int, method: str) -> None:
    """Refuse, before computing, a configuration whose tasks cannot fit their memory."""
    mem = task_memory(cfg.cluster)
    if mem is None:
        return
    from dask.utils import format_bytes

    chunk_s, chunk_v = cfg.genotypes.chunks
    if cfg.genotypes.zarr is not None:
        chunk_s, chunk_v = open_store(cfg.genotypes.zarr).chunks
    if method == "randomized":
        from .spectrum import DEFAULT_OVERSAMPLE, plan_pass

        sc = cfg.spectrum
        if not 0 < sc.rank < n:
            raise InputError(f"spectrum.rank must be between 1 and n − 1 = {n - 1} analysed samples "
                             f"(got {sc.rank})")
        l = min(n, sc.rank + (DEFAULT_OVERSAMPLE if sc.oversample is None else sc.oversample))
        plan_pass(n, max(l + 1, l + sc.probes), [(0, chunk_v)], mem, 1)
    else:
        block = cfg.grm.block_size or chunk_s
        need = 8 * block * block + 2 * 8 * block * chunk_v
        if need > mem:
            raise InputError(f"a GRM block task needs {format_bytes(need)} (block {block} samples, "
                             f"variant chunk {chunk_v}) but cluster.memory_limit allows "
                             f"{format_bytes(mem)} per task; raise the limit or set grm.block_size")


def write_spectrum_tables(out: Path, spec: Spectrum, ids: list, n_pcs: int) -> None:
    """``eigenvalues.tsv`` (with Ritz residuals when randomized) and ``pcs.tsv`` (FID IID PC1..)."""
    res = spec.diagnostics.get("ritz_residuals")
    lines = ["index\teigenvalue" + ("\tritz_residual" if res else "")]
    for i, v in enumerate(spec.s):
        lines.append(f"{i + 1}\t{v:.10g}" + (f"\t{res[i]:.3e}" if res else ""))
    atomic_write_text(out / "eigenvalues.tsv", "\n".join(lines) + "\n")
    m = min(n_pcs, spec.k)
    rows = ["FID\tIID\t" + "\t".join(f"PC{i + 1}" for i in range(m))]
    for (f, i), u in zip(ids, spec.U[:, :m]):
        rows.append(f"{f}\t{i}\t" + "\t".join(f"{x:.8g}" for x in u))
    atomic_write_text(out / "pcs.tsv", "\n".join(rows) + "\n")


def _json_diag(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "ritz_residuals"}


def save_spectrum(path: Path, spec: Spectrum, rows: np.ndarray) -> None:
    with atomic_dir(path, overwrite=True) as tmp:
        g = zarr.open_group(tmp, mode="w")
        n = spec.n
        new_array(g, "U", shape=spec.U.shape, dtype="float64", data=spec.U,
                  chunks=(min(n, 4096), min(spec.k, 4096)))
        new_array(g, "s", shape=spec.s.shape, dtype="float64", data=spec.s)
        if spec.diag_K is not None:
            new_array(g, "diag_K", shape=(n,), dtype="float64", data=spec.diag_K)
        new_array(g, "sample_index", shape=rows.shape, dtype="int64", data=rows)
        if spec.ritz_cross is not None:
            new_array(g, "ritz_cross", shape=(spec.k,), dtype="float64", data=spec.ritz_cross)
        g.attrs.update({"n": n, "k": spec.k, "trace_K": spec.trace_K, "method": spec.method,
                        "rank": spec.rank, "diagnostics": spec.diagnostics,
                        "tail_trace_K2": spec.tail_trace_K2})


def run(cfg: RunConfig, force: bool = False, client=None) -> RunOutcome:
    """Run the whole analysis described by ``cfg``; returns the REML results.

    With ``client`` None a Dask cluster is made from ``cfg.cluster`` (a local
    cluster on 127.0.0.1 by default) for the duration of the run.
    """
    out = Path(cfg.output)
    timings: dict = {}
    t_validate = time.perf_counter()
    # every input is read and checked before anything is written or computed
    ids, design, include = validate_inputs(cfg)
    analysed = np.flatnonzero(design.analysed)
    method = spectrum_method(cfg, analysed.size)
    check_memory(cfg, analysed.size, method)
    check_output_dir(out, cfg, force)
    out.mkdir(parents=True, exist_ok=True)
    timings["validate"] = {"seconds": round(time.perf_counter() - t_validate, 3)}
    with _log_to(out / "run.log"):
        log.info("bigmm %s run, config %s (fingerprint %s), output %s", __version__, cfg.source,
                 cfg.fingerprint(), out)
        for name in ("results.json", "results.tsv"):
            remove_path(out / name)
        manifest = {"bigmm_version": __version__, "config_fingerprint": cfg.fingerprint(),
                    "config": cfg.model_dump(mode="json"), "started": now_utc(), "status": "running"}
        atomic_write_text(out / "run.json", json.dumps(manifest, indent=2) + "\n")
        log.info("inputs: %d genotyped samples, %d analysed, %d phenotypes, %d fixed effects; "
                 "spectrum %s%s", len(ids), analysed.size, len(design.phenotype_names),
                 design.Z.shape[1], method, " (auto)" if cfg.spectrum.method == "auto" else "")
        if client is None:
            from .cluster import dask_client

            ctx = dask_client(cfg.cluster)
        else:
            ctx = contextlib.nullcontext(client)
        with ctx:
            with _stage("ingest", timings):
                store = stage_ingest(cfg, out)
            if store.sample_ids() != ids:
                raise InputError(f"the genotype store's samples differ from {cfg.genotypes}")
            with _stage("variant_stats", timings):
                stats = variant_stats(store.to_dask())
                v = cfg.variants
                variant_ids = store.variant_table()["id"] if include is not None else None
                std = standardization(stats, v.standardize, min_maf=v.min_maf,
                                      max_missing=v.max_missing, variant_ids=variant_ids,
                                      include_ids=include)
                save_variants(out / "variants.zarr", stats, std)
                log.info("variants: %d of %d kept; dropped %s", std.n_kept, store.n_variants,
                         {k: c for k, c in std.dropped.items() if c} or "none")
            K = None
            if method == "exact" or cfg.grm.export_gcta:
                with _stage("grm", timings):
                    K = stage_grm(cfg, out, store, std)
            with _stage("spectrum", timings):
                if method == "exact":
                    K_S = np.asarray(K.get_orthogonal_selection((analysed, analysed)))
                    spec = exact_spectrum(K_S)
                    del K_S
                else:
                    sc = cfg.spectrum
                    spec = randomized_spectrum(
                        store.genotypes, std, sc.rank, oversample=sc.oversample,
                        power_iters=sc.power_iters, seed=sc.seed, n_probes=sc.probes,
                        rows=None if analysed.size == len(ids) else analysed,
                        memory=task_memory(cfg.cluster))
                    d = spec.diagnostics
                    log.info("spectrum: randomized, k = %d, l = %d, %d passes over X, max Ritz "
                             "residual %.2e, ||U'U - I|| = %.1e", spec.k, spec.k + d["oversample"],
                             d["passes_over_X"], d["max_ritz_residual"], d["orthonormality_error"])
                save_spectrum(out / "spectrum.zarr", spec, analysed)
                write_spectrum_tables(out, spec, [ids[i] for i in analysed],
                                      max(cfg.covariates.pcs, 20))
                log.info("spectrum: %s, n = %d, k = %d, numerical rank %d, top eigenvalue %.4g",
                         spec.method, spec.n, spec.k, spec.rank, spec.s[0])
        with _stage("reml", timings):
            Z, znames = design.Z[analysed], list(design.covariate_names)
            if cfg.covariates.pcs:
                if cfg.covariates.pcs > spec.k:
                    raise InputError(f"covariates.pcs = {cfg.covariates.pcs} but the spectrum has only "
                                     f"{spec.k} eigenvectors")
                Z = np.hstack([Z, spec.U[:, :cfg.covariates.pcs]])
                znames += [f"PC{i + 1}" for i in range(cfg.covariates.pcs)]
            result = fit_reml(spec, design.Y[analysed], Z,
                              phenotype_names=design.phenotype_names, covariate_names=znames,
                              missing=cfg.phenotypes.missing, grid_size=cfg.reml.grid_size)
            for f in result.fits:
                log.info("REML %s: n = %d, h2 = %.4f (SE %.4f), sigma2_g = %.4g, sigma2_e = %.4g%s",
                         f.name, f.n, f.h2, f.h2_se, f.sigma2_g, f.sigma2_e,
                         f", boundary {f.boundary}" if f.boundary else "")
        with _stage("report", timings):
            if cfg.grm.export_gcta:
                from .grm import write_gcta_grm

                write_gcta_grm(out / "gcta" / "grm", K, ids, std.n_kept)
            run_info = {
                "bigmm_version": __version__,
                "created": now_utc(),
                "n_samples": int(analysed.size),
                "n_genotyped": len(ids),
                "n_variants": std.n_kept,
                "n_variants_total": store.n_variants,
                "variants_dropped": std.dropped,
                "standardize": std.standardize,
                "spectrum_info": {"method": spec.method, "requested": cfg.spectrum.method, "n": spec.n,
                                  "k": spec.k, "rank": spec.rank, "trace_K": spec.trace_K,
                                  "tail_eigenvalue": spec.tail, **_json_diag(spec.diagnostics)},
                "design": design.notes,
                "stage_timings": timings,
                "config_fingerprint": cfg.fingerprint(),
                "config": cfg.model_dump(mode="json"),
            }
            from .report import write_results

            js, _ = write_results(out, result, run_info)
        manifest.update({"status": "complete", "finished": now_utc(), "stages": timings})
        atomic_write_text(out / "run.json", json.dumps(manifest, indent=2) + "\n")
        log.info("results: %s", js)
    return RunOutcome(output=out, result=result, results_json=js)
