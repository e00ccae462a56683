"""The one helper module of the benchmarks (bench.py, bench_grm.py, bench_scale.py) and the studies
(scripts/studies/*.py put this folder on sys.path): measuring, the machine, Markdown, peers,
the pipeline's settings, cohorts, spectra and end-to-end runs.

Import it before any Dask cluster starts: :data:`ENV0` is the environment as it was then (dask's
nanny leaks ``OPENBLAS_NUM_THREADS=1`` into ``os.environ``, which a peer must not inherit).

- :class:`PeakRSS`: the maximum over time of the summed resident set size of a process and all its
  descendants (Dask nanny/worker processes), sampled by a background thread; optionally also the
  per-process high-water marks (``VmHWM``), whose sum bounds the true peak from above.
- :func:`timed`, :func:`summarize`: one measured call, and the median/min/max of several;
  :func:`alternate`: several methods run in turn, repeat after repeat.
- :func:`machine_info`, :func:`machine_line`: CPU, memory, BLAS, versions, git state of ``bigmm/``.
- :func:`md_table`, :func:`write_docs`: a Markdown table; one ``## section`` of a docs page.
- Peer comparisons with a child process per bigmm run (bench_components_bolt.py, bench_rg_bolt.py):
  :func:`comparison_parser`, :func:`parse_comparison_args` and :func:`invocation` (their options
  and record), :func:`bolt_exe`, :func:`run_bolt` (BOLT-LMM under ``/usr/bin/time -v``),
  :func:`bigmm_child` and :func:`run_child` (the child's side and the parent's; :func:`run_measured`
  times any such process), :func:`alternate_into` and :func:`merge_results` (runs saved as they
  end), :func:`report_results`, :func:`tool_runs`, :func:`med`, :func:`fmt`, :func:`bolt_said`,
  :func:`runs_line` (the report); :class:`CountingOperator` counts an operator's passes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[2]
MIB = 1024.0 * 1024.0
ENV0 = dict(os.environ)
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def command_line(script: str, argv) -> str:
    """How this run was started, for a report: ``python scripts/... ARGS``."""
    rel = Path(script).resolve().relative_to(REPO)
    return f"python {rel} " + shlex.join(sys.argv[1:] if argv is None else list(argv))


# --------------------------------------------------------------------------- memory and time

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
        self.max_sum = self.max_others = self.start_sum = self.n_samples = self.max_procs = 0
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
        own, others, _ = self._sample()
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


def time_v(path: Path) -> dict:
    """User + sys CPU, wall and max RSS from ``/usr/bin/time -v``'s report (a peer run under it)."""
    kv = dict(ln.strip().rsplit(": ", 1) for ln in path.read_text().splitlines() if ": " in ln)
    *hm, s = kv["Elapsed (wall clock) time (h:mm:ss or m:ss)"].split(":")
    wall = float(s) + sum(float(x) * 60 ** (len(hm) - i) for i, x in enumerate(hm))
    return {"time_v_wall_s": wall, "cpu_s": float(kv["User time (seconds)"]) + float(kv["System time (seconds)"]),
            "peak_rss_mib": int(kv["Maximum resident set size (kbytes)"]) / 1024}


def wall_cpu(fn):
    """``(fn(), wall seconds, CPU seconds of this process)``: a step timed inside one process."""
    w0, c0 = time.perf_counter(), sum(os.times()[:2])
    out = fn()
    return out, time.perf_counter() - w0, sum(os.times()[:2]) - c0


def summarize(runs: list[dict], **extra) -> dict:
    """Median, min and max of the timed records ``runs``; ``extra`` is added as it is."""
    ts = [r["seconds"] for r in runs]
    rss = [r["peak_rss"] for r in runs]
    return {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "times_s": ts,
            "peak_rss_mib_median": statistics.median(rss) / MIB, "peak_rss_mib_max": max(rss) / MIB,
            "start_rss_mib_median": statistics.median([r["start_rss"] for r in runs]) / MIB,
            "cpu_s_median": statistics.median([r["cpu_s"] for r in runs]), "repeats": len(runs), **extra}


def alternate(repeats: int, methods: dict, failures: dict | None = None) -> dict:
    """Run each method once per repeat, in turn (pairs see similar load on a shared machine);
    ``methods[name](rep)`` returns one timed record. Returns name -> list of records.

    A method whose name does not start with "bigmm" and that raises is recorded in ``failures``
    (name -> message) and not run again; with ``failures`` None every exception propagates."""
    runs: dict = {m: [] for m in methods}
    for rep in range(repeats):
        log(f"repeat {rep + 1}/{repeats}")
        for m, fn in methods.items():
            if failures is not None and m in failures:
                continue
            try:
                r = fn(rep)
            except Exception as exc:  # noqa: BLE001 - a failing peer is reported, not fatal
                if failures is None or m.startswith("bigmm"):
                    raise
                failures[m] = f"{type(exc).__name__}: {str(exc)[:300]}"
                log(f"  {m} failed: {failures[m]}")
                continue
            r.pop("result", None)
            runs[m].append(r)
    return {m: rr for m, rr in runs.items() if rr}


