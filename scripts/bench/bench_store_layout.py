#!/usr/bin/env python
"""The two genotype layouts of a cohort store, int8 and 2bit, side by side: bytes on disk and the
time to read and decode every chunk through Zarr, as a pass does.

One simulated cohort (``bigmm.simulate``: 10 populations, F_ST 0.01, a fraction --missing of the
calls missing) is written as an int8 store, then converted into a 2-bit store
(``bigmm.convert_store``, which reads back and compares every chunk). For each store: the bytes of
its genotype chunk files, and the time to read every chunk of the genotypes (``arr[region]``, one
thread, the store's chunks: file read, CRC32C, zstd, then the bytes codec or the 2-bit unpacking)
as wall time and CPU time of the process; the median (and the minimum, the steadier figure on a
loaded machine) of --repeats runs, the layouts in turn within each repeat.

Usage::

    nice python scripts/bench/bench_store_layout.py                      # n = p = 10,000, 1% missing
    nice python scripts/bench/bench_store_layout.py --n 2000 --p 4000 --repeats 1   # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, du, log  # noqa: E402


def read_all(store) -> tuple[float, float, int]:
    """Wall and CPU seconds to read and decode every chunk of ``store``'s genotypes; genotypes read."""
    G = store.group["genotypes"]
    n, p = G.shape
    rc, cc = G.chunks
    w0, c0 = time.perf_counter(), time.process_time()
    count = 0
    for i in range(0, n, rc):
        for j in range(0, p, cc):
            count += G[i:i + rc, j:j + cc].size
    return time.perf_counter() - w0, time.process_time() - c0, count


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--p", type=int, default=10_000)
    ap.add_argument("--missing", type=float, default=0.01, help="fraction of genotype calls missing")
    ap.add_argument("--chunks", type=int, nargs=2, default=(2048, 8192))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    import bigmm

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        bigmm.simulate(args.n, args.p, seed=args.seed, n_pops=10, fst=0.01, genotype_missing=args.missing,
                       out_zarr=f"{d}/int8.zarr", chunks=tuple(args.chunks), layout="int8")
        log(f"simulated the int8 store in {time.perf_counter() - t0:.1f} s")
        t0, c0 = time.perf_counter(), time.process_time()
        bigmm.convert_store(f"{d}/int8.zarr", f"{d}/2bit.zarr", "2bit")
        log(f"converted to 2bit (every chunk read back and compared) in {time.perf_counter() - t0:.1f} s, "
            f"{time.process_time() - c0:.1f} CPU s")
        stores = {lay: bigmm.open_store(f"{d}/{lay}.zarr") for lay in ("int8", "2bit")}
        assert np.array_equal(stores["int8"].genotypes[:, :100], stores["2bit"].genotypes[:, :100])
        runs = {lay: [] for lay in stores}
        for _ in range(args.repeats):
            for lay, st in stores.items():
                runs[lay].append(read_all(st))
        g = args.n * args.p
        print(f"`{command_line(__file__, argv)}` · n = {args.n:,} × p = {args.p:,} ({g:.2e} genotypes, "
              f"{args.missing:.0%} missing) · chunks {args.chunks[0]} × {args.chunks[1]} · median of "
              f"{args.repeats} (one thread)")
        print("| layout | bytes on disk | bits per genotype | read + decode, wall | CPU (min) | ns per genotype (CPU, min) |")
        print("|---|---|---|---|---|---|")
        for lay, st in stores.items():
            size = du(Path(st.path) / "genotypes")
            wall = statistics.median(r[0] for r in runs[lay])
            cpu = statistics.median(r[1] for r in runs[lay])
            low = min(r[1] for r in runs[lay])
            print(f"| {lay} | {size / 2**20:.1f} MiB | {8 * size / g:.2f} | {wall:.2f} s | {cpu:.2f} s ({low:.2f} s) | "
                  f"{1e9 * cpu / g:.2f} ({1e9 * low / g:.2f}) |")


if __name__ == "__main__":
    main()
