#!/usr/bin/python3
"""The health check on a healthy node versus what NHC does for the same volume, as a ratio.

Baseline: a bash script doing what LBNL NHC's check_fs_mount_rw, check_fs_free and check_fs_ifree
do for one mount point: read /proc/self/mounts (mounted? rw?), then `df -Pk` and `df -Pi` (free
space and inodes above a percentage). It never touches the filesystem itself.

Contender: `hooks/healthcheck` as slurmd runs it (environment: SLURMD_NODENAME only, plus
SLURM_SCRATCH_CONF for the bench's config), in its steady state on a healthy node: the volume
record present, the node's state remembered in /run/slurm-scratch (so no Slurm RPC, as on any
healthy node after its first check), no job directories. It checks more: device and filesystem
against the record, a write + fsync + read-back probe and statvfs in timed child processes, ext4's
error count.

Also timed: the same hook with `[health] metrics_dir` set (it imports prometheus_client and writes the
textfile), printed as the added cost per check. All run on the same real ext4 on a loop device, interleaved, as child processes of this one;
the medians and their ratio are printed (target: ratio <= 1.0). Needs root: it works in a private
mount namespace (tmpfs over the tool's state dirs, the loop filesystem mounted there) and removes
the loop device it made. Usage: bench/bench_health.py [--rounds N]
"""

from __future__ import annotations

import argparse
import atexit
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from lab.sandbox import Sandbox  # noqa: E402
HOOK = REPO / "hooks" / "healthcheck"
TOOLS_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}

NHC_LIKE = r"""#!/bin/bash
# What NHC's check_fs_mount_rw, check_fs_free and check_fs_ifree do for one mount point.
mp=$1 min_free=$2 min_ifree=$3
found=""
while read -r dev mnt fstype opts rest; do
  [ "$mnt" = "$mp" ] || continue
  found=1
  case ",$opts," in *,rw,*) ;; *) echo "$mp is not mounted read-write"; exit 1 ;; esac
done < /proc/self/mounts
[ -n "$found" ] || { echo "$mp is not mounted"; exit 1; }
while read -r fs size used avail pct mnt; do
  [ "$mnt" = "$mp" ] || continue
  (( avail * 100 < min_free * size )) && { echo "$mp: only $avail of $size KiB free"; exit 1; }
done < <(df -Pk)
while read -r fs inodes iused ifree ipct mnt; do
  [ "$mnt" = "$mp" ] || continue
  (( inodes > 0 && ifree * 100 < min_ifree * inodes )) && { echo "$mp: only $ifree of $inodes inodes free"; exit 1; }
done < <(df -Pi)
exit 0
"""

# The same plus what the health check adds that costs the most: a write + fsync + read + unlink probe.
NHC_LIKE_WITH_PROBE = NHC_LIKE.replace("exit 0\n", """probe="$mp/.bench-probe.$$"
dd if=/dev/zero of="$probe" bs=4096 count=1 conv=fsync status=none || { echo "$mp: probe write failed"; exit 1; }
cat "$probe" > /dev/null && rm -f "$probe" || { echo "$mp: probe failed"; exit 1; }
exit 0
""")

