"""The memory policy's named pieces (bigmm.pipeline.memory): the randomized spectrum's widest
pass, the kinds of task a run checks against the workers' memory, the refusals of settings and
the plan figures. Expected values are the documented formulas, written out here with integers
(exact: no tolerance needed)."""

import pytest

from bigmm.errors import InputError
from bigmm.pipeline.config import parse_config
from bigmm.pipeline.memory import (_check_settings, _plan_figures, _task_kinds, spectrum_pass, spectrum_pass_plan,
                                   task_memory)


def _cfg(**sections):
    """A run config on a cohort store that is never read (the memory rules read no file)."""
    return parse_config({"genotypes": {"zarr": "x.zarr"}, "phenotypes": {"file": "p.tsv"}, "output": "o",
                         **sections})


@pytest.mark.parametrize("spectrum, n, expected", [
    # l = rank + oversample (default 50), capped at n; q = 3 (krylov) or 4 (subspace) by default;
    # the widest pass (the first): krylov carries the l start vectors, a ones vector and the probes,
    # subspace the larger of l + 1 and l + probes
    ({"rank": 200}, 100_000, (250, 3, 250 + 1 + 30)),
    ({"rank": 200, "oversample": 10, "probes": 5, "power_iters": 7}, 100_000, (210, 7, 210 + 1 + 5)),
    ({"rank": 50}, 60, (60, 3, 60 + 1 + 30)),
    ({"rank": 20, "algorithm": "subspace"}, 1000, (70, 4, 70 + 30)),
    ({"rank": 20, "algorithm": "subspace", "probes": 0}, 1000, (70, 4, 70 + 1)),
])
def test_the_randomized_spectrum_pass_follows_the_documented_widths(spectrum, n, expected):
    assert spectrum_pass(_cfg(spectrum={"method": "randomized", **spectrum}), n) == expected


def test_the_spectrum_pass_plan_carries_the_widest_pass_within_the_task_memory():
    """The plan's columns are the widest pass's; its task fits the memory per task of the cluster
    (4 GiB, one thread: 60% less the worker's own memory)."""
    cfg = _cfg(spectrum={"method": "randomized", "rank": 200}, cluster={"memory_limit": "4GiB"})
    mem = task_memory(cfg.cluster)
    plan = spectrum_pass_plan(cfg, 100_000, 2048, mem)
    assert plan.n_cols == 281 and plan.chunk_width == 2048
    assert 0 < plan.task_bytes <= mem


def test_the_task_kinds_name_each_pass_and_the_grm_blocks_least_bytes():
    """A randomized spectrum with a GCTA export (so a GRM stage): two kinds of task. A GRM block
    task with per-pair counts (float32 products, grm.dtype's default) holds its float64 block, the
    float32 block its products are summed in, its int32 count block and count product (20 b²
    bytes), two float32 standardized slabs of b x c (8 b c bytes) and the int8 codes they come
    from (2 b c bytes); with float64 products, 16 b² and 18 b c."""
    cfg = _cfg(spectrum={"method": "randomized", "rank": 20}, grm={"block_size": 300, "export_gcta": True})
    tasks, block = _task_kinds(cfg, 1000, "randomized", 500, True, 2**30)
    assert block == 300
    assert [t[0].split(" (")[0] for t in tasks] == ["a randomized spectrum pass of 101 vectors",
                                                      "a GRM block task"]
    assert tasks[1][1] == 20 * 300 * 300 + 10 * 300 * 500
    cfg64 = _cfg(spectrum={"method": "randomized", "rank": 20},
                 grm={"block_size": 300, "export_gcta": True, "dtype": "float64"})
    assert _task_kinds(cfg64, 1000, "randomized", 500, True, 2**30)[0][1][1] == 16 * 300 * 300 + 18 * 300 * 500
    # no known task memory (a running scheduler's): no GRM block kind to check
    assert _task_kinds(cfg, 1000, "randomized", 500, True, None)[1] is None


def test_deflation_beyond_n_is_refused_before_the_rank():
    """Both settings are wrong: the matrix-free model's deflation check (its declaration's
    memory need) comes first, as before the split."""
    from bigmm.pipeline.memory import check_memory
    from bigmm.pipeline.plan import model_memory

    cfg = _cfg(spectrum={"method": "randomized", "rank": 100}, reml={"method": "matrix_free", "deflate": 100})
    with pytest.raises(InputError, match=r"reml.deflate = 100 must be below .* n = 100"):
        check_memory(cfg, 100, "randomized", 500, grm_needed=False, spectrum_needed=True,
                     model=model_memory("matrix_free"))
    with pytest.raises(InputError, match=r"spectrum.rank must be between 1 and n − 1 = 99"):
        _check_settings(_cfg(spectrum={"method": "randomized", "rank": 100}), 100, "randomized", True)


def test_the_exact_spectrum_plan_holds_k_and_its_eigenvectors_on_the_driver():
    """eigh of the n x n float64 K with its eigenvectors: 2 · 8 n² bytes."""
    out = _plan_figures(_cfg(), 1000, "exact", 500, True, 2**30, 300, None)
    assert out == {"grm_block_task_bytes": 20 * 300 * 300 + 10 * 300 * 500, "driver_bytes": 16 * 1000 * 1000,
                   "task_memory_bytes": 2**30}


@pytest.mark.parametrize("itemsize", [4, 8])
@pytest.mark.parametrize("mem", [10**6, 2**30, 5 * 2**30])
def test_largest_grm_block_is_the_largest_that_fits(mem, itemsize):
    from bigmm.grm import block_bytes
    from bigmm.pipeline.memory import _largest_block

    b = _largest_block(mem, 2048, itemsize)
    assert b >= 1
    assert block_bytes(b, 2048, itemsize, counts=True) <= mem < block_bytes(b + 1, 2048, itemsize, counts=True)
