"""Genotypes read directly from a VCF Zarr store (the layout of bio2zarr and sgkit).

Arrays used: ``call_genotype`` (variants x samples x ploidy, int8, negative for
missing), ``sample_id``, ``variant_contig`` (index into ``contig_id``),
``variant_position``, ``variant_allele`` (variants x max alleles, "" padding) and,
when present, ``variant_id``. Diploid biallelic sites are used; the allele counted
is ALT (``allele1`` = ALT, ``allele2`` = REF); multi-allelic sites and sites without
an ALT allele are skipped and counted. No copy is made: the genotype matrix bigmm
sees (samples x variants) is computed chunk by chunk from ``call_genotype``.
Samples get FID = IID = the VCF sample ID (as ``plink --double-id``), or, with
``sample_ids="iid"`` (VCFs exported by PLINK 2, whose sample names are FID_IID), FID and
IID from the name split at its first underscore (as ``plink2 --id-delim _``; a name without
one is FID = IID).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from ..errors import InputError, missing_reason
from ..store import CheckedArray, content_fingerprint

REQUIRED = ("call_genotype", "sample_id", "variant_contig", "contig_id", "variant_position",
            "variant_allele")


class VcfGenotypes:
    """Samples x biallelic-variants int8 ALT allele counts (-1 missing), read lazily."""

    def __init__(self, call_genotype: CheckedArray, variant_index: np.ndarray):
        self.cg = call_genotype
        self.variant_index = np.asarray(variant_index, dtype=np.int64)
        v_chunk, s_chunk = call_genotype.chunks[0], call_genotype.chunks[1]
        self.shape = (call_genotype.shape[1], self.variant_index.size)
        self.chunks = (int(s_chunk), int(v_chunk))
        self.dtype = np.dtype(np.int8)
        self.ndim = 2

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, sel):
        if not isinstance(sel, tuple):
            sel = (sel,)
        if any(s is Ellipsis for s in sel):
            sel = tuple(slice(None) if s is Ellipsis else s for s in sel)
        rows = sel[0] if len(sel) > 0 else slice(None)
        cols = sel[1] if len(sel) > 1 else slice(None)
        vidx = self.variant_index[cols]
        scalar_col = np.ndim(vidx) == 0
        vidx = np.atleast_1d(vidx)
        if vidx.size == 0:
            nrows = len(range(*rows.indices(self.shape[0]))) if isinstance(rows, slice) else len(np.atleast_1d(rows))
            return np.empty((nrows, 0), dtype=np.int8)
        lo, hi = int(vidx.min()), int(vidx.max()) + 1
        if isinstance(rows, slice):
            gt = np.asarray(self.cg[lo:hi, rows, :])
        else:
            r = np.atleast_1d(np.asarray(rows))
            gt = np.asarray(self.cg[lo:hi, int(r.min()):int(r.max()) + 1, :])[:, r - r.min(), :]
        gt = gt[vidx - lo]
        missing = (gt < 0).any(axis=-1)
        dosage = (gt == 1).sum(axis=-1).astype(np.int8)
        dosage[missing] = -1
        out = np.ascontiguousarray(dosage.T)
        if scalar_col:
            out = out[:, 0]
        if np.ndim(rows) == 0 and not isinstance(rows, slice):
            out = out[0]
        return out


@dataclass(frozen=True)
class VcfZarrStore:
    """A VCF Zarr store seen as a cohort (same interface as :class:`bigmm.store.CohortStore`)."""

    path: Path
    group: zarr.Group
    variant_index: np.ndarray
    skipped: dict = field(default_factory=dict)
    #: "id": FID = IID = the sample name; "iid": FID_IID names split at the first underscore
    sample_id_mode: str = "id"

    def __repr__(self) -> str:
        skipped = ", ".join(f"{k} {v}" for k, v in self.skipped.items() if v) or "none"
        return (f"{type(self).__name__}('{self.path}', {self.n_samples} samples x {self.n_variants} biallelic "
                f"variants; skipped {skipped})")

    @property
    def attrs(self) -> dict:
        st = (self.path / "zarr.json").stat() if (self.path / "zarr.json").exists() else None
        return {"format": "vcf-zarr", "vcf_zarr_version": self.group.attrs.get("vcf_zarr_version"),
                "source": self.group.attrs.get("source"),
                "created": f"{st.st_size}:{st.st_mtime_ns}" if st else None,
                "provenance": {"vcf_zarr": str(self.path), "skipped": self.skipped}}

    @property
    def genotypes(self) -> VcfGenotypes:
        cg = CheckedArray(self.group["call_genotype"], f"{self.path}/call_genotype")
        return VcfGenotypes(cg, self.variant_index)

    @property
    def n_samples(self) -> int:
        return int(self.group["sample_id"].shape[0])

    @property
    def n_variants(self) -> int:
        return int(self.variant_index.size)

    @property
    def chunks(self) -> tuple[int, int]:
        return self.genotypes.chunks

    def sample_ids(self) -> list[tuple[str, str]]:
        ids = [str(s) for s in np.asarray(self.group["sample_id"][...])]
        if self.sample_id_mode == "iid":
            return [tuple(s.split("_", 1)) if "_" in s else (s, s) for s in ids]
        return [(s, s) for s in ids]

    def variant_table(self) -> dict[str, np.ndarray]:
        g = self.group
        vi = self.variant_index
        contigs = np.asarray(g["contig_id"][...]).astype(object)
        alleles = np.asarray(g["variant_allele"][...]).astype(object)[vi]
        pos = np.asarray(g["variant_position"][...])[vi]
        chrom = contigs[np.asarray(g["variant_contig"][...])[vi]]
        if "variant_id" in g:
            ids = np.asarray(g["variant_id"][...])[vi].astype(object)
            bad = np.isin(ids, ["", "."])
        else:
            ids = np.full(vi.size, "", dtype=object)
            bad = np.ones(vi.size, dtype=bool)
        ids[bad] = [f"{c}:{p}:{a[0]}:{a[1]}" for c, p, a in zip(chrom[bad], pos[bad], alleles[bad])]
        return {"chrom": chrom, "id": ids, "pos": pos.astype(np.int64),
                "allele1": alleles[:, 1].astype(object), "allele2": alleles[:, 0].astype(object)}

    def content_fingerprint(self) -> dict:
        """A digest of the stored bytes of the arrays bigmm reads (``call_genotype``, the sample and
        variant arrays), each chunk file hashed raw, never decoded, and bound to its place
        (:func:`bigmm.store.content_fingerprint`): a chunk rewritten in place changes it."""
        return content_fingerprint(self.path, REQUIRED + ("variant_id",))

    def to_dask(self):
        import dask.array as da

        G = self.genotypes
        return da.from_array(G, chunks=G.chunks, asarray=True, name=f"vcfzarr-{self.attrs['created']}-{self.path}")


def open_vcf_zarr(path: str | os.PathLike, sample_ids: str = "id") -> VcfZarrStore:
    """Open a VCF Zarr store for reading genotypes; diploid biallelic sites only.

    ``sample_ids``: "id" (FID = IID = the VCF sample name) or "iid" (names FID_IID, as PLINK 2
    exports them, split at the first underscore).

    The store is not bigmm's: other writers legitimately omit all-fill chunks, so
    chunk files are not listed; corrupted chunks still fail through their codecs.
    An xarray Dataset of the same layout (e.g. ``xarray.open_zarr(path)`` or an sgkit
    dataset) is taken by :func:`from_xarray`.
    """
    if sample_ids not in ("id", "iid"):
        raise ValueError(f"sample_ids must be 'id' or 'iid', not {sample_ids!r}")
    path = Path(path)
    if not path.exists():
        raise InputError(f"VCF Zarr store {path} {missing_reason(path)}")
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as exc:  # noqa: BLE001 - several error types for a non-store
        raise InputError(f"{path} is not a Zarr store ({exc})") from None
    index, skipped = _biallelic_sites(group, str(path))
    return VcfZarrStore(path=path, group=group, variant_index=index, skipped=skipped, sample_id_mode=sample_ids)


def _biallelic_sites(group, label: str) -> tuple[np.ndarray, dict]:
    """Check the VCF Zarr layout of ``group`` and index its diploid biallelic sites."""
    missing = [a for a in REQUIRED if a not in group]
    if missing:
        raise InputError(f"{label} is not a VCF Zarr store: it lacks {', '.join(missing)} "
                         f"(convert the VCF with `vcf2zarr convert` from bio2zarr)")
    cg = group["call_genotype"]
    if len(cg.shape) != 3 or cg.shape[2] != 2:
        raise InputError(f"{label}/call_genotype has shape {cg.shape}; bigmm needs diploid calls "
                         f"(variants x samples x 2)")
    alleles = np.asarray(group["variant_allele"][...])
    alleles = alleles.astype(object)
    present = ~np.isin(alleles, ["", "."]) & (alleles != None)  # noqa: E711 - elementwise
    n_alleles = present.sum(axis=1)
    multi = n_alleles > 2
    no_alt = n_alleles < 2
    keep = ~multi & ~no_alt
    if not keep.any():
        raise InputError(f"{label}: no biallelic site ({int(multi.sum())} multi-allelic, "
                         f"{int(no_alt.sum())} without ALT)")
    return np.flatnonzero(keep), {"multiallelic": int(multi.sum()), "no_alt": int(no_alt.sum())}


# ---------------------------------------------------------------------------------------
# xarray datasets in the VCF Zarr / sgkit layout
# ---------------------------------------------------------------------------------------

def is_vcf_dataset(obj) -> bool:
    """Whether ``obj`` is an xarray Dataset with the VCF Zarr variable ``call_genotype``."""
    return hasattr(obj, "data_vars") and hasattr(obj, "variables") and "call_genotype" in obj.variables


class _SliceComputed:
    """An array (NumPy or Dask) whose slices are NumPy arrays (a Dask slice is computed there, on
    the synchronous scheduler: safe inside a task of any scheduler)."""

    def __init__(self, a, default_chunks: tuple[int, ...]):
        self.a = a
        self.shape = tuple(int(x) for x in a.shape)
        self.ndim = len(self.shape)
        ch = getattr(a, "chunks", None)
        self.chunks = (tuple(int(c[0]) for c in ch) if ch is not None and not isinstance(a, np.ndarray)
                       else tuple(min(d, c) for d, c in zip(self.shape, default_chunks)))

    def __getitem__(self, sel):
        x = self.a[sel]
        return np.asarray(x.compute(scheduler="sync") if hasattr(x, "compute") else x)


class _DatasetGroup:
    """The variables of an xarray Dataset seen as the arrays of a VCF Zarr group. sgkit keeps the
    contig names in ``attrs["contigs"]`` rather than a ``contig_id`` variable: both are read."""

    def __init__(self, ds):
        self.ds = ds
        self.attrs = dict(ds.attrs)

    def __contains__(self, name):
        return name in self.ds.variables or (name == "contig_id" and "contigs" in self.ds.attrs)

    def __getitem__(self, name):
        if name not in self.ds.variables and name == "contig_id":
            return np.asarray(list(self.ds.attrs["contigs"]), dtype=object)
        if name == "call_genotype":
            return _SliceComputed(self.ds[name].data, (8192, 2048, 2))
        return _SliceComputed(self.ds[name].data, self.ds[name].shape)


@dataclass(frozen=True, repr=False)
class XarrayVcfStore(VcfZarrStore):
    """An xarray Dataset in the VCF Zarr layout seen as a cohort (:func:`from_xarray`)."""

    label: str = "xarray Dataset"

    @property
    def attrs(self) -> dict:
        return {"format": "vcf-zarr (xarray Dataset)", "vcf_zarr_version": self.group.attrs.get("vcf_zarr_version"),
                "source": self.label, "created": None,
                "provenance": {"xarray": self.label, "skipped": self.skipped}}

    @property
    def genotypes(self) -> VcfGenotypes:
        return VcfGenotypes(self.group["call_genotype"], self.variant_index)

    def content_fingerprint(self) -> None:
        """None: a Dataset in memory has no stored chunks to fingerprint."""
        return None

    def to_dask(self):
        import dask.array as da
        from dask.base import tokenize

        G = self.genotypes
        return da.from_array(G, chunks=G.chunks, asarray=True,
                             name=f"xarray-vcf-{tokenize(id(self.group.ds), self.variant_index)}")


def from_xarray(ds, label: str | None = None) -> XarrayVcfStore:
    """A cohort from an xarray Dataset in the VCF Zarr layout (bio2zarr's ``vcf2zarr``, sgkit).

    Variables used: ``call_genotype`` (variants x samples x ploidy), ``sample_id``,
    ``variant_contig``, ``contig_id`` (or sgkit's ``attrs["contigs"]``), ``variant_position``,
    ``variant_allele`` and, when present, ``variant_id``. The arrays may be NumPy or Dask
    (``xarray.open_zarr``); nothing is copied. Diploid biallelic sites are used, ALT counted.
    ``bigmm.variant_stats``, ``bigmm.grm``, ``bigmm.GrmOperator`` and ``bigmm.predict`` take the
    Dataset itself too.

    Examples
    --------
    >>> import numpy as np, xarray as xr, bigmm
    >>> gt = np.array([[[0, 1], [1, 1], [0, 0]], [[0, 0], [-1, -1], [1, 0]]], dtype=np.int8)
    >>> ds = xr.Dataset({"call_genotype": (("variants", "samples", "ploidy"), gt),
    ...                  "sample_id": ("samples", np.array(["s1", "s2", "s3"])),
    ...                  "variant_contig": ("variants", np.array([0, 0])),
    ...                  "contig_id": ("contigs", np.array(["1"])),
    ...                  "variant_position": ("variants", np.array([100, 200])),
    ...                  "variant_allele": (("variants", "alleles"), np.array([["A", "G"], ["C", "T"]]))})
    >>> cohort = bigmm.from_xarray(ds)
    >>> cohort.sample_ids()
    [('s1', 's1'), ('s2', 's2'), ('s3', 's3')]
    >>> cohort.genotypes[:, :]
    array([[ 1,  0],
           [ 2, -1],
           [ 0,  1]], dtype=int8)
    """
    if not is_vcf_dataset(ds):
        raise InputError("from_xarray needs an xarray Dataset in the VCF Zarr layout (with call_genotype, "
                         "sample_id, variant_contig, contig_id, variant_position, variant_allele)")
    label = label or str(ds.encoding.get("source") or "xarray Dataset")
    group = _DatasetGroup(ds)
    index, skipped = _biallelic_sites(group, label)
    return XarrayVcfStore(path=Path(label), group=group, variant_index=index, skipped=skipped, label=label)
