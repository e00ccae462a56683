"""Phenotype and covariate tables, aligned to the samples of a genotype store.

Tables are whitespace- or tab-separated with a header whose first two columns
are ``FID IID`` (PLINK/GCTA style), or without a header (GCTA layout; columns
are then named ``1``, ``2``, ... after FID and IID, or ``PHENO1``, ``PHENO2``, ...
in a phenotype file, as PLINK 2 names them; a column of a headerless table may
also be asked for by its number). They are read as UTF-8; a
byte-order mark at the start is ignored, and a gzip-compressed table (``.gz``,
recognised by its content, whatever its name) is read transparently. Fields in
double quotes (R's ``write.table``) lose the quotes.

Missing values are ``NA``, ``N/A``, ``.``, ``NaN`` (any upper/lower case),
empty (empty cells need a tab-separated file), and any number equal to -9
(``-9``, ``-9.0``, ``-9.00``, ``-9e0`` as R and pandas write it). The same rule
holds for phenotypes, quantitative covariates and levels of categorical
covariates (a level ``-9`` is missing).

Rows are matched to genotyped samples by (FID, IID), after normalising both
sides to Unicode NFC, so that an ID typed in another normalisation (NFD, as
macOS file names and some editors produce) still matches. How well each file
matched (rows, rows matched, genotyped samples without a row, rows that would
match with FID and IID swapped or by IID alone) is logged and recorded in
``Design.notes["matches"]``; a poor match adds an entry to
``Design.notes["warnings"]`` and is logged as a warning.
"""

from __future__ import annotations

import gzip
import logging
import math
import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError, missing_reason

log = logging.getLogger("bigmm")

#: textual missing-value codes, compared case-insensitively; besides these, any
#: cell that parses as a number equal to -9 (``-9``, ``-9.0``, ``-9e0``) is missing
MISSING = frozenset({"", "na", "n/a", ".", "nan"})
MISSING_NUMBER = -9.0
#: a file warns when fewer of its rows match a genotyped sample, or more genotyped
#: samples lack a row, than these fractions
MIN_ROWS_MATCHED = 0.9
MAX_GENOTYPED_WITHOUT_ROW = 0.1
_GZIP_MAGIC = b"\x1f\x8b"
#: the table layouts bigmm reads, for error messages
LAYOUTS = ("accepted layouts: 'fid_iid' (the default): FID IID then values, with a header line "
           "'FID IID name ...' (or PLINK 2's '#FID IID ...') or without one (GCTA/PLINK: columns "
           "PHENO1, PHENO2, ... of a phenotype file, 1, 2, ... of a covariate file); 'gemma' (phenotypes.layout: gemma): no IDs and no header, one column per "
           "phenotype, one row per genotyped sample in .fam order, NA for missing")
#: what a GEMMA ``-p`` file read as FID IID (values taken for IDs) is told
GEMMA_HINT = ("this looks like GEMMA's phenotype layout (no IDs, one column per phenotype, rows in "
              ".fam order): use --pheno-layout gemma (phenotypes.layout: gemma)")
#: the names of a headerless phenotype file's columns (PLINK 2's, and those of the .fam's)
PHENO_PREFIX = "PHENO"


def is_missing(cell: str) -> bool:
    """Whether a table cell is a missing value (see the module docstring)."""
    if cell.lower() in MISSING:
        return True
    try:
        x = float(cell)
    except ValueError:
        return False
    return math.isnan(x) or x == MISSING_NUMBER


def nfc(s: str) -> str:
    """``s`` in Unicode normalisation form C (how sample IDs are compared)."""
    return s if s.isascii() else unicodedata.normalize("NFC", s)


def _nfc_keys(fid: Sequence[str], iid: Sequence[str]) -> list[tuple[str, str]]:
    """(FID, IID) pairs in NFC; ASCII IDs (the usual case) as they are."""
    if "".join(fid).isascii() and "".join(iid).isascii():
        return list(zip(fid, iid))
    return [(nfc(f), nfc(i)) for f, i in zip(fid, iid)]


def _unquote(c: str) -> str:
    return c[1:-1] if len(c) >= 2 and c[0] == '"' and c[-1] == '"' else c


