#!/usr/bin/python3
"""The Epilog keeping a failed job's directory ([jobs] keep_failed) against the same Epilog
retiring a successful job's directory into the trash, measured in the same run, as a ratio.

Both run the installed `libexec/slurm-scratch/epilog` as slurmd starts it (empty environment plus
the Slurm variables, exit codes 256 / 1:0 / 256 or 0 / 0:0 / 0), timed as slurmd sees it (until it
exited and its output pipe closed), on job directories of the same tree, interleaved, medians.
Keeping adds the exit-code parsing, the keep-time attribute, the `.kept/<user>` levels (made once,
then opened) and a rename into them instead of into the trash. Target: at most 1.5x.

Needs root: a private mount namespace (lab.sandbox), an ext4 loop filesystem, `make install` into
a temporary prefix (or --prefix). Usage: bench/bench_kept.py [--runs N] [--files N] [--prefix DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from bench_jobs import REPO, TRASH, bench_workspace, build_tree, install, slurm_env, spawn_ms, spawn_piped, verdict, wait_empty  # noqa: F401 (REPO: sys.path)


FAILED = {"SLURM_JOB_EXIT_CODE": "256", "SLURM_JOB_EXIT_CODE2": "1:0", "SLURM_JOB_DERIVED_EC": "256"}
SUCCEEDED = {"SLURM_JOB_EXIT_CODE": "0", "SLURM_JOB_EXIT_CODE2": "0:0", "SLURM_JOB_DERIVED_EC": "0"}


def one_epilog(hooks: Path, mount_point: Path, config: Path, job_id: int, files: int, exit_vars: dict[str, str]) -> tuple[float, str]:
    spawn_ms([str(hooks / "prolog")], slurm_env(job_id, config, "prolog_slurmd"))
    job_dir = mount_point / f"job_{job_id}"
    build_tree(job_dir, files, owner=(65534, 65534))
    wall, _, output = spawn_piped([str(hooks / "epilog")], {**slurm_env(job_id, config, "epilog_slurmd"), **exit_vars})
    if job_dir.exists():
        raise SystemExit(f"bench_kept: the Epilog left {job_dir}: {output}")
    return wall, output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="Epilog runs of each kind, interleaved")
    parser.add_argument("--files", type=int, default=1000, help="files in each job directory")
    parser.add_argument("--prefix", type=Path, help="use this `make install` prefix instead of installing")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_kept: needs root (loop devices, mounts); skipped")
        return 0
    with bench_workspace("bench-kept") as (work, loops):
        hooks = args.prefix / "libexec" / "slurm-scratch" if args.prefix else install(work / "prefix")
        mount_point = work / "scratch"
        loops.filesystem("ext4", size_mb=8 * 1024, mount_point=str(mount_point), options="noatime,nodiratime")
        mount_point.chmod(0o1777)
        config = work / "slurm-scratch.conf"
        config.write_text(f"[volume]\nmount_point = {mount_point}\n[jobs]\nkeep_failed = 1h\n")
        config.chmod(0o644)
        one_epilog(hooks, mount_point, config, 399999, 1, FAILED)  # the area's levels exist from here on, as on a node
        kept: list[float] = []
        trashed: list[float] = []
        for run in range(args.runs):
            for kind in (("kept", "trash") if run % 2 == 0 else ("trash", "kept")):
                job_id = 300000 + 2 * run + (kind == "kept")
                wall, output = one_epilog(hooks, mount_point, config, job_id, args.files, FAILED if kind == "kept" else SUCCEEDED)
                if (" epilog kept " in output) != (kind == "kept"):
                    raise SystemExit(f"bench_kept: expected the directory {kind}: {output}")
                (kept if kind == "kept" else trashed).append(wall)
        wait_empty(mount_point / TRASH, timeout=300)
        keep_ms, trash_ms = statistics.median(kept), statistics.median(trashed)
        ratio = keep_ms / trash_ms
        print(f"bench_kept: ext4 loop filesystem, installed hooks, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        print(f"  epilog keeping ({args.files} files) {keep_ms:8.2f} ms   epilog to the trash {trash_ms:8.2f} ms   ratio {ratio:5.2f}x   target <= 1.5x   {verdict(ratio <= 1.5)}")
        print(f"  (medians of {args.runs} runs each, interleaved)")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
