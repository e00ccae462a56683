"""Helpers shared by the benchmark scripts (scripts/bench.py, bench_grm.py, bench_scale.py).

- :class:`PeakRSS`: the maximum over time of the summed resident set size of a process and all its
  descendants (Dask nanny/worker processes), sampled by a background thread; optionally also the
  per-process high-water marks (``VmHWM``), whose sum bounds the true peak from above.
- :func:`timed`, :func:`summarize`: one measured call, and the median/min/max of several.
- :func:`machine_info`: CPU, memory, BLAS, library versions and the git state of ``bigmm/``.
- :func:`write_docs`: replace (or append) one ``## section`` of docs/benchmarks.md, leaving the
  other sections as they are.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
MIB = 1024.0 * 1024.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- memory

def _read_hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")  # "5": reset the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


class PeakRSS:
    """Max over time of the summed RSS of a process and all its descendants.

    ``pid`` defaults to this process; then its kernel high-water mark (VmHWM) is reset on entry
    and read on exit, because a LAPACK call holding the GIL can starve the sampling thread.
    For another process (``pid`` given, e.g. a benchmarked subprocess) nothing is reset.
    With ``timeline`` every sample is kept as ``(unix time, own RSS, others' RSS)``.
    With ``track_hwm`` every sample also reads each process's VmHWM; ``sum_of_peaks`` is then
    the sum over all processes seen of their peaks, an upper bound of the peak of the sum
    (the sampled ``max_sum`` is a lower bound).
    """

    def __init__(self, pid: int | None = None, interval: float = 0.2, track_hwm: bool = False,
                 timeline: bool = False):
        self.root = psutil.Process(pid or os.getpid())
        self.timeline: list | None = [] if timeline else None
        self.own = pid is None or pid == os.getpid()
        self.interval = interval
        self.track_hwm = track_hwm
        self.hwm_kib: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.max_sum = 0
        self.max_others = 0
        self.start_sum = 0
        self.n_samples = 0
        self.max_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> list:
        procs = [self.root]
        try:
            procs += self.root.children(recursive=True)
        except psutil.Error:
            pass
        return procs

    def _cpu(self) -> dict:
        out = {}
        for p in self._tree():
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return out

    def _sample(self) -> tuple[int, int, int]:
        procs = self._tree()
        own = others = 0
        for p in procs:
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            if p.pid == self.root.pid:
                own = rss
            else:
                others += rss
            if self.track_hwm:
                h = _read_hwm_kib(p.pid)
                if h is not None and h > self.hwm_kib.get(p.pid, 0):
                    self.hwm_kib[p.pid] = h
                    if p.pid not in self.names:
                        try:
                            self.names[p.pid] = " ".join(p.cmdline()[:4])[:120]
                        except psutil.Error:
                            self.names[p.pid] = "?"
        return own, others, len(procs)

    def _record(self) -> None:
        own, others, k = self._sample()
        if self.timeline is not None:
            self.timeline.append((time.time(), own, others))
        self.max_sum = max(self.max_sum, own + others)
        self.max_others = max(self.max_others, others)
        self.max_procs = max(self.max_procs, k)
        self.n_samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._record()

    def __enter__(self) -> "PeakRSS":
        self.hwm_ok = _reset_hwm(self.root.pid) if self.own else False
        self.cpu0 = self._cpu()
        own, others, k = self._sample()
        self.start_sum = own + others
        self._record()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (idempotent); called by ``__exit__``."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        try:
            self._record()
        except psutil.Error:
            pass
        try:
            cpu1 = self._cpu()
            self.cpu = sum(v - self.cpu0.get(pid, 0.0) for pid, v in cpu1.items())
        except psutil.Error:
            self.cpu = float("nan")
        hwm = _read_hwm_kib(self.root.pid) if self.hwm_ok else None
        # the driver's true peak (VmHWM) plus the largest sampled sum of the other processes
        self.peak = max(self.max_sum, (hwm * 1024 + self.max_others) if hwm else 0)

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def sum_of_peaks(self) -> int:
        return sum(self.hwm_kib.values()) * 1024


def timed(fn, label: str) -> dict:
    """Run ``fn()`` once; wall time and peak RSS (sum over the process tree)."""
    with PeakRSS() as mon:
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
    log(f"  {label}: {dt:.2f} s, CPU {mon.cpu:.1f} s, peak RSS {mon.peak / MIB:.0f} MiB "
        f"(start {mon.start_sum / MIB:.0f} MiB, {mon.max_procs} processes)")
    return {"seconds": dt, "cpu_s": mon.cpu, "peak_rss": mon.peak, "start_rss": mon.start_sum,
            "processes": mon.max_procs, "result": out}


def summarize(runs: list[dict]) -> dict:
    ts = [r["seconds"] for r in runs]
    rss = [r["peak_rss"] for r in runs]
    return {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "times_s": ts,
            "peak_rss_mib_median": statistics.median(rss) / MIB, "peak_rss_mib_max": max(rss) / MIB,
            "start_rss_mib_median": statistics.median([r["start_rss"] for r in runs]) / MIB,
            "cpu_s_median": statistics.median([r["cpu_s"] for r in runs]),
            "repeats": len(runs)}


# --------------------------------------------------------------------------- machine

def machine_info() -> dict:
    from threadpoolctl import threadpool_info

    import bigmm
    import dask
    import scipy
    import zarr

    model = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    blas = []
    for d in threadpool_info():
        if d.get("user_api") != "blas":
            continue
        e = {k: d.get(k) for k in ("internal_api", "version", "architecture", "num_threads",
                                    "threading_layer", "filepath")}
        e["package"] = ("numpy" if "numpy" in d["filepath"] else "scipy" if "scipy.libs" in d["filepath"]
                        else Path(d["filepath"]).name)
        blas.append(e)
    blas.sort(key=lambda e: e["package"] != "numpy")
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "bigmm"],
                               capture_output=True, text=True).stdout.split("\n")
        dirty = [ln[3:] for ln in dirty if ln.strip()]
    except OSError:
        commit, dirty = "?", []
    return {"nproc": os.cpu_count(), "cpu": model, "memory_gib": psutil.virtual_memory().total / 2**30,
            "blas": blas, "python": platform.python_version(), "bigmm": bigmm.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__, "dask": dask.__version__,
            "zarr": zarr.__version__, "loadavg_start": os.getloadavg(), "git_commit": commit,
            "bigmm_modified_files": dirty}


def machine_line(m: dict) -> str:
    """One sentence describing the machine and the software (for a docs section)."""
    blas = "; ".join(f"{b['package']}: {b['internal_api']} {b['version']} ({b['architecture']}, "
                     f"{b['threading_layer']})" for b in m["blas"])
    return (f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']:.1f} GiB RAM; BLAS "
            f"(threadpoolctl) {blas}; "
            f"bigmm {m['bigmm']} (git {m['git_commit']}"
            f"{', modified: ' + ', '.join(m['bigmm_modified_files']) if m['bigmm_modified_files'] else ''}), "
            f"numpy {m['numpy']}, scipy {m['scipy']}, dask {m['dask']}, zarr {m['zarr']}, "
            f"Python {m['python']}")


# --------------------------------------------------------------------------- docs

def write_docs(path: Path, section: str, body: str) -> None:
    """Replace the section ``## {section}`` of ``path`` by ``body`` (append it if absent)."""
    text = path.read_text() if path.exists() else (
        "# Benchmarks\n\nMeasured figures of bigmm, regenerated by the scripts named in each section.\n")
    head = f"## {section}"
    lines = text.splitlines()
    try:
        i = lines.index(head)
        j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
        new = lines[:i] + [head, "", body, ""] + lines[j:]
    except ValueError:
        new = lines + ["", head, "", body, ""]
    out = "\n".join(new).rstrip("\n") + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(out)
    log(f"wrote section '{section}' of {path}")
