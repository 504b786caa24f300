"""The health check (HealthCheckProgram, NHC, cron): check the scratch volume for real, drain or
resume the node, and do the housekeeping (sweep orphans, empty the trash).

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
  that lock, at most as long as the first may hold it (`lock_wait_bound`: its checks and three
  Slurm calls, plus LOCK_SLACK_SECONDS), then reconciles its own finding. If the lock is still
  held then (a stuck or deliberately paused holder), it checks and reports like `--report-only`.
- Housekeeping runs after the check lock is released, under /run/slurm-scratch/housekeeping.lock,
  taken without waiting: when another run is doing the housekeeping, this one skips it. So checks
  and reports never wait on housekeeping.
Worst case, with C = check_timeout + probe_timeout (the checks) and T = [slurm] timeout: a full
run waits at most lock_wait_bound = C + 3 T + LOCK_SLACK_SECONDS for the check lock, checks (C),
makes at most 3 Slurm calls (3 T), then housekeeps within [health] housekeeping_seconds plus its 2
Slurm calls (`scontrol listpids`, `squeue`): 2 C + 8 T + housekeeping_seconds + 5 s in all (185 s
with the defaults; C + 3 T + housekeeping_seconds + 2 T when no other full run holds the lock).
`--report-only`: C. (`repair` adds volume setup's own bounds and one more round of checks.)

Drain reason = `[slurm] drain_prefix` + the first problem in this order (mount, writable, layers,
timed out, space/inodes, probe failure, fs errors), e.g. with mount_point /scratch and defaults:
  scratch: /scratch not mounted
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
Drain/resume rules and the no-RPC-when-healthy rule: see drain.py. On a broken volume the Prolog
and Epilog only call `record_hook_finding` (a file in /run/slurm-scratch) and never wait on
slurmctld; the next full run replaces their "Prolog error"/"Epilog error" with its own reason.

After the checks, a healthy node sweeps orphaned job directories and empties the trash, within
[health] housekeeping_seconds. The sweep asks slurmctld (squeue) only when a candidate exists: a
job directory older than [jobs] sweep_guard whose job has no processes on this node (`scontrol
listpids`, answered by this node's slurmstepd daemons).
"""

from __future__ import annotations

import os
import time

from slurm_scratch import log, mounts, timed
from slurm_scratch.config import Config
from slurm_scratch.errors import EXIT_FAILURE, EXIT_OK, ScratchError
from slurm_scratch.layout import HEALTH_LOCK as LOCK_FILE
from slurm_scratch.layout import HOUSEKEEPING_LOCK, NOT_JOB_DIRS, PROBE_PREFIX, RUN_DIR, TRASH_NAME
from slurm_scratch.layout import PROBE_STUCK as STUCK_FILE
from slurm_scratch.layout import VOLUME_RECORD as RECORD_FILE
from slurm_scratch.layout import VOLUME_RECORD_CACHE as RECORD_CACHE
from slurm_scratch.record import Record

LOCK_SLACK_SECONDS = 5.0  # over the holder's bound: process start, imports, /proc and /sys reads
PROBE_SIZE = 4096

# Which problem names the drain reason when there are several (lower first).
_RANK = {"mount": 0, "writable": 1, "layers": 2, "hung": 3, "statvfs": 4, "probe": 5, "errors": 6}


class Finding(Record):
    check: str  # mount, writable, layers, statvfs, probe, errors ("hung": a check that timed out)
    healthy: bool
    text: str


def ok(check: str, text: str) -> Finding:
    return Finding(check=check, healthy=True, text=text)


def bad(check: str, text: str) -> Finding:
    return Finding(check=check, healthy=False, text=text)


# ---- the memory of a stuck check child ------------------------------------------------------


def _remember_stuck(pid: int, text: str) -> None:
    start = timed.start_time(pid)
    if start is not None:
        os.makedirs(RUN_DIR, mode=0o755, exist_ok=True)
        with open(STUCK_FILE, "w", encoding="utf-8") as stream:
            stream.write(f"{pid} {start} {text}\n")


def _still_stuck() -> str | None:
    """The finding of a check child killed earlier that is still stuck in the kernel (then no other
    is started: it would get stuck too), or None."""
    try:
        with open(STUCK_FILE, encoding="utf-8") as stream:
            pid_text, start, text = stream.read().strip().split(" ", 2)
    except (OSError, ValueError):
        return None
    if timed.still_running(int(pid_text), start):
        return text
    try:
        os.unlink(STUCK_FILE)
    except FileNotFoundError:
        pass
    return None


