"""scripts/studies/components_study.py on two tiny replicates, so that the study script cannot rot.

The figures of docs/components_study.md come from the script at full size; here it runs its core
(simulate, split, fit, record, resume, summarise) at n = 200 and checks what it computes against
independent NumPy arithmetic on the same records and genotypes.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "studies" / "components_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("components_study", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_genotypes_have_the_designed_frequencies_and_maf_dependent_ld(study):
    """The allele frequencies span [0.01, 0.5] and rare variants are in weaker LD than common
    ones (the mechanism that biases the one-component fit in the study's low-MAF row)."""
    rng = np.random.default_rng(5)
    G, block_of = study.simulate_genotypes(800, 1000, rng, block=50)
    assert G.dtype == np.int8 and G.min() >= 0 and G.max() <= 2
    f = G.mean(0) / 2
    maf = np.minimum(f, 1 - f)
    # 1/f spectrum on [0.01, 0.5]: P(MAF < 0.05) = log 5 / log 50 = 0.41; binomial SD of the
    # fraction over 1000 variants ~0.016, sampling noise in MAF adds a little: ±0.06 is > 3 SD
    assert abs(np.mean(maf < 0.05) - np.log(5) / np.log(50)) < 0.06
    X = (G - 2 * f) / np.sqrt(2 * f * (1 - f))
    ld = study.ld_scores_in_blocks(X, block_of)
    # design: loading c = min(1, sqrt(f / 0.1)), so r² of MAF < 0.05 variants with common ones is
    # a fraction of the common variants' own: their mean LD score is well under half of theirs
    assert ld[maf < 0.05].mean() < 0.5 * ld[maf > 0.2].mean()


def test_two_replicates_recorded_resumed_and_summarised(study, tmp_path):
    out = tmp_path / "s.json"
    argv = ["--replicates", "2", "--n", "200", "--p", "600", "--block", "50", "--methods", "one,exact",
            "--bootstrap", "50", "--workers", "1", "--threads", "1", "--out", str(out)]
    study.main(argv)
    recs = [json.loads(x) for x in out.with_suffix(".jsonl").read_text().splitlines()]
    keys = {(r["rep"], r["scenario"], r["method"]) for r in recs}
    assert keys == {(i, s, m) for i in range(2) for s in study.SCENARIOS for m in ("one", "exact")}
    for r in recs:
        t = r["truth"]
        assert t["h2_total"] == pytest.approx(0.5)  # --h2 default, the design's total
        if r["method"] == "exact":  # the components' truths add up to the total
            assert sum(v for k, v in t.items() if k.startswith("h2[")) == pytest.approx(0.5)
            assert {k for k in r["est"]} >= {k for k in t}
        else:
            assert set(r["est"]) == {"h2_total"}
        if r["scenario"] == "lowmaf" and r["method"] == "exact":
            assert t["h2[maf[0,0.05)]"] == pytest.approx(0.5)
        if r["scenario"] == "annot" and r["method"] == "exact":
            assert t["h2[annot]"] == pytest.approx(0.25)
    # resuming fits nothing more
    study.main(argv)
    assert len(out.with_suffix(".jsonl").read_text().splitlines()) == len(recs)
    # the summary's bias, SD and coverage against NumPy on the records
    summary = json.loads(out.read_text())
    row = next(r for r in summary["rows"] if (r["scenario"], r["method"], r["quantity"]) == ("even", "one", "h2_total"))
    est = np.array([r["est"]["h2_total"][0] for r in recs if (r["scenario"], r["method"]) == ("even", "one")])
    se = np.array([r["est"]["h2_total"][1] for r in recs if (r["scenario"], r["method"]) == ("even", "one")])
    assert row["bias"] == pytest.approx(est.mean() - 0.5)
    assert row["sd"] == pytest.approx(est.std(ddof=1))  # the truth is 0.5 in every replicate
    assert row["coverage"] == pytest.approx(np.mean(np.abs(est - 0.5) <= 1.96 * se))
    assert summary["mf_vs_exact"] == []
    # a truth that varies between replicates (a MAF bin's share in the "even" row): bias and SD of
    # the error ĥ² − h², not of ĥ² about one replicate's truth
    row = next(r for r in summary["rows"] if r["scenario"] == "even" and r["quantity"] == "h2[maf[0,0.05)]")
    pairs = [(r["est"]["h2[maf[0,0.05)]"][0], r["truth"]["h2[maf[0,0.05)]"]) for r in recs
             if (r["scenario"], r["method"]) == ("even", "exact")]
    err = np.array([e - t for e, t in pairs])
    assert row["bias"] == pytest.approx(err.mean()) and row["sd"] == pytest.approx(err.std(ddof=1))
    assert "pending" in study.markdown(summary)


def test_resume_refuses_other_options(study, tmp_path):
    out = tmp_path / "s.json"
    study.main(["--replicates", "1", "--n", "200", "--p", "600", "--block", "50", "--methods", "one",
                "--scenarios", "even", "--workers", "1", "--threads", "1", "--out", str(out)])
    with pytest.raises(SystemExit, match="another configuration"):
        study.main(["--replicates", "1", "--n", "300", "--p", "600", "--block", "50", "--methods", "one",
                    "--scenarios", "even", "--workers", "1", "--threads", "1", "--out", str(out)])


def test_matrix_free_rows_through_the_contract(study, tmp_path, monkeypatch):
    """The ``mf`` method calls ``bigmm.fit_components_matrix_free(bigmm.DenseComponentsOperator(Ks,
    names, n_variants), y, seed=, constrain=)`` and reads ``h2_se_mc`` and ``passes`` (the round's
    contract); stood in here by the exact fit plus a seeded perturbation, so that the records and
    the mf-against-exact summary are exercised before the matrix-free fit exists."""
    import types

    import bigmm

    class Op:
        def __init__(self, Ks, names=None, n_variants=None):
            self.Ks, self.names, self.n_variants = Ks, names, n_variants

    def fake_mf(op, Y, Z=None, *, seed=0, constrain=True, **kw):
        ex = bigmm.fit_components(op.Ks, Y, component_names=op.names, n_variants=op.n_variants,
                                  constrain=constrain, lrt=False, ml=False).fits[0]
        d = np.random.default_rng(seed).normal(0, 1e-3, len(ex.components) + 1)
        comps = tuple(types.SimpleNamespace(name=c.name, h2=c.h2 + d[j], h2_se=c.h2_se, h2_se_mc=1e-3,
                                            enrichment=c.enrichment, enrichment_se=c.enrichment_se)
                      for j, c in enumerate(ex.components))
        fit = types.SimpleNamespace(h2=ex.h2 + d[-1], h2_se=ex.h2_se, h2_se_mc=1e-3, components=comps,
                                    n_components=len(comps), converged=True, iterations=3, passes=7)
        return types.SimpleNamespace(fits=(fit,))

    monkeypatch.setattr(bigmm, "DenseComponentsOperator", Op, raising=False)
    monkeypatch.setattr(bigmm, "fit_components_matrix_free", fake_mf, raising=False)
    out = tmp_path / "s.json"
    study.main(["--replicates", "3", "--n", "200", "--p", "600", "--block", "50", "--methods", "exact,mf",
                "--scenarios", "annot", "--bootstrap", "50", "--workers", "1", "--threads", "1", "--out", str(out)])
    recs = [json.loads(x) for x in out.with_suffix(".jsonl").read_text().splitlines()]
    ex = {r["rep"]: r for r in recs if r["method"] == "exact"}
    mf = {r["rep"]: r for r in recs if r["method"] == "mf"}
    assert sorted(ex) == sorted(mf) == [0, 1, 2] and all(r["passes"] == 7 for r in mf.values())
    assert len({r["mf_seed"] for r in mf.values()}) == 3  # a fresh probe seed per replicate
    summary = json.loads(out.read_text())
    pair = next(p for p in summary["mf_vs_exact"] if p["quantity"] == "h2[annot]")
    a = np.array([ex[i]["est"]["h2[annot]"][0] - ex[i]["truth"]["h2[annot]"] for i in range(3)])
    b = np.array([mf[i]["est"]["h2[annot]"][0] - ex[i]["truth"]["h2[annot]"] for i in range(3)])
    se = np.array([ex[i]["est"]["h2[annot]"][1] for i in range(3)])
    assert pair["efficiency"] == pytest.approx(a.var(ddof=1) / b.var(ddof=1))
    assert pair["diff_sd"] == pytest.approx(np.std(b - a, ddof=1))
    assert pair["mc_sd_over_se"] == pytest.approx(1e-3 / se.mean())
    assert "pending" not in study.markdown(summary)


def test_summary_of_a_fit_without_se(study):
    """A fit whose SEs are NaN (an unconstrained fit that stopped where V is singular) stays in
    the bias and SD, is left out of the mean SE and counts as an interval that missed."""
    est = [0.40, 0.55, 0.62, 0.47]
    se = [0.05, float("nan"), 0.08, 0.06]
    recs = [{"rep": i, "scenario": "even", "method": "one", "truth": {"h2_total": 0.5},
             "realised": {"h2_total": 0.5}, "est": {"h2_total": [e, s, float("nan")]}, "converged": True,
             "seconds": 1.0, "passes": None} for i, (e, s) in enumerate(zip(est, se))]
    row = study.summarise(recs, 4, B=20)["rows"][0]
    err = np.array(est) - 0.5
    assert row["bias"] == pytest.approx(err.mean()) and row["sd"] == pytest.approx(err.std(ddof=1))
    assert row["mean_se"] == pytest.approx(np.mean([0.05, 0.08, 0.06]))
    # |err| <= 1.96 SE: 0.10 > 0.098 misses, NaN misses, 0.12 <= 0.157 and 0.03 <= 0.118 cover
    assert row["coverage"] == pytest.approx(0.5) and row["se_nan"] == 1


def test_summary_counts_estimates_held_at_zero(study):
    """With --constrain a component held at its bound is exactly 0: counted per row."""
    recs = [{"rep": i, "scenario": "lowmaf", "method": "one", "truth": {"h2_total": 0.5},
             "realised": {"h2_total": 0.5}, "est": {"h2_total": [e, 0.1, float("nan")]}, "converged": True,
             "seconds": 1.0, "passes": None} for i, e in enumerate([0.0, 0.3, 0.0, 1e-9])]
    row = study.summarise(recs, 4, B=20)["rows"][0]
    assert row["at_zero"] == 2
    assert "| 2 | 4 |" in study.markdown({"rows": [row], "mf_vs_exact": []})


def test_matrix_free_method_with_the_real_fit(study, tmp_path):
    """The ``mf`` method end to end with bigmm's own matrix-free fit (skipped where this checkout
    predates it): one tiny replicate, recorded with passes and Monte Carlo SDs."""
    import bigmm

    if not hasattr(bigmm, "fit_components_matrix_free"):
        pytest.skip("bigmm.fit_components_matrix_free is not in this checkout")
    out = tmp_path / "s.json"
    study.main(["--replicates", "1", "--n", "200", "--p", "600", "--block", "50", "--methods", "exact,mf",
                "--scenarios", "annot", "--bootstrap", "20", "--workers", "1", "--threads", "1", "--out", str(out)])
    recs = {r["method"]: r for r in map(json.loads, out.with_suffix(".jsonl").read_text().splitlines())}
    assert recs["mf"]["passes"] > 0
    est_mf, est_ex = recs["mf"]["est"], recs["exact"]["est"]
    assert set(est_mf) == set(est_ex)
    for q in ("h2_total", "h2[annot]", "h2[rest]"):
        assert np.isfinite(est_mf[q][2]) and est_mf[q][2] >= 0  # the Monte Carlo SD is reported
        # the two fits of one likelihood agree to well within the statistical SE at n = 200
        # (Monte Carlo SD ~0.1 SE in the study); 0.5 SE leaves room for an unlucky probe draw
        assert abs(est_mf[q][0] - est_ex[q][0]) < 0.5 * est_ex[q][1]
