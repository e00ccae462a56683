"""Binary GRM files: GCTA's ``.grm.bin``, ``.grm.N.bin`` and ``.grm.id`` (written and read), and
PLINK 2's ``.rel.bin`` and ``.rel.id`` (read), for a precomputed GRM given as input."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
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
    n = K.shape[0]
    if len(ids) != n:
        raise ValueError("ids and K disagree in size")
    if N is not None and tuple(N.shape) != tuple(K.shape):
        raise ValueError("N and K disagree in shape")
    with gcta_grm_writer(prefix, ids, n_variants) as write_rows:
        for r0 in range(0, n, rows_per_block):
            r1 = min(n, r0 + rows_per_block)
            write_rows(K[r0:r1, 0:r1], None if N is None else N[r0:r1, 0:r1])
    return [Path(str(prefix) + s) for s in (".grm.bin", ".grm.N.bin", ".grm.id")]


@contextlib.contextmanager
def gcta_grm_writer(prefix: str | Path, ids: Sequence[tuple[str, str]], n_variants: int):
    """:func:`write_gcta_grm` fed by the caller: yields ``write_rows(K_rows, N_rows=None)``, to be
    called with consecutive bands of rows of the lower triangle (``K[r0:r1, 0:r1]``, and ``N``'s
    the same), from row 0 to the last; the files are committed when the block exits after all n
    rows (a caller that already reads K in such bands exports it from the same read)."""
    prefix = str(prefix)
    n = len(ids)
    paths = [Path(prefix + ".grm.bin"), Path(prefix + ".grm.N.bin"), Path(prefix + ".grm.id")]
    done = [0]

    with contextlib.ExitStack() as stack:
        fk = stack.enter_context(atomic_file(paths[0], "wb"))
        fn = stack.enter_context(atomic_file(paths[1], "wb"))

        def write_rows(K_rows, N_rows=None) -> None:
            r0 = done[0]
            block = np.asarray(K_rows, dtype=np.float64)
            r1 = r0 + block.shape[0]
            if block.shape != (r1 - r0, r1) or r1 > n:
                raise ValueError(f"rows {r0}..{r1} of the lower triangle need shape {(r1 - r0, r1)}, got {block.shape}")
            if N_rows is None:
                counts = np.full(block.shape, n_variants, dtype=np.float64)
            else:
                counts = np.asarray(N_rows, dtype=np.float64)
                with np.errstate(invalid="ignore", divide="ignore"):
                    block = np.where(counts > 0, block * (n_variants / counts), 0.0)
            for i in range(r0, r1):
                fk.write(block[i - r0, : i + 1].astype("<f4").tobytes())
                fn.write(counts[i - r0, : i + 1].astype("<f4").tobytes())
            done[0] = r1

        yield write_rows
        if done[0] != n:
            raise ValueError(f"{prefix}.grm.bin: {done[0]} of {n} rows written")
    atomic_write_text(paths[2], "".join(f"{f}\t{i}\n" for f, i in ids))


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


# --------------------------------------------------------------------------------------
# A precomputed GRM given as input: GCTA's .grm.bin or PLINK 2's .rel.bin
# --------------------------------------------------------------------------------------

#: the files of each format, by role
GRM_FORMATS = {"gcta": {"bin": ".grm.bin", "id": ".grm.id", "N": ".grm.N.bin"},
               "plink2": {"bin": ".rel.bin", "id": ".rel.id"}}


@dataclass(frozen=True)
class GrmFiles:
    """A GRM on disk, its sample IDs read and its size checked, its values not yet read.

    ``layout``: ``triangle`` (the lower triangle with the diagonal, row by row: row i holds
    K[i, 0..i]) or ``square`` (n x n, row by row); ``dtype`` ``<f4`` or ``<f8``. GCTA's
    ``.grm.bin`` is always a float32 triangle; PLINK 2's ``.rel.bin`` is any of the four
    (``--make-rel bin`` square float64, ``bin4`` float32, ``triangle``), told apart by its size,
    which differs for every n ≥ 2.
    """

    format: str
    bin: Path
    id: Path
    ids: list
    layout: str
    dtype: str
    n_bin: Path | None = None  # GCTA's .grm.N.bin, when present

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def files(self) -> list[Path]:
        return [p for p in (self.bin, self.id, self.n_bin) if p is not None]

    def describe(self) -> str:
        return (f"{self.format} GRM {self.bin} ({self.layout}, "
                f"{'float32' if self.dtype == '<f4' else 'float64'}, {self.n} samples)")

    def read(self, rows=None) -> np.ndarray:
        """K (float64, symmetric) over the samples ``rows`` (default all), in that order.

        Refuses a non-finite entry and, for a square file, an asymmetric one (naming the pair
        of samples), and a K that is all zeros or absurdly scaled (:func:`check_grm_scale`); PLINK 2's ``square0`` (upper triangle written as zeros) is read as its
        lower triangle. Memory: the file's values plus n x n float64 (then the rows' K).
        """
        n = self.n
        vals = np.fromfile(self.bin, dtype=self.dtype)
        if self.layout == "square":
            K = vals.reshape(n, n).astype(np.float64, copy=False)  # float64: the array read
            del vals
            self._check_finite(K)
            pairs = list(_block_pairs(n))
            upper = any(np.any(np.triu(K[I, J], 1) if I == J else K[I, J]) for I, J in pairs)
            lower = any(np.any(np.tril(K[J, I], -1) if I == J else K[J, I]) for I, J in pairs)
            if n > 1 and lower and not upper:
                _mirror_lower(K)  # PLINK 2's "square0"
            else:
                self._check_symmetric(K, pairs)
        else:
            K = np.empty((n, n), dtype=np.float64)
            off = 0
            for i in range(n):
                K[i, : i + 1] = vals[off: off + i + 1]
                off += i + 1
            del vals
            _mirror_lower(K)
            self._check_finite(K)
        if rows is not None:
            rows = np.asarray(rows)
            if rows.size != n or np.any(rows != np.arange(n)):
                K = K[np.ix_(rows, rows)]
        check_grm_scale(K, f"{self.bin}", "" if rows is None else f" over the {K.shape[0]} samples used")
        return K

    def _check_symmetric(self, K: np.ndarray, pairs) -> None:
        tol = SYMMETRY_RTOL * max(float(np.abs(np.diag(K)).max()), 1e-300)
        for I, J in pairs:
            d = np.abs(K[I, J] - K[J, I].T)
            if d.max() > tol:
                a, b = np.unravel_index(int(np.argmax(d)), d.shape)
                i, j = I.start + a, J.start + b
                raise InputError(f"{self.bin}: not symmetric: K[{self._name(i)}, {self._name(j)}] = "
                                 f"{K[i, j]:.8g} but K[{self._name(j)}, {self._name(i)}] = {K[j, i]:.8g}; "
                                 f"a GRM must be symmetric (remake it with plink2 --make-rel or gcta "
                                 f"--make-grm-bin)")

    def _name(self, i: int) -> str:
        f, s = self.ids[i]
        return f"{f}/{s}"

    def _check_finite(self, K: np.ndarray) -> None:
        bad = ~np.isfinite(K)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise InputError(f"{self.bin}: {int(bad.sum())} non-finite value(s) (NaN or infinite), e.g. "
                             f"K[{self._name(i)}, {self._name(j)}] = {K[i, j]}; a GRM needs finite "
                             f"values: remake it (a sample or variant with only missing calls?)")

    def n_variants(self) -> dict | None:
        """Min, median and max of GCTA's ``.grm.N.bin`` (variants behind each entry), or None."""
        if self.n_bin is None:
            return None
        N = np.fromfile(self.n_bin, dtype="<f4")
        if N.size == 0 or not np.all(np.isfinite(N)):
            raise InputError(f"{self.n_bin}: non-finite counts; remake it or remove it (it is optional)")
        return {"min": float(N.min()), "median": float(np.median(N)), "max": float(N.max())}


