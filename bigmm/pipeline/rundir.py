"""The run directory: its manifest (``run.json``), lock, log, signal handling and ownership.

``run.json`` records each stage's status, fingerprint, duration and peak memory; it is written
atomically after every stage. A lock file (``.bigmm.lock``, with PID and host) refuses a second
run on the same directory; one left by a dead process on this host is taken over. SIGTERM
(what batch schedulers send at the wall-time limit) and Ctrl-C abandon the stage in flight.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
from pathlib import Path

from ..errors import InputError
from ..store import atomic_write_text, now_utc, remove_path, resolve_path
from .cluster import TLS_DIR
from .config import RunConfig
from .registry import REGISTRY
from .submit import SLURM_LOG, is_job_script

log = logging.getLogger("bigmm")

#: the checkpoint folders stages resume from
PARTIALS = tuple(dict.fromkeys(s.checkpoint for s in REGISTRY if s.checkpoint))
LOCK_NAME = ".bigmm.lock"


class RunInterrupted(BaseException):
    """SIGTERM (what batch schedulers send at the wall-time limit) or Ctrl-C during a run."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


#: what run.json says it is: the first keys bigmm writes into every manifest
MANIFEST_FORMAT = "bigmm-run"
MANIFEST_FORMAT_VERSION = 1
#: the keys (and their types) every run.json bigmm wrote before it carried ``format``: such a
#: manifest (a run folder of an earlier version) is still bigmm's and resumes
LEGACY_KEYS = {"bigmm_version": str, "config_fingerprint": str, "config": dict, "started": str,
               "spectrum_method": str, "reml_method": str}
#: the file in a stage's Zarr output that names the stage fingerprint it was made for; the stores
#: below carry it, and show that a folder is a bigmm run even when its run.json is damaged
STAGE_STAMP = "bigmm-stage.json"
STAMPED_STORES = ("genotypes.zarr", "variants.zarr", "grm.zarr", "spectrum.zarr")


class ForeignManifest(InputError):
    """A run.json that bigmm did not write: the folder is not a bigmm run."""


def manifest_problem(manifest) -> str | None:
    """Why a parsed run.json is not one bigmm wrote (None when it is): bigmm's carry
    ``format: bigmm-run``; those of earlier versions are recognised by their keys."""
    if not isinstance(manifest, dict):
        return f"it holds a JSON {type(manifest).__name__}, not bigmm's manifest"
    fmt = manifest.get("format")
    if fmt is not None:
        if fmt != MANIFEST_FORMAT:
            return f"its format is {str(fmt)[:40]!r}, not {MANIFEST_FORMAT!r}"
        if not isinstance(manifest.get("config_fingerprint"), str):
            return "it has no config fingerprint"
        return None
    missing = [k for k, kind in LEGACY_KEYS.items() if not isinstance(manifest.get(k), kind)]
    if missing:
        return f"it lacks bigmm's keys ({', '.join(missing)})"
    return None


def _damaged_but_bigmm(out: Path, text: bytes) -> bool:
    """Whether an unreadable run.json is bigmm's: its beginning is bigmm's (a write cut short), or
    the folder holds a committed store that carries bigmm's stage stamp."""
    head = text[:400]
    if head.lstrip().startswith(b"{") and (f'"format": "{MANIFEST_FORMAT}"'.encode() in head
                                            or b'"bigmm_version":' in head):
        return True
    return any((Path(out) / s / STAGE_STAMP).is_file() for s in STAMPED_STORES)


