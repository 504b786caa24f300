"""slurm.conf for the lab's Slurm clusters (the namespace cluster, the VM guest's one-node
cluster): one writer, so every cluster runs Slurm alike, with the project's hooks wired as the
README tells an admin to wire them.

Standard library only: the VM guest imports it.
"""
from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Sequence

SLURM_USER = "slurm"


def slurm_conf_text(*, cluster_name: str, controller: tuple[str, str],
                    nodes: Sequence[tuple[str, str]], controller_dir: Path, node_dir: str,
                    hooks: Path, health_interval: int, munge_socket: Path | None = None,
                    tmp_fs: str | None = None, tmp_disk_mib: int | None = None,
                    extra_lines: Sequence[str] = (), node_options: str = "") -> str:
    """The text of slurm.conf. `controller` and `nodes` are (name, address); slurmctld keeps
    its state, PID file and log in `controller_dir`, each slurmd its spool, PID file and log
    in `node_dir` (which may hold %n); `hooks` is where prolog, epilog, task_prolog and
    healthcheck are; `munge_socket` when munged listens somewhere else than its default.
    `tmp_fs` (the scratch mount point) and `tmp_disk_mib` (what its volume holds, MiB): Slurm
    schedules `--tmp` on the configured TmpDisk of a static node and drains it with "Low
    TmpDisk" when slurmd measures less at registration (statvfs of TmpFS). `extra_lines` (e.g.
    GresTypes=tmpdisk) and `node_options` (e.g. Gres=tmpdisk:800, on every NodeName line) for
    tests that need them."""
    cpus = os.cpu_count() or 1
    lines = [
        f"ClusterName={cluster_name}",
        "MailProg=/bin/true",
        f"SlurmctldHost={controller[0]}({controller[1]})",
        f"SlurmUser={SLURM_USER}",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        *([f"AuthInfo=socket={munge_socket}"] if munge_socket else []),
        f"StateSaveLocation={controller_dir}/state",
        f"SlurmctldPidFile={controller_dir}/slurmctld.pid",
        f"SlurmctldLogFile={controller_dir}/slurmctld.log",
        f"SlurmdSpoolDir={node_dir}/spool",
        f"SlurmdPidFile={node_dir}/slurmd.pid",
        f"SlurmdLogFile={node_dir}/slurmd.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "LogTimeFormat=iso8601_ms",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "MpiDefault=none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "ReturnToService=2",
        "SlurmdTimeout=60",
        "SlurmctldTimeout=60",
        "MessageTimeout=20",
        "InactiveLimit=0",
        "KillWait=5",
        "MinJobAge=600",
        f"Prolog={hooks}/prolog",
        f"Epilog={hooks}/epilog",
        f"TaskProlog={hooks}/task_prolog",
        "PrologFlags=Alloc",
        f"HealthCheckProgram={hooks}/healthcheck",
        f"HealthCheckInterval={health_interval}",
        "HealthCheckNodeState=ANY",
        *([f"TmpFS={tmp_fs}"] if tmp_fs else []),
        *extra_lines,
    ]
    tmp_disk = f" TmpDisk={tmp_disk_mib}" if tmp_disk_mib is not None else ""
    more = f" {node_options}" if node_options else ""
    lines += [f"NodeName={name} NodeAddr={address} CPUs={cpus} RealMemory=100{tmp_disk}{more} "
              "State=UNKNOWN" for name, address in nodes]
    lines.append(f"PartitionName=main Nodes={','.join(name for name, _ in nodes)} Default=YES "
                 "MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def make_controller_dir(controller_dir: Path) -> None:
    """slurmctld's directory and its state directory, owned by the Slurm user."""
    slurm = pwd.getpwnam(SLURM_USER)
    (controller_dir / "state").mkdir(mode=0o755)
    for path in (controller_dir, controller_dir / "state"):
        os.chown(path, slurm.pw_uid, slurm.pw_gid)
