"""The peer comparisons (scripts/bench/bench_components_bolt.py, bench_rg_bolt.py) save each run as
it ends by merging it into the results file (scripts/bench/common.py, merge_results): a run saved
meanwhile by another invocation (BOLT alone in the background) must survive, and the tools this
invocation ran must replace that file's runs and failures of the same tools."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "bench"))
import common  # noqa: E402


def test_merge_keeps_other_invocations_runs_and_replaces_its_own_tools(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({
        "date": "earlier", "bolt_version": "v2.4",
        "rows": {"n10_p20": {"n": 10, "cohort": "old", "runs": {"bolt": [{"cpu_s": 9.0}], "bigmm_mf": [{"cpu_s": 1.0}]},
                             "failed": {"bigmm_exact": "MemoryError"}},
                 "n99_p20": {"n": 99, "runs": {"bolt": [{"cpu_s": 5.0}]}, "failed": {}}}}))
    # this invocation ran bigmm_mf and bigmm_exact on n10_p20: the exact run now succeeded
    res = {"date": "now", "rows": {"n10_p20": {"n": 10, "cohort": "new",
                                               "runs": {"bigmm_mf": [{"cpu_s": 2.0}], "bigmm_exact": [{"cpu_s": 3.0}]},
                                               "failed": {}}}}
    common.merge_results(path, res)
    disk = json.loads(path.read_text())
    assert disk["date"] == "now" and disk["bolt_version"] == "v2.4"
    row = disk["rows"]["n10_p20"]
    assert row["cohort"] == "new"
    assert row["runs"] == {"bolt": [{"cpu_s": 9.0}], "bigmm_mf": [{"cpu_s": 2.0}], "bigmm_exact": [{"cpu_s": 3.0}]}
    assert row["failed"] == {}  # the failure of a tool that ran again is gone
    assert disk["rows"]["n99_p20"] == {"n": 99, "runs": {"bolt": [{"cpu_s": 5.0}]}, "failed": {}}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left
