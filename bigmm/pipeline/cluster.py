"""A Dask client from the ``cluster:`` section of a run configuration.

Backends, all through ``dask.distributed``:

- ``local`` (default): a ``LocalCluster`` of worker processes bound to 127.0.0.1,
  dashboard off unless asked;
- ``address``: join a running scheduler (``tcp://`` or ``tls://`` with certificates);
- ``slurm`` / ``pbs`` / ``sge``: worker jobs through dask-jobqueue (the optional
  extra ``pip install 'bigmm[jobqueue]'``), scaled to ``workers`` jobs or adaptively.

BLAS threads per worker process are set so that ``threads × BLAS threads ≤ cores``
(the environment of worker processes fixes OpenBLAS/MKL/OpenMP threads before NumPy
loads). The scheduler drops a silent worker after ``worker_ttl`` seconds (Dask's
default of 5 minutes is long for batch jobs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
import time
from typing import Iterator

from .config import ClusterConfig
from ..errors import ConfigError, missing_reason

log = logging.getLogger("bigmm")

BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
JOBQUEUE_CLASSES = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster"}


def blas_threads_per_worker(workers: int, threads_per_worker: int, cores: int | None = None) -> int:
    cores = cores or os.cpu_count() or 1
    return max(1, cores // (workers * threads_per_worker))


try:
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPlugin
except ImportError:  # pragma: no cover - distributed is a dependency
    _WorkerPlugin = object


class BlasThreads(_WorkerPlugin):
    """A worker plugin that sets the worker's BLAS thread count with threadpoolctl."""

    idempotent = True

    def __init__(self, n: int):
        self.n = int(n)

    def setup(self, worker=None):
        from threadpoolctl import threadpool_limits

        threadpool_limits(self.n, user_api="blas")

    def teardown(self, worker=None):
        pass


class IgnoreInterrupt(_WorkerPlugin):
    """A worker plugin that makes the worker process ignore SIGINT (also after a restart).

    Ctrl-C in a terminal reaches every process of the foreground group: the driver stops the run
    and closes the cluster, so the workers need not react; left to themselves each printed a
    KeyboardInterrupt traceback of its own (60-86 lines for two workers)."""

    idempotent = True

    def setup(self, worker=None):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def teardown(self, worker=None):
        pass


