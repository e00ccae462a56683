"""The parts of stage fingerprints that several stages share: the genotype input and the tables.

A stage's fingerprint hashes what it reads beyond its upstream stages (these functions' dicts,
recorded in ``run.json`` as the stage's ``inputs``), the fingerprints of its upstream stages and
the bigmm version (:func:`bigmm.pipeline.plan.stage_plan`).
"""

from __future__ import annotations

from ...io.gcta import grm_paths
from ...store import DEFAULT_LAYOUT, file_fingerprint
from . import Facts


def grm_fingerprint(path) -> dict:
    """Fingerprints of the files of a given GRM (the .bin files sampled, the .id whole)."""
    fmt, files = grm_paths(path)
    return {"format": fmt, **{p.name: file_fingerprint(p, content="sampled" if p.suffix == ".bin" else True)
                              for p in files.values()}}


def genotype_inputs(f: Facts) -> dict:
    """The genotype input: a given GRM's files and the samples kept; the PLINK files (the .bed
    sampled), chunks, store layout (when not the default) and sample selection; or a given store's path and creation record
    (``f.provenance``, read by the validator)."""
    cfg = f.cfg
    g = cfg.genotypes
    if g.grm is not None:
        return {"grm": grm_fingerprint(g.grm), "samples": cfg.section_fingerprint("samples"),
                "keep": file_fingerprint(cfg.samples.keep), "remove": file_fingerprint(cfg.samples.remove),
                **(f.provenance or {})}
    if g.plink is not None:
        prefix = str(g.plink)[:-4] if str(g.plink).endswith(".bed") else str(g.plink)
        return {"plink": {"bed": file_fingerprint(prefix + ".bed", content="sampled"),
                          "bim": file_fingerprint(prefix + ".bim"), "fam": file_fingerprint(prefix + ".fam")},
                "chunks": list(g.chunks), "samples": cfg.section_fingerprint("samples"),
                "keep": file_fingerprint(cfg.samples.keep), "remove": file_fingerprint(cfg.samples.remove),
                # the layout only when it is not the default: either layout gives the same codes, so
                # a store ingested before layouts existed (int8) stays current under the default
                **({"layout": g.layout} if g.layout != DEFAULT_LAYOUT else {})}
    return {"store": str(g.zarr or g.vcf_zarr), **(f.provenance or {})}


def table_inputs(f: Facts) -> dict:
    """The phenotype and covariate tables and their settings."""
    cfg = f.cfg
    return {"phenotypes": cfg.section_fingerprint("phenotypes"),
            "phenotype_file": file_fingerprint(cfg.phenotypes.file),
            "covariates": cfg.section_fingerprint("covariates"),
            "covariate_file": file_fingerprint(cfg.covariates.file),
            "qcovar_file": file_fingerprint(cfg.covariates.qcovar),
            "covar_file": file_fingerprint(cfg.covariates.covar),
            # the reading rules: 1 = a headerless phenotype file's columns are PHENO1, PHENO2, ...
            # (were 1, 2, ...), so a run made before reruns from here rather than mix the names
            "rules": 1}
