"""A precomputed GRM as input (``genotypes.grm``): GCTA's .grm.bin and PLINK 2's .rel.bin.

- the PLINK 2 fixture (tests/data/plink2_grm/, made by scripts/fixtures/make_plink2_grm_fixture.py:
  plink2 --make-grm-bin, --make-rel bin / bin4 triangle / bin square0) read in every layout equals
  a dense GRM computed here from the .bed with plink2's definition;
- a GRM that bigmm itself exported (grm.export_gcta, float32) fitted with genotypes.grm gives
  the fit from the genotypes, to a tolerance derived from float32 storage;
- BLUP from K alone equals the dense formula; stage fingerprints follow the GRM files;
- bad input: truncated .bin, an .id of other samples, non-finite and asymmetric values, both
  formats under one prefix, settings that need genotypes, a GRM too large for the driver.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from bed_reader import open_bed

import bigmm
from bigmm.errors import ConfigError, InputError
from bigmm.io.gcta import open_grm, write_gcta_grm
from bigmm.io.tables import read_table
from bigmm.pipeline.config import parse_config
from bigmm.pipeline.memory import check_grm_memory, grm_driver_bytes
from bigmm.pipeline.stages import run, status
from bigmm.pipeline.validate import check_config, validate

DATA = Path(__file__).parent / "data" / "plink2_grm"
#: float32 round-to-nearest: |fl(x) − x| ≤ 2⁻²⁴ |x|
U32 = 2.0 ** -24


def dense_plink2_grm(bed: Path) -> np.ndarray:
    """plink2's GRM (GCTA's formula) from the .bed: x = (g − 2f) / sqrt(2f(1 − f)), f the
    frequency of the counted allele over all samples (the fixture has no missing calls, so
    the definition has no imputation choice), K = X Xᵀ / p."""
    G = open_bed(str(bed)).read(dtype="float64")
    assert not np.isnan(G).any()
    f = G.mean(axis=0) / 2.0
    X = (G - 2.0 * f) / np.sqrt(2.0 * f * (1.0 - f))
    return X @ X.T / G.shape[1]


def test_plink2_formats_equal_each_other_and_dense_reference():
    ref = dense_plink2_grm(DATA / "cohort.bed")
    fam = [tuple(line.split()[:2]) for line in (DATA / "cohort.fam").read_text().splitlines()]
    got = {}
    for name, layout, dtype in (("cohort.grm.bin", "triangle", "<f4"), ("cohort.rel.bin", "square", "<f8"),
                                ("tri4.rel.bin", "triangle", "<f4"), ("sq0", "square", "<f8")):
        gf = open_grm(DATA / name)
        assert (gf.layout, gf.dtype) == (layout, dtype), name
        assert gf.ids == fam, name
        K = gf.read()
        assert np.array_equal(K, K.T), name
        got[name] = K
    # float64 files: plink2's double sums differ from NumPy's only by summation order,
    # p · eps · max|x|² ≈ 400 · 2.2e-16 · 10 ≈ 1e-12
    for name in ("cohort.rel.bin", "sq0"):
        np.testing.assert_allclose(got[name], ref, rtol=0, atol=1e-12, err_msg=name)
    # float32 files: the float64 value rounded once, |error| ≤ 2⁻²⁴ |K| (+ the 1e-12 above)
    for name in ("cohort.grm.bin", "tri4.rel.bin"):
        assert np.all(np.abs(got[name] - ref) <= U32 * np.abs(ref) + 1e-12), name
        assert np.abs(got[name] - ref).max() > 0  # really float32: the check above is not vacuous
    # the two float32 files are the same rounding of the same doubles
    np.testing.assert_array_equal(got["cohort.grm.bin"], got["tri4.rel.bin"])
    # .grm.N.bin: every entry used all 400 variants
    assert open_grm(DATA / "cohort.grm.bin").n_variants() == {"min": 400.0, "median": 400.0, "max": 400.0}
    # restricted to some samples, in the order asked
    rows = np.array([5, 2, 40])
    np.testing.assert_array_equal(open_grm(DATA / "cohort.rel.bin").read(rows), got["cohort.rel.bin"][np.ix_(rows, rows)])


def test_grm_blocks_mirror_and_check_across_block_boundaries(tmp_path, monkeypatch):
    """The reader mirrors and checks symmetry block by block: with 7-sample blocks, a 60-sample
    GRM spans 9 blocks, and the result is the same."""
    import bigmm.io.gcta as gcta

    full = open_grm(DATA / "cohort.rel.bin").read()
    monkeypatch.setattr(gcta, "BLOCK", 7)
    for name in ("cohort.grm.bin", "cohort.rel.bin", "sq0"):
        np.testing.assert_allclose(open_grm(DATA / name).read(), full, rtol=2 * U32, atol=0, err_msg=name)
    bad = np.fromfile(DATA / "cohort.rel.bin", dtype="<f8").reshape(60, 60).copy()
    bad[3, 50] += 0.01  # an off-diagonal block, only on one side
    shutil.copy(DATA / "cohort.rel.id", tmp_path / "bad.rel.id")
    bad.tofile(tmp_path / "bad.rel.bin")
    with pytest.raises(InputError, match=r"not symmetric: K\[F4/I4, F51/I51\]"):
        open_grm(tmp_path / "bad").read()


def test_both_formats_under_one_prefix_is_refused():
    with pytest.raises(InputError, match=r"both .*cohort\.grm\.bin \(GCTA\) and .*cohort\.rel\.bin \(PLINK 2\)"):
        open_grm(DATA / "cohort")


def _cohort_with_missing_phenotypes(tmp_path) -> Path:
    """The fixture's phenotype file less 8 samples: K must be restricted to the 52 analysed."""
    lines = (DATA / "pheno.tsv").read_text().splitlines()
    path = tmp_path / "pheno.tsv"
    path.write_text("\n".join(lines[:21] + lines[29:]) + "\n")  # rows of F21..F28 left out
    return path


