"""The health wing: the health check (HealthCheckProgram, NHC, cron): check the scratch volume for real, drain or
resume the node, and do the housekeeping (sweep orphans, expire kept directories, empty the trash).

Checks; each returns a Finding (check name, healthy?, one line of text):
  mount     mounted at [volume] mount_point, from the device and with the filesystem recorded when
            the volume was built (/var/lib/slurm-scratch/volume.json), else those config implies
  writable  not mounted (or remounted) read-only
  layers    for the recorded backend only: LV active, not partial, not suspended, with the
            recorded number of disks (sysfs + `lvs --readonly`, which takes no LVM lock); md
            array active, not degraded, with the recorded disks (sysfs); btrfs not mounted
            degraded, with the recorded disks (sysfs)
  statvfs   free space and free inodes above [health] min_free_percent / min_free_inodes_percent
  probe     create + write + fsync + drop cache + read back + unlink a 4 KiB file in the
            root-owned trash dir (<mount_point>/.slurm-scratch-trash, never a user-writable one)
  errors    ext4's error count (/sys/fs/ext4/<dev>/errors_count) is 0
  io        the kernel's I/O errors on a member disk or the volume since the last run, at most
            [health] io_errors_max within io_errors_window; past it, sticky until
            `healthcheck --clear-io-errors` or a new boot (io_errors.py, kmsg.py)
statvfs and the probe touch the filesystem: they run as two steps of one forked child, each under
its own timeout ([health] check_timeout, probe_timeout), while this process does the other checks;
a step still running at its timeout gets the child SIGKILLed and is itself a finding ("probe timed
out after 10 s"), so a stuck disk cannot hang the health check. A killed child that is still
stuck in the kernel is remembered (/run/slurm-scratch/probe-stuck): no new one is started while it
lives, and the finding stays the same. The rest reads /proc and /sys (and runs lvs).

Output: one line per problem on stdout, most important first (or one "ok: ..." line when
healthy); exit 0 healthy, 1 not: whatever else runs, a run that prints "ok" and exits 0 has
itself just found the volume healthy. `[health] repair = yes` lets a full run (not `--report-only`)
run volume setup when the volume is not mounted, then check again (default: only observe and
report).

Runs that overlap (slurmd, cron, NHC) never hide a fault from each other:
- `--report-only` takes no lock: it runs the checks, prints, and changes nothing in Slurm or on the
  volume (no repair, no housekeeping). Checks of two runs at once are harmless: each probe has a
  file name of its own (PID and a nanosecond clock).
- A full run takes /run/slurm-scratch/health.lock for its checks and its exchange with Slurm
  (reconcile), so that the later run's finding is the one Slurm gets. A second full run waits for
  that lock, at most as long as the first may hold it (`lock_wait_bound`: its checks and four
  [slurm] timeouts of Slurm calls, plus LOCK_SLACK_SECONDS), then reconciles its own finding. If the lock is still
  held then (a stuck or deliberately paused holder), it checks and reports like `--report-only`.
- Housekeeping runs after the check lock is released, under /run/slurm-scratch/housekeeping.lock,
  taken without waiting: when another run is doing the housekeeping, this one skips it. So checks
  and reports never wait on housekeeping.
Worst case, with C = check_timeout + probe_timeout (the checks) and T = [slurm] timeout: a full
run waits at most lock_wait_bound = C + 4 T + LOCK_SLACK_SECONDS for the check lock, checks (C),
talks to Slurm for at most 4 T (`scontrol --version` with pyslurm, show node, slurmd's TmpFS
measured again before a resume, update), then housekeeps within [health] housekeeping_seconds plus
its 2 Slurm calls (`scontrol listpids`, `squeue`): 2 C + 10 T + housekeeping_seconds + 5 s in all
(205 s with the defaults; C + 4 T + housekeeping_seconds + 2 T when no other full run holds the lock).
`--report-only`: C. (`repair` adds volume setup's own bounds and one more round of checks.)

Drain reason = `[slurm] drain_prefix` + the first problem in this order (mount, kernel I/O errors,
writable, layers, timed out, space/inodes, probe failure, fs errors), e.g. with mount_point /scratch
and defaults:
  scratch: /scratch not mounted
  scratch: I/O errors on /dev/nvme1n1
  scratch: /scratch is xfs, expected ext4
  scratch: /scratch mounted from /dev/loop3, expected /dev/vg.01/lv_ephemeral
  scratch: /scratch read-only
  scratch: LV vg.01/lv_ephemeral not active | partial (a disk is missing) | has 3 disks, 4 recorded
  scratch: md array md127 inactive | degraded (1 disks missing) | has 3 disks, 4 recorded
  scratch: btrfs on /scratch mounted degraded | has 1 disks, 2 recorded
  scratch: probe timed out after 10 s
  scratch: statvfs timed out after 30 s
  scratch: /scratch 98% full (min free 3%)
  scratch: /scratch inodes 99% used (min free 3%)
  scratch: /scratch probe failed: write: Input/output error
  scratch: /scratch has 2 ext4 errors
Drain/resume rules and the no-RPC-when-healthy rule: see health/drain.py. On a broken volume the Prolog
and Epilog only call `record_hook_finding` (a file in /run/slurm-scratch) and never wait on
slurmctld; the next full run replaces their "Prolog error"/"Epilog error" with its own reason.

After the checks, a healthy node sweeps orphaned job directories and empties the trash, within
[health] housekeeping_seconds. The sweep asks slurmctld (squeue) only when a candidate exists: a
job directory older than [jobs] sweep_guard whose job has no processes on this node (`scontrol
listpids`, answered by this node's slurmstepd daemons). With [jobs] keep_failed set, it also moves
kept directories past their time into the trash, and earlier, oldest first, while free space or
inodes are under [jobs] keep_reclaim_free_percent (above the drain thresholds); then a node whose
only problem is space runs the housekeeping too, so that it gets the space back and is resumed.
"""
# The modules: findings (a check's result and the drain reason's order), checks (what is checked,
# and the timed child for statvfs and the probe), stuck (the memory of a stuck child), recorded
# (what the checks need of the volume record), housekeeping (sweep and reaper after a healthy
# check), drain (the drain/resume policy), slurm (the Slurm backends), entry (locks, the run);
# kmsg and io_errors (the kernel I/O error check), outputs (what a run leaves: latest findings,
# hook_figures, metrics, with backlog), status (the `status` command).
