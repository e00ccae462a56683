"""Hardening cases from an adversarial trial of the run layer: each failed (a traceback, a dead
end, a silent wrong value or a long hang) before the fix.

Configs are checked with ``bigmm check --no-cluster`` and ``bigmm run`` in subprocesses, so the
exit status and the message a user sees are what is tested.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bigmm.pipeline.config import MAX_CONFIG_NODES, load_config

from test_bad_input import assert_refused, bigmm_cli, cohort, write_config  # noqa: F401  (fixture)

YAML_BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


@pytest.mark.parametrize("command", ["check", "run"])
def test_yaml_alias_bomb_is_refused_quickly(tmp_path, command):
    """A few hundred bytes of nested aliases stand for 9⁹ ≈ 4·10⁸ nodes: refused from the
    composed (shared) node graph, before anything is expanded (it ran 95 s to a MemoryError)."""
    path = tmp_path / "bomb.yaml"
    path.write_text(YAML_BOMB)
    t0 = time.perf_counter()
    res = bigmm_cli(command, *(["--no-cluster"] if command == "check" else []), path)
    assert time.perf_counter() - t0 < 60
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert "YAML aliases expand to" in res.stderr and str(MAX_CONFIG_NODES) in res.stderr, res.stderr


def test_a_small_config_with_an_alias_still_loads(tmp_path, cohort):  # noqa: F811
    """Aliases themselves are fine: only their expanded size is bounded."""
    path = write_config(tmp_path, cohort)
    cfg = yaml.safe_load(path.read_text())
    text = yaml.safe_dump(cfg, sort_keys=False).replace("cluster:", "cluster: &light") + "submit: {}\n"
    path.write_text(text)
    assert load_config(path).cluster.workers == 1


@pytest.mark.parametrize("section, fragment", [
    ({"spectrum": {"method": "randomized", "seed": -1}}, "spectrum.seed: Input should be greater than or equal to 0"),
    ({"reml": {"grid_size": 1.0e9}}, "reml.grid_size: Input should be a valid integer"),
    ({"reml": {"grid_size": 1_000_000_000}}, "reml.grid_size: Input should be less than or equal to 100001"),
    ({"spectrum": {"method": "randomized", "rank": True}}, "spectrum.rank: Input should be a valid integer (got True)"),
    ({"cluster": {"memory_limit": "-1GiB"}}, "cluster.memory_limit: Value error, memory_limit '-1GiB' must be a positive size"),
    ({"reml": {"method": "matrix_free", "max_steps": 1}}, "reml.max_steps: Input should be greater than or equal to 2"),
    ({"reml": {"method": "matrix_free", "probes": 1}}, "reml.probes: Input should be greater than or equal to 2"),
], ids=["negative-seed", "float-grid", "huge-grid", "bool-rank", "negative-memory", "steps-1", "probes-1"])
def test_numeric_fields_are_range_checked_before_any_work(tmp_path, cohort, section, fragment):  # noqa: F811
    """Every numeric field's range is checked with the schema: the key is named, nothing runs."""
    key, value = next(iter(section.items()))
    cluster = {"workers": 1, "threads_per_worker": 1, **(value if key == "cluster" else {})}
    kw = {key: value} if key != "cluster" else {}
    path = write_config(tmp_path, cohort, cluster=cluster, **kw)
    res = bigmm_cli("run", path)
    assert_refused(res, tmp_path / "out", fragment)
    assert not (tmp_path / "out").exists()
