"""report.html as a geneticist opens it: every section present, every image loaded in a real browser
(headless Chromium), and the numbers in its new tables checked against independent computations."""

import json
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
import yaml

import bigmm

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An exact-spectrum run with BLUP, a categorical covariate and one duplicated sample."""
    from conftest import local_cluster
    from distributed import Client

    d = tmp_path_factory.mktemp("report")
    c = bigmm.simulate(200, 1000, h2=[0.6, 0.3], seed=5, out_plink=d / "c", genotype_missing=0.01,
                       phenotype_missing=0.05)
    bigmm.write_tables(c, d / "pheno.tsv", d / "covar.tsv")
    # sample 2 is a duplicate of sample 1 (its .bed column copied): the report must list the pair
    bed = bytearray((d / "c.bed").read_bytes())
    n_bytes = (200 + 3) // 4
    for v in range(1000):
        row = bed[3 + v * n_bytes: 3 + (v + 1) * n_bytes]
        g0 = (row[0] >> 0) & 3
        row[0] = (row[0] & ~(3 << 2)) | (g0 << 2)
        bed[3 + v * n_bytes: 3 + (v + 1) * n_bytes] = row
    (d / "c.bed").write_bytes(bytes(bed))
    # one sample without a covariate row
    cov = (d / "covar.tsv").read_text().splitlines()
    (d / "covar.tsv").write_text("\n".join(cov[:-1]) + "\n")
    # labels for the PC plots: 14 populations over the first 190 samples (more than the legend's 12
    # entries), the last 10 samples without a row, and one row for a sample that is not genotyped
    (d / "pops.tsv").write_text("FID\tIID\tsite\tpopulation\n" + "".join(
        f"F{i + 1}\tI{i + 1}\ts\tpop{i % 14}\n" for i in range(190)) + "FX\tIX\ts\tpop0\n")
    cfg = {"genotypes": {"plink": str(d / "c"), "chunks": [64, 256]},
           "variants": {"min_maf": 0.02, "max_missing": 0.05},
           "phenotypes": {"file": str(d / "pheno.tsv"), "columns": ["trait1", "trait2"]},
           "covariates": {"file": str(d / "covar.tsv"), "columns": ["age", "sex"], "categorical": ["sex"]},
           "spectrum": {"method": "exact"}, "predict": {"blup": True}, "output": str(d / "out"),
           "report": {"labels": str(d / "pops.tsv"), "label_column": "population"},
           "cluster": {"workers": 1, "threads_per_worker": 2, "memory_limit": "2GiB"}}
    (d / "run.yaml").write_text(yaml.safe_dump(cfg))
    with local_cluster(1, 2) as cluster, Client(cluster) as client:
        bigmm.run(bigmm.load_config(d / "run.yaml"), client=client)
    return d / "out"


def test_report_sections_and_numbers(run_dir):
    from bigmm.pipeline.report import SECTIONS

    html = (run_dir / "report.html").read_text()
    doc = json.loads((run_dir / "results.json").read_text())
    for sid in SECTIONS:
        if sid != "matrix-free":
            assert f'<section id="{sid}">' in html, sid
    # Vp and its SE as GCTA's .hsq has them (the same helper writes both; here from the fits)
    f = doc["phenotypes"][0]
    vp = f["sigma2_g"] + f["sigma2_e"]
    se = np.sqrt(f["sigma2_g_se"] ** 2 + f["sigma2_e_se"] ** 2 + 2 * f["sigma2_g_sigma2_e_cov"])
    assert f"<td>{vp:.4f}</td><td>{se:.4f}</td>" in html
    # every fixed effect with its SE
    for fe in f["fixed_effects"]:
        assert f"<td>{fe['name']}</td><td>{fe['estimate']:.6g}</td><td>{fe['se']:.4g}</td>" in html
    # samples left out and why: the one without a covariate row
    assert re.search(r"<td>a covariate missing[^<]*</td><td>1</td>", html)
    # the duplicated pair is the top pair of K, classed as a duplicate
    top = re.search(r"The 20 most related pairs</h3><table>.*?</tr><tr>(.*?)</tr>", html).group(1)
    assert "F1/I1" in top and "F2/I2" in top and "duplicate" in top
    # raw K_ij, K_ii, K_jj and the normalised value (1 for a duplicate) side by side, from grm.zarr
    import zarr

    Kz = zarr.open_group(str(run_dir / "grm.zarr"), mode="r")["K"]
    k01, k00, k11 = float(Kz[0, 1]), float(Kz[0, 0]), float(Kz[1, 1])
    cells = re.findall(r"<td>(.*?)</td>", top)
    assert cells[2:6] == [f"{k01:.4f}", f"{k00:.4f}", f"{k11:.4f}", f"{k01 / np.sqrt(k00 * k11):.4f}"], cells
    # BLUP accuracy: r(ĝ, y) over the samples with y, recomputed from blup.tsv and the phenotype file
    g = np.loadtxt(run_dir / "blup.tsv", skiprows=1, usecols=2)
    from bigmm.io.tables import read_table

    y = read_table(run_dir.parent / "pheno.tsv").numeric("trait1")
    analysed = np.ones(200, bool)
    analysed[-1] = False  # no covariate row
    have = analysed & ~np.isnan(y)
    r = np.corrcoef(g[have], y[have])[0, 1]
    assert f"<td>trait1</td><td>{have.sum()}</td><td>{r:.3f}</td>" in html
    # held-out accuracy: the leave-one-out predictions explicitly, with the run's h² and its K (dense)
    # from grm.zarr, on the analysed samples with y; the same model as the run's fit
    import zarr

    K = np.asarray(zarr.open_group(str(run_dir / "grm.zarr"), mode="r")["K"][...], dtype=float)
    cov = read_table(run_dir.parent / "covar.tsv")
    sex = np.array(cov.text("sex"), dtype=object)
    assert cov.iid == [f"I{i + 1}" for i in range(199)]  # the first 199 samples, in order
    Z = np.column_stack([np.ones(199), cov.numeric("age"), sex == sorted(set(sex))[1]])
    o = have[:199]
    Ko, yo, Zo = K[:199, :199][np.ix_(o, o)], y[:199][o], Z[o]
    V = f["h2"] * Ko + (1 - f["h2"]) * np.eye(o.sum())
    pred = np.empty(o.sum())
    for i in range(o.sum()):
        m = np.arange(o.sum()) != i
        Vi = np.linalg.inv(V[np.ix_(m, m)])
        beta = np.linalg.solve(Zo[m].T @ Vi @ Zo[m], Zo[m].T @ Vi @ yo[m])
        pred[i] = Zo[i] @ beta + V[i, m] @ Vi @ (yo[m] - Zo[m] @ beta)
    r_loo = np.corrcoef(pred, yo)[0, 1]
    assert r_loo < r  # held out: less than the in-sample figure
    # 1e-7: blup_loo.tsv keeps 8 significant digits (measured: 9e-10 apart)
    assert f["blup_accuracy_loo"] == pytest.approx(r_loo, abs=1e-7)
    assert f["blup_accuracy_in_sample"] == pytest.approx(r, abs=1e-12)  # from the same blup.tsv and y
    assert f"<td>trait1</td><td>{have.sum()}</td><td>{r:.3f}</td><td>{f['blup_accuracy_loo']:.3f}</td>" in html
    assert "Held-out</b> r(ŷ<sub>−i</sub>, y)" in html


def test_pc_plots_coloured_by_the_label_column(run_dir):
    """report.labels: the PC section names the column and lists the legend: the 11 most frequent
    labels, the other 3 grouped, the samples without a row as "no label" (counted here from the file)."""
    from collections import Counter

    html = (run_dir / "report.html").read_text()
    doc = json.loads((run_dir / "results.json").read_text())
    pops = [f"pop{i % 14}" for i in range(190)]  # the labels of samples 1..190, as the fixture wrote them
    by_count = sorted(Counter(pops).items(), key=lambda t: (-t[1], t[0]))
    shown, rest = by_count[:11], by_count[11:]
    legend = [f"{v} ({c})" for v, c in shown] + [f"other (3 labels) ({sum(c for _, c in rest)})", "no label (10)"]
    caption = "PC1 vs PC2, coloured by population: " + ", ".join(legend)
    assert f"<figcaption>{caption}</figcaption>" in html
    assert "PC3 vs PC4, coloured by population: " + ", ".join(legend) in html
    para = re.search(r'<p id="pc-labels">(.*?)</p>', html).group(1)
    assert "column <b>population</b>" in para and "pops.tsv" in para
    assert "190 of 200 samples labelled (14 distinct labels" in para and "10 without a row" in para
    assert "190 of the file's 191 rows match" in para
    assert doc["report_labels"]["samples_labelled"] == 190 and doc["report_labels"]["column"] == "population"


@pytest.fixture
def cli_logging():
    """The CLI adds a handler on the captured stderr: removed after the test (later runs log elsewhere)."""
    import logging

    handlers = list(logging.getLogger("bigmm").handlers)
    yield
    logging.getLogger("bigmm").handlers[:] = handlers


def test_bad_label_column_is_refused_by_check_and_run(run_dir, tmp_path, capsys, cli_logging):
    from bigmm.pipeline.cli import main

    cfg = yaml.safe_load((run_dir.parent / "run.yaml").read_text())
    cfg["report"]["label_column"] = "ancestry"
    cfg["output"] = str(tmp_path / "out")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    for cmd in (["check", "--no-cluster"], ["run"]):
        assert main([*cmd, str(tmp_path / "bad.yaml")]) == 2
        err = capsys.readouterr().err
        assert "report.label_column 'ancestry'" in err and "pops.tsv" in err and "site, population" in err, err
    assert not (tmp_path / "out" / "results.json").exists()
    cfg["report"] = {"labels": str(tmp_path / "none.tsv")}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["check", "--no-cluster", str(tmp_path / "bad.yaml")]) == 2
    assert f"report.labels file {tmp_path / 'none.tsv'}" in capsys.readouterr().err
    # two columns besides FID IID and no label_column: name the one to use
    cfg["report"] = {"labels": str(run_dir.parent / "pops.tsv")}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["check", "--no-cluster", str(tmp_path / "bad.yaml")]) == 2
    assert "name the one that colours the PC plots with report.label_column" in capsys.readouterr().err


def test_changed_labels_rerun_only_the_report(run_dir):
    """The labels are the report stage's input: a changed file reruns that stage alone. (Last in this
    module: it rewrites the fixture's report, with labels still.)"""
    pops = run_dir.parent / "pops.tsv"
    pops.write_text(pops.read_text().replace("pop13\n", "pop11\n").replace("pop12\n", "pop11\n"))
    result = bigmm.run(bigmm.load_config(run_dir.parent / "run.yaml"))
    assert result.stages_run == ("report",), result.stages_run
    html = (run_dir / "report.html").read_text()
    assert "12 distinct labels" in html and "other (" not in html and "pop11 (39)" in html


