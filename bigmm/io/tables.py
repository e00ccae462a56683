"""Phenotype and covariate tables, aligned to the samples of a genotype store.

Tables are whitespace- or tab-separated with a header whose first two columns
are ``FID IID`` (PLINK/GCTA style). Missing values are ``NA``, ``-9`` or empty
(empty cells need a tab-separated file). Rows are matched to genotyped samples
by (FID, IID).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError

MISSING = {"NA", "-9", "", "nan", "NaN", "na", "."}


@dataclass(frozen=True)
class Table:
    """A parsed table: raw string cells, one row per sample."""

    path: Path
    columns: list[str]
    fid: list[str]
    iid: list[str]
    cells: list[list[str]]  # rows x columns (without FID/IID)
    lines: list[int]  # file line of each row

    def column_index(self, name: str) -> int:
        try:
            return self.columns.index(name)
        except ValueError:
            raise InputError(f"{self.path}: no column {name!r}; the file has columns "
                             f"{', '.join(self.columns) or 'none besides FID IID'}"
                             + (" (no header line: columns are numbered from 1 after FID IID)"
                                if self.columns and self.columns[0] == "1" else "")) from None

    def numeric(self, name: str) -> np.ndarray:
        """Column ``name`` as float64, NaN for missing; a clear error for text."""
        j = self.column_index(name)
        out = np.empty(len(self.cells), dtype=np.float64)
        for r, row in enumerate(self.cells):
            v = row[j]
            if v in MISSING:
                out[r] = np.nan
                continue
            try:
                x = float(v)
            except ValueError:
                x = math.nan
                ok = False
            else:
                ok = math.isfinite(x)
            if not ok:
                raise InputError(f"{self.path} line {self.lines[r]}: value {v!r} of column {name!r} "
                                 f"for sample {self.fid[r]}/{self.iid[r]} is not a number; "
                                 f"use NA or -9 for missing")
            out[r] = x
        return out

    def text(self, name: str) -> list[str | None]:
        j = self.column_index(name)
        return [None if row[j] in MISSING else row[j] for row in self.cells]


def read_table(path: str | Path, what: str = "table") -> Table:
    """Read an FID IID table; errors name the file and line.

    With a header (first line ``FID IID ...``, or PLINK 2's ``#FID IID ...``) columns
    have its names; without one (GCTA's ``--pheno``/``--qcovar``/``--covar`` layout)
    they are named by position after FID and IID: ``1``, ``2``, ...
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} file {path} does not exist")
    try:
        with open(path) as fh:
            raw = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what} file {path} as a text table ({exc})") from None
    lines = [(i + 1, ln) for i, ln in enumerate(raw)
             if ln.strip() and not (ln.startswith("#") and not ln.upper().startswith("#FID"))]
    if not lines:
        raise InputError(f"{what} file {path} is empty")
    header_line = lines[0][1]
    tab = "\t" in header_line

    def split(line: str) -> list[str]:
        return [c.strip() for c in line.rstrip("\r\n").split("\t")] if tab else line.split()

    header = split(header_line)
    if len(header) < 2:
        raise InputError(f"{path} line {lines[0][0]}: expected FID IID and at least one value")
    if header[0].upper().lstrip("#") == "FID" and header[1].upper() == "IID":
        columns = header[2:]
        data = lines[1:]
    else:
        # GCTA/PLINK layout without a header (--pheno, --qcovar, --covar): columns 1, 2, ...
        columns = [str(i + 1) for i in range(len(header) - 2)]
        header = ["FID", "IID"] + columns
        data = lines
    dup = {c for c in columns if columns.count(c) > 1}
    if dup:
        raise InputError(f"{path}: duplicate column names {sorted(dup)}")
    fid, iid, cells, linenos = [], [], [], []
    seen: dict[tuple[str, str], int] = {}
    for lineno, line in data:
        fields = split(line)
        if len(fields) != len(header):
            raise InputError(f"{path} line {lineno}: {len(fields)} fields, but the header has "
                             f"{len(header)}" + ("" if tab else " (for empty cells use a tab-separated file)"))
        key = (fields[0], fields[1])
        if key in seen:
            raise InputError(f"{path} line {lineno}: duplicate sample {key[0]}/{key[1]} "
                             f"(first on line {seen[key]})")
        seen[key] = lineno
        fid.append(fields[0])
        iid.append(fields[1])
        cells.append(fields[2:])
        linenos.append(lineno)
    return Table(path=path, columns=columns, fid=fid, iid=iid, cells=cells, lines=linenos)


def align_rows(table: Table, sample_ids: Sequence[tuple[str, str]]) -> np.ndarray:
    """For each genotyped sample, the table row holding it, or -1."""
    index = {(f, i): r for r, (f, i) in enumerate(zip(table.fid, table.iid))}
    return np.array([index.get(tuple(s), -1) for s in sample_ids], dtype=np.int64)


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


