#!/usr/bin/env python
"""The floor of a pass over X, per candidate store layout and codec, beside today's pass, in one run.

A pass (``bigmm.GrmOperator.apply``) reads every genotype chunk, decodes it, standardizes it into
float32 and computes the two products ``W = X_cᵀ M`` and ``X_c W`` for a block M of l columns. Its
floor is the larger of two costs that can overlap: decoding the store (with both cores) and the
arithmetic (the two float32 GEMMs with both cores). For one simulated cohort this script measures,
for each candidate layout of the same genotypes:

- bytes on disk of one pass (every chunk is read once);
- read + decode of every chunk into int8 codes (one thread, and two threads over the chunks);
- standardize every column into float32 (``bigmm.genotypes.standardize_block``, in the pass's pieces;
  one thread and two), the same for every layout since each decodes to the same int8 codes;
- BLAS: the two float32 products of the pass for width l on a standardized piece, once per piece
  of the pass (``4 n p l`` flops), on all cores;
- the floor, ``max(read + decode on 2 threads, BLAS)``, and today's pass (``GrmOperator.apply`` on the
  cohort store, on the pipeline's default local cluster: --workers x --threads, float32 products,
  float64 accumulation) measured in the same run, as a ratio to each floor.

Layouts (every one with a CRC32C checksum after its codec, as bigmm writes arrays):

``int8-zstd1``        today's cohort store: int8 codes, -1 missing, zstd level 1 (the store itself);
``int8-blosc-lz4``    int8 codes, Blosc bit-shuffle + LZ4 (clevel 5);
``int8-blosc-zstd``   int8 codes, Blosc bit-shuffle + zstd (clevel 1);
``2bit-raw``          2-bit codes, 4 genotypes per byte (0, 1, 2, 3 = missing), no byte codec;
``2bit-zstd1``        the same, zstd level 1;
``2bit-lz4``          the same, Blosc LZ4 without shuffle.

The 2-bit layouts pack planes within a chunk of R samples: byte i of a variant holds samples
i, i + R/4, i + 2R/4 and i + 3R/4 (bits 0-1, 2-3, 4-5, 6-7), so decoding writes four contiguous
row blocks, each a shift and a mask of the packed bytes; .bed packs 4 consecutive samples per
byte instead (the same bytes, another order).

Every figure is the median of --repeats runs (min-max shown), the methods run in turn within
each repeat (pairs see similar load on a shared machine). Layouts are written once into
--cache (git-ignored) beside the cached cohort (common.ensure_cohort, as bench.py makes it).

Usage::

    python scripts/bench/bench_pass_floor.py                          # n = 10,000, p = 50,000, l = 33 and 250
    python scripts/bench/bench_pass_floor.py --n 2000 --p 8000 --repeats 1   # smoke run
    python scripts/bench/bench_pass_floor.py --write-docs --docs docs/performance.md
    python scripts/bench/bench_pass_floor.py --grm-only --grm-n 4000   # the GRM part alone: variant
        # statistics + grm stage against the in-memory float32 SYRK of the standardized X
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (MIB, REPO, add_docs_args, alternate, cluster_config, command_line, du,  # noqa: E402
                    ensure_cohort, fmt_time, log, machine_info, machine_line, md_table, publish, summarize,
                    task_memory, timed, variant_filter)

SECTION = "The floor of a pass (scripts/bench/bench_pass_floor.py)"
LAYOUTS = ("int8-zstd1", "int8-blosc-lz4", "int8-blosc-zstd", "2bit-raw", "2bit-zstd1", "2bit-lz4")


# --------------------------------------------------------------------------- layouts

def pack2(g: np.ndarray) -> np.ndarray:
    """int8 codes (r x c, -1 missing) -> planar 2-bit bytes (ceil(r/4) x c): byte i holds rows
    i, i + q, i + 2q, i + 3q (q = ceil(r/4)), missing and padding as code 3."""
    r, c = g.shape
    q = -(-r // 4)
    codes = np.full((4 * q, c), 3, dtype=np.uint8)
    codes[:r] = np.where(g < 0, 3, g).astype(np.uint8)
    codes = codes.reshape(4, q, c)
    return codes[0] | (codes[1] << 2) | (codes[2] << 4) | (codes[3] << 6)


def unpack2(packed: np.ndarray, rows: int) -> np.ndarray:
    """The int8 codes (rows x c) of a planar 2-bit block (:func:`pack2`): per plane k a shift and a
    mask (vectorised; a table look-up with ``np.take`` was 10x slower), then code 3 -> -1 where
    some field holds 3."""
    q, c = packed.shape
    out = np.empty((4 * q, c), dtype=np.uint8)
    for k in range(4):
        o = out[k * q:(k + 1) * q]
        np.right_shift(packed, 2 * k, out=o)
        np.bitwise_and(o, 3, out=o)
    codes = out.view(np.int8)
    if (packed & (packed >> 1) & 0x55).any():  # a 2-bit field equal to 3: a missing call or padding
        codes[codes == 3] = -1
    return codes[:rows]


def codecs_of(layout: str):
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    byte = {"int8-blosc-lz4": BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=1),
            "int8-blosc-zstd": BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle", typesize=1),
            "2bit-raw": None, "2bit-zstd1": ZstdCodec(level=1),
            "2bit-lz4": BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle", typesize=1)}[layout]
    return (byte, Crc32cCodec()) if byte is not None else (Crc32cCodec(),)


def write_layout(path: Path, layout: str, cols: list[np.ndarray], bounds, chunks) -> None:
    """The genotypes (``cols``: int8 column blocks at ``bounds``) as a Zarr array of ``layout``."""
    import zarr

    n = cols[0].shape[0]
    rc, cc = chunks
    two = layout.startswith("2bit")
    if two and rc % 4:
        raise SystemExit(f"2-bit layouts need sample chunks divisible by 4, got {rc}")
    nrow = sum(-(-min(rc, n - a) // 4) for a in range(0, n, rc)) if two else n
    p = bounds[-1][1]
    arr = zarr.create_array(str(path), shape=(nrow, p), dtype="uint8" if two else "int8",
                            chunks=(rc // 4 if two else rc, cc), compressors=codecs_of(layout),
                            fill_value=0, config={"write_empty_chunks": True}, overwrite=True)
    for (a, b), g in zip(bounds, cols):
        for r0 in range(0, n, rc):
            blk = g[r0:r0 + rc]
            if two:
                arr[r0 // 4:r0 // 4 + -(-blk.shape[0] // 4), a:b] = pack2(blk)
            else:
                arr[r0:r0 + blk.shape[0], a:b] = blk


def chunk_reader(layout: str, arr, n: int, rc: int):
    """``read(i0, a, b)``: the int8 codes of row chunk starting at sample i0, columns a:b."""
    if layout.startswith("2bit"):
        def read(i0, a, b):
            rows = min(rc, n - i0)
            return unpack2(np.asarray(arr[i0 // 4:i0 // 4 + -(-rows // 4), a:b]), rows)
    else:
        def read(i0, a, b):
            return np.asarray(arr[i0:i0 + rc, a:b])
    return read


def codec_reader(layout: str, path: Path, n: int, chunks, p: int):
    """``read(i0, a, b)`` as :func:`chunk_reader`, bypassing Zarr: the chunk file's bytes, its
    CRC32C checked, then the byte codec (numcodecs, what Zarr calls) and the 2-bit unpacking."""
    import numcodecs

    crc = numcodecs.CRC32C()
    byte = {"int8-zstd1": numcodecs.Zstd(), "int8-blosc-lz4": numcodecs.Blosc(), "int8-blosc-zstd": numcodecs.Blosc(),
            "2bit-raw": None, "2bit-zstd1": numcodecs.Zstd(), "2bit-lz4": numcodecs.Blosc()}[layout]
    two = layout.startswith("2bit")
    rc, cc = chunks
    shape = (rc // 4 if two else rc, cc)

    def read(i0, a, b):
        with open(path / "c" / str(i0 // rc) / str(a // cc), "rb") as fh:
            buf = crc.decode(fh.read())
        if byte is not None:
            buf = byte.decode(buf)
        blk = np.frombuffer(buf, dtype=np.uint8 if two else np.int8).reshape(shape)[:, :b - a]
        rows = min(rc, n - i0)
        return unpack2(blk[:-(-rows // 4)], rows) if two else blk[:rows]
    return read


def read_all(read, jobs, threads: int) -> int:
    """Read and decode every chunk of ``jobs`` on ``threads`` threads; the genotypes decoded."""
    if threads == 1:
        return sum(read(*j).size for j in jobs)
    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        return sum(ex.map(lambda j: read(*j).size, jobs))


# --------------------------------------------------------------------------- arithmetic

def blas_products(X: np.ndarray, M: np.ndarray, widths: list[int], threads: int = 2) -> None:
    """The two float32 products of a pass, ``W = X_cᵀ M`` then ``X_c W``, for each piece width: on
    ``threads`` threads with one BLAS thread each, as a pass's tasks run them (2 workers x 1 thread)."""
    from threadpoolctl import threadpool_limits

    def work(ws):
        for w in ws:
            Xc = X[:, :w]
            Xc @ (Xc.T @ M)

    with threadpool_limits(1, user_api="blas"):
        with concurrent.futures.ThreadPoolExecutor(threads) as ex:
            list(ex.map(work, [widths[t::threads] for t in range(threads)]))


