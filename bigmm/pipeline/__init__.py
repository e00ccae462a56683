"""The run layer: config-driven, resumable runs of the library on a Dask cluster.

It uses the library's public API and nothing below imports it: the config schema
(:mod:`~bigmm.pipeline.config`), the one validator (:mod:`~bigmm.pipeline.validate`), the stage plan
(:mod:`~bigmm.pipeline.plan`), the memory policy (:mod:`~bigmm.pipeline.memory`), the run directory
(:mod:`~bigmm.pipeline.rundir`), stage outputs (:mod:`~bigmm.pipeline.outputs`), the stages (:mod:`~bigmm.pipeline.stages`), cluster set-up
(:mod:`~bigmm.pipeline.cluster`), the report, job submission and the ``bigmm`` command.
"""

from .config import RunConfig, load_config, parse_config
from .stages import RunOutcome, run, status
from .validate import check_file, validate

__all__ = ["RunConfig", "load_config", "parse_config", "RunOutcome", "run", "status", "check_file", "validate"]