def task_stream_summary(data: list, t_submit: float | None = None) -> dict:
    """Compute tasks of a ``distributed.get_task_stream`` record: count, makespan (first start to
    last stop), busy seconds per worker, task durations and worker utilization; with
    ``t_submit`` (unix time) also the delay from submission to the first task."""
    per_worker: dict = {}
    starts, stops, durs = [], [], []
    for rec in data:
        for ss in rec.get("startstops", ()):
            if ss.get("action") == "compute":
                d = ss["stop"] - ss["start"]
                w = rec.get("worker", "?")
                per_worker[w] = per_worker.get(w, 0.0) + d
                starts.append(ss["start"])
                stops.append(ss["stop"])
                durs.append(d)
    if not durs:
        return {}
    span = max(stops) - min(starts)
    busy = sum(per_worker.values())
    out = {"tasks": len(durs), "makespan_s": span, "busy_s": busy, "busy_s_per_worker": sorted(per_worker.values()),
           "task_s": sorted(durs), "utilization": busy / (span * max(1, len(per_worker)))}
    if t_submit is not None:
        out["submit_to_first_task_s"] = min(starts) - t_submit
    return out


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
    # content hash of the bigmm sources as imported (the tree may change while a long run goes on)
    h = hashlib.sha256()
    pkg = Path(bigmm.__file__).resolve().parent
    for f in sorted(pkg.rglob("*.py")):
        h.update(str(f.relative_to(pkg)).encode())
        h.update(f.read_bytes())
    return {"host": platform.node(), "os": f"{platform.system()} {platform.release()}", "nproc": os.cpu_count(),
            "cpu": model, "memory_gib": psutil.virtual_memory().total / 2**30, "blas": blas,
            "python": platform.python_version(), "bigmm": bigmm.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "dask": dask.__version__, "zarr": zarr.__version__,
            "loadavg_start": os.getloadavg(), "git_commit": commit, "bigmm_modified_files": dirty,
            "bigmm_sha256": h.hexdigest()[:16]}


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


# --------------------------------------------------------------------------- Markdown

def md_table(header: list[str], rows: list[list], align: str = "") -> str:
    """A Markdown table. ``align``: one letter per column, ``l`` or ``r`` (default: the first
    column left, the others right); a cell None is written ``—``."""
    align = (align or "l").ljust(len(header), "r")[:len(header)]
    cell = lambda v: "—" if v is None else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def fmt_time(s: dict | None, digits: int = 1) -> str:
    """``median (min–max)`` of a :func:`summarize` record, in seconds."""
    if not s:
        return "—"
    if s.get("repeats", 2) < 2:
        return f"{s['median_s']:.{digits}f} s"
    return f"{s['median_s']:.{digits}f} s ({s['min_s']:.{digits}f}–{s['max_s']:.{digits}f})"


def add_docs_args(ap) -> None:
    """--write-docs and --docs (the page a report's section goes to)."""
    ap.add_argument("--write-docs", action="store_true", help="write the section to --docs")
    ap.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md", help="default docs/benchmarks.md")


def publish(section: str, body: str, docs: Path | None) -> None:
    """Print a report under its heading and, with ``docs``, write it as that page's section."""
    print(f"\n## {section}\n\n{body}")
    if docs is not None:
        write_docs(docs, section, body)


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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(new).rstrip("\n") + "\n")
    log(f"wrote section '{section}' of {path}")


# --------------------------------------------------------------------------- peers

def peer_exe(name: str) -> str | None:
    """The peer's executable, or None (and a plain message: its rows are skipped, the rest runs)."""
    exe = shutil.which(name)
    if exe is None:
        log(f"{name} not found on PATH (Debian: apt-get install -y {Path(name).name}): its runs are skipped")
    return exe


def add_plink2_args(ap) -> None:
    ap.add_argument("--plink2", default="plink2", help="plink2 executable")
    ap.add_argument("--plink2-threads", type=int, default=2)
    ap.add_argument("--plink2-memory", type=int, default=4000, help="plink2 --memory, MiB")
    ap.add_argument("--no-plink2", action="store_true")


def peer_version(exe: str) -> str:
    return subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()


def run_peer(cmd: list[str], log_path: Path, label: str) -> dict:
    """A peer command as a subprocess (environment :data:`ENV0`): wall time, CPU time and its exact
    peak RSS (``ru_maxrss``), as a :func:`timed` record."""
    with open(log_path, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=ENV0)
        _, status, ru = os.wait4(proc.pid, 0)
        dt = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({rc}): {Path(log_path).read_text()[-600:]}")
    cpu = ru.ru_utime + ru.ru_stime
    log(f"  {label}: {dt:.2f} s, CPU {cpu:.1f} s, peak RSS {ru.ru_maxrss / 1024:.0f} MiB")
    return {"seconds": dt, "cpu_s": cpu, "peak_rss": ru.ru_maxrss * 1024, "start_rss": 0, "cmd": shlex.join(cmd)}


def plink2_pca(exe: str, bfile: str, out: Path, k: int, threads: int, memory_mib: int) -> dict:
    """``plink2 --pca approx k``: a :func:`run_peer` record with its eigenvalues under "s"."""
    r = run_peer([exe, "--bfile", str(bfile), "--pca", "approx", str(k), "--threads", str(threads),
                  "--memory", str(memory_mib), "--out", str(out)], Path(f"{out}.stdout"), f"plink2 --pca approx {k}")
    r["s"] = np.loadtxt(f"{out}.eigenval", ndmin=1)
    r["passes"] = f"{k + 2} (+1 freq.)"  # k + 1 Krylov passes, one to recover the PCs
    return r


# --------------------------------------------------------------------------- peer comparisons

