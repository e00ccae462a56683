#!/usr/bin/env python
"""Benchmark: what bigmm's chunk digests and store fingerprints cost, against one pass over the store.

bigmm ties every chunk to its place and its store: it records each chunk file's digest when it
writes a store (ingest, the GRM stage, the other stage outputs), checks them before a stage reuses
or reads the store, and fingerprints the stored bytes of a given cohort or VCF Zarr store at each
``bigmm run`` / ``bigmm status``. This script measures, on stores of a realistic size:

``cohort``  a bigmm cohort store (int8 genotypes, n x p, zstd + CRC32C): recording the digests,
            verifying them, the content fingerprint (all three read each chunk file's 4-byte
            CRC32C trailer), the alternative of hashing every chunk file's bytes (blake2b), and
            one pass over the store (``bigmm.variant_stats`` on the threaded Dask scheduler, what
            the variant statistics stage computes).
``vcf``     a VCF Zarr store of the same genotypes (``call_genotype`` p x n x 2 int8, Zarr's
            default zstd codec, no CRC32C: chunks of 10,000 variants x 1,000 samples as bio2zarr
            writes them): its content fingerprint hashes the raw bytes of every chunk file, against
            one pass (``variant_stats`` on the VCF Zarr view).
``grm``     a GRM store of ``--n-grm`` samples (K float64 + N int32, blocks of ``--block``):
            verifying its digests against reading K (what the exact spectrum stage does first).

Every store is read from the page cache (it was just written): the figures are the CPU cost; from
a cold disk the pass and the blake2b hashing both add the read of the compressed bytes, while the
CRC32C trailers stay one small read per chunk. Each figure is the median of ``--repeats``.

Usage::

    python scripts/bench/bench_fingerprint.py --n 10000 --p 20000 --n-grm 10000
"""

from __future__ import annotations

import argparse
import warnings
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, machine_line, md_table  # noqa: E402

import bigmm  # noqa: E402
from bigmm.grm import create_grm_store  # noqa: E402
from bigmm.io.vcfzarr import open_vcf_zarr  # noqa: E402
from bigmm.store import (_file_digest, array_digests, record_chunk_digests,  # noqa: E402
                         verify_chunk_digests)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def genotypes(n: int, p: int, seed: int = 1) -> np.ndarray:
    """HWE genotypes, MAF uniform on [0.05, 0.5], 1% missing; int8 (n x p)."""
    rng = np.random.default_rng(seed)
    G = np.empty((n, p), dtype=np.int8)
    for j0 in range(0, p, 2000):
        j1 = min(p, j0 + 2000)
        f = rng.uniform(0.05, 0.5, j1 - j0)
        G[:, j0:j1] = rng.binomial(2, f, size=(n, j1 - j0))
    G[rng.random((n, p)) < 0.01] = -1
    return G


def blake2b_all(path: Path, names) -> None:
    g = zarr.open_group(str(path), mode="r")
    for name in names:
        d = path / name
        for f in d.rglob("*"):
            if f.is_file() and f.name != "zarr.json":
                _file_digest(str(f), trailer=False)
    return g