def build_design(sample_ids: Sequence[tuple[str, str]], pheno_path, pheno_columns=None,
                 covar_path=None, covar_columns: Sequence[str] = (),
                 categorical: Sequence[str] = (), qcovar_path=None, dcovar_path=None) -> Design:
    """Read phenotypes and covariates, align them to ``sample_ids`` and build Z.

    Z always starts with an intercept. Categorical covariates are one-hot
    encoded against a reference level (the first in sorted order). Samples with
    any missing covariate are dropped, as are samples with no phenotype value.
    """
    pheno = read_table(pheno_path, "phenotype")
    names = list(pheno.columns if pheno_columns in (None, "all") else pheno_columns)
    if not names:
        raise InputError(f"phenotype file {pheno.path} has no phenotype columns")
    rows = align_rows(pheno, sample_ids)
    n_gen = len(sample_ids)
    in_pheno = rows >= 0
    if not in_pheno.any():
        ex_g = ", ".join(f"{f}/{i}" for f, i in list(sample_ids)[:3])
        ex_p = ", ".join(f"{f}/{i}" for f, i in list(zip(pheno.fid, pheno.iid))[:3])
        raise InputError(f"no sample of phenotype file {pheno.path} is in the genotype data "
                         f"(genotypes have e.g. {ex_g}; the phenotype file has e.g. {ex_p}); "
                         f"check the FID and IID columns")
    Y = np.full((n_gen, len(names)), np.nan)
    for j, name in enumerate(names):
        col = pheno.numeric(name)
        Y[in_pheno, j] = col[rows[in_pheno]]
    analysed = in_pheno.copy()
    zcols = [np.ones(n_gen)]
    znames = ["intercept"]
    notes: dict = {"n_genotyped": n_gen, "n_in_phenotype_file": int(in_pheno.sum())}
    categorical = list(categorical)
    unknown_cat = [c for c in categorical if c not in covar_columns]
    if unknown_cat:
        raise InputError(f"categorical covariates {unknown_cat} are not among covariates.columns {list(covar_columns)}")
    if covar_columns:
        if covar_path is None:
            raise InputError("covariate columns are given but no covariate file")
        cov = read_table(covar_path, "covariate")
        crow = align_rows(cov, sample_ids)
        in_cov = crow >= 0
        for name in covar_columns:
            if name in categorical:
                vals = cov.text(name)
                col = np.array([vals[r] if r >= 0 else None for r in crow], dtype=object)
                present = np.array([v is not None for v in col])
                analysed &= present
                levels = sorted({v for v, a in zip(col, analysed) if a})
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
        crow = align_rows(cov, sample_ids)
        tag = Path(path).name
        for name in cov.columns:
            if discrete:
                vals = cov.text(name)
                col = np.array([vals[r] if r >= 0 else None for r in crow], dtype=object)
                analysed &= np.array([v is not None for v in col])
                levels = sorted({v for v, a in zip(col, analysed) if a})
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
    check_full_rank(Z[analysed], znames, covar_path)
    n_an, c = int(analysed.sum()), Z.shape[1]
    for j, name in enumerate(names):
        n_obs = int((~np.isnan(Y[analysed, j])).sum())
        if n_obs < c + 2:
            raise InputError(f"phenotype {name!r} in {pheno.path}: {n_obs} samples with data, but "
                             f"the model has {c} fixed effects ({', '.join(znames)}); REML needs at "
                             f"least {c + 2}: drop covariates or add samples")
    notes["n_analysed"] = n_an
    return Design(Y=Y, Z=Z, phenotype_names=names, covariate_names=znames, analysed=analysed,
                  notes=notes)


def check_full_rank(Z: np.ndarray, names: Sequence[str], source=None) -> None:
    """Raise naming the first column of Z that lies in the span of earlier ones."""
    scale = np.linalg.norm(Z, axis=0)
    scale[scale == 0] = 1.0
    Zs = Z / scale
    for j in range(1, Zs.shape[1] + 1):
        sv = np.linalg.svd(Zs[:, :j], compute_uv=False)
        if sv[-1] <= 1e-8 * sv[0]:
            if j == 1 or not np.any(Z[:, j - 1]):
                what = "is zero for every analysed sample"
            elif np.ptp(Z[:, j - 1]) == 0:
                what = "is constant (collinear with the intercept)"
            else:  # the earlier columns are independent, so the combination is unique
                coef = np.abs(np.linalg.lstsq(Zs[:, :j - 1], Zs[:, j - 1], rcond=None)[0])
                what = "is collinear with " + ", ".join(n for n, c in zip(names, coef) if c > 1e-6 * coef.max())
            raise InputError(f"covariate {names[j - 1]!r}"
                             + (f" in {source}" if source else "")
                             + f" {what} among the analysed samples; drop it or recode it")
