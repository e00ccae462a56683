"""The config-driven run: resumable stages committed one by one into the run directory.

    ingest → variant_stats → grm → spectrum → rotate → reml → blup → report

Each stage loads its inputs, calls one function of the library and commits its outputs by
atomic rename (:mod:`bigmm.pipeline.outputs`), then records a manifest entry in ``run.json``
(:mod:`bigmm.pipeline.rundir`): status, the stage's fingerprint (:mod:`bigmm.pipeline.plan`), duration and
peak memory. Re-running a config skips every stage whose recorded fingerprint still matches and
resumes at the first that does not; a changed phenotype file reruns rotate/reml/report only, a
changed variant filter reruns from variant_stats. Long stages checkpoint inside: GRM blocks (a
done ledger) and randomized-spectrum passes. All inputs are read and checked once, before
anything is written or computed (:func:`bigmm.pipeline.validate.validate`).

Run directory::

    run.json, run.log, .bigmm.lock (while running)
    genotypes.zarr    cohort store made from PLINK input          (ingest)
    variants.zarr     per-variant statistics and standardization  (variant_stats)
    grm.zarr          K over all genotyped samples                (grm; exact spectrum or GCTA export)
    spectrum.zarr     eigenpairs over all genotyped samples,      (spectrum)
    eigenvalues.tsv, pcs.tsv
    rotated.npz       phenotypes/covariates rotated on the spectrum (rotate)
    reml.json         the REML fits                               (reml)
    blup.tsv, snp_effects.*                                       (blup)
    results.json, results.tsv, report.html, hsq/, gcta/           (report; results.json last)
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from dask.utils import format_bytes

from .._version import __version__
from ..blup import Blup, genetic_values, leave_one_out, loo_accuracy, snp_effects
from ..errors import BigmmError, InputError, OutputError
from ..genotypes import Standardization, standardization, variant_stats
from ..grm import create_grm_store, grm, grm_complete
from ..io.gcta import gcta_grm_writer
from ..io.plink import ingest_plink
from ..io.vcfzarr import open_vcf_zarr
from ..mfreml import blup_matrix_free, fit_matrix_free
from ..passes import GrmOperator
from ..reml import RemlResult, RotatedDesign, fit_rotated, liability_h2, rotate
from ..spectrum import RITZ_CONVERGED, Spectrum, exact_spectrum, randomized_spectrum, unconverged_pcs
from ..store import (CheckedArray, CohortStore, StoreIntegrityError, atomic_write_text, fsync_tree,
                     has_chunk_digests, now_utc, open_store, record_chunk_digests, remove_path, resolve_path,
                     verify_chunk_digests, verify_chunks)
from ..tasks import current_client, fail_point, pause_point, total_threads
from .cluster import dask_client
from .config import RunConfig, parse_config
from .outputs import (PassCheckpoint, StepCheckpoint, json_safe, load_reml, load_rotated, load_spectrum, load_variants, save_reml,
                      save_rotated, save_spectrum, save_variants, write_blup, write_snp_effects,
                      write_spectrum_tables)
from .memory import grm_block_size, task_memory
from .plan import PASS_STAGES, STAGE_OUTPUTS, STAGES, spectrum_method, stage_passes, stage_plan
from .report import (FIGURES, ReportData, hsq_file_names, relatedness_summary, write_hsq, write_plink_pca,
                     write_report, write_results, write_results_json)
from .rundir import (STAGE_STAMP, RunInterrupted, is_this_run, log_to, read_manifest, remove_stage_files, run_lock,
                     signals_raise,
                     write_failure, write_manifest)
from .validate import Inputs, validate

log = logging.getLogger("bigmm")

#: a reduced spectrum whose top k eigenvalues hold less than this share of tr K is warned about:
#: spectral REML on it learns h² from the top k directions only (unbiased, but with a far larger
#: SE: efficiency 2-20% at k = 50-200, n = 5,000; docs/lowrank.md)
MIN_SHARE_TRACE_K = 0.5


def _readable(path: Path) -> bool:
    """Whether a committed output opens: JSON parses, an .npz's index and metadata read, a Zarr
    store's metadata parses (a flipped chunk is caught later, by its checksum, and named)."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                if "meta" in f.files:
                    json.loads(bytes(f["meta"]).decode())
        elif path.suffix == ".zarr":
            import warnings

            with warnings.catch_warnings():  # the stage stamp beside the arrays is not Zarr's
                warnings.simplefilter("ignore")
                g = zarr.open_group(str(path), mode="r")
                for _name, arr in g.arrays():
                    _ = arr.shape
    except Exception:  # noqa: BLE001 - any failure to open means the output is not usable
        return False
    return True


def variant_filters(v, std: Standardization) -> dict:
    """Each variant filter and selection of the run: its setting (None: off) and the variants it
    dropped (each variant counted under the first that drops it, in this order)."""
    d = std.dropped
    out = {}
    if v.chr is not None:
        out["chr"] = {"setting": v.chr, "dropped": d.get("chr", 0)}
    if v.extract is not None:
        out["extract"] = {"setting": str(v.extract), "dropped": d.get("not_in_extract", 0)}
    if v.exclude is not None:
        out["exclude"] = {"setting": str(v.exclude), "dropped": d.get("in_exclude", 0)}
    out["all_missing"] = {"setting": "always", "dropped": d.get("all_missing", 0)}
    out["zero_variance"] = {"setting": "always (monomorphic)", "dropped": d.get("monomorphic", 0)}
    out["all_heterozygous"] = {"setting": "always (every call heterozygous: zero variance)",
                               "dropped": d.get("all_heterozygous", 0)}
    out["max_missing"] = {"setting": v.max_missing if v.max_missing < 1.0 else None,
                          "dropped": d.get("max_missing", 0)}
    out["min_maf"] = {"setting": v.min_maf if v.min_maf > 0.0 else None, "dropped": d.get("min_maf", 0)}
    return out


def describe_filters(filters: dict) -> str:
    """One line for the log: ``min_maf 0.01: 3 dropped; max_missing off; ...``."""
    return "; ".join(f"{k} off (set variants.{k} to filter)" if f["setting"] is None
                     else f"{k} {f['setting']}: {f['dropped']} dropped" for k, f in filters.items())


@dataclass(frozen=True)
class RunOutcome:
    output: Path
    result: RemlResult | None
    results_json: Path
    stages_run: tuple
    stages_skipped: tuple


# ---------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------