#: the mean diagonal a given GRM may have. ``mean(diag K) = Σ_ij x_ij² / (n p)`` is the mean
#: square of a standardized genotype: about 1 + F (F the mean inbreeding, so within [0, 2]) for
#: GCTA's GRM, PLINK 2's --make-rel and GEMMA's -gk 2; 2f(1 − f)(1 + F) averaged over variants
#: for centred genotypes (GEMMA -gk 1: at most 1, about 0.3 for common variants, and ~2·MAF for
#: a rare-variant GRM); half of those for a kinship matrix. Three orders of magnitude either side
#: of 1 leave room for every one of these; outside, K was scaled wrongly (not divided by the
#: number of variants, or multiplied by it), and REML on it is meaningless
MEAN_DIAG_RANGE = (1e-3, 1e3)


def check_grm_scale(K: np.ndarray, label: str, where: str = "") -> None:
    """Refuse a GRM that is all zeros or whose mean diagonal is outside :data:`MEAN_DIAG_RANGE`.

    >>> check_grm_scale(np.eye(3) * 1e30, "k.grm.bin")
    Traceback (most recent call last):
    ...
    bigmm.errors.InputError: k.grm.bin: the mean diagonal of K is 1e+30, outside [0.001, 1000] ...
    """
    if not np.any(K):
        raise InputError(f"{label}: every value of K is 0{where}; a GRM cannot be all zeros (REML on it "
                         f"has no genetic variance to estimate): remake it (gcta --make-grm-bin, plink2 "
                         f"--make-rel) and check that the genotypes it was made from are not all missing")
    d = float(np.mean(np.diag(K)))
    lo, hi = MEAN_DIAG_RANGE
    if not lo <= d <= hi:
        raise InputError(f"{label}: the mean diagonal of K is {d:.4g}{where}, outside [{lo:g}, {hi:g}] "
                         f"(largest |entry| {float(np.abs(K).max()):.4g}); a GRM of standardized genotypes has "
                         f"a mean diagonal near 1 (GCTA --make-grm, PLINK 2 --make-rel; about 0.5 for a "
                         f"kinship matrix, 0.01-1 for centred genotypes), so this one is wrongly scaled and "
                         f"its h2 would be meaningless: divide it by the number of variants it sums over "
                         f"(or remake it with gcta --make-grm-bin or plink2 --make-rel)")


