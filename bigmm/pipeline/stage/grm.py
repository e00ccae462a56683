"""grm: K = X Xᵀ / p over all genotyped samples, with GCTA's per-pair call counts N
(``grm.zarr``), block by block; the done blocks are a checkpoint (``grm.zarr.partial``).

One pass over the genotypes per block row of samples; n²p flops (the upper triangle).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import zarr

from ..._version import __version__
from ...genotypes import Standardization
from ...grm import create_grm_store, grm, grm_complete
from ...store import CheckedArray, fsync_tree, record_chunk_digests, remove_path, verify_chunk_digests, verify_chunks
from ...tasks import total_threads
from ..memory import grm_block_size
from . import Context, Facts, Stage

log = logging.getLogger("bigmm")

#: the checkpoint folder (done blocks) beside the committed ``grm.zarr``
PARTIAL = "grm.zarr.partial"


class GrmArrays:
    """The committed GRM store: ``arrays["K"]``, ``arrays["N"]`` (per-pair call counts), each
    checked (chunk checksums and digests) as it is opened."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __getitem__(self, name: str) -> CheckedArray:
        g = zarr.open_group(str(self.path), mode="r")
        verify_chunks(g[name], f"{self.path}/{name}")
        verify_chunk_digests(self.path, f"{self.path}", names=[name])
        return CheckedArray(g[name], f"{self.path}/{name}")


def _resume_block(partial: Path, fingerprint: str, block: int) -> int:
    """The block size to compute in: a checkpoint of this fingerprint is resumed in its own blocks
    (the default size depends on the cluster); any other checkpoint is removed."""
    if not partial.exists():
        return block
    try:
        g = zarr.open_group(str(partial), mode="r")
        fp_there, _ = g.attrs.get("fingerprint"), g["done"].shape
    except Exception as exc:  # noqa: BLE001 - its creation was cut short (a full disk): start again
        log.warning("the GRM checkpoint %s does not open (%s); the GRM starts again", partial, exc)
        fp_there = None
    if fp_there != fingerprint:
        remove_path(partial)
        return block
    return int(g.attrs["block_size"])


def build_grm_store(store, std: Standardization, final: Path, fingerprint: str, block: int,
                    dtype=np.float64) -> dict:
    """K and N of ``store``'s genotypes standardized by ``std`` into the GRM store ``final``,
    through the checkpoint ``final.partial`` (resumed when its fingerprint matches), then
    committed by rename. Returns what run.json records (blocks computed, passes over X).

    This is the grm stage's whole work (the benchmarks build their GRM with it)."""
    final = Path(final)
    partial = final.with_name(final.name + ".partial")
    n = store.n_samples
    dtype = np.dtype(dtype)
    attrs = {"n_samples": n, "n_variants": std.n_kept, "standardize": std.standardize,
             "block_size": block, "fingerprint": fingerprint, "dtype": dtype.name,
             "samples": "all samples of the genotype store, in store order", "bigmm_version": __version__}
    remove_path(final)
    block = _resume_block(partial, fingerprint, block)
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
    return {"blocks": f"{total - before} computed, {before} from checkpoint", "passes_over_X": round(nb, 1)}


def needed(f: Facts) -> bool:
    """For an exact spectrum (when the model needs one) or a GCTA export; never for a given GRM."""
    return not f.given_grm and ((f.method == "exact" and f.needs_spectrum) or f.export_gcta)


def declare(name: str, ingest: Stage, stats: Stage) -> Stage:
    def body(ctx: Context):
        store, std = ctx.value(ingest), ctx.value(stats)
        block = grm_block_size(ctx.cfg, store.n_samples, total_threads(), store.chunks[0], store.chunks[1])
        info = build_grm_store(store, std, ctx.out / "grm.zarr", ctx.fingerprint(ctx.stages[name]), block,
                               ctx.cfg.grm.dtype)
        return GrmArrays(ctx.out / "grm.zarr"), info

    return Stage(name=name, outputs=("grm.zarr",), body=body,
                 inputs=lambda f: {"block_size": f.cfg.grm.block_size, "dtype": f.cfg.grm.dtype, "arrays": ["K", "N"]},
                 upstream=lambda f: (stats,), needed=needed, reads_genotypes=lambda f: True,
                 passes=lambda f, c: float(-(-c.n // (c.grm_block or c.n))),
                 flops=lambda f, c, k: float(c.n) * c.n * c.p, checkpoint=PARTIAL,
                 load=lambda ctx: GrmArrays(ctx.out / "grm.zarr"), stamped="grm.zarr")
