#!/usr/bin/python3
"""The per-job hooks against plain shell baselines measured in the same run, as ratios.

1. Prolog: the installed `libexec/slurm-scratch/prolog`, as slurmd starts it (empty environment
   plus the Slurm variables), creating a new job directory on a mounted loop filesystem, versus a
   bash script doing `mkdir -p -m 0700 DIR && chown U:G DIR` on the same filesystem. Interleaved,
   a new directory per run, medians. Target: at most 4x the bash time.
2. Epilog: the installed epilog on a job directory of 100,000 files (empty files in directories of
   1000: the cheapest tree for rm, so the hardest case for this ratio), timed as slurmd sees it
   (until it exited and its output pipe closed), versus `rm -rf` of an identical tree. Target: at
   least 50x faster (the Epilog only renames; the node does not wait for the deletion).
3. Trash emptied: from the Epilog's start until the background reaper has emptied the trash, versus
   the same `rm -rf`. Target: at least 0.8x its speed (the reaper runs at nice 19, idle I/O class,
   so on a busy machine it yields, as it should).
4. Prolog with a per-job quota ([jobs] quota = 1G) on btrfs with simple quotas (a subvolume and a
   qgroup per job), versus bash `mkdir && chown` on the same filesystem. Target: at most 4x. And
   with quota = request, whose Prolog asks Slurm for the job's --tmp: here a stand-in `squeue`
   (a shell script that answers at once), so the figure is the query's cost on the node (a
   process start); slurmctld's side is counted in tests/cluster/test_quota.py with sdiag.

The filesystem is a 256 GiB sparse file on a loop device (a few MB on disk), mounted as setup
mounts the volume (noatime,nodiratime): at that size ext4 gets the 1 GiB journal it has on a real
multi-disk NVMe volume. On a small file (4 GiB: 64 MiB journal) the journal fills up while the
100,000 files are written, and the Epilog's one rename then waits several ms for a checkpoint that
a real volume would not need. The Epilog's floor is the interpreter's start (printed for scale):
on a 2-core machine that other work keeps busy its wall time, and so figure 2, varies run to run;
its CPU time is printed as well. Each figure is printed with its target and PASS or MISS.

Needs root: it works in a private mount namespace (tmpfs over the tool's state dirs, the loop
filesystem mounted there), installs the tool into a temporary prefix with `make install` (or uses
--prefix or --checkout), and detaches the loop device it made.
Usage: bench/bench_jobs.py [--runs N] [--files N] [--reps N] [--fs ext4|xfs] [--size-gb N] [--prefix DIR | --checkout]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lab.kernel import LoopFactory, sh  # noqa: E402
from lab.sandbox import Sandbox  # noqa: E402

USER, GROUP = "nobody", "nogroup"
TRASH = ".slurm-scratch-trash"

MKDIR_CHOWN = """#!/bin/bash
mkdir -p -m 0700 "$1" && chown "$2" "$1"
"""


def install(prefix: Path) -> Path:
    subprocess.run(["make", "-s", "install", f"PREFIX={prefix}"], cwd=REPO, check=True, capture_output=True, timeout=900)
    return prefix / "libexec" / "slurm-scratch"


def slurm_env(job_id: int, config: Path, context: str) -> dict[str, str]:
    import pwd

    entry = pwd.getpwnam(USER)
    return {
        "SLURMD_NODENAME": "bench1",
        "SLURM_CLUSTER_NAME": "bench",
        "SLURM_JOB_ID": str(job_id),
        "SLURM_JOBID": str(job_id),
        "SLURM_JOB_UID": str(entry.pw_uid),
        "SLURM_JOB_GID": str(entry.pw_gid),
        "SLURM_JOB_USER": USER,
        "SLURM_UID": str(entry.pw_uid),
        "SLURM_JOB_PARTITION": "bench",
        "SLURM_SCRIPT_CONTEXT": context,
        "SLURM_SCRATCH_CONF": str(config),
    }


def spawn_ms(argv: list[str], env: dict[str, str]) -> float:
    """Wall time of one child process (stdout/stderr to /dev/null), in ms; fails loudly on error."""
    actions = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_WRONLY, 0) for fd in (1, 2)]
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
    _, status = os.waitpid(pid, 0)
    elapsed = (time.perf_counter() - start) * 1000
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: {' '.join(argv)} failed with {os.waitstatus_to_exitcode(status)}")
    return elapsed


def spawn_piped(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run a child as slurmd does (stdout+stderr into a pipe read to end-of-file): wall ms until
    it exited and its pipe closed, its CPU ms (user+system), and its output."""
    read_end, write_end = os.pipe()
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0), (os.POSIX_SPAWN_DUP2, write_end, 1), (os.POSIX_SPAWN_DUP2, write_end, 2), (os.POSIX_SPAWN_CLOSE, read_end)]
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status, usage = os.wait4(pid, 0)
    elapsed = (time.perf_counter() - start) * 1000
    output = b"".join(chunks).decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: {' '.join(argv)} failed with {os.waitstatus_to_exitcode(status)}: {output}")
    return elapsed, (usage.ru_utime + usage.ru_stime) * 1000, output


