"""Variance components: which variants make up each genetic component of a partitioned model.

The model with m genetic components is ``Var(y) = Σ_j σ²_j K_j + σ²_e I`` with
``K_j = X_j X_jᵀ / p_j``, the kept variants split into m groups, every variant in at most one
(docs/math.md, "Several variance components"). A :class:`Components` holds that split as one
integer per variant of the genotype store (the component's index, or -1 for a variant in no
component) and the components' names.

Components come from

* a variant annotation table, variant ID and component name per line (BOLT-REML's
  ``--modelSnps``): :func:`read_components`;
* one variant list per component (GCTA's habit of one ``--extract`` list per GRM):
  :func:`read_variant_lists`;
* minor-allele-frequency bins with given edges: :func:`maf_bins`;
* chromosomes: :func:`chromosome_components`;
* crossings of these (:func:`cross`), and GREML-LDMS's MAF bins x LD-score quartiles within each
  MAF bin (:func:`ld_quantile_bins`, :func:`greml_ldms`; LD scores from :func:`bigmm.ld_scores`).

Problems with the definitions are refused before any pass over the genotypes, each message
naming the file, the line and the variant ID and saying what to do: a variant in two groups, an
unknown ID, a duplicated line. :meth:`Components.check` refuses, once the variant filters are
known, an empty component, a component with fewer than :data:`MIN_COMPONENT_VARIANTS` kept
variants, and a split that assigns no variant at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .errors import InputError, missing_reason

#: the fewest kept variants a component may have (:meth:`Components.check`). K_j has rank at most
#: p_j, and with a few dozen variants σ²_j is an estimate of a handful of single-variant effects,
#: barely identifiable from σ²_e and the other components: such variants belong in a larger
#: component or, when their effects are of interest one by one, among the fixed effects.
MIN_COMPONENT_VARIANTS = 100


@dataclass(frozen=True)
class Components:
    """The split of a store's variants into m variance components.

    Attributes
    ----------
    names : tuple of str
        Component names, in the order of their indices.
    assignment : ndarray (p,) int32
        For every variant of the genotype store, the index of its component, or -1 for a
        variant in no component.
    source : str
        How the components were defined, for messages (e.g. ``"components file ann.txt"``).
    """

    names: tuple
    assignment: np.ndarray
    source: str = "components"

    def __post_init__(self):
        a = np.asarray(self.assignment)
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"assignment must be a 1-D integer array, got {a.dtype} of shape {a.shape}")
        if a.size and (a.min() < -1 or a.max() >= len(self.names)):
            raise ValueError(f"assignment values must lie in -1 .. {len(self.names) - 1}")
        object.__setattr__(self, "assignment", a.astype(np.int32, copy=False))
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))

    @property
    def m(self) -> int:
        """Number of components."""
        return len(self.names)

    def counts(self, keep: np.ndarray | None = None) -> np.ndarray:
        """Variants in each component (only those with ``keep`` True when given), int64 (m,)."""
        a = self.assignment if keep is None else np.where(np.asarray(keep, dtype=bool), self.assignment, -1)
        return np.bincount(a[a >= 0], minlength=self.m).astype(np.int64)

    def restrict(self, keep: np.ndarray) -> "Components":
        """The same components over the kept variants only (-1 where ``keep`` is False)."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != self.assignment.shape:
            raise ValueError(f"keep has shape {keep.shape}, the assignment {self.assignment.shape}")
        return Components(self.names, np.where(keep, self.assignment, -1), self.source)

    def describe(self, keep: np.ndarray | None = None) -> str:
        """One line per component: its name and its number of (kept) variants."""
        counts = self.counts(keep)
        width = max((len(n) for n in self.names), default=0)
        lines = [f"{self.m} variance components from {self.source}:"]
        lines += [f"  {n:<{width}}  {c:>10,d} variants" for n, c in zip(self.names, counts)]
        none = int((self.assignment < 0).sum() if keep is None else ((self.assignment < 0) & keep).sum())
        lines.append(f"  {'(none)':<{width}}  {none:>10,d} variants in no component")
        return "\n".join(lines)

    def check(self, keep: np.ndarray | None = None, min_variants: int = MIN_COMPONENT_VARIANTS
              ) -> "Components":
        """Refuse a split that a REML fit cannot use, before any pass that needs it.

        Parameters
        ----------
        keep : bool array (p,), optional
            The variants kept by the filters (``Standardization.keep``); default all.
        min_variants : int
            The fewest kept variants a component may have (default :data:`MIN_COMPONENT_VARIANTS`).

        Returns
        -------
        Components
            Restricted to the kept variants.

        Raises
        ------
        InputError
            No variant assigned to any component; a component with no kept variant; a component
            with fewer than ``min_variants``. The message names the component and its counts.
        """
        keep = np.ones(self.assignment.shape, bool) if keep is None else np.asarray(keep, dtype=bool)
        listed = self.counts()
        kept = self.counts(keep)
        if self.m == 0 or not kept.any():
            raise InputError(
                f"{self.source}: no variant is assigned to any component"
                + (f" ({int(listed.sum())} assigned, none kept by the variant filters)" if listed.any() else "")
                + "; check that the component definitions name variants of the genotype store")
        for name, n_listed, n_kept in zip(self.names, listed, kept):
            if n_kept == 0:
                why = (f"its {n_listed} variants are all dropped by the variant filters (MAF, missingness, "
                       f"monomorphic)" if n_listed else "it has no variant")
                raise InputError(f"{self.source}: component '{name}' is empty: {why}; remove it or merge it "
                                 f"with another component")
            if n_kept < min_variants:
                raise InputError(
                    f"{self.source}: component '{name}' has {n_kept} kept variant(s), fewer than the "
                    f"minimum {min_variants} (its σ² would rest on a handful of variants and be barely "
                    f"identifiable); merge it with another component, use coarser bins, or lower the "
                    f"minimum (min_variants)")
        return self.restrict(keep)