FAKE_SCONTROL = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/calls.log"
case "$1" in
show) echo "NodeName=$4 Arch=x86_64 State=IDLE ThreadsPerCore=1 Weight=1" ;;
esac
"""


def sh(*argv: str) -> str:
    return subprocess.run(list(argv), env=TOOLS_ENV, check=True, capture_output=True, text=True, timeout=120).stdout


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/", timeout=60)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{argv[0]} failed (exit {result.returncode}): {result.stderr.decode(errors='replace')}")
    return elapsed * 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_health: needs root (loop device, private mount namespace)", file=sys.stderr)
        return 2
    atexit.register(Sandbox().open().close)  # a private mount namespace, tmpfs state dirs
    work = Path(tempfile.mkdtemp(prefix="bench-health-"))
    image = work / "disk.img"
    with open(image, "wb") as stream:
        stream.truncate(512 * 1024 * 1024)
    device = sh("losetup", "--find", "--show", str(image)).strip()
    try:
        sh("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", str(device))
        mount_point = work / "scratch"
        mount_point.mkdir()
        sh("mount", "-o", "noatime,nodiratime", device, str(mount_point))
        os.chmod(mount_point, 0o1777)
        return run(work, device, str(mount_point), args.rounds)
    finally:
        subprocess.run(["umount", str(work / "scratch")], env=TOOLS_ENV, capture_output=True)
        subprocess.run(["losetup", "--detach", device], env=TOOLS_ENV, capture_output=True)
        image.unlink()


def run(work: Path, device: str, mount_point: str, rounds: int) -> int:
    scontrol = work / "scontrol"
    scontrol.write_text(FAKE_SCONTROL)
    scontrol.chmod(0o755)
    config = work / "slurm-scratch.conf"
    config.write_text(f"[volume]\nmount_point = {mount_point}\nbackend = single\n[slurm]\nscontrol = {scontrol}\n")
    config.chmod(0o644)
    textfiles = work / "textfile"  # metrics on: the same check, writing node_exporter's textfile too
    textfiles.mkdir()
    config_metrics = work / "slurm-scratch-metrics.conf"
    config_metrics.write_text(config.read_text() + f"[health]\nmetrics_dir = {textfiles}\n")
    config_metrics.chmod(0o644)
    baseline = work / "nhc-like.sh"
    baseline.write_text(NHC_LIKE)
    baseline.chmod(0o755)
    probing = work / "nhc-like-probe.sh"
    probing.write_text(NHC_LIKE_WITH_PROBE)
    probing.chmod(0o755)
    sys.path.insert(0, str(REPO))
    try:  # the record `setup` leaves on a node, as the health check reads it
        from slurm_scratch.volume import state

        state.write(state.VolumeRecord.from_json({
            "status": "ready", "backend": "single", "filesystem": "ext4", "device": device,
            "mount_point": mount_point, "mount_source": device,
            "members": [{"path": device, "serial": "", "model": "loop", "size_bytes": 512 << 20, "by_id": []}]}))
    except ImportError:
        print("bench_health: no volume.state module: running without a volume record")
    hook_env = {"SLURMD_NODENAME": "bench1", "SLURM_SCRATCH_CONF": str(config)}
    metrics_env = {**hook_env, "SLURM_SCRATCH_CONF": str(config_metrics)}
    timed([str(HOOK)], hook_env)  # the first check after boot asks Slurm (here: the fake) once
    calls_after_first = (work / "calls.log").read_text().splitlines()
    nhc_argv = [str(baseline), mount_point, "3", "3"]
    probing_argv = [str(probing), mount_point, "3", "3"]
    python_argv = ["/usr/bin/python3", "-I", "-S", "-c", "pass"]
    for _ in range(5):  # warm up all
        timed([str(HOOK)], hook_env)
        timed([str(HOOK)], metrics_env)
        timed(nhc_argv, TOOLS_ENV)
        timed(probing_argv, TOOLS_ENV)
        timed(python_argv, {})
    ours, ours_metrics, theirs, theirs_probing, python = [], [], [], [], []
    for _ in range(rounds):
        ours.append(timed([str(HOOK)], hook_env))
        ours_metrics.append(timed([str(HOOK)], metrics_env))
        theirs.append(timed(nhc_argv, TOOLS_ENV))
        theirs_probing.append(timed(probing_argv, TOOLS_ENV))
        python.append(timed(python_argv, {}))
    calls = (work / "calls.log").read_text().splitlines()
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)

    def line(label: str, samples: list[float]) -> str:
        return f"{label:<58} median {statistics.median(samples):6.1f} ms  p90 {statistics.quantiles(samples, n=10)[-1]:6.1f} ms"

    print(f"{rounds} interleaved runs each, on ext4 on {device}:")
    print(line("healthcheck (hook, healthy, steady state, no Slurm RPC)", ours))
    print(line("healthcheck with [health] metrics_dir (writes the .prom file)", ours_metrics))
    print(line("NHC-like bash (mounts + df -Pk + df -Pi)", theirs))
    print(line("NHC-like bash + write/fsync/read/unlink probe (dd, cat)", theirs_probing))
    print(line("for scale: /usr/bin/python3 -I -S -c pass", python))
    ratio = ours_median / theirs_median
    print(f"ratio healthcheck / NHC-like: {ratio:.2f} (target <= 1.00) {'PASS' if ratio <= 1.0 else 'MISS'}")
    print(f"ratio healthcheck / NHC-like with the same probe: {ours_median / statistics.median(theirs_probing):.2f}")
    metrics_median = statistics.median(ours_metrics)
    print(f"metrics on: +{metrics_median - ours_median:.1f} ms per check, ratio {metrics_median / ours_median:.2f} to metrics off "
          f"(prometheus_client's import; once a minute, off the job path); ratio to NHC-like {metrics_median / theirs_median:.2f}")
    print(f"Slurm calls: {len(calls_after_first)} on the first check after boot, "
          f"{len(calls) - len(calls_after_first)} in the {2 * (rounds + 5)} checks after it (half of them with metrics on)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
