"""A Dask client from the ``cluster:`` section of a run configuration.

The default is a ``LocalCluster`` of worker processes bound to 127.0.0.1 with
the dashboard off. BLAS threads per worker are set so that
``workers × threads_per_worker × BLAS threads ≤ cores``: the environment of the
worker processes fixes OpenBLAS/MKL/OpenMP threads before NumPy loads.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from .config import ClusterConfig
from .errors import ConfigError

log = logging.getLogger("bigmm")

BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def blas_threads_per_worker(workers: int, threads_per_worker: int, cores: int | None = None) -> int:
    cores = cores or os.cpu_count() or 1
    return max(1, cores // (workers * threads_per_worker))


@contextlib.contextmanager
def dask_client(cfg: ClusterConfig) -> Iterator:
    """Yield a ``distributed.Client`` made from the config, closed on exit."""
    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster

    if cfg.address:
        try:
            client = Client(cfg.address, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {cfg.address} ({exc}); "
                              f"start it or fix cluster.address") from None
        log.info("cluster: joined scheduler %s (%d workers)", cfg.address,
                 len(client.scheduler_info().get("workers", {})))
        try:
            yield client
        finally:
            client.close()
        return
    nblas = blas_threads_per_worker(cfg.workers, cfg.threads_per_worker)
    env = {k: str(nblas) for k in BLAS_ENV}
    cluster = LocalCluster(
        n_workers=cfg.workers, threads_per_worker=cfg.threads_per_worker, processes=True,
        host="127.0.0.1", dashboard_address="127.0.0.1:8787" if cfg.dashboard else "127.0.0.1:0",
        scheduler_kwargs={"dashboard": cfg.dashboard}, worker_dashboard_address=None,
        memory_limit=parse_bytes(cfg.memory_limit), env=env, silence_logs=logging.ERROR,
    )
    client = Client(cluster)
    log.info("cluster: local, %d workers x %d threads, %s each, BLAS threads %d%s", cfg.workers,
             cfg.threads_per_worker, cfg.memory_limit, nblas,
             f", dashboard {client.dashboard_link}" if cfg.dashboard else "")
    try:
        yield client
    finally:
        client.close()
        cluster.close()