def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``.

    >>> _duration(4.2), _duration(185), _duration(7620)
    ('4 s', '3 min 05 s', '2 h 07 min')
    """
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _worker_rss_mib() -> float | None:
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
        self.plan = stage_plan(cfg, inputs.method, inputs.genotype_provenance, inputs.reml_method)
        self.matrix_free = inputs.reml_method == "matrix_free"
        self.force = force
        self.from_stage = from_stage
        self.manifest: dict = {}
        self.loaded: dict = {}
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.t0 = time.perf_counter()
        self.todo: list[str] = []  # the stages this invocation runs (set by run())
        self.passes: dict[str, float] | None = None  # passes over X per stage (stage_passes)
        self.pass_seconds = 0.0  # seconds and passes over X measured so far in this run
        self.passes_timed = 0.0
        self.command: str | None = None  # the command line that started this invocation (the report names it)

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
        if not all((self.out / f).exists() for f in self.outputs(name)):
            return False
        damaged = [f for f in self.outputs(name) if not _readable(self.out / f)]
        if damaged:
            log.warning("stage %s: its output %s is damaged (unreadable); the stage runs again",
                        name, ", ".join(damaged))
            return False
        return self.chunks_intact(name)

    def chunks_intact(self, name: str) -> bool:
        """Whether every chunk of the stage's Zarr output is the one the stage wrote at its place
        (:func:`bigmm.store.verify_chunk_digests`: a CRC32C checksum passes swapped chunks and a
        chunk copied from another store). An output made before bigmm recorded chunk digests gets
        its record now, so that later changes are seen (one 4-byte read per chunk)."""
        rel = self.SELF_DESCRIBING.get(name)
        if rel is None:
            return True
        try:
            if not verify_chunk_digests(self.out / rel, f"{self.out / rel}"):
                record_chunk_digests(self.out / rel)
                log.info("stage %s: recorded the chunk digests of %s (made before bigmm kept them)", name, rel)
        except StoreIntegrityError as exc:
            log.warning("stage %s: %s; the stage runs again", name, exc)
            return False
        return True

    def check_genotype_content(self, keep=()) -> dict | None:
        """The content fingerprint of a given genotype store (a cohort or VCF Zarr store; None for
        PLINK input, whose .bed is fingerprinted in the plan, and a given GRM), compared with the
        one this run recorded: a store rewritten in place since (a chunk replaced, ``call_genotype``
        rewritten) makes every stage that read it run again. A run recorded before bigmm kept it
        keeps its stages (the fingerprint is recorded now)."""
        store = self.inp.store
        content = store.content_fingerprint() if store is not None else None
        if content is None:
            return None
        before = self.manifest.get("genotype_content")
        log.info("genotype store %s: content fingerprint %s (%d chunk files, %s, read in %.2f s)", store.path,
                 content["digest"], content["files"], format_bytes(content["bytes"]), content["seconds"])
        if before is None:
            if self.manifest.get("stages"):
                log.info("genotype store %s: its content fingerprint is recorded now (this run was made before "
                         "bigmm kept one); later changes to the store rerun the stages that read it", store.path)
        elif before.get("digest") != content["digest"] and self.manifest.get("stages"):
            log.warning("genotype store %s changed since the stages that read it ran (content fingerprint %s, "
                        "was %s: a chunk was rewritten or replaced): they run again", store.path,
                        content["digest"], before.get("digest"))
            self.invalidate("variant_stats", keep=keep)
        return content

    #: stages whose Zarr output records its fingerprint (a stamp file in the store): a damaged
    #: run.json is rebuilt from them
    SELF_DESCRIBING = {"ingest": "genotypes.zarr", "variant_stats": "variants.zarr", "grm": "grm.zarr",
                       "spectrum": "spectrum.zarr"}

    def adopt_committed(self) -> None:
        """Rebuild the record of a damaged run.json from committed outputs that carry their own
        fingerprint, in stage order, up to the first that does not match this plan."""
        for name in STAGES:
            if name not in self.plan:
                continue
            rel = self.SELF_DESCRIBING.get(name)
            if rel is None or not (self.out / rel).exists():
                return
            fp = self.plan[name]["fingerprint"]
            try:
                ok = json.loads((self.out / rel / STAGE_STAMP).read_text()).get("fingerprint") == fp
            except (OSError, ValueError):  # no stamp, or an unreadable one: not adopted
                ok = False
            if not ok or not all((self.out / f).exists() for f in self.outputs(name)):
                return
            self.manifest.setdefault("stages", {})[name] = {
                "status": "complete", "fingerprint": fp, "files": list(self.outputs(name)),
                "upstream": {u: self.plan[u]["fingerprint"] for u in self.plan[name]["upstream"]},
                "adopted": "run.json was damaged; this output records the plan's fingerprint"}
            log.warning("run.json was damaged: the committed output of stage %s (%s) is of this plan "
                        "and is kept", name, rel)

    def stage_of(self, path: str | None, keep=()) -> str | None:
        """The committed stage of this plan whose recorded output holds ``path`` (None for a file
        that is not one: an input of the run, or a path outside the run directory)."""
        if path is None:
            return None
        path, out = resolve_path(path), resolve_path(self.out)
        if out not in path.parents or any(resolve_path(k) in (path, *path.parents) for k in keep):
            return None
        top = path.relative_to(out).parts[0]
        for name, entry in self.manifest.get("stages", {}).items():
            if name in self.plan and any(Path(f).parts[0] == top for f in entry.get("files", ())):
                return name
        return None

    def invalidate(self, name: str, keep=()) -> None:
        """Forget stage ``name`` and every later stage, removing their recorded outputs, so that
        they run again (a damaged output found while reading it)."""
        stages = self.manifest.setdefault("stages", {})
        for later in STAGES[STAGES.index(name):]:
            entry = stages.pop(later, None)
            if entry is not None:
                remove_stage_files(self.out, later, entry, keep=keep)
        self.skipped = []  # the next attempt goes through every stage again
        self.loaded.clear()
        write_manifest(self.out, {**self.manifest, "status": "running", "resume_from": name})

    def planned_files(self, name: str) -> list[str]:
        """Every file stage ``name`` may write, before it writes any (relative paths)."""
        files = list(self.outputs(name))
        if name == "blup":
            files += ["blup_loo.tsv", "snp_effects.tsv", "snp_effects.zarr"]
        if name == "report":
            files += [f"hsq/{f}" for f in hsq_file_names(self.inp.design.phenotype_names).values()]
            files += ["pca.eigenvec", "pca.eigenval"] + [f"report/{f}.png" for f in FIGURES]
            prefix = self.cfg.gcta_prefix()
            if prefix is not None:
                rel = prefix.relative_to(self.out)
                files += [f"{rel}.grm.bin", f"{rel}.grm.N.bin", f"{rel}.grm.id"]
        return files

    def outputs(self, name: str) -> tuple:
        """The files a committed stage leaves (the matrix-free REML also keeps its final state)."""
        return STAGE_OUTPUTS[name] + (("reml_state.npz",) if name == "reml" and self.matrix_free else ())

    def commit(self, name: str, seconds: float, files=None, **info) -> None:
        entry = {"status": "complete", "fingerprint": self.plan[name]["fingerprint"],
                 "files": sorted(set(files if files is not None else self.outputs(name))),
                 "upstream": {u: self.plan[u]["fingerprint"] for u in self.plan[name]["upstream"]},
                 "inputs": self.plan[name]["inputs"], "bigmm_version": __version__,
                 "seconds": round(seconds, 3), "finished": now_utc(),
                 "driver_peak_rss_mib": round(_peak_rss_mib(), 1),
                 "workers_rss_mib": _worker_rss_mib(), **info}
        rel = self.SELF_DESCRIBING.get(name)
        if rel is not None and (self.out / rel).is_dir():  # the output names the plan it belongs to
            atomic_write_text(self.out / rel / STAGE_STAMP, json.dumps({"stage": name, "fingerprint": entry["fingerprint"]}))
            if not has_chunk_digests(self.out / rel):  # ingest and grm record theirs as they write
                record_chunk_digests(self.out / rel)
        self.manifest.setdefault("stages", {})[name] = entry
        self.manifest.pop("writing", None)
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
        # a stage that runs invalidates the record of everything downstream (their files were
        # removed when the run started); what it is about to write is recorded first, so that a
        # failure leaves nothing unrecorded behind
        stages = self.manifest.setdefault("stages", {})
        for later in STAGES[STAGES.index(name):]:
            stages.pop(later, None)
        self.manifest["writing"] = {"stage": name, "files": self.planned_files(name)}
        write_manifest(self.out, {**self.manifest, "status": "running", "resume_from": name})
        self.log_run_progress(name)
        log.info("stage %s: start", name)
        pause_point(name)
        fail_point(name)
        t0 = time.perf_counter()
        value, info = fn()
        info = dict(info or {})
        files = info.pop("files", None)
        if files is None and name == "blup":
            files = [f for f in self.planned_files("blup") if (self.out / f).exists()]
        seconds = time.perf_counter() - t0
        self.commit(name, seconds, files=files, **info)
        if name not in self.ran:
            self.ran.append(name)
        passes = info.get("passes_over_X")
        if isinstance(passes, (int, float)) and passes > 0:
            self.pass_seconds += seconds
            self.passes_timed += passes
        return value

    def grm_block(self) -> int:
        """Samples per GRM block on this run's cluster (``grm.block_size`` or the default)."""
        n = len(self.inp.ids)
        return grm_block_size(self.cfg, n, total_threads(), min(self.cfg.genotypes.chunks[0], n),
                              min(self.inp.variant_chunk, self.inp.n_variants))

    def log_run_progress(self, name: str) -> None:
        """The whole run at the start of stage ``name``: stage i of N, elapsed, and the time left
        for the passes over X still to make, at the seconds per pass measured so far in this run
        (other work, e.g. an exact eigendecomposition or the report, is not counted)."""
        if self.passes is None:
            self.passes = stage_passes(self.cfg, len(self.inp.ids), self.inp.method, self.inp.reml_method,
                                       self.grm_block() if "grm" in self.todo else None,
                                       self.inp.memory_plan, stages=list(self.plan))
        i = self.todo.index(name) + 1 if name in self.todo else len(self.ran) + 1
        n = max(len(self.todo), i)
        left = sum(self.passes.get(s, 0.0) for s in self.todo[i - 1:])
        if left <= 0:
            eta = "no passes over X left"
        elif self.passes_timed <= 0:
            eta = f"{left:.0f} passes over X to go; time left estimated once the first is timed"
        else:
            per = self.pass_seconds / self.passes_timed
            bound = " at most" if self.matrix_free and "reml" in self.todo[i - 1:] else ""
            eta = (f"about {_duration(left * per)} left for{bound} {left:.0f} more passes over X "
                   f"({per:.1f} s per pass so far; other work not counted)")
        log.info("run: stage %d of %d (%s), %s elapsed; %s", i, n, name, _duration(time.perf_counter() - self.t0), eta)

    # -- loaders of committed outputs ------------------------------------------------
    def store(self) -> CohortStore:
        if "store" not in self.loaded:
            if self.cfg.genotypes.plink is not None:
                self.loaded["store"] = open_store(self.out / "genotypes.zarr")
            else:
                self.loaded["store"] = self.inp.store
        return self.loaded["store"]

    def std(self) -> Standardization:
        if "std" not in self.loaded:
            self.loaded["std"] = load_variants(self.out / "variants.zarr")
        return self.loaded["std"]

    def spectrum(self) -> Spectrum:
        if "spectrum" not in self.loaded:
            self.loaded["spectrum"] = load_spectrum(self.out / "spectrum.zarr")
        return self.loaded["spectrum"]

    def K(self, name: str = "K") -> CheckedArray:
        """An array of the committed GRM store: ``K``, or ``N`` (per-pair call counts)."""
        g = zarr.open_group(str(self.out / "grm.zarr"), mode="r")
        verify_chunks(g[name], f"{self.out}/grm.zarr/{name}")
        verify_chunk_digests(self.out / "grm.zarr", f"{self.out}/grm.zarr", names=[name])
        return CheckedArray(g[name], f"{self.out}/grm.zarr/{name}")

    # -- stages ------------------------------------------------------------------------
    def operator(self, dtype, label: str | None = None) -> GrmOperator:
        """K of all genotyped samples, on the run's cluster, within its memory per task."""
        return GrmOperator(self.store().genotypes, self.std(), dtype=np.dtype(dtype),
                           memory=task_memory(self.cfg.cluster), label=label)

    def do_ingest(self):
        store = ingest_plink(self.inp.plink, self.out / "genotypes.zarr",
                             chunks=self.cfg.genotypes.chunks, overwrite=True, samples=self.inp.sample_rows)
        self.loaded["store"] = store
        return store, {"n_samples": store.n_samples, "n_variants": store.n_variants, "passes_over_X": 1}

    def do_stats(self):
        store = self.store()
        if store.sample_ids() != self.inp.ids:
            raise InputError(f"the samples of {store.path} differ from the genotype input")
        stats = variant_stats(store.to_dask())
        v = self.cfg.variants
        std = standardization(stats, v.standardize, min_maf=v.min_maf, max_missing=v.max_missing,
                              drop=self.inp.variant_drop)
        save_variants(self.out / "variants.zarr", stats, std)
        self.loaded["std"] = std
        log.info("variant filters: %s", describe_filters(variant_filters(v, std)))
        log.info("variants: %d of %d kept; dropped %s", std.n_kept, store.n_variants,
                 {k: c for k, c in std.dropped.items() if c} or "none")
        return std, {"passes_over_X": 1, "n_kept": std.n_kept, "dropped": std.dropped}

    def do_grm(self):
        store, std = self.store(), self.std()
        final, partial = self.out / "grm.zarr", self.out / "grm.zarr.partial"
        n = store.n_samples
        dtype = np.dtype(self.cfg.grm.dtype)
        block = grm_block_size(self.cfg, n, total_threads(), store.chunks[0], store.chunks[1])
        fp = self.plan["grm"]["fingerprint"]
        attrs = {"n_samples": n, "n_variants": std.n_kept, "standardize": std.standardize,
                 "block_size": block, "fingerprint": fp, "dtype": dtype.name,
                 "samples": "all samples of the genotype store, in store order",
                 "bigmm_version": __version__}
        remove_path(final)
        if partial.exists():
            try:
                g = zarr.open_group(str(partial), mode="r")
                fp_there, _ = g.attrs.get("fingerprint"), g["done"].shape
            except Exception as exc:  # noqa: BLE001 - its creation was cut short (a full disk): start again
                log.warning("the GRM checkpoint %s does not open (%s); the GRM starts again", partial, exc)
                fp_there = None
            if fp_there != fp:
                remove_path(partial)
            else:  # resume in the checkpoint's blocks (the default size depends on the cluster)
                block = int(g.attrs["block_size"])
        if not partial.exists():
            create_grm_store(partial, n, block, attrs, counts=True)  # N: GCTA's per-pair counts
        nb = (n + block - 1) // block
        before = int(np.triu(np.asarray(zarr.open_group(str(partial), mode="r")["done"][...])).sum())
        grm(store.genotypes, std, block_size=block, out=partial, dtype=dtype)
        if not grm_complete(zarr.open_group(str(partial), mode="r")):
            raise RuntimeError("GRM blocks missing after computation")
        record_chunk_digests(partial)  # each block of K and N bound to its place in this store
        fsync_tree(partial)
        os.replace(partial, final)
        total = nb * (nb + 1) // 2
        return None, {"blocks": f"{total - before} computed, {before} from checkpoint",
                      "passes_over_X": round(nb, 1)}

    def do_spectrum(self):
        sc = self.cfg.spectrum
        if self.inp.grm is not None:  # a given GRM, read once by the validator, over the analysed samples
            spec = exact_spectrum(self.inp.grm_K, round_off=float(np.finfo(np.dtype(self.inp.grm.dtype)).eps))
            info = {"passes_over_X": 0, "grm_input": str(self.inp.grm.bin)}
            self.warn_not_psd(spec)
        elif self.inp.method == "exact":
            K = self.K()
            spec = exact_spectrum(np.asarray(K[...]))
            info = {"passes_over_X": 0}
        else:
            ck = PassCheckpoint(self.out / "spectrum.partial", self.plan["spectrum"]["fingerprint"])
            spec = randomized_spectrum(self.operator(sc.dtype), sc.rank, oversample=sc.oversample,
                                       power_iters=sc.power_iters, seed=sc.seed, n_probes=sc.probes,
                                       checkpoint=ck, algorithm=sc.algorithm)
            d = spec.diagnostics
            log.info("spectrum: randomized, k = %d, l = %d, %d passes over X, max Ritz residual %.2e, "
                     "||U'U - I|| = %.1e", spec.k, spec.k + d["oversample"], d["passes_over_X"],
                     d["max_ritz_residual"], d["orthonormality_error"])
            info = {"passes_over_X": d["passes_over_X"]}
            self.warn_reduced(spec)
        save_spectrum(self.out / "spectrum.zarr", spec)
        write_spectrum_tables(self.out, spec, self.inp.ids, self.n_pcs_written(spec))
        remove_path(self.out / "spectrum.partial")
        self.loaded["spectrum"] = spec
        log.info("spectrum: %s, n = %d, k = %d, numerical rank %d, top eigenvalue %.4g", spec.method,
                 spec.n, spec.k, spec.rank, spec.s[0])
        return spec, info

    def warn_not_psd(self, spec: Spectrum) -> None:
        """A given GRM with eigenvalues negative beyond round-off: how many, how negative, clipped."""
        d = spec.diagnostics
        m = d.get("negative_eigenvalues", 0)
        if m:
            smin = d["min_eigenvalue_before_clip"]
            log.warning("genotypes.grm %s: K (over the %d analysed samples) is not positive semi-definite: "
                        "%d of its %d eigenvalues are negative beyond the round-off of its values, the most "
                        "negative %.4g (%.3g%% of the largest, %.4g); they were set to 0, i.e. REML uses the "
                        "nearest positive semi-definite matrix to K (as GCTA's --reml-bendV bends V). A GRM "
                        "X Xᵀ/p has no negative eigenvalues: one made with per-pair missing-call counts, "
                        "or edited, can; check how it was made", self.inp.grm.bin, spec.n, m, spec.n, smin,
                        100 * smin / spec.s[0], spec.s[0])

    def n_pcs_written(self, spec: Spectrum) -> int:
        """PCs in pcs.tsv (and the report's PCA files): the PCs used as covariates, at least 20."""
        return min(max(self.cfg.covariates.pcs, 20), spec.k)

    def warn_reduced(self, spec: Spectrum) -> None:
        """What a reduced spectrum leaves out, and which of its PCs are not converged."""
        d = spec.diagnostics
        share, share2 = d.get("share_trace_K"), d.get("share_trace_K2")
        log.info("spectrum: the top k = %d eigenvalues capture %.1f%% of tr K and %.1f%% of tr K² "
                 "(tr K² estimated with %d probes, Monte Carlo SE %.2g)", spec.k, 100 * share,
                 100 * share2, d.get("probes", 0), d.get("trace_K2_se", float("nan")))
        if share is not None and share < MIN_SHARE_TRACE_K and self.inp.reml_method == "spectral":
            log.warning("spectrum: the top k = %d eigenvalues capture only %.0f%% of tr K. REML on a "
                        "reduced spectrum gives the other n − k directions (%.0f%% of tr K) one shared "
                        "eigenvalue, so their structure cannot be told from noise: h² stays unbiased "
                        "(the shared eigenvalue keeps their total) but is learnt from the top k "
                        "directions only, and its SE is several times the exact one (docs/lowrank.md); "
                        "use reml.method: matrix_free (REML without a spectrum, as efficient as exact) "
                        "or spectrum.method: exact, or a larger spectrum.rank",
                        spec.k, 100 * share, 100 * (1 - share))
        m = self.n_pcs_written(spec)
        bad = unconverged_pcs(spec, m)
        if bad:
            res = spec.diagnostics["ritz_residuals"]
            log.warning("spectrum: %d of the %d PCs written (pcs.tsv) are not converged (relative Ritz "
                        "residual ‖Kv − λv‖/λ above %g): %s; their eigenvalues and PCs are approximate "
                        "(eigenvalues.tsv lists each residual); raise spectrum.power_iters or "
                        "oversample, or use spectrum.method: exact", len(bad), m, RITZ_CONVERGED,
                        ", ".join(f"PC{i} ({res[i - 1]:.1e})" for i in bad[:10])
                        + (f" and {len(bad) - 10} more" if len(bad) > 10 else ""))

    def do_rotate(self):
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
        self.loaded["analysed_spectrum"] = sub
        rd = rotate(sub, d.Y[analysed], Z[analysed], phenotype_names=d.phenotype_names,
                    covariate_names=znames, missing=self.cfg.phenotypes.missing)
        save_rotated(self.out / "rotated.npz", rd)
        self.loaded["rotated"] = rd
        return rd, {"n_analysed": int(analysed.sum()),
                    "missing_methods": sorted({g.method for g in rd.groups})}

    def rotated(self) -> RotatedDesign:
        if "rotated" not in self.loaded:
            self.loaded["rotated"] = load_rotated(self.out / "rotated.npz")
        return self.loaded["rotated"]

    def reml(self):
        """The committed REML result (a matrix-free one is rebuilt from its final state, no pass)."""
        if "reml" not in self.loaded:
            if self.matrix_free:
                self.loaded["reml"] = self.fit_matrix_free(StepCheckpoint(self.out / "reml_state.npz"))
            else:
                self.loaded["reml"] = load_reml(self.out / "reml.json", design=self.rotated())
        return self.loaded["reml"]

    def model_design(self) -> tuple[np.ndarray, np.ndarray, list]:
        """Y (NaN where missing or not analysed) and Z (with PCs if asked) over all genotyped samples."""
        d = self.inp.design
        Z, znames = d.Z, list(d.covariate_names)
        if self.cfg.covariates.pcs:
            spec = self.spectrum()
            m = self.cfg.covariates.pcs
            if m > spec.k:
                raise InputError(f"covariates.pcs = {m} but the spectrum has only {spec.k} eigenvectors")
            Z = np.hstack([Z, np.where(d.analysed[:, None], spec.U[:, :m], 0.0)])
            znames += [f"PC{i + 1}" for i in range(m)]
        return d.Y, Z, znames

    def fit_matrix_free(self, checkpoint):
        r = self.cfg.reml
        Y, Z, znames = self.model_design()
        deflate = None
        if r.deflate:
            spec = self.spectrum()
            deflate = (spec.U[:, :r.deflate], spec.s[:r.deflate])
        return fit_matrix_free(self.operator(r.dtype, "matrix-free REML pass"), Y, Z, phenotype_names=self.inp.design.phenotype_names,
                               covariate_names=znames, probes=r.probes, max_steps=r.max_steps, tol=r.tol,
                               deflate=deflate, seed=r.seed, grid_size=r.grid_size, checkpoint=checkpoint)

    def do_reml(self):
        if self.matrix_free:
            return self.do_reml_matrix_free()
        result = fit_rotated(self.rotated(), grid_size=self.cfg.reml.grid_size)
        for f in result.fits:
            log.info("REML %s: n = %d, h2 = %.4f (SE %.4f), sigma2_g = %.4g, sigma2_e = %.4g%s", f.name,
                     f.n, f.h2, f.h2_se, f.sigma2_g, f.sigma2_e,
                     f", boundary {f.boundary}" if f.boundary else "")
        save_reml(self.out / "reml.json", result)
        self.loaded["reml"] = result
        return result, {"phenotypes": len(result.fits)}

    def do_reml_matrix_free(self):
        """Lanczos quadrature on passes over X, resumable by step (``reml.partial/state.npz``)."""
        partial = self.out / "reml.partial"
        result = self.fit_matrix_free(StepCheckpoint(partial / "state.npz"))
        for f in result.fits:
            log.info("REML %s (matrix-free): n = %d, h2 = %.4f (SE %.4f, of which Monte Carlo %.4f), "
                     "h2_HE = %.4f (Haseman-Elston moment estimate: a rough cross-check, may fall outside [0, 1]), sigma2_g = %.4g, sigma2_e = %.4g, %d steps, %s (|Δh2| %.1e, |Δℓ| %.1e)%s",
                     f.name, f.n, f.h2, f.h2_se, f.h2_se_mc, f.h2_he, f.sigma2_g, f.sigma2_e, f.lanczos_steps,
                     "converged" if f.converged else "NOT CONVERGED", f.delta_h2, f.delta_logl,
                     f", boundary {f.boundary}" if f.boundary else "")
        save_reml(self.out / "reml.json", result)
        os.replace(partial / "state.npz", self.out / "reml_state.npz")
        remove_path(partial)
        self.loaded["reml"] = result
        return result, {"phenotypes": len(result.fits), "passes_over_X": result.notes.get("passes_this_run"),
                        "lanczos_steps": result.lanczos_steps, "converged": result.converged}

    def do_blup(self):
        """ĝ for every genotyped sample (blup.tsv) and, if asked, SNP effects (one pass over X)."""
        if self.matrix_free:
            result = self.reml()
            op = self.operator(self.cfg.reml.dtype)
            g, w = blup_matrix_free(op, result)
            b = Blup(names=list(result.phenotype_names), genetic_values=g, weights=w,
                     sigma2_g=np.array([f.sigma2_g for f in result.fits]), notes={"reml": "matrix_free"})
            write_blup(self.out / "blup.tsv", self.inp.ids, b.names, b.genetic_values)
            info = {"phenotypes": len(b.names), "passes_over_X": 1}
            if self.cfg.predict.snp_effects:
                beta = snp_effects(op, b)
                write_snp_effects(self.out, self.store().variant_table(), self.std(), b.names, beta)
                info["passes_over_X"] = 2
            return b, info
        result = self.reml()
        analysed = np.flatnonzero(self.inp.design.analysed)
        spec = self.spectrum()
        own = self.loaded.get("analysed_spectrum")
        if own is None and analysed.size < spec.n:  # the spectrum the fit was rotated on, made once
            own = spec.subset(analysed)
        b = genetic_values(spec, result.design, result, rows=analysed, rows_spectrum=own)
        write_blup(self.out / "blup.tsv", self.inp.ids, b.names, b.genetic_values)
        # each analysed sample predicted from the others at the REML variances (no refit)
        loo = leave_one_out(spec, result.design, result, rows=analysed, rows_spectrum=own)
        write_blup(self.out / "blup_loo.tsv", self.inp.ids,
                   [f"{nm}_{what}" for nm in loo.names for what in ("pred_loo", "g_loo")],
                   np.stack([loo.predictions, loo.genetic_values], axis=2).reshape(len(self.inp.ids), -1))
        for nm, acc in loo.accuracy().items():
            log.info("BLUP %s: held-out (leave-one-out) accuracy r(y_pred, y) = %.4f, of the genetic part "
                     "%.4f (r(g_hat, g) ~ %.4f), %d samples", nm, acc["loo"], acc["loo_genetic"], acc["gv"], acc["n"])
        info = {"phenotypes": len(b.names)}
        if self.cfg.predict.snp_effects:
            beta = snp_effects(self.operator(self.cfg.spectrum.dtype), b)
            write_snp_effects(self.out, self.store().variant_table(), self.std(), b.names, beta)
            info["passes_over_X"] = 1
        return b, info

    def do_report(self):
        std = self.std() if self.inp.grm is None else None
        spec = self.spectrum() if self.inp.spectrum_needed else None
        reml = json_safe(self.reml().to_dict())
        d = self.inp.design
        fits = {p["name"]: p for p in reml["phenotypes"]}
        for j, name in enumerate(d.phenotype_names):  # analysed samples without a value, the same for every method
            if name in fits:
                fits[name]["n_missing"] = int(np.isnan(d.Y[d.analysed, j]).sum())
        prefix = self.cfg.gcta_prefix()
        run_info = {
            "bigmm_version": __version__,
            "created": now_utc(),
            "n_samples": int(self.inp.design.analysed.sum()),
            "n_genotyped": len(self.inp.ids),
            "n_variants": std.n_kept if std is not None else None,
            "n_variants_total": int(std.keep.size) if std is not None else None,
            "variants_dropped": std.dropped if std is not None else None,
            "standardize": std.standardize if std is not None else None,
            "reml_method": self.inp.reml_method,
            "spectrum_info": None if spec is None else {
                "method": spec.method, "requested": self.cfg.spectrum.method, "n": spec.n, "k": spec.k,
                "rank": spec.rank, "trace_K": spec.trace_K, "tail_eigenvalue": spec.tail,
                **{k: v for k, v in spec.diagnostics.items() if k != "ritz_residuals"},
                **({"pc_residual_tol": RITZ_CONVERGED,
                    "unconverged_pcs": unconverged_pcs(spec, self.n_pcs_written(spec))}
                   if spec.diagnostics.get("ritz_residuals") else {})},
            "design": self.inp.design.notes,
            "stages": {k: {"seconds": v.get("seconds"), "driver_peak_rss_mib": v.get("driver_peak_rss_mib"),
                           "workers_rss_mib": v.get("workers_rss_mib")}
                       for k, v in self.manifest.get("stages", {}).items()},
            "config_fingerprint": self.cfg.fingerprint(),
            "config": self.cfg.model_dump(mode="json"),
            # what started the run and what it read (the report's summary names them)
            "command": self.command,
            "config_file": None if self.cfg.source is None else str(self.cfg.source),
            "inputs": {k: None if v is None else str(v) for k, v in (
                ("genotypes", self.cfg.genotypes.plink or self.cfg.genotypes.zarr or self.cfg.genotypes.vcf_zarr),
                ("GRM", self.cfg.genotypes.grm), ("phenotype", self.cfg.phenotypes.file),
                ("covariate", self.cfg.covariates.file))},
        }
        run_info["samples_selection"] = self.inp.selection.get("samples")
        if self.inp.labels is not None:
            run_info["report_labels"] = self.inp.labels[2]
        if std is not None:
            run_info["variant_filters"] = variant_filters(self.cfg.variants, std)
        else:  # a given GRM: what it held, and which of its samples were used
            run_info["grm_input"] = self.inp.grm_info
        prevalence = self.cfg.phenotypes.prevalence
        if prevalence is not None:
            d = self.inp.design
            for p in reml["phenotypes"]:
                y = d.Y[d.analysed, d.phenotype_names.index(p["name"])]
                y = y[~np.isnan(y)]
                cases = float(np.mean(y == y.max()))
                hl, hl_se = liability_h2(p["h2"], p["h2_se"], prevalence, cases)
                p.update(prevalence=prevalence, case_fraction=cases, h2_liability=hl, h2_liability_se=hl_se)
                log.info("REML %s: h2 on the liability scale %.4f (SE %.4f): prevalence %g, %.4f of the "
                         "sample cases (Lee et al. 2011)", p["name"], hl, hl_se, prevalence, cases)
        if prefix is None:
            data = self.report_data()
        else:  # GCTA's files written from the relatedness section's read of K (and one read of N)
            N, row = self.K("N"), [0]
            with gcta_grm_writer(prefix, self.inp.ids, std.n_kept) as write_rows:
                def export(band):
                    r0, r1 = row[0], row[0] + band.shape[0]
                    write_rows(band, N[r0:r1, 0:r1])
                    row[0] = r1
                data = self.report_data(on_grm_rows=export)
        for p in reml["phenotypes"]:  # BLUP accuracies (with predict.blup): in results.json
            p.update({f"blup_accuracy_{k}": v for k, v in (data.blup_accuracy.get(p["name"]) or {}).items()
                      if k != "n"})
        hsq_files = hsq_file_names(p["name"] for p in reml["phenotypes"])
        for p in reml["phenotypes"]:  # each phenotype's own .hsq, named in results.json
            p["hsq_file"] = f"hsq/{hsq_files[p['name']]}"
            if hsq_files[p["name"]] != f"{p['name']}.hsq":
                log.info("phenotype %r: GCTA table in %s", p["name"], p["hsq_file"])
        _, doc = write_results(self.out, reml, run_info)
        write_hsq(self.out / "hsq", reml)
        fail_point("report-html")
        if spec is None:
            write_report(self.out, doc, None, None, None, data)
        else:
            write_plink_pca(self.out / "pca", self.inp.ids, spec.U, spec.s, max(self.cfg.covariates.pcs, 20))
            ritz = spec.diagnostics.get("ritz_residuals")
            write_report(self.out, doc, spec.s, spec.U[:, :4], np.asarray(ritz) if ritz else None, data)
        # results.json is written by run() after the run is recorded complete: it is the last file
        self.loaded["results"] = doc
        files = [f for f in self.planned_files("report") if (self.out / f).exists()] + ["results.json"]
        return doc, {"files": files}


    def report_data(self, on_grm_rows=None) -> ReportData:
        """What the report shows besides results.json, from the run's saved outputs (the design read at
        validation, variants.zarr, grm.zarr on the exact path, blup.tsv): no pass over the genotypes.

        Reads: the variant statistics once; the GRM's lower triangle once, in bands of whole chunks
        (:func:`relatedness_summary`, which hands each band to ``on_grm_rows``); nothing element by element."""
        d = self.inp.design
        data = ReportData(phenotypes={name: d.Y[d.analysed, j] for j, name in enumerate(d.phenotype_names)})
        if self.inp.labels is not None:  # report.labels, read at validation
            column, lab, counts = self.inp.labels
            data.labels, data.label_source = (column, lab), counts
        for cov in ([] if data.labels is not None else self.cfg.covariates.categorical):
            # without report.labels, the first categorical covariate colours the PCs
            cols = [j for j, nm in enumerate(d.covariate_names) if nm.startswith(f"{cov}=")]
            ref = (d.notes.get("categorical_reference") or {}).get(cov)
            lab = np.full(d.Z.shape[0], "not analysed", dtype=object)
            lab[d.analysed] = str(ref)
            for j in cols:
                lab[d.analysed & (d.Z[:, j] == 1.0)] = d.covariate_names[j].split("=", 1)[1]
            data.labels = (cov, lab)
            break
        try:  # a run on a given GRM has no genotypes, so no variant statistics to show
            if "variant_stats" in self.plan:
                g = zarr.open_group(str(self.out / "variants.zarr"), mode="r")
                n_called = np.asarray(g["n_called"][...], dtype=float)
                with np.errstate(invalid="ignore", divide="ignore"):
                    f = np.asarray(g["allele_sum"][...]) / (2.0 * n_called)
                data.maf = np.minimum(f, 1.0 - f)
                data.missing = 1.0 - n_called / float(g.attrs["n_samples"])
        except (OSError, KeyError, ValueError) as exc:  # the report goes on without the histograms
            log.warning("report: variant statistics not shown (%s)", exc)
        if (self.out / "grm.zarr").exists() and "grm" in self.plan:
            data.relatedness = relatedness_summary(self.K(), self.inp.ids, on_rows=on_grm_rows)
        blup = self.out / "blup.tsv"
        if blup.exists():
            m = len(d.phenotype_names)
            ghat = np.loadtxt(blup, skiprows=1, usecols=range(2, 2 + m), ndmin=2)
            data.blup = {name: (ghat[:, j], d.Y[:, j]) for j, name in enumerate(d.phenotype_names)}
            loo = self.out / "blup_loo.tsv"  # spectral REML only
            pg = np.genfromtxt(loo, skip_header=1, usecols=range(2, 2 + 2 * m), ndmin=2, missing_values="NA",
                               filling_values=np.nan) if loo.exists() else None
            h2 = {f.name: f.h2 for f in self.reml().fits}
            for j, name in enumerate(d.phenotype_names):
                g, y = ghat[:, j], d.Y[:, j]
                have = np.isfinite(y) & np.isfinite(g)
                acc = {"in_sample": float(np.corrcoef(g[have], y[have])[0, 1])
                       if have.sum() > 2 and np.ptp(g[have]) > 0 else float("nan"), "n": int(have.sum())}
                if pg is not None:
                    acc.update({k: v for k, v in loo_accuracy(y, pg[:, 2 * j], pg[:, 2 * j + 1], h2[name]).items()
                                if k != "n"})
                data.blup_accuracy[name] = acc
        return data


