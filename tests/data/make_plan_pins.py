"""Pin the stage plan of a set of run configurations: ``tests/data/plan_pins.json``.

A stage's fingerprint decides whether a committed output is reused, so a restructuring of the
run layer must leave every fingerprint as it was (a run folder made before must report nothing
to rerun). This script records, for each configuration below (those of ``configs/*.yaml`` and
the shapes the tests run: PLINK, cohort Zarr and VCF Zarr stores, a given GRM, spectral and
matrix-free REML, deflation, PCs, BLUP, SNP effects, a GCTA export, sample and variant lists),
the stages planned, each stage's upstream stages and the inputs its fingerprint hashes, its
passes over the genotypes and its flops, and the spectrum/REML methods ``auto`` chooses.

Input files are made with fixed contents under a fixed folder (``PIN_BASE``): what varies from
machine to machine (a file's mtime, ctime, inode, device) is left out of the pinned inputs, and
``tests/test_plan_pins.py`` checks the fingerprint itself against the hash of the unnormalised
inputs.

Run from the repository root, on the code whose plan is to be pinned::

    python tests/data/make_plan_pins.py
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

PIN_BASE = Path("/tmp/bigmm-plan-pins")
OUT = Path(__file__).with_name("plan_pins.json")
#: what of a file's fingerprint depends on the machine, not on the file's content
MACHINE_KEYS = ("mtime_ns", "ctime_ns", "inode", "device")

FILES = {
    "cohort.bed": bytes([0x6C, 0x1B, 0x01]) + bytes(range(256)) * 4,
    "cohort.bim": "1\trs1\t0\t100\tA\tG\n1\trs2\t0\t200\tC\tT\n",
    "cohort.fam": "F1 I1 0 0 1 -9\nF2 I2 0 0 2 -9\n",
    "pheno.tsv": "FID\tIID\ttrait1\ttrait2\nF1\tI1\t1.0\t2.0\nF2\tI2\t0.5\tNA\n",
    "covar.tsv": "FID\tIID\tage\tsex\nF1\tI1\t40\tM\nF2\tI2\t51\tF\n",
    "qcovar.txt": "F1 I1 0.3\nF2 I2 0.1\n",
    "dcovar.txt": "F1 I1 A\nF2 I2 B\n",
    "keep.txt": "F1 I1\nF2 I2\n",
    "remove.txt": "F3 I3\n",
    "extract.txt": "rs1\nrs2\n",
    "exclude.txt": "rs9\n",
    "labels.tsv": "FID\tIID\tpop\nF1\tI1\tEUR\nF2\tI2\tAFR\n",
    "given.grm.bin": bytes(range(12)),
    "given.grm.N.bin": bytes(range(12, 24)),
    "given.grm.id": "F1\tI1\nF2\tI2\n",
}

BASE_CFG = {
    "genotypes": {"plink": "cohort", "chunks": [128, 512]},
    "variants": {"min_maf": 0.01, "max_missing": 0.05, "standardize": "gcta"},
    "phenotypes": {"file": "pheno.tsv", "columns": ["trait1", "trait2"]},
    "covariates": {"file": "covar.tsv", "columns": ["age", "sex"], "categorical": ["sex"]},
    "output": "out",
    "cluster": {"workers": 2, "threads_per_worker": 1, "memory_limit": "4GiB"},
}

STORE_PROVENANCE = {"created_by": "bigmm", "source": {"plink": "somewhere/cohort.bed"}, "n_samples": 2}

#: name: (config changes, spectrum method, REML method, genotype provenance)
CASES = {
    "example": ({"spectrum": {"method": "exact"}, "reml": {"method": "spectral"},
                 "grm": {"export_gcta": True}, "predict": {"blup": True, "snp_effects": True}},
                "exact", "spectral", None),
    "matrix_free": ({"reml": {"method": "matrix_free", "probes": 30, "max_steps": 100, "tol": 1e-4,
                              "deflate": 0, "seed": 0, "dtype": "float32"}, "predict": {"blup": True}},
                    "exact", "matrix_free", None),
    "mf_deflate_pcs_randomized": ({"reml": {"method": "matrix_free", "deflate": 5},
                                   "covariates": {"pcs": 2},
                                   "spectrum": {"method": "randomized", "rank": 20, "power_iters": 3}},
                                  "randomized", "matrix_free", None),
    "mf_export_snp": ({"reml": {"method": "matrix_free"}, "grm": {"export_gcta": "gcta/out"},
                       "predict": {"blup": True, "snp_effects": True},
                       "samples": {"keep": "keep.txt", "remove": "remove.txt"}},
                      "exact", "matrix_free", None),
    "zarr_randomized": ({"genotypes": {"zarr": "cohort.zarr"},
                         "spectrum": {"method": "randomized", "rank": 30, "oversample": 10, "probes": 10,
                                      "algorithm": "subspace", "dtype": "float64"},
                         "covariates": {"pcs": 3}, "phenotypes": {"file": "pheno.tsv", "prevalence": 0.1},
                         "report": {"labels": "labels.tsv", "label_column": "pop"}},
                        "randomized", "spectral", STORE_PROVENANCE),
    "vcf_zarr_lists": ({"genotypes": {"vcf_zarr": "cohort.vcz"},
                        "variants": {"extract": "extract.txt", "exclude": "exclude.txt", "chr": [1, 2]},
                        "covariates": {"qcovar": "qcovar.txt", "covar": "dcovar.txt"},
                        "grm": {"block_size": 64, "dtype": "float64"}, "predict": {"blup": True}},
                       "exact", "spectral", STORE_PROVENANCE),
    "given_grm": ({"genotypes": {"grm": "given"}, "variants": None, "samples": {"keep": "keep.txt"},
                   "predict": {"blup": True}, "reml": {"grid_size": 201}},
                  "exact", "spectral", {"grm_ids": 2}),
    "plink_keep_remove": ({"samples": {"keep": "keep.txt", "remove": "remove.txt"},
                           "phenotypes": {"file": "pheno.tsv", "missing": "subset"}},
                          "exact", "spectral", None),
}

#: (config changes, n): the methods "auto" chooses
AUTO_CASES = [({}, 100), ({"spectrum": {"method": "auto"}, "reml": {"method": "auto"}}, 10_000),
              ({"spectrum": {"method": "auto"}, "reml": {"method": "auto"}}, 10_001),
              ({"spectrum": {"method": "auto", "exact_max_n": 50}, "reml": {"method": "auto"}}, 60),
              ({"genotypes": {"grm": "given"}, "variants": None, "reml": {"method": "auto"}}, 20_000)]


def make_inputs(base: Path = PIN_BASE) -> Path:
    """The input files, with fixed contents, under ``base`` (made anew)."""
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    for name, content in FILES.items():
        path = base / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    for store in ("cohort.zarr", "cohort.vcz"):
        (base / store).mkdir()
    return base


def config(changes: dict, base: Path = PIN_BASE):
    from bigmm.pipeline.config import parse_config

    raw = json.loads(json.dumps(BASE_CFG))
    for section, value in changes.items():
        if section == "genotypes":  # a genotype source replaces the PLINK prefix
            raw[section] = ({} if "grm" in value else {"chunks": raw[section]["chunks"]}) | value
        elif value is None:  # the section left out (a given GRM has no variant settings)
            raw.pop(section, None)
        elif isinstance(value, dict):
            raw[section] = {**raw.get(section, {}), **value}
        else:
            raw[section] = value
    return parse_config(raw, base=base)


def normalise(value, base: Path = PIN_BASE):
    """``value`` without what depends on the machine: a file fingerprint's mtime, ctime, inode and
    device (its path, size and content hash are kept)."""
    if isinstance(value, dict):
        return {k: normalise(v, base) for k, v in value.items() if not (k in MACHINE_KEYS and "path" in value)}
    if isinstance(value, (list, tuple)):
        return [normalise(v, base) for v in value]
    return value


def fingerprint_of(name: str, version: str, inputs, upstream_fps) -> str:
    """A stage's fingerprint as the run records it: the first 16 hex digits of the SHA-256 of the
    JSON (sorted keys) of its name, the bigmm version, its inputs and its upstream fingerprints."""
    blob = json.dumps([name, version, inputs, upstream_fps], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_outputs(cfg, method: str, rmethod: str) -> dict:
    """The files each committed stage leaves (recorded in run.json): its declaration's outputs.
    (Before the stages were declarations: ``plan.STAGE_OUTPUTS``, with ``reml_state.npz`` for a
    matrix-free REML.)"""
    from bigmm.pipeline import plan as P

    return {name: list(stage.outputs) for name, stage in P.declarations(cfg, method, rmethod).items()}


def current_plans(base: Path = PIN_BASE) -> dict:
    """The plan of every case on the code imported now, normalised (see :func:`normalise`), with
    the fingerprints computed from the normalised inputs (machine-independent)."""
    from bigmm.pipeline import plan as P

    out = {}
    for case, (changes, method, rmethod, provenance) in CASES.items():
        cfg = config(changes, base)
        plan = P.stage_plan(cfg, method, provenance, rmethod)
        norm_fp: dict[str, str] = {}
        stages = {}
        for name, entry in plan.items():
            inputs = normalise(json.loads(json.dumps(entry["inputs"], default=str)), base)
            norm_fp[name] = fingerprint_of(name, "pinned", inputs, [norm_fp[u] for u in entry["upstream"]])
            stages[name] = {"upstream": list(entry["upstream"]), "inputs": inputs, "fingerprint": norm_fp[name]}
        passes = P.stage_passes(cfg, 1000, method, rmethod, 250, {"passes_over_X": 7}, stages=list(plan))
        flops = P.stage_flops(cfg, 1000, 5000, method, rmethod,
                              {"pass_vectors": 50, "mf_pass_vectors": 40}, passes, 2)
        out[case] = {"order": list(plan), "stages": stages, "passes": passes, "flops": flops,
                     "outputs": stage_outputs(cfg, method, rmethod)}
    out["auto"] = [{"changes": ch, "n": n, "spectrum": P.spectrum_method(config(ch, base), n),
                    "reml": P.reml_method(config(ch, base), n)} for ch, n in AUTO_CASES]
    return out


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    make_inputs()
    try:
        OUT.write_text(json.dumps(current_plans(), indent=1, sort_keys=True) + "\n")
    finally:
        shutil.rmtree(PIN_BASE, ignore_errors=True)
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")
