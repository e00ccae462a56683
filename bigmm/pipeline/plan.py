"""The stage plan of a run: which stages run, what each depends on (its fingerprint), and the
passes and flops each costs (the memory policy is :mod:`bigmm.pipeline.memory`).

    ingest → variant_stats → (grm) → spectrum → rotate → reml → (blup) → report

With a precomputed GRM as input (``genotypes.grm``) there are no genotypes: the run is
``spectrum → rotate → reml → (blup) → report``, the spectrum that of the given K over the
analysed samples.

A stage's fingerprint hashes the config sections it reads, its input files (size, mtime and a
content hash), the fingerprints of the stages upstream and the bigmm version; a rerun skips every
stage whose recorded fingerprint still matches.
"""

from __future__ import annotations

import hashlib
import json

from .._version import __version__
from ..io.gcta import grm_paths
from ..store import file_fingerprint
from .config import RunConfig


STAGES = ("ingest", "variant_stats", "grm", "spectrum", "rotate", "reml", "blup", "report")
STAGE_OUTPUTS = {
    "ingest": ("genotypes.zarr",),
    "variant_stats": ("variants.zarr",),
    "grm": ("grm.zarr",),
    "spectrum": ("spectrum.zarr", "eigenvalues.tsv", "pcs.tsv"),
    "rotate": ("rotated.npz",),
    "reml": ("reml.json",),
    "blup": ("blup.tsv",),
    "report": ("results.json", "results.tsv", "report.html"),
}
#: stages that read the genotypes (and so need a Dask cluster)
PASS_STAGES = ("ingest", "variant_stats", "grm", "spectrum")


