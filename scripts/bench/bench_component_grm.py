#!/usr/bin/env python
"""Benchmark: all m component GRMs (bigmm.component_grms) against one GRM (bigmm.grm).

Simulates a cohort (n x p, allele frequencies U[0.05, 0.5], 1% missing calls, seed 1) into a
cohort store in a temporary folder, computes the variant statistics, then times, alternating
and ``--repeats`` times each (median, min and max reported):

``grm``         bigmm.grm(store.genotypes, std): the one GRM of all p variants;
``components``  bigmm.component_grms(store.genotypes, std, split): m GRMs, the variants split at
                random into m components (interleaved: every chunk holds every component, the
                case where each chunk's columns are reordered).

``ld``          with ``--ld-window-variants W``: bigmm.ld_scores(store.genotypes, std,
                window_variants=W), the windowed LD-score pass (its chunk reads printed too).

All run on the local threaded Dask scheduler (no client) with the same block size and product
dtype, and read the genotypes through a counter: the script prints the slices read by each (the
same: one pass) and checks ``Σ_j (p_j/p) K_j = K``. Wall and CPU time (user + system of this
process) are printed; on a shared machine the CPU time is the steadier figure.

Usage::

    .venv/bin/python scripts/bench/bench_component_grm.py --n 2000 --p 20000 --m 4 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading

from pathlib import Path

import numpy as np

import bigmm
from bigmm.grm import default_block_size
from bigmm.tasks import total_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import wall_cpu  # noqa: E402


class Counting:
    """A genotype array that counts the slices read from it."""

    def __init__(self, arr):
        self.arr, self.shape, self.dtype, self.chunks = arr, arr.shape, arr.dtype, arr.chunks
        self.reads = 0
        self._lock = threading.Lock()

    def __getitem__(self, sel):
        with self._lock:
            self.reads += 1
        return self.arr[sel]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--p", type=int, default=20000)
    ap.add_argument("--m", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--ld-window-variants", type=int, default=None,
                    help="also time bigmm.ld_scores with this window (kept variants either side)")
    ap.add_argument("--chunks", type=int, nargs=2, default=(4096, 8192), metavar=("SAMPLES", "VARIANTS"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(1)
    f = rng.uniform(0.05, 0.5, args.p)
    G = rng.binomial(2, f, size=(args.n, args.p)).astype(np.int8)
    G[rng.random(G.shape) < 0.01] = -1
    split = rng.integers(0, args.m, args.p)
    with tempfile.TemporaryDirectory() as d:
        store = bigmm.create_store(f"{d}/c.zarr", G, chunks=tuple(args.chunks))
        del G
        std = bigmm.standardization(bigmm.variant_stats(store.genotypes))
        block = default_block_size(args.n, total_threads(), None, args.chunks[1],
                                   itemsize=np.dtype(args.dtype).itemsize)
        print(f"n = {args.n}, p = {args.p} ({std.n_kept} kept), m = {args.m}, dtype {args.dtype}, "
              f"{total_threads()} threads, sample blocks of {block}, store chunks {tuple(args.chunks)}")
        runs = {"grm": [], "components": []}
        if args.ld_window_variants is not None:
            runs["ld"] = []
        reads = {}
        last = {}
        for _ in range(args.repeats):
            for name in runs:
                arr = Counting(store.genotypes)
                if name == "grm":
                    fn = lambda: bigmm.grm(arr, std, block_size=block, dtype=args.dtype)  # noqa: E731
                elif name == "ld":
                    fn = lambda: bigmm.ld_scores(arr, std, window_variants=args.ld_window_variants,  # noqa: E731
                                                 dtype=args.dtype)
                else:
                    fn = lambda: bigmm.component_grms(arr, std, split, block_size=block,  # noqa: E731
                                                      dtype=args.dtype, min_variants=1)
                out, wall, cpu = wall_cpu(fn)
                runs[name].append((wall, cpu))
                reads[name] = arr.reads
                last[name] = out
        err = float(np.abs(last["components"].weighted_sum() - last["grm"]).max())
        for name, rs in runs.items():
            walls = [w for w, _ in rs]
            cpus = [c for _, c in rs]
            print(f"{name:<11} wall median {statistics.median(walls):7.2f} s (min {min(walls):.2f}, max "
                  f"{max(walls):.2f}); CPU median {statistics.median(cpus):7.2f} s; slices read {reads[name]}")
        ratio = statistics.median(w for w, _ in runs["components"]) / statistics.median(w for w, _ in runs["grm"])
        print(f"components / grm wall ratio {ratio:.2f}; max |Σ (p_j/p) K_j − K| = {err:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
