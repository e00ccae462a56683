#!/usr/bin/env python
"""Benchmark: one ComponentsOperator pass (every K_j at once) against one GrmOperator.apply pass.

Simulates a cohort (n x p, allele frequencies U[0.05, 0.5], 1% missing calls, seed 1) into a
cohort store in a temporary folder, splits the variants at random into m components (every chunk
holds every component: the case where each chunk's columns are reordered), and times, alternating
and ``--repeats`` times each (median, min, max), on the local threaded Dask scheduler:

``grm``         bigmm.GrmOperator(store.genotypes, std).apply(M): K M, one pass;
``components``  bigmm.ComponentsOperator(store.genotypes, std, split).apply(M): K_j M for every j.

with the same block M (n x b) and product dtype. Checks Σ_j (p_j / p) K_j M = K M. Wall and CPU
time (user + system of this process) are printed; on a shared machine the CPU time is steadier.

Usage::

    .venv/bin/python scripts/bench/bench_component_pass.py --n 10000 --p 20000 --m 8 --b 64 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile

from pathlib import Path

import numpy as np

import bigmm
from bigmm.tasks import total_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import wall_cpu  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--p", type=int, default=20000)
    ap.add_argument("--m", type=int, default=8)
    ap.add_argument("--b", type=int, default=64, help="columns of the block of vectors")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--chunks", type=int, nargs=2, default=(10000, 2048), metavar=("SAMPLES", "VARIANTS"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(1)
    f = rng.uniform(0.05, 0.5, args.p)
    G = rng.binomial(2, f, size=(args.n, args.p)).astype(np.int8)
    G[rng.random(G.shape) < 0.01] = -1
    split = rng.integers(0, args.m, args.p)
    M = rng.normal(size=(args.n, args.b))
    with tempfile.TemporaryDirectory() as d:
        store = bigmm.create_store(f"{d}/c.zarr", G, chunks=tuple(args.chunks))
        del G
        std = bigmm.standardization(bigmm.variant_stats(store.genotypes))
        grm = bigmm.GrmOperator(store.genotypes, std, dtype=args.dtype)
        comp = bigmm.ComponentsOperator(store.genotypes, std, split, dtype=args.dtype, min_variants=1)
        print(f"n = {args.n}, p = {args.p} ({std.n_kept} kept), m = {args.m}, b = {args.b}, dtype {args.dtype}, "
              f"{total_threads()} threads, store chunks {tuple(args.chunks)}; plans: grm {grm.plan(args.b).describe()}; "
              f"components {comp.plan(args.b).describe()}")
        runs = {"grm": [], "components": []}
        last = {}
        for _ in range(args.repeats):
            for name, op in (("grm", grm), ("components", comp)):
                out, wall, cpu = wall_cpu(lambda: op.apply(M)[0])
                runs[name].append((wall, cpu))
                last[name] = out
        w = comp.n_variants / comp.n_variants.sum()
        err = float(np.abs(np.tensordot(w, last["components"], axes=1) - last["grm"]).max())
        for name, rs in runs.items():
            walls = [w for w, _ in rs]
            cpus = [c for _, c in rs]
            print(f"{name:<11} wall median {statistics.median(walls):7.2f} s (min {min(walls):.2f}, max "
                  f"{max(walls):.2f}); CPU median {statistics.median(cpus):7.2f} s")
        wr = statistics.median(w for w, _ in runs["components"]) / statistics.median(w for w, _ in runs["grm"])
        cr = statistics.median(c for _, c in runs["components"]) / statistics.median(c for _, c in runs["grm"])
        print(f"components / grm: wall ratio {wr:.2f}, CPU ratio {cr:.2f}; max |Σ (p_j/p) K_j M − K M| = {err:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
