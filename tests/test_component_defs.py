"""Variance components: their definitions, LD scores and the component GRMs (issue 23).

- definitions (bigmm.components): an annotation table, one variant list per component, MAF bins,
  chromosomes, crossings, GREML-LDMS bins, each compared with an assignment written out in the
  test; refusals naming the file, line and variant, before any read of the genotypes;
- LD scores (bigmm.ld_scores) = a dense NumPy computation of all p x p correlations with the
  windows written pairwise, and = PLINK 1.9's r² and window pairs (tests/data/ld_plink, made by
  scripts/fixtures/make_ld_fixture.py);
- component GRMs (bigmm.component_grms): each K_j = X_j X_jᵀ / p_j computed densely;
  Σ_j (p_j / p) K_j = bigmm.grm over the assigned variants; the genotype reads = one GRM pass.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import bigmm
from bigmm.errors import InputError
from conftest import random_genotypes
from reference import standardize_reference

LD_DATA = Path(__file__).parent / "data" / "ld_plink"


class CountingGenotypes:
    """A NumPy genotype matrix that counts the slices read from it (as a Zarr array is read)."""

    def __init__(self, G, variant_chunk):
        self.G = G
        self.shape = G.shape
        self.dtype = G.dtype
        self.chunks = (G.shape[0], variant_chunk)
        self.reads = []
        self._lock = threading.Lock()

    def __getitem__(self, sel):
        with self._lock:
            self.reads.append(sel)
        return self.G[sel]


def _ids(p):
    return [f"rs{j + 1}" for j in range(p)]


# --- definitions -------------------------------------------------------------------------------

def test_annotation_file_gives_each_listed_variant_its_component(tmp_path):
    f = tmp_path / "ann.txt"
    f.write_text("# variant  component\nrs2 coding\n\nrs5\tintron\nrs1 coding\n  # indented comment\nrs4 intron\n")
    c = bigmm.read_components(f, _ids(6))
    assert c.names == ("coding", "intron")
    want = {"rs1": 0, "rs2": 0, "rs4": 1, "rs5": 1}
    assert c.assignment.tolist() == [want.get(v, -1) for v in _ids(6)]
    assert c.counts().tolist() == [2, 2]
    assert "coding" in c.describe() and "2 variants in no component" in c.describe()


def test_one_variant_list_per_component(tmp_path):
    (tmp_path / "low.snplist").write_text("rs1\nrs3 extra columns ignored\n")
    (tmp_path / "high.snplist").write_text("#IDs\nrs2\nrs6\n")
    c = bigmm.read_variant_lists([tmp_path / "low.snplist", tmp_path / "high.snplist"], _ids(6))
    assert c.names == ("low", "high")
    assert c.assignment.tolist() == [0, 1, 0, -1, -1, 1]


@pytest.mark.parametrize("header", ["SNP\tcomponent", "ID annotation", "rsid group"])
def test_a_header_line_of_usual_column_names_is_skipped(tmp_path, header):
    # PLINK/GCTA users' tables often start with a header; BOLT's --modelSnps files do not
    f = tmp_path / "ann.txt"
    f.write_text(f"{header}\nrs2 coding\nrs3 intron\n")
    c = bigmm.read_components(f, _ids(4))
    assert c.names == ("coding", "intron")
    assert c.assignment.tolist() == [-1, 0, 1, -1]


def test_a_header_word_that_is_a_variant_id_is_a_variant(tmp_path):
    # a store whose variant is called "SNP" keeps it: only a first field that is not a variant
    # of the store can be a header
    f = tmp_path / "ann.txt"
    f.write_text("SNP a\nrs1 a\n")
    c = bigmm.read_components(f, ["SNP", "rs1"])
    assert c.assignment.tolist() == [0, 0]


@pytest.mark.parametrize("text, line, words", [
    ("Variant_Name a\nrs1 a\n", 1, ["Variant_Name", "not in the genotype store"]),
    ("rs1 a\nrs2 b\nrs1 b\n", 3, ["rs1", "'b'", "'a'", "line 1", "one component"]),
    ("rs1 a\nrs2 a\nrs1 a\n", 3, ["rs1", "duplicated line", "line 1"]),
    ("rs1 a\nrs99 a\nrs2 a\n", 2, ["rs99", "not in the genotype store"]),
    ("rs1 a\nrs2 a extra\n", 2, ["expected 2 fields", "found 3"]),
    ("rs1\n", 1, ["expected 2 fields", "found 1"]),
])
def test_bad_annotation_lines_are_refused_with_file_line_and_variant(tmp_path, text, line, words):
    f = tmp_path / "ann.txt"
    f.write_text(text)
    with pytest.raises(InputError) as e:
        bigmm.read_components(f, _ids(5))
    msg = str(e.value)
    assert f"{f} line {line}:" in msg, msg
    for w in words:
        assert w in msg, msg


def test_an_empty_annotation_file_is_refused(tmp_path):
    f = tmp_path / "ann.txt"
    f.write_text("# nothing but a comment\n\n")
    with pytest.raises(InputError, match="names no variant"):
        bigmm.read_components(f, _ids(5))


def test_variant_lists_refuse_a_variant_in_two_lists_an_unknown_id_and_an_empty_list(tmp_path):
    a, b, e = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "e.txt"
    a.write_text("rs1\nrs2\n")
    b.write_text("rs3\nrs2\n")
    e.write_text("# no variant\n")
    with pytest.raises(InputError) as err:
        bigmm.read_variant_lists([a, b], _ids(5))
    assert f"{b} line 2: variant rs2 is in component 'b'" in str(err.value)
    assert f"{a} line 2" in str(err.value)
    b.write_text("rs3\nrs3\n")
    with pytest.raises(InputError, match=rf"{b} line 2: variant rs3 .*duplicated line"):
        bigmm.read_variant_lists([a, b], _ids(5))
    b.write_text("rs3\nrs0\n")
    with pytest.raises(InputError, match=rf"{b} line 2: variant rs0 is not in the genotype store"):
        bigmm.read_variant_lists([a, b], _ids(5))
    with pytest.raises(InputError, match=rf"variant list {e} \(component 'e'\) names no variant"):
        bigmm.read_variant_lists([a, e], _ids(5))


def test_check_refuses_empty_tiny_and_unassigned_splits_by_name():
    c = bigmm.Components(("big", "small", "gone"), np.array([0] * 8 + [1] * 2 + [2] * 2 + [-1] * 3))
    keep = np.ones(15, bool)
    keep[10:12] = False  # both variants of "gone" dropped by the filters
    with pytest.raises(InputError, match=r"component 'small' has 2 kept variant\(s\), fewer than the minimum 3"):
        c.check(keep, min_variants=3)
    with pytest.raises(InputError, match="component 'gone' is empty: its 2 variants are all dropped"):
        c.check(keep, min_variants=2)
    with pytest.raises(InputError, match="no variant is assigned to any component"):
        bigmm.Components(("a",), np.full(4, -1)).check()
    ok = c.check(np.r_[keep[:10], True, True, keep[12:]], min_variants=2)
    assert ok.counts().tolist() == [8, 2, 2]
    assert bigmm.components.MIN_COMPONENT_VARIANTS == 100  # the documented default


def test_a_refused_split_reads_no_genotype():
    """The refusal comes before any pass: the genotypes are never read."""
    G = CountingGenotypes(random_genotypes(np.random.default_rng(3), 20, 60), 16)
    std = bigmm.standardization(bigmm.variant_stats(G.G))
    split = np.r_[np.zeros(58, int), 1, 1]
    with pytest.raises(InputError, match="component 'C2' has 2 kept"):
        bigmm.component_grms(G, std, split, min_variants=5)
    assert G.reads == []


def test_maf_bins_match_frequencies_counted_in_the_test():
    rng = np.random.default_rng(7)
    G = random_genotypes(rng, 300, 400, missing=0.02, maf=(0.0, 0.5))
    std = bigmm.standardization(bigmm.variant_stats(G))
    edges = [0.01, 0.05, 0.2, 0.5]
    got = bigmm.maf_bins(std, edges)
    same = bigmm.maf_bins(bigmm.variant_stats(G), edges, keep=std.keep)
    assert np.array_equal(got.assignment, same.assignment)
    want = []
    for j in range(G.shape[1]):
        g = G[:, j][G[:, j] >= 0]
        f = g.sum() / (2.0 * g.size)
        maf = min(f, 1 - f)
        k = next((i for i in range(3) if edges[i] <= maf < edges[i + 1] or (i == 2 and maf == 0.5)), -1)
        want.append(k if std.keep[j] else -1)
    assert got.assignment.tolist() == want
    assert got.names == ("maf[0.01,0.05)", "maf[0.05,0.2)", "maf[0.2,0.5]")
    with pytest.raises(InputError, match="increasing"):
        bigmm.maf_bins(std, [0.2, 0.1])


def test_chromosomes_crossings_and_ld_quartiles_within_maf_bins():
    chrom = np.array(["1"] * 6 + ["2"] * 6)
    c = bigmm.chromosome_components(chrom)
    assert c.names == ("chr1", "chr2") and c.assignment.tolist() == [0] * 6 + [1] * 6
    g = bigmm.chromosome_components(chrom, {"odd": ["1"]})
    assert g.assignment.tolist() == [0] * 6 + [-1] * 6
    half = bigmm.Components(("lo", "hi"), np.array([0, 1] * 6))
    x = bigmm.cross(c, half)
    assert x.names == ("chr1:lo", "chr1:hi", "chr2:lo", "chr2:hi")
    assert x.assignment.tolist() == [2 * (j // 6) + (j % 2) for j in range(12)]
    # LD quartiles within each bin, or over all binned variants (pooled, GCTA's R script):
    # edges by R's type 7, ℓ ≤ Q25 | ≤ Q50 | ≤ Q75 | above
    rng = np.random.default_rng(2)
    ld = rng.gamma(2.0, 10.0, size=200)
    bins = bigmm.Components(("a", "b"), rng.integers(-1, 2, size=200))
    for pooled in (False, True):
        q = bigmm.ld_quantile_bins(ld, bins, pooled=pooled)
        assert q.names == tuple(f"{n}:ld{k}" for n in "ab" for k in range(1, 5))
        for j in range(2):
            members = np.flatnonzero(bins.assignment == j)
            s = np.sort(ld[bins.assignment >= 0] if pooled else ld[members])
            quart = []
            for prob in (0.25, 0.5, 0.75):  # s[⌊h⌋] + (h − ⌊h⌋)(s[⌊h⌋+1] − s[⌊h⌋]), h = (n−1)·prob
                h = (s.size - 1) * prob
                lo = int(np.floor(h))
                quart.append(s[lo] + (h - lo) * (s[min(s.size - 1, lo + 1)] - s[lo]))
            for v in members:
                assert q.assignment[v] == 4 * j + sum(ld[v] > e for e in quart)
    assert np.all(q.assignment[bins.assignment < 0] == -1)
    # GREML-LDMS is the composition of the two, both checked above
    stats = bigmm.variant_stats(random_genotypes(rng, 50, 200))
    ldms = bigmm.greml_ldms(stats, ld, [0.0, 0.1, 0.5])
    assert ldms.m == 8 and ldms.names[4] == "maf[0.1,0.5]:ld1"
    by_maf = bigmm.maf_bins(stats, [0.0, 0.1, 0.5])
    assert np.array_equal(ldms.assignment, bigmm.ld_quantile_bins(ld, by_maf).assignment)


# --- LD scores ---------------------------------------------------------------------------------

def _dense_ld_scores(G, keep, pos, chrom, window_kb, window_variants):
    """Σ over the window of r² − (1 − r²)/(n − 2), from the full p x p correlation matrix."""
    X, kept = standardize_reference(G, "center", keep)
    n = G.shape[0]
    R2 = np.corrcoef(X, rowvar=False) ** 2
    out = np.full(G.shape[1], np.nan)
    for a, v in enumerate(kept):
        total = 0.0
        for b, u in enumerate(kept):
            if chrom[u] != chrom[v]:
                continue
            if window_kb is not None and abs(int(pos[u]) - int(pos[v])) > 1000 * window_kb:
                continue
            if window_variants is not None and abs(a - b) > window_variants:
                continue
            total += R2[a, b] - (1 - R2[a, b]) / (n - 2)
        out[v] = total
    return out


@pytest.mark.parametrize("window_kb, window_variants, block, rows", [(30, None, 16, 256), (None, 7, 10, 256),
                                                                     (25, 5, 64, 7), (None, 12, None, 9)])
def test_ld_scores_equal_a_dense_computation(window_kb, window_variants, block, rows, monkeypatch):
    """Blocks of 10 to 150 variants, correlations formed 7, 9 or 256 rows at a time."""
    monkeypatch.setattr(bigmm.ldscore, "LD_ROWS", rows)
    rng = np.random.default_rng(11)
    n, p = 120, 150
    G = random_genotypes(rng, n, p, missing=0.03, maf=(0.02, 0.5))
    G[:, 1:40:3] = G[:, 0:39:3]  # identical neighbours: r² = 1, strong LD
    G[:, 17] = 0  # monomorphic: dropped, NaN
    chrom = np.array(["1"] * 90 + ["2"] * 60)
    pos = np.concatenate([np.cumsum(rng.integers(1, 8000, 90)), np.cumsum(rng.integers(1, 8000, 60))])
    std = bigmm.standardization(bigmm.variant_stats(G), "gcta")
    got = bigmm.ld_scores(G, std, window_kb, window_variants, pos, chrom, block_variants=block)
    want = _dense_ld_scores(G, std.keep, pos, chrom, window_kb, window_variants)
    assert np.isnan(got[17]) and np.array_equal(np.isnan(got), np.isnan(want))
    # float64 sums of ≤ 150 terms of size ≤ 1, each from a correlation computed two ways: ~1e-13
    np.testing.assert_allclose(got[std.keep], want[std.keep], rtol=0, atol=1e-10)


def test_ld_scores_of_a_store_read_from_it_in_one_pass_with_overlap(tmp_path):
    """From a cohort store (Zarr chunks of 32 variants), blocks of 32: each chunk is read by its
    own block and by the neighbours its windows reach, no more."""
    rng = np.random.default_rng(5)
    G = random_genotypes(rng, 40, 128, missing=0.0)
    store = bigmm.create_store(tmp_path / "c.zarr", G, chunks=(40, 32))
    std = bigmm.standardization(bigmm.variant_stats(store.genotypes))
    counting = CountingGenotypes(np.asarray(store.genotypes[...]), 32)
    got = bigmm.ld_scores(counting, std, window_variants=3, block_variants=32)
    assert len(counting.reads) == 128 // 32  # one read per task, each its block plus 3 either side
    assert np.allclose(got, bigmm.ld_scores(store.genotypes, std, window_variants=3))


def test_ld_scores_refuse_unsorted_positions_and_a_missing_window():
    G = random_genotypes(np.random.default_rng(1), 30, 5, missing=0.0)
    std = bigmm.standardization(bigmm.variant_stats(G))
    with pytest.raises(InputError, match="sorted by position"):
        bigmm.ld_scores(G, std, 10, positions=[1, 5, 3, 7, 9], chromosomes=["1"] * 5)
    with pytest.raises(InputError, match="not contiguous"):
        bigmm.ld_scores(G, std, 10, positions=[1, 2, 3, 4, 5], chromosomes=["1", "2", "1", "2", "2"])
    with pytest.raises(InputError, match="give an LD window"):
        bigmm.ld_scores(G, std)


def _plink_pairs(name, ix):
    rows = [ln.split() for ln in (LD_DATA / name).read_text().splitlines()[1:]]
    return {(ix[r[2]], ix[r[5]]): float(r[6]) for r in rows}


def test_ld_scores_equal_plink_r2_in_plinks_windows(tmp_path):
    """PLINK 1.9's r² matrix and its window tables (kb, variants, both): bigmm's windows hold the
    pairs PLINK lists, and its LD scores are PLINK's r², bias-corrected, summed over them."""
    import json

    doc = json.loads((LD_DATA / "ld_plink.json").read_text())
    store = bigmm.ingest_plink(LD_DATA / "cohort", tmp_path / "ld.zarr", chunks=(80, 64))
    table = store.variant_table()
    ix = {v: j for j, v in enumerate(table["id"].tolist())}
    p = len(ix)
    n = doc["n_samples"]
    R2 = np.fromfile(LD_DATA / "cohort.ld.bin", dtype=np.float64).reshape(p, p)
    std = bigmm.standardization(bigmm.variant_stats(store.genotypes))
    assert std.n_kept == p
    kb, nv = doc["window_kb"], doc["window_variants"]
    for name, window in (("kb.ld", (kb, None)), ("variants.ld", (None, nv)), ("both.ld", (kb, nv))):
        pairs = _plink_pairs(name, ix)
        got, counts = bigmm.ld_scores(store.genotypes, std, *window, table["pos"], table["chrom"],
                                      block_variants=40, return_counts=True)
        # the windows: each variant's window holds itself and the pairs PLINK lists with it
        partners = np.ones(p, dtype=int)
        for a, b in pairs:
            partners[a] += 1
            partners[b] += 1
        assert counts.tolist() == partners.tolist(), name
        want = np.ones(p)  # the variant itself: r² = 1, correction 0
        for (a, b), r2_table in pairs.items():
            assert abs(r2_table - R2[a, b]) < 1e-6  # the table prints 6 digits
            adj = R2[a, b] - (1 - R2[a, b]) / (n - 2)
            want[a] += adj
            want[b] += adj
        # PLINK's float64 r² against bigmm's: round-off of a correlation over 80 samples, ~1e-15
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9, err_msg=name)