#: |K_ij − K_ji| allowed in a square file, relative to the largest diagonal value: far above
#: float32 round-off of a symmetric matrix written twice (exactly symmetric from plink2), far
#: below anything a GRM could mean
SYMMETRY_RTOL = 1e-6


#: rows and columns of the blocks in which a read GRM is mirrored and checked for symmetry
BLOCK = 2048


def _block_pairs(n: int, block: int | None = None):
    """Row and column slices of the blocks on and above the diagonal of an n x n matrix."""
    block = block or BLOCK
    cuts = [slice(a, min(n, a + block)) for a in range(0, n, block)]
    for b, I in enumerate(cuts):
        for J in cuts[b:]:
            yield I, J


def _mirror_lower(K: np.ndarray) -> None:
    """Copy the lower triangle of K onto its upper triangle, in place, block by block."""
    for I, J in _block_pairs(K.shape[0]):
        if I == J:
            blk = K[I, I]
            iu = np.triu_indices(blk.shape[0], 1)
            blk[iu] = blk.T[iu]
        else:
            K[I, J] = K[J, I].T


def _grm_files(path: Path) -> tuple[str, Path]:
    """The format and prefix a ``genotypes.grm`` path names: a prefix (the format told by which
    files exist, refused when both do) or one of the format's files (that format)."""
    s = str(path)
    for fmt, roles in GRM_FORMATS.items():
        for suffix in roles.values():
            if s.endswith(suffix):
                return fmt, Path(s[: -len(suffix)])
    have = [fmt for fmt, roles in GRM_FORMATS.items() if Path(s + roles["bin"]).exists()]
    if len(have) == 2:
        raise InputError(f"genotypes.grm {s}: both {s}.grm.bin (GCTA) and {s}.rel.bin (PLINK 2) exist; "
                         f"say which to read: genotypes.grm: {s}.grm.bin or {s}.rel.bin")
    if not have:
        near = [Path(s + roles[k]).name for roles in GRM_FORMATS.values() for k in ("id",)
                if Path(s + roles[k]).exists()]
        raise InputError(f"genotypes.grm {s}: neither {s}.grm.bin (GCTA --make-grm-bin) nor {s}.rel.bin "
                         f"(plink2 --make-rel bin) exists"
                         + (f" (only {', '.join(near)})" if near else "")
                         + "; give the prefix of the GRM files")
    return have[0], Path(s)


def grm_paths(path: str | Path) -> tuple[str, dict[str, Path]]:
    """The format (``gcta`` or ``plink2``) and the files (``bin``, ``id`` and, when present,
    GCTA's ``N``) that a ``genotypes.grm`` path names, without reading them."""
    fmt, prefix = _grm_files(Path(path))
    files = {k: Path(str(prefix) + v) for k, v in GRM_FORMATS[fmt].items()}
    if "N" in files and not files["N"].exists():
        del files["N"]
    return fmt, files


