"""The engine: runs the planned stages of one run directory, whatever the registry holds.

For each stage in order: skip it when its record in ``run.json`` is current (its fingerprint
matches and its outputs are there and readable), else record what it is about to write, run its
body, and commit (its outputs were written by atomic rename; ``run.json`` records its fingerprint,
files, duration and peak memory). It also rebuilds a damaged ``run.json`` from outputs that record
their own fingerprint, forgets a stage whose committed output turns out damaged (and every later
one), and logs the run's progress (stage i of N, time left at the measured seconds per pass).

It knows no stage by name: what a stage reads, writes and costs is its declaration's
(:mod:`bigmm.pipeline.stage`), the order the registry's (:mod:`bigmm.pipeline.registry`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import resource
import time
from pathlib import Path

import numpy as np
import zarr
from dask.utils import format_bytes

from .._version import __version__
from ..errors import OutputError
from ..store import (StoreIntegrityError, atomic_write_text, has_chunk_digests, now_utc, record_chunk_digests,
                     resolve_path, verify_chunk_digests)
from ..tasks import current_client, fail_point, pause_point, total_threads
from .memory import grm_block_size
from .plan import declarations, facts, stage_passes, stage_plan
from .registry import REGISTRY
from .rundir import (STAGE_STAMP, RunInterrupted, is_this_run, read_manifest, remove_stage_files, write_failure,
                     write_manifest)
from .stage import Context, Stage

log = logging.getLogger("bigmm")


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


def why_rerun(out: Path, entry: dict | None, fingerprint: str, outputs) -> str | None:
    """Why a stage recorded as ``entry`` in ``run.json`` must run again under a plan that gives it
    ``fingerprint`` and ``outputs`` (None: it is up to date, as far as its record and files tell)."""
    if not entry or entry.get("status") != "complete":
        return "yes"
    if entry.get("fingerprint") != fingerprint:
        return "yes (inputs or config changed)"
    if not all((Path(out) / f).exists() for f in outputs):
        return "yes (outputs missing)"
    return None


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``.

    >>> duration(4.2), duration(185), duration(7620)
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


class Ledger:
    """The record of one run directory's stages (``run.json``) under this run's plan: which are
    current, what each wrote, what a damaged record or output means."""

    def __init__(self, cfg, inputs, force: bool, from_stage: str | None, registry: tuple = REGISTRY):
        self.cfg = cfg
        self.inp = inputs
        self.out = Path(cfg.output)
        args = (cfg, inputs.method, inputs.reml_method, inputs.genotype_provenance, registry)
        self.stages = declarations(*args)  # name -> the declaration planned
        self.plan = stage_plan(cfg, inputs.method, inputs.genotype_provenance, inputs.reml_method, registry)
        self.registry = registry
        self.order = tuple(dict.fromkeys(s.name for s in registry))  # every stage name, in order
        self.ctx = Context(cfg, inputs, self.out, facts(*args), self.stages, self.plan)
        self.force = force
        self.from_stage = from_stage
        self.manifest: dict = {}
        self.skipped: list[str] = []

    def up_to_date(self, name: str) -> bool:
        if self.force:
            return False
        if self.from_stage is not None and self.order.index(name) >= self.order.index(self.from_stage):
            return False
        outputs = self.stages[name].outputs
        entry = self.manifest.get("stages", {}).get(name)
        if why_rerun(self.out, entry, self.plan[name]["fingerprint"], outputs) is not None:
            return False
        damaged = [f for f in outputs if not _readable(self.out / f)]
        if damaged:
            log.warning("stage %s: its output %s is damaged (unreadable); the stage runs again",
                        name, ", ".join(damaged))
            return False
        return self.chunks_intact(name)

    def pending(self) -> list[str]:
        """The stages this run makes: the first planned stage that is not up to date and every
        planned stage after it (a stage that runs forgets the record of every later one)."""
        planned = [s for s in self.order if s in self.plan]
        first = next((i for i, s in enumerate(planned) if not self.up_to_date(s)), len(planned))
        return planned[first:]

    def chunks_intact(self, name: str) -> bool:
        """Whether every chunk of the stage's Zarr output is the one the stage wrote at its place
        (:func:`bigmm.store.verify_chunk_digests`: a CRC32C checksum passes swapped chunks and a
        chunk copied from another store). An output made before bigmm recorded chunk digests gets
        its record now, so that later changes are seen (one 4-byte read per chunk)."""
        rel = self.stages[name].stamped
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
            first = next((s for s in self.stages.values() if s.reads_genotypes(self.ctx.facts)), None)
            if first is not None:  # the first stage that read the store, and every later one
                self.invalidate(first.name, keep=keep)
        return content

    def adopt_committed(self) -> None:
        """Rebuild the record of a damaged run.json from committed outputs that carry their own
        fingerprint, in stage order, up to the first that does not match this plan."""
        for name, stage in self.stages.items():
            rel = stage.stamped
            if rel is None or not (self.out / rel).exists():
                return
            fp = self.plan[name]["fingerprint"]
            try:
                ok = json.loads((self.out / rel / STAGE_STAMP).read_text()).get("fingerprint") == fp
            except (OSError, ValueError):  # no stamp, or an unreadable one: not adopted
                ok = False
            if not ok or not all((self.out / f).exists() for f in stage.outputs):
                return
            self.manifest.setdefault("stages", {})[name] = {
                "status": "complete", "fingerprint": fp, "files": list(stage.outputs),
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
        for later in self.order[self.order.index(name):]:
            entry = stages.pop(later, None)
            if entry is not None:
                remove_stage_files(self.out, later, entry, keep=keep)
        self.skipped = []  # the next attempt goes through every stage again
        self.ctx.forget()
        write_manifest(self.out, {**self.manifest, "status": "running", "resume_from": name})

    def planned_files(self, name: str) -> list[str]:
        """Every file stage ``name`` may write, before it writes any (relative paths)."""
        stage = self.stages[name]
        return list(stage.outputs) + list(stage.extra_files(self.ctx))

    def outputs(self, name: str) -> tuple:
        """The files a committed stage leaves."""
        return self.stages[name].outputs

    def commit(self, name: str, seconds: float, files=None, **info) -> None:
        entry = {"status": "complete", "fingerprint": self.plan[name]["fingerprint"],
                 "files": sorted(set(files if files is not None else self.outputs(name))),
                 "upstream": {u: self.plan[u]["fingerprint"] for u in self.plan[name]["upstream"]},
                 "inputs": self.plan[name]["inputs"], "bigmm_version": __version__,
                 "seconds": round(seconds, 3), "finished": now_utc(),
                 "driver_peak_rss_mib": round(_peak_rss_mib(), 1),
                 "workers_rss_mib": _worker_rss_mib(), **info}
        rel = self.stages[name].stamped
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



class Runner(Ledger):
    """Runs the planned stages of one run directory, in order, committing each."""

    def __init__(self, cfg, inputs, force: bool, from_stage: str | None, registry: tuple = REGISTRY):
        super().__init__(cfg, inputs, force, from_stage, registry)
        self.ran: list[str] = []
        self.t0 = time.perf_counter()
        self.todo: list[str] = []  # the stages this invocation runs (set by run())
        self.passes: dict[str, float] | None = None  # passes over X per stage (plan.stage_passes)
        self.pass_seconds = 0.0  # seconds and passes over X measured so far in this run
        self.passes_timed = 0.0
        self.results = []  # (declaration, value) of the stages run that finish after the run

    def run_stage(self, stage: Stage):
        """Run ``stage`` unless it is up to date; its body returns (value, info)."""
        name = stage.name
        self.manifest["current_stage"] = name
        if self.up_to_date(name):
            log.info("stage %s: up to date (fingerprint %s), skipped", name, self.plan[name]["fingerprint"])
            self.skipped.append(name)
            return None
        self.start(name)
        t0 = time.perf_counter()
        value, info = stage.body(self.ctx)
        info = dict(info or {})
        files = info.pop("files", None)
        if files is None:
            files = list(stage.outputs) + [f for f in stage.extra_files(self.ctx) if (self.out / f).exists()]
        seconds = time.perf_counter() - t0
        self.ctx.keep(stage, value)
        if stage.finish is not None:
            self.results.append((stage, value))
        self.commit(name, seconds, files=files, **info)
        if name not in self.ran:
            self.ran.append(name)
        passes = info.get("passes_over_X")
        if isinstance(passes, (int, float)) and passes > 0:
            self.pass_seconds += seconds
            self.passes_timed += passes
        return value

    def start(self, name: str) -> None:
        """Before a stage runs: forget the record of it and everything downstream (their files
        were removed when the run started) and record what it is about to write first, so that a
        failure leaves nothing unrecorded behind."""
        stages = self.manifest.setdefault("stages", {})
        for later in self.order[self.order.index(name):]:
            stages.pop(later, None)
        self.manifest["writing"] = {"stage": name, "files": self.planned_files(name)}
        write_manifest(self.out, {**self.manifest, "status": "running", "resume_from": name})
        self.log_run_progress(name)
        log.info("stage %s: start", name)
        pause_point(name)
        fail_point(name)

    def run_stages(self, after_cluster: bool) -> None:
        """Every planned stage in order: those that run while the cluster is up, or (``after_cluster``)
        those that need no workers and run once it is closed."""
        for stage in self.stages.values():
            if stage.after_cluster == after_cluster:
                self.run_stage(stage)

    def cluster_needed(self, todo) -> bool:
        """Whether a stage to run reads the genotypes (a Dask cluster is started for the run)."""
        return any(self.stages[s].reads_genotypes(self.ctx.facts) for s in todo)

    def finish(self) -> None:
        """What the stages run leave for after the run is recorded complete (results.json)."""
        for stage, value in self.results:
            stage.finish(self.ctx, value)

    def outcome(self):
        """The run's result: the value of the stage that declares it (the REML fit)."""
        stage = next((s for s in self.stages.values() if s.outcome), None)
        return None if stage is None else self.ctx.value(stage)

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
            block = self.grm_block() if self.cluster_needed(self.todo) else None  # GRM passes: one per block row
            self.passes = stage_passes(self.cfg, len(self.inp.ids), self.inp.method, self.inp.reml_method, block,
                                       self.inp.memory_plan, registry=self.registry)
        i = self.todo.index(name) + 1 if name in self.todo else len(self.ran) + 1
        n = max(len(self.todo), i)
        left = sum(self.passes.get(s, 0.0) for s in self.todo[i - 1:])
        if left <= 0:
            eta = "no passes over X left"
        elif self.passes_timed <= 0:
            eta = f"{left:.0f} passes over X to go; time left estimated once the first is timed"
        else:
            per = self.pass_seconds / self.passes_timed
            bound = " at most" if any(self.stages[s].passes_at_most for s in self.todo[i - 1:]) else ""
            eta = (f"about {duration(left * per)} left for{bound} {left:.0f} more passes over X "
                   f"({per:.1f} s per pass so far; other work not counted)")
        log.info("run: stage %d of %d (%s), %s elapsed; %s", i, n, name, duration(time.perf_counter() - self.t0), eta)