def test_a_report_without_figures_has_its_tables(run_dir, tmp_path):
    """``report.figures: false`` (write_report's ``figures``): the page keeps its sections and
    numbers, with no image and no report/*.png; with figures, the same inputs draw them."""
    from bigmm.pipeline.report import write_report
    from bigmm.pipeline.report_data import ReportData

    doc = json.loads((run_dir / "results.json").read_text())
    s = np.linspace(3.0, 0.5, 40)
    pages = {}
    for figures in (False, True):
        d = tmp_path / str(figures)
        pages[figures] = write_report(d, doc, s, None, None, ReportData(), figures=figures).read_text()
        assert bool(list((d / "report").glob("*.png"))) == figures
    assert "<img" not in pages[False] and "<img" in pages[True]
    for page in pages.values():
        assert '<section id="estimates">' in page and f"{doc['phenotypes'][0]['h2']:.4f}" in page


def test_report_figures_at_their_default_keep_the_fingerprints(run_dir):
    """Runs made before ``report.figures`` existed keep their fingerprints; false changes the
    report stage's (and the config's)."""
    from bigmm.pipeline.config import RunConfig

    cfg = yaml.safe_load((run_dir.parent / "run.yaml").read_text())
    fps = []
    for figures in (None, True, False):
        c = dict(cfg, report=dict(cfg["report"], **({} if figures is None else {"figures": figures})))
        rc = RunConfig.model_validate(c)
        fps.append((rc.fingerprint(), rc.section_fingerprint("report")))
    assert fps[0] == fps[1] and fps[2][0] != fps[0][0] and fps[2][1] != fps[0][1]


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (scripts/test.sh installs "
                                                  "it as root: apt-get install -y chromium)")
