"""The config-driven run: resumable stages committed one by one into the run directory.

    ingest → variant_stats → grm → spectrum → rotate → reml → report

Each stage loads its inputs, calls the numerical core and commits its outputs by
atomic rename, then records a manifest entry in ``run.json``: status, the
stage's fingerprint (a hash of the config sections it reads, its input files'
sizes/mtimes/checksums, the fingerprints of the stages it depends on and the
bigmm version), duration and peak memory. Re-running a config skips every
stage whose recorded fingerprint still matches and resumes at the first that
does not; a changed phenotype file reruns rotate/reml/report only, a changed
variant filter reruns from variant_stats. Long stages checkpoint inside: GRM
blocks (a done ledger) and randomized-spectrum passes. All inputs are read and
checked before anything is written or computed; a lock file refuses a second
run on the same directory; SIGTERM and Ctrl-C abandon the stage in flight
(nothing partial is committed) and the manifest says where to resume.

Run directory::

    run.json, run.log, .bigmm.lock (while running)
    genotypes.zarr    cohort store made from PLINK input          (ingest)
    variants.zarr     per-variant statistics and standardization  (variant_stats)
    grm.zarr          K over all genotyped samples                (grm; exact spectrum or GCTA export)
    spectrum.zarr     eigenpairs over all genotyped samples,      (spectrum)
    eigenvalues.tsv, pcs.tsv
    rotated.npz       phenotypes/covariates rotated on the spectrum (rotate)
    reml.json         the REML fits                               (reml)
    results.json, results.tsv, gcta/   written last                (report)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import resource
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from ._version import __version__
from .config import RunConfig
from .errors import BigmmError, InputError
from .genotypes import Standardization, VariantStats, standardization, variant_stats
from .io.tables import Design, build_design
from .reml import RemlResult, RotatedDesign, fit_rotated, rotate
from .spectrum import Spectrum, exact_spectrum, randomized_spectrum
from .store import file_fingerprint  # noqa: F401  (part of this module's API)
from .store import (CheckedArray, CohortStore, atomic_dir, atomic_write_text, new_array, now_utc,
                    open_store, remove_path, verify_chunks)
from .tasks import pause_point

log = logging.getLogger("bigmm")

STAGES = ("ingest", "variant_stats", "grm", "spectrum", "rotate", "reml", "blup", "report")
STAGE_OUTPUTS = {
    "ingest": ("genotypes.zarr",),
    "variant_stats": ("variants.zarr",),
    "grm": ("grm.zarr",),
    "spectrum": ("spectrum.zarr", "eigenvalues.tsv", "pcs.tsv"),
    "rotate": ("rotated.npz",),
    "reml": ("reml.json",),
    "blup": ("blup.tsv",),
    "report": ("results.json", "results.tsv", "report.html"),
}
PARTIALS = ("grm.zarr.partial", "spectrum.partial")
#: everything bigmm writes in a run directory (removed by --force on another run's directory)
RUN_FILES = ("run.json", "run.log", "gcta", "hsq", "report", "pca.eigenvec", "pca.eigenval",
             "snp_effects.tsv", "snp_effects.zarr", "submit.sbatch") + PARTIALS + tuple(f for v in STAGE_OUTPUTS.values() for f in v)
LOCK_NAME = ".bigmm.lock"


class RunInterrupted(BaseException):
    """SIGTERM (what batch schedulers send at the wall-time limit) or Ctrl-C during a run."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


@dataclass(frozen=True)
class RunOutcome:
    output: Path
    result: RemlResult | None
    results_json: Path
    stages_run: tuple
    stages_skipped: tuple


# ---------------------------------------------------------------------------------------
# fingerprints
# ---------------------------------------------------------------------------------------