def _read_grm_ids(path: Path, fmt: str) -> list[tuple[str, str]]:
    """FID IID per line (GCTA: no header); PLINK 2: a ``#FID IID`` or ``#IID`` header (no FID
    column: FID is '0', as PLINK 2 takes it)."""
    if not path.exists():
        raise InputError(f"{path} does not exist; a GRM needs its sample IDs file beside the .bin")
    ids = []
    iid_only = False
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.split()
            if not fields:
                continue
            if lineno == 1 and fields[0].startswith("#"):
                head = [fields[0][1:]] + fields[1:]
                if head[:2] == ["FID", "IID"]:
                    continue
                if head[:1] == ["IID"]:
                    iid_only = True
                    continue
                raise InputError(f"{path} line 1: header {line.strip()!r}; expected #FID IID or #IID "
                                 f"(PLINK 2) or no header (GCTA: FID IID)")
            if iid_only:
                ids.append(("0", fields[0]))
            elif len(fields) < 2:
                raise InputError(f"{path} line {lineno}: expected FID IID, got {line.strip()!r}")
            else:
                ids.append((fields[0], fields[1]))
    if not ids:
        raise InputError(f"{path} lists no samples")
    return ids


def open_grm(path: str | Path) -> GrmFiles:
    """The GRM files that ``path`` names (a prefix, or one of the files), with the sample IDs
    read and the size of the ``.bin`` (and ``.grm.N.bin``) checked against their number; no
    values read yet (:meth:`GrmFiles.read`).

    GCTA: ``PREFIX.grm.bin`` (float32 lower triangle with the diagonal, row by row),
    ``PREFIX.grm.id`` (FID IID), optional ``PREFIX.grm.N.bin``. PLINK 2: ``PREFIX.rel.bin``
    (square or triangle, float64 or float32: ``--make-rel bin``, ``bin4``, ``triangle``),
    ``PREFIX.rel.id`` (``#FID IID`` or ``#IID`` header).
    """
    fmt, files = grm_paths(path)
    if not files["bin"].exists():
        raise InputError(f"genotypes.grm: {files['bin']} does not exist")
    ids = _read_grm_ids(files["id"], fmt)
    n = len(ids)
    size = files["bin"].stat().st_size
    tri = n * (n + 1) // 2
    if fmt == "gcta":
        options = {(tri * 4): ("triangle", "<f4")}
    else:
        options = {n * n * 8: ("square", "<f8"), n * n * 4: ("square", "<f4"),
                   tri * 8: ("triangle", "<f8"), tri * 4: ("triangle", "<f4")}
    if size not in options:
        want = " or ".join(f"{b} bytes ({lay} {'float32' if dt == '<f4' else 'float64'})"
                           for b, (lay, dt) in options.items())
        raise InputError(f"{files['bin']} is {size} bytes, but {files['id'].name} lists {n} samples, "
                         f"which need {want}: the file is truncated or belongs to another .id file")
    layout, dtype = options[size]
    n_bin = files.get("N")
    if n_bin is not None:
        if n_bin.stat().st_size != tri * 4:
            raise InputError(f"{n_bin} is {n_bin.stat().st_size} bytes, but {files['id'].name} lists {n} "
                             f"samples, which need {tri * 4} bytes (float32 triangle); remake it, or "
                             f"remove it (it is optional: bigmm only reports the counts)")
    return GrmFiles(format=fmt, bin=files["bin"], id=files["id"], ids=ids, layout=layout, dtype=dtype,
                    n_bin=n_bin)


@dataclass(frozen=True)
class GrmList:
    """Several GRMs on disk over the same samples (GCTA ``--mgrm``, GEMMA ``-mk``), opened, their
    sample IDs checked, no values read yet.

    ``grms``: one :class:`GrmFiles` per GRM, in the list's order; ``names``: their prefixes as
    given; ``ids``: the samples, in the first GRM's order; ``rows[j]``: where each of ``ids`` is
    in GRM j's own order.
    """

    grms: tuple
    names: tuple
    ids: list
    rows: tuple

    def read(self, samples=None) -> list[np.ndarray]:
        """Every K_j (float64, symmetric) over ``samples`` (positions in :attr:`ids`, default all),
        in that order: one read of each file (:meth:`GrmFiles.read`)."""
        out = []
        for grm, rows in zip(self.grms, self.rows):
            out.append(grm.read(rows if samples is None else rows[np.asarray(samples)]))
        return out