# --- files -------------------------------------------------------------------------------------

def _id_index(variant_ids: Sequence[str]) -> dict[str, int]:
    """Variant ID → its column in the store (IDs must be unique there)."""
    ids = [str(v) for v in np.asarray(variant_ids, dtype=object).tolist()]
    index = {v: i for i, v in enumerate(ids)}
    if len(index) != len(ids):
        from .io.plink import check_unique_variant_ids

        check_unique_variant_ids(ids, "the genotype store's variant table")
    return index


def _lines(path: Path, what: str):
    """(line number, fields) of each line that is neither blank nor a ``#`` comment."""
    from .io.tables import _read_text

    if not path.exists():
        raise InputError(f"{what} {path} {missing_reason(path)}")
    for lineno, line in enumerate(_read_text(path, what).splitlines(), 1):
        text = line.split("#", 1)[0] if line.lstrip().startswith("#") else line
        fields = text.split()
        if fields:
            yield lineno, fields


class _Assigner:
    """Collects (variant, component) pairs from files, refusing unknown, duplicated or doubly
    assigned variants with the file and line."""

    def __init__(self, variant_ids: Sequence[str]):
        self.index = _id_index(variant_ids)
        self.assignment = np.full(len(self.index), -1, dtype=np.int32)
        self.where: dict[int, tuple[Path, int]] = {}
        self.names: list[str] = []
        self.unknown: list[tuple[Path, int, str]] = []

    def component(self, name: str) -> int:
        if name not in self.names:
            self.names.append(name)
        return self.names.index(name)

    def add(self, path: Path, lineno: int, vid: str, name: str) -> None:
        v = self.index.get(vid)
        if v is None:
            self.unknown.append((path, lineno, vid))
            return
        j = self.component(name)
        if v in self.where:
            p0, l0 = self.where[v]
            j0 = int(self.assignment[v])
            at = f"line {l0}" if p0 == path else f"{p0} line {l0}"
            if j0 == j:
                raise InputError(f"{path} line {lineno}: variant {vid} is listed again for component "
                                 f"'{name}' (already at {at}); remove the duplicated line")
            raise InputError(
                f"{path} line {lineno}: variant {vid} is in component '{name}' here and in "
                f"'{self.names[j0]}' at {at}; a variant may belong to one component only: keep one of "
                f"the two lines (or make a component of the overlap)")
        self.assignment[v] = j
        self.where[v] = (path, lineno)

    def finish(self, source: str, empty: Sequence[str] = ()) -> Components:
        if self.unknown:
            path, lineno, vid = self.unknown[0]
            more = len(self.unknown) - 1
            raise InputError(
                f"{path} line {lineno}: variant {vid} is not in the genotype store"
                + (f" (and {more} more line(s) name unknown variants, e.g. line "
                   f"{self.unknown[1][1]}: {self.unknown[1][2]})" if more else "")
                + "; remove these lines, or check that the IDs are the store's variant IDs (column 2 of "
                  "the .bim) in the same spelling")
        for name in empty:
            raise InputError(f"{name} names no variant; remove it or list the variants of its component")
        return Components(tuple(self.names), self.assignment, source)