def build_tree(root: Path, files: int, owner: tuple[int, int] | None = None) -> None:
    """`files` empty files in directories of 1000, like a job's output."""
    per_dir = 1000
    root.mkdir(exist_ok=True)
    for d in range((files + per_dir - 1) // per_dir):
        sub = root / f"d{d:04d}"
        sub.mkdir()
        for f in range(min(per_dir, files - d * per_dir)):
            os.close(os.open(sub / f"f{f:05d}", os.O_CREAT | os.O_WRONLY, 0o644))
        if owner:
            os.chown(sub, *owner)
    os.sync()


def wait_empty(trash: Path, timeout: float) -> float:
    """Poll until the trash is empty; returns the time it became so (perf_counter)."""
    deadline = time.monotonic() + timeout
    while os.listdir(trash):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {trash} not emptied within {timeout:g} s")
        time.sleep(0.005)
    return time.perf_counter()


@contextlib.contextmanager
def bench_workspace(name: str):
    """(work dir, LoopFactory) in a private mount namespace; at the end, a reaper still emptying
    <work>/scratch's trash gets its time (it holds the filesystem busy), then every loop device is
    detached and the work dir removed, however the benchmark ended."""
    sandbox = Sandbox()
    work = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    loops = LoopFactory(work)
    try:
        sandbox.open()
        yield work, loops
    finally:
        try:
            trash = work / "scratch" / TRASH
            if trash.is_dir():
                wait_empty(trash, timeout=300)
        except SystemExit:
            pass
        finally:
            loops.cleanup()
            sandbox.close()
            sh("rm", "-rf", "--one-file-system", str(work), check=False)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def bench_prolog(hooks: Path, mount_point: Path, config: Path, runs: int, first_job: int = 100000) -> tuple[float, float, float]:
    """Medians (ms) of the Prolog, the bash baseline and, for scale, a bare `python3 -I -S -c pass`."""
    script = mount_point.parent / "mkdir_chown.sh"
    script.write_text(MKDIR_CHOWN)
    script.chmod(0o755)
    python = os.path.realpath(Path(hooks / "prolog").read_text().splitlines()[0][2:].split()[0])
    bash_env = {"PATH": "/usr/bin:/bin"}
    owner = f"{USER}:{GROUP}"
    samples: dict[str, list[float]] = {"prolog": [], "bash": [], "python": []}
    warmup = 10
    for i in range(runs + warmup):
        job_id = first_job + i
        calls = [
            ("prolog", lambda: spawn_ms([str(hooks / "prolog")], slurm_env(job_id, config, "prolog_slurmd"))),
            ("bash", lambda: spawn_ms(["/bin/bash", str(script), str(mount_point / f"bash_{job_id}"), owner], bash_env)),
            ("python", lambda: spawn_ms([python, "-I", "-S", "-c", "pass"], {})),
        ]
        shift = i % len(calls)  # rotate the order so that no one always runs first
        for name, call in calls[shift:] + calls[:shift]:
            elapsed = call()
            if i >= warmup:
                samples[name].append(elapsed)
    made = mount_point / f"job_{first_job}"
    st = os.stat(made)
    if (st.st_uid, st.st_mode & 0o7777) != (65534, 0o700):
        raise SystemExit(f"bench: the Prolog made {made} with uid {st.st_uid} mode {st.st_mode & 0o7777:o}")
    return statistics.median(samples["prolog"]), statistics.median(samples["bash"]), statistics.median(samples["python"])


def bench_epilog(hooks: Path, mount_point: Path, config: Path, files: int, reps: int) -> dict[str, float]:
    """Medians (ms): rm -rf (wall, CPU), the Epilog (wall, CPU, its own logged work), and the time
    from the Epilog's start until the trash is empty."""
    samples: dict[str, list[float]] = {"rm": [], "rm_cpu": [], "epilog": [], "epilog_cpu": [], "work": [], "emptied": []}
    trash = mount_point / TRASH
    for rep in range(reps):
        job_id = 200000 + rep

        def baseline() -> None:
            tree = mount_point / f"baseline_{rep}"
            build_tree(tree, files)
            wall, cpu, _ = spawn_piped(["/bin/rm", "-rf", "--", str(tree)], {"PATH": "/usr/bin:/bin"})
            samples["rm"].append(wall)
            samples["rm_cpu"].append(cpu)

        def epilog() -> None:
            spawn_ms([str(hooks / "prolog")], slurm_env(job_id, config, "prolog_slurmd"))
            job_dir = mount_point / f"job_{job_id}"
            build_tree(job_dir, files, owner=(65534, 65534))
            start = time.perf_counter()
            wall, cpu, output = spawn_piped([str(hooks / "epilog")], slurm_env(job_id, config, "epilog_slurmd"))
            if job_dir.exists():
                raise SystemExit(f"bench: the Epilog left {job_dir}: {output}")
            emptied = wait_empty(trash, timeout=600)
            samples["epilog"].append(wall)
            samples["epilog_cpu"].append(cpu)
            samples["emptied"].append((emptied - start) * 1000)
            retired = [line for line in output.splitlines() if " epilog retired " in line]
            if retired:  # "... (1.9 ms)": the process scan, the rename, starting the reaper
                samples["work"].append(float(retired[-1].rsplit("(", 1)[1].split()[0]))

        for step in ((baseline, epilog) if rep % 2 == 0 else (epilog, baseline)):
            step()
    return {name: statistics.median(values or [0.0]) for name, values in samples.items()}


STAND_IN_SQUEUE = """#!/bin/sh
echo "2G N/A"
"""


def bench_quota(hooks: Path, work: Path, loops: LoopFactory, runs: int) -> None:
    """Figure 4: the Prolog with quota = off (for scale), 1G and request, on btrfs with simple quotas."""
    from slurm_scratch.volume import apply

    mount_point = work / "scratch-quota"
    loops.filesystem("btrfs", size_mb=64 * 1024, mount_point=str(mount_point), options="noatime,nodiratime")
    mount_point.chmod(0o755)
    apply.quotas(str(mount_point))
    squeue = work / "squeue"
    squeue.write_text(STAND_IN_SQUEUE)
    squeue.chmod(0o755)
    config = work / "slurm-scratch-quota.conf"
    for quota, first_job, what in (("off", 200000, "quota = off"), ("1G", 300000, "quota = 1G"), ("request", 400000, "quota = request")):
        mode = "mount_mode = 0755\n" if quota == "off" else ""  # as with a quota, for the same baseline
        config.write_text(f"[volume]\nmount_point = {mount_point}\n{mode}[jobs]\nquota = {quota}\n[slurm]\nsqueue = {squeue}\n")
        config.chmod(0o644)
        prolog, bash, _ = bench_prolog(hooks, mount_point, config, runs, first_job)
        ratio = prolog / bash
        print(f"  prolog, {what:16s} {prolog:8.2f} ms   bash mkdir+chown {bash:8.2f} ms   ratio {ratio:5.2f}x   "
              + {"off": "(btrfs, for scale)", "1G": f"target <= 4x     {verdict(ratio <= 4)}"}.get(quota, "(stand-in squeue)"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="Prolog runs (and bash runs), interleaved")
    parser.add_argument("--files", type=int, default=100_000, help="files in the Epilog's job directory")
    parser.add_argument("--reps", type=int, default=9, help="Epilog / rm -rf repetitions")
    parser.add_argument("--fs", choices=("ext4", "xfs"), default="ext4")
    parser.add_argument("--size-gb", type=int, default=256, help="size of the sparse loop filesystem (default 256: see above)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--prefix", type=Path, help="use this `make install` prefix instead of installing")
    where.add_argument("--checkout", action="store_true", help="time the checkout's hooks/ instead of an install")
    parser.add_argument("--metrics", action="store_true", help="hooks leave their figures for the metrics, as with [health] metrics_dir set")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_jobs: needs root (loop devices, mounts); skipped")
        return 0

    sandbox = Sandbox()
    work = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    loops = LoopFactory(work)
    try:
        sandbox.open()
        if args.checkout:
            hooks, what = REPO / "hooks", "checkout hooks/"
        elif args.prefix:
            hooks, what = args.prefix / "libexec" / "slurm-scratch", f"installed hooks in {args.prefix}"
        else:
            hooks, what = install(work / "prefix"), "installed hooks (make install into a temporary prefix)"
        mount_point = work / "scratch"
        # noinit_itable: no background zeroing of a big sparse ext4's inode tables during the run.
        options = "noatime,nodiratime" + (",noinit_itable" if args.fs == "ext4" else "")
        loops.filesystem(args.fs, size_mb=args.size_gb * 1024, mount_point=str(mount_point), options=options)
        mount_point.chmod(0o1777)
        config = work / "slurm-scratch.conf"
        config.write_text(f"[volume]\nmount_point = {mount_point}\n")
        config.chmod(0o644)
        if args.metrics:  # what a health check with [health] metrics_dir makes: the hooks append to it
            from slurm_scratch.layout import HOOK_FIGURES

            Path(HOOK_FIGURES).parent.mkdir(parents=True, exist_ok=True)
            Path(HOOK_FIGURES).touch(mode=0o600)
            what += ", metrics on (figures left in /run)"

        load = os.getloadavg()[0]
        print(f"bench_jobs: {args.fs} on a {args.size_gb} GiB sparse loop device, {what}, {os.cpu_count()} CPUs, load average {load:.2f}")
        prolog, bash, python = bench_prolog(hooks, mount_point, config, args.runs)
        ratio = prolog / bash
        print(f"  prolog (new job dir)     {prolog:8.2f} ms   bash mkdir+chown {bash:8.2f} ms   ratio {ratio:5.2f}x   target <= 4x     {verdict(ratio <= 4)}")
        print(f"    for scale: the hook's interpreter with -I -S, doing nothing: {python:.2f} ms")
        figures = bench_epilog(hooks, mount_point, config, args.files, args.reps)
        rm, epilog, emptied = figures["rm"], figures["epilog"], figures["emptied"]
        speedup = rm / epilog
        speed = rm / emptied
        print(f"  epilog ({args.files} files)  {epilog:8.2f} ms   rm -rf           {rm:8.2f} ms   faster {speedup:5.1f}x   target >= 50x    {verdict(speedup >= 50)}")
        print(f"    CPU time: Epilog {figures['epilog_cpu']:.1f} ms, rm -rf {figures['rm_cpu']:.1f} ms; the Epilog's own work "
              f"(process scan, rename, starting the reaper) {figures['work']:.2f} ms; the rest is interpreter start and imports")
        print(f"  trash emptied            {emptied:8.2f} ms   rm -rf           {rm:8.2f} ms   speed {speed:6.2f}x   target >= 0.8x   {verdict(speed >= 0.8)}")
        bench_quota(hooks, work, loops, args.runs)
        print(f"  (medians: {args.runs} Prolog/bash runs interleaved; {args.reps} Epilog/rm -rf repetitions, alternating order)")
        if args.metrics:
            from slurm_scratch.layout import HOOK_FIGURES

            print(f"  figures left for the metrics: {len(Path(HOOK_FIGURES).read_text().splitlines())} lines")
        return 0
    finally:
        try:
            # Let a reaper still at work finish before unmounting (it holds the filesystem busy).
            deadline = time.monotonic() + 300
            for trash in (work / "scratch" / TRASH, work / "scratch-quota" / TRASH):
                while trash.is_dir() and os.listdir(trash) and time.monotonic() < deadline:
                    time.sleep(0.05)
            time.sleep(0.2)
        finally:
            loops.cleanup()  # unmount and detach whatever happened above
            sandbox.close()
            sh("rm", "-rf", "--one-file-system", str(work), check=False)


if __name__ == "__main__":
    sys.exit(main())