def _hash(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def spectrum_method(cfg: RunConfig, n: int) -> str:
    """The spectrum that will run: ``auto`` is exact up to ``spectrum.exact_max_n`` samples; a
    given GRM's is always exact (there is no X to run a randomized one on)."""
    if cfg.genotypes.grm is not None:
        return "exact"
    if cfg.spectrum.method == "auto":
        return "exact" if n <= cfg.spectrum.exact_max_n else "randomized"
    return cfg.spectrum.method


def reml_method(cfg: RunConfig, n: int) -> str:
    """The REML that will run: ``auto`` is spectral up to ``spectrum.exact_max_n`` samples (on
    the exact spectrum), matrix-free above; spectral for a given GRM."""
    if cfg.genotypes.grm is not None and cfg.reml.method == "auto":
        return "spectral"
    if cfg.reml.method == "auto":
        return "spectral" if n <= cfg.spectrum.exact_max_n else "matrix_free"
    return cfg.reml.method


def needs_spectrum(cfg: RunConfig, rmethod: str) -> bool:
    """Spectral REML needs the spectrum; matrix-free REML only to deflate or for PCs as covariates."""
    return rmethod == "spectral" or cfg.reml.deflate > 0 or cfg.covariates.pcs > 0


def needs_grm(cfg: RunConfig, method: str, rmethod: str = "spectral") -> bool:
    """The GRM stage runs for an exact spectrum (when one is needed) or a GCTA export; never
    when the GRM is given."""
    if cfg.genotypes.grm is not None:
        return False
    return (method == "exact" and needs_spectrum(cfg, rmethod)) or cfg.gcta_prefix() is not None


def stage_inputs(cfg: RunConfig, method: str, genotype_provenance: dict | None = None,
                 rmethod: str = "spectral") -> dict[str, dict]:
    """What each stage depends on, beyond its upstream stages.

    ``genotype_provenance``: for a given cohort or VCF Zarr store, its creation record
    (read by the validator), instead of opening the store again.
    """
    g = cfg.genotypes
    if g.grm is not None:
        geno = {"grm": grm_fingerprint(g.grm), "samples": cfg.section_fingerprint("samples"),
                "keep": file_fingerprint(cfg.samples.keep), "remove": file_fingerprint(cfg.samples.remove),
                **(genotype_provenance or {})}
    elif g.plink is not None:
        prefix = str(g.plink)[:-4] if str(g.plink).endswith(".bed") else str(g.plink)
        geno = {"plink": {"bed": file_fingerprint(prefix + ".bed", content="sampled"),
                          "bim": file_fingerprint(prefix + ".bim"), "fam": file_fingerprint(prefix + ".fam")},
                "chunks": list(g.chunks), "samples": cfg.section_fingerprint("samples"),
                "keep": file_fingerprint(cfg.samples.keep), "remove": file_fingerprint(cfg.samples.remove)}
    else:
        geno = {"store": str(g.zarr or g.vcf_zarr), **(genotype_provenance or {})}
    sc = cfg.spectrum
    spec = {"method": method}
    if method == "randomized":
        spec.update(rank=sc.rank, oversample=sc.oversample, power_iters=sc.power_iters, seed=sc.seed,
                    probes=sc.probes, dtype=sc.dtype, algorithm=sc.algorithm)
    tables = {"phenotypes": cfg.section_fingerprint("phenotypes"),
              "phenotype_file": file_fingerprint(cfg.phenotypes.file),
              "covariates": cfg.section_fingerprint("covariates"),
              "covariate_file": file_fingerprint(cfg.covariates.file),
              "qcovar_file": file_fingerprint(cfg.covariates.qcovar),
              "covar_file": file_fingerprint(cfg.covariates.covar),
              # the reading rules: 1 = a headerless phenotype file's columns are PHENO1, PHENO2, ...
              # (were 1, 2, ...), so a run made before reruns from here rather than mix the names
              "rules": 1}
    return {
        "ingest": geno,
        # "rules": the definitions a committed output was made with (sample_sd over all n,
        # all-heterozygous variants dropped; N in the GRM store), so an older output reruns
        "variant_stats": {"variants": cfg.section_fingerprint("variants"),
                          "extract": file_fingerprint(cfg.variants.extract),
                          "exclude": file_fingerprint(cfg.variants.exclude), "rules": 2},
        "grm": {"block_size": cfg.grm.block_size, "dtype": cfg.grm.dtype, "arrays": ["K", "N"]},
        "spectrum": spec,
        "rotate": tables,
        "reml": ({"reml": cfg.section_fingerprint("reml")} if rmethod == "spectral"
                 else {"reml": cfg.section_fingerprint("reml"), "method": "matrix_free", **tables}),
        "blup": {"predict": cfg.section_fingerprint("predict")},
        "report": {"export_gcta": str(cfg.gcta_prefix()), "report": cfg.section_fingerprint("report"),
                   "labels": file_fingerprint(cfg.report.labels)},
    }


def planned_stages(cfg: RunConfig, method: str, rmethod: str = "spectral") -> list[str]:
    """The stages this run needs, in order."""
    out = []
    for name in STAGES:
        if (name == "grm" and not needs_grm(cfg, method, rmethod)) or \
                (name == "ingest" and cfg.genotypes.plink is None) or (name == "blup" and not cfg.predict.blup) or \
                (name == "variant_stats" and cfg.genotypes.grm is not None) or \
                (name == "spectrum" and not needs_spectrum(cfg, rmethod)) or (name == "rotate" and rmethod != "spectral"):
            continue
        out.append(name)
    return out


def stage_plan(cfg: RunConfig, method: str, genotype_provenance: dict | None = None,
               rmethod: str = "spectral") -> dict[str, dict]:
    """Fingerprint and upstream stages of every stage that this run needs.

    ``method`` is the spectrum's (exact or randomized), ``rmethod`` the REML's (spectral or
    matrix_free: then there is no rotate stage, and no spectrum unless deflation or PCs ask).
    """
    inputs = stage_inputs(cfg, method, genotype_provenance, rmethod)
    spectral = rmethod == "spectral"
    with_spectrum = needs_spectrum(cfg, rmethod)
    from_plink = cfg.genotypes.plink is not None
    given_grm = cfg.genotypes.grm is not None
    if given_grm:  # no X: the spectrum is of the GRM files over the analysed samples
        inputs["spectrum"] = {**inputs["spectrum"], "grm_input": inputs["ingest"]}
    if not from_plink:  # a given cohort store: no ingest stage, the statistics depend on the store
        inputs["variant_stats"] = {**inputs["variant_stats"], "store": inputs["ingest"]}
    upstream = {"ingest": [], "variant_stats": ["ingest"] if from_plink else [], "grm": ["variant_stats"],
                "spectrum": [] if given_grm else ["variant_stats"] + (["grm"] if method == "exact" else []),
                "rotate": ["spectrum"],
                "reml": ["rotate"] if spectral else ["variant_stats"] + (["spectrum"] if with_spectrum else []),
                "blup": ["reml"],
                "report": ["reml"] + (["blup"] if cfg.predict.blup else [])
                + (["grm"] if cfg.gcta_prefix() is not None else [])}
    plan: dict[str, dict] = {}
    for name in planned_stages(cfg, method, rmethod):
        ups = upstream[name]
        fp = _hash(name, __version__, inputs[name], [plan[u]["fingerprint"] for u in ups])
        plan[name] = {"fingerprint": fp, "upstream": ups, "inputs": inputs[name]}
    return plan


def grm_fingerprint(path) -> dict:
    """Fingerprints of the files of a given GRM (the .bin files sampled, the .id whole)."""
    fmt, files = grm_paths(path)
    return {"format": fmt, **{p.name: file_fingerprint(p, content="sampled" if p.suffix == ".bin" else True)
                              for p in files.values()}}


def stage_passes(cfg: RunConfig, n: int, method: str, rmethod: str, grm_block: int | None,
                 memory_plan: dict, stages=None) -> dict[str, float]:
    """Passes over the genotypes of each stage (``stages``: default those of the plan), what
    the run's time estimate scales by the measured seconds per pass.

    ingest reads the .bed once; variant statistics make one pass; the GRM one per block row of
    samples (``grm_block``); an exact spectrum none (it reads K), a randomized one its power
    iterations; matrix-free REML at most one per Lanczos step (an upper bound: it stops when
    converged), and its BLUP one; SNP effects one.
    """
    if stages is None:
        stages = planned_stages(cfg, method, rmethod)
    mf = rmethod == "matrix_free"
    out = {}
    for name in stages:
        if name in ("ingest", "variant_stats"):
            out[name] = 1.0
        elif name == "grm":
            out[name] = float(-(-n // (grm_block or n)))
        elif name == "spectrum":
            out[name] = float(memory_plan.get("passes_over_X", 0)) if method == "randomized" else 0.0
        elif name == "reml":
            out[name] = float(cfg.reml.max_steps) if mf else 0.0
        elif name == "blup":
            out[name] = float(mf) + float(cfg.predict.snp_effects)
        else:
            out[name] = 0.0
    return out


def stage_flops(cfg: RunConfig, n: int, p: int, method: str, rmethod: str, memory_plan: dict,
                passes: dict[str, float], n_phenotypes: int) -> dict[str, float]:
    """Floating-point operations of each stage's arithmetic, for ``bigmm check``'s rough time
    estimate (``p``: variants in the input, before the filters; reading and decoding the
    genotypes is not counted).

    GRM: n²p (the upper triangle of X Xᵀ, two operations per multiply-add); exact spectrum: 5n³
    (LAPACK's divide-and-conquer eigendecomposition with vectors, about 4–5n³); randomized
    spectrum: 4·n·p·l per pass (X (Xᵀ V) with l vectors); matrix-free REML: 4·n·p·w per Lanczos
    step, at most ``reml.max_steps`` (an upper bound), its BLUP one such pass; SNP effects
    2·n·p per phenotype.

    >>> from bigmm.pipeline.config import parse_config
    >>> cfg = parse_config({"genotypes": {"zarr": "x.zarr"}, "phenotypes": {"file": "p.tsv"}, "output": "o"})
    >>> stage_flops(cfg, 100, 1000, "exact", "spectral", {}, {"grm": 1}, 1)["grm"]
    10000000.0
    """
    out: dict[str, float] = {}
    for name, k in passes.items():
        if name == "grm":
            out[name] = float(n) * n * p
        elif name == "spectrum":
            out[name] = 5.0 * n ** 3 if method == "exact" else 4.0 * n * p * memory_plan.get("pass_vectors", 0) * k
        elif name == "reml" and rmethod == "matrix_free":
            out[name] = 4.0 * n * p * memory_plan.get("mf_pass_vectors", 0) * k
        elif name == "blup":
            out[name] = (4.0 * n * p * n_phenotypes if rmethod == "matrix_free" else 0.0) \
                + (2.0 * n * p * n_phenotypes if cfg.predict.snp_effects else 0.0)
    return {k: v for k, v in out.items() if v > 0}
