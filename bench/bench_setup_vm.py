#!/usr/bin/python3
"""Cold setup of 4 EC2 instance-store disks to a mounted /scratch: `slurm-scratch setup` versus
the seed's sequence (ParallelCluster's setup-ephemeral-drives.sh: pvcreate, vgcreate vg.01,
lvcreate -i 4 -I 64 -l 100%FREE, `mkfs -t ext4` with its default options, mount
noatime,nodiratime, chmod 1777), on the same kind of disks, in one run of the test VM.

Both run on blank NVMe/TCP disks with the real EC2 identity (tests/vm), sparse files in guest
memory, once with small disks and once with real instance-store sizes (mkfs's work grows with
the size). Rounds alternate which goes first; each round gets new blank disks. Medians; each
ratio is printed with its target (at least 3x faster) and PASS or MISS, with both sides' steps. Needs root, qemu-system-x86 and mmdebstrap (the VM image
is built and cached on first use, as for the VM tests).
Usage: bench/bench_setup_vm.py [--rounds N] [--disks N] [--sizes 16G,1900G]
(`--guest` is how the VM runs this same file.)

Emulated disks say nothing about real NVMe discard cost: mkfs's default whole-device discard of a
real 3.7 TB instance-store disk took ~18 s in the field, which this figure does not include.
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_RATIO = 3.0
MOUNT_POINT = "/scratch"


SEED_STEPS = (
    ("pvcreate", "-y", "{devices}"),
    ("vgcreate", "-y", "vg.01", "{devices}"),
    ("lvcreate", "-y", "-i", "{count}", "-I", "64", "-l", "100%FREE", "-n", "lv_ephemeral", "vg.01"),
    ("mkfs", "-t", "ext4", "/dev/vg.01/lv_ephemeral"),
    ("mkdir", "-p", MOUNT_POINT),
    ("mount", "-v", "-t", "ext4", "-o", "noatime,nodiratime", "/dev/vg.01/lv_ephemeral",
     MOUNT_POINT),
    ("chmod", "1777", MOUNT_POINT),
)


def seed_sequence(devices: list[str]) -> list[tuple[str, float]]:
    """Run the seed's commands; returns (command, seconds) for each."""
    from lab.nvme_disks import sh

    timings = []
    for step in SEED_STEPS:
        argv: list[str] = []
        for word in step:
            argv += devices if word == "{devices}" else [word.format(count=len(devices))]
        started = time.monotonic()
        sh(*argv)
        timings.append((step[0], time.monotonic() - started))
    return timings


def guest_main(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO))
    from lab import guest_node as node
    from lab.nvme_disks import mount_backing_tmpfs

    backing = Path("/var/tmp/bench-disks")
    mount_backing_tmpfs(backing, size=args.tmpfs)
    config = node.write_config(Path("/tmp/bench.conf"), {"devices": "aws"})
    for size in args.sizes.split(","):
        measure(node, config, backing, args.disks, size, args.rounds)
    return 0


def measure(node, config: Path, backing: Path, count: int, size: str, rounds: int) -> None:
    from lab.nvme_disks import DiskRig

    times: dict[str, list[float]] = {"seed": [], "tool": []}
    tool_log = ""
    seed_log: list[tuple[str, float]] = []
    for round_number in range(rounds):
        order = ["seed", "tool"] if round_number % 2 == 0 else ["tool", "seed"]
        for which in order:
            rig = DiskRig(backing)
            disks = rig.create(count, size=size)
            devices = [str(disk.device()) for disk in disks]
            started = time.monotonic()
            if which == "seed":
                seed_log = seed_sequence(devices)
            else:
                tool_log = node.setup_ok(config).stderr
            elapsed = time.monotonic() - started
            assert node.mount_of(MOUNT_POINT) is not None, f"{which}: {MOUNT_POINT} not mounted"
            times[which].append(elapsed)
            print(f"setup_vm: {count} x {size}, round {round_number + 1}, {which}: "
                  f"{elapsed:.2f} s", flush=True)
            problems = node.reset_node() + rig.destroy()
            if problems:
                print(f"setup_vm: cleanup problems: {problems}", flush=True)
    print(f"setup_vm: {count} x {size}: the seed's steps, last round: " +
          ", ".join(f"{name} {seconds:.2f} s" for name, seconds in seed_log))
    steps = [line.split("setup: ", 1)[1] for line in tool_log.splitlines()
             if line.startswith("slurm-scratch: setup:")]
    print(f"setup_vm: {count} x {size}: the tool's steps, last round: " + "; ".join(steps))
    seed = statistics.median(times["seed"])
    tool = statistics.median(times["tool"])
    ratio = seed / tool
    verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
    print(f"setup_vm: cold setup of {count} x {size} disks to a mounted {MOUNT_POINT}, medians of "
          f"{rounds}: seed {seed:.2f} s, slurm-scratch setup {tool:.2f} s: {ratio:.2f}x "
          f"(target >= {TARGET_RATIO:g}x) {verdict}", flush=True)


def host_main(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO))
    from lab.vm_boot import qemu_unavailable_reason, run_in_vm

    reason = qemu_unavailable_reason()
    if reason:
        print(f"setup_vm: cannot run: {reason}", file=sys.stderr)
        return 1
    guest_argv = ["python3", "/src/bench/bench_setup_vm.py", "--guest", "--rounds",
                  str(args.rounds), "--disks", str(args.disks), "--sizes", args.sizes,
                  "--tmpfs", args.tmpfs]
    result = run_in_vm("cd /src && PYTHONPATH=/src " + shlex.join(guest_argv), timeout_s=900,
                       memory_mb=args.memory_mb)
    sys.stdout.write(result.output)
    if result.exit_code != 0:
        print(f"setup_vm: the VM run failed: {result.describe_failure()}", file=sys.stderr)
        return 1
    print(f"setup_vm: VM run (boot to power-off) {result.seconds:.0f} s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--disks", type=int, default=4)
    parser.add_argument("--sizes", default="16G,1900G",
                        help="comma-separated sizes of each (sparse) disk; one figure per size "
                             "(1900G: an i3.8xlarge's 4 x 1.9 TB instance store)")
    parser.add_argument("--memory-mb", type=int, default=6144, help="the VM's memory")
    parser.add_argument("--tmpfs", default="4g", help="guest tmpfs holding the disks' data "
                        "(the seed's mkfs writes a journal of up to 1 GiB)")
    parser.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    return guest_main(args) if args.guest else host_main(args)


if __name__ == "__main__":
    sys.exit(main())