#: first fields that mark the first line of an annotation table as a header (case-insensitive),
#: when they are not variant IDs of the store: PLINK's, GCTA's and BOLT's usual column names
HEADER_IDS = frozenset({"snp", "id", "variant", "variant_id", "rsid", "snp_id", "marker", "snpid"})


def _is_header(fields: list[str], index: dict) -> bool:
    """Is the first line a header (``SNP component``) rather than a variant?"""
    return fields[0] not in index and fields[0].lower() in HEADER_IDS


def read_components(path: str | Path, variant_ids: Sequence[str]) -> Components:
    """Components from a variant annotation table: variant ID and component name per line.

    The layout of BOLT-REML's ``--modelSnps`` file: whitespace-separated, two fields per line
    (``rs123  coding``), ``#`` starts a comment line, blank lines are skipped; the file may be
    gzip-compressed. A first line whose first field is a usual column name (``SNP``, ``ID``,
    ``variant``, ``rsid``, ... :data:`HEADER_IDS`) and not a variant of the store is a header. Components are numbered in the order their names first appear; variants
    of the store not in the file are in no component.

    Parameters
    ----------
    path : path
        The annotation table.
    variant_ids : sequence of str
        The store's variant IDs (``store.variant_table()["id"]``), in column order.

    Raises
    ------
    InputError
        Naming the file, line and variant: a line without exactly two fields, an ID not in the
        store, a duplicated line, a variant given two components, a file that names no variant.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "ann.txt"
    >>> _ = p.write_text("# variant component\\nv1 coding\\nv3 intron\\nv2 coding\\n")
    >>> c = read_components(p, ["v1", "v2", "v3", "v4"])
    >>> c.names, c.assignment.tolist()
    (('coding', 'intron'), [0, 0, 1, -1])
    """
    path = Path(path)
    acc = _Assigner(variant_ids)
    n = 0
    for lineno, fields in _lines(path, "components file"):
        if n == 0 and _is_header(fields, acc.index):
            continue
        if len(fields) != 2:
            raise InputError(f"{path} line {lineno}: expected 2 fields (variant ID, component name), found "
                             f"{len(fields)}: {' '.join(fields[:4])}; write one variant and its component "
                             f"per line")
        acc.add(path, lineno, fields[0], fields[1])
        n += 1
    return acc.finish(f"components file {path}", [f"components file {path}"] if n == 0 else ())


def read_variant_lists(paths: Sequence[str | Path], variant_ids: Sequence[str],
                       names: Sequence[str] | None = None) -> Components:
    """Components from one variant list per component (GCTA's one ``--extract`` list per GRM).

    Each file lists variant IDs, the first field of each line (more fields are ignored, as
    PLINK's ``--extract`` does); ``#`` comment lines and blank lines are skipped.

    Parameters
    ----------
    paths : sequence of paths
        One file per component.
    variant_ids : sequence of str
        The store's variant IDs, in column order.
    names : sequence of str, optional
        Component names; default the file names without their last suffix (``coding.snplist``
        → ``coding``).

    Raises
    ------
    InputError
        Naming the file, line and variant: an unknown ID, a variant listed twice in one file
        (a duplicated line) or in two files (two components), an empty file, two files of the
        same component name.
    """
    paths = [Path(p) for p in paths]
    names = [p.stem if p.suffix else p.name for p in paths] if names is None else [str(n) for n in names]
    if len(names) != len(paths):
        raise ValueError(f"{len(paths)} variant lists but {len(names)} names")
    dup = [n for n in names if names.count(n) > 1]
    if dup:
        raise InputError(f"two variant lists give component name '{dup[0]}' "
                         f"({', '.join(str(p) for p, n in zip(paths, names) if n == dup[0])}); "
                         f"rename one file or give distinct component names")
    acc = _Assigner(variant_ids)
    empty = []
    for path, name in zip(paths, names):
        acc.component(name)
        n = 0
        for lineno, fields in _lines(path, "variant list"):
            acc.add(path, lineno, fields[0], name)
            n += 1
        if n == 0:
            empty.append(f"variant list {path} (component '{name}')")
    return acc.finish(f"variant lists {', '.join(p.name for p in paths)}", empty)


# --- bins ---------------------------------------------------------------------------------------

