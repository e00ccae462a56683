"""component_grms (several variance components): the m GRMs ``K_j = X_j X_jᵀ / p_j`` of the run's
split of the variants, from one pass over the genotypes (:func:`bigmm.component_grms`), or the
precomputed GRMs of ``components.mgrm`` (GCTA's ``--mgrm``) read and aligned to the run's
samples; committed as ``components/`` (``K.npy``, m x n x n float64, and ``components.json``:
the names, the variants of each, the samples covered, a CRC32C of each K_j), written under a
temporary name and renamed.

The split (:mod:`bigmm.pipeline.components`): ``components.file`` / ``lists`` / ``by_chromosome``
(read and checked before any pass, by the validator), crossed with ``maf_bins`` (from the variant
statistics) and then split into ``ld_bins`` LD-score quantiles within each (from the ld_scores
stage). A
component left empty or with fewer than ``components.min_variants`` kept variants is refused here,
before the GRM pass.

Passes over X: one per block row of samples, as the GRM stage's; n²·p_A flops (the upper triangle
of m GRMs over the p_A assigned variants costs what one GRM of them costs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from ...component_grm import ComponentGrms, component_grms
from ...io.gcta import open_mgrm
from ..components import full_split, mgrm_rows
from ...store import StoreIntegrityError, atomic_write_text, file_fingerprint, fsync_tree, remove_path
from ..memory import task_memory
from . import Context, Facts, Stage

log = logging.getLogger("bigmm")

#: the committed folder
OUTPUT = "components"
#: the REML model whose plan needs this stage
MODEL = "components"


def _crc32c(K: np.ndarray) -> str:
    """CRC32C of one GRM's bytes, as 8 hex digits."""
    import google_crc32c

    raw = np.ascontiguousarray(K).reshape(-1).view(np.uint8)
    if raw.flags.writeable:
        raw = raw.view()
        raw.flags.writeable = False  # google_crc32c takes read-only buffers
    return f"{google_crc32c.value(raw):08x}"


def _sha256(K: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(K).data).hexdigest()


#: the checksum recorded for each committed K_j (a .npy file has none of its own): CRC32C, 4x
#: faster than the SHA-256 recorded before (0.47 against 1.90 s for 4 GRMs of n = 10,000, at each save
#: and each load); outputs committed with SHA-256 still load, checked by it
DIGESTS = {"crc32c": _crc32c, "sha256": _sha256}


def save_component_grms(path: Path, res: ComponentGrms, rows: np.ndarray, source: str) -> None:
    """``res`` into the folder ``path`` (``K.npy``, ``components.json`` with each K_j's CRC32C),
    through ``path.partial`` renamed last."""
    partial = path.with_name(path.name + ".partial")
    remove_path(partial)
    partial.mkdir(parents=True)
    np.save(partial / "K.npy", res.K)
    meta = {"names": list(res.names), "n_variants": None if res.n_variants is None
            else [float(v) for v in res.n_variants], "rows": [int(r) for r in rows], "source": source,
            "crc32c": [_crc32c(K) for K in res.K]}
    atomic_write_text(partial / "components.json", json.dumps(meta, indent=1) + "\n")
    fsync_tree(partial)
    remove_path(path)
    os.replace(partial, path)


def load_component_grms(path: Path) -> tuple[ComponentGrms, np.ndarray]:
    """The committed GRMs (memory-mapped, read-only) and the run samples they cover, each K_j
    checked against its recorded checksum (:data:`DIGESTS`; a damaged file reruns the stage)."""
    try:
        meta = json.loads((Path(path) / "components.json").read_text())
        K = np.load(Path(path) / "K.npy", mmap_mode="r")
    except (OSError, ValueError) as exc:  # json's errors are ValueErrors
        raise StoreIntegrityError(f"{path} does not read ({exc}); the component GRMs are damaged",
                                  path=str(path)) from None
    kind = next((k for k in DIGESTS if k in meta), None)
    if kind is None or len(meta[kind]) != len(meta["names"]) or len(K) != len(meta["names"]):
        raise StoreIntegrityError(f"{path}/components.json records no checksum for each of its GRMs; the "
                                  f"component GRMs are damaged", path=str(path))
    for name, k, digest in zip(meta["names"], K, meta[kind], strict=True):
        if DIGESTS[kind](k) != digest:
            raise StoreIntegrityError(f"{path}/K.npy: the GRM of component {name} does not match its recorded "
                                      f"{kind.upper()}; the component GRMs are damaged", path=str(path))
    nv = meta["n_variants"]
    return (ComponentGrms(K=K, n_variants=None if nv is None else np.asarray(nv), names=tuple(meta["names"])),
            np.asarray(meta["rows"], dtype=np.int64))


