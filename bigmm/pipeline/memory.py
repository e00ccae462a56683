"""The memory policy of a run: the cluster configuration turned into bytes per task, the width
of each kind of pass, and the refusals, before anything starts, of settings whose tasks or driver
cannot hold what the run needs.

A worker process keeps :data:`TASK_SHARE` of its memory limit for tasks, less its own
:data:`WORKER_BASELINE_BYTES`, shared by its threads (:func:`task_memory`); each kind of task's
least need comes from the library's rules (:func:`bigmm.passes.least_task_bytes`,
:func:`bigmm.grm.block_bytes`, :func:`bigmm.spectrum.driver_bytes`). The benchmarks in
``scripts/`` import these rules rather than restate them.
"""

from __future__ import annotations

import numpy as np

from dask.utils import format_bytes, parse_bytes

from ..errors import InputError
from ..grm import block_bytes, default_block_size
from ..passes import PassPlan, least_task_bytes, plan_pass
from ..spectrum import (DEFAULT_POWER_ITERS, basis_width, check_driver_memory, driver_bytes, pass_columns,
                        subspace_width)
from .config import ClusterConfig, RunConfig


#: Resident memory of one Dask worker process before any task of a run: Python, distributed,
#: NumPy, zarr, SciPy and bigmm loaded, plus what a first run's tasks leave in the process
#: (modules loaded on first use, codecs, the allocator's retained pages). Measured with
#: ``scripts/bench/bench_worker_baseline.py`` (a local cluster started as ``bigmm run`` starts it,
#: the worker's RSS read with psutil): 114 MiB just started, 162-164 MiB after the tasks of a
#: 300 x 2000 cohort's variant statistics, GRM and randomized spectrum, with 1 or 8 threads
#: (Python 3.11, NumPy 2.4, zarr 3.1.6, distributed 2026.8, Linux x86-64); rounded up to 192 MiB
#: for other versions and platforms. The memory rule subtracts it from each worker's share.
WORKER_BASELINE_BYTES = 192 * 2**20

#: the share of a worker's memory limit its tasks may fill (Dask starts spilling to disk there)
TASK_SHARE = 0.6


def worker_process(cc: ClusterConfig) -> tuple[int, int] | None:
    """The memory limit (bytes) and threads of one worker process of the configured cluster;
    None when not known before it starts (a running scheduler's)."""
    if cc.backend == "local":
        return parse_bytes(cc.memory_limit), cc.threads_per_worker
    if cc.backend in ("slurm", "pbs", "sge"):
        jq = cc.jobqueue
        return parse_bytes(jq.memory) // jq.processes, max(1, jq.cores // jq.processes)
    return None


def task_memory(cc: ClusterConfig) -> int | None:
    """Bytes one task may use: 60% of a worker process's memory (Dask starts spilling there)
    less the process's own :data:`WORKER_BASELINE_BYTES`, shared by its threads (0 when the
    baseline leaves nothing; :func:`check_task_memory` refuses that).

    >>> from bigmm.pipeline.config import ClusterConfig
    >>> round(task_memory(ClusterConfig(memory_limit="4GiB", threads_per_worker=1)) / 2**30, 3)
    2.212
    """
    wp = worker_process(cc)
    if wp is None:
        return None
    limit, threads = wp
    return max(0, int((TASK_SHARE * limit - WORKER_BASELINE_BYTES) / threads))


def _memory_keys(cc: ClusterConfig) -> tuple[str, str]:
    """The config keys of a worker's memory and of its threads, for messages."""
    if cc.backend == "local":
        return "cluster.memory_limit", "cluster.threads_per_worker"
    return "cluster.jobqueue.memory", "cluster.jobqueue.cores"


