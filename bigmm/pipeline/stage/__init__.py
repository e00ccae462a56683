"""What a stage is: a frozen declaration, the facts the plan decides once, and the typed context a
stage body reads.

A stage is one :class:`Stage`: its committed outputs, its part of the fingerprint, its upstream
stages, whether the plan needs it, its passes over the genotypes and its flops, whether it reads
the genotypes (and so needs a Dask cluster), its checkpoint, the other files it may write, and how
to load its committed value. Its body reads a :class:`Context` and returns ``(value, info)``: the
value later stages load, and what ``run.json`` records of it.

The declarations are written in one file per stage (this package); the registry
(:mod:`bigmm.pipeline.registry`) names them and holds their order; the engine
(:mod:`bigmm.pipeline.engine`) runs whatever the registry holds. A stage refers to another by its
declaration, which the registry hands it, never by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...passes import GrmOperator
from ..config import RunConfig
from ..memory import task_memory


def _none(*_):
    return ()


def _always(*_) -> bool:
    return True


def _never(*_) -> bool:
    return False


def _zero(*_) -> float:
    return 0.0


@dataclass(frozen=True)
class Facts:
    """What the plan decides once and every declaration reads: the config, the spectrum's method
    (exact or randomized), the REML model chosen (a declaration's ``model``), the given store's
    provenance, and whether the chosen model needs a spectrum."""

    cfg: RunConfig
    method: str
    model: str
    provenance: dict | None = None
    needs_spectrum: bool = True
    #: the model's fit learns from every direction of the spectrum (a reduced one costs SE)
    warn_reduced: bool = False
    #: the declarations the plan chose for this model
    chosen: tuple = ()

    def pick(self, *candidates: "Stage") -> tuple:
        """Of ``candidates`` (one stage's declarations for several models), those chosen."""
        return tuple(s for s in candidates if any(s is c for c in self.chosen))

    @property
    def from_plink(self) -> bool:
        return self.cfg.genotypes.plink is not None

    @property
    def given_grm(self) -> bool:
        return self.cfg.genotypes.grm is not None

    @property
    def export_gcta(self) -> bool:
        return self.cfg.gcta_prefix() is not None

    @property
    def genotypes_unread(self) -> bool:
        """Genotypes given beside precomputed GRMs (``components.mgrm``, GCTA's ``--mgrm`` with
        ``--bfile``) that nothing planned reads: no PCs as covariates (a spectrum) and no GCTA
        export. They then only name the samples (the validator reads the .fam or the store's IDs):
        no ingest, no variant statistics."""
        cc = self.cfg.components
        return cc is not None and cc.mgrm is not None and not self.needs_spectrum and not self.export_gcta


@dataclass(frozen=True)
class Costs:
    """The sizes a stage's passes and flops are counted from: ``n`` samples, ``p`` variants in the
    input, the GRM block (samples per block row; None when the GRM does not run), the memory plan
    the validator checked (:func:`bigmm.pipeline.memory.check_memory`) and the phenotypes."""

    n: int
    p: int = 0
    grm_block: int | None = None
    memory_plan: dict = field(default_factory=dict)
    n_phenotypes: int = 1


@dataclass(frozen=True, eq=False)
class Stage:
    """One stage, declared. ``name`` is given by the registry. Callables take :class:`Facts`
    (what the plan decided), :class:`Costs` or the run's :class:`Context`."""

    name: str
    #: files the committed stage leaves, relative to the run folder (recorded in run.json)
    outputs: tuple[str, ...]
    #: ``body(ctx) -> (value, info)``: the work; ``info`` is recorded in run.json
    body: Callable[["Context"], tuple[Any, dict]]
    #: ``inputs(facts) -> dict``: what its fingerprint hashes beyond its upstream stages
    inputs: Callable[[Facts], dict]
    #: ``upstream(facts) -> tuple[Stage]``: the stages whose fingerprints its own includes
    upstream: Callable[[Facts], tuple] = _none
    #: ``needed(facts)``: whether the plan runs it
    needed: Callable[[Facts], bool] = _always
    #: the REML model (``reml.method``) this declaration belongs to; None: every model
    model: str | None = None
    #: a stage of every model (``model`` None) that only these models' plans can need (empty: any
    #: model's); ``bigmm status`` does not list it for a run of another model
    for_models: tuple = ()
    #: ``reads_genotypes(facts)``: whether it makes passes over X (a Dask cluster is started)
    reads_genotypes: Callable[[Facts], bool] = _never
    #: ``passes(facts, costs)``: passes over the genotypes (the time estimate scales by them)
    passes: Callable[[Facts, Costs], float] = _zero
    #: ``flops(facts, costs, passes)``: floating-point operations of its arithmetic
    flops: Callable[[Facts, Costs, float], float] = _zero
    #: its passes are an upper bound (an iterative solver that stops when converged)
    passes_at_most: bool = False
    #: the folder a stopped run leaves for it to resume from
    checkpoint: str | None = None
    #: ``extra_files(ctx)``: files it may write besides ``outputs`` (removed when it reruns)
    extra_files: Callable[["Context"], list] = lambda ctx: []
    #: ``load(ctx)``: its committed value, read from its outputs
    load: Callable[["Context"], Any] | None = None
    #: its Zarr output that records the fingerprint (a damaged run.json is rebuilt from it)
    stamped: str | None = None
    #: ``finish(ctx, value)``: after the run is recorded complete (results.json, the last file)
    finish: Callable[["Context", Any], None] | None = None
    #: what ``bigmm status`` shows for it when the plan does not run it
    not_planned: str = "not needed"
    #: it needs no workers and runs once the run's Dask cluster is closed
    after_cluster: bool = False
    #: its value is the run's result (:class:`bigmm.pipeline.stages.RunOutcome`)
    outcome: bool = False
    #: for a model's declarations: ``needs_spectrum(cfg)``, whether the model needs the spectrum
    needs_spectrum: Callable[[RunConfig], bool] | None = None
    #: ``memory(cfg, n, method, design, variant_chunk, task_bytes) -> (tasks, figures)``: a model's
    #: refusals of settings, kinds of task with their least bytes, and memory-plan figures
    memory: Callable | None = None
    #: for a model's declarations: its fit learns from every direction of the spectrum
    warn_reduced: bool = False


class Context:
    """What a stage body reads: the config, the validated inputs, the output folder, the plan
    (name → fingerprint, upstream, inputs), the facts, and each committed value, loaded once."""

    def __init__(self, cfg: RunConfig, inputs, out: Path, facts: Facts, stages: dict[str, Stage],
                 plan: dict | None = None):
        self.cfg = cfg
        self.inp = inputs
        self.out = Path(out)
        self.facts = facts
        self.stages = stages  # the planned declarations, by name, in order
        self.plan = plan or {}
        self.command: str | None = None
        self.manifest: dict = {}
        self._values: dict[str, Any] = {}

    def value(self, stage: Stage):
        """The value of ``stage``: the one its body returned in this run, else its committed
        output, read once."""
        if stage.name not in self._values or self._values[stage.name][0] is not stage:
            self._values[stage.name] = (stage, stage.load(self))
        return self._values[stage.name][1]

    def keep(self, stage: Stage, value) -> None:
        """Hold ``value`` as ``stage``'s (its body just made it)."""
        self._values[stage.name] = (stage, value)

    def forget(self) -> None:
        """Drop every value held (outputs were invalidated)."""
        self._values.clear()

    def planned(self, *candidates: Stage) -> Stage | None:
        """Of ``candidates`` (declarations of one stage for several models), the one planned."""
        for stage in candidates:
            if self.stages.get(stage.name) is stage:
                return stage
        return None

    def fingerprint(self, stage: Stage) -> str:
        return self.plan[stage.name]["fingerprint"]

    def operator(self, store, std, dtype, label: str | None = None) -> GrmOperator:
        """K of all genotyped samples as an operator, within the memory a task may use."""
        return GrmOperator(store.genotypes, std, dtype=np.dtype(dtype), memory=task_memory(self.cfg.cluster),
                           label=label)