# --- component GRMs ----------------------------------------------------------------------------

def _cohort(seed=21, n=90, p=300):
    rng = np.random.default_rng(seed)
    G = random_genotypes(rng, n, p, missing=0.02)
    G[:, 5] = 2  # monomorphic: dropped by the standardization, in no K_j
    comp = rng.integers(-1, 4, size=p)  # 4 components interleaved, some variants in none
    return G, comp


@pytest.mark.parametrize("standardize, layout", [("gcta", "interleaved"), ("center", "interleaved"),
                                                  ("gcta", "contiguous"), ("gcta", "alternating")])
def test_each_component_grm_equals_its_dense_product(standardize, layout):
    """Interleaved components (each chunk's columns reordered) and contiguous ones (runs of one
    component, as chromosomes: read as slices), over variant chunks of 64; "alternating": every
    variant in a component, 0 1 2 3 0 1 2 3 ... (a chunk's reordered columns span a contiguous
    range without being in order: they must still be reordered)."""
    G, comp = _cohort()
    if layout == "contiguous":
        comp = np.sort(comp)
    elif layout == "alternating":
        comp = np.arange(comp.size) % 4
    std = bigmm.standardization(bigmm.variant_stats(G), standardize)
    res = bigmm.component_grms(CountingGenotypes(G, 64), std, comp, block_size=32, min_variants=10)
    assert res.names == ("C1", "C2", "C3", "C4") and res.K.shape == (4, 90, 90)
    for j in range(4):
        X, kept = standardize_reference(G, standardize, keep=comp == j)
        assert res.n_variants[j] == kept.size == int(((comp == j) & std.keep).sum())
        # float64 products of ≤ 300 terms of size ~1, summed in another order: round-off ~1e-14
        np.testing.assert_allclose(res.K[j], X @ X.T / kept.size, rtol=0, atol=1e-12)


