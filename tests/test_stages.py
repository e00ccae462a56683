"""Each stage's declaration and body, tested without a run.

A test builds a :class:`bigmm.pipeline.stage.Context` on a temporary folder with small inputs (a
``SimpleNamespace`` with the fields the body reads), makes the upstream values with the library
itself (``ingest_plink``, ``variant_stats``/``standardization``, ``exact_spectrum``, ...) and hands
them to the context (``ctx.keep``), calls the declaration's ``body(ctx)`` and checks what it returns
and writes against a dense NumPy/SciPy reference written here or in ``tests/reference.py`` (which
does not import bigmm), on one 60 x 300 cohort with missing calls. No Dask cluster: the library runs
on the threaded scheduler when no client is active.

The identities checked:

- ingest: the store holds the genotypes of the .bed (which the test encodes by hand);
- variant_stats: allele frequencies Σg / 2·calls, the variants kept (filters applied densely);
- grm: K = X Xᵀ / p (mean-imputed standardized X) and N = per-pair counts of variants called in
  both, computed densely; a checkpoint of the same fingerprint keeps its done blocks, one of
  another fingerprint is discarded;
- spectrum (exact): the eigenvalues of the dense K, U orthonormal with K U = U S; the tables;
- rotate: Uᵀ Z and Uᵀ (y − Z γ̂) on the analysed samples' eigenvectors;
- reml (spectral): h², σ², log-likelihood and β̂ of the dense REML (Cholesky of V, maximised by
  scipy: ``reference.reml_reference``);
- reml (matrix-free): its committed value, loaded without a pass (the operator is never made),
  equals the value its body returned;
- blup (both models): ĝ = σ²_g K V⁻¹ (y − Z β̂) for every genotyped sample, dense;
- report: results.tsv and report.html from the fit, results.json only from ``finish``;
- each declaration's ``inputs``, ``upstream``, ``needed``, ``passes``, ``flops`` and ``outputs``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import bigmm
from bigmm.errors import InputError
from bigmm.io.tables import Design
from bigmm.pipeline import plan, registry
from bigmm.pipeline.config import parse_config
from bigmm.pipeline.outputs import save_variants
from bigmm.pipeline.stage import Context, Costs
from bigmm.pipeline.stage.grm import PARTIAL
from bigmm.pipeline.stage.rotate import Rotated
from bigmm.reml import rotate
from conftest import random_genotypes
from reference import reml_reference, standardize_reference

N, P = 60, 300
MIN_MAF, MAX_MISSING = 0.05, 0.1
#: samples without covariates: genotyped, not analysed (the spectral model is of the others)
NOT_ANALYSED = (5, 17, 40)
#: variants the variant selection (``variants.chr``) drops before the filters
SELECTED_OUT = np.arange(290, 300)


# --------------------------------------------------------------------------------------------
# The cohort: genotypes, a PLINK fileset written here, the design, and the dense references
# --------------------------------------------------------------------------------------------

def write_bed(prefix: Path, G: np.ndarray) -> None:
    """A PLINK 1 .bed/.bim/.fam of G (allele-1 counts, -1 missing), encoded here: SNP-major, 2 bits
    per call, lowest bits first; 00 two copies of allele 1, 10 one, 11 none, 01 missing."""
    n, p = G.shape
    code = {2: 0b00, 1: 0b10, 0: 0b11, -1: 0b01}
    out = bytearray(b"\x6c\x1b\x01")
    for j in range(p):
        for i0 in range(0, n, 4):
            byte = 0
            for k, g in enumerate(G[i0:i0 + 4, j]):
                byte |= code[int(g)] << (2 * k)
            out.append(byte)
    Path(f"{prefix}.bed").write_bytes(bytes(out))
    Path(f"{prefix}.bim").write_text("".join(f"1\trs{j + 1}\t0\t{100 * (j + 1)}\tA\tG\n" for j in range(p)))
    Path(f"{prefix}.fam").write_text("".join(f"F{i + 1} I{i + 1} 0 0 0 -9\n" for i in range(n)))


#: the phenotype's seed: its REML optimum is inside (0, 1) (n = 57 leaves h² with an SE of ~0.4)
PHENO_SEED = 2


def phenotype(X: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Age and a phenotype y = 1 + 0.5 age + g + e with h² = 0.5 (g = X β)."""
    rng = np.random.default_rng(seed)
    age = rng.normal(size=X.shape[0])
    g = X @ rng.normal(size=X.shape[1])
    g *= np.sqrt(0.5) / g.std()
    return age, 1.0 + 0.5 * age + g + rng.normal(size=X.shape[0]) * np.sqrt(0.5)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Genotypes with missing calls and the variants each filter drops, a heritable phenotype, and
    the dense references (the standardized X and K of the kept variants, the call indicator)."""
    d = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(4)
    G = random_genotypes(rng, N, P, missing=0.02)
    G[:, 0] = 0  # monomorphic
    G[:, 1] = 1  # every call heterozygous (sample SD 0)
    G[:, 2] = -1  # no call
    G[:, 3] = rng.binomial(2, 0.4, N)
    G[rng.permutation(N)[:12], 3] = -1  # 20% missing, above MAX_MISSING
    G[:, 4] = 0
    G[:3, 4] = 1  # MAF 3/120, below MIN_MAF
    write_bed(d / "cohort", G)
    # the filters, densely: called, not constant, MAF and missingness within bounds, not selected out
    called = G >= 0
    n_called = called.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        freq = np.where(called, G, 0).sum(0) / (2.0 * n_called)
    maf = np.minimum(freq, 1 - freq)
    constant = np.array([n_called[j] > 0 and np.all(G[called[:, j], j] == G[called[:, j], j][0])
                         for j in range(P)])
    selected = np.ones(P, bool)
    selected[SELECTED_OUT] = False
    keep = selected & (n_called > 0) & ~constant & ((N - n_called) / N <= MAX_MISSING) & (maf >= MIN_MAF)
    X, kept = standardize_reference(G, "gcta", keep=keep)
    assert np.array_equal(kept, np.flatnonzero(keep))
    K = X @ X.T / X.shape[1]
    C = called[:, keep].astype(np.int64)
    Ncount = C @ C.T  # per pair: variants called in both samples
    age, y = phenotype(X, PHENO_SEED)
    analysed = np.ones(N, bool)
    analysed[list(NOT_ANALYSED)] = False
    Y = np.where(analysed, y, np.nan)[:, None]
    Z = np.column_stack([np.ones(N), age]) * analysed[:, None]  # as the design has it: 0 where not analysed
    design = Design(Y=Y, Z=Z, phenotype_names=["trait1"], covariate_names=["intercept", "age"],
                    analysed=analysed, notes={})
    (d / "pheno.tsv").write_text("FID\tIID\ttrait1\n" + "".join(
        f"F{i + 1}\tI{i + 1}\t{y[i]:.17g}\n" for i in range(N)))
    (d / "labels.tsv").write_text("FID\tIID\tpop\n" + "".join(f"F{i + 1}\tI{i + 1}\tP{i % 2}\n" for i in range(N)))
    store = bigmm.ingest_plink(d / "cohort", d / "store.zarr", chunks=(32, 128))  # the ingested store
    return SimpleNamespace(dir=d, G=G, freq=freq, keep=keep, selected=selected, X=X, K=K, Ncount=Ncount,
                           design=design, analysed=analysed, y=y, store=store,
                           ids=[(f"F{i + 1}", f"I{i + 1}") for i in range(N)])


def config(c, tmp_path, **changes):
    """The run config of the cohort (sections changed by ``changes``), output in ``tmp_path``."""
    raw = {"genotypes": {"plink": str(c.dir / "cohort"), "chunks": [32, 128]},
           "variants": {"min_maf": MIN_MAF, "max_missing": MAX_MISSING},
           "phenotypes": {"file": str(c.dir / "pheno.tsv")},
           "grm": {"block_size": 20, "dtype": "float64"},  # float64 products: K to round-off
           "reml": {"dtype": "float64", "probes": 10, "max_steps": 50},
           "output": str(tmp_path / "run")}
    for section, values in changes.items():
        raw[section] = {**raw.get(section, {}), **values}
    return parse_config(raw, base=c.dir)  # relative paths: the cohort's files


def context(c, tmp_path, method="exact", rmethod="spectral", inputs=None, **changes) -> Context:
    """A stage body's context: the plan of this config, the validated inputs as a namespace."""
    cfg = config(c, tmp_path, **changes)
    out = tmp_path / "run"
    out.mkdir(exist_ok=True)
    inp = SimpleNamespace(ids=list(c.ids), design=c.design, plink=c.dir / "cohort", sample_rows=None,
                          variant_drop={"chr": ~c.selected}, grm=None, grm_K=None, spectrum_needed=True,
                          reml_method=rmethod, selection={}, labels=None, grm_info=None, store=None)
    for k, v in (inputs or {}).items():
        setattr(inp, k, v)
    f = plan.facts(cfg, method, rmethod)
    return Context(cfg, inp, out, f, plan.declarations(cfg, method, rmethod),
                   plan.stage_plan(cfg, method, None, rmethod))