# ---- the checks -----------------------------------------------------------------------------


_CACHED_KEYS = ("status", "mount_point", "backend", "filesystem", "device", "mount_source", "fs_uuid", "vg_name", "lv_name", "md_name")


def _recorded(config: Config) -> dict | None:
    """The volume record (what setup built, volume.json) for this mount point, or None.

    What the checks need of it is cached in /run/slurm-scratch as key=value lines, keyed by the
    record's inode, size and mtime: parsing JSON costs ~10 ms of imports on every health check.
    """
    from slurm_scratch import statefile

    try:
        st = os.stat(RECORD_FILE)
    except FileNotFoundError:
        return None
    key = f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    cached = statefile.read_fields(RECORD_CACHE)
    if cached is not None and cached.get("key") == key:
        record: dict | None = {name: cached.get(name, "") for name in _CACHED_KEYS}
        record["members"] = [path for path in cached.get("members", "").split(",") if path]  # type: ignore[index]
    else:
        record = _read_record()
        if record is not None:
            fields = {"key": key, **{name: str(record.get(name) or "") for name in _CACHED_KEYS}}
            _, _, members = expected_volume(config, record)
            fields["members"] = ",".join(members or [])
            try:
                statefile.write_fields(RECORD_CACHE, fields)
            except OSError as exc:
                log.warning(f"healthcheck: cannot cache the volume record in {RECORD_CACHE}: {exc.strerror}")
    if record is None or (record.get("mount_point") or config.volume.mount_point) != config.volume.mount_point:
        return None
    return record


def _read_record() -> dict | None:
    try:
        from slurm_scratch import volume

        recorded = getattr(volume, "recorded", None)
        value = recorded() if recorded is not None else None
    except ScratchError as exc:
        log.warning(f"healthcheck: cannot read the volume record: {exc}")
        return None
    return value if isinstance(value, dict) else None


def _field(record: dict | None, *names: str):
    if not record:
        return None
    for name in names:
        if record.get(name) not in (None, "", [], ()):
            return record[name]
    return None


def expected_volume(config: Config, record: dict | None) -> tuple[str, str | None, list[str] | None]:
    """(backend, device or None, member disks or None) from the record, else from config."""
    backend = _field(record, "backend") or config.volume.backend
    device = _field(record, "device")
    members = _field(record, "members")
    if device is None and record is None:
        if backend == "lvm":
            device = f"/dev/{config.volume.vg_name}/{config.volume.lv_name}"
        elif backend == "mdadm":
            device = f"/dev/md/{config.volume.md_name}"
    if members is not None and not isinstance(members, (list, tuple)):
        members = None
    paths = [str(m.get("path", "?")) if isinstance(m, dict) else str(m) for m in members] if members else None
    return str(backend), (str(device) if device else None), paths


def _same_device(mount: mounts.Mount, device: str) -> bool:
    try:
        rdev = os.stat(device).st_rdev
        if rdev and f"{os.major(rdev)}:{os.minor(rdev)}" == mount.major_minor:
            return True
    except OSError:
        pass
    return os.path.realpath(device) == os.path.realpath(mount.source) or device == mount.source


def check_mount(config: Config, mount: mounts.Mount | None, record: dict | None) -> Finding:
    mount_point = config.volume.mount_point
    if mount is None:
        return bad("mount", f"{mount_point} not mounted")
    fstype = _field(record, "filesystem") or config.volume.filesystem
    if mount.fstype != fstype:
        return bad("mount", f"{mount_point} is {mount.fstype}, expected {fstype}")
    backend, device, _ = expected_volume(config, record)
    if device and backend != "btrfs" and mount.source != _field(record, "mount_source") and not _same_device(mount, device):
        return bad("mount", f"{mount_point} mounted from {mount.source}, expected {device}")
    return ok("mount", f"{mount_point} is {mount.fstype} on {mount.source}")


def check_writable(config: Config, mount: mounts.Mount) -> Finding:
    if "ro" in mount.options:
        return bad("writable", f"{config.volume.mount_point} read-only")
    return ok("writable", "read-write")