# --------------------------------------------------------------------------- run

def measure(args) -> dict:
    import bigmm
    from bigmm.genotypes import standardize_block
    from bigmm.pipeline.cluster import dask_client

    c = ensure_cohort(args.cache, args.n, p=args.p, seed=args.seed, pops=10, fst=0.01, h2=[0.5, 0.3],
                      chunks=args.chunks, sim_block=1024, need_plink=False)
    store = bigmm.open_store(c["paths"]["zarr"])
    n, p = store.genotypes.shape
    rc, cc = store.chunks
    std = variant_filter(store, args.min_maf, args.max_missing)
    bounds = [(a, min(p, a + cc)) for a in range(0, p, cc)]
    log(f"cohort n={n} p={p} ({std.n_kept} kept), chunks {rc} x {cc}; loading the genotypes")
    cols = [np.asarray(store.genotypes[:, a:b]) for a, b in bounds]
    n_missing = int(sum(int((g < 0).sum()) for g in cols))

    layout_dir = args.cache / f"floor_{c['tag']}_c{rc}x{cc}"
    layout_dir.mkdir(parents=True, exist_ok=True)
    arrays = {"int8-zstd1": (store.genotypes, Path(c["paths"]["zarr"]) / "genotypes")}
    import zarr
    for lay in args.layouts:
        if lay == "int8-zstd1":
            continue
        path = layout_dir / f"{lay}.zarr"
        done = layout_dir / f"{lay}.done"
        if not done.exists():
            t0 = time.perf_counter()
            write_layout(path, lay, cols, bounds, (rc, cc))
            done.write_text("ok\n")
            log(f"wrote {lay} in {time.perf_counter() - t0:.1f} s")
        arrays[lay] = (zarr.open_array(str(path), mode="r"), path)
    jobs = [(i0, a, b) for a, b in bounds for i0 in range(0, n, rc)]
    readers = {lay: chunk_reader(lay, arrays[lay][0], n, rc) for lay in args.layouts}
    readers.update({f"{lay} codec": codec_reader(lay, Path(arrays[lay][1]), n, (rc, cc), p) for lay in args.layouts})
    # every layout decodes to the same codes (checked on the first and the last chunk of each)
    for lay, read in readers.items():
        for j in (jobs[0], jobs[-1]):
            i0, a, b = j
            if not np.array_equal(read(*j), cols[bounds.index((a, b))][i0:i0 + rc]):
                raise SystemExit(f"layout {lay} does not decode to the store's genotypes")

    plan_sub = {l: bigmm.GrmOperator(store.genotypes, std, dtype=np.float32).plan(l).sub_width for l in args.width}
    sub = min(plan_sub.values())
    widths = [min(b, a + w0 + sub) - (a + w0) for a, b in bounds for w0 in range(0, b - a, sub)]
    X = standardize_block(cols[0][:, :sub], std.center[:sub], std.scale[:sub], np.float32)
    rng = np.random.default_rng(0)
    Ms = {l: rng.standard_normal((n, l)) for l in args.width}
    M32 = {l: Ms[l].astype(np.float32) for l in args.width}

    def std_all(threads):
        from bigmm.genotypes import standardize_block as sb

        pieces = [(k, w0, min(b - a, w0 + sub)) for k, (a, b) in enumerate(bounds) for w0 in range(0, b - a, sub)]

        def work(share):
            buf = np.empty(n * sub, dtype=np.float32)
            for k, w0, w1 in share:
                a = bounds[k][0]
                sb(cols[k][:, w0:w1], std.center[a + w0:a + w1], std.scale[a + w0:a + w1], np.float32, out=buf)
        if threads == 1:
            work(pieces)
        else:
            with concurrent.futures.ThreadPoolExecutor(threads) as ex:
                list(ex.map(work, [pieces[t::threads] for t in range(threads)]))

    methods = {}
    for lay in list(args.layouts) + [f"{lay} codec" for lay in args.layouts]:
        for t in (1, 2):
            methods[f"decode {lay} {t}t"] = (lambda lay, t: lambda _r: timed(
                lambda: read_all(readers[lay], jobs, t), f"read+decode {lay}, {t} thread(s)"))(lay, t)
    for t in (1, 2):
        methods[f"standardize {t}t"] = (lambda t: lambda _r: timed(lambda: std_all(t), f"standardize, {t} thread(s)"))(t)
    for l in args.width:
        methods[f"blas l={l}"] = (lambda l: lambda _r: timed(lambda: blas_products(X, M32[l], widths),
                                                            f"BLAS l={l}"))(l)
    out = {"n": n, "p": p, "p_kept": std.n_kept, "chunks": [rc, cc], "n_missing": n_missing, "tag": c["tag"],
           "sub_width": sub, "widths": list(args.width), "layouts": {}, "kernels": list(args.kernels), "cluster": {
               "workers": args.workers, "threads": args.threads, "memory_limit": args.memory_limit}}
    with dask_client(cluster_config(args)):
        ops = {k: bigmm.GrmOperator(store.genotypes, std, dtype=np.float32, memory=task_memory(args), kernel=k)
               for k in args.kernels}
        # accuracy of each kernel's float32 pass against a float64 pass (untimed; the first width)
        l0 = args.width[0]
        ref = bigmm.GrmOperator(store.genotypes, std, memory=task_memory(args)).apply(Ms[l0])[0]
        out["error_vs_float64"] = {}
        for k, op in ops.items():
            d = op.apply(Ms[l0])[0] - ref  # also the workers' warm-up
            out["error_vs_float64"][k] = {"l": l0, "max_abs": float(np.abs(d).max()),
                                          "rel_frobenius": float(np.linalg.norm(d) / np.linalg.norm(ref))}
            log(f"kernel {k}: float32 pass vs float64, relative Frobenius error "
                f"{out['error_vs_float64'][k]['rel_frobenius']:.2e}")
        for l in args.width:
            for k, op in ops.items():
                methods[f"pass {k} l={l}"] = (lambda l, op, k: lambda _r: timed(
                    lambda: op.apply(Ms[l])[0].shape, f"bigmm pass ({k}) l={l}"))(l, op, k)
        runs = alternate(args.repeats, methods)
    out["runs"] = {m: summarize(rr) for m, rr in runs.items()}
    for lay in args.layouts:
        out["layouts"][lay] = {"bytes": du(arrays[lay][1])}
    return out