#: errors of a folder that cannot be written: read-only (mount or permissions), full, over quota
NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}


def _unwritable(exc: BaseException, out: Path, stage: str | None) -> OutputError | None:
    """The message for a write into the run directory that the file system refused, else None.

    A full disk (or quota) often comes without a file name (a flush, a write inside Zarr or a
    worker): any ENOSPC/EDQUOT in the exception or its causes gets the message, naming the free
    space left where the run writes."""
    seen = []
    while exc is not None and exc not in seen and len(seen) < 20:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    for e in seen:
        if not isinstance(e, OSError) or e.errno not in NOT_WRITABLE:
            continue
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        resume = (f"and run the same command again; the committed stages are kept and the run resumes "
                  f"from {stage}")
        if e.filename and str(resolve_path(e.filename)).startswith(str(resolve_path(out)) + os.sep):
            fix = "free space on its file system" if full else f"make {out} writable"
            return OutputError(f"cannot write {e.filename} ({e.strerror}) in stage {stage}: {fix} {resume}")
        if full:
            import shutil

            try:
                free = f"{shutil.disk_usage(out).free / 2**20:.1f} MiB free there now"
            except OSError:
                free = "its free space unknown"
            where = f"{e.filename}" if e.filename else f"the run folder {out}"
            return OutputError(f"cannot write in stage {stage}: {e.strerror or 'no space left on device'} "
                               f"(writing {where}; {free}): free space on its file system {resume}")
    return None


