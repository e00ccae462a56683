"""Running lists of Dask tasks with progress reports.

With a ``dask.distributed`` client active, tasks are submitted to it and a log
line with the percentage done and an ETA is written as they finish (at most
every ``interval`` seconds). Without one they run on the local threaded
scheduler.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

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


def run_tasks(tasks: Sequence, desc: str, interval: float = 10.0, scheduler: str | None = None,
              num_workers: int | None = None) -> list:
    """Compute a list of ``dask.delayed`` objects and return their results in order."""
    import dask

    tasks = list(tasks)
    if not tasks:
        return []
    client = current_client() if scheduler is None else None
    t0 = time.perf_counter()
    if client is None:
        kwargs = {"scheduler": scheduler or "threads"}
        if num_workers is not None and kwargs["scheduler"] == "threads":
            kwargs["num_workers"] = num_workers
        results = list(dask.compute(*tasks, **kwargs))
        log.info("%s: %d tasks done in %.1f s", desc, len(tasks), time.perf_counter() - t0)
        return results
    from distributed import as_completed

    futures = client.compute(tasks)
    index = {f.key: i for i, f in enumerate(futures)}
    results: list = [None] * len(futures)
    last = t0
    done = 0
    for fut in as_completed(futures):
        results[index[fut.key]] = fut.result()
        done += 1
        now = time.perf_counter()
        if now - last >= interval or done == len(futures):
            el = now - t0
            log.info("%s: %d/%d (%.0f%%), %.1f s elapsed, ETA %.0f s", desc, done, len(futures),
                     100.0 * done / len(futures), el, el / done * (len(futures) - done))
            last = now
    return results