@pytest.mark.parametrize("span", [30, 10**6])
def test_float32_component_grms_equal_their_dense_products(monkeypatch, span):
    """Products in float32, each component's summed by the BLAS in place over bigmm.grm.F32_SPAN of
    its variants before entering its float64 block: a span of 30 (a component has ~15 kept variants
    per chunk of 64: added every 2-3 chunks, spans straddling chunks) and 10**6 (once, at the end)."""
    import sys

    monkeypatch.setattr(sys.modules["bigmm.grm"], "F32_SPAN", span)  # (bigmm.grm is the function)
    G, comp = _cohort(seed=5)
    std = bigmm.standardization(bigmm.variant_stats(G))
    res = bigmm.component_grms(CountingGenotypes(G, 64), std, comp, block_size=32, min_variants=10,
                               dtype=np.float32)
    for j in range(4):
        X, kept = standardize_reference(G, "gcta", keep=comp == j)
        want = X @ X.T / kept.size
        # each product and partial sum rounded to 2^-24 relative, |x_ij x_kj| <= ~20 for these MAFs:
        # |error| <= 6e-8 * 20 per entry at worst (1.2e-6); a chunk of a component left out or added
        # twice moves entries by ~1/5
        np.testing.assert_allclose(res.K[j], want, rtol=0, atol=2e-6)
        assert np.abs(res.K[j] - want).max() > 0  # really float32
        np.testing.assert_array_equal(res.K[j], res.K[j].T)  # each block and its mirror placed whole


