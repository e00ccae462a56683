import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))


class MemoryCheckpoint:
    """Keeps the last state as the run layer's file does (JSON metadata, NumPy arrays)."""

    def __init__(self):
        self.state = None

    def save(self, state):
        self.state = {"meta": json.loads(json.dumps(state["meta"])),
                      "arrays": {k: np.array(v) for k, v in state["arrays"].items()}}

    def load(self):
        return self.state


def random_genotypes(rng, n, p, missing=0.02, maf=(0.05, 0.5)):
    """Allele counts 0/1/2 with -1 for missing, written independently of bigmm.simulate."""
    f = rng.uniform(*maf, size=p)
    G = rng.binomial(2, f, size=(n, p)).astype(np.int8)
    if missing:
        G[rng.random((n, p)) < missing] = -1
    return G


@pytest.fixture(scope="session", autouse=True)
def _one_blas_thread_in_the_test_process():
    """One BLAS thread in the pytest process (worker processes and CLI subprocesses set their own).

    The tests' matrices are small, so a second BLAS thread gains little; on a busy 2-core machine
    OpenBLAS threads that spin waiting for a core made small dense loops (e.g. 150 inversions of
    149 x 149 in test_loo) take 20 s instead of 0.2 s.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def local_cluster(n_workers=2, threads_per_worker=1):
    """A real dask.distributed LocalCluster of worker processes on 127.0.0.1 (random ports)."""
    from distributed import LocalCluster

    return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                        host="127.0.0.1", dashboard_address="127.0.0.1:0",
                        scheduler_kwargs={"dashboard": False}, worker_dashboard_address=None)