def test_report_renders_in_chromium(run_dir, tmp_path):
    from bigmm.pipeline.report import FIGURES

    url = (run_dir / "report.html").as_uri()
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120).stdout
    # the page's own script marks each image once loaded by the browser (naturalWidth > 0)
    imgs = re.findall(r'<img id="fig-([a-z0-9_]+)"[^>]*?data-loaded="(yes|no)"', dom)
    shown = {name for name, _ in imgs}
    assert shown >= {"scree", "pc1_pc2", "pc3_pc4", "reml_profiles", "phenotypes", "relatedness", "variant_qc"}
    assert shown <= set(FIGURES)
    assert all(ok == "yes" for _, ok in imgs), imgs
    for sid in ("estimates", "fixed-effects", "samples", "relatedness", "blup"):
        assert f'id="{sid}"' in dom
    for size in ("1366,768", "1920,1080"):
        shot = tmp_path / f"report_{size.replace(',', 'x')}.png"
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                            f"--screenshot={shot}", url], capture_output=True, timeout=120)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------
# relatedness: one read of the GRM, pairs classed on the normalised value
# ---------------------------------------------------------------------------------------

def _counting_store(path, reads):
    """A zarr LocalStore that counts the reads of each key (a chunk read is one ``get`` of its key)."""
    import zarr

    class Counting(zarr.storage.LocalStore):
        async def get(self, key, prototype=None, byte_range=None):
            reads[key] = reads.get(key, 0) + 1
            return await super().get(key, prototype, byte_range)

    return Counting(str(path), read_only=True)