def _frob_bound(K: np.ndarray, h2: float, n: int) -> dict:
    """First-order bounds on what float32 storage of K moves (see the test below)."""
    eps = U32 * np.linalg.norm(K)  # ‖E‖₂ ≤ ‖E‖_F ≤ 2⁻²⁴ ‖K‖_F
    s = np.linalg.eigvalsh(K)
    lam = 1.0 - h2 + h2 * max(s.min(), 0.0)  # λ_min(H), H = h K + (1 − h) I
    a = 1.0 + max(abs(s.max() - 1.0), abs(s.min() - 1.0))  # 1 + ‖K − I‖₂, ∂H/∂h = K − I
    return {"eps": eps, "logl": n * eps / lam, "score": n * eps * a / lam ** 2, "curv": 2 * n * eps * a ** 2 / lam ** 3}


def test_exported_gcta_grm_refits_to_the_genotype_fit(tmp_path):
    """The fit from genotypes and the fit from the GRM that run exported (float32) agree.

    Tolerance: the export stores K rounded to float32, K' = K + E with |E_ij| ≤ 2⁻²⁴|K_ij|, so
    ‖E‖₂ ≤ ε = 2⁻²⁴ ‖K‖_F. With H = hK + (1 − h)I every term of ℓ_R(h) (log det H,
    (n − c) log yᵀPy, log det ZᵀH⁻¹Z) moves by at most about n ε / λ_min(H) (first order); the
    score ∂ℓ_R/∂h by n ε (1 + ‖K − I‖) / λ_min², so ĥ² by SE² times that; ℓ_R'' by
    2 n ε (1 + ‖K − I‖)² / λ_min³, so SE = (−ℓ_R'')^(−1/2) by SE³/2 times that. Here ε ≈ 5e-7:
    the bounds are 1e-4 to 1e-3, the differences measured ~1e-8; a wrong sample order or a
    transposed triangle moves h² by O(SE).
    """
    from distributed import Client
    from conftest import local_cluster

    pheno = _cohort_with_missing_phenotypes(tmp_path)
    base = {"phenotypes": {"file": str(pheno)}, "predict": {"blup": True}}
    geno_cfg = parse_config({**base, "genotypes": {"plink": str(DATA / "cohort"), "chunks": [32, 128]},
                             "grm": {"export_gcta": True}, "output": str(tmp_path / "geno")})
    with local_cluster(1, 1) as cluster, Client(cluster) as client:
        a = run(geno_cfg, client=client)
    prefix = tmp_path / "geno" / "gcta" / "grm"
    grm_cfg = parse_config({**base, "genotypes": {"grm": str(prefix)}, "output": str(tmp_path / "fromgrm")})
    b = run(grm_cfg)
    assert b.stages_run == ("spectrum", "rotate", "reml", "blup", "report")  # no genotype stage, no cluster
    doc = json.loads((tmp_path / "fromgrm" / "results.json").read_text())
    gi = doc["grm_input"]
    assert (gi["format"], gi["n_in_grm"], gi["n_analysed"], gi["n_not_analysed"]) == ("gcta", 60, 52, 8)
    assert gi["n_variants"] == {"min": 400.0, "median": 400.0, "max": 400.0}
    assert doc["design"]["matches"][0]["rows_matched"] == 52
    fa, fb = a.result.fits[0], b.result.fits[0]
    assert fa.n == fb.n == 52
    gf = open_grm(prefix)
    analysed = [k for k, (f, _) in enumerate(gf.ids) if not 21 <= int(f[1:]) <= 28]
    bound = _frob_bound(gf.read(analysed), fa.h2, fa.n)
    assert bound["eps"] < 1e-6
    assert abs(fb.logl_reml - fa.logl_reml) <= bound["logl"]
    assert abs(fb.h2 - fa.h2) <= fa.h2_se ** 2 * bound["score"]
    assert abs(fb.h2_se - fa.h2_se) <= 0.5 * fa.h2_se ** 3 * bound["curv"]
    assert abs(fb.sigma2_g - fa.sigma2_g) <= fa.sigma2_g_se ** 2 * bound["score"] * 10
    # and the bounds are tight enough to mean something: far below the SE
    assert fa.h2_se ** 2 * bound["score"] < 0.01 * fa.h2_se
    # BLUP of the analysed samples: the same (the GRM run has only them)
    ga = {tuple(r[:2]): float(r[2]) for r in (ln.split("\t") for ln in (tmp_path / "geno" / "blup.tsv").read_text().splitlines()[1:])}
    gb = {tuple(r[:2]): float(r[2]) for r in (ln.split("\t") for ln in (tmp_path / "fromgrm" / "blup.tsv").read_text().splitlines()[1:])}
    assert len(gb) == 52 and set(gb) <= set(ga)
    scale = max(abs(v) for v in gb.values())
    assert max(abs(gb[k] - ga[k]) for k in gb) <= 1e-4 * scale  # the h² bound above, through ĝ