def _statvfs_work(mount_point: str):
    def work() -> str:
        st = os.statvfs(mount_point)
        return f"{st.f_blocks} {st.f_bavail} {st.f_files} {st.f_favail}"

    return work


def space_findings(config: Config, numbers: str) -> list[Finding]:
    """Free space and inode findings from the statvfs child's "blocks bavail files favail"."""
    mount_point = config.volume.mount_point
    blocks, bavail, files, favail = (int(value) for value in numbers.split())
    found = []
    if blocks > 0:
        free = 100.0 * bavail / blocks
        text = f"{mount_point} {100 - free:.0f}% full (min free {config.health.min_free_percent:g}%)"
        found.append(bad("statvfs", text) if free < config.health.min_free_percent else ok("statvfs", text))
    if files > 0:  # btrfs reports no inode limit
        free = 100.0 * favail / files
        text = f"{mount_point} inodes {100 - free:.0f}% used (min free {config.health.min_free_inodes_percent:g}%)"
        found.append(bad("statvfs", text) if free < config.health.min_free_inodes_percent else ok("statvfs", text))
    return found


def _probe_work(mount_point: str):
    def work() -> str:
        from slurm_scratch.layout import VolumeNotMounted, open_root, open_trash

        step = "open"
        started = time.monotonic()
        try:
            try:  # unmounted since mountinfo was read: do not write to the directory below it
                root_fd = open_root(mount_point, f"{mount_point} is no longer a mounted filesystem", consult_mountinfo=False)
            except VolumeNotMounted as exc:
                raise ScratchError(str(exc)) from None
            step = "trash dir"
            trash_fd = open_trash(root_fd, mount_point, create=True)
            assert trash_fd is not None
            name = f"{PROBE_PREFIX}{os.getpid()}.{time.time_ns()}"  # not a stuck earlier probe's file
            payload = (f"slurm-scratch health probe {os.getpid()} {time.time()}\n".encode() * 100)[:PROBE_SIZE]
            step = "create"
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=trash_fd)
            try:
                step = "write"
                if os.write(fd, payload) != len(payload):
                    raise ScratchError("short write")
                step = "fsync"
                os.fsync(fd)
                step = "read"
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # read from the disk, not the page cache
                if os.pread(fd, len(payload), 0) != payload:
                    raise ScratchError("read back different data")
            finally:
                os.close(fd)
            step = "unlink"
            try:
                os.unlink(name, dir_fd=trash_fd)
            except FileNotFoundError:
                pass  # the reaper empties this directory and may have been quicker
        except OSError as exc:
            raise ScratchError(f"{step}: {exc.strerror or exc}") from None
        except ScratchError as exc:
            raise ScratchError(f"{step}: {exc}") from None
        return f"{(time.monotonic() - started) * 1000:.1f}"

    return work


def _block_name(major_minor: str) -> str | None:
    try:
        return os.path.basename(os.path.realpath(f"/sys/dev/block/{major_minor}"))
    except OSError:
        return None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            return stream.read().strip()
    except OSError:
        return None


def check_fs_errors(config: Config, mount: mounts.Mount, sysfs: str = "/sys") -> Finding | None:
    if mount.fstype != "ext4":
        return None
    name = _block_name(mount.major_minor)
    count = _read(f"{sysfs}/fs/ext4/{name}/errors_count") if name else None
    if count is None or not count.isdigit():
        return None
    if int(count):
        return bad("errors", f"{config.volume.mount_point} has {count} ext4 errors")
    return ok("errors", "no ext4 errors")


def check_md(sysfs_block: str, name: str, members: list[str] | None) -> list[Finding]:
    """An md array from its sysfs directory (e.g. /sys/block/md127)."""
    state = _read(f"{sysfs_block}/md/array_state")
    if state is None:
        return [bad("layers", f"md array {name} not found")]
    if state in ("clear", "inactive", "suspended", "readonly", "broken"):
        return [bad("layers", f"md array {name} {state}")]
    degraded = _read(f"{sysfs_block}/md/degraded")
    if degraded and degraded.isdigit() and int(degraded):
        return [bad("layers", f"md array {name} degraded ({degraded} disks missing)")]
    try:
        present = [entry for entry in os.listdir(f"{sysfs_block}/md") if entry.startswith("dev-")]
    except OSError:
        present = []
    raid_disks = _read(f"{sysfs_block}/md/raid_disks")
    if members is not None and len(present) != len(members):
        return [bad("layers", f"md array {name} has {len(present)} disks, {len(members)} recorded")]
    if raid_disks and raid_disks.isdigit() and len(present) < int(raid_disks):
        return [bad("layers", f"md array {name} has {len(present)} of {raid_disks} disks")]
    return [ok("layers", f"md array {name} {state}, {len(present)} disks")]


