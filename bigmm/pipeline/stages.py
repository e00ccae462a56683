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

The stages are declared one per file (:mod:`bigmm.pipeline.stage`), named and ordered by the
registry (:mod:`bigmm.pipeline.registry`) and run by the engine (:mod:`bigmm.pipeline.engine`);
this module starts a run (validation, lock, log, cluster, the retry on a damaged output) and
reports a run folder's state.

Run directory::

    run.json, run.log, .bigmm.lock (while running)
    genotypes.zarr    cohort store made from PLINK input          (ingest)
    variants.zarr     per-variant statistics and standardization  (variant_stats)
    grm.zarr          K over all genotyped samples                (grm; exact spectrum or GCTA export)
    spectrum.zarr     eigenpairs over all genotyped samples,      (spectrum)
    eigenvalues.tsv, pcs.tsv
    ld_scores.tsv     LD score of every variant (ld_scores; several components with LD bins)
    components/       the m component GRMs, K.npy and components.json (component_grms)
    rotated.npz       phenotypes/covariates rotated on the spectrum (rotate)
    reml.json         the REML fits (reml_state.npz: the matrix-free REML's final state) (reml)
    blup.tsv, snp_effects.*                                       (blup)
    results.json, results.tsv, report.html, hsq/, gcta/           (report; results.json last)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from .._version import __version__
from ..errors import BigmmError, InputError
from ..io.vcfzarr import open_vcf_zarr
from ..reml import RemlResult
from ..store import describe_store, open_store
from .cluster import dask_client
from .config import RunConfig, parse_config
from .engine import Runner, begin, execute, unwritable as _unwritable, why_rerun  # noqa: F401 (Runner, _unwritable: their old home)
from .plan import declarations, facts, spectrum_method, stage_plan
from .registry import REGISTRY, STAGES
from .rundir import log_to, read_manifest, run_lock, signals_raise
from .validate import Inputs, validate

log = logging.getLogger("bigmm")


@dataclass(frozen=True)
class RunOutcome:
    output: Path
    result: RemlResult | None
    results_json: Path
    stages_run: tuple
    stages_skipped: tuple


def _log_inputs(cfg: RunConfig, inputs: Inputs) -> None:
    """The samples, a given GRM and the design, for the log."""
    sel = inputs.selection.get("samples")
    if sel:
        log.info("samples: %d genotyped, %d kept (%s)", sel["genotyped"], sel["kept"],
                 ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sel.items() if k not in ("genotyped", "kept")))
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
             inputs.design.Z.shape[1], inputs.method, " (auto)" if cfg.spectrum.method == "auto" else "")
    if inputs.reml_reason:  # several components: exact or matrix-free
        log.info("REML: %s (%s)", inputs.reml_method, inputs.reml_reason)


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
    runner.ctx.command = command
    runner.t0 = t_start  # elapsed times count the validation too
    keep = [p for p in (cfg.genotypes.zarr, cfg.genotypes.vcf_zarr) if p is not None]  # inputs in the folder
    with run_lock(out, inputs.replace_other_run), log_to(out / "run.log"), signals_raise():
        if on_validated is not None:  # under the lock: a refused second call writes nothing
            on_validated()
        log.info("bigmm %s run, config %s (fingerprint %s), output %s", __version__, cfg.source,
                 cfg.fingerprint(), out)
        begin(runner, keep)
        _log_inputs(cfg, inputs)
        execute(runner, keep, client, open_cluster=lambda: dask_client(cfg.cluster, out))
        result = runner.outcome()
    return RunOutcome(output=out, result=result, results_json=out / "results.json",
                      stages_run=tuple(runner.ran), stages_skipped=tuple(runner.skipped))


def genotype_store_line(out: Path, manifest: dict) -> str | None:
    """The cohort store a run reads, its shape, chunks and genotype layout
    (:func:`bigmm.store.describe_store`): the store ingest made in the run folder, or the given one;
    a VCF Zarr store by its path; None for a given GRM or a config that cannot be read."""
    try:
        g = parse_config(manifest["config"], base=out).genotypes
    except (BigmmError, OSError, KeyError, TypeError):
        return None
    if g.plink is not None:
        made = Path(out) / "genotypes.zarr"
        return describe_store(made) if made.exists() else f"{made}: not made yet (ingest from {g.plink})"
    if g.zarr is not None:
        return describe_store(g.zarr)
    if g.vcf_zarr is not None:
        return f"{g.vcf_zarr}: a VCF Zarr store (call_genotype, read as its writer stored it)"
    return None


def _store_changed(cfg: RunConfig, manifest: dict) -> bool:
    """Whether the given genotype store's content differs from the one the run recorded."""
    recorded = manifest.get("genotype_content")
    if not recorded:
        return False
    try:
        g = cfg.genotypes
        store = (open_store(g.zarr, verify=False) if g.zarr is not None
                 else open_vcf_zarr(g.vcf_zarr, sample_ids=g.vcf_sample_ids))
        now = store.content_fingerprint()
    except (BigmmError, OSError) as exc:
        now = {"digest": f"unreadable ({exc})"}
    return now is not None and now["digest"] != recorded.get("digest")


def _status_row(out: Path, name: str, entry: dict | None, stage, plan: dict, problem: str | None) -> dict:
    """One stage's recorded state and whether the current inputs would rerun it."""
    row = {"stage": name, "state": entry.get("status") if entry else "pending",
           "seconds": entry.get("seconds") if entry else None}
    if plan and name not in plan:
        row["state"], row["rerun"] = stage.not_planned, "no"
    elif problem:
        row["rerun"] = f"unknown ({problem})"
    else:
        if not entry and stage.checkpoint and (out / stage.checkpoint).exists():
            row["state"] = "partial (checkpointed)"
        row["rerun"] = why_rerun(out, entry, plan[name]["fingerprint"], stage.outputs) or "no"
    return row


def status(out: Path) -> list[dict]:
    """Each stage's recorded state and whether the current inputs would rerun it."""
    out = Path(out)
    manifest = read_manifest(out)
    if manifest is None:
        raise InputError(f"{out} is not a bigmm run directory (no run.json)")
    stages, problem = {}, None
    try:
        cfg = parse_config(manifest["config"], base=out)
        args = (cfg, manifest.get("spectrum_method") or spectrum_method(cfg, 0),
                manifest.get("reml_method") or "spectral", manifest.get("genotype_provenance"))
        stages, f = declarations(*args), facts(*args)
        plan = stage_plan(args[0], args[1], args[3], args[2])
    except (BigmmError, OSError, KeyError) as exc:
        plan, problem = {}, str(exc)
    declared = {s.name: s for s in REGISTRY} | stages
    recorded = manifest.get("stages", {})
    # every stage, but those only other models need (the component GRMs of a spectral run) unless
    # planned or recorded; every stage when the plan cannot be made
    shown = [name for name in STAGES if not plan or name in plan or name in recorded
             or not declared[name].for_models or f.model in declared[name].for_models]
    rows = [_status_row(out, name, recorded.get(name), declared[name], plan, problem) for name in shown]
    if plan and _store_changed(cfg, manifest):
        first = next((s for s in stages.values() if s.reads_genotypes(f)), None)
        for row in rows:
            if first is not None and row["stage"] == first.name and row["rerun"] == "no":
                row["rerun"] = "yes (genotype store changed)"
    # a stage downstream of one that reruns reruns too
    rerun = False
    for row in rows:
        if row["rerun"].startswith("yes"):
            rerun = True
        elif rerun and row["rerun"] == "no" and plan and row["stage"] in plan:
            row["rerun"] = "yes (upstream reruns)"
    return rows
