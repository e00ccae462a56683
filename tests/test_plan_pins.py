"""The stage plan is pinned: every configuration shape keeps its stages, their order, each stage's
upstream stages and fingerprinted inputs, its committed files, its passes and flops, and the
methods ``auto`` chooses, as recorded in ``tests/data/plan_pins.json`` (made by
``tests/data/make_plan_pins.py`` on the code before the run layer was restructured).

A changed fingerprint would rerun every committed stage of every user's run folder, and a changed
list of committed files would leave outputs unrecorded: a restructuring must change neither. A
deliberate change of the plan (a new fingerprinted setting) regenerates the pins in the same commit
and says why.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "data"))
import make_plan_pins as pins  # noqa: E402

PINNED = json.loads((Path(__file__).parent / "data" / "plan_pins.json").read_text())


@pytest.fixture(scope="module")
def plans():
    pins.make_inputs()
    try:
        yield pins.current_plans()
    finally:
        shutil.rmtree(pins.PIN_BASE, ignore_errors=True)


@pytest.mark.parametrize("case", sorted(pins.CASES))
def test_plan_is_pinned(plans, case):
    got, want = plans[case], PINNED[case]
    assert got["order"] == want["order"]
    for name in want["order"]:
        assert got["stages"][name]["upstream"] == want["stages"][name]["upstream"], name
        assert got["stages"][name]["inputs"] == want["stages"][name]["inputs"], name
        assert got["stages"][name]["fingerprint"] == want["stages"][name]["fingerprint"], name
    assert got["outputs"] == want["outputs"]
    # passes and flops feed the time estimate only, but are the same arithmetic: equal floats
    assert got["passes"] == want["passes"] and got["flops"] == want["flops"]


def test_auto_methods_are_pinned(plans):
    assert plans["auto"] == PINNED["auto"]


@pytest.mark.parametrize("case", sorted(pins.CASES))
def test_fingerprint_is_the_hash_of_its_inputs(case):
    """The recorded fingerprint is SHA-256 of (name, version, inputs, upstream fingerprints),
    recomputed here from the unnormalised plan: with the pinned inputs above, the fingerprints of
    a run folder made before a restructuring are reproduced exactly."""
    from bigmm import __version__
    from bigmm.pipeline.plan import stage_plan

    pins.make_inputs()
    try:
        changes, method, rmethod, provenance = pins.CASES[case]
        plan = stage_plan(pins.config(changes), method, provenance, rmethod)
    finally:
        shutil.rmtree(pins.PIN_BASE, ignore_errors=True)
    for name, entry in plan.items():
        ups = [plan[u]["fingerprint"] for u in entry["upstream"]]
        assert entry["fingerprint"] == pins.fingerprint_of(name, __version__, entry["inputs"], ups), name