@dataclass(frozen=True)
class Table:
    """A parsed table: raw string cells, one row per sample."""

    path: Path
    columns: list[str]
    fid: list[str]
    iid: list[str]
    cells: list[list[str]]  # rows x columns (without FID/IID)
    lines: list[int]  # file line of each row
    #: no header line: columns are named by position and may be asked for by number (``"2"``)
    headerless: bool = False

    def column_index(self, name: str) -> int:
        if name in self.columns:
            return self.columns.index(name)
        if self.headerless and name.isdigit() and 1 <= int(name) <= len(self.columns):
            return int(name) - 1
        raise InputError(f"{self.path}: no column {name!r}; the file has columns "
                         f"{', '.join(self.columns) or 'none besides FID IID'}"
                         + (" (no header line: columns are named by position, or numbered from 1 "
                            "after FID IID)" if self.headerless else ""))

    def column_name(self, name: str) -> str:
        """The name of column ``name`` (``"2"`` of a headerless phenotype file is ``PHENO2``)."""
        return self.columns[self.column_index(name)]

    def numeric(self, name: str) -> np.ndarray:
        """Column ``name`` as float64, NaN for missing; a clear error for text."""
        j = self.column_index(name)
        out = np.empty(len(self.cells), dtype=np.float64)
        for r, row in enumerate(self.cells):
            v = row[j]
            if v.lower() in MISSING:
                out[r] = np.nan
                continue
            try:
                x = float(v)
            except ValueError:
                x = math.inf  # refused below
            if math.isnan(x) or x == MISSING_NUMBER:
                out[r] = np.nan
                continue
            if not math.isfinite(x):
                raise InputError(f"{self.path} line {self.lines[r]}: value {v!r} of column {name!r} "
                                 f"for sample {self.fid[r]}/{self.iid[r]} is not a number; "
                                 f"use NA or -9 for missing")
            out[r] = x
        return out

    def text(self, name: str) -> list[str | None]:
        j = self.column_index(name)
        return [None if is_missing(row[j]) else row[j] for row in self.cells]


def _read_text(path: Path, what: str) -> str:
    """The file's text: UTF-8 without a byte-order mark, gunzipped if it is gzip data."""
    compressed = False
    try:
        with open(path, "rb") as fh:
            compressed = fh.read(2) == _GZIP_MAGIC
        if compressed:
            with gzip.open(path, "rt", encoding="utf-8-sig") as fh:
                return fh.read()
        with open(path, encoding="utf-8-sig") as fh:
            return fh.read()
    except UnicodeDecodeError as exc:
        raise InputError(f"cannot read {what} file {path} as a text table ({exc}); "
                         f"tables must be UTF-8 text" + (" (here gzip-compressed)" if compressed else "")
                         ) from None
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"cannot read {what} file {path} as a text table ({exc})"
                         + ("; it is gzip-compressed but damaged or cut short" if compressed else "")
                         ) from None