def library_std(c):
    """The cohort's standardization, made by the library as the variant_stats stage makes it."""
    return bigmm.standardization(bigmm.variant_stats(c.store.genotypes), "gcta", min_maf=MIN_MAF,
                                 max_missing=MAX_MISSING, drop={"chr": ~c.selected})


def dense_blup(K_rows, K_aa, y, Z, sigma2_g, sigma2_e):
    """ĝ = σ²_g K_{·a} V⁻¹ (y − Z β̂), V = σ²_g K_aa + σ²_e I, β̂ the GLS estimate (by Cholesky)."""
    from scipy.linalg import cho_factor, cho_solve

    cf = cho_factor(sigma2_g * K_aa + sigma2_e * np.eye(len(y)))
    ViZ, Viy = cho_solve(cf, Z), cho_solve(cf, y)
    beta = np.linalg.solve(Z.T @ ViZ, Z.T @ Viy)
    return sigma2_g * K_rows @ cho_solve(cf, y - Z @ beta)


def table(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text().splitlines()
    return lines[0].split("\t"), [ln.split("\t") for ln in lines[1:]]


def written(ctx: Context, stage) -> list[str]:
    """The stage's declared outputs missing from the run folder."""
    return [o for o in stage.outputs if not (ctx.out / o).exists()]


# --------------------------------------------------------------------------------------------
# ingest, variant_stats
# --------------------------------------------------------------------------------------------

def test_ingest_stores_the_genotypes_of_the_bed(cohort, tmp_path):
    ctx = context(cohort, tmp_path)
    store, info = registry.INGEST.body(ctx)
    assert np.array_equal(np.asarray(store.genotypes[...]), cohort.G)  # int8 counts: exact
    assert store.sample_ids() == cohort.ids
    assert info["n_samples"] == N and info["n_variants"] == P and info["passes_over_X"] == 1
    assert written(ctx, registry.INGEST) == []
    loaded = registry.INGEST.load(Context(ctx.cfg, ctx.inp, ctx.out, ctx.facts, ctx.stages, ctx.plan))
    assert np.array_equal(np.asarray(loaded.genotypes[...]), cohort.G)


def test_variant_stats_frequencies_and_kept_variants_equal_dense_counts(cohort, tmp_path):
    ctx = context(cohort, tmp_path)
    ctx.keep(registry.INGEST, cohort.store)
    std, info = registry.VARIANT_STATS.body(ctx)
    assert np.array_equal(std.keep, cohort.keep)
    # center = 2f of the called genotypes; exact ratios of small integers, to float64 round-off
    np.testing.assert_allclose(std.center[cohort.keep] / 2, cohort.freq[cohort.keep], rtol=1e-14)
    np.testing.assert_allclose(std.scale[cohort.keep],
                               1 / np.sqrt(2 * cohort.freq[cohort.keep] * (1 - cohort.freq[cohort.keep])), rtol=1e-13)
    assert std.dropped["chr"] == SELECTED_OUT.size and std.dropped["monomorphic"] == 1
    assert std.dropped["all_missing"] == 1 and std.dropped["all_heterozygous"] == 1
    assert std.dropped["max_missing"] == 1 and std.dropped["min_maf"] >= 1
    assert info["n_kept"] == int(cohort.keep.sum()) and info["passes_over_X"] == 1
    assert written(ctx, registry.VARIANT_STATS) == []
    loaded = registry.VARIANT_STATS.load(ctx)  # variants.zarr read back: the same standardization
    assert np.array_equal(loaded.keep, std.keep) and np.array_equal(loaded.scale, std.scale)


def test_variant_stats_refuses_a_store_of_other_samples(cohort, tmp_path):
    ctx = context(cohort, tmp_path, inputs={"ids": list(reversed(cohort.ids))})
    ctx.keep(registry.INGEST, cohort.store)
    with pytest.raises(InputError, match="differ from the genotype input"):
        registry.VARIANT_STATS.body(ctx)
    assert not (ctx.out / "variants.zarr").exists()


# --------------------------------------------------------------------------------------------
# grm
# --------------------------------------------------------------------------------------------

def grm_context(cohort, tmp_path, **changes):
    ctx = context(cohort, tmp_path, **changes)
    ctx.keep(registry.INGEST, cohort.store)
    ctx.keep(registry.VARIANT_STATS, library_std(cohort))
    return ctx


def test_grm_K_and_N_equal_the_dense_products(cohort, tmp_path):
    ctx = grm_context(cohort, tmp_path)
    arrays, info = registry.GRM.body(ctx)
    # float64 sums of ~270 products of size ~1: round-off ~1e-14, far below 1e-12
    np.testing.assert_allclose(np.asarray(arrays["K"][...]), cohort.K, rtol=0, atol=1e-12)
    assert np.array_equal(np.asarray(arrays["N"][...]), cohort.Ncount)  # integer counts: exact
    assert info["blocks"] == "6 computed, 0 from checkpoint"  # 3 block rows of 20: 6 blocks I ≤ J
    assert info["passes_over_X"] == 3
    assert written(ctx, registry.GRM) == [] and not (ctx.out / PARTIAL).exists()


def _checkpoint(ctx, fingerprint: str, block: int, done: tuple, value: float) -> None:
    """A GRM checkpoint with the block ``done`` (I, J) computed: K = ``value`` there, N = -7."""
    from bigmm.grm import create_grm_store

    g = create_grm_store(ctx.out / PARTIAL, N, block, {"fingerprint": fingerprint, "block_size": block}, counts=True)
    I, J = done
    rows, cols = slice(I * block, (I + 1) * block), slice(J * block, (J + 1) * block)
    g["K"][rows, cols] = value
    g["K"][cols, rows] = value
    g["N"][rows, cols] = -7
    g["N"][cols, rows] = -7
    g["done"][I, J] = 1


def test_grm_resumes_a_checkpoint_of_its_fingerprint_keeping_the_done_blocks(cohort, tmp_path):
    ctx = grm_context(cohort, tmp_path)
    _checkpoint(ctx, ctx.fingerprint(registry.GRM), 20, (0, 1), 1000.0)
    arrays, info = registry.GRM.body(ctx)
    K, Nc = np.asarray(arrays["K"][...]), np.asarray(arrays["N"][...])
    assert info["blocks"] == "5 computed, 1 from checkpoint"
    done = np.zeros((N, N), bool)
    done[0:20, 20:40] = done[20:40, 0:20] = True
    assert np.all(K[done] == 1000.0) and np.all(Nc[done] == -7)  # kept as found, not recomputed
    np.testing.assert_allclose(K[~done], cohort.K[~done], rtol=0, atol=1e-12)  # as above
    assert np.array_equal(Nc[~done], cohort.Ncount[~done])


def test_grm_resumes_a_checkpoint_in_its_own_block_size(cohort, tmp_path):
    ctx = grm_context(cohort, tmp_path)  # grm.block_size 20; the checkpoint's blocks are of 30
    _checkpoint(ctx, ctx.fingerprint(registry.GRM), 30, (0, 0), 1000.0)
    arrays, info = registry.GRM.body(ctx)
    assert info["blocks"] == "2 computed, 1 from checkpoint"
    K = np.asarray(arrays["K"][...])
    assert np.all(K[:30, :30] == 1000.0)
    np.testing.assert_allclose(K[30:, :], cohort.K[30:, :], rtol=0, atol=1e-12)


def test_grm_discards_a_checkpoint_of_another_fingerprint(cohort, tmp_path):
    ctx = grm_context(cohort, tmp_path)
    _checkpoint(ctx, "another-plan", 20, (0, 1), 1000.0)
    arrays, info = registry.GRM.body(ctx)
    assert info["blocks"] == "6 computed, 0 from checkpoint"
    np.testing.assert_allclose(np.asarray(arrays["K"][...]), cohort.K, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# spectrum, rotate
# --------------------------------------------------------------------------------------------

def test_exact_spectrum_is_the_eigendecomposition_of_the_dense_K(cohort, tmp_path):
    ctx = context(cohort, tmp_path)
    ctx.keep(registry.GRM, {"K": cohort.K})  # the committed GRM's K, as the body reads it
    spec, info = registry.SPECTRUM.body(ctx)
    s_ref = np.sort(np.linalg.eigvalsh(cohort.K))[::-1]
    # LAPACK eigenvalues of a symmetric matrix: backward stable, |Δλ| ≲ n·eps·‖K‖ ~ 1e-13·‖K‖
    np.testing.assert_allclose(spec.s, np.maximum(s_ref, 0.0), rtol=0, atol=1e-10 * s_ref[0])
    np.testing.assert_allclose(spec.U.T @ spec.U, np.eye(N), atol=1e-10)
    np.testing.assert_allclose(cohort.K @ spec.U, spec.U * spec.s, atol=1e-10 * s_ref[0])
    assert info["passes_over_X"] == 0 and written(ctx, registry.SPECTRUM) == []
    head, rows = table(ctx.out / "eigenvalues.tsv")
    assert head == ["index", "eigenvalue"] and len(rows) == N
    # written with 10 significant digits
    np.testing.assert_allclose([float(r[1]) for r in rows], spec.s, rtol=1e-9, atol=1e-9 * s_ref[0])
    head, rows = table(ctx.out / "pcs.tsv")
    assert head == ["FID", "IID"] + [f"PC{i}" for i in range(1, 21)]  # at least 20 PCs are written
    assert [tuple(r[:2]) for r in rows] == cohort.ids
    np.testing.assert_allclose(np.array([r[2:] for r in rows], float), spec.U[:, :20], atol=1e-8)  # 8 digits
    loaded = registry.SPECTRUM.load(ctx)
    assert np.array_equal(loaded.s, spec.s) and np.array_equal(loaded.U, spec.U)


def test_randomized_spectrum_on_the_whole_space_is_the_top_of_the_dense_spectrum(cohort, tmp_path):
    # (q + 1)·(k + oversample) = 4·20 ≥ n: the Krylov space is all of Rⁿ, where Rayleigh–Ritz is exact
    ctx = context(cohort, tmp_path, "randomized", spectrum={"method": "randomized", "rank": 10, "oversample": 10,
                                                             "power_iters": 3, "dtype": "float64"})
    ctx.keep(registry.INGEST, cohort.store)
    ctx.keep(registry.VARIANT_STATS, library_std(cohort))
    spec, info = registry.SPECTRUM.body(ctx)
    s_ref = np.sort(np.linalg.eigvalsh(cohort.K))[::-1][:10]
    assert spec.k == 10 and info["passes_over_X"] >= 1
    # float64 passes and an orthonormal basis of Rⁿ: round-off of ‖K‖ (~2), well below 1e-9
    np.testing.assert_allclose(spec.s, s_ref, rtol=0, atol=1e-9 * s_ref[0])
    np.testing.assert_allclose(cohort.K @ spec.U, spec.U * spec.s, atol=1e-9 * s_ref[0])
    head, rows = table(ctx.out / "eigenvalues.tsv")
    assert head == ["index", "eigenvalue", "ritz_residual", "converged"] and len(rows) == 10
    assert written(ctx, registry.SPECTRUM) == [] and not (ctx.out / "spectrum.partial").exists()


def test_a_given_grm_spectrum_clips_negative_eigenvalues(cohort, tmp_path, caplog):
    rng = np.random.default_rng(9)
    Q = np.linalg.qr(rng.normal(size=(N, N)))[0]
    lam = np.linspace(2.0, -0.05, N)  # a K that is not positive semi-definite
    K = (Q * lam) @ Q.T
    grm = SimpleNamespace(dtype="float32", bin=tmp_path / "given.grm.bin")
    ctx = context(cohort, tmp_path, inputs={"grm": grm, "grm_K": K})
    spec, info = registry.SPECTRUM.body(ctx)
    # eigenvalues above the float32 round-off of K's entries are kept; the negative ones become 0
    np.testing.assert_allclose(spec.s, np.maximum(lam, 0.0), atol=1e-12)
    assert info["passes_over_X"] == 0 and "not positive semi-definite" in caplog.text


def test_rotate_is_U_transpose_of_Z_and_of_the_residual_on_the_analysed_samples(cohort, tmp_path):
    ctx = context(cohort, tmp_path)
    ctx.keep(registry.SPECTRUM, bigmm.exact_spectrum(cohort.K))
    rot, info = registry.ROTATE.body(ctx)
    a = cohort.analysed
    Ka = cohort.K[np.ix_(a, a)]
    s_ref, U_ref = np.linalg.eigh(Ka)
    U_ref = U_ref[:, ::-1]
    assert info["n_analysed"] == a.sum() and written(ctx, registry.ROTATE) == []
    U = rot.analysed_spectrum.U  # the analysed samples' eigenvectors: those of K_aa, up to sign
    sign = np.sign(np.sum(U * U_ref, axis=0))
    # eigenvectors to ~eps·‖K‖ / gap: the smallest gap of K_aa's eigenvalues is ~1e-3 here
    np.testing.assert_allclose(U * sign, U_ref, atol=1e-9)
    Za = cohort.design.Z[a]
    r = cohort.y[a] - Za @ np.linalg.lstsq(Za, cohort.y[a], rcond=None)[0]
    grp = rot.design.groups[0]
    assert len(rot.design.groups) == 1 and grp.method == "none"
    np.testing.assert_allclose(grp.Zt * sign[:, None], U_ref.T @ Za, atol=1e-9)
    np.testing.assert_allclose(grp.Yt[:, 0] * grp.scale[0] * sign, U_ref.T @ r, atol=1e-9)
    loaded = registry.ROTATE.load(ctx)  # rotated.npz read back
    assert np.array_equal(loaded.design.groups[0].Yt, grp.Yt) and loaded.analysed_spectrum is None


# --------------------------------------------------------------------------------------------
# reml and blup: spectral
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dense_reml(cohort):
    a = cohort.analysed
    return reml_reference(cohort.K[np.ix_(a, a)], cohort.y[a], cohort.design.Z[a])


def spectral_context(cohort, tmp_path, **changes):
    ctx = context(cohort, tmp_path, **changes)
    spec = bigmm.exact_spectrum(cohort.K)
    sub = spec.subset(np.flatnonzero(cohort.analysed))
    d = cohort.design
    rd = rotate(sub, d.Y[d.analysed], d.Z[d.analysed], phenotype_names=d.phenotype_names,
                           covariate_names=d.covariate_names)
    ctx.keep(registry.SPECTRUM, spec)
    ctx.keep(registry.ROTATE, Rotated(rd, sub))
    return ctx


def test_spectral_reml_equals_the_dense_reml(cohort, tmp_path, dense_reml):
    ctx = spectral_context(cohort, tmp_path)
    result, info = registry.REML[0].body(ctx)
    fit, ref = result.fits[0], dense_reml
    assert not fit.boundary and 0.05 < ref["h2"] < 0.95  # an interior optimum
    # the reference's maximiser is located to ~1e-7 in h² (tests/reference.py); bigmm's bisection
    # of the score to ~1e-9: h² to 1e-6, the maximised log-likelihood (flat there) to 1e-8
    assert fit.h2 == pytest.approx(ref["h2"], abs=1e-6)
    assert fit.sigma2_g == pytest.approx(ref["sigma2_g"], rel=1e-5)
    assert fit.sigma2_e == pytest.approx(ref["sigma2_e"], rel=1e-5)
    assert fit.logl_reml == pytest.approx(ref["logl_reml"], abs=1e-8)
    np.testing.assert_allclose([fe.estimate for fe in fit.fixed_effects], ref["omega"], rtol=1e-5, atol=1e-7)
    assert fit.n == cohort.analysed.sum() and info == {"phenotypes": 1}
    assert written(ctx, registry.REML[0]) == []
    loaded = registry.REML[0].load(ctx)  # reml.json read back
    assert loaded.fits[0].h2 == fit.h2 and loaded.fits[0].logl_reml == fit.logl_reml


def test_spectral_blup_equals_the_dense_formula(cohort, tmp_path):
    ctx = spectral_context(cohort, tmp_path, predict={"blup": True})
    fit = registry.REML[0].body(ctx)[0]
    ctx.keep(registry.REML[0], fit)
    b, info = registry.BLUP[0].body(ctx)
    a = cohort.analysed
    f = fit.fits[0]
    g_ref = dense_blup(cohort.K[:, a], cohort.K[np.ix_(a, a)], cohort.y[a], cohort.design.Z[a], f.sigma2_g,
                       f.sigma2_e)
    # the same σ², two exact solves of a well-conditioned V (cond ≲ 1e2): float64 round-off
    np.testing.assert_allclose(b.genetic_values[:, 0], g_ref, rtol=1e-8, atol=1e-10 * np.abs(g_ref).max())
    head, rows = table(ctx.out / "blup.tsv")
    assert head == ["FID", "IID", "trait1"] and [tuple(r[:2]) for r in rows] == cohort.ids
    # written with 8 significant digits
    np.testing.assert_allclose([float(r[2]) for r in rows], g_ref, rtol=1e-7, atol=1e-12)
    assert (ctx.out / "blup_loo.tsv").exists() and written(ctx, registry.BLUP[0]) == []
    assert info == {"phenotypes": 1}


def test_snp_effects_reproduce_the_blup(cohort, tmp_path):
    """X β̂ = ĝ: β̂ = (σ²_g / p) Xᵀ w, so X β̂ = σ²_g K w, the genetic values."""
    ctx = spectral_context(cohort, tmp_path, predict={"snp_effects": True})
    ctx.keep(registry.INGEST, cohort.store)
    ctx.keep(registry.VARIANT_STATS, library_std(cohort))
    ctx.keep(registry.REML[0], registry.REML[0].body(ctx)[0])
    b, info = registry.BLUP[0].body(ctx)
    assert info["passes_over_X"] == 1
    head, rows = table(ctx.out / "snp_effects.tsv")
    beta = np.array([float(r[head.index("beta_trait1")]) for r in rows])
    used = np.array([r[head.index("used")] == "1" for r in rows])
    assert np.array_equal(used, cohort.keep) and np.all(beta[~used] == 0.0)
    # β̂ written with 8 significant digits, summed over ~270 variants: 1e-6 of max |ĝ|
    np.testing.assert_allclose(cohort.X @ beta[used], b.genetic_values[:, 0], rtol=0,
                               atol=1e-6 * np.abs(b.genetic_values).max())


# --------------------------------------------------------------------------------------------
# reml and blup: matrix-free
# --------------------------------------------------------------------------------------------

def mf_context(cohort, tmp_path, **changes):
    ctx = context(cohort, tmp_path, rmethod="matrix_free", **changes)
    ctx.keep(registry.INGEST, cohort.store)
    ctx.keep(registry.VARIANT_STATS, library_std(cohort))
    return ctx


@pytest.fixture(scope="module")
def mf_run(cohort, tmp_path_factory):
    """The matrix-free REML body's value, and the context it ran in."""
    ctx = mf_context(cohort, tmp_path_factory.mktemp("mf"), predict={"blup": True})
    result, info = registry.REML[1].body(ctx)
    return ctx, result, info


def test_matrix_free_reml_commits_its_state_and_agrees_with_the_dense_reml(mf_run, dense_reml):
    ctx, result, info = mf_run
    assert written(ctx, registry.REML[1]) == [] and not (ctx.out / "reml.partial").exists()
    assert info["converged"] and info["passes_over_X"] == info["lanczos_steps"] == result.lanczos_steps
    fit = result.fits[0]
    # its log det is a Monte Carlo estimate (10 probes): h² within 3 of its own Monte Carlo SDs
    # of the exact REML (the quadratic forms are exact to the solver's tolerance, 1e-4)
    assert abs(fit.h2 - dense_reml["h2"]) <= 3 * fit.h2_se_mc + 1e-4


def test_matrix_free_load_restores_the_fit_without_a_pass(mf_run, monkeypatch):
    ctx, result, _ = mf_run

    def no_operator(*args, **kwargs):
        raise AssertionError("loading a committed matrix-free fit made a pass over X")

    monkeypatch.setattr(Context, "operator", no_operator)
    fresh = Context(ctx.cfg, ctx.inp, ctx.out, ctx.facts, ctx.stages, ctx.plan)  # no fit held
    fresh.keep(registry.INGEST, ctx.value(registry.INGEST))  # what an operator would be made of
    fresh.keep(registry.VARIANT_STATS, ctx.value(registry.VARIANT_STATS))
    loaded = fresh.value(registry.REML[1])
    # rebuilt from reml_state.npz: the same fits, bit for bit (NaN fields compared as text)
    assert json.dumps([f.to_dict() for f in loaded.fits]) == json.dumps([f.to_dict() for f in result.fits])
    assert np.array_equal(loaded.blup_weights(), result.blup_weights())
    assert loaded.notes.get("restored_after_step") == result.lanczos_steps


def test_matrix_free_blup_equals_the_dense_formula(cohort, mf_run):
    ctx, result, _ = mf_run
    ctx.keep(registry.REML[1], result)
    b, info = registry.BLUP[1].body(ctx)
    a = cohort.analysed
    f = result.fits[0]
    g_ref = dense_blup(cohort.K[:, a], cohort.K[np.ix_(a, a)], cohort.y[a], cohort.design.Z[a], f.sigma2_g,
                       f.sigma2_e)
    # V⁻¹ r from the fit's Krylov basis (exact once the Krylov space is exhausted; a few steps
    # short of it here, 6 steps of 3 vectors for 57 samples): measured 3e-5 of max |ĝ|; 3e-4
    np.testing.assert_allclose(b.genetic_values[:, 0], g_ref, rtol=0, atol=3e-4 * np.abs(g_ref).max())
    assert info == {"phenotypes": 1, "passes_over_X": 1} and written(ctx, registry.BLUP[1]) == []


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------

def test_report_writes_results_tsv_and_finish_writes_results_json(cohort, tmp_path):
    ctx = spectral_context(cohort, tmp_path)
    fit = registry.REML[0].body(ctx)[0]
    ctx.keep(registry.REML[0], fit)
    std = library_std(cohort)
    ctx.keep(registry.VARIANT_STATS, std)
    save_variants(ctx.out / "variants.zarr", bigmm.variant_stats(cohort.store.genotypes), std)
    doc, info = registry.REPORT.body(ctx)
    assert (ctx.out / "results.tsv").exists() and (ctx.out / "report.html").exists()
    assert not (ctx.out / "results.json").exists()  # written last, once the run is recorded complete
    head, rows = table(ctx.out / "results.tsv")
    assert rows[0][0] == "trait1"
    assert float(rows[0][head.index("h2")]) == pytest.approx(fit.fits[0].h2, rel=1e-9)  # 10 digits
    registry.REPORT.finish(ctx, doc)
    assert written(ctx, registry.REPORT) == []
    js = json.loads((ctx.out / "results.json").read_text())
    p = js["phenotypes"][0]
    assert p["name"] == "trait1" and p["h2"] == fit.fits[0].h2 and p["n_missing"] == 0
    assert js["n_variants"] == int(cohort.keep.sum()) and js["n_genotyped"] == N
    assert js["n_samples"] == cohort.analysed.sum()


# --------------------------------------------------------------------------------------------
# The declarations: inputs, upstream, needed, passes, flops, outputs
# --------------------------------------------------------------------------------------------

MF = {"reml": {"method": "matrix_free"}}

#: declaration, method, model: a change of its settings, a change of an unrelated section
INPUT_CASES = {
    "ingest": (registry.INGEST, "exact", "spectral", {"genotypes": {"chunks": [16, 64]}},
               {"reml": {"grid_size": 51}}),
    "variant_stats": (registry.VARIANT_STATS, "exact", "spectral", {"variants": {"min_maf": 0.1}},
                      {"grm": {"block_size": 30}}),
    "grm": (registry.GRM, "exact", "spectral", {"grm": {"block_size": 30}}, {"variants": {"min_maf": 0.1}}),
    "grm_dtype": (registry.GRM, "exact", "spectral", {"grm": {"dtype": "float32"}}, {"predict": {"blup": True}}),
    "spectrum_randomized": (registry.SPECTRUM, "randomized", "spectral", {"spectrum": {"rank": 7}},
                            {"reml": {"grid_size": 51}}),
    "rotate": (registry.ROTATE, "exact", "spectral", {"covariates": {"pcs": 2}}, {"reml": {"grid_size": 51}}),
    "reml_spectral": (registry.REML[0], "exact", "spectral", {"reml": {"grid_size": 51}},
                      {"predict": {"blup": True}}),
    "reml_matrix_free": (registry.REML[1], "exact", "matrix_free", {"reml": {"probes": 20}},
                         {"grm": {"block_size": 30}}),
    "blup_spectral": (registry.BLUP[0], "exact", "spectral", {"predict": {"snp_effects": True}},
                      {"reml": {"grid_size": 51}}),
    "blup_matrix_free": (registry.BLUP[1], "exact", "matrix_free", {"predict": {"snp_effects": True}},
                         {"reml": {"probes": 20}}),
    "report": (registry.REPORT, "exact", "spectral", {"report": {"labels": "labels.tsv"}}, {"reml": {"grid_size": 51}}),
}


@pytest.mark.parametrize("case", sorted(INPUT_CASES))
def test_a_declarations_inputs_change_with_its_settings_only(cohort, tmp_path, case):
    stage, method, rmethod, own, other = INPUT_CASES[case]
    base = {"reml": {"method": rmethod}} if rmethod != "spectral" else {}

    def inputs(**changes):
        merged = {k: {**base.get(k, {}), **changes.get(k, {})} for k in {*base, *changes}}
        cfg = config(cohort, tmp_path, **merged)
        return json.dumps(stage.inputs(plan.facts(cfg, method, rmethod)), sort_keys=True, default=str)

    assert inputs(**own) != inputs()
    assert inputs(**other) == inputs()


def test_a_phenotype_file_edit_changes_the_inputs_of_the_stages_that_read_it(cohort, tmp_path):
    pheno = tmp_path / "pheno.tsv"
    pheno.write_text((cohort.dir / "pheno.tsv").read_text())
    before = {s: s.inputs(plan.facts(config(cohort, tmp_path, phenotypes={"file": str(pheno)}), "exact", m))
              for s, m in ((registry.ROTATE, "spectral"), (registry.REML[1], "matrix_free"))}
    pheno.write_text(pheno.read_text().replace("F1\tI1\t", "F1\tI1\t1"))
    for s, m in ((registry.ROTATE, "spectral"), (registry.REML[1], "matrix_free")):
        assert s.inputs(plan.facts(config(cohort, tmp_path, phenotypes={"file": str(pheno)}), "exact", m)) != before[s]


def facts(cohort, tmp_path, method="exact", rmethod="spectral", **changes):
    return plan.facts(config(cohort, tmp_path, **changes), method, rmethod)


def test_an_exact_spectrums_inputs_are_its_method_only(cohort, tmp_path):
    def inputs(method, **changes):
        return registry.SPECTRUM.inputs(facts(cohort, tmp_path, method, **changes))

    assert inputs("exact") == {"method": "exact"} != inputs("randomized")
    assert inputs("exact", spectrum={"rank": 7, "power_iters": 2}) == inputs("exact")  # settings of the other method


def test_upstream_stages_of_each_declaration(cohort, tmp_path):
    r = registry
    f = facts(cohort, tmp_path)
    assert r.INGEST.upstream(f) == () and r.VARIANT_STATS.upstream(f) == (r.INGEST,)
    assert r.GRM.upstream(f) == (r.VARIANT_STATS,)
    assert r.SPECTRUM.upstream(f) == (r.VARIANT_STATS, r.GRM)
    assert r.SPECTRUM.upstream(facts(cohort, tmp_path, "randomized")) == (r.VARIANT_STATS,)  # no GRM
    assert r.ROTATE.upstream(f) == (r.SPECTRUM,) and r.REML[0].upstream(f) == (r.ROTATE,)
    assert r.BLUP[0].upstream(f) == (r.REML[0],)
    assert r.REPORT.upstream(f) == (r.REML[0],)
    assert r.REPORT.upstream(facts(cohort, tmp_path, predict={"blup": True}, grm={"export_gcta": True})) \
        == (r.REML[0], r.BLUP[0], r.GRM)
    mf = facts(cohort, tmp_path, rmethod="matrix_free", predict={"blup": True})
    assert r.REML[1].upstream(mf) == (r.VARIANT_STATS,)  # no spectrum without deflation or PCs
    assert r.REML[1].upstream(facts(cohort, tmp_path, rmethod="matrix_free", reml={"deflate": 3})) \
        == (r.VARIANT_STATS, r.SPECTRUM)
    assert r.BLUP[1].upstream(mf) == (r.REML[1],) and r.REPORT.upstream(mf) == (r.REML[1], r.BLUP[1])
    store = facts(cohort, tmp_path, genotypes={"plink": None, "zarr": str(cohort.dir / "store.zarr")})
    assert r.VARIANT_STATS.upstream(store) == ()  # a given store: no ingest


def test_which_declarations_are_needed(cohort, tmp_path):
    def names(method="exact", rmethod="spectral", **changes):
        return list(plan.declarations(config(cohort, tmp_path, **changes), method, rmethod))

    full = ["ingest", "variant_stats", "grm", "spectrum", "rotate", "reml", "report"]
    assert names() == full
    assert names(predict={"blup": True}) == full[:-1] + ["blup", "report"]
    assert names("randomized") == [s for s in full if s != "grm"]  # no GRM for a randomized spectrum
    assert names("randomized", grm={"export_gcta": True}) == full  # unless it is exported
    assert names(rmethod="matrix_free") == ["ingest", "variant_stats", "reml", "report"]
    assert names(rmethod="matrix_free", reml={"deflate": 3}) == ["ingest", "variant_stats", "grm", "spectrum",
                                                                 "reml", "report"]
    assert names(genotypes={"plink": None, "zarr": str(cohort.dir / "store.zarr")}) == full[1:]


def test_passes_and_flops_of_each_declaration(cohort, tmp_path):
    f = facts(cohort, tmp_path, predict={"snp_effects": True})
    c = Costs(n=100, p=1000, grm_block=30, memory_plan={"passes_over_X": 7, "pass_vectors": 12,
                                                         "mf_pass_vectors": 40})
    r = registry
    assert r.INGEST.passes(f, c) == r.VARIANT_STATS.passes(f, c) == 1.0
    assert r.GRM.passes(f, c) == 4.0  # block rows of 30 samples: ⌈100 / 30⌉
    assert r.GRM.flops(f, c, 4.0) == 100 * 100 * 1000  # n²p: n²p/2 multiply-adds (the upper triangle), 2 flops each
    assert r.SPECTRUM.passes(f, c) == 0.0 and r.SPECTRUM.flops(f, c, 0.0) == 5 * 100 ** 3
    fr = facts(cohort, tmp_path, "randomized")
    assert r.SPECTRUM.passes(fr, c) == 7.0 and r.SPECTRUM.flops(fr, c, 7.0) == 4 * 100 * 1000 * 12 * 7
    assert r.ROTATE.passes(f, c) == r.REML[0].passes(f, c) == 0.0
    assert r.BLUP[0].passes(f, c) == 1.0  # SNP effects: Xᵀw
    assert r.BLUP[0].flops(f, c, 1.0) == 2 * 100 * 1000
    mf = facts(cohort, tmp_path, rmethod="matrix_free", reml={"max_steps": 60})
    assert r.REML[1].passes(mf, c) == 60.0 and r.REML[1].passes_at_most
    assert r.REML[1].flops(mf, c, 60.0) == 4 * 100 * 1000 * 40 * 60
    assert r.BLUP[1].passes(mf, c) == 1.0 and r.BLUP[1].passes(facts(
        cohort, tmp_path, rmethod="matrix_free", predict={"snp_effects": True}), c) == 2.0
    assert r.REPORT.passes(f, c) == 0.0


def test_outputs_of_one_plan_are_disjoint_and_every_stage_has_some():
    for model in registry.MODELS:
        chosen = plan.choose(model)
        files = [o for s in chosen for o in s.outputs]
        assert all(s.outputs for s in chosen) and len(files) == len(set(files)), model
    assert registry.REML[0].outputs == ("reml.json",)
    assert registry.REML[1].outputs == ("reml.json", "reml_state.npz")
    assert registry.REPORT.outputs[0] == "results.json"


def test_context_value_loads_a_committed_output_once(cohort, tmp_path):
    ctx = context(cohort, tmp_path)
    loads = []
    stage = registry.VARIANT_STATS
    fake = SimpleNamespace(name=stage.name, load=lambda c: loads.append(1) or "std")
    assert ctx.value(fake) == "std" and ctx.value(fake) == "std" and loads == [1]
    ctx.keep(stage, "kept")  # a value its body made: never loaded
    assert ctx.value(stage) == "kept" and loads == [1]