def _hash(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_inputs(cfg: RunConfig, method: str) -> dict[str, dict]:
    """What each stage depends on, beyond its upstream stages."""
    g = cfg.genotypes
    if g.plink is not None:
        from .io.plink import plink_paths

        paths = plink_paths(g.plink)
        geno = {"plink": {"bed": file_fingerprint(paths["bed"], content=False),
                          "bim": file_fingerprint(paths["bim"]), "fam": file_fingerprint(paths["fam"])},
                "chunks": list(g.chunks)}
    else:
        attrs = open_genotypes(cfg).attrs
        geno = {"store": str(g.zarr or g.vcf_zarr), "created": attrs.get("created"),
                "provenance": attrs.get("provenance")}
    sc = cfg.spectrum
    spec = {"method": method}
    if method == "randomized":
        spec.update(rank=sc.rank, oversample=sc.oversample, power_iters=sc.power_iters, seed=sc.seed,
                    probes=sc.probes, dtype=sc.dtype, algorithm=sc.algorithm)
    return {
        "ingest": geno,
        "variant_stats": {"variants": cfg.section_fingerprint("variants"),
                          "include": file_fingerprint(cfg.variants.include)},
        "grm": {"block_size": cfg.grm.block_size, "dtype": cfg.grm.dtype},
        "spectrum": spec,
        "rotate": {"phenotypes": cfg.section_fingerprint("phenotypes"),
                   "phenotype_file": file_fingerprint(cfg.phenotypes.file),
                   "covariates": cfg.section_fingerprint("covariates"),
                   "covariate_file": file_fingerprint(cfg.covariates.file)},
        "reml": {"reml": cfg.section_fingerprint("reml")},
        "blup": {"predict": cfg.section_fingerprint("predict")},
        "report": {"export_gcta": str(cfg.gcta_prefix())},
    }


def stage_plan(cfg: RunConfig, method: str) -> dict[str, dict]:
    """Fingerprint and upstream stages of every stage that this run needs."""
    inputs = stage_inputs(cfg, method)
    needs_grm = method == "exact" or cfg.gcta_prefix() is not None
    from_plink = cfg.genotypes.plink is not None
    if not from_plink:  # a given cohort store: no ingest stage, the statistics depend on the store
        inputs["variant_stats"] = {**inputs["variant_stats"], "store": inputs["ingest"]}
    upstream = {"ingest": [], "variant_stats": ["ingest"] if from_plink else [], "grm": ["variant_stats"],
                "spectrum": ["variant_stats"] + (["grm"] if method == "exact" else []),
                "rotate": ["spectrum"], "reml": ["rotate"], "blup": ["reml"],
                "report": ["reml"] + (["blup"] if cfg.predict.blup else []) + (["grm"] if cfg.gcta_prefix() is not None else [])}
    plan: dict[str, dict] = {}
    for name in STAGES:
        if (name == "grm" and not needs_grm) or (name == "ingest" and not from_plink) or \
                (name == "blup" and not cfg.predict.blup):
            continue
        ups = upstream[name]
        fp = _hash(name, __version__, inputs[name], [plan[u]["fingerprint"] for u in ups])
        plan[name] = {"fingerprint": fp, "upstream": ups, "inputs": inputs[name]}
    return plan


# ---------------------------------------------------------------------------------------
# run directory: manifest and lock
# ---------------------------------------------------------------------------------------

def read_manifest(out: Path) -> dict | None:
    path = Path(out) / "run.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is unreadable ({exc}); move the run directory aside or use --force") from None