def minor_allele_frequency(stats) -> np.ndarray:
    """The MAF of every variant from :func:`bigmm.variant_stats` or :func:`bigmm.standardization`.

    From a :class:`~bigmm.VariantStats`: its ``maf`` (NaN where nothing is called). From a
    :class:`~bigmm.Standardization`: ``min(f, 1 − f)`` with ``f = center / 2`` for kept variants
    (every standardization centres at 2f), NaN for dropped ones.
    """
    if hasattr(stats, "maf"):
        return np.asarray(stats.maf, dtype=np.float64)
    if hasattr(stats, "center") and hasattr(stats, "keep"):
        f = np.asarray(stats.center, dtype=np.float64) / 2.0
        return np.where(stats.keep, np.minimum(f, 1.0 - f), np.nan)
    raise TypeError("expected bigmm.VariantStats or bigmm.Standardization")


def _bin_name(lo: float, hi: float, last: bool) -> str:
    return f"maf[{lo:g},{hi:g}{']' if last else ')'}"


def maf_bins(stats, edges: Sequence[float], keep: np.ndarray | None = None) -> Components:
    """Components by minor allele frequency: bin k holds ``edges[k] ≤ MAF < edges[k+1]``.

    The last bin is closed on the right, so ``edges = [0.01, 0.1, 0.5]`` gives ``[0.01, 0.1)``
    and ``[0.1, 0.5]``. Variants outside the edges, or not kept (``keep``, default
    ``stats.keep`` for a Standardization), are in no component.

    Parameters
    ----------
    stats : VariantStats or Standardization
        Where the MAF comes from (:func:`minor_allele_frequency`).
    edges : sequence of float
        At least two increasing values in [0, 0.5].

    Examples
    --------
    >>> import numpy as np, bigmm
    >>> G = np.array([[0, 0, 1], [0, 1, 1], [0, 1, 2], [1, 1, 2]], dtype=np.int8)
    >>> c = maf_bins(bigmm.variant_stats(G), [0.1, 0.3, 0.5])
    >>> c.names, c.assignment.tolist()
    (('maf[0.1,0.3)', 'maf[0.3,0.5]'), [0, 1, 0])
    """
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or not np.all(np.diff(e) > 0) or e[0] < 0 or e[-1] > 0.5:
        raise InputError(f"MAF bin edges must be at least two increasing numbers in [0, 0.5], got "
                         f"{list(np.atleast_1d(edges))}")
    maf = minor_allele_frequency(stats)
    if keep is None and hasattr(stats, "keep"):
        keep = stats.keep
    k = np.searchsorted(e, maf, side="right") - 1
    k = np.where(maf == e[-1], e.size - 2, k)  # the last bin is closed
    ok = np.isfinite(maf) & (k >= 0) & (k < e.size - 1)
    if keep is not None:
        ok &= np.asarray(keep, dtype=bool)
    names = [_bin_name(e[i], e[i + 1], i == e.size - 2) for i in range(e.size - 1)]
    return Components(tuple(names), np.where(ok, k, -1), f"MAF bins {', '.join(f'{x:g}' for x in e)}")


def chromosome_components(chromosomes: Sequence, groups: Mapping[str, Sequence] | None = None,
                          keep: np.ndarray | None = None) -> Components:
    """Components by chromosome: one per chromosome present (names ``chr1``, ``chr2``, ...,
    in order of first appearance), or the named ``groups`` of chromosomes
    (``{"odd": [1, 3, 5], "even": [2, 4]}``; unlisted chromosomes are in no component).

    >>> chromosome_components(["1", "1", "2", "X"]).names
    ('chr1', 'chr2', 'chrX')
    """
    chrom = np.asarray([str(c) for c in np.asarray(chromosomes, dtype=object).tolist()], dtype=object)
    if groups is None:
        order = list(dict.fromkeys(chrom.tolist()))
        names = [f"chr{c}" for c in order]
        code = {c: j for j, c in enumerate(order)}
    else:
        names, code = [], {}
        for j, (name, members) in enumerate(groups.items()):
            names.append(str(name))
            for c in members:
                c = str(c)
                if c in code:
                    raise InputError(f"chromosome {c} is in two chromosome groups ('{names[code[c]]}' and "
                                     f"'{name}'); put each chromosome in one group")
                code[c] = j
    a = np.array([code.get(c, -1) for c in chrom.tolist()], dtype=np.int32)
    if keep is not None:
        a = np.where(np.asarray(keep, dtype=bool), a, -1)
    return Components(tuple(names), a, "chromosomes")


