"""Fault injection on a whole ``bigmm run``: kill the driver in every stage and the workers
mid-pass, fail a rerun, and check that nothing is lost, stale or touched.

1. An uninterrupted reference run.
2. The same config in a fresh directory, its driver SIGKILLed (with its whole process group:
   the local workers too) at the start of every stage and in the middle of the GRM and of a
   randomized-spectrum pass (``BIGMM_TEST_PAUSE_AT``), resumed after each kill; then two runs in
   which one worker process is SIGKILLed mid-GRM and mid-spectrum (the nanny restarts it), and
   a final run to the end. Its numbers and GRM bytes must equal the reference's.
3. A rerun from reml that fails in the report stage (``BIGMM_TEST_FAIL_AT``): afterwards no file
   that looks like a finished run's result may be left (results.json, results.tsv, hsq/, report.html).
4. A listing (path, size, mtime, SHA-256) of the whole work folder outside the run directory
   before and after: the inputs and a user's own files beside them must be unchanged. Inside
   the run directory every file must be one bigmm recorded in run.json (or run.json/run.log).
5. Ownership: ``ingest --force`` onto a user's folder holding its fileset, ``run --force`` into
   folders whose run.json another tool wrote (JSON or not), ``reml`` onto a user's config.yaml,
   ``score --out`` onto an existing file, the target's .fam or the run's snp_effects.tsv,
   ``simulate --out`` onto an existing fileset: each refused. A run.json edited to record paths
   outside the run folder (absolute, ``..``, the inputs): the rerun removes none of them. A rerun
   SIGKILLed between two stages: run.json must not say complete. ``bigmm submit``'s job script
   and a SLURM log in a new folder: the run's check accepts it. The listing of 4. covers them.

    python scripts/studies/fault_injection.py [--n 2000] [--p 8000] [--keep DIR]

Prints a table of every fault and what it left, then PASS or FAIL lines; exits 1 on a failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

import bigmm

NUMBERS = ("n", "h2", "h2_se", "sigma2_g", "sigma2_e", "logl_reml", "logl_ml", "lrt_stat", "pve")


def listing(root: Path, skip: Path | None = None) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def start(cfg: Path, logs: Path, env_extra: dict, *args) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIGMM_TEST_")}
    env.update(env_extra)
    logs.mkdir(parents=True, exist_ok=True)
    n = len(list(logs.glob("stderr-*")))
    err = open(logs / f"stderr-{n}", "w")
    proc = subprocess.Popen([sys.executable, "-m", "bigmm.pipeline.cli", "run", str(cfg), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    proc.err_path = logs / f"stderr-{n}"
    return proc


def wait_log(proc, out: Path, needle: str, timeout=600) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        log = out / "run.log"
        if log.exists() and needle in log.read_text():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(60)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def worker_pids(driver_pid: int) -> list[int]:
    """The driver's worker processes (multiprocessing spawns, not its resource tracker)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text().split()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat[4]) == driver_pid and int(d.name) != driver_pid and "spawn_main" in cmd \
                and "resource_tracker" not in cmd:
            pids.append(int(d.name))
    return pids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--p", type=int, default=8000)
    ap.add_argument("--keep", type=Path, help="work in this folder (kept) instead of a temporary one")
    a = ap.parse_args()
    work = a.keep or Path(tempfile.mkdtemp(prefix="bigmm-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    sim = bigmm.simulate(a.n, a.p, h2=[0.6, 0.3], seed=5, out_plink=work / "c", genotype_missing=0.01,
                         phenotype_missing=0.02)
    bigmm.write_tables(sim, work / "pheno.tsv", work / "covar.tsv")
    (work / "my-notes.txt").write_text("the user's own file beside the inputs\n")
    block = max(100, a.n // 6)  # 21 GRM blocks
    grm_desc = f"GRM {a.n}x{a.n} blocks"

    def config(name: str) -> Path:
        cfg = {"genotypes": {"plink": str(work / "c"), "chunks": [block, 2000]},
               "variants": {"min_maf": 0.01, "max_missing": 0.05},
               "phenotypes": {"file": str(work / "pheno.tsv"), "columns": ["trait1", "trait2"]},
               "covariates": {"file": str(work / "covar.tsv"), "columns": ["age", "sex"], "categorical": ["sex"]},
               "spectrum": {"method": "randomized", "rank": 20, "oversample": 10, "power_iters": 2, "seed": 3},
               "grm": {"export_gcta": True, "block_size": block},
               "predict": {"blup": True, "snp_effects": True},
               "output": str(work / name),
               "cluster": {"workers": 2, "threads_per_worker": 1, "memory_limit": "2GiB"}}
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    ref_cfg, run_cfg = config("reference"), config("faulted")
    # the user's folders that the ownership cases (5.) aim bigmm at
    user = work / "user-folder"  # a folder holding a PLINK fileset and notes
    user.mkdir(exist_ok=True)
    for ext in ("bed", "bim", "fam"):
        (user / f"c.{ext}").write_bytes((work / f"c.{ext}").read_bytes())
    (user / "notes.txt").write_text("mine\n")
    for name, text in (("foreign-json", '{"tool": "other", "version": 2}\n'), ("foreign-text", "not json\n")):
        (work / name).mkdir(exist_ok=True)
        (work / name / "run.json").write_text(text)
        (work / name / "results.tsv").write_text("the other tool's results\n")
    (work / "user-config").mkdir(exist_ok=True)
    (work / "user-config" / "config.yaml").write_text("# my own config\nkey: value\n")
    outside_before = listing(work, skip=work / "faulted")
    rows, failures = [], []

    t0 = time.perf_counter()
    proc = start(ref_cfg, work / "logs-ref", {})
    if proc.wait() != 0:
        print(Path(proc.err_path).read_text())
        return 1
    ref = json.loads((work / "reference" / "results.json").read_text())
    ref_grm = (work / "reference" / "gcta" / "grm.grm.bin").read_bytes()
    rows.append(("reference run", "complete", f"{time.perf_counter() - t0:.0f} s"))
    outside_before = listing(work, skip=work / "faulted")  # the reference run's folder is now part of it

    out, logs = work / "faulted", work / "logs-faulted"
    points = ["ingest", "variant_stats", f"{grm_desc}:3", "grm", "spectrum", "randomized spectrum pass 2/3:1",
              "rotate", "reml", "blup", "report"]
    for point in points:
        proc = start(run_cfg, logs, {"BIGMM_TEST_PAUSE_AT": point})
        if not wait_log(proc, out, f"test pause at {point} "):
            # a point already passed (its stage is committed): the run goes on or ended
            kill_group(proc)
            rows.append((f"driver kill at {point}", "not reached (stage already committed)", ""))
            continue
        kill_group(proc)
        m = json.loads((out / "run.json").read_text())
        rows.append((f"driver SIGKILL at {point}", f"run.json {m.get('status')}, resume from {m.get('resume_from')}",
                     f"committed: {', '.join(m.get('stages', {}))}"))
    # worker kills: the driver pauses after some tasks came back, a worker is killed, the run goes on
    for point, stage in ((f"{grm_desc}:2", "grm"), ("randomized spectrum pass 1/3:1", "spectrum")):
        go = work / f"go-{stage}"
        # rerun from the stage so that it computes again (its earlier result is committed)
        proc = start(run_cfg, logs, {"BIGMM_TEST_PAUSE_AT": point, "BIGMM_TEST_RESUME_WHEN": str(go)},
                     "--from", stage)
        if not wait_log(proc, out, f"test pause at {point} "):
            rows.append((f"worker kill in {stage}", "pause not reached", ""))
            failures.append(f"worker kill in {stage}: the pause was not reached")
            kill_group(proc)
            continue
        victims = worker_pids(proc.pid)
        if victims:
            os.kill(victims[0], signal.SIGKILL)
        go.touch()
        rc = proc.wait(900)
        err = Path(proc.err_path).read_text()
        rows.append((f"worker SIGKILL in {stage} (pid {victims[0] if victims else '-'})", f"exit {rc}",
                     "nanny restarted it" if rc == 0 else err[-300:]))
        if rc != 0:
            failures.append(f"worker kill in {stage}: exit {rc}")
    proc = start(run_cfg, logs, {})
    rc = proc.wait(900)
    rows.append(("final resume", f"exit {rc}", ""))
    got = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else None
    if got is None:
        failures.append("the faulted run did not complete")
    else:
        want = {p["name"]: p for p in ref["phenotypes"]}
        worst = 0.0
        for p in got["phenotypes"]:
            for k in NUMBERS:
                a_, b_ = float(p[k]), float(want[p["name"]][k])
                worst = max(worst, abs(a_ - b_) / max(abs(b_), 1e-300))
        same_grm = (out / "gcta" / "grm.grm.bin").read_bytes() == ref_grm
        rows.append(("numbers vs reference", f"max relative difference {worst:.1e}",
                     "GRM bytes identical" if same_grm else "GRM bytes DIFFER"))
        if worst > 1e-9 or not same_grm:
            failures.append(f"results differ from the reference (max rel {worst:.1e}, GRM same {same_grm})")

    # a failed rerun leaves nothing that looks like a current result
    proc = start(run_cfg, logs, {"BIGMM_TEST_FAIL_AT": "report"}, "--from", "reml")
    rc = proc.wait(900)
    # the report stage's outputs (reml and blup committed again before it failed: they are current)
    stale = [f for f in ("results.json", "results.tsv", "report.html", "pca.eigenvec") if (out / f).exists()]
    stale += [str(p.relative_to(out)) for p in (out / "hsq").glob("*")] if (out / "hsq").exists() else []
    m = json.loads((out / "run.json").read_text())
    rows.append(("rerun failing in report", f"exit {rc}, run.json {m['status']}",
                 f"stale results: {', '.join(stale) or 'none'}"))
    if rc == 0 or stale or m["status"] != "failed":
        failures.append(f"failed rerun: exit {rc}, status {m['status']}, stale {stale}")
    proc = start(run_cfg, logs, {})
    rc = proc.wait(900)
    rows.append(("rerun after the failure", f"exit {rc}", ""))

    # 5. ownership: commands aimed at what bigmm did not write are refused; paths in run.json
    # that lead out of the run folder are not removed; a kill between stages of a rerun
    py = [sys.executable, "-m", "bigmm.pipeline.cli"]

    def cli(*args, env=None):
        return subprocess.run([*py, *map(str, args)], capture_output=True, text=True, timeout=900,
                              env={**{k: v for k, v in os.environ.items() if not k.startswith("BIGMM_TEST_")},
                                   **(env or {})})

    def refused(label, *args):
        res = cli(*args)
        ok = res.returncode == 2 and "Traceback" not in res.stderr
        rows.append((label, f"exit {res.returncode}", res.stderr.strip().splitlines()[-1][:110] if res.stderr else ""))
        if not ok:
            failures.append(f"{label}: exit {res.returncode} (expected a refusal, exit 2)")

    refused("ingest --force onto a user folder", "ingest", "--bfile", user / "c", "--out", user, "--force")
    for name in ("foreign-json", "foreign-text"):
        cfg = yaml.safe_load(run_cfg.read_text())
        cfg["output"] = str(work / name)
        (work / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        refused(f"run (--force) into a folder with {name} run.json", "run", work / f"{name}.yaml", "--force")
    refused("reml onto a user's config.yaml", "reml", "--bfile", work / "c", "--pheno", work / "pheno.tsv",
            "--out", work / "user-config")
    refused("score --out onto an existing file", "score", "--run", out, "--bfile", work / "c", "--out",
            work / "my-notes.txt")
    refused("score --force --out onto the target .fam", "score", "--run", out, "--bfile", work / "c", "--out",
            work / "c.fam", "--force")
    refused("score --force --out onto the run's snp_effects", "score", "--run", out, "--bfile", work / "c",
            "--out", out / "snp_effects.tsv", "--force")
    refused("simulate --out onto an existing fileset", "simulate", "--n", "50", "--p", "100", "--out", work / "c")
    # paths in run.json that lead out of the run folder (absolute, .., the inputs)
    m = json.loads((out / "run.json").read_text())
    escapes = [str(work / "my-notes.txt"), "../my-notes.txt", "../c.bed", str(user)]
    m["stages"]["report"]["files"] += escapes
    m["writing"] = {"stage": "report", "files": escapes}
    (out / "run.json").write_text(json.dumps(m, indent=2))
    res = cli("run", run_cfg, "--from", "report")
    rows.append(("run.json records paths outside the folder", f"exit {res.returncode}",
                 f"{res.stderr.count('not inside the run folder')} warnings"))
    if res.returncode != 0:
        failures.append(f"rerun with escaping paths in run.json: exit {res.returncode}")
    # SIGKILL between two stages of a rerun (after reml commits, before blup starts)
    kill_after = ("import os, sys\nimport bigmm.pipeline.stages as S\nc = S.Runner.commit\n"
                  "def k(self, name, *a, **kw):\n    c(self, name, *a, **kw)\n"
                  "    if name == 'reml': os._exit(9)\nS.Runner.commit = k\n"
                  "from bigmm.pipeline.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    res = subprocess.run([sys.executable, "-c", kill_after, "run", str(run_cfg), "--from", "reml"],
                         capture_output=True, text=True, timeout=900)
    m = json.loads((out / "run.json").read_text())
    st = cli("status", out).stdout.splitlines()[0]
    rows.append(("SIGKILL between stages of a rerun", f"run.json {m['status']}, results.json "
                 f"{'present' if (out / 'results.json').exists() else 'absent'}", st[len(str(out)) + 2:][:60]))
    if m["status"] == "complete" or "run complete" in st:
        failures.append("a rerun killed between stages says complete")
    res = cli("run", run_cfg)
    rows.append(("resume after that kill", f"exit {res.returncode}", ""))
    # bigmm submit's own files: the job script and SLURM's log do not make a fresh folder foreign
    cfg = yaml.safe_load(run_cfg.read_text())
    cfg["output"] = str(work / "submitted")
    (work / "submitted.yaml").write_text(yaml.safe_dump(cfg))
    sub = cli("submit", work / "submitted.yaml")
    (work / "submitted" / "slurm-1.out").write_text("SLURM's log\n")
    chk = cli("check", "--no-cluster", work / "submitted.yaml")
    rows.append(("submit.sbatch + slurm-1.out in a new folder", f"submit exit {sub.returncode}, check exit "
                 f"{chk.returncode}", ""))
    if sub.returncode != 0 or chk.returncode != 0:
        failures.append(f"submit files refused: {chk.stderr.strip()[-200:]}")

    # nothing outside the run directory touched; inside it only what bigmm recorded
    outside_after = listing(work, skip=work / "faulted")
    changed = sorted(k for k in outside_before if outside_after.get(k) != outside_before[k])
    added = sorted(k for k in outside_after if k not in outside_before and not k.startswith(("logs-", "go-"))
                   and k not in ("foreign-json.yaml", "foreign-text.yaml", "submitted.yaml",
                                 "submitted/submit.sbatch", "submitted/slurm-1.out"))
    m = json.loads((out / "run.json").read_text())
    recorded = {"run.json", "run.log"}
    for entry in m.get("stages", {}).values():
        recorded.update(entry.get("files", []))
    extra = sorted(k for k in listing(out) if not any(k == r or k.startswith(r.rstrip("/") + "/") for r in recorded))
    rows.append(("files outside the run directory", f"{len(outside_before)} listed",
                 f"changed {len(changed)}, new {len(added)}"))
    rows.append(("files in the run directory not recorded", str(len(extra)), ", ".join(extra[:5])))
    if changed or added:
        failures.append(f"files outside the run directory changed: {changed + added}")
    if extra:
        failures.append(f"unrecorded files in the run directory: {extra}")

    w = max(len(r[0]) for r in rows)
    for r in rows:
        print(f"{r[0]:<{w}}  {r[1]:<48}  {r[2]}")
    print(f"work folder: {work}")
    for f in failures:
        print(f"FAIL: {f}")
    if not failures:
        print("PASS: every kill resumed to the reference numbers; nothing stale; nothing of the user's touched")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