def read_manifest(out: Path) -> dict | None:
    """The run's manifest: None when there is none; ``{"damaged": why}`` for bigmm's own run.json
    that no longer parses. A run.json bigmm did not write raises :class:`ForeignManifest`."""
    path = Path(out) / "run.json"
    if not path.exists():
        return None
    try:
        text = path.read_bytes()
    except OSError as exc:
        log.warning("%s is damaged (%s); the next run rebuilds it from what it finds committed", path, exc)
        return {"damaged": str(exc)}
    try:
        manifest = json.loads(text.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        if not _damaged_but_bigmm(out, text):
            raise ForeignManifest(f"{path} is not a bigmm manifest (it is not JSON, and nothing in {out} "
                                  f"is a bigmm run's): {out} is not a bigmm run folder; bigmm writes only "
                                  f"into a new or empty folder or one of its own runs: choose another "
                                  f"output") from None
        # a damaged manifest (a truncated write, a full disk) is no dead end: the run rebuilds
        # it, adopting committed outputs that record their own fingerprint (the GRM)
        log.warning("%s is damaged (%s); the next run rebuilds it from what it finds committed", path, exc)
        return {"damaged": str(exc)}
    problem = manifest_problem(manifest)
    if problem is not None:
        raise ForeignManifest(f"{path} was not written by bigmm ({problem}): {out} is not a bigmm run "
                              f"folder; bigmm writes only into a new or empty folder or one of its own "
                              f"runs: choose another output")
    return manifest


def write_manifest(out: Path, manifest: dict) -> None:
    signed = {"format": MANIFEST_FORMAT, "format_version": MANIFEST_FORMAT_VERSION,
              **{k: v for k, v in manifest.items() if k not in ("format", "format_version")}}
    atomic_write_text(Path(out) / "run.json", json.dumps(signed, indent=2, default=str) + "\n")


def _lock_holder(fd: int) -> dict:
    """What a lock file says of its holder ({} when empty or unreadable)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        return json.loads(data.decode()) if data.strip() else {}
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def run_lock(out: Path, replace: bool = False):
    """An exclusive lock on the run directory: ``flock`` on ``.bigmm.lock`` (PID and host inside).

    The kernel releases the lock when its holder dies, however it dies, so a lock left by a
    dead process is taken over atomically: of many processes starting at once exactly one gets
    it (the old read-unlink-create takeover let two through). After locking, the file must
    still be the one at the path (a holder that finished unlinks it first), else we retry.

    With ``replace`` (``--force`` on another run's directory, see :func:`check_output_dir`)
    the other run's files are removed once the lock is held, never under a run in progress.
    """
    path = Path(out) / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": now_utc()}
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _lock_holder(fd)
            os.close(fd)
            who = (f"process {other['pid']} on {other.get('host', '?')}, since {other.get('started', '?')}"
                   if other.get("pid") else "a process that is starting")
            raise InputError(f"run directory {out} is in use by another bigmm run ({who}; it holds the lock "
                             f"{path}); wait for it to finish") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file was unlinked by a holder that finished: lock the new one
    previous = _lock_holder(fd)
    if previous:
        log.warning("removing a stale lock %s left by process %s (no longer running)", path,
                    previous.get("pid"))
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(me).encode())
    os.fsync(fd)
    try:
        remove_leftovers(out)
        if replace:
            previous = read_manifest(out) or {}
            log.warning("--force: removing the previous run's recorded outputs in %s", out)
            remove_recorded_run(out, previous)
        yield
    finally:
        try:
            path.unlink(missing_ok=True)  # still holding the lock: nobody can hold this file now
        except OSError:  # a folder made read-only under the run: closing releases the lock anyway
            pass
        os.close(fd)


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


class _RunLogHandler(logging.FileHandler):
    """The run's log file; when it can no longer be written (a full disk, a folder made
    read-only), one line says so on the terminal, instead of a traceback for every message."""

    failed = False

    def handleError(self, record):
        if not self.failed:
            self.failed = True
            exc = sys.exc_info()[1]
            sys.stderr.write(f"bigmm: {self.baseFilename} can no longer be written "
                             f"({getattr(exc, 'strerror', None) or exc}); messages go to the terminal only\n")

    def close(self):
        try:
            super().close()
        except OSError:
            pass


def write_failure(out: Path, manifest: dict) -> None:
    """Record a failed or interrupted run in run.json; when even that cannot be written, say so
    (run.json then still says "running": ``bigmm status`` tells that no process holds the run)."""
    try:
        write_manifest(out, manifest)
    except OSError as exc:
        log.error("could not record the end of the run in %s (%s); it still says 'running' "
                  "(bigmm status shows that no process holds the run)", Path(out) / "run.json",
                  exc.strerror or exc)


def lock_holder(out: Path) -> dict | None:
    """The holder of the run directory's lock ({pid, host, started}), or None when no process
    holds it (a run.json that says "running" then belongs to a run that was killed)."""
    path = Path(out) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _lock_holder(fd) or {"pid": None}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def log_to(path: Path):
    handler = _RunLogHandler(path)
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


def stage_files(name: str, entry: dict | None) -> list[str]:
    """The files (relative paths) stage ``name`` wrote or was writing, from its manifest entry
    (older manifests, without the list: the stage's fixed outputs)."""
    if isinstance(entry, dict) and "files" in entry:
        files = entry["files"]
        return list(files) if isinstance(files, list) else []
    return list(next((s.outputs for s in REGISTRY if s.name == name), ()))


def inside_run(out: Path, rel) -> Path | None:
    """The path of ``rel`` (recorded in run.json, relative to the run folder) when it lies inside
    the run folder once its folders' symbolic links are resolved, else None (an absolute path, a
    ``..`` or a linked folder that leads out, the folder itself)."""
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute():
        return None
    parts = Path(rel).parts
    if not parts or ".." in parts:
        return None
    path = Path(out) / rel
    root = resolve_path(out)
    where = resolve_path(path.parent) / path.name  # a link itself is removed, never what it points to
    return path if root in where.parents else None


def remove_stage_files(out: Path, name: str, entry: dict | None, keep=()) -> list[str]:
    """Remove what stage ``name`` recorded (and nothing else); folders it made and left empty go
    too. Paths in ``keep`` (this run's inputs, e.g. a cohort store an earlier run made here and
    this config reads) are never removed, nor a recorded path that leads out of the run folder
    (named in a warning)."""
    removed = []
    keep = {resolve_path(k) for k in keep}
    for rel in stage_files(name, entry):
        path = inside_run(out, rel)
        if path is None:
            log.warning("run.json of %s records %r for stage %s, which is not inside the run folder: "
                        "left where it is (bigmm removes only its own files in its run folder)", out, rel, name)
            continue
        if resolve_path(path) in keep:
            continue
        if path.exists() or path.is_symlink():
            remove_path(path)
            removed.append(rel)
        parent = path.parent
        while parent != Path(out) and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    return removed


def remove_recorded_run(out: Path, manifest: dict) -> None:
    """Remove another run's outputs for ``--force``: what its manifest records, its partial
    checkpoints, its manifest and log; files bigmm did not write are left where they are."""
    stages = manifest.get("stages")
    for name, entry in (stages.items() if isinstance(stages, dict) else ()):
        remove_stage_files(out, name, entry if isinstance(entry, dict) else None)
    writing = manifest.get("writing")
    if isinstance(writing, dict):
        remove_stage_files(out, str(writing.get("stage")), writing)
    for name in PARTIALS + ("reml_state.npz", "run.json", "run.log"):
        remove_path(Path(out) / name)


#: names of bigmm's own temporary files and folders (bigmm.store.atomic_file / atomic_dir)
LEFTOVER = re.compile(r"^\..+\.(tmp-\d+-[0-9a-f]{8}(\.npz)?|old-[0-9a-f]{8})$")


def remove_leftovers(out: Path) -> list[str]:
    """Remove temporary files and folders that killed bigmm processes left in a run directory.

    Called under the run's lock: no other bigmm process writes there, so every entry named like
    an atomic write in progress (``.NAME.tmp-PID-XXXXXXXX``, ``.NAME.old-XXXXXXXX``) is a
    leftover (a killed ingest's is the size of the cohort store). Nothing else is touched.
    """
    removed = []
    for folder in [Path(out)] + [p for p in Path(out).iterdir() if p.is_dir() and not p.name.startswith(".")]:
        for p in folder.iterdir():
            if LEFTOVER.match(p.name):
                remove_path(p)
                removed.append(str(p.relative_to(out)))
    tls = Path(out) / TLS_DIR  # the worker key of a batch-system cluster whose driver was killed
    if tls.exists():
        remove_path(tls)
        removed.append(TLS_DIR)
    if removed:
        log.warning("removed %d temporary file(s) left by killed runs: %s", len(removed), ", ".join(sorted(removed)))
    return removed


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
    try:
        manifest = read_manifest(out) if (out / "run.json").exists() else None
    except ForeignManifest as exc:
        raise InputError(f"{exc} (nothing in it is replaced, with or without --force)") from None
    if manifest is None:
        # the run's own config file may be there already (``bigmm reml`` writes OUT/config.yaml
        # first), and the job script ``bigmm submit`` wrote with the logs SLURM writes for it
        own = cfg.source.name if cfg.source is not None and Path(cfg.source).parent == out.resolve() else None
        foreign = sorted(e for e in os.listdir(out) if e not in (LOCK_NAME, "run.log", own)
                         and not is_job_script(out / e) and not SLURM_LOG.match(e))
        if foreign:
            raise InputError(f"output directory {out} exists and holds {len(foreign)} entries that are not "
                             f"a bigmm run's ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); "
                             f"bigmm writes only into a new or empty directory or one of its own runs, so "
                             f"that nothing of yours is overwritten or removed: choose another output")
        return False
    other = None if is_this_run(manifest, cfg) else manifest.get("config_fingerprint", "unknown")
    if other is None:
        return False
    if not force:
        source = manifest.get("config_source") if manifest else None
        raise InputError(f"output directory {out} holds the results of another run "
                         f"(config fingerprint {other}{f' from {source}' if source else ''}, this config "
                         f"{cfg.fingerprint()}); choose another output or rerun with --force to replace them")
    return True