def test_plink2_rel_fit_blup_from_K_alone_and_fingerprints(tmp_path):
    """A run on plink2's float64 .rel.bin: BLUP equals the dense ĝ = σ²_g K V⁻¹ (y − Z ω̂) over the
    analysed samples; a rerun skips every stage; a changed GRM file reruns from the spectrum."""
    work = tmp_path / "grm"
    work.mkdir()
    for suffix in (".rel.bin", ".rel.id"):
        shutil.copy(DATA / f"cohort{suffix}", work / f"cohort{suffix}")
    pheno = _cohort_with_missing_phenotypes(tmp_path)
    cfg = parse_config({"genotypes": {"grm": str(work / "cohort")}, "phenotypes": {"file": str(pheno)},
                        "predict": {"blup": True}, "covariates": {"pcs": 1}, "output": str(tmp_path / "out")})
    out = run(cfg)
    fit = out.result.fits[0]
    # dense reference from the plink2 definition (independent of the file reader)
    K = dense_plink2_grm(DATA / "cohort.bed")
    fam = [tuple(line.split()[:2]) for line in (DATA / "cohort.fam").read_text().splitlines()]
    t = read_table(pheno)
    yrow = {(f, i): r for r, (f, i) in enumerate(zip(t.fid, t.iid))}
    rows = [k for k, key in enumerate(fam) if key in yrow]
    y = t.numeric("trait")[[yrow[fam[k]] for k in rows]]
    Ka = K[np.ix_(rows, rows)]
    s, U = np.linalg.eigh(Ka)
    Z = np.column_stack([np.ones(len(rows)), U[:, -1]])  # intercept and PC1 of the analysed K
    names = [fe["name"] for fe in json.loads((tmp_path / "out" / "results.json").read_text())
             ["phenotypes"][0]["fixed_effects"]]
    assert names == ["intercept", "PC1"]
    V = fit.sigma2_g * Ka + fit.sigma2_e * np.eye(len(rows))
    # ω̂ by GLS here (PC1's sign is arbitrary: GLS with either sign gives the same Zω̂)
    Vi = np.linalg.inv(V)
    omega = np.linalg.solve(Z.T @ Vi @ Z, Z.T @ Vi @ y)
    g_ref = fit.sigma2_g * Ka @ Vi @ (y - Z @ omega)
    lines = (tmp_path / "out" / "blup.tsv").read_text().splitlines()[1:]
    got = {tuple(r.split("\t")[:2]): float(r.split("\t")[2]) for r in lines}
    g = np.array([got[fam[k]] for k in rows])
    # blup.tsv has 8 significant digits; σ² from the fit at ~1e-9
    np.testing.assert_allclose(g, g_ref, rtol=0, atol=1e-6 * np.abs(g_ref).max())
    assert len(got) == len(rows) == 52

    again = run(cfg)
    assert again.stages_run == () and set(again.stages_skipped) == {"spectrum", "rotate", "reml", "blup", "report"}
    assert all(r["rerun"] == "no" for r in status(tmp_path / "out"))
    Kf = np.fromfile(work / "cohort.rel.bin", dtype="<f8").reshape(60, 60)
    Kf[0, 0] += 0.01  # a changed GRM (same size)
    Kf.tofile(work / "cohort.rel.bin")
    third = run(cfg)
    assert third.stages_run[0] == "spectrum"