def profile_grm_task(store, std, block: int, n_chunks: int, cache: Path) -> dict:
    """CPU seconds of the parts of the grm stage's block tasks: bigmm.grm.grm_block with the per-pair
    counts, as a task calls it, under cProfile (CPU time) with one BLAS thread, over the first ``n_chunks``
    variant chunks, for the diagonal block (0, 0) and the off-diagonal block (0, 1). Parts: read +
    decode (the store's ``__getitem__``), ``standardize_block``, the per-pair counts
    (``_count_missing``, where bigmm has it) and grm_block's own lines (its products and the float64
    accumulation: BLAS). Also the time to write one finished off-diagonal block of K and N."""
    import cProfile
    import importlib
    import pstats
    import shutil

    from threadpoolctl import threadpool_limits

    from common import Columns

    gm = importlib.import_module("bigmm.grm")  # (bigmm.grm the attribute is the function)

    G = store.genotypes
    n, p = G.shape
    step = gm._variant_chunk(G)
    pv = min(p, n_chunks * step)
    blocks = gm._blocks(n, block)
    cases = [("diagonal", blocks[0], blocks[0])] + ([("off-diagonal", blocks[0], blocks[1])] if len(blocks) > 1 else [])
    read_file = Columns.__getitem__.__code__.co_filename
    grm_file = gm.__file__
    out: dict = {"variant_chunks": -(-pv // step), "cases": {}}
    for kind, ri, rj in cases:
        pr = cProfile.Profile(time.process_time)  # CPU seconds: steadier than wall time on a loaded machine
        with threadpool_limits(limits=1, user_api="blas"):
            pr.enable()
            gm.grm_block(Columns(G, pv), std.center, std.scale, ri, rj, step, std.n_kept, np.float32, counts=True)
            pr.disable()
        t = {"read_s": 0.0, "standardize_s": 0.0, "counts_s": 0.0, "products_s": 0.0}
        for (file, _line, name), (_cc, _nc, tt, ct, _callers) in pstats.Stats(pr).stats.items():
            if name == "__getitem__" and file == read_file:
                t["read_s"] += ct
            elif name == "standardize_block":
                t["standardize_s"] += ct
            elif name in ("_count_missing", "_missing_product"):
                t["counts_s"] += tt if name == "_missing_product" else ct
            elif name == "grm_block" or (file == grm_file and name in ("add", "total")):
                t["products_s"] += tt
        total = pstats.Stats(pr).total_tt
        out["cases"][kind] = {"cpu_s": total, **t, "other_s": total - sum(t.values())}
    if len(blocks) > 1:  # writing one finished block of K and N (and their transposes), as a block task does
        wpath = cache / "profile_grm_write.zarr"
        shutil.rmtree(wpath, ignore_errors=True)
        gm.create_grm_store(wpath, n, block, {}, counts=True)
        acc = np.full((blocks[0].stop - blocks[0].start, blocks[1].stop - blocks[1].start), 0.5)
        t0, c0 = time.perf_counter(), time.process_time()
        gm._write_block(str(wpath), 0, 1, blocks[0], blocks[1], {"K": acc, "N": np.full(acc.shape, p, np.int32)})
        out["write_block_s"], out["write_block_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        shutil.rmtree(wpath, ignore_errors=True)
    return out


def _products_task(ni: int, nj: int, same: bool, p: int, step: int) -> float:
    """The arithmetic of one grm block task alone: its variant chunks' float32 products summed as
    grm_block sums them (bigmm.grm.BlockSums: in place by the BLAS, into float64 every F32_SPAN
    variants, the diagonal mirrored), on slabs already standardized (random, made once, before the
    clock of the task). Returns the task's seconds."""
    from bigmm.grm import BlockSums

    rng = np.random.default_rng(0)
    xi = rng.standard_normal((ni, step), dtype=np.float32)
    xj = None if same else rng.standard_normal((nj, step), dtype=np.float32)
    t0 = time.perf_counter()
    sums = BlockSums(ni, nj, same, np.float32)
    for v0 in range(0, p, step):
        w = min(step, p - v0)
        sums.add(*((x if w == step else np.ascontiguousarray(x[:, :w])) for x in (xi, xj) if x is not None))
    sums.total()
    return time.perf_counter() - t0


def products_alone(n: int, p: int, block: int, step: int) -> list[float]:
    """The grm stage's block tasks doing their arithmetic alone (:func:`_products_task`): the same
    blocks, costs and workers as the stage (bigmm.tasks.run_tasks), no reading, decoding,
    standardizing or writing. Its wall time is the least any build of these blocks on these
    workers can take."""
    import dask

    from bigmm.grm import _blocks
    from bigmm.tasks import run_tasks

    blocks = _blocks(n, block)
    pairs = [(I, J) for I in range(len(blocks)) for J in range(I, len(blocks))]
    task = dask.delayed(_products_task, pure=False)
    return run_tasks([task(blocks[I].stop - blocks[I].start, blocks[J].stop - blocks[J].start, I == J, p, step)
                      for I, J in pairs], "GRM products alone", costs=[1.0 if I == J else 2.0 for I, J in pairs])


def one_thread(fn):
    """``fn()`` with one BLAS thread: its CPU seconds are the work alone, without the CPU that idle
    BLAS threads burn spinning on a loaded machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return fn()


def measure_grm(args) -> dict:
    """The GRM from the cohort store, as a run makes it: the variant statistics (bigmm.variant_stats
    and the standardization, common.variant_filter) and the grm stage's build (K and the per-pair
    counts N into a Zarr GRM store, common.compute_grm), each on the pipeline's default local
    cluster, against the in-memory float32 SYRK of the standardized X (``X @ X.T``, all cores; and
    on one BLAS thread, whose CPU seconds are the SYRK's work), alternated; and the parts of the block tasks (:func:`profile_grm_task`)."""
    import bigmm
    from bigmm.genotypes import standardize_block
    from bigmm.pipeline.cluster import dask_client
    from common import grm_block_size, timed_grm

    n = args.grm_n
    c = ensure_cohort(args.cache, n, p=args.p, seed=args.seed, pops=10, fst=0.01, h2=[0.5, 0.3],
                      chunks=args.chunks, sim_block=1024, need_plink=False, layout=args.grm_layout)
    store = bigmm.open_store(c["paths"]["zarr"])
    p = store.genotypes.shape[1]
    std = variant_filter(store, args.min_maf, args.max_missing)
    cc = store.chunks[1]
    X = np.empty((n, p), dtype=np.float32)
    for a in range(0, p, cc):
        b = min(p, a + cc)
        X[:, a:b] = standardize_block(np.asarray(store.genotypes[:, a:b]), std.center[a:b], std.scale[a:b], np.float32)
    path = args.cache / f"floor_grm_n{n}.zarr"
    cfg = cluster_config(args)
    with dask_client(cfg):
        block = grm_block_size(store, cfg, np.float32)
        runs = alternate(args.repeats, {
            "syrk": lambda _r: timed(lambda: (X @ X.T).shape, f"in-memory float32 X Xᵀ n={n}"),
            "syrk 1 thread": lambda _r: timed(lambda: one_thread(lambda: (X @ X.T).shape),
                                              f"in-memory float32 X Xᵀ n={n}, 1 BLAS thread"),
            "variant stats": lambda _r: timed(lambda: variant_filter(store, args.min_maf, args.max_missing).n_kept,
                                              f"variant statistics n={n}"),
            "grm stage": lambda _r: timed_grm(store, std, path, block, np.float32, f"grm stage build n={n}"),
            "products alone": lambda _r: timed(lambda: products_alone(n, p, block, cc),
                                               f"the grm stage's products alone n={n}")})
    X = None
    prof = profile_grm_task(store, std, block, args.grm_profile_chunks, args.cache)
    return {"n": n, "p": p, "p_kept": std.n_kept, "block": block, "sample_chunk": store.chunks[0], "layout": store.layout,
            "variant_chunk": cc, "runs": {m: summarize(rr) for m, rr in runs.items()}, "profile": prof}


def grm_report(g: dict) -> str:
    r = g["runs"]
    syrk, build, vs = r["syrk"], r["grm stage"], r.get("variant stats")
    fl = g["n"] ** 2 * g["p"]
    both = build["median_s"] + (vs["median_s"] if vs else 0.0)
    both_cpu = build["cpu_s_median"] + (vs["cpu_s_median"] if vs else 0.0)
    lines = ([g["run"], ""] if g.get("run") else []) + [
             f"**GRM at n = {g['n']:,}** (p = {g['p']:,}, blocks of {g['block']}, store chunks "
             f"{g.get('sample_chunk', '?')} × {g.get('variant_chunk', '?')} ({g.get('layout', 'int8')} layout), "
             f"float32 products; medians of "
             f"{syrk['repeats']} repeats, min–max; CPU of the driver and the workers):", "",
             md_table(["step", "wall", "CPU", "wall / SYRK", "CPU / SYRK"],
                      [["in-memory float32 `X @ X.T` (SYRK, all cores) of the standardized X",
                        f"{fmt_time(syrk, 2)} = {fl / syrk['median_s'] / 1e9:.0f} GFLOP/s",
                        f"{syrk['cpu_s_median']:.1f} s", "1", "1"]]
                      + ([["variant statistics (one pass: counts, filters, standardization)", fmt_time(vs, 2),
                           f"{vs['cpu_s_median']:.1f} s", f"{vs['median_s'] / syrk['median_s']:.2f}",
                           f"{vs['cpu_s_median'] / syrk['cpu_s_median']:.2f}"]] if vs else [])
                      + [["grm stage (K and the per-pair counts N into a Zarr GRM store)", fmt_time(build, 2),
                          f"{build['cpu_s_median']:.1f} s", f"{build['median_s'] / syrk['median_s']:.2f}",
                          f"{build['cpu_s_median'] / syrk['cpu_s_median']:.2f}"]]
                      + ([["**variant statistics + grm stage** (sums of the medians)", f"{both:.2f} s",
                           f"{both_cpu:.1f} s", f"**{both / syrk['median_s']:.2f}**",
                           f"**{both_cpu / syrk['cpu_s_median']:.2f}**"]] if vs else [])), ""]
    prod = r.get("products alone")
    if prod and vs:
        left = 1.25 * syrk["median_s"] - vs["median_s"] - prod["median_s"]
        lines += [f"**The stage's arithmetic alone** (its block tasks' float32 products and float64 sums, "
                  f"bigmm.grm.BlockSums, on slabs already standardized in memory; the same blocks, costs and "
                  f"workers; no reading, decoding, standardizing or writing): {fmt_time(prod, 2)}, CPU "
                  f"{prod['cpu_s_median']:.1f} s, {prod['median_s'] / syrk['median_s']:.2f}× the SYRK. Variant "
                  f"statistics + the arithmetic alone: {(vs['median_s'] + prod['median_s']) / syrk['median_s']:.2f}× "
                  f"the SYRK; 1.25× leaves {left:.2f} s for the rest of the stage (reading and decoding the "
                  f"genotypes {g['n'] // g['block'] if g['block'] else 1} times, standardizing them, writing K and N, "
                  f"the store's digests and fsync), which took {build['median_s'] - prod['median_s']:.2f} s here.", ""]
    one = r.get("syrk 1 thread")
    if one:
        lines += [f"The same SYRK on one BLAS thread: {fmt_time(one, 2)}, CPU {one['cpu_s_median']:.1f} s (the "
                  f"SYRK's work: on this loaded machine the two-thread SYRK's idle BLAS thread spins, so its CPU "
                  f"overstates the work); variant statistics + grm stage CPU / one-thread SYRK CPU = "
                  f"**{both_cpu / one['cpu_s_median']:.2f}**.", ""]
    prof = g["profile"]
    if "cases" in prof and "counts_s" in next(iter(prof["cases"].values())):
        rows = [[k, f"{v['cpu_s']:.2f}", f"{v['read_s']:.2f}", f"{v['standardize_s']:.2f}", f"{v['products_s']:.2f}",
                 f"{v['counts_s']:.2f}", f"{v['other_s']:.2f}"] for k, v in prof["cases"].items()]
        lines += [f"One block task's parts (bigmm.grm.grm_block with the counts N over {prof['variant_chunks']} "
                  "variant chunks, cProfile with 1 BLAS thread), CPU seconds:",
                  "", md_table(["block", "CPU", "read + decode", "standardize", "products + float64 accumulation",
                                "per-pair counts", "other"], rows), ""]
    else:  # results of the earlier version of this script (bench_grm.profile_block)
        prof = prof["by_dtype"]["float32"]["cases"]
        rows = [[k, f"{v['total_s']:.2f}", f"{v['read_s']:.2f}", f"{v['standardize_s']:.2f}", f"{v['blas_s']:.2f}",
                 f"{v['other_s']:.2f}"] for k, v in prof.items()]
        lines += [f"One block task (bigmm.grm.grm_block with the counts N, {g['profile']['variant_chunks']} variant "
                  "chunks, cProfile, 1 BLAS thread), seconds:", "",
                  md_table(["block", "total", "read + decode", "standardize", "products + counts (grm_block's own)",
                            "other"], rows), ""]
    if "write_block_s" in g["profile"]:
        lines += [f"Writing one finished off-diagonal block of K and N (and their transposes): "
                  f"{g['profile']['write_block_s']:.2f} s.", ""]
    return "\n".join(lines)


def report(res: dict) -> str:
    if "runs" not in res:  # the GRM part alone
        return "\n".join([f"Run {res['date']} · `{res['command']}` · repeats = {res['repeats']} (median; min–max) · "
                          f"load average {res['load'][0]:.1f} at the start, {res['load'][1]:.1f} at the end.", "",
                          machine_line(res["machine"]) + ".", "", grm_report(res["grm"])])
    r = res["runs"]
    n, p, chunks = res["n"], res["p"], res["chunks"]
    gib_dec = n * p / 2**30
    lines = [f"Run {res['date']} · `{res['command']}` · n = {n:,} samples × p = {p:,} variants "
             f"({res['p_kept']:,} kept; simulated, 10 populations, {res['n_missing']} missing calls) · store chunks "
             f"{chunks[0]} × {chunks[1]} · pieces of {res['sub_width']} columns · repeats = {res['repeats']} "
             f"(median; min–max) · today's pass on a local cluster of {res['cluster']['workers']} workers × "
             f"{res['cluster']['threads']} thread ({res['cluster']['memory_limit']} each), float32 products, "
             f"float64 accumulation · load average {res['load'][0]:.1f} at the start, "
             f"{res['load'][1]:.1f} at the end.", "", machine_line(res["machine"]) + ".", ""]
    std2 = r["standardize 2t"]["median_s"]
    rows = []
    for lay, d in res["layouts"].items():
        d1, d2 = r[f"decode {lay} 1t"], r[f"decode {lay} 2t"]
        row = [lay, f"{d['bytes'] / MIB:,.0f} MiB", f"{d['bytes'] * 8 / (n * p):.2f}", fmt_time(d1, 2),
               f"{d1['cpu_s_median']:.2f} s", fmt_time(d2, 2)]
        c1, c2 = r.get(f"decode {lay} codec 1t"), r.get(f"decode {lay} codec 2t")
        row += [fmt_time(c1, 2), f"{c1['cpu_s_median']:.2f} s", fmt_time(c2, 2)] if c1 else ["—"] * 3
        rows.append(row)
    lines += ["**Read + decode** every chunk once into int8 codes, through Zarr (`arr[...]`) and through the "
              "codec alone (the chunk file read, its CRC32C checked, numcodecs' decoder, the 2-bit unpacking); "
              "1 thread, and 2 threads over the chunks; wall time (CPU time of the process: on a loaded machine "
              "the steadier figure):", "",
              md_table(["layout", "bytes per pass", "bits / genotype", "Zarr, 1 thread", "CPU", "Zarr, 2 threads",
                        "codec, 1 thread", "CPU", "codec, 2 threads"], rows), "",
              f"**Standardize** into float32 (`standardize_block`, {res['sub_width']}-column pieces, "
              f"{gib_dec * 4:.1f} GiB of float32 written): 1 thread {fmt_time(r['standardize 1t'], 2)}, "
              f"(CPU {r['standardize 1t']['cpu_s_median']:.2f} s), 2 threads {fmt_time(r['standardize 2t'], 2)}.", ""]
    for l in res["widths"]:
        blas = r[f"blas l={l}"]["median_s"]
        flops = 4.0 * n * p * l
        passes = {k: r.get(f"pass {k} l={l}") or (r.get(f"pass l={l}") if k == "standardize" else None)
                  for k in res.get("kernels", ["standardize"])}
        passes = {k: v for k, v in passes.items() if v}
        rows = []
        for lay in res["layouts"]:
            dec = min(r[k]["median_s"] for k in (f"decode {lay} 2t", f"decode {lay} codec 2t") if k in r)
            floor = max(dec, blas)
            rows.append([lay, f"{dec:.2f} s", f"{blas:.2f} s", f"{floor:.2f} s",
                         "decode" if dec > blas else "BLAS", f"{dec + std2:.2f} s", f"{dec + std2 + blas:.2f} s"]
                        + [f"{v['median_s'] / floor:.2f}" for v in passes.values()])
        said = "; ".join(f"kernel `{k}` {fmt_time(v, 2)} = {flops / v['median_s'] / 1e9:.0f} GFLOP/s, CPU "
                         f"{v['cpu_s_median']:.1f} s" for k, v in passes.items())
        lines += [f"**Width l = {l}**: BLAS (`X_cᵀ M` then `X_c W` per piece, float32, 2 threads × 1 BLAS thread, "
                  f"{flops / 1e9:,.0f} Gflop) {fmt_time(r[f'blas l={l}'], 2)} = {flops / blas / 1e9:.0f} GFLOP/s "
                  f"(CPU {r[f'blas l={l}']['cpu_s_median']:.1f} s). The pass (`GrmOperator.apply` on the int8-zstd1 "
                  f"store; CPU of driver and workers): {said}.", "",
                  md_table(["layout", "read+decode (2 threads, best of Zarr and codec)", "BLAS", "floor = max",
                            "bound by", "decode + standardize (2 threads)", "+ BLAS (no overlap)"]
                           + [f"pass `{k}` / floor" for k in passes], rows), ""]
        bcpu = r[f"blas l={l}"]["cpu_s_median"]
        scpu = r["standardize 1t"]["cpu_s_median"]
        rows = []
        for lay in res["layouts"]:
            dcpu = min(r[k]["cpu_s_median"] for k in (f"decode {lay} 1t", f"decode {lay} codec 1t") if k in r)
            rows.append([lay, f"{dcpu:.2f}", f"{scpu:.2f}", f"{bcpu:.2f}", f"{dcpu + bcpu:.2f}"]
                        + [f"{v['cpu_s_median'] / (dcpu + bcpu):.2f}" if lay == "int8-zstd1" else None
                           for v in passes.values()])
        lines += [f"The same in CPU seconds (l = {l}; work that two cores share, steadier than wall time on a loaded "
                  "machine): decode (1 thread, best of Zarr and codec), standardize (1 thread), BLAS, and the pass's "
                  "CPU (it reads the int8-zstd1 store) over the work that no kernel avoids, decode + BLAS:", "",
                  md_table(["layout", "decode CPU s", "standardize CPU s", "BLAS CPU s", "decode + BLAS"]
                           + [f"pass `{k}` CPU / (decode + BLAS)" for k in passes], rows), ""]
    err = res.get("error_vs_float64")
    if err:
        lines += ["Accuracy of the float32 passes against a float64 pass (l = "
                  f"{next(iter(err.values()))['l']}, same M): "
                  + "; ".join(f"`{k}` relative Frobenius error {e['rel_frobenius']:.1e}, max |Δ| {e['max_abs']:.1e}"
                              for k, e in err.items()) + ".", ""]
    if res.get("grm"):
        lines.append(grm_report(res["grm"]))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--p", type=int, default=50000)
    ap.add_argument("--width", type=int, nargs="+", default=[33, 250], help="columns l of the block M")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    ap.add_argument("--cache", type=Path, default=REPO / "cache" / "bench")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--chunks", type=lambda t: tuple(int(x) for x in t.split(",")), default=(8192, 2048),
                    help="samples,variants per store chunk (default 8192,2048, as bench.py)")
    ap.add_argument("--min-maf", type=float, default=0.01)
    ap.add_argument("--max-missing", type=float, default=0.05)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="threads per worker")
    ap.add_argument("--memory-limit", default="5GiB", help="per worker")
    ap.add_argument("--grm-n", type=int, default=None, help="also the GRM part at this n (e.g. 4000)")
    ap.add_argument("--grm-only", action="store_true", help="only the GRM part (into --json, its own file)")
    ap.add_argument("--grm-layout", default="2bit", choices=["2bit", "int8"],
                    help="store layout of the GRM part's cohort (default 2bit, bigmm's default)")
    ap.add_argument("--grm-profile-chunks", type=int, default=4,
                    help="variant chunks of the GRM block tasks' profile (default 4)")
    ap.add_argument("--kernels", nargs="+", default=["fold", "tile"], help="GrmOperator kernels to time")
    ap.add_argument("--json", type=Path, default=None, help="results file (default --cache/pass_floor.json)")
    add_docs_args(ap)
    ap.add_argument("--report", type=Path, default=None, help="only write the report of this results file")
    args = ap.parse_args(argv)
    if args.report is not None:
        publish(SECTION, report(json.loads(args.report.read_text())), args.docs if args.write_docs else None)
        return 0
    if "int8-zstd1" not in args.layouts:
        args.layouts.insert(0, "int8-zstd1")
    args.cache.mkdir(parents=True, exist_ok=True)
    import datetime as _dt

    load0 = os.getloadavg()[0]
    m = machine_info()
    res = {"grm": measure_grm(args)} if args.grm_only else measure(args)
    if args.grm_n and not args.grm_only:
        res["grm"] = measure_grm(args)
    res.update(machine=m, repeats=args.repeats, load=[load0, os.getloadavg()[0]],
               command=command_line(__file__, argv),
               date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    if res.get("grm"):
        res["grm"]["run"] = (f"GRM part: run {res['date']} · `{res['command']}` · load average {res['load'][0]:.1f} "
                             f"at the start, {res['load'][1]:.1f} at the end.")
    path = args.json or args.cache / "pass_floor.json"
    path.write_text(json.dumps(res, indent=1, default=float) + "\n")
    log(f"results in {path}")
    publish(SECTION, report(res), args.docs if args.write_docs else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