def _grm_store(path, K, chunk):
    import zarr

    z = zarr.create_array(str(path), shape=K.shape, chunks=(chunk, chunk), dtype="float64")
    z[...] = K
    return z


def _dense_grm(G):
    """K = X Xᵀ / p, GCTA's standardization written out (no missing calls here)."""
    f = G.mean(axis=0) / 2
    X = (G - 2 * f) / np.sqrt(2 * f * (1 - f))
    return X @ X.T / G.shape[1]


def test_relatedness_reads_each_grm_chunk_once(tmp_path):
    """The report's relatedness reads the saved GRM once: no chunk of K is decoded twice (the
    diagonal read one element at a time decoded a whole chunk per element). 50 samples in chunks of
    16: 16 chunks (4 x 4, uneven edges); the lower triangle with the diagonal is 10 of them."""
    import zarr

    from bigmm.pipeline.report import relatedness_summary

    G = np.random.default_rng(1).binomial(2, 0.3, size=(50, 400)).astype(float)
    G = G[:, G.std(axis=0) > 0]
    K = _dense_grm(G)
    _grm_store(tmp_path / "K.zarr", K, 16)
    reads: dict = {}
    arr = zarr.open_array(store=_counting_store(tmp_path / "K.zarr", reads), mode="r")
    ids = [(f"F{i}", f"I{i}") for i in range(50)]
    rel = relatedness_summary(arr, ids)  # bands of 2048 rows: one band, every chunk once
    chunk_reads = {k: v for k, v in reads.items() if k.startswith("c/")}
    assert max(chunk_reads.values()) == 1 and len(chunk_reads) == 16, chunk_reads
    reads.clear()
    by_chunk = relatedness_summary(arr, ids, block=16)  # bands of one chunk: the same pairs and histogram
    assert by_chunk["top"] == rel["top"] and by_chunk["counts"] == rel["counts"]
    chunk_reads = {k: v for k, v in reads.items() if k.startswith("c/")}
    # each chunk on or below the diagonal once, none above (K is stored whole and symmetric)
    assert chunk_reads == {f"c/{i}/{j}": 1 for i in range(4) for j in range(i + 1)}, chunk_reads
    # and the figures are those of the dense K (float64 sums in a different order: 1e-12)
    off = K[np.triu_indices(50, 1)]
    assert rel["pairs"] == off.size and rel["max"] == pytest.approx(off.max(), abs=1e-12)
    assert rel["mean"] == pytest.approx(off.mean(), abs=1e-12)
    assert rel["diag_mean"] == pytest.approx(np.diag(K).mean(), abs=1e-12)


