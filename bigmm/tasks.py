"""Running lists of Dask tasks with progress reports.

With a ``dask.distributed`` client active, tasks are submitted to it and a log
line with the percentage done and an ETA is written as they finish (at most
every ``interval`` seconds). Without one they run on the local threaded
scheduler.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Sequence

log = logging.getLogger("bigmm")


def current_client():
    """The default ``distributed`` client, or None."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return default_client()
    except ValueError:
        return None


def pause_point(point: str) -> None:
    """Test hook: wait here, until the process is killed or interrupted, when the environment
    variable ``BIGMM_TEST_PAUSE_AT`` equals ``point``.

    The fault tests (tests/test_faults.py) stop runs at chosen places with it. Points: a stage
    name (the stage starts, see ``pipeline.Runner.stage``) and ``DESC:N`` (N tasks of the
    task list that progress lines call DESC have finished on a distributed client, e.g.
    ``GRM 800x800 blocks:2`` or ``randomized spectrum pass 2/4:1``; tasks already running
    go on). With ``BIGMM_TEST_RESUME_WHEN`` naming a file, the run goes on once that file
    exists (a test changes something under the paused run). Unset, it costs one environment look-up.
    """
    if os.environ.get("BIGMM_TEST_PAUSE_AT") != point:
        return
    log.warning("test pause at %s (BIGMM_TEST_PAUSE_AT): waiting to be stopped", point)
    resume = os.environ.get("BIGMM_TEST_RESUME_WHEN")
    while not (resume and os.path.exists(resume)):
        time.sleep(0.1)
    log.warning("test pause at %s: resumed", point)


def fail_point(point: str) -> None:
    """Test hook: raise here when the environment variable ``BIGMM_TEST_FAIL_AT`` equals
    ``point`` (a stage name, or ``report-html``): the hardening tests make a stage fail with it.
    Unset, it costs one environment look-up."""
    if os.environ.get("BIGMM_TEST_FAIL_AT") == point:
        raise RuntimeError(f"test failure at {point} (BIGMM_TEST_FAIL_AT)")


def _progress_bar(desc: str, total: int):
    """A tqdm bar on an interactive terminal when INFO messages are shown; else None."""
    import sys

    if total < 2 or not sys.stderr.isatty() or log.getEffectiveLevel() > logging.INFO:
        return None
    if not any(getattr(h, "stream", None) is sys.stderr and h.level <= logging.INFO for h in log.handlers):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="task", leave=False, file=sys.stderr)


def total_threads() -> int:
    """Threads available to Dask tasks: the client's workers, else this machine's cores."""
    client = current_client()
    if client is not None:
        try:
            return max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()))
        except Exception:  # pragma: no cover - scheduler info is best effort
            pass
    return os.cpu_count() or 1


def run_tasks(tasks: Sequence, desc: str, interval: float = 10.0, scheduler: str | None = None,
              num_workers: int | None = None, combine: Callable | None = None):
    """Compute a list of ``dask.delayed`` objects.

    Without ``combine`` the results are returned as a list, in order. With it, each
    result is folded into a running value as soon as it arrives,
    ``state = combine(state, result)`` (``state`` starts as None), and the final
    state is returned: large partial results are then never all held at once.
    """
    import dask

    tasks = list(tasks)
    if not tasks:
        return [] if combine is None else None
    client = current_client() if scheduler is None else None
    t0 = time.perf_counter()
    state = None
    results: list = [None] * len(tasks)
    last = t0
    done = 0

    bar = _progress_bar(desc, len(tasks))

    def report(force=False):
        nonlocal last
        now = time.perf_counter()
        if bar is not None:
            bar.n = done
            bar.refresh()
            if done == len(tasks):
                bar.close()
        if force or now - last >= interval:
            el = now - t0
            # with a bar on the terminal, these lines still go to the run log
            (log.debug if bar is not None and not force else log.info)(
                "%s: %d/%d (%.0f%%), %.1f s elapsed, ETA %.0f s", desc, done, len(tasks),
                100.0 * done / len(tasks), el, el / max(done, 1) * (len(tasks) - done))
            last = now

    if client is None:
        kwargs = {"scheduler": scheduler or "threads"}
        if kwargs["scheduler"] == "threads":
            kwargs["num_workers"] = num_workers or total_threads()
        # batches of one task per thread: bounded memory when combining, and progress lines
        batch = kwargs.get("num_workers", 1) if combine is not None or len(tasks) > 8 else len(tasks)
        for b0 in range(0, len(tasks), batch):
            out = dask.compute(*tasks[b0:b0 + batch], **kwargs)
            for i, r in enumerate(out):
                if combine is None:
                    results[b0 + i] = r
                else:
                    state = combine(state, r)
            done += len(out)
            report(force=done == len(tasks))
        return results if combine is None else state
    from distributed import as_completed

    futures = client.compute(tasks)
    index = {f.key: i for i, f in enumerate(futures)}
    for fut in as_completed(futures):
        r = fut.result()
        if combine is None:
            results[index[fut.key]] = r
        else:
            state = combine(state, r)
        fut.release()
        done += 1
        report(force=done == len(tasks))
        pause_point(f"{desc}:{done}")
    return results if combine is None else state
