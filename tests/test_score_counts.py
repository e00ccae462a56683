"""`bigmm score` reported every matched variant as used, also those the training dropped (their
effect is 0 and the scores never see them): 30,000 used where 29,982 were kept."""

import numpy as np
from conftest import random_genotypes

import bigmm
from bigmm.blup import match_alleles, score


def test_used_counts_only_variants_kept_in_training(rng, tmp_path):
    G = random_genotypes(rng, 40, 120, missing=0.02)
    G[:, [3, 50]] = 0  # monomorphic in training: dropped
    G[:, 77] = 1  # all heterozygous: dropped
    std = bigmm.standardization(bigmm.variant_stats(G))
    assert std.n_kept == 117
    store = bigmm.create_store(tmp_path / "t.zarr", G)
    table = store.variant_table()
    m = match_alleles(table, table, keep=std.keep)
    assert m.counts == {"used": 117, "flipped": 0, "dropped_in_training": 3, "missing_in_target": 0,
                        "strand_ambiguous": 0, "allele_mismatch": 0}
    assert sorted(set(range(120)) - set(m.effect_index.tolist())) == [3, 50, 77]
    # the scores are the same with or without the dropped variants (their columns are 0)
    beta = rng.normal(size=(120, 1))
    X = bigmm.standardized(G, std).compute()
    np.testing.assert_allclose(score(store.genotypes, m, std, beta), X @ beta, rtol=0, atol=1e-10)
    # without keep (the library default) the counts are of matched variants, as before
    assert match_alleles(table, table).counts["used"] == 120