def run(cfg: RunConfig, force: bool = False, client=None, from_stage: str | None = None,
        on_validated=None, command: str | None = None) -> RunOutcome:
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
    on_validated : callable, optional
        Called once the inputs are valid and the run's lock is held, before anything else is
        written (``bigmm reml`` writes its config file there).
    command : str, optional
        The command line that started the run (the CLI passes it), named in the report.
    """
    if from_stage is not None and from_stage not in STAGES:
        raise InputError(f"--from {from_stage!r}: not a stage; stages are {', '.join(STAGES)}")
    t_start = time.perf_counter()
    out = Path(cfg.output)
    inputs = validate(cfg, force=force)  # every input read and checked once, all problems together
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(cfg, inputs, force, from_stage)
    runner.command = command
    runner.t0 = t_start  # elapsed times count the validation too
    with run_lock(out, inputs.replace_other_run), log_to(out / "run.log"), signals_raise():
        if on_validated is not None:  # under the lock: a refused second call writes nothing
            on_validated()
        log.info("bigmm %s run, config %s (fingerprint %s), output %s", __version__, cfg.source,
                 cfg.fingerprint(), out)
        previous = read_manifest(out) or {}
        if previous.get("damaged"):
            runner.adopt_committed()
        elif previous and is_this_run(previous, cfg):
            runner.manifest = previous
        inputs_here = [p for p in (cfg.genotypes.zarr, cfg.genotypes.vcf_zarr) if p is not None]
        content = runner.check_genotype_content(keep=inputs_here)
        runner.manifest.update({"bigmm_version": __version__, "config_fingerprint": cfg.fingerprint(),
                                "genotype_content": content,
                                "config_source": str(cfg.source) if cfg.source else None,
                                "config": cfg.model_dump(mode="json"), "started": now_utc(),
                                "spectrum_method": inputs.method, "reml_method": inputs.reml_method,
                                "genotype_provenance": inputs.genotype_provenance})
        runner.manifest.pop("error", None)
        # the run says it is running before it touches anything: a kill from here on leaves a
        # manifest that says "running" (bigmm status: stopped), never an earlier run's "complete"
        runner.manifest.pop("finished", None)
        runner.manifest["status"] = "running"
        try:
            write_manifest(out, runner.manifest)
        except OSError as exc:  # a folder still full or read-only: the one-line message
            unwritable = _unwritable(exc, out, runner.manifest.get("resume_from"))
            if unwritable is None:
                raise
            raise unwritable from None
        sel = inputs.selection.get("samples")
        if sel:
            log.info("samples: %d genotyped, %d kept (%s)", sel["genotyped"], sel["kept"],
                     ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sel.items()
                               if k not in ("genotyped", "kept")))
        gi = inputs.grm_info
        if gi:
            nv = gi.get("n_variants")
            log.info("GRM input %s: %s %s %s, %d samples; %d after samples.keep/remove, %d analysed (K restricted "
                     "to them), %d without a phenotype or covariates left out%s", inputs.grm.bin, gi["format"],
                     gi["layout"], gi["dtype"], gi["n_in_grm"],
                     gi["n_selected"], gi["n_analysed"], gi["n_not_analysed"],
                     f"; variants per entry (.grm.N.bin) min {nv['min']:g}, median {nv['median']:g}" if nv else "")
        log.info("inputs: %d genotyped samples, %d analysed, %d phenotypes, %d fixed effects; spectrum %s%s",
                 len(inputs.ids), int(inputs.design.analysed.sum()), len(inputs.design.phenotype_names),
                 inputs.design.Z.shape[1], inputs.method,
                 " (auto)" if cfg.spectrum.method == "auto" else "")
        todo = [s for s in STAGES if s in runner.plan and not runner.up_to_date(s)]
        runner.todo = todo
        # what the stages that rerun wrote before goes first (their recorded files only): after a
        # failure nothing that looks like a current result is left
        recorded = runner.manifest.get("stages", {})
        writing = runner.manifest.pop("writing", None)
        if writing and writing.get("stage") in STAGES:  # a stage that failed or was killed mid-way
            remove_stage_files(out, writing["stage"], writing, keep=inputs_here)
        for name in STAGES:
            if (name in runner.plan and name not in todo) or (name not in runner.plan and name not in recorded):
                continue
            removed = remove_stage_files(out, name, recorded.get(name), keep=inputs_here)
            if removed:
                log.info("stage %s reruns: removed its previous outputs %s", name, ", ".join(removed))

        def attempt(todo):
            needs_cluster = cfg.genotypes.grm is None and (
                any(s in todo for s in PASS_STAGES) or ("blup" in todo and cfg.predict.snp_effects)
                or (inputs.reml_method == "matrix_free" and any(s in todo for s in ("reml", "blup"))))
            if client is not None or not needs_cluster:
                ctx = contextlib.nullcontext(client)
            else:
                ctx = dask_client(cfg.cluster, out)
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

        try:
            redone: set[str] = set()
            while True:
                try:
                    attempt(todo)
                    break
                except StoreIntegrityError as exc:
                    # a damaged chunk of a committed output (checksums are checked as chunks are
                    # read): the stage that wrote it runs again, once, with everything after it
                    stage = runner.stage_of(exc.path, keep=inputs_here)
                    if stage is None or stage in redone:
                        raise
                    redone.add(stage)
                    log.warning("%s; it is an output of stage %s: that stage runs again", exc, stage)
                    runner.invalidate(stage, keep=inputs_here)
                    todo = [s for s in STAGES if s in runner.plan and not runner.up_to_date(s)]
        except (RunInterrupted, KeyboardInterrupt) as exc:
            stage = runner.manifest.get("current_stage") or (todo[0] if todo else None)
            runner.manifest.update({"status": "interrupted", "resume_from": stage,
                                    "interrupted": now_utc()})
            write_failure(out, runner.manifest)
            log.error("interrupted during stage %s (%s); nothing partial was committed; run the same "
                      "command again to resume from %s", stage, exc, stage)
            raise
        except BaseException as exc:
            stage = runner.manifest.get("current_stage")
            unwritable = _unwritable(exc, out, stage)
            runner.manifest.update({"status": "failed", "resume_from": stage,
                                    "error": str(unwritable or exc)[:2000]})
            write_failure(out, runner.manifest)
            if unwritable is not None:
                raise unwritable from None
            raise
        runner.manifest.update({"status": "complete", "finished": now_utc()})
        runner.manifest.pop("resume_from", None)
        runner.manifest.pop("current_stage", None)
        write_manifest(out, runner.manifest)
        if "results" in runner.loaded:
            write_results_json(out, runner.loaded["results"])  # the last act: a finished run
        log.info("run complete in %s: %d stages run (%s), %d up to date; results %s",
                 _duration(time.perf_counter() - runner.t0), len(runner.ran), ", ".join(runner.ran) or "none",
                 len(runner.skipped), out / "results.json")
    return RunOutcome(output=out, result=runner.reml(), results_json=out / "results.json",
                      stages_run=tuple(runner.ran), stages_skipped=tuple(runner.skipped))


def status(out: Path) -> list[dict]:
    """Each stage's recorded state and whether the current inputs would rerun it."""
    out = Path(out)
    manifest = read_manifest(out)
    if manifest is None:
        raise InputError(f"{out} is not a bigmm run directory (no run.json)")
    rows = []
    try:
        cfg = parse_config(manifest["config"], base=out)
        method = manifest.get("spectrum_method") or spectrum_method(cfg, 0)
        plan = stage_plan(cfg, method, manifest.get("genotype_provenance"),
                          manifest.get("reml_method") or "spectral")
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
            partial = {"grm": "grm.zarr.partial", "spectrum": "spectrum.partial", "reml": "reml.partial"}.get(name)
            if partial and (out / partial).exists():
                row["state"] = "partial (checkpointed)"
            row["rerun"] = "yes"
        elif entry.get("fingerprint") != plan[name]["fingerprint"]:
            row["rerun"] = "yes (inputs or config changed)"
        elif not all((out / f).exists() for f in STAGE_OUTPUTS[name]
                     + (("reml_state.npz",) if name == "reml" and manifest.get("reml_method") == "matrix_free" else ())):
            row["rerun"] = "yes (outputs missing)"
        else:
            row["rerun"] = "no"
        rows.append(row)
    recorded = manifest.get("genotype_content")
    if plan and recorded:
        try:
            g = cfg.genotypes
            store = (open_store(g.zarr, verify=False) if g.zarr is not None
                     else open_vcf_zarr(g.vcf_zarr, sample_ids=g.vcf_sample_ids))
            now = store.content_fingerprint()
        except (BigmmError, OSError) as exc:
            now = {"digest": f"unreadable ({exc})"}
        if now is not None and now["digest"] != recorded.get("digest"):
            for row in rows:
                if row["stage"] == "variant_stats" and row["rerun"] == "no":
                    row["rerun"] = "yes (genotype store changed)"
    # a stage downstream of one that reruns reruns too
    rerun = False
    for row in rows:
        if row["rerun"].startswith("yes"):
            rerun = True
        elif rerun and row["rerun"] == "no" and row["state"] not in ("not needed", "external store"):
            row["rerun"] = "yes (upstream reruns)"
    return rows