def test_weighted_component_grms_sum_to_the_grm_of_the_assigned_variants():
    G, comp = _cohort(seed=4)
    stats = bigmm.variant_stats(G)
    std = bigmm.standardization(stats)
    res = bigmm.component_grms(G, std, comp, block_size=40, min_variants=10)
    assigned = bigmm.standardization(stats, drop={"no_component": comp < 0})
    K = bigmm.grm(G, assigned, block_size=40)
    assert res.n_variants.sum() == assigned.n_kept
    # Σ (p_j/p) K_j and K are the same sums of float64 products in other orders: round-off ~1e-14
    np.testing.assert_allclose(res.weighted_sum(), K, rtol=0, atol=1e-12)


def test_all_component_grms_read_the_genotypes_as_one_grm_pass():
    G, comp = _cohort(seed=8, n=100, p=256)
    std = bigmm.standardization(bigmm.variant_stats(G))
    one, several = CountingGenotypes(G, 64), CountingGenotypes(G, 64)
    bigmm.grm(one, std, block_size=40)
    bigmm.component_grms(several, std, comp, block_size=40, min_variants=10)
    # 3 sample blocks → 6 block pairs; the store has one sample chunk (100 rows), so every pair's two
    # ranges share it and are read as one span: 6 · 4 variant chunks = 24 slabs, the same for m = 4
    # components as for one GRM
    assert len(several.reads) == len(one.reads) == 24
    assert sorted(map(repr, several.reads)) == sorted(map(repr, one.reads))