def _gcta_copy(tmp_path, name="g") -> Path:
    for suffix in (".grm.bin", ".grm.id", ".grm.N.bin"):
        shutil.copy(DATA / f"cohort{suffix}", tmp_path / f"{name}{suffix}")
    return tmp_path / name


def _problems(tmp_path, prefix, **over) -> str:
    raw = {"genotypes": {"grm": str(prefix)}, "phenotypes": {"file": str(DATA / "pheno.tsv")},
           "output": str(tmp_path / "out"), **over}
    return "\n".join(check_config(parse_config(raw), contact_cluster=False))


def test_truncated_grm_bin_names_file_and_sizes(tmp_path):
    prefix = _gcta_copy(tmp_path)
    data = (tmp_path / "g.grm.bin").read_bytes()
    (tmp_path / "g.grm.bin").write_bytes(data[:-4])
    msg = _problems(tmp_path, prefix)
    assert f"{tmp_path / 'g.grm.bin'} is 7316 bytes" in msg
    assert "g.grm.id lists 60 samples, which need 7320 bytes (triangle float32)" in msg
    assert not (tmp_path / "out").exists()  # refused before anything was written
    # the optional .grm.N.bin is checked too, and named
    (tmp_path / "g.grm.bin").write_bytes(data)
    (tmp_path / "g.grm.N.bin").write_bytes(b"\0" * 8)
    assert f"{tmp_path / 'g.grm.N.bin'} is 8 bytes" in _problems(tmp_path, prefix)
    (tmp_path / "g.grm.N.bin").unlink()  # optional: without it the run is fine
    assert _problems(tmp_path, prefix) == ""