def check_task_memory(cc: ClusterConfig, tasks: list[tuple[str, int, str]]) -> None:
    """Refuse, before the cluster starts, tasks the workers cannot hold.

    ``tasks``: per kind of task of the run, (what it is, bytes it needs at least, what else
    lowers that need). Each must fit :func:`task_memory`; the message names the worker's memory
    and threads settings, the baseline, and the settings that would fit (the memory limit these
    threads need, or the threads this memory limit allows).
    """
    wp = worker_process(cc)
    if wp is None:
        return
    limit, threads = wp
    mem_key, threads_key = _memory_keys(cc)
    limit_text = cc.memory_limit if cc.backend == "local" else cc.jobqueue.memory
    procs = 1 if cc.backend == "local" else cc.jobqueue.processes
    threads_text = f"{threads_key} = {threads * procs}"
    if procs > 1:
        limit_text += f" per job, {format_bytes(limit)} for each of its {procs} worker processes"
        threads_text += f" over {procs} processes, {threads} threads each"

    def least_limit(need: int) -> str:
        """The memory limit a worker needs for the baseline and one task of ``need`` per thread
        within its 60%, rounded up to a tenth of a GiB or a MiB, as a config value."""
        least = (WORKER_BASELINE_BYTES + threads * need) / TASK_SHARE * procs
        if least >= 2**30:
            return f"{np.ceil(least / 2**30 * 10) / 10:g}GiB"
        return f"{np.ceil(least / 2**20):.0f}MiB"

    if TASK_SHARE * limit <= WORKER_BASELINE_BYTES:
        what, need = max(((t[0], t[1]) for t in tasks), key=lambda t: t[1], default=("", 0))
        raise InputError(f"{mem_key} {limit_text} is too small for a Dask worker: a worker process holds "
                         f"about {format_bytes(WORKER_BASELINE_BYTES)} before any task (Python, Dask, NumPy, "
                         f"zarr and bigmm loaded), and bigmm keeps a worker within {TASK_SHARE:.0%} of its "
                         f"memory limit (Dask spills to disk beyond it), which leaves nothing for tasks; "
                         + (f"this run's largest task, {what}, needs {format_bytes(need)}, so with "
                            f"{threads_text} " if need else "")
                         + f"a worker needs {mem_key} of at least {least_limit(need)}; raise {mem_key}")
    mem = task_memory(cc)
    for what, need, other in tasks:
        if need <= mem:
            continue
        share = (f"{TASK_SHARE:.0%} of {mem_key} {limit_text}, where Dask starts spilling to disk, less "
                 f"about {format_bytes(WORKER_BASELINE_BYTES)} that a worker process holds before any task")
        if threads > 1:
            share += f", shared by {threads} threads: {threads_text}"
        fit = int((TASK_SHARE * limit - WORKER_BASELINE_BYTES) // need)
        todo = f"raise {mem_key} to at least {least_limit(need)}"
        if threads > 1 and fit >= 1:
            more = ("more cluster.workers keep the parallelism, each with its own memory_limit"
                    if cc.backend == "local" else "more worker jobs keep the parallelism")
            todo = (f"lower {threads_key} to {fit * procs} or fewer ({more}), or " + todo)
        raise InputError(f"{what} does not fit: it needs at least {format_bytes(need)} per task, but a task may use "
                         f"{format_bytes(mem)} ({share}); {todo}{other}")


def cluster_threads(cc: ClusterConfig) -> int | None:
    """Threads the configured cluster runs tasks on (None: not known before it starts)."""
    if cc.backend == "local":
        return cc.workers * cc.threads_per_worker
    if cc.backend in ("slurm", "pbs", "sge"):
        jq = cc.jobqueue
        return (jq.adaptive.maximum if jq.adaptive is not None else cc.workers) * jq.cores
    return None


def grm_block_size(cfg: RunConfig, n: int, threads: int, sample_chunk: int, variant_chunk: int) -> int:
    """Samples per GRM block: ``grm.block_size``, else the library's default for ``threads``
    threads within the memory a task may use."""
    if cfg.grm.block_size:
        return cfg.grm.block_size
    return default_block_size(n, threads, sample_chunk, variant_chunk, task_memory(cfg.cluster),
                              _grm_itemsize(cfg), counts=True)


def _grm_itemsize(cfg: RunConfig) -> int:
    """Bytes per value of the GRM's products (grm.dtype)."""
    return np.dtype(cfg.grm.dtype).itemsize


def _largest_block(mem: int, variant_chunk: int, itemsize: int) -> int:
    """The most samples of a GRM block whose task (:func:`~bigmm.grm.block_bytes` with counts)
    fits ``mem`` bytes: the root of ``a·b² + k·b = mem`` for the rule's coefficients (a = 20 and
    k = 10·c with float32 products), then down to the first that fits."""
    a = block_bytes(1, 0, itemsize, counts=True)  # the rule's coefficient of b²
    k = block_bytes(1, variant_chunk, itemsize, counts=True) - a  # and of b
    b = int((-k + np.sqrt(float(k) ** 2 + 4.0 * a * mem)) / (2 * a))
    while b > 0 and block_bytes(b, variant_chunk, itemsize, counts=True) > mem:
        b -= 1
    return b


def matrix_free_width(missing: np.ndarray, c: int, probes: int, deflate: int) -> int:
    """Vectors in the widest pass of the matrix-free REML (its first): per missing-value pattern
    of the phenotypes (``missing``: n x m, True where missing) its ``c`` fixed effects and its
    phenotypes, ``probes`` probe vectors and a ones vector, and for a pattern with missing
    samples the ``deflate`` deflation vectors restricted to its observed samples.

    >>> matrix_free_width(np.zeros((10, 3), bool), 2, 30, 0)
    36
    """
    m = missing.shape[1]
    patterns: dict[bytes, int] = {}
    packed = np.packbits(missing, axis=0)
    for j in range(m):
        key = packed[:, j].tobytes()
        patterns[key] = patterns.get(key, 0) + 1
    width = 0
    for key, m_g in patterns.items():
        width += c + m_g + probes + 1
        if any(key):
            width += deflate
    return width


def _check_settings(cfg: RunConfig, n: int, method: str, spectrum_needed: bool) -> None:
    """Refuse a randomized spectrum's rank outside 1..n − 1 (no memory could make it work)."""
    if method == "randomized" and spectrum_needed:
        sc = cfg.spectrum
        if not 0 < sc.rank < n:
            raise InputError(f"spectrum.rank must be between 1 and n − 1 = {n - 1} genotyped samples "
                             f"(got {sc.rank})")


def spectrum_pass(cfg: RunConfig, n: int) -> tuple[int, int, int]:
    """The randomized spectrum's subspace width l (:func:`~bigmm.spectrum.subspace_width`), its
    power iterations q and the vectors of its widest pass (:func:`~bigmm.spectrum.pass_columns`)
    for ``n`` samples."""
    sc = cfg.spectrum
    l = subspace_width(sc.rank, sc.oversample, n)
    q = DEFAULT_POWER_ITERS[sc.algorithm] if sc.power_iters is None else sc.power_iters
    return l, q, pass_columns(l, sc.probes, sc.algorithm)


def spectrum_pass_plan(cfg: RunConfig, n: int, variant_chunk: int, mem: int | None) -> PassPlan:
    """How a task of the randomized spectrum's widest pass over a variant chunk of
    ``variant_chunk`` columns is cut at ``mem`` bytes per task (:func:`~bigmm.passes.plan_pass`)."""
    _, _, width = spectrum_pass(cfg, n)
    return plan_pass(n, width, [(0, variant_chunk)], mem, 1, 4 if cfg.spectrum.dtype == "float32" else 8)


def _task_kinds(cfg: RunConfig, n: int, method: str, variant_chunk: int, grm_needed: bool,
                mem: int | None) -> tuple[list[tuple[str, int, str]], int | None]:
    """Each kind of task of the spectrum and the GRM with the least bytes it needs
    (:func:`~bigmm.passes.least_task_bytes`, :func:`~bigmm.grm.block_bytes`) and what else lowers
    that need, for :func:`check_task_memory`; and the samples of a GRM block (None without a GRM
    stage or a known task memory)."""
    itemsize = 4 if cfg.spectrum.dtype == "float32" else 8
    tasks: list[tuple[str, int, str]] = []
    if method == "randomized":
        sc = cfg.spectrum
        _, _, width = spectrum_pass(cfg, n)
        tasks.append((f"a randomized spectrum pass of {width} vectors (spectrum.rank {sc.rank} + oversample, "
                      f"and {sc.probes} probes)",
                      least_task_bytes(n, width, variant_chunk, itemsize),
                      "; or lower spectrum.rank or spectrum.probes"))
    grm_block = None
    if grm_needed and mem is not None:
        grm_block = min(cfg.grm.block_size or cfg.genotypes.chunks[0], n)
        fits = _largest_block(mem, variant_chunk, _grm_itemsize(cfg))
        tasks.append((f"a GRM block task ({grm_block} samples x variant chunk {variant_chunk})",
                      block_bytes(grm_block, variant_chunk, _grm_itemsize(cfg), counts=True),
                      f"; or set grm.block_size to {fits} samples or fewer" if fits >= 1 else ""))
    return tasks, grm_block


def _plan_figures(cfg: RunConfig, n: int, method: str, variant_chunk: int, spectrum_needed: bool,
                  mem: int | None, grm_block: int | None, n_grm_file: int | None) -> dict:
    """The figures of the memory plan of the spectrum and the GRM (vectors and bytes per task of
    each pass, passes over X, the driver's need), refusing a randomized spectrum's or a given
    GRM's driver that does not fit."""
    out: dict = {}
    if method == "randomized":
        sc = cfg.spectrum
        l, q, width = spectrum_pass(cfg, n)
        plan = spectrum_pass_plan(cfg, n, variant_chunk, mem)
        check_driver_memory(n, l, q, sc.algorithm)
        out.update(pass_vectors=width, pass_task_bytes=plan.task_bytes, subspace_width=l,
                   basis_width=basis_width(n, l, q, sc.algorithm),
                   basis_uncapped=(q + 1) * l if sc.algorithm == "krylov" else l,
                   passes_over_X=(q + 1 if sc.algorithm == "krylov" else q + 2),
                   driver_bytes=driver_bytes(n, l, q, sc.algorithm))
    if grm_block is not None:
        out["grm_block_task_bytes"] = block_bytes(grm_block, variant_chunk, _grm_itemsize(cfg), counts=True)
    if cfg.genotypes.grm is not None:
        out["driver_bytes"] = check_grm_memory(n_grm_file or n, n)
    elif method == "exact" and spectrum_needed:
        out["driver_bytes"] = 2 * 8 * n * n  # K and U for eigh
    out["task_memory_bytes"] = mem
    return out


def check_memory(cfg: RunConfig, n: int, method: str, variant_chunk: int, *, grm_needed: bool,
                 spectrum_needed: bool, model=None, design=None, n_grm_file: int | None = None) -> dict:
    """Refuse, before computing, a configuration whose tasks cannot fit their memory.

    Returns the plan checked: bytes per task of the widest pass and of a GRM block, and the
    driver's need, for the user to read (``bigmm check``). ``model``: the REML model's own need,
    ``model(cfg, n, method, design, variant_chunk, mem) -> (tasks, figures)`` (it refuses settings
    no memory could make work first; ``figures()`` gives its part of the plan once the tasks are
    known to fit; ``design``: the validated design, None when it did not read). ``n_grm_file``: the samples of a given GRM's file (``n`` are those analysed), checked by
    :func:`check_grm_memory`.
    """
    mem = task_memory(cfg.cluster)
    model_tasks, model_figures = model(cfg, n, method, design, variant_chunk, mem) if model else ([], dict)
    _check_settings(cfg, n, method, spectrum_needed)
    # each kind of task and the least it needs (passes.least_task_bytes), checked against the
    # workers' memory before anything is planned
    tasks, grm_block = _task_kinds(cfg, n, method, variant_chunk, grm_needed, mem)
    if cfg.genotypes.grm is None:  # a given GRM's run starts no workers
        check_task_memory(cfg.cluster, model_tasks + tasks)
    return {**model_figures(), **_plan_figures(cfg, n, method, variant_chunk, spectrum_needed, mem, grm_block,
                                             n_grm_file)}


def grm_driver_bytes(n_file: int, n: int) -> int:
    """Peak driver memory of a run on a given GRM of ``n_file`` samples, ``n`` of them analysed.

    Reading: the file's values (at most 4 bytes per entry beside the float64 K, or none for a
    float64 square file) and K as float64, then the analysed samples' K: 8·(1.5·n_file² + n²)
    bytes. The spectrum stage: that K, its eigenvectors and LAPACK's eigh workspace (2 n²
    doubles): 8·4·n² bytes. The larger of the two.

    >>> round(grm_driver_bytes(10_000, 10_000) / 2**30, 2)  # GiB at n = 10,000
    2.98
    """
    return 8 * max(3 * n_file * n_file // 2 + n * n, 4 * n * n)


def check_grm_memory(n_file: int, n: int, available: int | None = None) -> int:
    """Refuse a given GRM the driver cannot hold (:func:`grm_driver_bytes` against the memory
    available now, as for the randomized spectrum's driver); returns the bytes needed."""
    import psutil

    need = grm_driver_bytes(n_file, n)
    avail = psutil.virtual_memory().available if available is None else available
    if need > avail:
        raise InputError(f"genotypes.grm: a GRM of {n_file} samples ({n} analysed) needs about "
                         f"{format_bytes(need)} on the driver (n x n float64 matrices, 8·n² bytes each: "
                         f"the GRM as read, the analysed samples' K, its eigenvectors and the "
                         f"eigendecomposition's workspace) but {format_bytes(avail)} is available; run on a "
                         f"machine with more memory, or keep fewer samples (samples.keep)")
    return need


def matmul_rate(dtype: str = "float32", rows: int = 512, cols: int = 4096, repeats: int = 3) -> float:
    """Floating-point operations per second of a ``rows x cols`` product ``A Aᵀ`` with NumPy's
    BLAS on this machine (all its threads; best of ``repeats``, ~10 ms each on one core)."""
    import time

    a = np.random.default_rng(0).standard_normal((rows, cols)).astype(dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first warms BLAS's threads up
        t0 = time.perf_counter()
        a @ a.T
        best = min(best, time.perf_counter() - t0)
    return 2.0 * rows * rows * cols / max(best, 1e-9)


def components_driver_bytes(m: int, n: int, n_analysed: int | None = None, missing: bool = False) -> int:
    """Peak driver memory of the several-component REML on ``m`` dense GRMs of ``n`` samples
    (``n_analysed`` of them analysed, default all): the m GRMs (8·m·n² bytes, held by the
    component_grms stage and loaded by the reml stage) plus the fit's working set
    (:func:`bigmm.fit_components`: V and its inverse, two n_a × n_a arrays, and, when some
    samples are not analysed or a phenotype has missing values, copies of the m GRMs' analysed
    rows and columns, 8·m·n_a² more).

    >>> round(components_driver_bytes(4, 10_000) / 2**30, 2)  # GiB: 4 GRMs at n = 10,000
    4.47
    """
    na = n if n_analysed is None else n_analysed
    copies = m if (missing or na < n) else 0
    return 8 * m * n * n + 8 * (2 + copies) * na * na


def check_components_memory(m: int, n: int, n_analysed: int, missing: bool, available: int | None = None) -> int:
    """Refuse, before any pass, a several-component fit whose m dense GRMs and working set
    (:func:`components_driver_bytes`) do not fit the memory available now; returns the bytes."""
    import psutil

    need = components_driver_bytes(m, n, n_analysed, missing)
    avail = psutil.virtual_memory().available if available is None else available
    if need > avail:
        raise InputError(f"components: {m} components on {n} samples need about {format_bytes(need)} on the "
                         f"driver (m dense n x n GRMs, 8·m·n² bytes, and the REML's n x n work arrays) but "
                         f"{format_bytes(avail)} is available; use fewer components (coarser bins) or fewer "
                         f"samples, or run on a machine with more memory")
    return need


def components_block_size(cfg: RunConfig, n: int, m: int, threads: int, variant_chunk: int) -> int:
    """Samples per block of the component-GRM pass (:func:`bigmm.component_grms`'s default: the
    GRM's block, halved down to 256 until a task of m output blocks fits the memory a task may
    use), refusing a task that does not fit even then (:func:`check_task_memory`)."""
    from ..component_grm import component_block_bytes

    mem = task_memory(cfg.cluster)
    itemsize = np.dtype(cfg.grm.dtype).itemsize
    block = default_block_size(n, threads, None, variant_chunk, itemsize=itemsize)
    while mem and block > 256 and component_block_bytes(block, variant_chunk, m, itemsize) > mem:
        block = -(-block // 2)
    check_task_memory(cfg.cluster, [(f"a component-GRM block task ({m} components, {block} samples x variant "
                                     f"chunk {variant_chunk})", component_block_bytes(block, variant_chunk, m, itemsize),
                                     "; or use fewer components")])
    return block