def _mgrm_prefixes(source) -> list[tuple[str, Path, str]]:
    """(what names it, path, prefix as given) of each GRM a ``--mgrm`` list file or a sequence of
    prefixes names; relative prefixes in a file are taken from the file's folder."""
    if isinstance(source, (str, Path)) and Path(source).is_file() and not _is_grm_file(Path(source)):
        path = Path(source)
        out = []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                if len(text.split()) > 1:
                    raise InputError(f"{path} line {lineno}: {text!r}; expected one GRM prefix per line "
                                     f"(as GCTA's --mgrm)")
                prefix = Path(text) if Path(text).is_absolute() else path.parent / text
                out.append((f"{path} line {lineno}", prefix, text))
        if not out:
            raise InputError(f"{path} names no GRM; list one GRM prefix per line (as GCTA's --mgrm)")
        return out
    if isinstance(source, (str, Path)):
        source = [source]
    out = [(f"GRM {i + 1} ({p})", Path(p), str(p)) for i, p in enumerate(source)]
    if not out:
        raise InputError("no GRM given; give two or more GRM prefixes (as GCTA's --mgrm)")
    return out


def _is_grm_file(path: Path) -> bool:
    return path.name.endswith((".grm.bin", ".grm.id", ".grm.N.bin", ".rel.bin", ".rel.id"))


def open_mgrm(source) -> GrmList:
    """The GRMs a GCTA ``--mgrm`` list names (a text file, one GCTA or PLINK 2 GRM prefix per
    line; blank lines and ``#`` comments skipped; relative prefixes from the file's folder), or a
    sequence of prefixes, each opened (:func:`open_grm`: IDs read, sizes checked, no values read).

    Every GRM must hold the same samples (in any order; the first GRM's order is kept): a GRM of
    other samples is refused, naming both files and a sample one lacks, as is a GRM listed twice.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib, bigmm
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> ids = [("F1", "I1"), ("F2", "I2"), ("F3", "I3")]
    >>> for name in ("a", "b"):
    ...     _ = bigmm.write_gcta_grm(d / name, np.eye(3), ids, n_variants=10)
    >>> _ = (d / "mgrm.txt").write_text("a\\nb\\n")
    >>> grms = open_mgrm(d / "mgrm.txt")
    >>> grms.names, len(grms.read())
    (('a', 'b'), 2)
    """
    entries = _mgrm_prefixes(source)
    seen: dict[Path, str] = {}
    grms, names = [], []
    for where, prefix, given in entries:
        try:
            grm = open_grm(prefix)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
        key = grm.bin.resolve()
        if key in seen:
            raise InputError(f"{where}: {grm.bin} is already listed ({seen[key]}); list each GRM once")
        seen[key] = where
        grms.append(grm)
        names.append(given)
    ids = list(grms[0].ids)
    position = {s: i for i, s in enumerate(ids)}
    rows = []
    for (where, _, _), grm in zip(entries, grms):
        if len(set(grm.ids)) != len(grm.ids):
            dup = next(s for i, s in enumerate(grm.ids) if s in grm.ids[:i])
            raise InputError(f"{where}: {grm.id} lists sample {' '.join(dup)} twice")
        mine = {s: i for i, s in enumerate(grm.ids)}
        lacking = [s for s in ids if s not in mine]
        extra = [s for s in grm.ids if s not in position]
        if lacking or extra:
            s, which, other = (lacking[0], grm.id, grms[0].id) if lacking else (extra[0], grms[0].id, grm.id)
            raise InputError(f"{where}: the GRMs are over different samples ({len(lacking)} of {grms[0].id} "
                             f"missing from {grm.id}, {len(extra)} of {grm.id} not in {grms[0].id}; e.g. "
                             f"{' '.join(s)} is in {other} but not in {which}); make every GRM on the same "
                             f"samples")
        rows.append(np.array([mine[s] for s in ids], dtype=np.int64))
    return GrmList(grms=tuple(grms), names=tuple(names), ids=ids, rows=tuple(rows))