def read_table(path: str | Path, what: str = "table") -> Table:
    """Read an FID IID table; errors name the file and line.

    With a header (first line ``FID IID ...``, or PLINK 2's ``#FID IID ...``) columns
    have its names; without one (GCTA's ``--pheno``/``--qcovar``/``--covar`` layout)
    they are named by position after FID and IID: ``1``, ``2``, ..., or ``PHENO1``,
    ``PHENO2``, ... when ``what`` is ``"phenotype"`` (PLINK 2's names; a phenotype named
    ``1`` would give results ``1`` and ``hsq/1.hsq``); either may be asked for by number.
    The file may be gzip-compressed and may start with a UTF-8 byte-order mark.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "pheno.tsv"
    >>> _ = p.write_text("FID\\tIID\\theight\\nF1\\tI1\\t1.70\\nF2\\tI2\\tNA\\n")
    >>> t = read_table(p, "phenotype")
    >>> t.columns, t.numeric("height").tolist()
    (['height'], [1.7, nan])
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file {path} {missing_reason(path)}")
    raw = _read_text(path, what).splitlines()
    lines = [(i + 1, ln) for i, ln in enumerate(raw)
             if ln.strip() and not (ln.startswith("#") and not ln.upper().startswith("#FID"))]
    if not lines:
        raise InputError(f"{what} file {path} is empty")
    header_line = lines[0][1]
    tab = "\t" in header_line

    def split(line: str) -> list[str]:
        fields = [c.strip() for c in line.rstrip("\r\n").split("\t")] if tab else line.split()
        return [_unquote(c) for c in fields] if '"' in line else fields

    header = split(header_line)
    headerless = not (len(header) >= 2 and header[0].upper().lstrip("#") == "FID" and header[1].upper() == "IID")
    if len(header) < 2 or (headerless and len(header) == 2 and what == "phenotype"):
        raise InputError(f"{path} line {lines[0][0]}: expected FID IID and at least one value, found "
                         f"{len(header)} field{'s' if len(header) != 1 else ''}; "
                         + (f"{GEMMA_HINT}; " if all(_number_or_missing(c) for c in header) else "")
                         + LAYOUTS)
    if not headerless:
        columns = header[2:]
        data = lines[1:]
        detected = f"read with its header line {lines[0][0]} (FID IID and {len(columns)} named columns)"
    else:
        # GCTA/PLINK layout without a header (--pheno, --qcovar, --covar): columns 1, 2, ...
        # (PHENO1, PHENO2, ... for phenotypes)
        prefix = PHENO_PREFIX if what == "phenotype" else ""
        columns = [f"{prefix}{i + 1}" for i in range(len(header) - 2)]
        header = ["FID", "IID"] + columns
        data = lines
        detected = (f"read as headerless FID IID and {len(columns)} value columns (its line "
                    f"{lines[0][0]} does not start with FID IID)")
    dup = {c for c in columns if columns.count(c) > 1}
    if dup:
        raise InputError(f"{path}: duplicate column names {sorted(dup)}")
    fid, iid, cells, linenos = [], [], [], []
    seen: dict[tuple[str, str], int] = {}
    for lineno, line in data:
        fields = split(line)
        if len(fields) != len(header):
            raise InputError(f"{path} line {lineno}: {len(fields)} fields, but the header has "
                             f"{len(header)}" + ("" if tab else " (for empty cells use a tab-separated file)")
                             + f"; the file was {detected}; {LAYOUTS}")
        key = (fields[0], fields[1])
        if not (key[0].isascii() and key[1].isascii()):
            key = (nfc(key[0]), nfc(key[1]))
        if key in seen:
            first = seen[key]
            same = (fid[first], iid[first]) == (fields[0], fields[1])
            # GEMMA's values read as IDs (NA NA in two rows): say so rather than "duplicate sample"
            # (integer IDs such as 1 1 repeated are a real duplicate: no hint)
            gemma = headerless and all(_number_or_missing(c) for c in fields) and \
                any(is_missing(c) or "." in c for c in fields[:2])
            raise InputError(f"{path} line {lineno}: duplicate sample {fields[0]}/{fields[1]} "
                             f"(first on line {linenos[first]}"
                             + ("" if same else f" as {fid[first]}/{iid[first]}, the same ID after "
                                                f"Unicode NFC normalisation") + ")"
                             + (f"; its ID columns hold values, not IDs: {GEMMA_HINT}" if gemma else ""))
        seen[key] = len(fid)
        fid.append(fields[0])
        iid.append(fields[1])
        cells.append(fields[2:])
        linenos.append(lineno)
    return Table(path=path, columns=columns, fid=fid, iid=iid, cells=cells, lines=linenos,
                 headerless=headerless)


def read_gemma_table(path: str | Path, sample_ids: Sequence[tuple[str, str]], what: str = "phenotype") -> Table:
    """Read a GEMMA phenotype file (``-p``): no IDs and no header, one column per phenotype,
    one row per genotyped sample in .fam order, ``NA`` (or -9) for missing.

    Columns are named ``PHENO1``, ``PHENO2``, ... and may be asked for by number (``"1"``:
    GEMMA's ``-n 1``); rows take the IDs of ``sample_ids`` in order, so the row count must
    equal the number of genotyped samples.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file {path} does not exist")
    raw = _read_text(path, what).splitlines()
    lines = [(i + 1, ln) for i, ln in enumerate(raw) if ln.strip()]
    if not lines:
        raise InputError(f"{what} file {path} is empty")
    ids = [tuple(s) for s in sample_ids]
    width = len(lines[0][1].split())
    if len(lines) != len(ids):
        raise InputError(f"{what} file {path} (GEMMA layout: one row per genotyped sample, in .fam "
                         f"order) has {len(lines)} rows, but the genotype data have {len(ids)} samples; "
                         f"rows cannot be matched to samples: write one row per .fam line (NA for "
                         f"missing), or give a table with FID IID columns ({LAYOUTS})")
    cells, linenos = [], []
    for lineno, line in lines:
        fields = line.split()
        if len(fields) != width:
            raise InputError(f"{path} line {lineno}: {len(fields)} fields, but line {lines[0][0]} has "
                             f"{width}; the file was read in the GEMMA layout (phenotypes.layout: gemma: "
                             f"one column per phenotype, no IDs, no header)")
        try:
            float(fields[0]) if not is_missing(fields[0]) else None
        except ValueError:
            if lineno == lines[0][0]:
                raise InputError(f"{path} line {lineno}: {fields[0]!r} is not a number: a GEMMA-layout "
                                 f"file has no header line and no ID columns ({LAYOUTS})") from None
        cells.append(fields)
        linenos.append(lineno)
    return Table(path=path, columns=[f"{PHENO_PREFIX}{j + 1}" for j in range(width)], fid=[f for f, _ in ids],
                 iid=[i for _, i in ids], cells=cells, lines=linenos, headerless=True)


def fam_table(path: str | Path, fid: Sequence[str], iid: Sequence[str], cells: Sequence[Sequence[str]],
              lines: Sequence[int]) -> Table:
    """The phenotype columns of a .fam (column 6 on) as a table: columns ``PHENO1``, ``PHENO2``, ...
    (PLINK 2's names; ``PHENO{N}`` is GEMMA's ``-n N``). Missing: -9, NA (see :func:`is_missing`)."""
    width = len(cells[0]) if cells else 0
    return Table(path=Path(path), columns=[f"PHENO{j + 1}" for j in range(width)], fid=list(fid),
                 iid=list(iid), cells=[list(c) for c in cells], lines=list(lines))


def read_sample_list(path: str | Path, what: str = "sample list") -> list[tuple[str | None, str]]:
    """A PLINK --keep/--remove file: FID IID per line (whitespace, more columns ignored), or a
    one-column IID list; a header line ``FID IID``, ``#FID IID`` or ``#IID`` is skipped.
    One-column lines give ``(None, IID)``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {path} does not exist")
    out = []
    for lineno, line in enumerate(_read_text(path, what).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        head = [f.upper().lstrip("#") for f in fields[:2]]
        if lineno == 1 and (head[:2] == ["FID", "IID"] or head[0] == "IID"):
            continue
        out.append((None, fields[0]) if len(fields) == 1 else (fields[0], fields[1]))
    if not out:
        raise InputError(f"{what} {path} lists no sample")
    return out


def sample_matches(listed: Sequence[tuple[str | None, str]], sample_ids: Sequence[tuple[str, str]]
                   ) -> tuple[np.ndarray, int]:
    """Which genotyped samples a --keep/--remove list names (a one-column entry names every
    sample with that IID), and how many entries name no genotyped sample."""
    geno = _Genotyped(sample_ids)
    by_iid: dict[str, list[int]] = {}
    for g, (_, i) in enumerate(geno.keys):
        by_iid.setdefault(i, []).append(g)
    hit = np.zeros(len(geno), dtype=bool)
    unmatched = 0
    for f, i in listed:
        if f is None:
            gs = by_iid.get(nfc(i), [])
        else:
            g = geno.index.get((nfc(f), nfc(i)))
            gs = [] if g is None else [g]
        if not gs:
            unmatched += 1
        hit[gs] = True
    return hit, unmatched


class _Genotyped:
    """The genotyped sample IDs, NFC-normalised, with the look-ups that matching needs."""

    def __init__(self, sample_ids: Sequence[tuple[str, str]]):
        self.ids = [tuple(s) for s in sample_ids]
        self.keys = _nfc_keys([f for f, _ in self.ids], [i for _, i in self.ids])

    def __len__(self) -> int:
        return len(self.keys)

    @cached_property
    def index(self) -> dict[tuple[str, str], int]:
        return {k: g for g, k in enumerate(self.keys)}

    @cached_property
    def by_unique_iid(self) -> dict[str, int]:
        """Genotyped sample of each IID that only one genotyped sample has."""
        counts = Counter(i for _, i in self.keys)
        return {k[1]: g for g, k in enumerate(self.keys) if counts[k[1]] == 1}


def _align(table: Table, geno: _Genotyped) -> np.ndarray:
    index = {k: r for r, k in enumerate(_nfc_keys(table.fid, table.iid))}
    rows = np.array([index.get(k, -1) for k in geno.keys], dtype=np.int64)
    matched = rows[rows >= 0]
    if np.unique(matched).size < matched.size:  # duplicate genotype IDs (maybe only after NFC)
        r = int(next(v for v, c in Counter(matched.tolist()).items() if c > 1))
        both = [f"{f}/{i}" for (f, i), x in zip(geno.ids, rows) if x == r]
        how = (f"sample {both[0]} {len(both)} times" if len(set(both)) == 1 else
               f"samples {' and '.join(both)}, the same ID after Unicode NFC normalisation")
        raise InputError(f"the genotype data have {how}; all would take line {table.lines[r]} of "
                         f"{table.path}: make the genotype sample IDs distinct")
    return rows


def align_rows(table: Table, sample_ids: Sequence[tuple[str, str]]) -> np.ndarray:
    """For each genotyped sample, the table row holding it, or -1.

    IDs are compared after Unicode NFC normalisation of both sides.
    """
    return _align(table, _Genotyped(sample_ids))


def _near_matches(table: Table, geno: _Genotyped, rows: np.ndarray) -> tuple[list, list]:
    """Rows that match no genotyped sample but would with FID and IID swapped, or by IID alone.

    Each as (table row, genotyped sample) pairs; only genotyped samples without a row of their
    own count, and IID-alone only where the IID is unique among the genotyped samples (so that
    family-numbered IIDs such as 1, 2, ... do not count).
    """
    has_row = rows >= 0
    row_matched = np.zeros(len(table.fid), dtype=bool)
    row_matched[rows[has_row]] = True
    swapped, iid_only = [], []
    unmatched = np.flatnonzero(~row_matched).tolist()
    if not unmatched:
        return swapped, iid_only
    for r in unmatched:
        f, i = nfc(table.fid[r]), nfc(table.iid[r])
        g = geno.index.get((i, f), -1)
        if g >= 0 and not has_row[g]:
            swapped.append((r, g))
            continue
        g = geno.by_unique_iid.get(i, -1)
        if g >= 0 and not has_row[g]:
            iid_only.append((r, g))
    return swapped, iid_only


def _match_report(table: Table, geno: _Genotyped, rows: np.ndarray, what: str) -> tuple[dict, str | None]:
    """How ``table`` matched the genotyped samples: counts for the notes, and a warning or None."""
    n_rows, n_gen = len(table.fid), len(geno)
    n_matched = int((rows >= 0).sum())
    swapped, iid_only = _near_matches(table, geno, rows)
    counts = {"what": what, "file": str(table.path), "rows": n_rows, "rows_matched": n_matched,
              "genotyped_without_row": n_gen - n_matched, "rows_matching_if_swapped": len(swapped),
              "rows_matching_by_iid_only": len(iid_only)}
    summary = (f"{n_matched} of {n_rows} rows match a genotyped sample; "
               f"{n_gen - n_matched} of {n_gen} genotyped samples have no row")
    log.info("%s file %s: %s", what, table.path, summary)
    poor = n_matched < MIN_ROWS_MATCHED * n_rows or n_gen - n_matched > MAX_GENOTYPED_WITHOUT_ROW * n_gen
    if not (poor or swapped or iid_only):
        return counts, None
    return counts, (f"{what} file {table.path} "
                    + ("matches the genotyped samples poorly" if poor else
                       "has rows whose IDs nearly match genotyped samples")
                    + f": {summary}"
                    + _hints(table, geno, swapped, iid_only)
                    + "; genotyped samples without a row are left out of the analysis: check the FID "
                      "and IID columns")


def _hints(table: Table, geno: _Genotyped, swapped, iid_only) -> str:
    def example(pairs):
        r, g = pairs[0]
        return (f" (e.g. {table.fid[r]}/{table.iid[r]} on line {table.lines[r]} and genotyped sample "
                f"{geno.ids[g][0]}/{geno.ids[g][1]})")

    out = ""
    if swapped:
        out += f"; {len(swapped)} rows match if FID and IID are swapped" + example(swapped)
    if iid_only:
        out += (f"; {len(iid_only)} rows match a genotyped sample by IID alone, with a different FID"
                + example(iid_only))
    return out


def _record_match(notes: dict, table: Table, geno: _Genotyped, rows: np.ndarray, what: str) -> None:
    counts, warning = _match_report(table, geno, rows, what)
    notes["matches"].append(counts)
    if warning is not None:
        notes["warnings"].append(warning)
        log.warning("%s", warning)


@dataclass(frozen=True)
class Design:
    """Phenotypes and fixed effects aligned to the genotyped samples.

    ``Y`` and ``Z`` have one row per genotyped sample; rows of samples that are
    not analysed (no covariates, or no phenotype at all) are marked False in
    ``analysed``. ``Y`` holds NaN for missing values.
    """

    Y: np.ndarray
    Z: np.ndarray
    phenotype_names: list[str]
    covariate_names: list[str]
    analysed: np.ndarray
    notes: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        def some(names):
            return ", ".join(map(str, names[:6])) + (f", ... ({len(names)})" if len(names) > 6 else "")

        return (f"Design({self.Y.shape[0]} genotyped samples, {int(self.analysed.sum())} analysed; "
                f"phenotypes: {some(self.phenotype_names)}; fixed effects: {some(self.covariate_names)})")


def build_design(sample_ids: Sequence[tuple[str, str]], pheno_path, pheno_columns=None,
                 covar_path=None, covar_columns: Sequence[str] = (),
                 categorical: Sequence[str] = (), qcovar_path=None, dcovar_path=None) -> Design:
    """Read phenotypes and covariates, align them to ``sample_ids`` and build Z.

    ``pheno_path`` is a table file (:func:`read_table`) or a :class:`Table` already read (a
    GEMMA-layout file, :func:`read_gemma_table`, or a .fam's phenotypes, :func:`fam_table`).
    Z always starts with an intercept. Categorical covariates are one-hot
    encoded against a reference level (the first in sorted order). Samples with
    any missing covariate are dropped, as are samples with no phenotype value.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "pheno.tsv").write_text("FID\\tIID\\ty\\n" + "".join(f"F{i}\\tI{i}\\t{i % 3}\\n" for i in range(6)))
    >>> _ = (d / "covar.tsv").write_text("FID\\tIID\\tsex\\n" + "".join(f"F{i}\\tI{i}\\t{'MF'[i % 2]}\\n" for i in range(5)))
    >>> des = build_design([(f"F{i}", f"I{i}") for i in range(6)], d / "pheno.tsv", covar_path=d / "covar.tsv",
    ...                    covar_columns=["sex"], categorical=["sex"])
    >>> des.covariate_names, des.analysed.tolist()            # F5/I5 has no covariate row
    (['intercept', 'sex=M'], [True, True, True, True, True, False])
    """
    pheno = pheno_path if isinstance(pheno_path, Table) else read_table(pheno_path, "phenotype")
    # a headerless file's columns asked for by number ("2") are named as the file's ("PHENO2")
    names = list(pheno.columns if pheno_columns in (None, "all") else
                 [pheno.column_name(str(c)) for c in pheno_columns])
    if not names:
        raise InputError(f"phenotype file {pheno.path} has no phenotype columns")
    geno = _Genotyped(sample_ids)
    rows = _align(pheno, geno)
    n_gen = len(geno)
    in_pheno = rows >= 0
    if not in_pheno.any():
        ex_g = ", ".join(f"{f}/{i}" for f, i in list(sample_ids)[:3])
        ex_p = ", ".join(f"{f}/{i}" for f, i in list(zip(pheno.fid, pheno.iid))[:3])
        raise InputError(f"no sample of phenotype file {pheno.path} is in the genotype data "
                         f"(genotypes have e.g. {ex_g}; the phenotype file has e.g. {ex_p}); "
                         f"check the FID and IID columns"
                         + _hints(pheno, geno, *_near_matches(pheno, geno, rows))
                         + (f"; its first two columns look like values, not IDs: {GEMMA_HINT} "
                            f"({LAYOUTS})" if _numeric_ids(pheno) else ""))
    notes: dict = {"n_genotyped": n_gen, "n_in_phenotype_file": int(in_pheno.sum()),
                   "matches": [], "warnings": []}
    _record_match(notes, pheno, geno, rows, "phenotype")
    Y = np.full((n_gen, len(names)), np.nan)
    for j, name in enumerate(names):
        col = pheno.numeric(name)
        Y[in_pheno, j] = col[rows[in_pheno]]
    analysed = in_pheno.copy()
    zcols = [np.ones(n_gen)]
    znames = ["intercept"]
    categorical = list(categorical)
    unknown_cat = [c for c in categorical if c not in covar_columns]
    if unknown_cat:
        raise InputError(f"categorical covariates {unknown_cat} are not among covariates.columns {list(covar_columns)}")
    if covar_columns:
        if covar_path is None:
            raise InputError("covariate columns are given but no covariate file")
        cov = read_table(covar_path, "covariate")
        crow = _align(cov, geno)
        _record_match(notes, cov, geno, crow, "covariate")
        in_cov = crow >= 0
        for name in covar_columns:
            if name in categorical:
                vals = cov.text(name)
                col = np.array([vals[r] if r >= 0 else None for r in crow], dtype=object)
                present = np.array([v is not None for v in col])
                analysed &= present
                levels = sorted({v for v, a in zip(col, analysed) if a})
                _check_levels(name, levels, covar_path)
                for lev in levels[1:]:
                    zcols.append(np.array([1.0 if v == lev else 0.0 for v in col]))
                    znames.append(f"{name}={lev}")
                notes.setdefault("categorical_reference", {})[name] = levels[0] if levels else None
            else:
                vals = cov.numeric(name)
                col = np.full(n_gen, np.nan)
                col[in_cov] = vals[crow[in_cov]]
                analysed &= ~np.isnan(col)
                zcols.append(col)
                znames.append(name)
        notes["n_missing_covariates"] = int((in_pheno & ~analysed).sum())
    # GCTA-layout covariate files: every column quantitative (--qcovar) or discrete (--covar)
    for path, discrete in ((qcovar_path, False), (dcovar_path, True)):
        if path is None:
            continue
        cov = read_table(path, "covariate")
        crow = _align(cov, geno)
        _record_match(notes, cov, geno, crow, "covariate")
        tag = Path(path).name
        for name in cov.columns:
            if discrete:
                vals = cov.text(name)
                col = np.array([vals[r] if r >= 0 else None for r in crow], dtype=object)
                analysed &= np.array([v is not None for v in col])
                levels = sorted({v for v, a in zip(col, analysed) if a})
                _check_levels(name, levels, path)
                for lev in levels[1:]:
                    zcols.append(np.array([1.0 if v == lev else 0.0 for v in col]))
                    znames.append(f"{tag}:{name}={lev}")
            else:
                vals = cov.numeric(name)
                col = np.full(n_gen, np.nan)
                col[crow >= 0] = vals[crow[crow >= 0]]
                analysed &= ~np.isnan(col)
                zcols.append(col)
                znames.append(f"{tag}:{name}")
    Z = np.column_stack(zcols)
    Z[~analysed] = 0.0
    has_any = ~np.all(np.isnan(Y), axis=1)
    analysed &= has_any
    Y[~analysed] = np.nan
    if not analysed.any():
        if not (has_any & in_pheno).any():
            raise InputError(f"phenotype file {pheno.path}: every value of "
                             f"{', '.join(repr(n) for n in names)} is missing (NA, -9 or empty) for "
                             f"the genotyped samples; there is nothing to fit")
        raise InputError(f"no genotyped sample has both a phenotype in {pheno.path} and all covariates")
    for j, name in enumerate(names):
        y = Y[analysed, j]
        obs = y[~np.isnan(y)]
        if obs.size == 0:
            raise InputError(f"phenotype {name!r} in {pheno.path} has no non-missing value among "
                             f"the analysed samples")
        if np.ptp(obs) == 0:
            raise InputError(f"phenotype {name!r} in {pheno.path} is constant ({obs[0]:g}) among "
                             f"the analysed samples; there is nothing to fit")
    n_an, c = int(analysed.sum()), Z.shape[1]
    sources = [str(p) for p in (covar_path, qcovar_path, dcovar_path) if p is not None]
    # the counts before the rank: with more columns than samples some are collinear whatever they hold
    for j, name in enumerate(names):
        n_obs = int((~np.isnan(Y[analysed, j])).sum())
        if n_obs < c + 2:
            raise InputError(f"phenotype {name!r} in {pheno.path}: "
                             + too_many_fixed_effects(c, n_obs, znames, sources, "samples with data"))
    check_full_rank(Z[analysed], znames, covar_path)
    notes["n_analysed"] = n_an
    return Design(Y=Y, Z=Z, phenotype_names=names, covariate_names=znames, analysed=analysed,
                  notes=notes)


def _number_or_missing(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return is_missing(cell)


def _numeric_ids(table: Table) -> bool:
    """Whether every FID and IID of ``table`` reads as a number or a missing code with a
    fractional or missing value somewhere (GEMMA's values read as IDs)."""
    cells = table.fid + table.iid
    return all(_number_or_missing(c) for c in cells) and any("." in c or is_missing(c) for c in cells)


def _check_levels(name: str, levels: list, source) -> None:
    """Refuse a categorical covariate with one level among the samples analysed so far (a superset
    of those finally analysed): it is constant, as a constant numeric covariate is, and is refused
    the same way (:func:`check_full_rank`) rather than dropped without a word."""
    if len(levels) == 1:
        raise InputError(f"covariate {name!r} in {source} is constant (collinear with the intercept) among "
                         f"the analysed samples: a categorical covariate with the one level "
                         f"{levels[0]!r}; drop it from the covariates or recode it")


def too_many_fixed_effects(c: int, n: int, names: Sequence[str], sources: Sequence[str] = (),
                           samples: str = "analysed samples") -> str:
    """The message for a design of ``c`` fixed-effect columns (``names``) on ``n`` samples, fewer
    than the ``c + 2`` REML needs (``n − c`` error contrasts, at least two to estimate two
    variances): the counts first, a few names, and what to do.

    >>> too_many_fixed_effects(251, 200, ["intercept"] + [f"c{j}" for j in range(250)], ["cov.tsv"]).split(";")[0]
    'more fixed effects (covariate columns) than samples: 251 fixed effects (the intercept and 250 covariate columns from cov.tsv: c0, c1, c2, c3, c4 and 245 more'
    """
    shown = ", ".join(names[1:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    head = "more fixed effects (covariate columns) than samples" if c >= n else "too few samples for the fixed effects"
    return (f"{head}: {c} fixed effects (the intercept and {c - 1} covariate columns"
            + (f" from {', '.join(sources)}" if sources else "") + (f": {shown}" if c > 1 else "")
            + f"; a categorical covariate has one column per level but its first) for {n} {samples}; "
            f"REML needs at least {c + 2} samples (2 more than fixed effects): use fewer covariates "
            f"(covariates.columns; fewer levels for a categorical one) or more samples")


def check_full_rank(Z: np.ndarray, names: Sequence[str], source=None) -> None:
    """Raise naming the first column of Z that lies in the span of earlier ones (or, with more
    columns than rows, the counts: :func:`too_many_fixed_effects`)."""
    if Z.shape[1] > Z.shape[0]:
        raise InputError(too_many_fixed_effects(Z.shape[1], Z.shape[0], names, [str(source)] if source else ()))
    scale = np.linalg.norm(Z, axis=0)
    scale[scale == 0] = 1.0
    Zs = Z / scale
    # one Householder QR of the unit-norm columns, in order: |R_jj| is the distance of column j
    # from the span of the columns before it (O(n c²) once; a 1,000-level factor took one SVD per
    # column before, over 600 s)
    R = np.linalg.qr(Zs, mode="r")
    d = np.abs(np.diagonal(R))
    dependent = np.flatnonzero(d <= 1e-8)
    if not dependent.size:
        return
    j = int(dependent[0]) + 1
    if j == 1 or not np.any(Z[:, j - 1]):
        what = "is zero for every analysed sample"
    elif np.ptp(Z[:, j - 1]) == 0:
        what = "is constant (collinear with the intercept)"
    else:  # the earlier columns are independent, so the combination is unique
        coef = np.abs(np.linalg.lstsq(Zs[:, :j - 1], Zs[:, j - 1], rcond=None)[0])
        what = "is collinear with " + ", ".join(n for n, c in zip(names, coef) if c > 1e-6 * coef.max())
    raise InputError(f"covariate {names[j - 1]!r}" + (f" in {source}" if source else "")
                     + f" {what} among the analysed samples; drop it or recode it")
