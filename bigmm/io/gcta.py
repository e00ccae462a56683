"""GCTA's binary GRM format: ``.grm.bin``, ``.grm.N.bin`` and ``.grm.id``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError, missing_reason
from ..store import atomic_file, atomic_write_text


def write_gcta_grm(prefix: str | Path, K, ids: Sequence[tuple[str, str]], n_variants: int,
                   rows_per_block: int = 2048, N=None) -> list[Path]:
    """Write GCTA's ``.grm.bin``, ``.grm.N.bin`` and ``.grm.id``.

    ``.grm.bin`` holds the lower triangle including the diagonal, row by row
    (row i: A[i, 0..i]), as little-endian float32; ``.grm.N.bin`` the number
    of variants used for each entry in the same layout; ``.grm.id`` FID and IID.
    Streams ``K`` (and ``N``) by row blocks, so a Zarr K never has to fit in memory.

    Parameters
    ----------
    K : (n, n) array-like
        bigmm's GRM ``X Xᵀ / p`` (missing calls mean-imputed: ``x = 0``).
    n_variants : int
        p, the kept variants K was divided by.
    N : (n, n) array-like of int, optional
        Per pair, the kept variants called in both samples (:func:`bigmm.grm` with
        ``counts=True``). Then the file holds GCTA's and PLINK 2's (``--make-grm-bin``)
        pairwise-complete average ``A_jk = Σ_{i called in j and k} x_ij x_ik / N_jk =
        K_jk p / N_jk`` (the numerator is the same sum, as a missing call contributes
        ``x = 0`` to K) and ``.grm.N.bin`` holds N_jk; a pair with no common call gets 0.
        Without N, both hold bigmm's K and p for every pair (equal when nothing is missing).

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
    if N is not None and tuple(N.shape) != tuple(K.shape):
        raise ValueError("N and K disagree in shape")
    paths = [Path(prefix + ".grm.bin"), Path(prefix + ".grm.N.bin"), Path(prefix + ".grm.id")]
    with contextlib.ExitStack() as stack:
        fk = stack.enter_context(atomic_file(paths[0], "wb"))
        fn = stack.enter_context(atomic_file(paths[1], "wb"))
        for r0 in range(0, n, rows_per_block):
            r1 = min(n, r0 + rows_per_block)
            block = np.asarray(K[r0:r1, 0:r1], dtype=np.float64)
            if N is None:
                counts = np.full(block.shape, n_variants, dtype=np.float64)
            else:
                counts = np.asarray(N[r0:r1, 0:r1], dtype=np.float64)
                with np.errstate(invalid="ignore", divide="ignore"):
                    block = np.where(counts > 0, block * (n_variants / counts), 0.0)
            for i in range(r0, r1):
                fk.write(block[i - r0, : i + 1].astype("<f4").tobytes())
                fn.write(counts[i - r0, : i + 1].astype("<f4").tobytes())
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
