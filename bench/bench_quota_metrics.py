#!/usr/bin/python3
"""The health check with metrics on, with per-job quotas and kept directories in its figures
(quota_use: a timed child reads each job directory's qgroup counters and counts the kept area),
against the same check with quota and keeping off, measured in the same run, as a ratio.

Both run `hooks/healthcheck` as slurmd does (SLURMD_NODENAME and the bench's SLURM_SCRATCH_CONF),
in steady state on a healthy node (a fake `scontrol` answers the first check's one question), on
the same btrfs loop filesystem with simple quotas on and N running jobs' directories made by the
Prolog (`quota = 64M`: subvolumes under qgroups), interleaved, medians. Target: at most 1.25x
(the check runs once a minute, off the job path). Needs root: a private mount namespace
(lab.sandbox), a loop device it removes. Usage: bench/bench_quota_metrics.py [--runs N] [--jobs N]
"""

from __future__ import annotations

import argparse
import os
import statistics

from bench_health import FAKE_SCONTROL, HOOK, timed
from bench_jobs import REPO, bench_workspace, slurm_env, spawn_ms, verdict

from lab.kernel import sh


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="health checks of each kind, interleaved")
    parser.add_argument("--jobs", type=int, default=20, help="running jobs' directories on the volume")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_quota_metrics: needs root (loop devices, mounts); skipped")
        return 0
    with bench_workspace("bench-quota-metrics") as (work, loops):
        from slurm_scratch.volume import apply

        mount_point = work / "scratch"
        loops.filesystem("btrfs", size_mb=2048, mount_point=str(mount_point))
        mount_point.chmod(0o755)
        apply.quotas(str(mount_point))
        scontrol = work / "scontrol"
        scontrol.write_text(FAKE_SCONTROL)
        scontrol.chmod(0o755)
        (work / "textfile").mkdir()
        common = (f"[volume]\nmount_point = {mount_point}\nbackend = single\nfilesystem = btrfs\nmount_mode = 0755\n"
                  f"[health]\nmetrics_dir = {work / 'textfile'}\n[slurm]\nscontrol = {scontrol}\n")
        plain, figured = work / "plain.conf", work / "quota.conf"
        plain.write_text(common)
        figured.write_text(common + "[jobs]\nquota = 64M\nkeep_failed = 1h\n")
        for config in (plain, figured):
            config.chmod(0o644)
        for job_id in range(500000, 500000 + args.jobs):
            spawn_ms([str(REPO / "hooks" / "prolog")], slurm_env(job_id, figured, "prolog_slurmd"))
            with open(mount_point / f"job_{job_id}" / "data", "wb") as stream:
                stream.write(b"\0" * (1 << 20))
        sh("sync", "-f", str(mount_point))
        envs = {name: {"SLURMD_NODENAME": "bench1", "SLURM_SCRATCH_CONF": str(config)} for name, config in (("plain", plain), ("figured", figured))}
        for env in envs.values():  # warm up; the first check asks the fake Slurm once
            for _ in range(3):
                timed([str(HOOK)], env)
        samples: dict[str, list[float]] = {"plain": [], "figured": []}
        for run in range(args.runs):
            for name in (("plain", "figured") if run % 2 == 0 else ("figured", "plain")):
                samples[name].append(timed([str(HOOK)], envs[name]))
        timed([str(HOOK)], envs["figured"])  # the file as the figured check writes it
        text = (work / "textfile" / "slurm_scratch.prom").read_text()
        if f"slurm_scratch_quota_jobs {float(args.jobs)}" not in text:
            raise SystemExit(f"bench_quota_metrics: the metrics file does not count {args.jobs} quota'd job directories:\n{text}")
        plain_ms, figured_ms = statistics.median(samples["plain"]), statistics.median(samples["figured"])
        ratio = figured_ms / plain_ms
        print(f"bench_quota_metrics: btrfs loop filesystem, {args.jobs} job directories with a quota, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.2f}")
        print(f"  healthcheck, metrics with quota and kept figures {figured_ms:7.1f} ms   without {plain_ms:7.1f} ms   "
              f"+{figured_ms - plain_ms:.1f} ms   ratio {ratio:4.2f}x   target <= 1.25x   {verdict(ratio <= 1.25)}")
        print(f"  (medians of {args.runs} runs each, interleaved)")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
