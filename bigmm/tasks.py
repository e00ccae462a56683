"""Running lists of Dask tasks with progress reports.

With a ``dask.distributed`` client active, tasks are submitted to it, else they run on the
local threaded scheduler. Progress (:class:`Progress`): a log line with the percentage done
and an ETA as they finish (at most every ``interval`` seconds, and at the end), and on an
interactive terminal a live bar (the command line installs a :class:`TerminalHandler`).
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


#: attribute of the log records that are progress lines (a bar on the terminal shows the same)
PROGRESS = "bigmm_progress"


class TerminalHandler(logging.StreamHandler):
    """Log lines on an interactive terminal that progress bars share.

    Progress lines (records with the :data:`PROGRESS` attribute) are left out: the bar shows
    them. Other lines are written above the bars (tqdm clears and redraws them), so neither is
    torn. A file or pipe gets a plain :class:`logging.StreamHandler` instead (every progress
    line, no bars, no carriage returns); so does a run's ``run.log``.
    """

    def emit(self, record):
        if getattr(record, PROGRESS, False):
            return
        try:
            from tqdm import tqdm

            msg = self.format(record)
            with tqdm.external_write_mode(file=self.stream):
                self.stream.write(msg + self.terminator)
                self.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _bar_stream():
    """The terminal that progress bars go to: that of a :class:`TerminalHandler` of the bigmm
    logger showing INFO messages on a tty; None when there is none (no bars)."""
    if log.getEffectiveLevel() > logging.INFO:
        return None
    for h in log.handlers:
        if isinstance(h, TerminalHandler) and h.level <= logging.INFO:
            stream = h.stream
            try:
                if stream.isatty():
                    return stream
            except (AttributeError, ValueError):  # a closed or unusual stream: no bar
                pass
    return None


class Progress:
    """Progress of a job of ``total`` steps: a live bar with rate and ETA on a terminal (see
    :class:`TerminalHandler`), and log lines (percentage, elapsed, ETA) at most every
    ``interval`` seconds and at the end, for logs and batch jobs.

    The bar is left on the screen when done (its last state says how long the job took).
    """

    def __init__(self, desc: str, total: int, unit: str = "task", interval: float = 10.0):
        self.desc, self.total, self.unit, self.interval = desc, int(total), unit, interval
        self.t0 = self.last = time.perf_counter()
        self.done = 0
        stream = _bar_stream() if total >= 1 else None
        self.bar = None
        if stream is not None:
            from tqdm import tqdm

            # a pseudo-terminal that reports no size (0 x 0: one nobody sized, as under some job
            # runners, IDEs and `script`) makes tqdm hide every bar (it takes -1 rows): then 80 x 24
            try:
                size = os.get_terminal_size(stream.fileno())
                sized = size.columns > 0 and size.lines > 0
            except (AttributeError, OSError, ValueError):
                sized = False
            self.bar = tqdm(total=self.total, desc=desc, unit=unit, leave=True, file=stream,
                            dynamic_ncols=sized, ncols=None if sized else 80, nrows=None if sized else 24,
                            mininterval=0.2)

    def update(self, done: int) -> None:
        """``done`` steps of ``total`` have finished."""
        self.done = done
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        if done >= self.total or now - self.last >= self.interval:
            el = now - self.t0
            # the format scripts/bench parses ("DESC: 3/3 (100%), 1.2 s elapsed")
            log.info("%s: %d/%d%s (%.0f%%), %.1f s elapsed, ETA %.0f s", self.desc, done, self.total,
                     "" if self.unit == "task" else f" {self.unit}s", 100.0 * done / max(self.total, 1), el,
                     el / max(done, 1) * (self.total - done), extra={PROGRESS: True})
            self.last = now
        if done >= self.total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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
              num_workers: int | None = None, combine: Callable | None = None,
              costs: Sequence[float] | None = None):
    """Compute a list of ``dask.delayed`` objects.

    Without ``combine`` the results are returned as a list, in order. With it, each
    result is folded into a running value as soon as it arrives,
    ``state = combine(state, result)`` (``state`` starts as None), and the final
    state is returned: large partial results are then never all held at once.

    ``costs`` (relative work of each task): the tasks start longest first (each a
    distributed priority), so that a short task, not a long one, is what a worker takes
    last. Without it a client starts independent tasks in an arbitrary order: of a GRM's
    two diagonal blocks and one off-diagonal block (twice their work) on two workers,
    either worker may be left the long one last (at n = 10,000: 28.7 s against 23.4 s).
    On a local cluster they are also sent one per worker thread at a time, each next one as
    a task finishes (:func:`_fixed_local`).
    """
    tasks = list(tasks)
    if not tasks:
        return [] if combine is None else None
    client = current_client() if scheduler is None else None
    progress = Progress(desc, len(tasks), interval=interval)
    try:
        return _run(tasks, desc, client, scheduler, num_workers, combine, progress, costs)
    finally:
        progress.close()  # also when a task fails: the bar stops where it was


def _longest_first(costs: Sequence[float]) -> list[int]:
    """The task indices in decreasing ``costs``, ties in list order.

    >>> _longest_first([1.0, 2.0, 1.0])
    [1, 0, 2]
    """
    return sorted(range(len(costs)), key=lambda i: (-costs[i], i))


def _fixed_local(client) -> bool:
    """Whether ``client``'s cluster is a local one (its workers all started with it), where
    sending one task per worker thread at a time keeps them all busy; a batch system's or an
    outside scheduler's workers may come later (or be added for the tasks waiting)."""
    try:
        from distributed import LocalCluster

        return isinstance(getattr(client, "cluster", None), LocalCluster)
    except Exception:  # noqa: BLE001 - unknown: send all at once
        return False


def _run(tasks, desc, client, scheduler, num_workers, combine, progress, costs=None):
    import dask

    state = None
    results: list = [None] * len(tasks)
    done = 0
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
            progress.update(done)
        return results if combine is None else state
    from distributed import as_completed

    left = iter(())
    if costs is None:
        futures = client.compute(tasks)
        index = {f.key: i for i, f in enumerate(futures)}
    elif not _fixed_local(client):  # longest first, each with a priority in that order (a task sent
        # first may start before the next one arrives; the priorities order those that wait)
        order = _longest_first(costs)
        futures = [client.compute(tasks[i], priority=len(order) - rank) for rank, i in enumerate(order)]
        index = {f.key: i for f, i in zip(futures, order)}
    else:  # on a local cluster (all its workers there): longest first, one task per worker thread,
        # the next sent as one finishes. Sent at once, a task placed behind a long one waited
        # there until the scheduler moved it (GRM n = 10,000: 1.1 s of a worker idle, 2 builds in 6)
        order = iter(_longest_first(costs))
        index = {}

        def send():
            i = next(order, None)
            if i is None:
                return None
            f = client.compute(tasks[i])
            index[f.key] = i
            return f

        futures = [f for f in (send() for _ in range(total_threads())) if f is not None]
        left = iter(send, None)
    pending = as_completed(futures)
    for fut in pending:
        nxt = next(left, None)
        if nxt is not None:
            pending.add(nxt)
        r = fut.result()
        if combine is None:
            results[index[fut.key]] = r
        else:
            state = combine(state, r)
        fut.release()
        done += 1
        progress.update(done)
        pause_point(f"{desc}:{done}")
    return results if combine is None else state