def write_manifest(out: Path, manifest: dict) -> None:
    atomic_write_text(Path(out) / "run.json", json.dumps(manifest, indent=2, default=str) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(out: Path, replace: bool = False):
    """An exclusive lock file with PID and host; a lock left by a dead process is taken over.

    With ``replace`` (``--force`` on another run's directory, see :func:`check_output_dir`)
    the other run's files are removed once the lock is held, never under a run in progress.
    """
    path = Path(out) / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": now_utc()}
    for attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                other = {}
            stale = other.get("host") == me["host"] and not _pid_alive(int(other.get("pid", -1)))
            if stale and attempt == 0:
                log.warning("removing a stale lock %s left by process %s (no longer running)", path,
                            other.get("pid"))
                path.unlink(missing_ok=True)
                continue
            raise InputError(f"run directory {out} is in use by another bigmm run (process "
                             f"{other.get('pid')} on {other.get('host')}, since {other.get('started')}); "
                             f"wait for it to finish, or if no run is active remove {path}") from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    try:
        if replace:
            log.warning("--force: removing the previous run in %s", out)
            for name in RUN_FILES:
                remove_path(Path(out) / name)
        yield
    finally:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _signals_raise():
    """Turn SIGTERM into :class:`RunInterrupted` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise RunInterrupted(signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def _log_to(path: Path):
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    log.addHandler(handler)
    old = log.level
    if old == logging.NOTSET or old > logging.INFO:
        # INFO must reach the file; console handlers keep their own levels
        for h in log.handlers:
            if h is not handler and h.level == logging.NOTSET:
                h.setLevel(old if old != logging.NOTSET else logging.WARNING)
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()
        log.setLevel(old)


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------

def open_genotypes(cfg: RunConfig, verify: bool = True):
    """The cohort store or the VCF Zarr store a config names (not for PLINK input)."""
    if cfg.genotypes.vcf_zarr is not None:
        from .io.vcfzarr import open_vcf_zarr

        return open_vcf_zarr(cfg.genotypes.vcf_zarr)
    return open_store(cfg.genotypes.zarr, verify=verify)


def _genotype_ids(cfg: RunConfig) -> list[tuple[str, str]]:
    if cfg.genotypes.plink is not None:
        from .io.plink import plink_paths, read_fam

        fid, iid = read_fam(plink_paths(cfg.genotypes.plink)["fam"])
        return list(zip(fid, iid))
    return open_genotypes(cfg).sample_ids()


def _n_variants(cfg: RunConfig) -> int:
    if cfg.genotypes.plink is not None:
        from .io.plink import plink_paths, read_bim

        paths = plink_paths(cfg.genotypes.plink)
        return len(read_bim(paths["bim"])["id"])
    return open_genotypes(cfg, verify=False).n_variants


def _read_id_list(path: Path) -> list[str]:
    if not path.exists():
        raise InputError(f"variant list {path} does not exist")
    ids = [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not ids:
        raise InputError(f"variant list {path} is empty")
    return ids


@dataclass(frozen=True)
class Inputs:
    ids: list
    design: Design
    include: list | None
    n_variants: int
    method: str


def validate_inputs(cfg: RunConfig) -> Inputs:
    """Read and check every input before any computation (raises on the first problem)."""
    ids = _genotype_ids(cfg)
    seen = {}
    for i, key in enumerate(ids):
        if key in seen:
            raise InputError(f"genotype samples: duplicate ID {key[0]}/{key[1]} (rows {seen[key] + 1} "
                             f"and {i + 1}); sample IDs must be unique")
        seen[key] = i
    p = _n_variants(cfg)
    if cfg.genotypes.plink is not None:
        from .io.plink import check_bed, plink_paths

        check_bed(plink_paths(cfg.genotypes.plink)["bed"], len(ids), p)
    cov = cfg.covariates
    design = build_design(ids, cfg.phenotypes.file, cfg.phenotypes.columns, cov.file, cov.columns,
                          cov.categorical, qcovar_path=cov.qcovar, dcovar_path=cov.covar)
    include = _read_id_list(cfg.variants.include) if cfg.variants.include else None
    method = spectrum_method(cfg, len(ids))
    check_memory(cfg, len(ids), method)
    if cfg.covariates.pcs and method == "randomized" and cfg.covariates.pcs > cfg.spectrum.rank:
        raise InputError(f"covariates.pcs = {cfg.covariates.pcs} exceeds spectrum.rank = {cfg.spectrum.rank}")
    return Inputs(ids=ids, design=design, include=include, n_variants=p, method=method)


def spectrum_method(cfg: RunConfig, n: int) -> str:
    """The spectrum that will run: ``auto`` is exact up to ``spectrum.exact_max_n`` samples."""
    if cfg.spectrum.method == "auto":
        return "exact" if n <= cfg.spectrum.exact_max_n else "randomized"
    return cfg.spectrum.method


def task_memory(cc) -> int | None:
    """Bytes one task may use: 60% of a worker's memory (Dask starts spilling there) per thread."""
    from dask.utils import parse_bytes

    if cc.backend == "local":
        return int(0.6 * parse_bytes(cc.memory_limit) / cc.threads_per_worker)
    if cc.backend in ("slurm", "pbs", "sge"):
        jq = cc.jobqueue
        return int(0.6 * parse_bytes(jq.memory) / jq.cores)
    return None


def check_memory(cfg: RunConfig, n: int, method: str) -> None:
    """Refuse, before computing, a configuration whose tasks cannot fit their memory."""
    if method == "randomized":
        sc = cfg.spectrum
        if not 0 < sc.rank < n:
            raise InputError(f"spectrum.rank must be between 1 and n − 1 = {n - 1} genotyped samples "
                             f"(got {sc.rank})")
    mem = task_memory(cfg.cluster)
    if mem is None:
        return
    from dask.utils import format_bytes

    chunk_s, chunk_v = cfg.genotypes.chunks
    if cfg.genotypes.plink is None:
        chunk_s, chunk_v = open_genotypes(cfg, verify=False).chunks
    if method == "randomized":
        from .spectrum import DEFAULT_OVERSAMPLE, DEFAULT_POWER_ITERS, check_driver_memory, pass_columns, plan_pass

        sc = cfg.spectrum
        l = min(n, sc.rank + (DEFAULT_OVERSAMPLE if sc.oversample is None else sc.oversample))
        plan_pass(n, pass_columns(l, sc.probes, sc.algorithm), [(0, chunk_v)], mem, 1)
        q = DEFAULT_POWER_ITERS[sc.algorithm] if sc.power_iters is None else sc.power_iters
        check_driver_memory(n, l, q, sc.algorithm)
    if method == "exact" or cfg.gcta_prefix() is not None:
        block = cfg.grm.block_size or chunk_s
        need = 8 * block * block + 2 * 8 * block * chunk_v
        if need > mem:
            raise InputError(f"a GRM block task needs {format_bytes(need)} (block {block} samples, "
                             f"variant chunk {chunk_v}) but the cluster memory allows "
                             f"{format_bytes(mem)} per task; raise it or set grm.block_size")


def is_this_run(manifest: dict, cfg: RunConfig) -> bool:
    """Whether a run directory's manifest is this config's: the same config, or the same config
    file edited since (the stages' fingerprints then decide what reruns)."""
    return (manifest.get("config_fingerprint") in (None, cfg.fingerprint())
            or (cfg.source is not None and manifest.get("config_source") == str(cfg.source)))


def check_output_dir(out: Path, cfg: RunConfig, force: bool) -> bool:
    """Refuse an output directory holding another run's results (unless ``force``).

    Returns True when ``force`` is to replace another run (done under the run's lock).
    """
    if not out.exists():
        return False
    if not out.is_dir():
        raise InputError(f"output {out} exists and is not a directory")
    manifest = read_manifest(out) if (out / "run.json").exists() else None
    other = None if manifest is None or is_this_run(manifest, cfg) else manifest["config_fingerprint"]
    if manifest is None and (out / "results.json").exists():
        other = "unknown"
    if other is None:
        return False
    if not force:
        source = manifest.get("config_source") if manifest else None
        raise InputError(f"output directory {out} holds the results of another run "
                         f"(config fingerprint {other}{f' from {source}' if source else ''}, this config "
                         f"{cfg.fingerprint()}); choose another output or rerun with --force to replace them")
    return True


# ---------------------------------------------------------------------------------------
# stage outputs
# ---------------------------------------------------------------------------------------

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


def load_variants(path: Path) -> Standardization:
    g = zarr.open_group(str(path), mode="r")
    arrays = {}
    for name in ("center", "scale", "keep"):
        verify_chunks(g[name], f"{path}/{name}")
        arrays[name] = np.asarray(CheckedArray(g[name], f"{path}/{name}")[...])
    a = dict(g.attrs)
    return Standardization(standardize=a["standardize"], center=arrays["center"], scale=arrays["scale"],
                           keep=arrays["keep"].astype(bool), dropped=a["dropped"], trace_K=a["trace_K"],
                           n_samples=a["n_samples"], filters=a["filters"])


def save_spectrum(path: Path, spec: Spectrum) -> None:
    with atomic_dir(path, overwrite=True) as tmp:
        g = zarr.open_group(tmp, mode="w")
        n = spec.n
        new_array(g, "U", shape=spec.U.shape, dtype="float64", data=spec.U,
                  chunks=(min(n, 8192), min(spec.k, 4096)))
        new_array(g, "s", shape=spec.s.shape, dtype="float64", data=spec.s)
        if spec.diag_K is not None:
            new_array(g, "diag_K", shape=(n,), dtype="float64", data=spec.diag_K)
        if spec.ritz_cross is not None:
            new_array(g, "ritz_cross", shape=(spec.k,), dtype="float64", data=spec.ritz_cross)
        g.attrs.update({"n": n, "k": spec.k, "trace_K": spec.trace_K, "method": spec.method,
                        "rank": spec.rank, "diagnostics": spec.diagnostics,
                        "tail_trace_K2": spec.tail_trace_K2,
                        "samples": "all samples of the genotype store, in store order"})


def load_spectrum(path: Path) -> Spectrum:
    g = zarr.open_group(str(path), mode="r")
    arrays = {}
    for name in ("U", "s", "diag_K", "ritz_cross"):
        if name in g:
            verify_chunks(g[name], f"{path}/{name}")
            arrays[name] = np.asarray(CheckedArray(g[name], f"{path}/{name}")[...])
    a = dict(g.attrs)
    return Spectrum(U=arrays["U"], s=arrays["s"], n=a["n"], trace_K=a["trace_K"],
                    diag_K=arrays.get("diag_K"), method=a["method"], rank=a["rank"],
                    diagnostics=a["diagnostics"], tail_trace_K2=a["tail_trace_K2"],
                    ritz_cross=arrays.get("ritz_cross"))


def write_snp_effects(out: Path, variants: dict, std: Standardization, names: list, beta: np.ndarray) -> Path:
    """SNP effects per standardized genotype and per copy of allele 1: a TSV, or Zarr when p x m is large."""
    per_allele = beta * std.scale[:, None]
    p, m = beta.shape
    freq = std.center / 2.0
    if p * m > 5_000_000:
        path = out / "snp_effects.zarr"
        with atomic_dir(path, overwrite=True) as tmp:
            g = zarr.open_group(tmp, mode="w")
            new_array(g, "beta_std", shape=beta.shape, dtype="float64", data=beta,
                      chunks=(min(p, 65536), min(m, 64)))
            new_array(g, "beta_allele", shape=beta.shape, dtype="float64", data=per_allele,
                      chunks=(min(p, 65536), min(m, 64)))
            g.attrs.update({"phenotypes": list(names), "counted_allele": "allele1 of the variant table",
                            "rows": "variants of the genotype store, in order; 0 for dropped variants"})
        return path
    header = ["chrom", "id", "pos", "allele1", "allele2", "freq_allele1", "used"]
    header += [f"beta_{n}" for n in names] + [f"beta_allele_{n}" for n in names]
    lines = ["\t".join(header)]
    for j in range(p):
        row = [str(variants["chrom"][j]), str(variants["id"][j]), str(variants["pos"][j]),
               str(variants["allele1"][j]), str(variants["allele2"][j]),
               f"{freq[j]:.6g}" if std.keep[j] else "NA", "1" if std.keep[j] else "0"]
        row += [f"{x:.8g}" for x in beta[j]] + [f"{x:.8g}" for x in per_allele[j]]
        lines.append("\t".join(row))
    path = out / "snp_effects.tsv"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


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


class PassCheckpoint:
    """Saves what each pass of the randomized spectrum adds (``spectrum.partial/pass-<j>.zarr``).

    Each pass's state is committed atomically in its own group, written once; :meth:`load`
    returns the states of passes 1, 2, … up to the first missing or unusable one.
    """

    def __init__(self, directory: Path, fingerprint: str):
        self.dir = Path(directory)
        self.fingerprint = fingerprint

    def load(self) -> list | None:
        states = []
        j = 1
        while (self.dir / f"pass-{j}.zarr").exists():
            path = self.dir / f"pass-{j}.zarr"
            try:
                g = zarr.open_group(str(path), mode="r")
                if g.attrs.get("fingerprint") != self.fingerprint or int(g.attrs["pass"]) != j:
                    break
                state = {"pass": j, "algorithm": g.attrs.get("algorithm")}
                for name in g.array_keys():
                    verify_chunks(g[name], f"{path}/{name}")
                    state[name] = np.asarray(CheckedArray(g[name], f"{path}/{name}")[...])
            except (InputError, KeyError, ValueError) as exc:
                log.warning("randomized spectrum: ignoring an unusable checkpoint (%s)", exc)
                break
            states.append(state)
            j += 1
        return states or None

    def save(self, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        j = int(state["pass"])
        with atomic_dir(self.dir / f"pass-{j}.zarr", overwrite=True) as tmp:
            g = zarr.open_group(tmp, mode="w")
            for name, a in state.items():
                if isinstance(a, np.ndarray):
                    new_array(g, name, shape=a.shape, dtype="float64", data=a,
                              chunks=(min(max(a.shape[0], 1), 8192),) + tuple(max(1, x) for x in a.shape[1:]))
            g.attrs.update({"pass": j, "algorithm": state.get("algorithm"), "fingerprint": self.fingerprint})
        log.info("randomized spectrum: checkpoint after pass %d", j)


# ---------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------

def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _worker_rss_mib() -> float | None:
    from .tasks import current_client

    client = current_client()
    if client is None:
        return None
    try:
        import psutil

        rss = client.run(lambda: psutil.Process().memory_info().rss)
        return round(sum(rss.values()) / 2**20, 1)
    except Exception:  # noqa: BLE001 - memory figures are best effort
        return None


class Runner:
    """Executes the stages of one run directory."""

    def __init__(self, cfg: RunConfig, inputs: Inputs, force: bool, from_stage: str | None):
        self.cfg = cfg
        self.inp = inputs
        self.out = Path(cfg.output)
        self.plan = stage_plan(cfg, inputs.method)
        self.force = force
        self.from_stage = from_stage
        self.manifest: dict = {}
        self.loaded: dict = {}
        self.ran: list[str] = []
        self.skipped: list[str] = []

    # -- bookkeeping ------------------------------------------------------------------
    def up_to_date(self, name: str) -> bool:
        if self.force:
            return False
        if self.from_stage is not None and STAGES.index(name) >= STAGES.index(self.from_stage):
            return False
        entry = self.manifest.get("stages", {}).get(name)
        if not entry or entry.get("status") != "complete":
            return False
        if entry.get("fingerprint") != self.plan[name]["fingerprint"]:
            return False
        return all((self.out / f).exists() for f in STAGE_OUTPUTS[name])

    def commit(self, name: str, seconds: float, **info) -> None:
        entry = {"status": "complete", "fingerprint": self.plan[name]["fingerprint"],
                 "upstream": {u: self.plan[u]["fingerprint"] for u in self.plan[name]["upstream"]},
                 "inputs": self.plan[name]["inputs"], "bigmm_version": __version__,
                 "seconds": round(seconds, 3), "finished": now_utc(),
                 "driver_peak_rss_mib": round(_peak_rss_mib(), 1),
                 "workers_rss_mib": _worker_rss_mib(), **info}
        self.manifest.setdefault("stages", {})[name] = entry
        write_manifest(self.out, self.manifest)
        log.info("stage %s: committed in %.1f s (driver peak RSS %.0f MiB%s)%s", name, seconds,
                 entry["driver_peak_rss_mib"],
                 f", workers {entry['workers_rss_mib']:.0f} MiB" if entry["workers_rss_mib"] else "",
                 "".join(f", {k} {v}" for k, v in info.items() if k in ("passes_over_X", "blocks")))

    def stage(self, name: str, fn):
        """Run stage ``name`` unless it is up to date; ``fn()`` returns (value, info)."""
        self.manifest["current_stage"] = name
        if name not in self.plan:
            return None
        if self.up_to_date(name):
            log.info("stage %s: up to date (fingerprint %s), skipped", name, self.plan[name]["fingerprint"])
            self.skipped.append(name)
            return None
        # a stage that runs invalidates the record of everything downstream
        for later in STAGES[STAGES.index(name):]:
            self.manifest.setdefault("stages", {}).pop(later, None)
        write_manifest(self.out, {**self.manifest, "status": "running", "resume_from": name})
        log.info("stage %s: start", name)
        pause_point(name)
        t0 = time.perf_counter()
        value, info = fn()
        self.commit(name, time.perf_counter() - t0, **(info or {}))
        self.ran.append(name)
        return value

    # -- loaders of committed outputs ------------------------------------------------
    def store(self) -> CohortStore:
        if "store" not in self.loaded:
            if self.cfg.genotypes.plink is not None:
                self.loaded["store"] = open_store(self.out / "genotypes.zarr")
            else:
                self.loaded["store"] = open_genotypes(self.cfg)
        return self.loaded["store"]

    def std(self) -> Standardization:
        if "std" not in self.loaded:
            self.loaded["std"] = load_variants(self.out / "variants.zarr")
        return self.loaded["std"]

    def spectrum(self) -> Spectrum:
        if "spectrum" not in self.loaded:
            self.loaded["spectrum"] = load_spectrum(self.out / "spectrum.zarr")
        return self.loaded["spectrum"]

    def K(self) -> CheckedArray:
        g = zarr.open_group(str(self.out / "grm.zarr"), mode="r")
        verify_chunks(g["K"], f"{self.out}/grm.zarr/K")
        return CheckedArray(g["K"], f"{self.out}/grm.zarr/K")

    # -- stages ------------------------------------------------------------------------
    def do_ingest(self):
        from .io.plink import ingest_plink

        store = ingest_plink(self.cfg.genotypes.plink, self.out / "genotypes.zarr",
                             chunks=self.cfg.genotypes.chunks, overwrite=True)
        self.loaded["store"] = store
        return store, {"n_samples": store.n_samples, "n_variants": store.n_variants}

    def do_stats(self):
        store = self.store()
        if store.sample_ids() != self.inp.ids:
            raise InputError(f"the samples of {store.path} differ from the genotype input")
        stats = variant_stats(store.to_dask())
        v = self.cfg.variants
        variant_ids = store.variant_table()["id"] if self.inp.include is not None else None
        std = standardization(stats, v.standardize, min_maf=v.min_maf, max_missing=v.max_missing,
                              variant_ids=variant_ids, include_ids=self.inp.include)
        save_variants(self.out / "variants.zarr", stats, std)
        self.loaded["std"] = std
        log.info("variants: %d of %d kept; dropped %s", std.n_kept, store.n_variants,
                 {k: c for k, c in std.dropped.items() if c} or "none")
        return std, {"passes_over_X": 1, "n_kept": std.n_kept, "dropped": std.dropped}

    def do_grm(self):
        from .grm import create_grm_store, grm, grm_complete
        from .store import _fsync_tree

        store, std = self.store(), self.std()
        final, partial = self.out / "grm.zarr", self.out / "grm.zarr.partial"
        n = store.n_samples
        dtype = np.dtype(self.cfg.grm.dtype)
        block = self.cfg.grm.block_size
        if block is None:
            from .grm import default_block_size
            from .tasks import total_threads

            block = default_block_size(n, total_threads(), store.chunks[0], store.chunks[1],
                                       task_memory(self.cfg.cluster), dtype.itemsize)
        fp = self.plan["grm"]["fingerprint"]
        attrs = {"n_samples": n, "n_variants": std.n_kept, "standardize": std.standardize,
                 "block_size": block, "fingerprint": fp, "dtype": dtype.name,
                 "samples": "all samples of the genotype store, in store order",
                 "bigmm_version": __version__}
        remove_path(final)
        if partial.exists():
            g = zarr.open_group(str(partial), mode="r")
            if g.attrs.get("fingerprint") != fp:
                remove_path(partial)
            else:  # resume in the checkpoint's blocks (the default size depends on the cluster)
                block = int(g.attrs["block_size"])
        if not partial.exists():
            create_grm_store(partial, n, block, attrs)
        nb = (n + block - 1) // block
        before = int(np.triu(np.asarray(zarr.open_group(str(partial), mode="r")["done"][...])).sum())
        grm(store.genotypes, std, block_size=block, out=partial, dtype=dtype)
        if not grm_complete(zarr.open_group(str(partial), mode="r")):
            raise RuntimeError("GRM blocks missing after computation")
        _fsync_tree(partial)
        os.replace(partial, final)
        total = nb * (nb + 1) // 2
        return None, {"blocks": f"{total - before} computed, {before} from checkpoint",
                      "passes_over_X": round(nb, 1)}

    def do_spectrum(self):
        store, std = self.store(), self.std()
        sc = self.cfg.spectrum
        if self.inp.method == "exact":
            K = self.K()
            spec = exact_spectrum(np.asarray(K[...]))
            info = {"passes_over_X": 0}
        else:
            ck = PassCheckpoint(self.out / "spectrum.partial", self.plan["spectrum"]["fingerprint"])
            spec = randomized_spectrum(store.genotypes, std, sc.rank, oversample=sc.oversample,
                                       power_iters=sc.power_iters, seed=sc.seed, n_probes=sc.probes,
                                       memory=task_memory(self.cfg.cluster), checkpoint=ck,
                                       dtype=np.dtype(sc.dtype), algorithm=sc.algorithm)
            d = spec.diagnostics
            log.info("spectrum: randomized, k = %d, l = %d, %d passes over X, max Ritz residual %.2e, "
                     "||U'U - I|| = %.1e", spec.k, spec.k + d["oversample"], d["passes_over_X"],
                     d["max_ritz_residual"], d["orthonormality_error"])
            info = {"passes_over_X": d["passes_over_X"]}
        save_spectrum(self.out / "spectrum.zarr", spec)
        write_spectrum_tables(self.out, spec, self.inp.ids, max(self.cfg.covariates.pcs, 20))
        remove_path(self.out / "spectrum.partial")
        self.loaded["spectrum"] = spec
        log.info("spectrum: %s, n = %d, k = %d, numerical rank %d, top eigenvalue %.4g", spec.method,
                 spec.n, spec.k, spec.rank, spec.s[0])
        return spec, info

    def rotated_design(self) -> RotatedDesign:
        """Phenotypes and fixed effects (with PCs if asked) rotated onto the analysed samples' spectrum."""
        spec = self.spectrum()
        d = self.inp.design
        analysed = d.analysed
        Z, znames = d.Z, list(d.covariate_names)
        if self.cfg.covariates.pcs:
            m = self.cfg.covariates.pcs
            if m > spec.k:
                raise InputError(f"covariates.pcs = {m} but the spectrum has only {spec.k} eigenvectors")
            Z = np.hstack([Z, spec.U[:, :m]])
            znames += [f"PC{i + 1}" for i in range(m)]
        sub = spec if analysed.all() else spec.subset(np.flatnonzero(analysed))
        return rotate(sub, d.Y[analysed], Z[analysed], phenotype_names=d.phenotype_names,
                      covariate_names=znames, missing=self.cfg.phenotypes.missing)

    def do_rotate(self):
        analysed = self.inp.design.analysed
        rd = self.rotated_design()
        rd.save(self.out / "rotated.npz")
        return rd, {"n_analysed": int(analysed.sum()),
                    "missing_methods": sorted({g.method for g in rd.groups})}

    def do_reml(self):
        rd = RotatedDesign.load(self.out / "rotated.npz")
        result = fit_rotated(rd, grid_size=self.cfg.reml.grid_size)
        for f in result.fits:
            log.info("REML %s: n = %d, h2 = %.4f (SE %.4f), sigma2_g = %.4g, sigma2_e = %.4g%s", f.name,
                     f.n, f.h2, f.h2_se, f.sigma2_g, f.sigma2_e,
                     f", boundary {f.boundary}" if f.boundary else "")
        from .report import _clean

        atomic_write_text(self.out / "reml.json", json.dumps(_clean(result.to_dict()), indent=2) + "\n")
        self.loaded["reml"] = result
        return result, {"phenotypes": len(result.fits)}

    def do_blup(self):
        """ĝ for every genotyped sample (blup.tsv) and, if asked, SNP effects (one pass over X)."""
        from .blup import genetic_values, snp_effects

        spec = self.spectrum()
        rd = self.rotated_design()  # in memory again: predictions need the rotation's sources
        result = RemlResult.from_dict(json.loads((self.out / "reml.json").read_text()))
        analysed = np.flatnonzero(self.inp.design.analysed)
        b = genetic_values(spec, rd, result, rows=analysed)
        names = b.names
        lines = ["FID\tIID\t" + "\t".join(names)]
        for (f, i), g in zip(self.inp.ids, b.genetic_values):
            lines.append(f"{f}\t{i}\t" + "\t".join(f"{x:.8g}" for x in g))
        atomic_write_text(self.out / "blup.tsv", "\n".join(lines) + "\n")
        info = {"phenotypes": len(names)}
        if self.cfg.predict.snp_effects:
            std, store = self.std(), self.store()
            beta = snp_effects(store.genotypes, std, b)
            write_snp_effects(self.out, store.variant_table(), std, names, beta)
            info["passes_over_X"] = 1
        return b, info

    def do_report(self):
        from .report import write_hsq, write_plink_pca, write_report, write_results

        std, spec = self.std(), self.spectrum()
        reml = json.loads((self.out / "reml.json").read_text())
        prefix = self.cfg.gcta_prefix()
        if prefix is not None:
            from .grm import write_gcta_grm

            write_gcta_grm(prefix, self.K(), self.inp.ids, std.n_kept)
        run_info = {
            "bigmm_version": __version__,
            "created": now_utc(),
            "n_samples": int(self.inp.design.analysed.sum()),
            "n_genotyped": len(self.inp.ids),
            "n_variants": std.n_kept,
            "n_variants_total": int(std.keep.size),
            "variants_dropped": std.dropped,
            "standardize": std.standardize,
            "spectrum_info": {"method": spec.method, "requested": self.cfg.spectrum.method,
                              "n": spec.n, "k": spec.k, "rank": spec.rank, "trace_K": spec.trace_K,
                              "tail_eigenvalue": spec.tail,
                              **{k: v for k, v in spec.diagnostics.items() if k != "ritz_residuals"}},
            "design": self.inp.design.notes,
            "stages": {k: {"seconds": v.get("seconds"), "driver_peak_rss_mib": v.get("driver_peak_rss_mib"),
                           "workers_rss_mib": v.get("workers_rss_mib")}
                       for k, v in self.manifest.get("stages", {}).items()},
            "config_fingerprint": self.cfg.fingerprint(),
            "config": self.cfg.model_dump(mode="json"),
        }
        js, _ = write_results(self.out, reml, run_info)
        write_hsq(self.out / "hsq", reml)
        write_plink_pca(self.out / "pca", self.inp.ids, spec.U, spec.s, max(self.cfg.covariates.pcs, 20))
        doc = json.loads(js.read_text())
        ritz = spec.diagnostics.get("ritz_residuals")
        write_report(self.out, doc, spec.s, spec.U[:, :4], np.asarray(ritz) if ritz else None)
        return js, {}


def run(cfg: RunConfig, force: bool = False, client=None, from_stage: str | None = None) -> RunOutcome:
    """Run (or resume) the analysis described by ``cfg``.

    Parameters
    ----------
    force : bool
        Rerun every stage; also replaces another run's results in ``cfg.output``.
    client : distributed.Client, optional
        Use this client; by default a cluster is made from ``cfg.cluster`` (a local
        cluster on 127.0.0.1) for the duration of the run, and only if a stage must run.
    from_stage : str, optional
        Rerun from this stage on, even if its outputs are up to date.
    """
    if from_stage is not None and from_stage not in STAGES:
        raise InputError(f"--from {from_stage!r}: not a stage; stages are {', '.join(STAGES)}")
    from .check import raise_problems

    out = Path(cfg.output)
    raise_problems(cfg, force=force)  # every input is checked, all problems reported together
    inputs = validate_inputs(cfg)
    replace = check_output_dir(out, cfg, force)
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(cfg, inputs, force, from_stage)
    with run_lock(out, replace), _log_to(out / "run.log"), _signals_raise():
        log.info("bigmm %s run, config %s (fingerprint %s), output %s", __version__, cfg.source,
                 cfg.fingerprint(), out)
        previous = read_manifest(out) or {}
        if previous and is_this_run(previous, cfg):
            runner.manifest = previous
        runner.manifest.update({"bigmm_version": __version__, "config_fingerprint": cfg.fingerprint(),
                                "config_source": str(cfg.source) if cfg.source else None,
                                "config": cfg.model_dump(mode="json"), "started": now_utc(),
                                "spectrum_method": inputs.method})
        runner.manifest.pop("error", None)
        log.info("inputs: %d genotyped samples, %d analysed, %d phenotypes, %d fixed effects; spectrum %s%s",
                 len(inputs.ids), int(inputs.design.analysed.sum()), len(inputs.design.phenotype_names),
                 inputs.design.Z.shape[1], inputs.method,
                 " (auto)" if cfg.spectrum.method == "auto" else "")
        todo = [s for s in STAGES if s in runner.plan and not runner.up_to_date(s)]
        if todo:
            remove_path(out / "results.json")  # nothing that looks finished while stages rerun
        needs_cluster = any(s in todo for s in ("ingest", "variant_stats", "grm", "spectrum")) or \
            ("blup" in todo and cfg.predict.snp_effects)
        if client is not None or not needs_cluster:
            ctx = contextlib.nullcontext(client)
        else:
            from .cluster import dask_client

            ctx = dask_client(cfg.cluster)
        try:
            with ctx:
                if cfg.genotypes.plink is not None:
                    runner.stage("ingest", runner.do_ingest)
                runner.stage("variant_stats", runner.do_stats)
                runner.stage("grm", runner.do_grm)
                runner.stage("spectrum", runner.do_spectrum)
                runner.stage("rotate", runner.do_rotate)
                runner.stage("reml", runner.do_reml)
                runner.stage("blup", runner.do_blup)
            runner.stage("report", runner.do_report)
        except (RunInterrupted, KeyboardInterrupt) as exc:
            stage = runner.manifest.get("current_stage")
            runner.manifest.update({"status": "interrupted", "resume_from": stage,
                                    "interrupted": now_utc()})
            write_manifest(out, runner.manifest)
            log.error("interrupted during stage %s (%s); nothing partial was committed; run the same "
                      "command again to resume from %s", stage, exc, stage)
            raise
        except BaseException as exc:
            stage = runner.manifest.get("current_stage")
            runner.manifest.update({"status": "failed", "resume_from": stage, "error": str(exc)[:2000]})
            write_manifest(out, runner.manifest)
            raise
        runner.manifest.update({"status": "complete", "finished": now_utc()})
        runner.manifest.pop("resume_from", None)
        runner.manifest.pop("current_stage", None)
        write_manifest(out, runner.manifest)
        log.info("run complete: %d stages run (%s), %d up to date; results %s", len(runner.ran),
                 ", ".join(runner.ran) or "none", len(runner.skipped), out / "results.json")
    result = runner.loaded.get("reml")
    if result is None:
        result = RemlResult.from_dict(json.loads((out / "reml.json").read_text()))
    return RunOutcome(output=out, result=result, results_json=out / "results.json",
                      stages_run=tuple(runner.ran), stages_skipped=tuple(runner.skipped))


def status(out: Path) -> list[dict]:
    """Each stage's recorded state and whether the current inputs would rerun it."""
    from .config import parse_config

    out = Path(out)
    manifest = read_manifest(out)
    if manifest is None:
        raise InputError(f"{out} is not a bigmm run directory (no run.json)")
    rows = []
    try:
        cfg = parse_config(manifest["config"], base=out)
        method = manifest.get("spectrum_method") or spectrum_method(cfg, 0)
        plan = stage_plan(cfg, method)
        problem = None
    except (BigmmError, OSError, KeyError) as exc:
        plan, problem = {}, str(exc)
    for name in STAGES:
        entry = manifest.get("stages", {}).get(name)
        row = {"stage": name, "state": entry.get("status") if entry else "pending",
               "seconds": entry.get("seconds") if entry else None}
        if plan and name not in plan:
            row["state"], row["rerun"] = ("external store" if name == "ingest" else "not needed"), "no"
        elif problem:
            row["rerun"] = f"unknown ({problem})"
        elif not entry:
            partial = {"grm": "grm.zarr.partial", "spectrum": "spectrum.partial"}.get(name)
            if partial and (out / partial).exists():
                row["state"] = "partial (checkpointed)"
            row["rerun"] = "yes"
        elif entry.get("fingerprint") != plan[name]["fingerprint"]:
            row["rerun"] = "yes (inputs or config changed)"
        elif not all((out / f).exists() for f in STAGE_OUTPUTS[name]):
            row["rerun"] = "yes (outputs missing)"
        else:
            row["rerun"] = "no"
        rows.append(row)
    # a stage downstream of one that reruns reruns too
    rerun = False
    for row in rows:
        if row["rerun"].startswith("yes"):
            rerun = True
        elif rerun and row["rerun"] == "no" and row["state"] not in ("not needed", "external store"):
            row["rerun"] = "yes (upstream reruns)"
    return rows
