"""Atomic commits and fingerprints of the files bigmm writes and reads.

Everything bigmm writes is committed by :func:`atomic_dir` or :func:`atomic_file`: written under
a temporary name beside the destination, fsynced, then renamed into place, so an interrupted
write never leaves something that looks complete. :func:`remove_path` removes only what the
caller names (a run's own file or folder); :func:`file_fingerprint` identifies an input file by
its size, time and (sampled or whole) content digest.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from .errors import InputError


def fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for fn in filenames:
            fd = os.open(os.path.join(dirpath, fn), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_path(path: Path) -> None:
    """Remove a file or a directory tree, if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_dir(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``final`` only on success.

    The temporary directory sits beside ``final`` (same file system, so the
    rename is atomic). On an exception it is removed and ``final`` is left as
    it was. ``os.replace`` cannot swap a non-empty directory, so with
    ``overwrite`` the old directory is first renamed aside and deleted after
    the new one is in place.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not overwrite:
        raise InputError(f"{final} already exists; remove it, or pass overwrite=True to replace it")
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_tree_dir(final.parent)
        if old is not None:
            remove_path(old)
    except BaseException:
        remove_path(tmp)
        raise


def _fsync_tree_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator:
    """Open a temporary file beside ``path`` that replaces ``path`` only when the block succeeds.

    The one way bigmm writes a file: the temporary sits in the same directory (so the rename is
    atomic), is flushed and fsynced before ``os.replace``, and is removed on any exception, so a
    reader sees the old file or the whole new one, never a part. ``mode`` is ``"w"`` or ``"wb"``.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_file(p) as fh:
    ...     _ = fh.write("whole")
    >>> p.read_text()
    'whole'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_tree_dir(path.parent)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file so that it appears whole or not at all (:func:`atomic_file`)."""
    with atomic_file(path) as fh:
        fh.write(text)


#: blocks of a large file hashed by a sampled fingerprint (evenly spaced, first and last included)
SAMPLED_BLOCKS = 64
SAMPLED_BLOCK_BYTES = 1 << 16


def file_fingerprint(path: Path | None, content: bool | str = True) -> dict | None:
    """What identifies a file's content, for deciding whether work made from it is current.

    ``content=True``: size, mtime and a blake2b hash of the whole file (small files: tables,
    lists, .fam, .bim). ``content="sampled"`` (large files: the .bed): size, mtime, the inode
    and its change time (ctime, which every write, copy-over or ``touch -d`` moves and no user
    can set back), and a blake2b hash of :data:`SAMPLED_BLOCKS` blocks of 64 KiB spread over the
    file — a different file of the same size and mtime is never taken as unchanged, in O(1) reads.
    ``content=False``: size and mtime only.
    """
    if path is None:
        return None
    import hashlib

    path = Path(path)
    st = path.stat()
    out = {"path": str(resolve_path(path)), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if content == "sampled":
        out.update(ctime_ns=st.st_ctime_ns, inode=st.st_ino, device=st.st_dev)
        h = hashlib.blake2b(digest_size=16)
        step = max(1, (st.st_size - SAMPLED_BLOCK_BYTES) // max(1, SAMPLED_BLOCKS - 1))
        with open(path, "rb") as fh:
            for i in range(SAMPLED_BLOCKS):
                fh.seek(min(i * step, max(0, st.st_size - SAMPLED_BLOCK_BYTES)))
                h.update(fh.read(SAMPLED_BLOCK_BYTES))
        out["blake2b_sampled"] = h.hexdigest()
    elif content:
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        out["blake2b"] = h.hexdigest()
    return out


def resolve_path(path) -> Path:
    """``Path(path).resolve()``, or the absolute path where resolving fails (a symbolic link that
    loops): the file's own check then says what is wrong with it, instead of a traceback here."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
