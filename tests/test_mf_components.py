"""The matrix-free path for several variance components: the operator applying every K_j in one
pass (bigmm.ComponentsOperator) and the AI-REML fit by conjugate gradients
(bigmm.fit_components_matrix_free), checked against dense NumPy references written here and
against the exact dense fit (bigmm.fit_components)."""

import numpy as np
import pytest
import zarr
from conftest import local_cluster, random_genotypes

import bigmm
from bigmm.errors import InputError


def _standardized(G, center, scale):
    """X written independently of bigmm: (g − centre) · scale, missing calls 0, dropped variants 0."""
    X = (G.astype(np.float64) - center) * scale
    X[G < 0] = 0.0
    return X


def _cohort(rng, n=60, p=130):
    G = random_genotypes(rng, n, p, missing=0.05)
    G[:, 7] = 1  # monomorphic: dropped by the standardization
    G[:, 40] = -1  # all missing: dropped
    std = bigmm.standardization(bigmm.variant_stats(G))
    assert not std.keep[7] and not std.keep[40]
    # three components, variants interleaved across chunks; 10 variants in none
    comp = np.arange(p) % 3
    comp[rng.choice(p, 10, replace=False)] = -1
    return G, std, comp


def _dense_ks(G, std, comp, rows=None):
    X = _standardized(G, std.center, std.scale)
    X[:, ~std.keep] = 0.0
    if rows is not None:
        X = X[rows]
    Ks, pj = [], []
    for j in range(comp.max() + 1):
        S = (comp == j) & std.keep
        pj.append(int(S.sum()))
        Ks.append(X[:, S] @ X[:, S].T / S.sum())
    return np.stack(Ks), np.array(pj)


def _check_operator(G, std, comp, rng, rows=None, **kw):
    Kref, pj = _dense_ks(G, std, comp, rows)
    op = bigmm.ComponentsOperator(G, std, comp, rows=rows, min_variants=1, **kw)
    assert op.m == 3 and op.n_variants.tolist() == pj.tolist()
    M = rng.normal(size=(op.n, 5))
    KM, diag = op.apply(M, want_diag=True)
    # float64 products of O(1) entries summed over ~100 variants: round-off ~1e-13
    np.testing.assert_allclose(KM, Kref @ M, rtol=0, atol=1e-11)
    np.testing.assert_allclose(diag, np.stack([np.diag(K) for K in Kref]), rtol=0, atol=1e-11)
    return op, Kref, pj, M, KM


def test_components_operator_equals_dense_grms_local_threads(rng):
    G, std, comp = _cohort(rng)
    _check_operator(G, std, comp, rng)
    rows = np.sort(rng.choice(G.shape[0], 41, replace=False))
    op, Kref, pj, M, KM = _check_operator(G, std, comp, rng, rows=rows)
    # restrict composes with rows
    sub = np.arange(0, 41, 2)
    KM2, _ = op.restrict(sub).apply(M[sub])
    np.testing.assert_allclose(KM2, Kref[:, sub][:, :, sub] @ M[sub], rtol=0, atol=1e-11)
    assert op.passes == 1


def test_components_operator_weighted_sum_is_the_grm_of_assigned_variants(rng):
    """Σ_j p_j K_j / Σ p_j = K over the assigned variants, the GrmOperator of those variants."""
    import dataclasses

    G, std, comp = _cohort(rng)
    op = bigmm.ComponentsOperator(G, std, comp, min_variants=1)
    M = rng.normal(size=(G.shape[0], 4))
    KM, _ = op.apply(M)
    assigned = std.keep & (comp >= 0)
    std_a = dataclasses.replace(std, keep=assigned, scale=np.where(assigned, std.scale, 0.0))
    grm = bigmm.GrmOperator(G, std_a)
    assert grm.p == op.p
    ref, _ = grm.apply(M)
    w = op.n_variants / op.n_variants.sum()
    np.testing.assert_allclose(np.tensordot(w, KM, axes=1), ref, rtol=0, atol=1e-11)


def test_components_operator_on_a_zarr_store_and_a_local_cluster(rng, tmp_path):
    from distributed import Client

    G, std, comp = _cohort(rng)
    Gz = zarr.create_array(str(tmp_path / "g.zarr"), shape=G.shape, chunks=(G.shape[0], 32), dtype="i1")
    Gz[:] = G
    rows = np.sort(rng.choice(G.shape[0], 50, replace=False))
    with local_cluster() as cluster, Client(cluster):
        op = bigmm.ComponentsOperator(Gz, std, comp, rows=rows, min_variants=1, n_tasks=3)
        assert op.chunk_width == 32 and len(op.plan(5).groups) == 3
        M = rng.normal(size=(50, 5))
        KM, diag = op.apply(M, want_diag=True)
    Kref, _ = _dense_ks(G, std, comp, rows)
    np.testing.assert_allclose(KM, Kref @ M, rtol=0, atol=1e-11)
    np.testing.assert_allclose(diag, np.stack([np.diag(K) for K in Kref]), rtol=0, atol=1e-11)


def test_components_operator_memory_counts_the_m_output_blocks(rng):
    from bigmm.passes import task_bytes

    G, std, comp = _cohort(rng)
    op = bigmm.ComponentsOperator(G, std, comp, min_variants=1)
    plan = op.plan(10)
    assert plan.task_bytes == task_bytes(op.n, 10, plan.chunk_width, plan.sub_width, 8, out_blocks=3)
    # a limit that fits one GRM's task but not three output blocks is refused before the pass
    one = task_bytes(op.n, 10, plan.chunk_width, 1, 8)
    bigmm.GrmOperator(G, std, memory=one).plan(10)  # fits one output block
    with pytest.raises(InputError, match="memory limit"):
        bigmm.ComponentsOperator(G, std, comp, min_variants=1, memory=one).plan(10)