def parse_lvs(text: str, lv: str, members: list[str] | None) -> list[Finding]:
    """`lvs --noheadings --separator '|' -o lv_attr,pv_count,vg_missing_pv_count VG/LV` -> findings."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    fields = [field.strip() for field in line.split("|")]
    if len(fields) < 3 or len(fields[0]) < 9:
        return [bad("layers", f"LV {lv} not found")]
    attr, pv_count, missing = fields[0], fields[1], fields[2]
    if attr[8] == "p" or (missing.isdigit() and int(missing)):
        return [bad("layers", f"LV {lv} partial (a disk is missing)")]
    # `lvs --readonly` does not ask device-mapper, so bookworm's LVM shows the state as 'X'
    # (unknown): then whether the LV is active is the mount check's answer (mounted from the LV's
    # device) and sysfs's (not suspended), not this one's.
    if attr[4] not in ("a", "X"):
        return [bad("layers", f"LV {lv} not active")]
    if members is not None and pv_count.isdigit() and int(pv_count) != len(members):
        return [bad("layers", f"LV {lv} has {pv_count} disks, {len(members)} recorded")]
    return [ok("layers", f"LV {lv} active, {pv_count} disks")]


def check_lvm(config: Config, mount: mounts.Mount | None, record: dict, members: list[str] | None) -> list[Finding]:
    from slurm_scratch import run

    lv = f"{record.get('vg_name') or config.volume.vg_name}/{record.get('lv_name') or config.volume.lv_name}"
    found = []
    if mount is not None:  # sysfs first: every disk of the mounted LV still there
        name = _block_name(mount.major_minor)
        if name and os.path.isdir(f"/sys/block/{name}/dm"):
            if _read(f"/sys/block/{name}/dm/suspended") == "1":
                found.append(bad("layers", f"LV {lv} suspended"))
    try:
        result = run.run(
            ["lvs", "--readonly", "--noheadings", "--separator", "|", "-o", "lv_attr,pv_count,vg_missing_pv_count", lv],
            timeout=config.health.check_timeout, check=False, quiet=True,
        )
    except ScratchError as exc:
        return found + [bad("hung" if "timed out" in str(exc) else "layers", f"lvs: {exc}")]
    if result.returncode != 0 and not result.stdout.strip():
        return found + [bad("layers", f"LV {lv} not found")]
    return found + parse_lvs(result.stdout, lv, members)


def check_btrfs(config: Config, mount: mounts.Mount, fsid: str, members: list[str] | None, sysfs: str = "/sys") -> list[Finding]:
    """A btrfs volume striped by btrfs itself: not mounted degraded, every recorded disk present."""
    mount_point = config.volume.mount_point
    if "degraded" in mount.options:
        return [bad("layers", f"btrfs on {mount_point} mounted degraded")]
    devices = None
    if fsid:
        try:
            devices = os.listdir(f"{sysfs}/fs/btrfs/{fsid}/devices")
        except OSError:
            devices = None
    if devices is None:  # find the filesystem by its mounted device
        source = os.path.basename(os.path.realpath(mount.source))
        try:
            for candidate in os.listdir(f"{sysfs}/fs/btrfs"):
                listed = f"{sysfs}/fs/btrfs/{candidate}/devices"
                if os.path.isdir(listed) and source in os.listdir(listed):
                    devices = os.listdir(listed)
                    break
        except OSError:
            pass
    if devices is None:
        return []
    if members is not None and len(devices) != len(members):
        return [bad("layers", f"btrfs on {mount_point} has {len(devices)} disks, {len(members)} recorded")]
    return [ok("layers", f"btrfs on {len(devices)} disks")]


def check_layers(config: Config, mount: mounts.Mount | None, record: dict | None) -> list[Finding]:
    """The layers below the filesystem, for the backend the volume was recorded with."""
    if record is None:
        return []
    backend, device, members = expected_volume(config, record)
    if backend == "lvm":
        return check_lvm(config, mount, record, members)
    if backend == "mdadm":
        name = _block_name(mount.major_minor) if mount is not None else None
        if name is None and device:
            name = os.path.basename(os.path.realpath(device))
        if not name:
            return [bad("layers", f"md array {config.volume.md_name} not found")]
        return check_md(f"/sys/block/{name}", name, members)
    if backend == "btrfs" and mount is not None and mount.fstype == "btrfs":
        return check_btrfs(config, mount, str(record.get("fs_uuid") or ""), members)
    return []


def run_checks(config: Config) -> list[Finding]:
    mount_point = config.volume.mount_point
    record = _recorded(config)
    mount = mounts.find_mount(mount_point)
    findings = [check_mount(config, mount, record)]
    if mount is None:
        return findings + check_layers(config, mount, record)
    writable = check_writable(config, mount)
    findings.append(writable)
    stuck = _still_stuck()
    child = None
    if stuck is None:  # statvfs and the probe run in one child, while this process goes on
        steps = [_statvfs_work(mount_point)]
        if writable.healthy and findings[0].healthy:
            steps.append(_probe_work(mount_point))
        child = timed.Child(steps)
    findings += check_layers(config, mount, record)
    errors = check_fs_errors(config, mount)
    if errors is not None:
        findings.append(errors)
    if child is None:
        return findings + [bad("hung", stuck)]
    timeouts = [config.health.check_timeout, config.health.probe_timeout]
    texts = [f"statvfs timed out after {timeouts[0]:g} s", f"probe timed out after {timeouts[1]:g} s"]
    for index, result in enumerate(child.results(timeouts[: child.count])):
        if result.status == "timeout":
            _remember_stuck(result.pid, texts[index])
            findings.append(bad("hung", texts[index]))
        elif index == 0:
            if result.status == "ok":
                findings += space_findings(config, result.text)
            elif result.status == "error":
                findings.append(bad("statvfs", f"{mount_point} statvfs failed: {result.text}"))
        elif result.status == "ok":
            findings.append(ok("probe", f"probe {result.text} ms"))
        elif result.status == "error":
            findings.append(bad("probe", f"{mount_point} probe failed: {result.text}"))
    return findings


def problems_of(findings: list[Finding]) -> list[Finding]:
    """The unhealthy findings, the one that names the drain reason first."""
    return sorted((f for f in findings if not f.healthy), key=lambda f: _RANK.get(f.check, 9))


# ---- housekeeping -----------------------------------------------------------------------------


def sweep_orphans(config: Config, node: str, deadline: float | None = None) -> int:
    """Retire orphaned job dirs until `deadline` (time.monotonic()); slurmctld is asked only when a
    local candidate exists. /proc is scanned once for all of them (see cleanup.sweep)."""
    from slurm_scratch import cleanup, slurm

    now = time.time()
    old = {found.job_id for found in cleanup.job_dirs(config, node, deadline) if found.st is None or now - found.st.st_mtime >= config.jobs.sweep_guard}
    if not old:
        return 0
    try:
        local = slurm.local_jobs(config, node)
    except ScratchError as exc:
        log.warning(f"healthcheck: scontrol listpids failed ({exc}); asking slurmctld")
        local = set()
    if not old - local or (deadline is not None and time.monotonic() >= deadline):
        return 0
    running = slurm.running_jobs(config, node)
    report = cleanup.sweep(config, node, running | local, deadline=deadline)
    if report.unfinished:
        log.info("healthcheck: the sweep ran out of [health] housekeeping_seconds; the next run goes on")
    return len(report.retired)


def housekeeping(config: Config, node: str, seconds: float) -> None:
    """Sweep and empty the trash, all of it (listing, scanning /proc, sweeping, deleting) within
    `seconds` plus the Slurm calls' own timeouts; what is left is the next run's."""
    from slurm_scratch import cleanup

    deadline = time.monotonic() + seconds
    mount_point = config.volume.mount_point
    try:
        entries = [name for name in os.listdir(mount_point) if name not in NOT_JOB_DIRS]
        if entries:
            swept = sweep_orphans(config, node, deadline)
            if swept:
                log.info(f"healthcheck: swept {swept} orphaned job directories")
        trash = f"{mount_point}/{TRASH_NAME}"
        remaining = deadline - time.monotonic()
        if remaining > 0 and os.path.isdir(trash) and any(not name.startswith(PROBE_PREFIX) for name in os.listdir(trash)):
            cleanup.reap(config, wait=False, max_seconds=remaining)
    except (ScratchError, OSError) as exc:
        log.error(f"healthcheck: housekeeping: {exc}")


# ---- entry points ---------------------------------------------------------------------------


def record_hook_finding(config: Config | None, finding: str, hook: str | None = None) -> None:
    """Remember why a Prolog or Epilog failed on a broken volume, for the next health check's
    drain reason (no Slurm call). `hook` defaults to what SLURM_SCRIPT_CONTEXT says."""
    from slurm_scratch import drain

    if hook is None:
        hook = os.environ.get("SLURM_SCRIPT_CONTEXT", "").partition("_")[0]
        hook = hook if hook in ("prolog", "epilog") else ""
    try:
        drain.record_hook_finding(finding, hook=hook)
    except OSError as exc:
        log.error(f"{hook or 'hook'}: cannot record the finding in {drain.HOOK_FILE}: {exc.strerror}")


record_prolog_finding = record_hook_finding  # the name the Prolog and Epilog call


def checks_bound(config: Config) -> float:
    """The longest `run_checks` may take: statvfs then the probe in the child (lvs runs meanwhile,
    under check_timeout)."""
    return config.health.check_timeout + config.health.probe_timeout


def lock_wait_bound(config: Config) -> float:
    """How long a full run waits for another's check lock: what that one's checks and Slurm calls
    (at most three: `scontrol --version` for `api = auto` with pyslurm, show, update) may take."""
    return checks_bound(config) + 3 * config.slurm.timeout + LOCK_SLACK_SECONDS


def _check_and_print(config: Config, repair: bool) -> list[Finding]:
    """Run the checks (and the repair when asked and nothing is mounted); print; the problems."""
    try:
        findings = run_checks(config)
    except OSError as exc:  # of this process (no fork, no /proc): not a finding about the volume
        raise ScratchError(f"cannot run the checks: {exc}") from None
    problems = problems_of(findings)
    if problems and repair and mounts.find_mount(config.volume.mount_point) is None:
        from slurm_scratch import volume

        log.warning(f"healthcheck: {problems[0].text}; repairing ([health] repair = yes)")
        try:
            volume.ensure_mounted(config)
        except ScratchError as exc:
            log.error(f"healthcheck: repair failed: {exc}")
        findings = run_checks(config)
        problems = problems_of(findings)
    if problems:
        print("\n".join(problem.text for problem in problems))
    else:
        print("ok: " + "; ".join(finding.text for finding in findings))
    return problems


def main(config: Config, node: str, report_only: bool = False) -> int:
    """`report_only`: check and print, never wait for another health check, never drain, resume,
    repair or clean up (for NHC or cron)."""
    from slurm_scratch import drain, locks

    timer = log.Timer()
    if report_only:
        return EXIT_FAILURE if _check_and_print(config, repair=False) else EXIT_OK
    wait = lock_wait_bound(config)
    lock_fd = locks.acquire(LOCK_FILE, wait)
    if lock_fd is None:
        log.warning(f"healthcheck: another health check has held {LOCK_FILE} for over {wait:g} s: checking and reporting only")
        return EXIT_FAILURE if _check_and_print(config, repair=False) else EXIT_OK
    try:
        problems = _check_and_print(config, config.health.repair)
        try:
            drain.reconcile(config, node, problems[0].text if problems else None)
        except ScratchError as exc:
            log.error(f"healthcheck: could not update the node's state in Slurm: {exc}")
    finally:
        os.close(lock_fd)
    if not problems and config.health.housekeeping_seconds > 0:
        housekeeping_fd = locks.acquire(HOUSEKEEPING_LOCK)
        if housekeeping_fd is None:
            log.info("healthcheck: another health check is doing the housekeeping; skipped")
        else:
            try:
                housekeeping(config, node, config.health.housekeeping_seconds)
            finally:
                os.close(housekeeping_fd)
    if problems:
        log.warning(f"healthcheck: {len(problems)} problem(s): {problems[0].text}", ms=timer.ms())
    return EXIT_FAILURE if problems else EXIT_OK