@contextlib.contextmanager
def _interrupts_ignored():
    """SIGINT ignored while the worker processes are spawned: an ignored signal stays ignored in
    a child, across ``exec``, and Python then leaves it so, so Ctrl-C reaches the driver only.
    (Blocking it in this thread does not carry over: the workers are spawned from Dask's IO
    thread.) The cost: a Ctrl-C in the few seconds of the start is lost; restarted workers get
    :class:`IgnoreInterrupt`."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


#: the folder, in the run directory, that holds the worker jobs' TLS key and certificate while a
#: batch-system cluster runs (a shared file system: the jobs read them on their nodes)
TLS_DIR = ".bigmm-tls"


def make_jobqueue_cluster(cfg: ClusterConfig, scheduler_host: str | None = None, shared_dir: Path | None = None):
    """The dask-jobqueue cluster object for a ``slurm``/``pbs``/``sge`` backend (no job submitted).

    The scheduler and its workers talk mutual TLS with a key and certificate made for this
    cluster (``Security.temporary()``): another user's process that reaches the scheduler's
    port cannot run code in the workers. The worker jobs read the key from files in
    ``shared_dir`` (created with mode 0700; the files are 0600 and removed when the cluster
    closes); it must be on a file system the compute nodes see, as the run directory is.
    """
    try:
        import dask_jobqueue
    except ImportError:
        raise ConfigError(f"cluster.backend {cfg.backend!r} needs dask-jobqueue: "
                          f"pip install 'bigmm[jobqueue]'") from None
    jq = cfg.jobqueue
    threads = max(1, jq.cores // jq.processes)
    prologue = [f"export {k}=1" for k in BLAS_ENV] + list(jq.job_script_prologue)
    kwargs = dict(cores=jq.cores, memory=jq.memory, processes=jq.processes, walltime=jq.walltime,
                  job_extra_directives=list(jq.job_extra_directives), job_script_prologue=prologue,
                  local_directory=jq.local_directory, log_directory=jq.log_directory,
                  interface=jq.interface, job_name=f"bigmm-{cfg.backend}",
                  # the scheduler's HTTP server on localhost only, unless the dashboard is asked for
                  # (on 127.0.0.1 either way: reach it with an ssh tunnel, never from the network)
                  scheduler_options={"dashboard": cfg.dashboard,
                                     "dashboard_address": "127.0.0.1:8787" if cfg.dashboard else "127.0.0.1:0"})
    if jq.queue:
        kwargs["queue"] = jq.queue
    if jq.account:  # SGE calls it the project (-P)
        kwargs["project" if cfg.backend == "sge" else "account"] = jq.account
    if scheduler_host:
        kwargs["scheduler_options"]["host"] = scheduler_host
    from distributed.security import Security

    if shared_dir is None:
        raise ConfigError("a batch-system cluster needs a shared folder for its TLS key (the run directory)")
    shared_dir = Path(shared_dir)
    shared_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(shared_dir, 0o700)
    kwargs.update(security=Security.temporary(), shared_temp_directory=str(shared_dir))
    cls = getattr(dask_jobqueue, JOBQUEUE_CLASSES[cfg.backend])
    log.debug("jobqueue: %s with %d threads per worker process", cls.__name__, threads)
    return cls(**kwargs)


def _security(cfg: ClusterConfig):
    if cfg.tls is None:
        return None
    from distributed.security import Security

    for label, path in (("ca_file", cfg.tls.ca_file), ("cert", cfg.tls.cert), ("key", cfg.tls.key)):
        if path is not None and not path.exists():
            raise ConfigError(f"cluster.tls.{label}: {path} {missing_reason(path)}")
    return Security(tls_ca_file=str(cfg.tls.ca_file), tls_client_cert=str(cfg.tls.cert),
                    tls_client_key=str(cfg.tls.key) if cfg.tls.key else None, require_encryption=True)


@contextlib.contextmanager
def dask_client(cfg: ClusterConfig, run_dir: Path | None = None) -> Iterator:
    """Yield a ``distributed.Client`` made from the config, closed on exit (``run_dir``: where
    a batch-system cluster keeps its workers' TLS key while it runs; a temporary folder in the
    current directory when not given)."""
    import dask
    import distributed  # noqa: F401  (imported before the override below: it loads its config defaults)

    with dask.config.set({"distributed.scheduler.worker-ttl": f"{cfg.worker_ttl}s"}):
        if cfg.backend == "address":
            clients = _scheduler_client(cfg)
        elif cfg.backend in JOBQUEUE_CLASSES:
            clients = _jobqueue_client(cfg, run_dir)
        else:
            clients = _local_client(cfg)
        with clients as client:
            yield client


@contextlib.contextmanager
def _scheduler_client(cfg: ClusterConfig) -> Iterator:
    """A client of the running scheduler at ``cluster.address`` (it stays up on exit)."""
    from distributed import Client

    try:
        client = Client(cfg.address, timeout="20s", security=_security(cfg))
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {cfg.address} ({exc}); "
                          f"start it or fix cluster.address") from None
    log.info("cluster: joined scheduler %s (%d workers)", cfg.address,
             len(client.scheduler_info().get("workers", {})))
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def _jobqueue_client(cfg: ClusterConfig, run_dir: Path | None) -> Iterator:
    """A client of a batch-system cluster (dask-jobqueue), scaled or adaptive; the cluster and its
    TLS key folder removed on exit."""
    from distributed import Client

    shared = Path(run_dir or Path.cwd()) / TLS_DIR
    cluster = make_jobqueue_cluster(cfg, shared_dir=shared)
    jq = cfg.jobqueue
    if jq.adaptive is not None:
        cluster.adapt(minimum_jobs=jq.adaptive.minimum, maximum_jobs=jq.adaptive.maximum)
        how = f"adaptive {jq.adaptive.minimum}..{jq.adaptive.maximum} jobs"
    else:
        cluster.scale(jobs=cfg.workers)
        how = f"{cfg.workers} jobs"
    client = Client(cluster)
    log.info("cluster: %s, %s of %d cores / %s, walltime %s, scheduler %s (mutual TLS with a key "
             "of this run)", cfg.backend, how, jq.cores, jq.memory, jq.walltime, cluster.scheduler_address)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
        shutil.rmtree(shared, ignore_errors=True)


@contextlib.contextmanager
def _local_client(cfg: ClusterConfig) -> Iterator:
    """A client of a local cluster of worker processes on 127.0.0.1 (mutual TLS, BLAS threads set
    per worker), closed on exit."""
    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster
    from distributed.security import Security

    nblas = blas_threads_per_worker(cfg.workers, cfg.threads_per_worker)
    # a few seconds (measured 3-4 s for 2 workers on a busy 2-core machine: importing distributed
    # ~1 s, the run's TLS key 0.2 s, spawning the workers 2.7 s): say so before the silence
    log.info("cluster: starting a local cluster of %d worker processes x %d threads on 127.0.0.1 ...",
             cfg.workers, cfg.threads_per_worker)
    t0 = time.perf_counter()
    env = {k: str(nblas) for k in BLAS_ENV}
    saved = dict(os.environ)  # the nanny writes its pre-spawn variables into this process's env
    # mutual TLS with a key made for this run and held in memory: another local user (or
    # process) reaching the scheduler's port cannot submit work to the workers
    security = Security.temporary()
    with _interrupts_ignored():
        cluster = LocalCluster(
            security=security,
            n_workers=cfg.workers, threads_per_worker=cfg.threads_per_worker, processes=True,
            host="127.0.0.1", dashboard_address="127.0.0.1:8787" if cfg.dashboard else "127.0.0.1:0",
            scheduler_kwargs={"dashboard": cfg.dashboard}, worker_dashboard_address=None,
            memory_limit=parse_bytes(cfg.memory_limit), env=env,
            # a failed task reaches the driver as its exception (a BigmmError's message, or the
            # worker's traceback for a bug); the workers' "Compute Failed" dumps would repeat it
            silence_logs=logging.CRITICAL,
        )
    os.environ.clear()
    os.environ.update(saved)
    client = Client(cluster)
    # Dask's nanny sets the BLAS variables to 1 before the worker starts, and `env` arrives after
    # NumPy loaded: set the thread count in each worker with threadpoolctl (also after restarts)
    client.register_plugin(BlasThreads(nblas), name="bigmm-blas-threads")
    client.register_plugin(IgnoreInterrupt(), name="bigmm-ignore-interrupt")
    log.info("cluster: local, %d workers x %d threads, %s each, BLAS threads %d, scheduler %s "
             "(mutual TLS with a key of this run)%s; started in %.1f s", cfg.workers,
             cfg.threads_per_worker, cfg.memory_limit, nblas, cluster.scheduler_address,
             f", dashboard {client.dashboard_link}" if cfg.dashboard else "", time.perf_counter() - t0)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