def cross(a: Components, b: Components, sep: str = ":") -> Components:
    """The crossing of two splits: one component per pair (``a_i``, ``b_k``) holding the variants
    in both, named ``a_i:b_k``, ordered by ``a`` then ``b``. Pairs with no variant are left out
    (:meth:`Components.check` then refuses what is too small)."""
    if a.assignment.shape != b.assignment.shape:
        raise ValueError("the two splits are over different numbers of variants")
    both = (a.assignment >= 0) & (b.assignment >= 0)
    code = np.where(both, a.assignment.astype(np.int64) * b.m + b.assignment, -1)
    present = np.unique(code[code >= 0])
    new = np.full(code.shape, -1, dtype=np.int32)
    new[both] = np.searchsorted(present, code[both])
    names = tuple(f"{a.names[c // b.m]}{sep}{b.names[c % b.m]}" for c in present.tolist())
    return Components(names, new, f"{a.source} x {b.source}")


def ld_quantile_bins(ld: np.ndarray, within: Components, n_bins: int = 4, sep: str = ":",
                     pooled: bool = False) -> Components:
    """Split each component of ``within`` into ``n_bins`` LD-score quantile bins (GREML-LDMS).

    The quantiles are those of the LD scores of each component's own variants, or with
    ``pooled`` those of all variants assigned in ``within`` together (NumPy's default linear
    interpolation, R's type 7 as R's ``summary()`` and ``quantile()`` use). Bin 1 holds
    ``ℓ ≤ Q(1/n_bins)``, bin k ``Q((k−1)/n_bins) < ℓ ≤ Q(k/n_bins)``, the last
    ``ℓ > Q((n_bins−1)/n_bins)``: the rule of the R script of GCTA's GREML-LDMS documentation,
    which takes the quartiles over all variants (``pooled=True``) and then splits each LD group
    by MAF. Names: ``NAME:ld1`` ... ``NAME:ld4``. Variants with a NaN LD score are in no component.
    """
    ld = np.asarray(ld, dtype=np.float64)
    if ld.shape != within.assignment.shape:
        raise ValueError(f"LD scores have shape {ld.shape}, the assignment {within.assignment.shape}")
    if n_bins < 1:
        raise InputError(f"the number of LD-score bins must be at least 1, got {n_bins}")
    probs = np.arange(1, n_bins) / n_bins
    everyone = (within.assignment >= 0) & np.isfinite(ld)
    q_all = np.quantile(ld[everyone], probs) if pooled and everyone.any() else None
    new = np.full(ld.shape, -1, dtype=np.int32)
    names = []
    for j, name in enumerate(within.names):
        members = np.flatnonzero((within.assignment == j) & np.isfinite(ld))
        if members.size:
            q = q_all if pooled else np.quantile(ld[members], probs)
            new[members] = j * n_bins + np.searchsorted(q, ld[members], side="left")
        names += [f"{name}{sep}ld{k + 1}" for k in range(n_bins)]
    how = "pooled" if pooled else "within-component"
    return Components(tuple(names), new, f"{within.source} x {how} LD-score {n_bins}-quantiles")


def greml_ldms(stats, ld: np.ndarray, maf_edges: Sequence[float], n_ld_bins: int = 4,
               keep: np.ndarray | None = None, pooled: bool = False) -> Components:
    """GREML-LDMS components: MAF bins (:func:`maf_bins`) x LD-score quantiles within each bin
    (:func:`ld_quantile_bins`), as Yang et al. (2015) recommend for an SNP heritability that does
    not depend on how effect sizes vary with frequency and LD.

    Parameters
    ----------
    stats : VariantStats or Standardization
        Where the MAF comes from.
    ld : ndarray (p,)
        LD scores (:func:`bigmm.ld_scores`; NaN for dropped variants).
    maf_edges : sequence of float
        MAF bin edges, e.g. ``[0.001, 0.01, 0.1, 0.2, 0.3, 0.4, 0.5]``.
    n_ld_bins : int
        LD-score quantile bins within each MAF bin (4: quartiles).
    pooled : bool
        Take the LD-score quantiles over all binned variants together, as the R script of GCTA's
        documentation does, instead of within each MAF bin (:func:`ld_quantile_bins`).
    """
    return ld_quantile_bins(ld, maf_bins(stats, maf_edges, keep), n_ld_bins, pooled=pooled)
