"""Talking to Slurm: which jobs run on a node (and, with the health issue, drain/resume).

Every call goes through `scontrol`/`squeue` by absolute path, under `[slurm] timeout`, with
SLURM_CONF set from `[slurm] slurm_conf` when given (a HealthCheckProgram gets no SLURM_CONF).
"""

from __future__ import annotations

import os

from slurm_scratch import run
from slurm_scratch.config import Config
from slurm_scratch.errors import ScratchError


def slurm_env(config: Config) -> dict[str, str]:
    conf = config.slurm.slurm_conf or os.environ.get("SLURM_CONF", "")
    return {"SLURM_CONF": conf} if conf else {}


def running_jobs(config: Config, node: str) -> set[int]:
    """Ids of the jobs Slurm has on `node` (any state but finished); ScratchError if Slurm cannot say."""
    result = run.run(
        [config.slurm.squeue, "--noheader", "--nodelist", node, "--format", "%A"],
        timeout=config.slurm.timeout,
        env=slurm_env(config),
        quiet=True,
    )
    jobs = set()
    for line in result.stdout.split():
        if not line.isdigit():
            raise ScratchError(f"squeue printed {line!r} where a job id was expected")
        jobs.add(int(line))
    return jobs