def test_relatedness_classes_on_the_normalised_value_with_inbred_samples(tmp_path):
    """Inbred samples (K_ii ≈ 1 + F ≈ 2) and their relatives: a pair is classed by
    K_ij / sqrt(K_ii K_jj), not by the raw K_ij (which is ≥ 0.707 for every first-degree pair of
    fully inbred samples, and was called "duplicate"). Reference: the dense K of the same genotypes,
    each pair's normalised value and KING's doubled cut-offs, written here."""
    import zarr

    from bigmm.pipeline.report import relatedness_summary

    rng = np.random.default_rng(7)
    n_out, p = 60, 3000
    f = rng.uniform(0.1, 0.5, p)
    hap = lambda: (rng.random(p) < f).astype(float)  # noqa: E731
    G = [hap() + hap() for _ in range(n_out)]  # outbred samples
    founders = [hap() for _ in range(6)]
    inbred = []
    for a in range(3):  # inbred lines: both haplotypes the same (F = 1); a "sib" line shares half its segments
        h = founders[2 * a]
        seg = np.repeat(rng.random(p // 100) < 0.5, 100)
        sib = np.where(seg, h, founders[2 * a + 1])
        inbred += [2 * h, 2 * sib]
    G += inbred + [inbred[0].copy()]  # and a duplicate of the first inbred sample
    G = np.array(G)
    keep = (G.std(axis=0) > 0)
    G = G[:, keep]
    K = _dense_grm(G)
    n = K.shape[0]
    _grm_store(tmp_path / "K.zarr", K, 16)
    ids = [(f"F{i}", f"I{i}") for i in range(n)]
    rel = relatedness_summary(zarr.open_array(str(tmp_path / "K.zarr"), mode="r"), ids)

    d = np.sqrt(np.diag(K))
    R = K / np.outer(d, d)
    i, j = np.triu_indices(n, 1)
    order = np.argsort(-R[i, j], kind="stable")[:20]
    cut = lambda v: ("duplicate or MZ twin" if v >= 0.707 else "1st degree" if v >= 0.354 else  # noqa: E731
                     "2nd degree" if v >= 0.177 else "3rd degree" if v >= 0.088 else "")
    got = [(tuple(t["a"]), tuple(t["b"])) for t in rel["top"]]
    want = [(ids[i[o]], ids[j[o]]) for o in order]
    assert set(got[:7]) == set(want[:7])  # the related pairs (ties below them may order differently)
    for t in rel["top"]:
        a, b = int(t["a"][1][1:]), int(t["b"][1][1:])
        # float64 sums of the same products in another order: 1e-10
        assert t["K"] == pytest.approx(K[a, b], abs=1e-10)
        assert t["K_aa"] == pytest.approx(K[a, a], abs=1e-10) and t["K_bb"] == pytest.approx(K[b, b], abs=1e-10)
        assert t["K_normalised"] == pytest.approx(R[a, b], abs=1e-10)
        assert t["class"] == cut(R[a, b])
    # the fixture is what it says: inbred diagonals near 2, inbred sibs raw K ≥ 0.707 but normalised ≈ 0.5
    first = n_out
    assert K[first, first] > 1.7 and K[first, first + 1] > 0.707 and 0.35 < R[first, first + 1] < 0.65
    classes = {(tuple(t["a"]), tuple(t["b"])): t["class"] for t in rel["top"]}
    assert classes[(ids[first], ids[n - 1])] == "duplicate or MZ twin"
    for a in range(3):
        assert classes[(ids[first + 2 * a], ids[first + 2 * a + 1])] == "1st degree"
    assert sum(c == "duplicate or MZ twin" for c in classes.values()) == 1


# ---------------------------------------------------------------------------------------
# user text in figures, per-phenotype counts of both REML methods, provenance, liability scale,
# and the report stage's reads of every Zarr store
# ---------------------------------------------------------------------------------------

#: phenotype names with every character matplotlib's mathtext treats specially; the second has a
#: pair of $ around text mathtext cannot parse (it crashed the report after results.tsv and hsq/)
ODD_NAMES = ["case$x_{1}^2 %", "w$\\x{%_^$"]
ODD_COLUMN, ODD_LABELS = "pop$\\x{_", ("A$\\x{$", "B_^%{")


@pytest.fixture(scope="module")
def odd_runs(tmp_path_factory):
    """One cohort analysed twice, exact (spectral REML, through the CLI) and matrix-free (through the
    API): two binary phenotypes with odd names and a prevalence, labels with odd names, 25 genotyped
    samples without a phenotype row, missing phenotype values, no missing genotype calls, and GRM
    blocks of 64 samples (several chunks)."""
    from conftest import local_cluster
    from distributed import Client

    from bigmm.pipeline.cli import main

    d = tmp_path_factory.mktemp("odd")
    c = bigmm.simulate(180, 800, h2=[0.6, 0.5], seed=11, out_plink=d / "c", phenotype_missing=0.1)
    bigmm.write_tables(c, d / "pheno.tsv", d / "covar.tsv")
    lines = (d / "pheno.tsv").read_text().splitlines()
    rows = [ln.split("\t") for ln in lines[1:156]]  # samples 156..180 have no row
    cut = [np.nanmedian([float(r[k]) for r in rows if r[k] != "NA"]) for k in (2, 3)]
    body = ["\t".join(r[:2] + ["NA" if r[k] == "NA" else ("1" if float(r[k]) > cut[k - 2] else "0")
                               for k in (2, 3)]) for r in rows]
    (d / "pheno.tsv").write_text("\t".join(["FID", "IID", *ODD_NAMES]) + "\n" + "\n".join(body) + "\n")
    (d / "labels.tsv").write_text(f"FID\tIID\t{ODD_COLUMN}\n" + "".join(
        f"F{i + 1}\tI{i + 1}\t{ODD_LABELS[i % 2]}\n" for i in range(180)))
    base = {"genotypes": {"plink": str(d / "c"), "chunks": [64, 256]},
            "phenotypes": {"file": str(d / "pheno.tsv"), "columns": ODD_NAMES, "prevalence": 0.1},
            "covariates": {"file": str(d / "covar.tsv"), "columns": ["age", "sex"], "categorical": ["sex"]},
            "grm": {"block_size": 64, "export_gcta": True, "dtype": "float64"},
            "report": {"labels": str(d / "labels.tsv"), "label_column": ODD_COLUMN},
            "cluster": {"workers": 1, "threads_per_worker": 2, "memory_limit": "2GiB"}}
    exact = {**base, "spectrum": {"method": "exact"}, "output": str(d / "exact")}
    mfree = {**base, "spectrum": {"method": "exact"}, "output": str(d / "mf"),
             "reml": {"method": "matrix_free", "deflate": 179, "tol": 1e-8, "probes": 4, "dtype": "float64"}}
    for name, cfg in (("exact", exact), ("mf", mfree)):
        (d / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(d / "exact.yaml")]) == 0
    with local_cluster(1, 2) as cluster, Client(cluster) as client:
        bigmm.run(bigmm.load_config(d / "mf.yaml"), client=client)
    return d


def test_odd_names_render_and_both_methods_count_the_same_samples(odd_runs):
    """Names with $ _ ^ \\ % { are shown as typed (not parsed as mathtext, which crashed); the
    per-phenotype sample counts, counted here from the phenotype file, are the same for the exact
    and the matrix-free run (the matrix-free table counted the 25 samples without a row as missing)."""
    import html as _html

    d = odd_runs
    from bigmm.io.tables import read_table

    t = read_table(d / "pheno.tsv")
    # every sample with a phenotype row has covariates; a sample without any phenotype value is not analysed
    analysed = int((~np.isnan(np.column_stack([t.numeric(nm) for nm in ODD_NAMES]))).any(axis=1).sum())
    assert 150 <= analysed <= 155
    for out in ("exact", "mf"):
        page = (d / out / "report.html").read_text()
        doc = json.loads((d / out / "results.json").read_text())
        assert doc["n_samples"] == analysed
        for name in ODD_NAMES:
            y = t.numeric(name)
            have = int((~np.isnan(y)).sum())
            f = next(p for p in doc["phenotypes"] if p["name"] == name)
            assert (f["n"], f["n_missing"]) == (have, analysed - have), (out, name)
            assert f"<td>{_html.escape(name)}</td><td>{have}</td><td>{analysed - have}</td>" in page, (out, name)
        for fig in ("phenotypes", "pc1_pc2") + (("reml_profiles",) if out == "exact" else ()):
            assert (d / out / "report" / f"{fig}.png").stat().st_size > 1000, (out, fig)
        assert _html.escape(f"{ODD_LABELS[0]} (90)") in page


def test_report_names_the_inputs_and_the_command(odd_runs):
    d = odd_runs
    page = (d / "exact" / "report.html").read_text()
    doc = json.loads((d / "exact" / "results.json").read_text())
    assert doc["command"] == f"bigmm run {d / 'exact.yaml'}"
    assert f"<td>command line</td><td>bigmm run {d / 'exact.yaml'}</td>" in page
    assert f"<td>configuration file</td><td>{d / 'exact.yaml'}</td>" in page
    assert f"<td>genotypes input</td><td>{d / 'c'}</td>" in page
    assert f"<td>phenotype input</td><td>{d / 'pheno.tsv'}</td>" in page
    mf = (d / "mf" / "report.html").read_text()
    assert "<td>command line</td><td>none recorded (run from Python: bigmm.run)</td>" in mf
    # no missing calls: said in words, not drawn as a histogram of zeros
    assert "No genotype call is missing" in page
    # the Haseman–Elston estimate is logged with its caveat
    log_text = (d / "mf" / "run.log").read_text()
    assert re.search(r"h2_HE = [-0-9.]+ \(Haseman-Elston moment estimate: a rough cross-check, may fall outside "
                     r"\[0, 1\]\)", log_text)


def test_liability_scale_in_the_report(odd_runs):
    """With phenotypes.prevalence the estimates section shows K, the case fraction P and h² on the
    liability scale with its SE: Lee et al. (2011) eq. 23 written out here from the fit's h²."""
    import html

    from scipy.stats import norm

    from bigmm.io.tables import read_table

    d = odd_runs
    page = (d / "exact" / "report.html").read_text()
    doc = json.loads((d / "exact" / "results.json").read_text())
    t = read_table(d / "pheno.tsv")
    for name in ODD_NAMES:
        y = t.numeric(name)
        P = float(np.mean(y[~np.isnan(y)] == 1))
        K = 0.1
        z = norm.pdf(norm.ppf(1 - K))
        f = next(p for p in doc["phenotypes"] if p["name"] == name)
        c = K ** 2 * (1 - K) ** 2 / (z ** 2 * P * (1 - P))
        assert f["h2_liability"] == pytest.approx(f["h2"] * c, rel=1e-9)
        row = (f"<td>{html.escape(name)}</td><td>0.1</td><td>{P:.4f}</td><td>{f['h2']:.4f}</td>"
               f"<td>{f['h2_se']:.4f}</td><td>{f['h2'] * c:.4f}</td><td>{f['h2_se'] * c:.4f}</td>")
        assert row in page, row


def test_report_stage_reads_each_zarr_chunk_at_most_once(odd_runs, monkeypatch):
    """The report stage (relatedness from grm.zarr, the GCTA export of K and N, the spectrum, the
    variant statistics, the REML inputs) reads every chunk of every Zarr store at most once; reading
    the GRM's diagonal element by element decoded one chunk per element (974 s of a 1,101 s run at
    n = 5,000). Counted at the store: every ``get`` of a chunk key of a local Zarr store."""
    import zarr

    from conftest import local_cluster
    from distributed import Client

    reads: dict = {}
    original = zarr.storage.LocalStore.get

    async def counting_get(self, key, prototype=None, byte_range=None):
        if "/c/" in f"/{key}" or key.startswith("c/"):
            reads[(str(self.root), key)] = reads.get((str(self.root), key), 0) + 1
        return await original(self, key, prototype, byte_range)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", counting_get)
    cfg = bigmm.load_config(odd_runs / "exact.yaml")
    with local_cluster(1, 1) as cluster, Client(cluster) as client:
        result = bigmm.run(cfg, client=client, from_stage="report")
    assert result.stages_run == ("report",)
    grm_chunks = {k: v for k, v in reads.items() if k[0].endswith("grm.zarr") and k[1].startswith("K/")}
    # blocks of 64 over 180 samples: 3 x 3 chunks, all read (the GCTA export reads the lower triangle too)
    assert len(grm_chunks) >= 6, reads
    again = {k: v for k, v in reads.items() if v > 1}
    assert not again, again


# ---------------------------------------------------------------------------------------
# the named pieces of the relatedness summary and of the page
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("r0,r1,tile", [(0, 50, 16), (32, 80, 16), (0, 7, 1024), (48, 96, 16)])
def test_lower_tiles_cover_the_band_lower_triangle_once(monkeypatch, r0, r1, tile):
    """The tiles of a band of rows r0..r1 cover each entry (i, j) with j ≤ i of those rows exactly
    once, and above the diagonal only the square diagonal tiles' own entries (the summary keeps their
    strict lower triangle); none is larger than TILE x TILE. Reference: the masks written here."""
    from bigmm.pipeline import report_data

    monkeypatch.setattr(report_data, "TILE", tile)
    seen = np.zeros((r1, r1), dtype=int)
    for s0, s1, c0, c1 in report_data.lower_tiles(r0, r1):
        assert 0 < s1 - s0 <= tile and 0 < c1 - c0 <= tile
        seen[s0:s1, c0:c1] += 1
    want = np.zeros((r1, r1), dtype=int)
    want[r0:r1] = np.tri(r1, dtype=int)[r0:r1]
    for s0 in range(r0, r1, tile):
        s1 = min(r1, s0 + tile)
        want[s0:s1, s0:s1] = 1
    assert np.array_equal(seen, want)


def test_band_rows_are_whole_chunks_in_both_directions():
    """Band edges are chunk edges of the rows and of the columns: a multiple of both chunk sizes,
    at most ``block`` unless one chunk is larger; ``block`` itself for an unchunked array."""
    from types import SimpleNamespace

    from bigmm.pipeline.report_data import band_rows

    assert band_rows(SimpleNamespace(chunks=(16, 16)), 50) == 48
    assert band_rows(SimpleNamespace(chunks=(16, 16)), 10) == 16  # at least one chunk
    assert band_rows(SimpleNamespace(chunks=(6, 4)), 30) == 24  # lcm(6, 4) = 12
    assert band_rows(np.zeros((5, 5)), 2048) == 2048


def test_relatedness_summary_in_small_tiles_equals_the_dense_reference(monkeypatch):
    """With tiles of 7 and bands of 20 (many tiles, uneven edges) the summary is that of the dense
    K computed here: the count, extremes, mean and SD of the off-diagonal entries, the histogram of
    the normalised values, and the top pairs by normalised value. Sums in another order: 1e-12."""
    from bigmm.pipeline import report_data

    monkeypatch.setattr(report_data, "TILE", 7)
    rng = np.random.default_rng(3)
    G = rng.binomial(2, 0.3, size=(45, 300)).astype(float)
    G[5] = G[4]  # a duplicate
    K = _dense_grm(G[:, G.std(axis=0) > 0])
    ids = [(f"F{i}", f"I{i}") for i in range(45)]
    rel = report_data.relatedness_summary(K, ids, top=5, block=20)
    i, j = np.tril_indices(45, -1)
    off = K[i, j]
    norm = off / np.sqrt(K[i, i] * K[j, j])
    assert rel["pairs"] == off.size and rel["min"] == pytest.approx(off.min(), abs=1e-12)
    assert rel["mean"] == pytest.approx(off.mean(), abs=1e-12)
    assert rel["sd"] == pytest.approx(off.std(), abs=1e-12)
    edges = np.linspace(-0.25, 1.25, 121)
    assert rel["counts"] == np.histogram(np.clip(norm, -0.25, 1.25 - 1e-12), edges)[0].tolist()
    order = np.argsort(-norm, kind="stable")[:5]
    assert [(t["a"], t["b"]) for t in rel["top"]] == [(list(ids[j[k]]), list(ids[i[k]])) for k in order]
    assert rel["top"][0]["class"] == "duplicate or MZ twin"


def test_exclusion_counts_add_up_to_the_genotyped_samples():
    """Each genotyped sample is counted once: no phenotype row, then a missing covariate, then no
    phenotype value, then analysed; the rows add up to the genotyped samples."""
    from bigmm.pipeline.report_html import exclusion_counts

    design = {"n_genotyped": 100, "n_in_phenotype_file": 90, "n_missing_covariates": 4, "n_analysed": 80}
    rows = exclusion_counts(design)
    assert rows == [("no row in the phenotype file", 10), ("a covariate missing (or no row in a covariate file)", 4),
                    ("no value of any phenotype", 6), ("analysed", 80)]
    assert sum(c for _, c in rows) == 100
    assert exclusion_counts({}) == []


def test_every_section_function_leaves_out_an_empty_section():
    """A run with nothing to show in a section has no such section on the page (and no link to
    it): the page of an empty results document holds only the summary, estimates and stages."""
    from bigmm.pipeline.report_html import SECTIONS, _page, blup_section, matrix_free_section, \
        phenotypes_section, profiles_section, relatedness_section, samples_section, spectrum_section, \
        stages_section, summary_section, variants_section, estimates_section, fixed_effects_section
    from bigmm.pipeline.report_data import ReportData

    data, doc = ReportData(), {}
    page = _page([summary_section(doc), estimates_section([]), fixed_effects_section([]), samples_section({}, []),
                  phenotypes_section({}), matrix_free_section([]), variants_section(doc, data, {}),
                  relatedness_section(None, {}), spectrum_section({}, data, {}), profiles_section({}),
                  blup_section(data), stages_section(doc)])
    present = [s for s in SECTIONS if f'<section id="{s}">' in page]
    assert present == ["summary", "estimates", "stages"]
    assert re.findall(r'<nav>(.*)</nav>', page) == [''.join(f'<a href="#{s}">{s}</a>' for s in present)]