def test_components_from_a_file_name_the_component_grms(tmp_path):
    G, comp = _cohort(seed=9, n=40, p=120)
    ids = _ids(120)
    f = tmp_path / "ann.txt"
    f.write_text("".join(f"{ids[v]} {'even' if comp[v] % 2 == 0 else 'odd'}\n"
                         for v in range(120) if comp[v] >= 0))
    c = bigmm.read_components(f, ids)
    std = bigmm.standardization(bigmm.variant_stats(G))
    res = bigmm.component_grms(G, std, c, min_variants=10)
    assert set(res.names) == {"even", "odd"}
    j = res.names.index("odd")
    X, kept = standardize_reference(G, "gcta", keep=(comp >= 0) & (comp % 2 == 1))
    np.testing.assert_allclose(res.K[j], X @ X.T / kept.size, rtol=0, atol=1e-12)


def test_ld_scores_fit_the_task_memory_or_are_refused_before_reading():
    """A memory limit shrinks the blocks (same scores); one too small for 64 variants and their
    windows is refused with the numbers, before any read."""
    from bigmm.ldscore import ld_task_bytes

    G = CountingGenotypes(random_genotypes(np.random.default_rng(6), 50, 300, missing=0.0), 300)
    std = bigmm.standardization(bigmm.variant_stats(G.G))
    whole = bigmm.ld_scores(G, std, window_variants=10)
    assert len(G.reads) == 1  # one block of all 300 variants
    G.reads.clear()
    small = bigmm.ld_scores(G, std, window_variants=10, memory=ld_task_bytes(50, 80, 10))
    assert len(G.reads) == 4  # blocks of 300 → 150 → 75 variants
    np.testing.assert_allclose(small, whole, rtol=0, atol=1e-12)  # the same sums in other blocks
    G.reads.clear()
    with pytest.raises(InputError, match="too small for LD scores of n = 50 samples"):
        bigmm.ld_scores(G, std, window_variants=10, memory=1000)
    assert G.reads == []