#: errors of a folder that cannot be written: read-only (mount or permissions), full, over quota
NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}


def unwritable(exc: BaseException, out: Path, stage: str | None) -> OutputError | None:
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


def _write_manifest(out: Path, runner: Runner) -> None:
    """run.json written, or a folder that cannot be written said in one line."""
    try:
        write_manifest(out, runner.manifest)
    except OSError as exc:  # a folder still full or read-only: the one-line message
        refused = unwritable(exc, out, runner.manifest.get("resume_from"))
        if refused is None:
            raise
        raise refused from None


def begin(runner: Runner, keep: list) -> None:
    """The run's record, before it touches anything: the previous record of this run (or one
    rebuilt from committed outputs when run.json was damaged), the genotype store's content, the
    config and methods, and status "running" (a kill from here on leaves a manifest that says
    "running" (bigmm status: stopped), never an earlier run's "complete")."""
    out, cfg, inputs = runner.out, runner.cfg, runner.inp
    previous = read_manifest(out) or {}
    if previous.get("damaged"):
        runner.adopt_committed()
    elif previous and is_this_run(previous, cfg):
        runner.manifest = previous
    content = runner.check_genotype_content(keep=keep)
    runner.manifest.update({"bigmm_version": __version__, "config_fingerprint": cfg.fingerprint(),
                            "genotype_content": content,
                            "config_source": str(cfg.source) if cfg.source else None,
                            "config": cfg.model_dump(mode="json"), "started": now_utc(),
                            "spectrum_method": inputs.method, "reml_method": inputs.reml_method,
                            "genotype_provenance": inputs.genotype_provenance})
    runner.manifest.pop("error", None)
    runner.manifest.pop("finished", None)
    runner.manifest["status"] = "running"
    _write_manifest(out, runner)
    runner.ctx.manifest = runner.manifest


