"""The split of the variants into variance components that a run's ``components`` section
defines, and the samples of its precomputed GRMs: the run layer's composition of the library's
definitions (:mod:`bigmm.components`), used by the validator (before any pass) and by the
component_grms stage (after the variant statistics and the LD scores).
"""

from __future__ import annotations

from functools import reduce

import numpy as np

from ..components import (Components, chromosome_components, cross, ld_quantile_bins, maf_bins, read_components,
                          read_variant_lists)
from ..errors import InputError
from ..io.gcta import open_mgrm
from .memory import components_driver_bytes


def given_split(cc, variant_ids, chromosomes) -> Components | None:
    """The split known before any pass: the annotation file, the variant lists and the
    chromosomes, crossed (None when none is given). Refuses an unknown ID, a variant in two
    groups, a duplicated line or an empty list, naming the file and line."""
    parts = []
    if cc.file is not None:
        parts.append(read_components(cc.file, variant_ids))
    if cc.lists:
        parts.append(read_variant_lists(cc.lists, variant_ids))
    if cc.by_chromosome:
        parts.append(chromosome_components(chromosomes))
    return reduce(cross, parts) if parts else None


def full_split(cc, given: Components | None, std, ld: np.ndarray | None) -> Components:
    """The run's split: ``given`` crossed with the MAF bins, then each component split into
    ``ld_bins`` LD-score quantile bins (all kept variants as one group when nothing else splits)."""
    parts = [given] if given is not None else []
    if cc.maf_bins is not None:
        parts.append(maf_bins(std, cc.maf_bins))
    split = reduce(cross, parts) if parts else None
    if cc.ld_bins is not None:
        within = split if split is not None else Components(("all",), np.where(std.keep, 0, -1),
                                                              "all kept variants")
        split = ld_quantile_bins(ld, within, cc.ld_bins)
    return split


def mgrm_rows(grms, ids: list, rows: np.ndarray) -> np.ndarray:
    """Where each of the run's samples ``ids[rows]`` is in the GRMs' sample order; refuses a
    sample the GRMs lack, naming it."""
    position = {tuple(s): i for i, s in enumerate(grms.ids)}
    out = []
    for r in rows:
        key = tuple(ids[r])
        if key not in position:
            raise InputError(f"components.mgrm: sample {' '.join(key)} is analysed but not in the GRMs "
                             f"({grms.grms[0].id}); make the GRMs on every analysed sample or leave it out "
                             f"(samples.remove)")
        out.append(position[key])
    return np.asarray(out, dtype=np.int64)


def components_memory(got: dict) -> tuple | None:
    """(m, bytes, bytes available) of the exact several-component REML on the driver
    (:func:`components_driver_bytes` against the memory available now, as
    :func:`check_components_memory` refuses by); None before the components and design are known."""
    import psutil

    cp, d = got.get("components_plan"), got.get("design")
    if cp is None or d is None:
        return None
    need = components_driver_bytes(cp["components_m"], cp["components_n"], int(d.analysed.sum()),
                                   bool(np.isnan(d.Y[d.analysed]).any()))
    return cp["components_m"], need, psutil.virtual_memory().available


def check_components(cfg, got: dict, ids: list) -> None:
    """The variance components known before any pass, read and checked once into ``got``: the
    annotation file, variant lists and chromosomes against the genotype input's variant IDs (an
    unknown ID, a variant in two groups, a duplicated line, an empty list: refused with the file
    and line; an empty or tiny component, counted over the variants left by
    variants.chr/extract/exclude, refused by name); or the GRMs of ``components.mgrm`` (their
    samples against the analysed ones). Also the number of components, for the memory rule."""
    cc = cfg.components
    n = len(ids)
    if cc.mgrm is not None:
        grms = open_mgrm(cc.mgrm)
        if "design" in got:
            mgrm_rows(grms, ids, np.flatnonzero(got["design"].analysed))
        got["components_plan"] = {"components_m": len(grms.names), "components_n": n}
        got["components_text"] = (f"components: {len(grms.names)} GRMs of {cc.mgrm} (GCTA --mgrm): "
                                  + ", ".join(grms.names))
        return
    vtable = got.get("variant_table")
    if vtable is None:
        raise InputError("components need the genotype input's variant table (genotypes.plink, zarr or vcf_zarr)")
    given = given_split(cc, vtable["id"], vtable["chrom"])
    drop = got.get("variant_drop") or {}
    keep = ~np.logical_or.reduce(list(drop.values())) if drop else np.ones(len(vtable["id"]), dtype=bool)
    lines = []
    m = 1
    if given is not None:
        sel = " after variants.chr/extract/exclude" if drop else ""
        lines.append(given.describe(keep).replace("variance components from",
                                                  f"variance components (variants of the genotype input{sel}) from"))
        given.check(keep, cc.min_variants)
        got["components"] = given
        m = given.m
    later = []
    if cc.maf_bins is not None:
        m *= len(cc.maf_bins) - 1
        later.append(f"MAF bins {', '.join(f'{e:g}' for e in cc.maf_bins)}")
    if cc.ld_bins is not None:
        m *= cc.ld_bins
        kb, nv = cc.ld_window()
        later.append(f"{cc.ld_bins} LD-score quantile bins within each (window "
                     + " and ".join(x for x in (f"{kb:g} kb" if kb else "", f"{nv} variants" if nv else "") if x)
                     + ")")
    if later:
        lines.append(("crossed with " if given is not None else "components: ") + " then ".join(later)
                     + f": at most {m} components, counted after the variant statistics (the MAF filters "
                       f"applied); a bin with fewer than {cc.min_variants} kept variants is refused then, "
                       f"before the GRM pass")
    if given is not None and not later:
        lines.append(f"counts after the variant filters (MAF, missingness, monomorphic) are checked after the "
                     f"variant statistics, before the GRM pass (fewest: {cc.min_variants})")
    got["components_plan"] = {"components_m": m, "components_n": n}
    got["components_text"] = "\n".join(lines)