def comparison_parser(doc: str, actions: tuple, action_help: str | None = None):
    """The argument parser of a comparison script: described by the first paragraph of its ``doc``
    (the whole under ``--help``), its first argument the action (one of ``actions``, default the first)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", nargs="?", default=actions[0], choices=actions, help=action_help)
    return ap


def parse_comparison_args(ap, argv, results: str):
    """``ap``'s arguments after the options every peer comparison shares, added after its own:
    --memory-limit, --timeout, --bolt, --bolt-threads, --cache (made, absolute), --results
    (default results/``results``; its folder made), --write-docs, --docs."""
    ap.add_argument("--memory-limit", default="4GiB", help="per worker")
    ap.add_argument("--timeout", type=float, default=7200, help="seconds before a bigmm run is killed")
    ap.add_argument("--bolt", default="bolt", help="BOLT-LMM executable")
    ap.add_argument("--bolt-threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=REPO / "cache" / "bench", help="cohorts and run directories")
    ap.add_argument("--results", type=Path, default=REPO / "results" / results)
    add_docs_args(ap)
    args = ap.parse_args(argv)
    args.cache = args.cache.resolve()
    args.cache.mkdir(parents=True, exist_ok=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    return args


def invocation(script: str, argv, args) -> dict:
    """This invocation's record: date, machine, command line and arguments (as JSON values).
    Quiets distributed's logging (the runs' clusters start and stop many times)."""
    import logging

    logging.getLogger("distributed").setLevel(logging.ERROR)
    return dict(date=_dt.datetime.now().astimezone().isoformat(timespec="seconds"), machine=machine_info(),
                command=command_line(script, argv),
                args={k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                      for k, v in vars(args).items()})


BOLT_VERSION = re.compile(r"BOLT-LMM, (v\S+)")


def bolt_exe(name: str, res: dict) -> str | None:
    """BOLT-LMM's executable (its version into ``res["bolt_version"]``), or None and a plain
    message (its runs are skipped, the rest runs)."""
    exe = shutil.which(name)
    if exe is None:
        log(f"BOLT-LMM not found ({name}; Debian: apt-get install -y bolt-lmm): its runs are skipped")
        return None
    head = subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
    res["bolt_version"] = m.group(1) if (m := BOLT_VERSION.search(head)) else "?"
    return exe


def bolt_log_facts(text: str) -> dict:
    """What every BOLT-REML log says besides its estimates: AI iterations, its own elapsed time,
    the samples used, its warnings and notes."""
    out = {"iterations": len(re.findall(r"Start ITER \d+: computing AI matrix", text))}
    if mt := re.search(r"Total elapsed time for analysis = (\S+) sec", text):
        out["bolt_reported_s"] = float(mt.group(1))
    if mt := re.search(r"Nused = (\d+)", text):
        out["n"] = int(mt.group(1))
    out["warnings"] = sorted({ln.strip() for ln in text.splitlines() if ln.startswith(("WARNING", "NOTE"))})
    return out


def run_bolt(cmd: list[str], rdir: Path, label: str, parse, **extra) -> dict:
    """The BOLT-LMM command ``cmd`` (a :func:`run_peer`) under ``/usr/bin/time -v`` where it exists,
    its output in ``rdir/bolt.log``: wall, CPU and BOLT's own max RSS, then ``parse(log text)``,
    the start time, the 1-minute load average at the start and end, ``extra``. A failed run
    raises with the last three lines of its log."""
    tv = rdir / "time_v.txt"
    timer = ["/usr/bin/time", "-v", "-o", str(tv)] if os.access("/usr/bin/time", os.X_OK) else []
    load0, started = os.getloadavg()[0], time.time()
    try:
        r = run_peer(timer + cmd, rdir / "bolt.log", label)
    except RuntimeError:
        tail = [ln.strip() for ln in (rdir / "bolt.log").read_text().splitlines() if ln.strip()][-3:]
        raise RuntimeError(f"{' / '.join(tail) or 'non-zero exit, no output'} (log: {rdir / 'bolt.log'})") from None
    r["wall_s"] = r.pop("seconds")
    r["peak_rss_mib"] = r.pop("peak_rss") / MIB
    if timer:
        r.update(time_v(tv))  # BOLT's own max RSS (ru_maxrss includes the forked Python's)
    r.update(parse((rdir / "bolt.log").read_text()))
    r.update(started=_dt.datetime.fromtimestamp(started).astimezone().isoformat(timespec="seconds"),
             loadavg_1min_start_end=[load0, os.getloadavg()[0]], log=str(rdir / "bolt.log"), **extra)
    return r


def read_covariates(path) -> tuple:
    """FID, IID, age (float) and sex of a covariate table as :func:`ensure_cohort` writes it."""
    rows = [line.split() for line in open(path)][1:]
    return (np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), np.array([float(r[2]) for r in rows]),
            np.array([r[3] for r in rows]))


@dataclasses.dataclass
class ChildRun:
    """What :func:`bigmm_child` gives the fit: the spec, the store, the standardization, the
    phenotypes ``Y`` (n x the columns of the phenotype file), ``Z`` (intercept, age, sex), the
    task memory of the cluster, ``times`` (seconds per stage) and ``out`` (the record) to add to,
    and what its ``inputs`` read (``extra``)."""

    spec: dict
    store: object
    std: object
    Y: np.ndarray
    Z: np.ndarray
    memory: int | None
    times: dict
    out: dict
    extra: object = None


@contextlib.contextmanager
def bigmm_child(spec_path: str, out_path: str, inputs=None):
    """The bigmm side of a comparison in its own process (started by :func:`run_child`), up to the
    fit: a local Dask cluster of ``spec["cluster"]``, the store ``spec["zarr"]``, the covariates
    and phenotypes (``spec["covar"]``, ``spec["pheno"]``, checked to be in the store's sample
    order) and ``inputs(spec, store)`` when given (more inputs, read with these: before the pass),
    the variant statistics and the standardization ``spec["standardize"]`` (one pass), each timed.
    Yields a :class:`ChildRun`; its ``out`` is written to ``out_path`` as JSON when the block ends
    without an error."""
    spec = json.loads(Path(spec_path).read_text())
    import logging

    logging.getLogger("distributed").setLevel(logging.ERROR)
    import bigmm
    from bigmm.pipeline.cluster import dask_client
    from bigmm.pipeline.config import ClusterConfig
    from bigmm.pipeline.memory import task_memory as tm

    cc = ClusterConfig(**spec["cluster"])
    times, out = {}, {}
    t = time.perf_counter()
    with dask_client(cc):
        times["cluster"] = time.perf_counter() - t
        t = time.perf_counter()
        store = bigmm.open_store(spec["zarr"])
        extra = inputs(spec, store) if inputs is not None else None
        _fid, iid, age, sex = read_covariates(spec["covar"])
        rows = [line.split() for line in open(spec["pheno"])][1:]
        if list(iid) != list(store.sample_iid) or [r[1] for r in rows] != list(store.sample_iid):
            raise RuntimeError("phenotype/covariate rows not in the store's sample order")
        Y = np.array([[float(v) for v in r[2:]] for r in rows])
        Z = np.column_stack([np.ones(len(Y)), age, (sex == "M").astype(float)])
        times["inputs"] = time.perf_counter() - t
        t = time.perf_counter()
        std = bigmm.standardization(bigmm.variant_stats(store.to_dask()), spec["standardize"])
        times["variant_stats"] = time.perf_counter() - t
        yield ChildRun(spec=spec, store=store, std=std, Y=Y, Z=Z, memory=tm(cc), times=times, out=out,
                       extra=extra)
    Path(out_path).write_text(json.dumps(out, indent=1, default=float) + "\n")


def run_measured(cmd: list[str], rdir: Path, timeout: float) -> tuple:
    """``cmd`` as a process in its own session (environment :data:`ENV0`, in :data:`REPO`, output
    to ``rdir/stdout.log``), killed with its process group after ``timeout`` seconds. Returns its
    exit status (``"killed after N s"`` when killed) and its measures: wall, CPU of the reaped
    process tree (driver, Dask nannies and workers), peak RSS summed over the tree (sampled; the
    sum of per-process peaks as an upper bound), the processes, ``rdir``, the start time and the
    1-minute load average at the start and end."""
    load0, started = os.getloadavg()[0], time.time()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(rdir / "stdout.log", "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=ENV0, cwd=REPO, start_new_session=True)
        with PeakRSS(pid=proc.pid, track_hwm=True) as mon:
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = f"killed after {timeout:.0f} s"
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return rc, dict(wall_s=wall, cpu_s=(ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
                    peak_rss_mib=mon.max_sum / MIB, sum_of_process_peaks_mib=mon.sum_of_peaks / MIB,
                    max_processes=mon.max_procs, run_dir=str(rdir),
                    started=_dt.datetime.fromtimestamp(started).astimezone().isoformat(timespec="seconds"),
                    loadavg_1min_start_end=[load0, os.getloadavg()[0]])


def run_child(script: str, spec: dict, rdir: Path, label: str, timeout: float) -> dict:
    """``python script _child SPEC OUT`` (a :func:`bigmm_child`) of ``spec`` in the fresh run
    directory ``rdir``, measured from here (:func:`run_measured`): its record and the measures.
    A failure raises with the last three lines of its output."""
    shutil.rmtree(rdir, ignore_errors=True)
    rdir.mkdir(parents=True)
    (rdir / "spec.json").write_text(json.dumps(spec, indent=1) + "\n")
    cmd = [sys.executable, str(Path(script).resolve()), "_child", str(rdir / "spec.json"), str(rdir / "out.json")]
    log(f"  {label}: {shlex.join(cmd)}")
    rc, measures = run_measured(cmd, rdir, timeout)
    if rc != 0:
        tail = [ln.strip() for ln in (rdir / "stdout.log").read_text().splitlines() if ln.strip()][-3:]
        raise RuntimeError(f"{spec['method']} failed ({rc}): {' / '.join(tail)} (log: {rdir / 'stdout.log'})")
    return {**json.loads((rdir / "out.json").read_text()), **measures}


def alternate_into(row: dict, methods: dict, repeats: int, command: str, save) -> None:
    """:func:`alternate` of ``methods`` into ``row["runs"]`` (a peer's failure into
    ``row["failed"]``), each record saved (``save()``) as soon as it is made, with ``command``;
    the tools run here replace the row's earlier runs of them."""
    for t in methods:
        row["runs"][t] = []
        row["failed"].pop(t, None)

    def saving(name, fn):
        def run(rep):
            r = fn(rep)
            r["command"] = command
            row["runs"][name].append(r)
            save()
            return dict(r)
        return run

    alternate(repeats, {t: saving(t, fn) for t, fn in methods.items()}, row["failed"])