def _clear_reruns(runner: Runner, todo: list, keep: list) -> None:
    """What the stages that rerun wrote before goes first (their recorded files only): after a
    failure nothing that looks like a current result is left."""
    out = runner.out
    recorded = runner.manifest.get("stages", {})
    writing = runner.manifest.pop("writing", None)
    if writing and writing.get("stage") in runner.order:  # a stage that failed or was killed mid-way
        remove_stage_files(out, writing["stage"], writing, keep=keep)
    for name in runner.order:
        if (name in runner.plan and name not in todo) or (name not in runner.plan and name not in recorded):
            continue
        removed = remove_stage_files(out, name, recorded.get(name), keep=keep)
        if removed:
            log.info("stage %s reruns: removed its previous outputs %s", name, ", ".join(removed))


def _run_stages(runner: Runner, todo: list, client, open_cluster) -> None:
    """The stages, the cluster up (``open_cluster()`` unless ``client`` is given, and only when a
    stage to run reads the genotypes) for all but those that need no workers."""
    if client is not None or not runner.cluster_needed(todo):
        ctx = contextlib.nullcontext(client)
    else:
        ctx = open_cluster()
    with ctx:
        runner.run_stages(after_cluster=False)
    runner.run_stages(after_cluster=True)


def _attempts(runner: Runner, todo: list, client, open_cluster, keep: list) -> list:
    """The stages, again (once per stage) when a committed output turns out damaged while it is
    read (its chunk checksums): the stage that wrote it runs again, with everything after it."""
    redone: set[str] = set()
    while True:
        try:
            _run_stages(runner, todo, client, open_cluster)
            return todo
        except StoreIntegrityError as exc:
            stage = runner.stage_of(exc.path, keep=keep)
            if stage is None or stage in redone:
                raise
            redone.add(stage)
            log.warning("%s; it is an output of stage %s: that stage runs again", exc, stage)
            runner.invalidate(stage, keep=keep)
            todo = runner.pending()
            runner.todo = todo


