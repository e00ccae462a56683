"""``bigmm submit``: a batch script that runs the whole job (the driver) unattended on SLURM.

The script runs ``bigmm run CONFIG`` in a batch job. The workers are whatever
``cluster:`` says (a local cluster inside the job's allocation, or worker jobs
through dask-jobqueue). ``--signal=B:TERM@120`` asks SLURM to send SIGTERM two
minutes before the wall-time limit: bigmm then stops cleanly, and submitting
the same script again resumes from the last committed stage or checkpoint.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from .config import RunConfig
from ..errors import ConfigError, InputError
from ..store import atomic_write_text


#: the second line of every job script bigmm writes: a run folder may hold it (and SLURM's logs)
SCRIPT_MARK = "# bigmm submit: the driver job of a bigmm run (written by bigmm; bigmm may replace it)"
#: the names of the driver job's SLURM logs in the run folder (``--output=OUT/slurm-%j.out``)
SLURM_LOG = re.compile(r"^slurm-\d+(_\d+)?\.out$")


def is_job_script(path: Path) -> bool:
    """Whether ``path`` is a job script bigmm wrote (its second line is :data:`SCRIPT_MARK`)."""
    try:
        if not path.is_file() or path.is_symlink():
            return False
        with open(path, "rb") as fh:
            head = fh.read(4096).decode(errors="replace").splitlines()
    except OSError:
        return False
    return len(head) > 1 and head[1] == SCRIPT_MARK


def _slurm_mem(size: str) -> str:
    from dask.utils import parse_bytes

    return f"{max(1, parse_bytes(size) // 2**20)}M"


def job_script(cfg: RunConfig, python: str | None = None) -> str:
    """The text of the driver's SLURM batch script."""
    sub = cfg.submit
    out = Path(cfg.output)
    name = sub.job_name or f"bigmm-{out.name}"
    lines = ["#!/bin/bash",
             SCRIPT_MARK,
             f"#SBATCH --job-name={name}",
             f"#SBATCH --time={sub.walltime}",
             "#SBATCH --nodes=1",
             "#SBATCH --ntasks=1",
             f"#SBATCH --cpus-per-task={sub.cores}",
             f"#SBATCH --mem={_slurm_mem(sub.memory)}",
             f"#SBATCH --output={out / 'slurm-%j.out'}",
             "#SBATCH --signal=B:TERM@120"]
    if sub.queue:
        lines.append(f"#SBATCH --partition={sub.queue}")
    if sub.account:
        lines.append(f"#SBATCH --account={sub.account}")
    lines += [f"#SBATCH {d}" for d in sub.job_extra_directives]
    lines += ["", "set -euo pipefail", f"mkdir -p {shlex.quote(str(out))}"]
    lines += list(sub.setup)
    cmd = [python or sys.executable, "-m", "bigmm.pipeline.cli", "run", str(cfg.source)]
    lines += [
        "# bigmm resumes from its last committed stage: resubmit this script after a time-out.",
        "# Run in the background and wait, so that the shell forwards SLURM's SIGTERM to bigmm.",
        " ".join(shlex.quote(c) for c in cmd) + " &",
        "pid=$!",
        "trap 'kill -TERM $pid; wait $pid' TERM",
        "wait $pid",
    ]
    return "\n".join(lines) + "\n"


def write_job_script(cfg: RunConfig, path: Path | None = None, submit: bool = False) -> Path:
    """Write the script (default ``OUTPUT/submit.sbatch``) and optionally ``sbatch`` it."""
    if cfg.source is None:
        raise ConfigError("bigmm submit needs a config file")
    path = Path(path) if path else Path(cfg.output) / "submit.sbatch"
    path.parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.output).mkdir(parents=True, exist_ok=True)  # SLURM opens --output before the script runs
    if path.exists() and not is_job_script(path):
        raise InputError(f"{path} exists and is not a job script bigmm wrote; bigmm replaces only its own: "
                         f"choose another path with --script")
    atomic_write_text(path, job_script(cfg))
    path.chmod(0o755)
    if submit:
        try:
            res = subprocess.run(["sbatch", str(path)], capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise ConfigError(f"sbatch not found: this machine has no SLURM; the script is in {path}") from None
        if res.returncode != 0:
            raise ConfigError(f"sbatch {path} failed: {res.stderr.strip()}")
        print(res.stdout.strip())
    return path
