"""The engine runs whatever the registry holds: a toy registry of three declared stages, run by the
unchanged engine (:mod:`bigmm.pipeline.engine`) on a temporary folder, without a cluster.

What it must do, whatever the stages: run them in order and commit each (run.json records its
fingerprint, upstream fingerprints and files), hand a value from one stage's body to the next,
skip a stage whose record is current, rerun a stage whose fingerprinted input changed and every
stage downstream of it, rerun a stage whose output is gone, record a failure with the stage to
resume from and the files it was writing, remove those files on the next run, rerun from a named
stage, and write what a stage leaves for last only once the run is recorded complete.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from bigmm.pipeline.config import parse_config
from bigmm.pipeline.engine import Runner, begin, execute
from bigmm.pipeline.stage import Stage

CALLS: list[str] = []


def _toy_registry():
    """Three stages: ``count`` writes n (the config's reml.seed) to count.txt; ``square`` reads
    count's value and writes n² (and an extra file); ``summary`` writes summary.txt and, once the
    run is complete, final.txt."""

    def count_body(ctx):
        CALLS.append("count")
        n = ctx.cfg.reml.seed
        (ctx.out / "count.txt").write_text(str(n))
        return n, {"passes_over_X": 0}

    count = Stage(name="count", outputs=("count.txt",), body=count_body,
                  inputs=lambda f: {"seed": f.cfg.reml.seed},
                  load=lambda ctx: int((ctx.out / "count.txt").read_text()))

    def square_body(ctx):
        CALLS.append("square")
        n = ctx.value(count)
        if ctx.cfg.reml.grid_size == 13:  # the toy's failure, mid-way through writing
            (ctx.out / "square.txt").write_text("partial")
            raise RuntimeError("toy failure")
        (ctx.out / "square.txt").write_text(str(n * n))
        (ctx.out / "square.extra").write_text("extra")
        return n * n, {}

    square = Stage(name="square", outputs=("square.txt",), body=square_body, inputs=lambda f: {},
                   upstream=lambda f: (count,), extra_files=lambda ctx: ["square.extra"],
                   load=lambda ctx: int((ctx.out / "square.txt").read_text()), outcome=True)

    def summary_body(ctx):
        CALLS.append("summary")
        text = f"{ctx.value(count)} {ctx.value(square)}"
        (ctx.out / "summary.txt").write_text(text)
        assert not (ctx.out / "final.txt").exists()
        return text, {}

    summary = Stage(name="summary", outputs=("summary.txt", "final.txt"), body=summary_body,
                    inputs=lambda f: {}, upstream=lambda f: (count, square), after_cluster=True,
                    finish=lambda ctx, text: (ctx.out / "final.txt").write_text(text + " done"))
    return (count, square, summary)


TOY = _toy_registry()


def _run(tmp_path, seed=3, grid_size=101, from_stage=None, force=False):
    cfg = parse_config({"genotypes": {"zarr": str(tmp_path / "none.zarr")}, "phenotypes": {"file": "p.tsv"},
                        "reml": {"seed": seed, "grid_size": grid_size}, "output": str(tmp_path / "run")},
                       base=tmp_path, source=tmp_path / "run.yaml")
    inputs = SimpleNamespace(method="exact", reml_method="toy", genotype_provenance=None, store=None,
                             ids=["a", "b"], memory_plan={})
    (tmp_path / "run").mkdir(exist_ok=True)
    runner = Runner(cfg, inputs, force, from_stage, registry=TOY)
    CALLS.clear()
    begin(runner, keep=[])
    execute(runner, keep=[])
    return runner, json.loads((tmp_path / "run" / "run.json").read_text())


def test_the_engine_runs_a_toy_registry_in_order_and_commits_each_stage(tmp_path):
    runner, m = _run(tmp_path)
    assert CALLS == ["count", "square", "summary"]
    assert list(m["stages"]) == ["count", "square", "summary"] and m["status"] == "complete"
    out = tmp_path / "run"
    assert (out / "summary.txt").read_text() == "3 9" and (out / "final.txt").read_text() == "3 9 done"
    assert m["stages"]["square"]["files"] == ["square.extra", "square.txt"]
    assert m["stages"]["square"]["upstream"] == {"count": m["stages"]["count"]["fingerprint"]}
    assert m["stages"]["summary"]["files"] == ["final.txt", "summary.txt"]
    assert runner.outcome() == 9


def test_a_current_stage_is_skipped_and_its_value_loaded(tmp_path):
    _run(tmp_path)
    runner, m = _run(tmp_path)
    assert CALLS == [] and runner.skipped == ["count", "square", "summary"]
    assert runner.outcome() == 9  # loaded from square.txt by its declaration


def test_a_changed_input_reruns_its_stage_and_everything_downstream(tmp_path):
    _, before = _run(tmp_path)
    _, m = _run(tmp_path, seed=4)
    assert CALLS == ["count", "square", "summary"]
    assert m["stages"]["count"]["fingerprint"] != before["stages"]["count"]["fingerprint"]
    assert m["stages"]["square"]["fingerprint"] != before["stages"]["square"]["fingerprint"]  # upstream changed
    assert (tmp_path / "run" / "summary.txt").read_text() == "4 16"


def test_a_missing_output_reruns_that_stage_and_downstream_only(tmp_path):
    _run(tmp_path)
    (tmp_path / "run" / "square.txt").unlink()
    runner, _ = _run(tmp_path)
    assert CALLS == ["square", "summary"] and runner.skipped == ["count"]


def test_a_failure_is_recorded_and_its_files_removed_on_the_next_run(tmp_path):
    _run(tmp_path)
    with pytest.raises(RuntimeError, match="toy failure"):
        _run(tmp_path, grid_size=13, from_stage="square")
    out = tmp_path / "run"
    m = json.loads((out / "run.json").read_text())
    assert m["status"] == "failed" and m["resume_from"] == "square"
    assert m["writing"] == {"stage": "square", "files": ["square.txt", "square.extra"]}
    assert list(m["stages"]) == ["count"]  # nothing downstream of the failure is recorded current
    assert (out / "square.txt").read_text() == "partial" and not (out / "final.txt").exists()
    runner, m = _run(tmp_path)
    assert CALLS == ["square", "summary"] and m["status"] == "complete"
    assert (out / "square.txt").read_text() == "9"


def test_from_stage_reruns_from_there(tmp_path):
    _run(tmp_path)
    runner, _ = _run(tmp_path, from_stage="square")
    assert CALLS == ["square", "summary"] and runner.skipped == ["count"]
