"""Inputs as GCTA/PLINK/GEMMA users keep them.

- a .fam with several phenotype columns, ``phenotypes.fam: N`` (GEMMA's ``-n N``), and GEMMA's
  ``-p`` layout (``phenotypes.layout: gemma``), against GEMMA 0.98.5 (fixture
  tests/data/gemma_fam/, made by scripts/fixtures/make_gemma_fam_fixture.py);
- sample and variant selection (samples.keep/remove, variants.chr/extract/exclude): the selected
  run equals a run on a fileset that holds only the selection;
- liability-scale h² (phenotypes.prevalence) and VCF FID_IID sample names.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from bed_reader import to_bed

import bigmm
from bigmm.errors import InputError
from bigmm.io.plink import parse_fam
from bigmm.pipeline.config import parse_config
from bigmm.pipeline.validate import validate
from bigmm.reml import liability_h2

DATA = Path(__file__).parent / "data" / "gemma_fam"
GEMMA = json.loads((DATA / "gemma_fam_results.json").read_text())["fits"]


def _config(tmp_path, phenotypes, **extra):
    raw = {"genotypes": {"plink": str(DATA / "cohort")}, "phenotypes": phenotypes,
           "variants": {"standardize": "center"}, "output": str(tmp_path / "out"), **extra}
    return parse_config(raw, base=tmp_path)


def _fit_center(inp, tmp_path):
    """REML on the kinship GEMMA -gk 1 computes (bigmm's center, frequencies over all samples)."""
    store = bigmm.ingest_plink(DATA / "cohort", tmp_path / "c.zarr", chunks=(64, 256))
    std = bigmm.standardization(bigmm.variant_stats(store.to_dask()), "center")
    K = bigmm.grm(store.genotypes, std)
    d = inp.design
    a = d.analysed
    return bigmm.fit_reml(bigmm.exact_spectrum(K[a][:, a]), d.Y[a], d.Z[a],
                          phenotype_names=d.phenotype_names).fits[0], d.Z[a]


@pytest.mark.parametrize("source", ["fam_n2", "pheno_n2"])
def test_fam_column_and_gemma_layout_match_gemma(tmp_path, source):
    pheno = ({"fam": 2} if source == "fam_n2" else
             {"file": str(DATA / "pheno_gemma.txt"), "layout": "gemma", "columns": [2]})
    inp = validate(_config(tmp_path, pheno))
    ref = GEMMA[source]
    # the .fam's -9 and NA (and the file's NA) are missing: GEMMA analysed the same 180
    assert int(inp.design.analysed.sum()) == ref["n_analyzed"] == 180
    f, Z = _fit_center(inp, tmp_path)
    # GEMMA prints 6 significant digits and stops its optimiser ~1e-5 relative from the optimum
    # (tests/data/gemma/README.md): estimates agree to 1e-4 relative
    assert f.n == ref["n_analyzed"]
    assert f.pve == pytest.approx(ref["pve"], rel=1e-4)
    assert f.pve_se == pytest.approx(ref["pve_se"], rel=1e-4)
    assert f.sigma2_g == pytest.approx(ref["vg"], rel=1e-4)
    assert f.sigma2_e == pytest.approx(ref["ve"], rel=1e-4)
    # GEMMA's REML log-likelihood carries +½ log det(ZᵀZ); -250.891 is printed to 1e-3
    assert f.logl_reml + 0.5 * np.linalg.slogdet(Z.T @ Z)[1] == pytest.approx(ref["logl_remle"], abs=1e-3)


def test_fam_and_gemma_layout_give_the_same_phenotype(tmp_path):
    a = validate(_config(tmp_path, {"fam": 2})).design
    b = validate(_config(tmp_path, {"file": str(DATA / "pheno_gemma.txt"), "layout": "gemma",
                                    "columns": ["2"]})).design
    assert a.phenotype_names == ["PHENO2"]
    np.testing.assert_array_equal(a.analysed, b.analysed)
    np.testing.assert_array_equal(a.Y, b.Y)


def test_fam_with_several_phenotype_columns_is_read(tmp_path):
    fid, iid, cells, lines = parse_fam(DATA / "cohort.fam")
    assert len(fid) == 200 and {len(c) for c in cells} == {3}
    bad = tmp_path / "x.fam"
    bad.write_text("F1 I1 0 0 0 1 2\nF2 I2 0 0 0 1\n")
    with pytest.raises(InputError, match=r"x.fam line 2: 6 columns, but line 1 has 7"):
        parse_fam(bad)


def test_fam_column_out_of_range(tmp_path):
    with pytest.raises(InputError, match=r"phenotypes.fam = 4: .*cohort.fam has 3 phenotype column"):
        validate(_config(tmp_path, {"fam": 4}))


def test_gemma_file_read_as_fid_iid_says_which_layout(tmp_path):
    # GEMMA's file without layout: gemma: its first two columns are taken as FID IID
    with pytest.raises(InputError, match=r"look like values, not IDs.*phenotypes.layout: gemma"):
        validate(_config(tmp_path, {"file": str(DATA / "pheno_gemma.txt")}))
    # a ragged table names the layout it detected and the layouts accepted
    p = tmp_path / "p.txt"
    p.write_text("FID IID a\nF1 I1 1 2\n")
    with pytest.raises(InputError, match=r"read with its header line 1 .*accepted layouts: 'fid_iid'.*'gemma'"):
        validate(_config(tmp_path, {"file": str(p)}))


def test_gemma_layout_needs_one_row_per_sample(tmp_path):
    p = tmp_path / "short.txt"
    p.write_text("".join(ln + "\n" for ln in (DATA / "pheno_gemma.txt").read_text().splitlines()[:-1]))
    with pytest.raises(InputError, match=r"199 rows, but the genotype data have 200 samples"):
        validate(_config(tmp_path, {"file": str(p), "layout": "gemma"}))


def test_phenotype_source_is_exactly_one(tmp_path):
    with pytest.raises(Exception, match="exactly one of 'file'"):
        _config(tmp_path, {"fam": 1, "file": str(DATA / "pheno_gemma.txt")})


# ---------------------------------------------------------------------------------------
# selection: the selected run equals a run on a fileset holding only the selection
# ---------------------------------------------------------------------------------------

def _fileset(path, G, fid, iid, chrom, vid):
    n, p = G.shape
    to_bed(path, G, properties={"fid": fid, "iid": iid, "chromosome": chrom, "sid": vid,
                                "bp_position": list(range(1, p + 1))}, count_A1=True)


def test_selection_equals_subset_fileset(tmp_path):
    rng = np.random.default_rng(5)
    n, p = 160, 600
    f = rng.uniform(0.05, 0.5, p)
    G = rng.binomial(2, f, size=(n, p)).astype(np.int8)
    fid = [f"F{i // 2}" for i in range(n)]
    iid = [f"I{i}" for i in range(n)]
    chrom = ["1"] * 250 + ["2"] * 250 + ["X"] * 100
    vid = [f"v{j}" for j in range(p)]
    _fileset(tmp_path / "all.bed", G, fid, iid, chrom, vid)
    # a binary 1/2 trait (for the liability scale) from a liability with h2 = 0.5 on chr 1-2
    Xs = (G[:, :500] - G[:, :500].mean(0)) / G[:, :500].std(0)
    liab = Xs @ rng.normal(size=500) / math.sqrt(500) + rng.normal(size=n)
    y = np.where(liab > np.quantile(liab, 0.6), 2, 1)
    (tmp_path / "pheno.txt").write_text("".join(f"{a} {b} {v}\n" for a, b, v in zip(fid, iid, y)))
    keep = np.arange(n) < 140  # keep: FID IID of the first 140
    (tmp_path / "keep.txt").write_text("".join(f"{fid[i]} {iid[i]}\n" for i in range(140)) + "FX NOT_THERE\n")
    removed = [3, 50, 77]  # remove: a one-column IID list
    (tmp_path / "remove.txt").write_text("".join(f"{iid[i]}\n" for i in removed))
    keep[removed] = False
    extract = np.zeros(p, dtype=bool)
    extract[::2] = True  # every other variant ...
    extract[550:] = True  # ... and chr X ones that chr drops first
    exclude = np.zeros(p, dtype=bool)
    exclude[[0, 2, 4, 300]] = True
    (tmp_path / "extract.txt").write_text("".join(f"{vid[j]}\n" for j in np.flatnonzero(extract)))
    (tmp_path / "exclude.txt").write_text("".join(f"{vid[j]}\n" for j in np.flatnonzero(exclude)))
    vkeep = extract & ~exclude & np.isin(chrom, ["1", "2"])
    # the reference: a fileset with only the selected samples and variants
    sub = G[keep][:, vkeep]
    _fileset(tmp_path / "sub.bed", sub, list(np.array(fid)[keep]), list(np.array(iid)[keep]),
             list(np.array(chrom)[vkeep]), list(np.array(vid)[vkeep]))
    common = {"phenotypes": {"file": "pheno.txt", "prevalence": 0.1}, "grm": {"dtype": "float64"},
              "cluster": {"workers": 1, "threads_per_worker": 1}}
    sel = parse_config({**common, "genotypes": {"plink": "all"}, "output": "out_sel",
                        "samples": {"keep": "keep.txt", "remove": "remove.txt"},
                        "variants": {"chr": "autosomes", "include": "extract.txt", "exclude": "exclude.txt",
                                     "min_maf": 0.01}}, base=tmp_path)
    assert sel.variants.extract == tmp_path / "extract.txt"  # include is extract's older name
    ref = parse_config({**common, "genotypes": {"plink": "sub"}, "output": "out_ref",
                        "variants": {"min_maf": 0.01}}, base=tmp_path)
    a = json.loads(bigmm.pipeline.run(sel).results_json.read_text())
    b = json.loads(bigmm.pipeline.run(ref).results_json.read_text())
    assert a["n_genotyped"] == b["n_genotyped"] == int(keep.sum())
    assert a["samples_selection"] == {"genotyped": n, "removed_by_keep": 20, "keep_entries_not_genotyped": 1,
                                      "removed_by_remove": 3, "remove_entries_not_genotyped": 0, "kept": 137}
    vf = a["variant_filters"]
    # each variant under the first reason that drops it: chr X (100), then not in extract among
    # chr 1-2 (250), then the 4 excluded (all extracted, on chr 1-2)
    assert (vf["chr"]["dropped"], vf["extract"]["dropped"], vf["exclude"]["dropped"]) == (100, 250, 4)
    assert vf["min_maf"]["setting"] == 0.01 and vf["max_missing"]["setting"] is None
    assert a["n_variants"] == b["n_variants"]
    fa, fb = a["phenotypes"][0], b["phenotypes"][0]
    # the same K (float64 products) and phenotype: equal to round-off of the eigendecomposition
    for key in ("h2", "h2_se", "pve", "pve_se", "logl_reml", "h2_liability", "h2_liability_se"):
        assert fa[key] == pytest.approx(fb[key], rel=1e-9, abs=1e-12), key
    cases = float(np.mean(y[keep] == 2))
    assert fa["case_fraction"] == pytest.approx(cases, abs=1e-15)
    assert fa["h2_liability"] == pytest.approx(liability_h2(fa["h2"], fa["h2_se"], 0.1, cases)[0], rel=1e-12)


def test_liability_transform_closed_form():
    # K = P = 1/2: threshold 0, z = φ(0) = 1/√(2π), factor (1/16) / (1/(2π) · 1/4) = π/2
    h, se = liability_h2(0.2, 0.05, 0.5, 0.5)
    assert h == pytest.approx(0.2 * math.pi / 2, rel=1e-14)
    assert se == pytest.approx(0.05 * math.pi / 2, rel=1e-14)
    # K = 0.01 in a 50% case sample (GCTA's usual case-control setting): z = φ(2.3263479) =
    # 0.026652142 (tables), factor 0.0001 · 0.9801 / (0.026652142² · 0.25) = 0.551906
    assert liability_h2(1.0, 0.0, 0.01, 0.5)[0] == pytest.approx(0.9801e-4 / (0.026652142 ** 2 * 0.25), rel=1e-6)


def test_prevalence_needs_a_binary_trait(tmp_path):
    with pytest.raises(InputError, match=r"prevalence is for a binary trait.*'PHENO1' has the values"):
        validate(_config(tmp_path, {"fam": 1, "prevalence": 0.1}))


def test_keep_that_leaves_nothing(tmp_path):
    (tmp_path / "k.txt").write_text("NOPE\n")
    with pytest.raises(InputError, match=r"no genotyped sample is left after samples.keep"):
        validate(_config(tmp_path, {"fam": 1}, samples={"keep": str(tmp_path / "k.txt")}))


def test_vcf_iid_sample_names(tmp_path):
    pytest.importorskip("bio2zarr")
    import subprocess
    import sys

    from bigmm.io.vcfzarr import open_vcf_zarr

    ids = ["FAM1_IND1", "FAM1_IND2", "F_2_IND3", "SOLO"]
    lines = ["##fileformat=VCFv4.2", "##contig=<ID=1,length=1000>",
             '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(ids)]
    lines += [f"1\t{10 * j + 1}\trs{j}\tA\tG\t.\tPASS\t.\tGT\t0/1\t0/0\t1/1\t0/1" for j in range(3)]
    (tmp_path / "c.vcf").write_text("\n".join(lines) + "\n")
    subprocess.run([str(Path(sys.executable).parent / "vcf2zarr"), "convert", str(tmp_path / "c.vcf"),
                    str(tmp_path / "c.vcz")], check=True, capture_output=True)
    assert open_vcf_zarr(tmp_path / "c.vcz").sample_ids()[0] == ("FAM1_IND1", "FAM1_IND1")
    # plink2 --id-delim _: split at the first underscore; a name without one is FID = IID
    assert open_vcf_zarr(tmp_path / "c.vcz", sample_ids="iid").sample_ids() == [
        ("FAM1", "IND1"), ("FAM1", "IND2"), ("F", "2_IND3"), ("SOLO", "SOLO")]