def test_mismatched_ids_are_refused(tmp_path):
    prefix = _gcta_copy(tmp_path)
    ids = (tmp_path / "g.grm.id").read_text().splitlines()
    # an .id of another GRM (one sample more): the sizes disagree
    (tmp_path / "g.grm.id").write_text("\n".join(ids + ["F61\tI61"]) + "\n")
    msg = _problems(tmp_path, prefix)
    assert "g.grm.id lists 61 samples, which need 7564 bytes" in msg and "is 7320 bytes" in msg
    # IDs that name no phenotyped sample
    (tmp_path / "g.grm.id").write_text("".join(f"X{k}\tY{k}\n" for k in range(60)))
    assert "no sample of phenotype file" in _problems(tmp_path, prefix)
    # the PLINK 2 header is checked
    shutil.copy(DATA / "cohort.rel.bin", tmp_path / "r.rel.bin")
    (tmp_path / "r.rel.id").write_text("#SAMPLE\tX\n" + "".join(f"F{k}\tI{k}\n" for k in range(1, 61)))
    assert "r.rel.id line 1: header '#SAMPLE\\tX'" in _problems(tmp_path, tmp_path / "r")


def test_non_finite_values_are_refused(tmp_path):
    K = open_grm(DATA / "cohort.grm.bin").read()
    K[7, 3] = K[3, 7] = np.nan
    ids = open_grm(DATA / "cohort.grm.bin").ids
    write_gcta_grm(tmp_path / "nan", K, ids, 400)
    msg = _problems(tmp_path, tmp_path / "nan")
    assert "nan.grm.bin: 2 non-finite value(s)" in msg and "K[F4/I4, F8/I8] = nan" in msg


def test_settings_that_need_genotypes_are_refused_at_once(tmp_path):
    prefix = _gcta_copy(tmp_path)
    raw = {"genotypes": {"grm": str(prefix)}, "phenotypes": {"file": str(DATA / "pheno.tsv")},
           "output": str(tmp_path / "out"), "reml": {"method": "matrix_free"},
           "predict": {"snp_effects": True}, "variants": {"min_maf": 0.01}, "grm": {"export_gcta": True},
           "spectrum": {"method": "randomized"}}
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    msg = str(exc.value)
    for key in ("reml.method: matrix_free", "predict.snp_effects", "variants.min_maf", "grm.export_gcta",
                "spectrum.method: randomized"):
        assert key in msg, key
    with pytest.raises(ConfigError, match="reml.method: matrix_free makes passes over the genotypes"):
        parse_config({**raw, "predict": {}, "variants": {}, "grm": {}, "spectrum": {}})
    with pytest.raises(ConfigError, match="exactly one of"):
        parse_config({**raw, "genotypes": {"grm": str(prefix), "plink": str(DATA / "cohort")}})
    # auto methods resolve to the exact spectrum and spectral REML; PCs and BLUP are fine
    inp = validate(parse_config({**raw, "reml": {"method": "auto"}, "spectrum": {"method": "auto", "exact_max_n": 10},
                                 "predict": {"blup": True}, "variants": {}, "grm": {},
                                 "covariates": {"pcs": 2}}))
    assert (inp.method, inp.reml_method) == ("exact", "spectral")
    assert inp.grm_K.shape == (60, 60)


def test_grm_too_large_for_the_driver_is_refused():
    # 8·max(1.5·n_file² + n², 4·n²): 100,000 samples need 298 GiB
    assert grm_driver_bytes(100_000, 100_000) == 8 * 4 * 10 ** 10
    assert grm_driver_bytes(100_000, 1_000) == 8 * (15 * 10 ** 9 + 10 ** 6)
    with pytest.raises(InputError, match=r"genotypes.grm: a GRM of 100000 samples \(100000 analysed\) needs "
                                         r"about 298\.02 GiB on the driver .* but 64\.00 GiB is available"):
        check_grm_memory(100_000, 100_000, available=64 * 2 ** 30)
    assert check_grm_memory(1000, 1000, available=64 * 2 ** 30) == 32 * 10 ** 6