def _record_stop(runner: Runner, exc: BaseException, todo: list) -> None:
    """run.json and the log after an interruption or a failure (re-raised by the caller)."""
    out = runner.out
    if isinstance(exc, (RunInterrupted, KeyboardInterrupt)):
        stage = runner.manifest.get("current_stage") or (todo[0] if todo else None)
        runner.manifest.update({"status": "interrupted", "resume_from": stage, "interrupted": now_utc()})
        write_failure(out, runner.manifest)
        log.error("interrupted during stage %s (%s); nothing partial was committed; run the same "
                  "command again to resume from %s", stage, exc, stage)
        return
    stage = runner.manifest.get("current_stage")
    refused = unwritable(exc, out, stage)
    runner.manifest.update({"status": "failed", "resume_from": stage, "error": str(refused or exc)[:2000]})
    write_failure(out, runner.manifest)
    if refused is not None:
        raise refused from None


def _complete(runner: Runner) -> None:
    """The run recorded complete, then what the stages leave for last (results.json)."""
    runner.manifest.update({"status": "complete", "finished": now_utc()})
    runner.manifest.pop("resume_from", None)
    runner.manifest.pop("current_stage", None)
    write_manifest(runner.out, runner.manifest)
    runner.finish()  # the last act: a finished run
    log.info("run complete in %s: %d stages run (%s), %d up to date; results %s",
             duration(time.perf_counter() - runner.t0), len(runner.ran), ", ".join(runner.ran) or "none",
             len(runner.skipped), runner.out / "results.json")


def execute(runner: Runner, keep: list, client=None, open_cluster=None) -> None:
    """The run's stages, once its record is begun (:func:`begin`): those that are not current, in
    order, after what they wrote before is removed; the record of an interruption or a failure;
    the run recorded complete. ``keep``: inputs inside the run folder, never removed; ``client``:
    a Dask client to use, else ``open_cluster()`` makes one when a stage reads the genotypes."""
    todo = runner.todo = runner.pending()
    _clear_reruns(runner, todo, keep)
    try:
        _attempts(runner, todo, client, open_cluster, keep)
    except BaseException as exc:
        _record_stop(runner, exc, runner.todo)
        raise
    _complete(runner)
