"""GCTA's binary GRM format: ``.grm.bin``, ``.grm.N.bin`` and ``.grm.id``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError, missing_reason
from ..store import atomic_file, atomic_write_text


def write_gcta_grm(prefix: str | Path, K, ids: Sequence[tuple[str, str]], n_variants: int,
                   rows_per_block: int = 2048) -> list[Path]:
    """Write GCTA's ``.grm.bin``, ``.grm.N.bin`` and ``.grm.id``.

    ``.grm.bin`` holds the lower triangle including the diagonal, row by row
    (row i: K[i, 0..i]), as little-endian float32; ``.grm.N.bin`` the number
    of variants used for each entry in the same layout (here the same for all
    pairs, as missing genotypes are mean-imputed); ``.grm.id`` FID and IID.
    Streams ``K`` by row blocks, so a Zarr K never has to fit in memory.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> d = tempfile.mkdtemp()
    >>> K = np.array([[1.0, 0.1], [0.1, 0.9]])
    >>> _ = write_gcta_grm(f"{d}/grm", K, [("F1", "I1"), ("F2", "I2")], n_variants=1000)
    >>> ids, K2, N = read_gcta_grm(f"{d}/grm")
    >>> ids, bool(np.allclose(K2, K, atol=1e-7)), N.tolist()   # GCTA stores float32
    ([('F1', 'I1'), ('F2', 'I2')], True, [[1000.0, 1000.0], [1000.0, 1000.0]])
    """
    prefix = str(prefix)
    n = K.shape[0]
    if len(ids) != n:
        raise ValueError("ids and K disagree in size")
    paths = [Path(prefix + ".grm.bin"), Path(prefix + ".grm.N.bin"), Path(prefix + ".grm.id")]
    with contextlib.ExitStack() as stack:
        fk = stack.enter_context(atomic_file(paths[0], "wb"))
        fn = stack.enter_context(atomic_file(paths[1], "wb"))
        for r0 in range(0, n, rows_per_block):
            r1 = min(n, r0 + rows_per_block)
            block = np.asarray(K[r0:r1, 0:r1], dtype=np.float64)
            for i in range(r0, r1):
                fk.write(block[i - r0, : i + 1].astype("<f4").tobytes())
                fn.write(np.full(i + 1, n_variants, dtype="<f4").tobytes())
    atomic_write_text(paths[2], "".join(f"{f}\t{i}\n" for f, i in ids))
    return paths


def read_gcta_grm(prefix: str | Path) -> tuple[list[tuple[str, str]], np.ndarray, np.ndarray]:
    """Read a GCTA binary GRM: (ids, K as a full symmetric float64 matrix, N)."""
    prefix = str(prefix)
    id_path = Path(prefix + ".grm.id")
    if not id_path.exists():
        raise InputError(f"{id_path} {missing_reason(id_path)}")
    ids = []
    with open(id_path) as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.split()
            if len(fields) < 2:
                raise InputError(f"{id_path} line {lineno}: expected FID IID")
            ids.append((fields[0], fields[1]))
    n = len(ids)
    m = n * (n + 1) // 2
    out = []
    for suffix in (".grm.bin", ".grm.N.bin"):
        path = Path(prefix + suffix)
        vals = np.fromfile(path, dtype="<f4")
        if vals.size != m:
            raise InputError(f"{path} has {vals.size} values, {id_path.name} has {n} samples "
                             f"which need {m}")
        full = np.zeros((n, n), dtype=np.float64)
        il = np.tril_indices(n)
        full[il] = vals
        full.T[il] = vals
        out.append(full)
    return ids, out[0], out[1]
