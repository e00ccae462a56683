"""The plan of a run: the methods chosen once, the stages that run, and each stage's fingerprint.

    ingest → variant_stats → (grm) → spectrum → rotate → reml → (blup) → report

With a precomputed GRM as input (``genotypes.grm``) there are no genotypes: the run is
``spectrum → rotate → reml → (blup) → report``, the spectrum that of the given K over the
analysed samples.

The REML model (``reml.method``: spectral or matrix-free) is chosen here, once: the plan keeps the
declarations of that model (:func:`choose`) and nothing after it asks which model runs.

A stage's fingerprint hashes what its declaration says it reads (config sections, input files by
size, mtime and a content hash), the fingerprints of the stages upstream and the bigmm version; a
rerun skips every stage whose recorded fingerprint still matches.
"""

from __future__ import annotations

import hashlib
import json

from .._version import __version__
from ..errors import InputError
from .config import RunConfig
from .registry import GRM, REGISTRY
from .stage import Costs, Facts, Stage


def _hash(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def spectrum_method(cfg: RunConfig, n: int) -> str:
    """The spectrum that will run: ``auto`` is exact up to ``spectrum.exact_max_n`` samples; a
    given GRM's is always exact (there is no X to run a randomized one on)."""
    if cfg.genotypes.grm is not None:
        return "exact"
    if cfg.spectrum.method == "auto":
        return "exact" if n <= cfg.spectrum.exact_max_n else "randomized"
    return cfg.spectrum.method


def reml_method(cfg: RunConfig, n: int, components_memory: tuple | None = None) -> str:
    """The REML that will run: ``auto`` is spectral up to ``spectrum.exact_max_n`` samples (on
    the exact spectrum), matrix-free above; spectral for a given GRM. With a ``components``
    section: :func:`components_method`."""
    if cfg.components is not None:
        return components_method(cfg, n, components_memory)[0]
    if cfg.genotypes.grm is not None and cfg.reml.method == "auto":
        return "spectral"
    if cfg.reml.method == "auto":
        return "spectral" if n <= cfg.spectrum.exact_max_n else "matrix_free"
    return cfg.reml.method


def components_method(cfg: RunConfig, n: int, memory: tuple | None = None) -> tuple[str, str]:
    """The several-component REML that will run, and why (for ``bigmm check`` and the log).

    ``auto`` is the exact REML on m dense GRMs (always for precomputed GRMs, which have no
    genotypes to pass over) when ``n ≤ spectrum.exact_max_n`` and, given ``memory`` = (m, bytes
    needed, bytes available) of :func:`bigmm.pipeline.memory.components_driver_bytes` against the
    memory available on the driver (the rule :func:`~bigmm.pipeline.memory.check_components_memory`
    refuses by), those bytes fit; the matrix-free REML (no n x n matrix) otherwise."""
    from dask.utils import format_bytes

    if cfg.reml.method != "auto":
        return cfg.reml.method, f"reml.method: {cfg.reml.method}"
    if cfg.components.mgrm is not None:
        return "components", "auto: precomputed GRMs (components.mgrm) are fitted on the dense GRMs"
    limit = cfg.spectrum.exact_max_n
    if n > limit:
        return "components_matrix_free", f"auto: {n:,} samples > spectrum.exact_max_n = {limit:,}"
    if memory is None:
        return "components", f"auto: {n:,} samples <= spectrum.exact_max_n = {limit:,}"
    m, need, avail = memory
    if need > avail:
        return "components_matrix_free", (f"auto: the {m} dense GRMs and the exact fit's n x n work arrays need "
                                          f"{format_bytes(need)} on the driver, more than the {format_bytes(avail)} "
                                          f"available")
    return "components", (f"auto: {n:,} samples <= spectrum.exact_max_n = {limit:,} and the {m} dense GRMs need "
                          f"{format_bytes(need)} on the driver, of {format_bytes(avail)} available")


def choose(rmethod: str, registry: tuple = REGISTRY) -> tuple[Stage, ...]:
    """The declarations of a run with REML model ``rmethod``: every stage's, with the model's own
    where a stage has one per model (``registry``: the registry's, or a test's)."""
    models = tuple(dict.fromkeys(s.model for s in registry if s.model is not None))
    if models and rmethod not in models:
        raise InputError(f"reml.method {rmethod!r}: not a REML model; models are {', '.join(models)}")
    return tuple(s for s in registry if s.model in (None, rmethod))


def facts(cfg: RunConfig, method: str, rmethod: str = "spectral", provenance: dict | None = None,
          registry: tuple = REGISTRY) -> Facts:
    """What the plan decides once: the methods, and what the chosen model needs of the spectrum."""
    chosen = choose(rmethod, registry)
    model = [s for s in chosen if s.model is not None]
    return Facts(cfg=cfg, method=method, model=rmethod, provenance=provenance,
                 needs_spectrum=any(s.needs_spectrum(cfg) for s in model),
                 warn_reduced=any(s.warn_reduced for s in model), chosen=chosen)


def model_memory(rmethod: str):
    """The REML model's own memory need (its declaration's ``memory``; None when it makes no
    passes over X): :func:`bigmm.pipeline.memory.check_memory` checks it with the rest."""
    return next((s.memory for s in choose(rmethod) if s.memory is not None), None)


def passes_at_most(rmethod: str) -> bool:
    """Whether the model's passes over X are an upper bound (an iterative solver that stops when
    converged)."""
    return any(s.passes_at_most for s in choose(rmethod))


def needs_spectrum(cfg: RunConfig, rmethod: str) -> bool:
    """Whether the model needs the spectrum (spectral REML always; matrix-free REML only to
    deflate or for PCs as covariates)."""
    return facts(cfg, "exact", rmethod).needs_spectrum


def declarations(cfg: RunConfig, method: str, rmethod: str = "spectral", provenance: dict | None = None,
                 registry: tuple = REGISTRY) -> dict[str, Stage]:
    """The declarations of the stages this run needs, by name, in order."""
    f = facts(cfg, method, rmethod, provenance, registry)
    return {s.name: s for s in choose(rmethod, registry) if s.needed(f)}


def needs_grm(cfg: RunConfig, method: str, rmethod: str = "spectral") -> bool:
    """Whether the GRM stage runs (an exact spectrum, when one is needed, or a GCTA export)."""
    return GRM.needed(facts(cfg, method, rmethod))


def planned_stages(cfg: RunConfig, method: str, rmethod: str = "spectral") -> list[str]:
    """The stages this run needs, in order."""
    return list(declarations(cfg, method, rmethod))


def stage_plan(cfg: RunConfig, method: str, genotype_provenance: dict | None = None,
               rmethod: str = "spectral", registry: tuple = REGISTRY) -> dict[str, dict]:
    """Fingerprint, upstream stages and fingerprinted inputs of every stage that this run needs.

    ``method`` is the spectrum's (exact or randomized), ``rmethod`` the REML model's;
    ``genotype_provenance``: for a given cohort or VCF Zarr store, its creation record (read by the
    validator), instead of opening the store again.
    """
    f = facts(cfg, method, rmethod, genotype_provenance, registry)
    plan: dict[str, dict] = {}
    for name, stage in declarations(cfg, method, rmethod, genotype_provenance, registry).items():
        ups = [u.name for u in stage.upstream(f)]
        inputs = stage.inputs(f)
        fp = _hash(name, __version__, inputs, [plan[u]["fingerprint"] for u in ups])
        plan[name] = {"fingerprint": fp, "upstream": ups, "inputs": inputs}
    return plan


def stage_passes(cfg: RunConfig, n: int, method: str, rmethod: str, grm_block: int | None,
                 memory_plan: dict, stages=None, registry: tuple = REGISTRY) -> dict[str, float]:
    """Passes over the genotypes of each stage (``stages``: default those of the plan), what the
    run's time estimate scales by the measured seconds per pass (each declaration's ``passes``:
    ingest and variant statistics one; the GRM one per block row of samples; a randomized spectrum
    its power iterations; matrix-free REML at most one per Lanczos step, its BLUP one; SNP effects
    one)."""
    f = facts(cfg, method, rmethod, registry=registry)
    planned = declarations(cfg, method, rmethod, registry=registry)
    costs = Costs(n=n, grm_block=grm_block, memory_plan=memory_plan)
    names = list(planned) if stages is None else stages
    return {name: planned[name].passes(f, costs) if name in planned else 0.0 for name in names}


def stage_flops(cfg: RunConfig, n: int, p: int, method: str, rmethod: str, memory_plan: dict,
                passes: dict[str, float], n_phenotypes: int) -> dict[str, float]:
    """Floating-point operations of each stage's arithmetic (each declaration's ``flops``), for
    ``bigmm check``'s rough time estimate (``p``: variants in the input, before the filters;
    reading and decoding the genotypes is not counted).

    >>> from bigmm.pipeline.config import parse_config
    >>> cfg = parse_config({"genotypes": {"zarr": "x.zarr"}, "phenotypes": {"file": "p.tsv"}, "output": "o"})
    >>> stage_flops(cfg, 100, 1000, "exact", "spectral", {}, {"grm": 1}, 1)["grm"]
    10000000.0
    """
    f = facts(cfg, method, rmethod)
    costs = Costs(n=n, p=p, memory_plan=memory_plan, n_phenotypes=n_phenotypes)
    chosen = {s.name: s for s in choose(rmethod)}
    out = {name: chosen[name].flops(f, costs, k) for name, k in passes.items() if name in chosen}
    return {k: v for k, v in out.items() if v > 0}
