"""The run directory: its manifest (``run.json``), lock, log, signal handling and ownership.

``run.json`` records each stage's status, fingerprint, duration and peak memory; it is written
atomically after every stage. A lock file (``.bigmm.lock``, with PID and host) refuses a second
run on the same directory; one left by a dead process on this host is taken over. SIGTERM
(what batch schedulers send at the wall-time limit) and Ctrl-C abandon the stage in flight.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
from pathlib import Path

from ..errors import InputError
from ..store import atomic_write_text, now_utc, remove_path
from .config import RunConfig
from .plan import STAGE_OUTPUTS

log = logging.getLogger("bigmm")

PARTIALS = ("grm.zarr.partial", "spectrum.partial")
#: everything bigmm writes in a run directory (removed by --force on another run's directory)
RUN_FILES = ("run.json", "run.log", "gcta", "hsq", "report", "pca.eigenvec", "pca.eigenval",
             "snp_effects.tsv", "snp_effects.zarr", "submit.sbatch") + PARTIALS + tuple(f for v in STAGE_OUTPUTS.values() for f in v)
LOCK_NAME = ".bigmm.lock"


class RunInterrupted(BaseException):
    """SIGTERM (what batch schedulers send at the wall-time limit) or Ctrl-C during a run."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def read_manifest(out: Path) -> dict | None:
    path = Path(out) / "run.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is unreadable ({exc}); move the run directory aside or use --force") from None


def write_manifest(out: Path, manifest: dict) -> None:
    atomic_write_text(Path(out) / "run.json", json.dumps(manifest, indent=2, default=str) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(out: Path, replace: bool = False):
    """An exclusive lock file with PID and host; a lock left by a dead process is taken over.

    With ``replace`` (``--force`` on another run's directory, see :func:`check_output_dir`)
    the other run's files are removed once the lock is held, never under a run in progress.
    """
    path = Path(out) / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": now_utc()}
    for attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                other = {}
            stale = other.get("host") == me["host"] and not _pid_alive(int(other.get("pid", -1)))
            if stale and attempt == 0:
                log.warning("removing a stale lock %s left by process %s (no longer running)", path,
                            other.get("pid"))
                path.unlink(missing_ok=True)
                continue
            raise InputError(f"run directory {out} is in use by another bigmm run (process "
                             f"{other.get('pid')} on {other.get('host')}, since {other.get('started')}); "
                             f"wait for it to finish, or if no run is active remove {path}") from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    try:
        if replace:
            log.warning("--force: removing the previous run in %s", out)
            for name in RUN_FILES:
                remove_path(Path(out) / name)
        yield
    finally:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def signals_raise():
    """Turn SIGTERM into :class:`RunInterrupted` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise RunInterrupted(signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def log_to(path: Path):
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    log.addHandler(handler)
    old = log.level
    if old == logging.NOTSET or old > logging.INFO:
        # INFO must reach the file; console handlers keep their own levels
        for h in log.handlers:
            if h is not handler and h.level == logging.NOTSET:
                h.setLevel(old if old != logging.NOTSET else logging.WARNING)
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()
        log.setLevel(old)


def is_this_run(manifest: dict, cfg: RunConfig) -> bool:
    """Whether a run directory's manifest is this config's: the same config, or the same config
    file edited since (the stages' fingerprints then decide what reruns)."""
    return (manifest.get("config_fingerprint") in (None, cfg.fingerprint())
            or (cfg.source is not None and manifest.get("config_source") == str(cfg.source)))


def check_output_dir(out: Path, cfg: RunConfig, force: bool) -> bool:
    """Refuse an output directory holding another run's results (unless ``force``).

    Returns True when ``force`` is to replace another run (done under the run's lock).
    """
    if not out.exists():
        return False
    if not out.is_dir():
        raise InputError(f"output {out} exists and is not a directory")
    manifest = read_manifest(out) if (out / "run.json").exists() else None
    other = None if manifest is None or is_this_run(manifest, cfg) else manifest["config_fingerprint"]
    if manifest is None and (out / "results.json").exists():
        other = "unknown"
    if other is None:
        return False
    if not force:
        source = manifest.get("config_source") if manifest else None
        raise InputError(f"output directory {out} holds the results of another run "
                         f"(config fingerprint {other}{f' from {source}' if source else ''}, this config "
                         f"{cfg.fingerprint()}); choose another output or rerun with --force to replace them")
    return True
