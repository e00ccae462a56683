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