def merge_results(path: Path, res: dict) -> None:
    """Merge this invocation's ``res`` into the results file ``path`` as it is now (another
    invocation, e.g. BOLT alone in the background, may have saved its runs since this one
    started): row by row, this invocation's tools win; written atomically."""
    disk = json.loads(path.read_text()) if path.exists() else {}
    for k, row in res.get("rows", {}).items():
        old = disk.setdefault("rows", {}).setdefault(k, {**row, "runs": {}, "failed": {}})
        old.update({f: v for f, v in row.items() if f not in ("runs", "failed")})
        old["runs"].update(row["runs"])
        old["failed"] = {t: v for t, v in old["failed"].items() if t not in row["runs"]}
        old["failed"].update(row["failed"])
    disk.update({k: v for k, v in res.items() if k != "rows"})
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(disk, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def report_results(path: Path, section: str, build_report, docs: Path | None) -> int:
    """Print the report ``build_report(results)`` of the results file ``path`` under ``section``
    (and write it to ``docs``); 1 and a message when it has no rows yet."""
    res = json.loads(path.read_text()) if path.exists() else {}
    if not res.get("rows"):
        log(f"no results in {path}: run first")
        return 1
    publish(section, build_report(res), docs)
    return 0


def med(runs: list[dict], get):
    """The median of ``get(run)`` over the runs where it is not None (None if none)."""
    vals = [get(r) for r in runs]
    vals = [v for v in vals if v is not None]
    return float(np.median(vals)) if vals else None


def fmt(v, spec: str) -> str | None:
    """``v`` formatted by ``spec``; None (a table's "—") for None."""
    return None if v is None else f"{v:{spec}}"


def tool_runs(tools: dict, row: dict, table: list, width: int, cut: int):
    """``(tool, label, runs)`` of each of ``tools`` (tool -> label) that has runs in ``row``, in
    order; for a tool that failed instead, its row is added to ``table`` (``width`` cells: the
    label, the message cut at ``cut`` characters, then empty cells)."""
    for t, label in tools.items():
        rr = row["runs"].get(t)
        if rr:
            yield t, label, rr
        elif t in row.get("failed", {}):
            table.append([label, f"failed: {row['failed'][t][:cut]}"] + [None] * (width - 2))


def bolt_said(bolt_runs: list[dict]) -> list[str]:
    """A report line of BOLT's warnings and notes over its runs (none if it gave none)."""
    warn = sorted({w for r in bolt_runs for w in r.get("warnings", [])})
    return ["- BOLT said: " + "; ".join(f"“{w}”" for w in warn) + "."] if warn else []


def runs_line(runs: dict, tools: dict) -> str:
    """A report line: how many runs of each tool (tool -> label ``tools``) a row has, and when its first started."""
    reps = {t: len(rr) for t, rr in runs.items() if rr}
    return ("- Runs (median when several): " + ", ".join(f"{tools[t]} {k}" for t, k in reps.items())
            + "; started " + ", ".join(f"{tools[t]} {rr[0]['started']}" for t, rr in runs.items() if rr) + ".")


class CountingOperator:
    """The operator interface over another operator, counting its applications (passes over X)."""

    def __init__(self, op):
        self.op, self.calls = op, 0

    @property
    def n(self):
        return self.op.n

    def plan(self, n_cols):
        return self.op.plan(n_cols)

    def apply(self, M, want_diag=False, **kw):
        self.calls += 1
        return self.op.apply(M, want_diag=want_diag, **kw)


# --------------------------------------------------------------------------- bigmm's settings and calls

def cluster_section(args) -> dict:
    """The ``cluster:`` section of the run config (and the ClusterConfig) of ``args``."""
    return {"workers": args.workers, "threads_per_worker": args.threads, "memory_limit": args.memory_limit}


def cluster_config(args):
    from bigmm.pipeline.config import ClusterConfig

    return ClusterConfig(**cluster_section(args))


def rules_config(cluster, **sections):
    """The run config the pipeline's memory rules (bigmm.pipeline.memory) read: ``sections`` of a
    config and the ClusterConfig ``cluster``, on a placeholder cohort that is never read."""
    from bigmm.pipeline.config import parse_config

    cfg = parse_config({"genotypes": {"zarr": "cohort.zarr"}, "phenotypes": {"file": "pheno.tsv"},
                        "output": "out", **sections})
    return cfg.model_copy(update={"cluster": cluster})


def task_memory(args) -> int | None:
    """Bytes per task, as the pipeline gives them for this cluster (bigmm.pipeline.memory.task_memory)."""
    from bigmm.pipeline.memory import task_memory as tm

    return tm(cluster_config(args))


def variant_filter(store, min_maf: float = 0.0, max_missing: float = 1.0):
    """bigmm.variant_stats + GCTA standardization with the run's filters (one pass over X), the
    statistics read as the pipeline's stage reads them (the store's genotypes: one task per
    column of chunks, reading the chunk files; through ``store.to_dask()`` they took 1.1-1.6 s
    at n = 10,000 against 0.74-0.75 s, 0.43-0.81 against 0.33-0.35 s at n = 4,000)."""
    import bigmm

    return bigmm.standardization(bigmm.variant_stats(store.genotypes), "gcta", min_maf=min_maf,
                                 max_missing=max_missing)


def grm_block_size(store, cc, dtype) -> int:
    """The GRM block of the pipeline's GRM stage when grm.block_size is unset: its rule
    (bigmm.pipeline.memory.grm_block_size) called as its do_grm calls it."""
    from bigmm.pipeline.memory import grm_block_size as rule
    from bigmm.tasks import total_threads

    cfg = rules_config(cc, grm={"dtype": np.dtype(dtype).name})
    return rule(cfg, store.n_samples, total_threads(), store.chunks[0], store.chunks[1])


def clear_grm(path: Path) -> None:
    """Remove the GRM store ``path`` of an earlier repeat and its checkpoint (never resume one)."""
    path = Path(path)
    shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(path.with_name(path.name + ".partial"), ignore_errors=True)


def timed_grm(store, std, path: Path, block: int, dtype, label: str, k_only: bool = False) -> dict:
    """:func:`compute_grm` from scratch, timed: the store of an earlier repeat is removed first,
    outside the time (a run's grm stage never deletes one; at n = 10,000 removing the 1.2 GB of
    K and N took 0.16-0.20 s)."""
    clear_grm(path)
    return timed(lambda: compute_grm(store, std, path, block, dtype, k_only), label)


def compute_grm(store, std, path: Path, block: int, dtype, k_only: bool = False) -> dict:
    """The GRM store at ``path`` built as the pipeline's grm stage builds it: its whole work,
    bigmm.pipeline.stage.grm.build_grm_store (K and the per-pair call counts N, block by block
    through the checkpoint ``path.partial``, chunk digests, committed by rename). ``path`` and its
    checkpoint must not exist (:func:`clear_grm`, :func:`timed_grm`). Returns what the stage
    records in run.json (blocks computed, passes over X).

    ``k_only``: the build these benchmarks used before, K alone (no N, no digests, no rename),
    kept to compare with; the grm stage never builds that store."""
    import zarr

    from bigmm.grm import create_grm_store, grm, grm_complete
    from bigmm.pipeline.stage.grm import build_grm_store

    path = Path(path)
    if path.exists() or path.with_name(path.name + ".partial").exists():
        raise RuntimeError(f"{path} or its checkpoint exists: clear_grm first (a benchmark builds from scratch)")
    if not k_only:
        return build_grm_store(store, std, path, "benchmark", block, dtype)
    create_grm_store(path, store.n_samples, block, {"n_samples": store.n_samples, "n_variants": std.n_kept,
                                                    "block_size": block, "dtype": np.dtype(dtype).name})
    grm(store.genotypes, std, block_size=block, out=path, dtype=dtype)
    if not grm_complete(zarr.open_group(str(path), mode="r")):
        raise RuntimeError("GRM blocks missing after computation")
    return {"blocks": "K only", "passes_over_X": -(-store.n_samples // block)}


def bigmm_spectrum(store, std, k: int, *, oversample: int, power_iters: int | None, seed: int, memory,
                   dtype) -> dict:
    """A timed bigmm.randomized_spectrum (eigenvalues under "s", passes, max Ritz residual)."""
    import bigmm

    op = bigmm.GrmOperator(store.genotypes, std, dtype=dtype, memory=memory)
    q = "" if power_iters is None else f" q={power_iters}"
    r = timed(lambda: bigmm.randomized_spectrum(op, k, oversample=oversample, power_iters=power_iters, seed=seed),
              f"bigmm randomized_spectrum k={k}{q} {np.dtype(dtype).name}")
    d = r["result"].diagnostics
    r.update(s=r["result"].s, passes=d["passes_over_X"], max_ritz_residual=d["max_ritz_residual"],
             ritz_residuals=np.asarray(d["ritz_residuals"]))
    return r


def svd_compressed(store, std, k: int, *, oversample: int, power_iters: int, seed: int, dtype,
                   iterator: str = "power") -> dict:
    """A timed ``dask.array.linalg.svd_compressed`` on the lazy standardized X (``compute=True``:
    X recomputed at each pass); eigenvalues of K = s²/p under "s"."""
    import dask
    import dask.array as da

    import bigmm

    def run():
        X = bigmm.standardized(store.to_dask(), std, dtype=dtype)
        u, s, _v = da.linalg.svd_compressed(X, k, n_power_iter=power_iters, n_oversamples=oversample,
                                            seed=seed, compute=True, iterator=iterator)
        return dask.compute(u, s)[1]

    r = timed(run, f"dask svd_compressed k={k} q={power_iters} iterator={iterator}")
    r.update(s=np.asarray(r["result"], dtype=np.float64) ** 2 / std.n_kept, passes=f"{2 * power_iters + 2} half")
    return r


def rel_errors(s: np.ndarray, ref: np.ndarray) -> dict:
    """Relative errors of eigenvalues against the reference, index by index (both descending)."""
    k = min(len(s), len(ref))
    s = np.asarray(s[:k], float)
    e = np.abs(s - ref[:k]) / ref[:k]
    out = {"k": k, "top1": float(e[0])}
    for m in (10, 20, 100, 200):
        if k >= m:
            out[f"max_top{m}"] = float(e[:m].max())
            out[f"mean_top{m}"] = float(e[:m].mean())
    out[f"at_{k}"] = float(e[k - 1])
    out["signed_mean"] = float(np.mean((s - ref[:k]) / ref[:k]))
    return out


def measure_spectra(repeats: int, methods: dict, ref_s: np.ndarray, failures: dict) -> dict:
    """:func:`alternate` over spectrum methods (each record has its eigenvalues under "s" and its
    "passes"); per method the :func:`summarize` record with the median relative errors."""
    out = {}
    for m, rr in alternate(repeats, methods, failures).items():
        errs = [rel_errors(r.pop("s"), ref_s) for r in rr]
        s = summarize(rr, passes=rr[0].get("passes"), task_stream=rr[-1].get("task_stream"),
                      errors_median={key: statistics.median(e[key] for e in errs) for key in errs[0]})
        log(f"  {m}: {s['median_s']:.1f} s, median rel. errors "
            + ", ".join(f"{key} {v:.3g}" for key, v in s["errors_median"].items() if key != "k"))
        out[m] = s
    return out


def reference(cache: Path, cohort: dict, store, std, *, k: int, exact: bool, oversample: int, power_iters: int,
              memory, filters: str) -> dict:
    """Reference eigenvalues of a cohort, cached: exact (GRM + eigh) or a float64 block Krylov
    spectrum with many passes, whose Ritz residuals bound its own error."""
    import bigmm

    tag = f"ref_{cohort['tag']}_{filters}_" + ("eigh" if exact else f"krylov_k{k}_os{oversample}_q{power_iters}")
    path = cache / f"{tag}.npz"
    if path.exists():
        z = np.load(path)
        meta = json.loads(str(z["meta"]))
        if meta.get("sim_created") == cohort["created"]:
            log(f"reference: reusing {path.name}")
            resid = z["resid"] if "resid" in z.files else np.array([meta.get("max_ritz_residual", 0.0)])
            return {"s": z["s"], "resid": resid, **meta}
    if exact:
        r = timed(lambda: bigmm.exact_spectrum(bigmm.grm(store.genotypes, std)).s[:1000], "reference: GRM + eigh")
        s, resid = r["result"], np.zeros(min(k, len(r["result"])))
        meta = {"method": "eigh of the float64 GRM"}
    else:
        r = bigmm_spectrum(store, std, k, oversample=oversample, power_iters=power_iters, seed=12345, memory=memory,
                           dtype=np.float64)
        s, resid = r["s"], r["ritz_residuals"]
        meta = {"method": f"float64 block Krylov, {r['passes']} passes, l = {k + oversample}", "passes": r["passes"]}
    meta.update(seconds=r["seconds"], peak_rss_mib=r["peak_rss"] / MIB, max_ritz_residual=float(resid.max()),
                sim_created=cohort["created"], oversample=oversample, power_iters=power_iters)
    np.savez(path, s=np.asarray(s), resid=resid, meta=json.dumps(meta))
    return {"s": np.asarray(s), "resid": resid, **meta}


# --------------------------------------------------------------------------- cohorts

def du(path: Path) -> int:
    """Bytes of a file or a directory tree."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def ensure_cohort(cache: Path, n: int, *, p: int, seed: int, pops: int, fst: float, h2: list, chunks: tuple,
                  sim_block: int, need_plink: bool, layout: str = "int8") -> dict:
    """Simulate (or reuse) a cohort of n samples with ``bigmm.simulate`` into a Zarr store of
    genotype ``layout`` (int8 unless asked: the benchmarks' cached cohorts and their figures are
    of int8 stores; a 2-bit cohort is cached under its own name) and a PLINK fileset when
    ``need_plink``, phenotypes and covariates with ``bigmm.write_tables``. Returns its record:
    parameters, paths and the simulation's time when it was made."""
    import bigmm

    tag = (f"n{n}_p{p}_seed{seed}" + (f"_pops{pops}_fst{fst:g}" if pops > 1 else "")
           + ("" if layout == "int8" else f"_{layout}"))
    base = cache / f"sim_{tag}"
    paths = {"zarr": Path(f"{base}.zarr"), "plink": base, "pheno": Path(f"{base}.pheno.tsv"),
             "covar": Path(f"{base}.covar.tsv"), "truth": Path(f"{base}.truth.json"), "meta": Path(f"{base}.sim.json")}
    want = {"n": n, "p": p, "seed": seed, "pops": pops, "fst": fst, "h2": list(h2), "chunks": list(chunks),
            "block": sim_block}
    meta = json.loads(paths["meta"].read_text()) if paths["meta"].exists() else None
    bed = Path(f"{base}.bed")
    ok = (meta is not None and all(meta.get(k) == v for k, v in want.items())
          and all(paths[k].exists() for k in ("zarr", "pheno", "covar"))
          and (not need_plink or (meta.get("plink") and bed.exists() and bed.stat().st_size == 3 + p * ((n + 3) // 4))))
    if ok:
        try:
            st = bigmm.open_store(paths["zarr"])
            ok = (st.genotypes.shape == (n, p) and list(st.chunks) == [min(chunks[0], n), min(chunks[1], p)]
                  and st.layout == layout)
        except Exception as exc:  # noqa: BLE001 - a damaged cache is simulated again
            log(f"simulate: cached store unusable ({exc})")
            ok = False
    record = {"tag": tag, "paths": {k: str(v) for k, v in paths.items()}}
    if ok:
        log(f"simulate: reusing {paths['zarr'].name} (made in {meta['simulate_s']:.0f} s on {meta['created']})")
        return {**meta, **record, "reused": True}
    log(f"simulate: n={n} p={p} seed={seed} pops={pops} fst={fst} chunks={chunks} "
        f"{'+ PLINK ' if need_plink else ''}-> {paths['zarr']}")
    paths["meta"].unlink(missing_ok=True)
    r = timed(lambda: bigmm.simulate(n, p, h2=list(h2), seed=seed, n_pops=pops, fst=fst, out_zarr=paths["zarr"],
                                     out_plink=base if need_plink else None, chunks=tuple(chunks), block=sim_block,
                                     layout=layout),
              f"simulate n={n}")
    t0 = time.perf_counter()
    bigmm.write_tables(r["result"], paths["pheno"], paths["covar"], paths["truth"])
    meta = {**want, "plink": need_plink, "simulate_s": r["seconds"], "simulate_cpu_s": r["cpu_s"],
            "simulate_peak_rss_mib": r["peak_rss"] / MIB, "tables_s": time.perf_counter() - t0,
            "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "zarr_bytes": du(paths["zarr"]), "plink_bed_bytes": du(bed) if need_plink else None}
    paths["meta"].write_text(json.dumps(meta, indent=2) + "\n")
    return {**meta, **record, "reused": False}


# --------------------------------------------------------------------------- end to end

PASS_RE = re.compile(r"^(\S+ \S+) INFO randomized spectrum pass (\d+)/(\d+): (\d+)/(\d+) \(100%\), "
                     r"([\d.]+) s elapsed")
CKPT_RE = re.compile(r"^(\S+ \S+) INFO randomized spectrum: checkpoint after pass (\d+)")
STAGE_RE = re.compile(r"^(\S+ \S+) INFO stage (\w+): (start|committed)")


def _log_time(stamp: str) -> float:
    # logging's asctime: "2026-11-24 18:40:01,123" (local time)
    return _dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def parse_run(out: Path) -> dict:
    """Stage times and passes from run.json, pass and stage boundaries from run.log, h² from results.json."""
    manifest = json.loads((out / "run.json").read_text())
    stages = {name: {"seconds": e["seconds"], "passes_over_X": e.get("passes_over_X", 0) or 0}
              for name, e in manifest.get("stages", {}).items()}
    passes, ckpt = [], {}
    log_path = out / "run.log"
    for line in (log_path.read_text().splitlines() if log_path.exists() else []):
        if m := PASS_RE.match(line):
            passes.append({"pass": int(m.group(2)), "tasks": int(m.group(5)), "seconds": float(m.group(6)),
                           "end": _log_time(m.group(1))})
        elif m := CKPT_RE.match(line):
            ckpt[int(m.group(2))] = _log_time(m.group(1))
        elif (m := STAGE_RE.match(line)) and m.group(2) in stages:
            stages[m.group(2)]["start" if m.group(3) == "start" else "end"] = _log_time(m.group(1))
    for ps in passes:  # from the end of the pass to its checkpoint being committed (QR + write)
        if ps["pass"] in ckpt:
            ps["after_s"] = ckpt[ps["pass"]] - ps["end"]
    res = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    fits = [{k: f[k] for k in ("name", "h2", "h2_se", "n")} for f in res.get("phenotypes", [])]
    return {"status": manifest.get("status"), "stages": stages, "passes": passes, "fits": fits}


def _busy_cpu_s() -> float:
    t = psutil.cpu_times()
    return sum(getattr(t, f) for f in ("user", "nice", "system", "irq", "softirq", "steal") if hasattr(t, f))


def run_e2e(cache: Path, cohort: dict, rep: int, *, spectrum: dict, cluster: dict, variants: dict,
            timeout: float = 3600) -> dict:
    """``python -m bigmm.pipeline.cli run cfg.yaml`` on a cohort store (no ingest) in a fresh output
    directory: wall time, stage times and passes (run.json, run.log), h² (results.json), and the
    peak of the RSS summed over the driver and every descendant process (with the stage it fell in)."""
    import yaml

    n, method = cohort["n"], spectrum["method"]
    rdir = cache / "runs" / (f"n{n}_r{rep + 1}" if method == "randomized" else f"{method}_n{n}_r{rep + 1}")
    shutil.rmtree(rdir, ignore_errors=True)
    rdir.mkdir(parents=True)
    p = cohort["paths"]
    cfg = {"genotypes": {"zarr": p["zarr"]}, "variants": {**variants, "standardize": "gcta"},
           "phenotypes": {"file": p["pheno"], "columns": "all"},
           "covariates": {"file": p["covar"], "columns": ["age", "sex"], "categorical": ["sex"]},
           "spectrum": spectrum, "output": str(rdir / "out"), "cluster": cluster}
    (rdir / "cfg.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "bigmm.pipeline.cli", "run", str(rdir / "cfg.yaml")]
    log(f"end to end n={n} repeat {rep + 1}: {shlex.join(cmd)}")
    busy0, load0 = _busy_cpu_s(), os.getloadavg()[0]
    with open(rdir / "stdout.log", "w") as fh:
        t0, wall0 = time.perf_counter(), time.time()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=ENV0, cwd=REPO, start_new_session=True)
        mon = PeakRSS(pid=proc.pid, track_hwm=True, timeline=True)
        mon.__enter__()
        killer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGTERM))
        killer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
            wall = time.perf_counter() - t0
            mon.stop()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({os.waitstatus_to_exitcode(status)}); see {rdir / 'stdout.log'}")
    info = parse_run(rdir / "out")
    t_peak, own, others = max(mon.timeline, key=lambda s: s[1] + s[2])
    peak_stage = next((name for name, s in info["stages"].items()
                       if s.get("start", np.inf) <= t_peak <= s.get("end", -np.inf) + 0.25), "outside stages")
    (rdir / "rss_timeline.json").write_text(json.dumps(
        [(round(t - wall0, 2), round(a / MIB), round(b / MIB)) for t, a, b in mon.timeline]) + "\n")
    cpu = ru.ru_utime + ru.ru_stime
    st = info["stages"]
    out = {"n": n, "repeat": rep + 1, "run_dir": str(rdir), "wall_s": wall,
           "started": _dt.datetime.fromtimestamp(wall0).astimezone().isoformat(timespec="seconds"),
           "loadavg_1min_start_end": [load0, os.getloadavg()[0]],
           # CPU seconds the rest of the machine used meanwhile (other jobs on a shared machine)
           "other_cpu_s": _busy_cpu_s() - busy0 - cpu, "cpu_s": cpu,
           "peak_rss_sum_mib": mon.max_sum / MIB, "sum_of_process_peaks_mib": mon.sum_of_peaks / MIB,
           "peak_at_s": round(t_peak - wall0, 1), "peak_stage": peak_stage, "peak_driver_mib": own / MIB,
           "peak_others_mib": others / MIB, "max_processes": mon.max_procs, **info,
           "stages_sum_s": sum(s["seconds"] for s in st.values()),
           "passes_over_X": sum(s["passes_over_X"] for s in st.values())}
    out["outside_stages_s"] = wall - out["stages_sum_s"]
    log(f"  n={n}: wall {wall:.1f} s (stages " + ", ".join(f"{k} {v['seconds']:.1f}" for k, v in st.items())
        + f"), {out['passes_over_X']} passes over X, peak RSS sum {out['peak_rss_sum_mib']:.0f} MiB (in {peak_stage}), "
        f"h2 " + ", ".join(f"{f['name']} {f['h2']:.3f}" for f in info["fits"]))
    return out


# --------------------------------------------------------------------------- profiles

class Columns:
    """The first ``p`` variants of a genotype array, reads delegated: the reader of a profile
    (:func:`profile_call` counts the time in its ``__getitem__`` as reading and decoding)."""

    def __init__(self, G, p: int):
        self.G, self.shape, self.chunks = G, (G.shape[0], p), G.chunks

    def __getitem__(self, sel):
        return np.asarray(self.G[sel])


def profile_call(fn, *args) -> dict:
    """``fn(*args)`` (a task function of bigmm reading a :class:`Columns`) under cProfile with one
    BLAS thread, as in a default worker: seconds in all, reading and decoding genotypes,
    ``standardize_block``, and ``fn``'s own lines (its products and sums: BLAS)."""
    import cProfile
    import pstats

    from threadpoolctl import threadpool_limits

    pr = cProfile.Profile()
    with threadpool_limits(limits=1, user_api="blas"):
        t0 = time.perf_counter()
        pr.enable()
        fn(*args)
        pr.disable()
        total = time.perf_counter() - t0
    read_file = Columns.__getitem__.__code__.co_filename
    t = {"read_s": 0.0, "standardize_s": 0.0, "blas_s": 0.0}
    for (file, _line, name), (_cc, _nc, tt, ct, _callers) in pstats.Stats(pr).stats.items():
        if name == "__getitem__" and file == read_file:
            t["read_s"] += ct
        elif name == "standardize_block":
            t["standardize_s"] += ct
        elif name == fn.__name__:
            t["blas_s"] += tt
    return {"total_s": total, **t, "other_s": total - sum(t.values())}