def inputs(f: Facts) -> dict:
    """The components section and its files (the split and, for mgrm, the GRMs' files)."""
    cc = f.cfg.components
    out = {"components": f.cfg.section_fingerprint("components"), "dtype": f.cfg.grm.dtype,
           "file": file_fingerprint(cc.file), "lists": [file_fingerprint(p) for p in cc.lists]}
    if cc.mgrm is not None:
        from .fingerprints import genotype_inputs, grm_fingerprint, table_inputs

        grms = open_mgrm(cc.mgrm)
        # the GRMs' files, and the run's analysed samples (the genotype input's, the tables')
        out.update(mgrm=file_fingerprint(cc.mgrm), grms=[grm_fingerprint(g.bin) for g in grms.grms],
                   samples=genotype_inputs(f), **table_inputs(f))
    return out


def declare(name: str, ingest: Stage, stats: Stage, ld_scores: Stage) -> Stage:
    def body(ctx: Context):
        cc = ctx.cfg.components
        out = ctx.out / OUTPUT
        if cc.mgrm is not None:
            grms = open_mgrm(cc.mgrm)
            rows = np.flatnonzero(ctx.inp.design.analysed)
            Ks = grms.read(mgrm_rows(grms, ctx.inp.ids, rows))
            res = ComponentGrms(K=np.stack(Ks), n_variants=None, names=tuple(grms.names))
            save_component_grms(out, res, rows, f"GRMs of {cc.mgrm}")
            log.info("component GRMs: %d GRMs of %s read over %d analysed samples", res.m, cc.mgrm, rows.size)
            return (res, rows), {"components": list(res.names), "passes_over_X": 0}
        store, std = ctx.value(ingest), ctx.value(stats)
        ld = ctx.value(ld_scores) if cc.ld_bins is not None else None
        split = full_split(cc, ctx.inp.components, std, ld)
        log.info("%s", split.describe(std.keep).replace("\n", "\n  "))
        split = split.check(std.keep, cc.min_variants)  # before the pass: tiny bins refused by name
        res = component_grms(store.genotypes, std, split, dtype=np.dtype(ctx.cfg.grm.dtype),
                             memory=task_memory(ctx.cfg.cluster), min_variants=cc.min_variants)
        rows = np.arange(store.n_samples)
        save_component_grms(out, res, rows, split.source)
        return (res, rows), {"components": list(res.names), "n_variants": [int(v) for v in res.n_variants],
                             "passes_over_X": 1}

    def passes(f: Facts, c) -> float:
        if f.cfg.components.mgrm is not None:
            return 0.0
        return float(-(-c.n // (c.memory_plan.get("components_block") or c.n)))

    def flops(f: Facts, c, k: float) -> float:
        return 0.0 if f.cfg.components.mgrm is not None else float(c.n) * c.n * c.p

    # every model's stage, needed by the several-component model alone: the models are those of
    # the reml declarations (the registry's MODELS)
    return Stage(name=name, outputs=(OUTPUT,), body=body, inputs=inputs, needed=lambda f: f.model == MODEL,
                 for_models=(MODEL,),
                 upstream=lambda f: () if f.cfg.components.mgrm is not None else
                 ((stats,) if f.cfg.components.ld_bins is None else (stats, ld_scores)),
                 reads_genotypes=lambda f: f.cfg.components.mgrm is None, passes=passes, flops=flops,
                 extra_files=lambda ctx: [OUTPUT + ".partial"],
                 load=lambda ctx: load_component_grms(ctx.out / OUTPUT))