def bytes_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    warnings.simplefilter("ignore")  # Zarr's notes on string dtypes
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--p", type=int, default=20_000)
    ap.add_argument("--n-grm", type=int, default=10_000)
    ap.add_argument("--block", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where the stores are written (default: a temp dir)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.dir, prefix="bench-fp-"))
    rows = []
    try:
        n, p, r = args.n, args.p, args.repeats
        G = genotypes(n, p)
        # --- a bigmm cohort store ---
        t0 = time.perf_counter()
        store = bigmm.create_store(work / "c.zarr", G)
        t_write = time.perf_counter() - t0
        n_chunks = len(array_digests(store.group["genotypes"]))
        size = bytes_of(work / "c.zarr")
        t_pass = median_time(lambda: bigmm.variant_stats(store.to_dask()), r)
        figures = {
            "record digests (write time)": median_time(lambda: record_chunk_digests(work / "c.zarr"), r),
            "verify digests (open_store)": median_time(lambda: verify_chunk_digests(work / "c.zarr"), r),
            "content fingerprint (run.json)": median_time(store.content_fingerprint, r),
            "blake2b of every chunk file (alternative)": median_time(
                lambda: blake2b_all(work / "c.zarr", ["genotypes"]), r),
        }
        label = f"cohort store {n:,} x {p:,} int8, chunks {store.chunks}, {n_chunks} genotype chunk files, " \
                f"{size / 2**20:.0f} MiB on disk (written in {t_write:.1f} s)"
        for what, t in figures.items():
            rows.append([label, what, f"{t * 1e3:.1f} ms", f"{t_pass:.2f} s", f"{100 * t / t_pass:.3f}%"])
        # --- a VCF Zarr store of the same genotypes ---
        g = zarr.open_group(str(work / "c.vcz"), mode="w")
        cg = g.create_array("call_genotype", shape=(p, n, 2), dtype="int8", chunks=(10_000, 1_000, 2))
        for j0 in range(0, p, 10_000):
            j1 = min(p, j0 + 10_000)
            blk = G[:, j0:j1].T
            gt = np.stack([(blk >= 1), (blk == 2)], axis=-1).astype(np.int8)
            gt[blk < 0] = -1
            cg[j0:j1] = gt
        g.create_array("sample_id", data=np.array([f"S{i}" for i in range(n)]))
        g.create_array("contig_id", data=np.array(["1"]))
        g.create_array("variant_contig", data=np.zeros(p, dtype=np.int8))
        g.create_array("variant_position", data=np.arange(1, p + 1, dtype=np.int32))
        g.create_array("variant_allele", data=np.array([["A", "G"]] * p))
        g.create_array("variant_id", data=np.array([f"rs{j}" for j in range(p)]))
        del G
        vs = open_vcf_zarr(work / "c.vcz")
        vsize = bytes_of(work / "c.vcz")
        t_vpass = median_time(lambda: bigmm.variant_stats(vs.to_dask()), r)
        t_vfp = median_time(vs.content_fingerprint, r)
        rows.append([f"VCF Zarr {p:,} x {n:,} x 2 int8, chunks (10000, 1000, 2), zstd, {vsize / 2**20:.0f} MiB "
                     f"on disk", "content fingerprint (blake2b of every chunk file)", f"{t_vfp * 1e3:.1f} ms",
                     f"{t_vpass:.2f} s", f"{100 * t_vfp / t_vpass:.2f}%"])
        shutil.rmtree(work / "c.zarr")
        shutil.rmtree(work / "c.vcz")
        # --- a GRM store ---
        m, b = args.n_grm, args.block
        gpath = work / "grm.zarr"
        grp = create_grm_store(gpath, m, b, {}, counts=True)
        K = grp["K"]
        rng = np.random.default_rng(2)
        for i0 in range(0, m, b):
            K[i0:min(m, i0 + b), :] = rng.standard_normal((min(m, i0 + b) - i0, m)) * 1e-2
            grp["N"][i0:min(m, i0 + b), :] = p
        record_chunk_digests(gpath)
        gsize = bytes_of(gpath)
        kz = zarr.open_group(str(gpath), mode="r")["K"]
        t_read = median_time(lambda: np.asarray(kz[...]), r)
        t_gv = median_time(lambda: verify_chunk_digests(gpath, names=["K"]), r)
        nk = len(array_digests(kz))
        rows.append([f"GRM store n = {m:,}, blocks {b}, {nk} chunk files of K, {gsize / 2**20:.0f} MiB on disk",
                     "verify digests of K (before a stage reads it)", f"{t_gv * 1e3:.1f} ms",
                     f"{t_read:.2f} s (read K)", f"{100 * t_gv / t_read:.3f}%"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(machine_line(machine_info()))
    print(md_table(["store", "operation", "time", "one pass over the store", "share of the pass"], rows))


if __name__ == "__main__":
    main()
