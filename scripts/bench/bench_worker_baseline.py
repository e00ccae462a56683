"""Memory of a Dask worker process before any task of a run: the baseline of the memory check.

Starts a local cluster the way ``bigmm run`` does (:func:`bigmm.pipeline.cluster.dask_client`:
worker processes, mutual TLS, the BLAS-threads plugin) and reads the resident set size (RSS) of
its worker process with psutil at three points:

1. just started (Python, distributed, NumPy);
2. after importing what the run's tasks import in a worker (bigmm's library modules, zarr,
   SciPy's linear algebra, the PLINK reader);
3. after a small run's tasks went through that worker (variant statistics, a GRM in blocks and
   a randomized spectrum on a 300 x 2000 simulated cohort), the tasks' data released: what the
   process keeps (modules loaded on first use, codecs, the allocator's retained pages).

Prints the three figures in MiB for REPEATS fresh clusters and their maximum. The largest is
the baseline the memory check adds (``bigmm.pipeline.memory.WORKER_BASELINE_BYTES``).

    PYTHONPATH=$PWD python scripts/bench/bench_worker_baseline.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
from pathlib import Path


def worker_rss() -> int:
    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss


def import_task_modules() -> int:
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401
    import zarr  # noqa: F401

    import bigmm  # noqa: F401
    import bigmm.genotypes  # noqa: F401
    import bigmm.grm  # noqa: F401
    import bigmm.io.plink  # noqa: F401
    import bigmm.mfreml  # noqa: F401
    import bigmm.passes  # noqa: F401
    import bigmm.spectrum  # noqa: F401
    import bigmm.store  # noqa: F401
    return worker_rss()


def small_run(d: Path) -> None:
    import bigmm

    bigmm.simulate(300, 2000, h2=0.5, seed=1, out_plink=d / "c")
    store = bigmm.ingest_plink(d / "c", d / "c.zarr", chunks=(128, 512))
    stats = bigmm.variant_stats(store.to_dask())
    std = bigmm.standardization(stats, "gcta")
    K = bigmm.grm(store.genotypes, std)
    del K
    bigmm.randomized_spectrum(bigmm.GrmOperator(store.genotypes, std), 20)


def one(threads: int) -> tuple[int, int, int]:
    from bigmm.pipeline.cluster import dask_client
    from bigmm.pipeline.config import ClusterConfig

    cc = ClusterConfig(workers=1, threads_per_worker=threads, memory_limit="4GiB")
    with tempfile.TemporaryDirectory(prefix="bigmm-baseline-") as tmp, dask_client(cc) as client:
        (start,) = client.run(worker_rss).values()
        (imported,) = client.run(import_task_modules).values()
        small_run(Path(tmp))
        (after,) = client.run(worker_rss).values()
    return start, imported, after


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import numpy, zarr, distributed  # noqa: E401

    print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}, numpy {numpy.__version__}, "
          f"zarr {zarr.__version__}, distributed {distributed.__version__}; threads per worker {args.threads}")
    mib = 2 ** 20
    rows = [one(args.threads) for _ in range(args.repeats)]
    print("worker RSS, MiB: started | task modules imported | after a small run")
    for r in rows:
        print("  " + " | ".join(f"{v / mib:.0f}" for v in r))
    print("  max: " + " | ".join(f"{max(r[i] for r in rows) / mib:.0f}" for i in range(3)))


if __name__ == "__main__":
    main()
