"""The healthcheck hook on a real loop filesystem, run as Slurm runs it (an environment of only
SLURMD_NODENAME, plus SLURM_SCRATCH_CONF to find the test's config), against a fake `scontrol`
and `squeue`: small scripts that log their argv (and SLURM_CONF, PATH) and keep a node's state and
reason in files, changing them on `update` the way slurmctld does. The real scontrol path is
exercised by the cluster tests."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.fake_slurm import FakeSlurm
from slurm_scratch import layout
from slurm_scratch.health import drain, entry, slurm, stuck

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
HOOK = REPO / "hooks" / "healthcheck"
NODE = "n1"
TEST_UID = 4201  # sstest1 (tests/conftest.py)


class Node(FakeSlurm):
    """One simulated node: a mounted loop ext4 at `mount_point`, its config, and a fake Slurm."""

    def __init__(self, tmp_path: Path, loops, size_mb: int = 64, health_conf: str = "", mount_options: str | None = None) -> None:
        super().__init__(tmp_path / "slurm")
        self.fs = loops.filesystem("ext4", size_mb=size_mb, mount_point=str(tmp_path / "scratch"), options=mount_options)
        self.mount_point = self.fs.mount_point
        self.config = self.tool_config(
            tmp_path / "slurm-scratch.conf", f"mount_point = {self.mount_point}\nbackend = single\nfilesystem = ext4\n",
            health_conf, "slurm_conf = /etc/slurm-test/slurm.conf\n")

    def healthcheck(self) -> subprocess.CompletedProcess:
        env = {"SLURMD_NODENAME": NODE, "SLURM_SCRATCH_CONF": str(self.config)}
        return subprocess.run([str(HOOK)], env=env, capture_output=True, text=True, timeout=120, cwd="/")

    def remount(self, options: str | None = None) -> None:
        argv = ["mount"] + (["-o", options] if options else []) + [self.fs.device, self.mount_point]
        subprocess.run(argv, check=True, capture_output=True)

    def umount(self) -> None:
        subprocess.run(["umount", self.mount_point], check=True, capture_output=True)


@pytest.fixture(autouse=True)
def no_memory():
    """Each test starts as a node just booted: nothing in /run/slurm-scratch (a private tmpfs), and
    no volume record (these volumes are not built by setup: config says what to expect)."""

    def clear() -> None:
        for path in (drain.STATE_FILE, drain.HOOK_FILE, drain.RELEASED_HOOK_FILE, layout.PROBE_STUCK, layout.VOLUME_RECORD_CACHE, layout.VOLUME_RECORD):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    clear()
    yield
    clear()


@pytest.fixture
def node(tmp_path, loops) -> Node:
    return Node(tmp_path, loops)


DRAIN = f"update nodename={NODE} state=drain reason="
RESUME = f"update nodename={NODE} state=resume reason={slurm.RESUMED_REASON}"
SHOW = f"show node -o {NODE}"


def test_healthy_node_asks_slurm_once_after_boot_then_never(node: Node) -> None:
    first = node.healthcheck()
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("ok: ") and "probe" in first.stdout
    assert node.calls() == [SHOW]  # /run is empty after a boot: a drain of ours may need resuming
    for _ in range(3):
        assert node.healthcheck().returncode == 0
    assert node.calls() == [SHOW]  # the scale rule: no RPC from a healthy node


def test_scontrol_gets_slurm_conf_and_a_fixed_path(node: Node) -> None:
    node.healthcheck()
    line = (node.dir / "calls.log").read_text().splitlines()[0]
    assert "SLURM_CONF=/etc/slurm-test/slurm.conf" in line
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in line


def test_unmounted_volume_drains_and_remount_resumes(node: Node) -> None:
    assert node.healthcheck().returncode == 0
    node.umount()
    broken = node.healthcheck()
    assert broken.returncode == 1
    assert broken.stdout.splitlines() == [f"{node.mount_point} not mounted"]
    reason = f"scratch: {node.mount_point} not mounted"
    assert node.calls()[-2:] == [SHOW, DRAIN + reason]
    assert node.state() == ("IDLE+DRAIN", reason)
    calls = len(node.calls())
    assert node.healthcheck().returncode == 1
    assert len(node.calls()) == calls  # same finding, drained by us a moment ago: no RPC
    node.remount()
    assert node.healthcheck().returncode == 0
    assert node.calls()[calls:] == [SHOW, RESUME]
    assert node.state() == ("IDLE", "")
    assert node.healthcheck().returncode == 0
    assert len(node.calls()) == calls + 2


def test_read_only_remount(node: Node) -> None:
    node.remount("remount,ro")
    result = node.healthcheck()
    assert result.returncode == 1 and result.stdout.splitlines()[0] == f"{node.mount_point} read-only"
    assert node.state() == ("IDLE+DRAIN", f"scratch: {node.mount_point} read-only")
    node.remount("remount,rw")
    assert node.healthcheck().returncode == 0
    assert node.state() == ("IDLE", "")


def test_full_volume(node: Node) -> None:
    st = os.statvfs(node.mount_point)
    keep = st.f_blocks // 100  # leave 1% free, under the 3% threshold
    fd = os.open(f"{node.mount_point}/filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, (st.f_bavail - keep) * st.f_frsize)
    finally:
        os.close(fd)
    result = node.healthcheck()
    assert result.returncode == 1
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"{node.mount_point} 9") and first.endswith("% full (min free 3%)"), first
    assert node.state() == ("IDLE+DRAIN", f"scratch: {first}")
    os.unlink(f"{node.mount_point}/filler")
    assert node.healthcheck().returncode == 0
    assert node.state() == ("IDLE", "")


def test_inodes_exhausted(tmp_path, loops) -> None:
    node = Node(tmp_path, loops, size_mb=16)
    holder = Path(node.mount_point) / "many"
    holder.mkdir()
    count = 0
    try:
        while True:
            os.close(os.open(holder / str(count), os.O_WRONLY | os.O_CREAT, 0o600))
            count += 1
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    result = node.healthcheck()
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == f"{node.mount_point} inodes 100% used (min free 3%)"
    # The probe cannot create its file either; that is reported, but does not name the reason.
    assert any("probe failed: " in line and "No space left on device" in line for line in result.stdout.splitlines()), result.stdout
    assert node.state()[1] == f"scratch: {node.mount_point} inodes 100% used (min free 3%)"


def test_hung_probe_times_out_and_is_not_repeated_while_stuck(tmp_path, loops) -> None:
    node = Node(tmp_path, loops, health_conf="probe_timeout = 1")
    assert node.healthcheck().returncode == 0
    subprocess.run(["fsfreeze", "--freeze", node.mount_point], check=True)
    stuck_pid = None
    try:
        result = node.healthcheck()
        assert result.returncode == 1
        assert result.stdout.splitlines() == ["probe timed out after 1 s"]
        assert node.state() == ("IDLE+DRAIN", "scratch: probe timed out after 1 s")
        stuck_pid = stuck.stuck_pid()
        assert Path(f"/proc/{stuck_pid}").exists()
        calls = len(node.calls())
        again = node.healthcheck()  # the stuck probe is still there: no second one, same reason
        assert again.stdout.splitlines() == ["probe timed out after 1 s"]
        assert stuck.stuck_pid() == stuck_pid
        assert len(node.calls()) == calls
    finally:
        subprocess.run(["fsfreeze", "--unfreeze", node.mount_point], check=False)
    if stuck_pid is not None:
        deadline = time.monotonic() + 30
        while Path(f"/proc/{stuck_pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert node.healthcheck().returncode == 0
    assert node.state() == ("IDLE", "")


def test_ext4_errors(tmp_path, loops) -> None:
    node = Node(tmp_path, loops, mount_options="errors=continue")
    name = os.path.basename(node.fs.device)
    trigger = Path(f"/sys/fs/ext4/{name}/trigger_fs_error")
    if not trigger.exists():
        pytest.skip("this kernel has no ext4 trigger_fs_error")
    assert node.healthcheck().returncode == 0
    trigger.write_text("slurm-scratch test\n")  # a real ext4_error(): errors_count goes up
    result = node.healthcheck()
    assert result.returncode == 1
    assert result.stdout.splitlines() == [f"{node.mount_point} has 1 ext4 errors"]


def test_admin_drain_is_kept_and_never_resumed(node: Node) -> None:
    node.set_state("IDLE+DRAIN", "disk firmware update (admin)")
    assert node.healthcheck().returncode == 0
    assert node.calls() == [SHOW]
    node.umount()
    assert node.healthcheck().returncode == 1
    node.remount()
    assert node.healthcheck().returncode == 0
    assert not any(call.startswith("update") for call in node.calls())
    assert node.state() == ("IDLE+DRAIN", "disk firmware update (admin)")


def test_prolog_error_of_ours_is_replaced_by_the_specific_reason_then_resumed(node: Node) -> None:
    assert node.healthcheck().returncode == 0
    node.umount()
    # What the Prolog does when the volume is broken at job start: a file, no Slurm call; then
    # slurmctld drains the node with "Prolog error".
    entry.record_hook_finding(None, f"{node.mount_point} is not mounted and setup failed: no disks")
    node.set_state("IDLE+DRAIN", "Prolog error")
    assert node.healthcheck().returncode == 1
    reason = f"scratch: {node.mount_point} not mounted"
    assert node.calls()[-2:] == [SHOW, DRAIN + reason]
    assert node.state() == ("IDLE+DRAIN", reason)
    assert not os.path.exists(drain.HOOK_FILE)
    node.remount()
    assert node.healthcheck().returncode == 0
    assert node.state() == ("IDLE", "")


def test_prolog_error_not_explained_by_us_is_kept(node: Node) -> None:
    assert node.healthcheck().returncode == 0
    node.umount()
    node.set_state("IDLE+DRAIN", "Prolog error")
    assert node.healthcheck().returncode == 1
    assert node.state() == ("IDLE+DRAIN", "Prolog error")
    node.remount()
    assert node.healthcheck().returncode == 0
    assert node.state() == ("IDLE+DRAIN", "Prolog error")


def test_epilog_error_of_ours_is_replaced_by_the_specific_reason_then_resumed(node: Node, monkeypatch) -> None:
    assert node.healthcheck().returncode == 0
    node.remount("remount,ro")
    # What the Epilog does on a faulty volume: it records its finding under the name the hooks
    # call (no Slurm call) and fails; slurmctld then drains the node with "Epilog error".
    monkeypatch.setenv("SLURM_SCRIPT_CONTEXT", "epilog_slurmd")
    entry.record_hook_finding(None, f"{node.mount_point}: cannot retire job_4711: Read-only file system")
    assert "hook=epilog" in Path(drain.HOOK_FILE).read_text().splitlines()
    node.set_state("MIXED+DRAIN", "Epilog error")
    assert node.healthcheck().returncode == 1
    reason = f"scratch: {node.mount_point} read-only"
    assert node.calls()[-2:] == [SHOW, DRAIN + reason]
    assert node.state() == ("MIXED+DRAIN", reason)
    assert not os.path.exists(drain.HOOK_FILE)  # dealt with: a later "Epilog error" is not ours
    node.remount("remount,rw")
    assert node.healthcheck().returncode == 0
    assert node.state() == ("MIXED", "")


def _job_env(node: Node, job_id: int) -> dict[str, str]:
    """What slurmd gives a Prolog or Epilog of sstest1's job `job_id` (and the test's config)."""
    return {"SLURMD_NODENAME": NODE, "SLURM_SCRATCH_CONF": str(node.config), "SLURM_JOB_ID": str(job_id),
            "SLURM_JOB_UID": str(TEST_UID), "SLURM_JOB_GID": str(TEST_UID), "SLURM_JOB_USER": "sstest1"}


def _slurm_drains_then_the_health_check_takes_over(node: Node, slurm_reason: str) -> None:
    """A hook failed on the read-only volume: slurmctld drains with `slurm_reason`, the next check
    replaces it with ours, and the check after the repair resumes the node."""
    node.set_state("IDLE+DRAIN", slurm_reason)
    assert node.healthcheck().returncode == 1
    assert node.state() == ("IDLE+DRAIN", f"scratch: {node.mount_point} read-only")
    node.remount("remount,rw")
    assert node.healthcheck().returncode == 0
    assert node.state() == ("IDLE", "")


def test_epilog_on_a_read_only_volume_fails_and_the_health_check_takes_over_its_drain(node: Node) -> None:
    """The installed Prolog and Epilog, as slurmd runs them; the volume turns read-only while the
    job runs (ext4's errors=remount-ro)."""
    assert node.healthcheck().returncode == 0
    env = _job_env(node, 4713)
    prolog = subprocess.run([str(REPO / "hooks" / "prolog")], env={**env, "SLURM_SCRIPT_CONTEXT": "prolog_slurmd"},
                            capture_output=True, text=True, timeout=60, cwd="/")
    assert prolog.returncode == 0, prolog.stderr
    node.remount("remount,ro")
    epilog = subprocess.run([str(REPO / "hooks" / "epilog")], env={**env, "SLURM_SCRIPT_CONTEXT": "epilog_slurmd"},
                            capture_output=True, text=True, timeout=60, cwd="/")
    assert epilog.returncode != 0 and "Traceback" not in epilog.stderr, epilog.stderr
    recorded = Path(drain.HOOK_FILE).read_text().splitlines()
    assert "hook=epilog" in recorded and any("Read-only file system" in line for line in recorded), recorded
    assert node.calls() == [SHOW]  # the hooks asked Slurm nothing
    _slurm_drains_then_the_health_check_takes_over(node, "Epilog error")


def test_epilog_error_shown_after_our_drain_is_replaced_again_and_resumed(node: Node) -> None:
    """slurmctld may set "Epilog error" after a health check already drained with our reason
    (it replaces a drained node's reason): the finding stays pending until that is undone."""
    assert node.healthcheck().returncode == 0
    node.remount("remount,ro")
    entry.record_hook_finding(None, f"{node.mount_point}: cannot retire job_4712: Read-only file system", "epilog")
    reason = f"scratch: {node.mount_point} read-only"
    assert node.healthcheck().returncode == 1
    assert node.state() == ("IDLE+DRAIN", reason)
    assert os.path.exists(drain.HOOK_FILE)  # Slurm has not shown "Epilog error" yet: still pending
    node.set_state("IDLE+DRAIN", "Epilog error")  # the failed Epilog reaches slurmctld
    node.remount("remount,rw")  # ... and the volume is repaired before the next check
    assert node.healthcheck().returncode == 0
    assert node.calls()[-2:] == [SHOW, RESUME]
    assert node.state() == ("IDLE", "")
    assert not os.path.exists(drain.HOOK_FILE)


def test_epilog_error_not_explained_by_us_is_kept(node: Node) -> None:
    assert node.healthcheck().returncode == 0
    node.set_state("IDLE+DRAIN", "Epilog error")  # some other Epilog of the site failed: the admin's business
    node.remount("remount,ro")
    assert node.healthcheck().returncode == 1
    assert node.state() == ("IDLE+DRAIN", "Epilog error")
    node.remount("remount,rw")
    assert node.healthcheck().returncode == 0
    assert node.state() == ("IDLE+DRAIN", "Epilog error")
    assert not any(call.startswith("update") for call in node.calls())


def _flock_holders(path: str) -> set[int]:
    """PIDs holding a flock on `path`, from /proc/locks (looking takes no lock)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return set()
    file_id = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == file_id:
            holders.add(int(fields[4]))
    return holders


def _wait_until(what: str, condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.02)


def _fill(node: Node) -> Path:
    """Leave 1% free (the threshold is 3%), with fallocate: nothing written."""
    st = os.statvfs(node.mount_point)
    filler = Path(node.mount_point) / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, (st.f_bavail - st.f_blocks // 100) * st.f_frsize)
    finally:
        os.close(fd)
    return filler


def test_reports_do_not_wait_on_another_checks_housekeeping(tmp_path, loops) -> None:
    """A health check is busy emptying a trash of thousands of entries (a user's leftovers) when
    the volume fills up. Meanwhile NHC's `--report-only` and the next full check must report the
    fault and exit 1 (not "skipped", not 0), and the full one drains the node, without waiting."""
    node = Node(tmp_path, loops, health_conf="housekeeping_seconds = 600")
    assert node.healthcheck().returncode == 0  # makes the trash dir
    trash = Path(node.mount_point) / ".slurm-scratch-trash"
    for index in range(1000):  # empty files: deleting them frees no space
        os.close(os.open(trash / f"job_{index}.leftover", os.O_WRONLY | os.O_CREAT, 0o600))
    env = {"SLURMD_NODENAME": NODE, "SLURM_SCRATCH_CONF": str(node.config)}
    busy = subprocess.Popen([str(HOOK)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        _wait_until("the first check is in its housekeeping", lambda: busy.pid in _flock_holders(layout.HOUSEKEEPING_LOCK), 60)
        _fill(node)
        argv = [sys.executable, "-m", "slurm_scratch", "--config", str(node.config), "healthcheck", "--node", NODE, "--report-only"]
        report = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=str(REPO))
        full = node.healthcheck()
        still_busy = busy.pid in _flock_holders(layout.HOUSEKEEPING_LOCK)
        left = len(os.listdir(trash))
        print(f"{left} trash entries left when the other checks had ended")
        assert still_busy, f"the first check's housekeeping ended before the others ran ({left} left): the test proves nothing"
        for result in (report, full):
            assert result.returncode == 1, (result.stdout, result.stderr)
            assert "skipped" not in result.stdout
            assert result.stdout.splitlines()[0].endswith("% full (min free 3%)"), result.stdout
        assert node.state()[1].startswith("scratch: ") and node.state()[1].endswith("% full (min free 3%)")
        first = busy.communicate(timeout=600)
        assert busy.returncode == 0, first
        assert first[0].startswith("ok: ")  # what it found before the volume filled up
    finally:
        if busy.poll() is None:
            busy.kill()
            busy.wait(timeout=30)
    assert node.state()[0] == "IDLE+DRAIN"  # the busy check's earlier "ok" undid nothing
    (Path(node.mount_point) / "filler").unlink()
    assert node.healthcheck().returncode == 0
    assert node.state() == ("IDLE", "")


LOCK_WAIT_CONF = "check_timeout = 2\nprobe_timeout = 2\n"


def _hold(path: str) -> int:
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _fast_slurm(node: Node) -> None:
    text = node.config.read_text().replace("[slurm]\n", "[slurm]\ntimeout = 1\n")
    node.config.write_text(text)


def test_a_full_check_waits_for_another_ones_checks_then_reconciles_its_own_finding(tmp_path, loops) -> None:
    node = Node(tmp_path, loops, health_conf=LOCK_WAIT_CONF)
    _fast_slurm(node)
    assert node.healthcheck().returncode == 0
    node.umount()
    env = {"SLURMD_NODENAME": NODE, "SLURM_SCRATCH_CONF": str(node.config)}
    fd = _hold(layout.HEALTH_LOCK)  # another check's checks and reconcile are under way
    try:
        second = subprocess.Popen([str(HOOK)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        time.sleep(1)  # the second check is waiting (its bound is 2 + 2 + 3 x 1 + 5 = 12 s)
        assert second.poll() is None, second.communicate()
    finally:
        os.close(fd)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 1, err
    assert out.splitlines() == [f"{node.mount_point} not mounted"]
    assert node.state() == ("IDLE+DRAIN", f"scratch: {node.mount_point} not mounted")


def test_a_full_check_whose_lock_stays_taken_reports_the_fault_within_its_bound(tmp_path, loops) -> None:
    node = Node(tmp_path, loops, health_conf=LOCK_WAIT_CONF)
    _fast_slurm(node)
    assert node.healthcheck().returncode == 0
    node.remount("remount,ro")
    fd = _hold(layout.HEALTH_LOCK)  # a holder that never lets go (stuck, or an admin's pause)
    try:
        started = time.monotonic()
        result = node.healthcheck()  # the hang detector: healthcheck()'s 120 s timeout
        waited = time.monotonic() - started
    finally:
        os.close(fd)
    assert result.returncode == 1 and "skipped" not in result.stdout
    assert result.stdout.splitlines() == [f"{node.mount_point} read-only"]
    assert "checking and reporting only" in result.stderr
    assert waited >= 2 + 2 + 4 * 1  # it did wait for the holder's bound before reporting
    assert node.state() == ("IDLE", "")  # the lock holder owns the exchange with Slurm
    assert node.healthcheck().returncode == 1  # the lock is free again: this one drains
    assert node.state() == ("IDLE+DRAIN", f"scratch: {node.mount_point} read-only")


def _job_dir(node: Node, job_id: int, age_seconds: float) -> Path:
    path = Path(node.mount_point) / f"job_{job_id}"
    path.mkdir(mode=0o700)
    (path / "data").write_text("x" * 1000)
    os.chown(path, TEST_UID, TEST_UID)
    then = time.time() - age_seconds
    os.utime(path, (then, then))
    return path


def test_sweep_asks_slurmctld_only_for_a_local_candidate(node: Node) -> None:
    assert node.healthcheck().returncode == 0  # memory made: from now on no RPC while healthy
    young = _job_dir(node, 41, age_seconds=0)
    running_here = _job_dir(node, 42, age_seconds=3600)
    (node.dir / "listpids").write_text("5001     42       batch    0       0\n")
    assert node.healthcheck().returncode == 0
    assert node.calls() == [SHOW, "listpids * n1"]  # local only: job 42 has processes here
    orphan = _job_dir(node, 43, age_seconds=3600)
    (node.dir / "squeue.out").write_text("41\n42\n")
    assert node.healthcheck().returncode == 0
    assert node.calls()[-2:] == ["listpids * n1", f"squeue --noheader --nodelist {NODE} --format %A"]
    assert young.is_dir() and running_here.is_dir()
    assert not orphan.exists()
    trash = Path(node.mount_point) / ".slurm-scratch-trash"
    assert [name for name in os.listdir(trash) if not name.startswith(".health-probe")] == []  # reaped


def test_young_job_dirs_cost_no_call_at_all(node: Node) -> None:
    assert node.healthcheck().returncode == 0
    _job_dir(node, 51, age_seconds=0)
    assert node.healthcheck().returncode == 0
    assert node.calls() == [SHOW]


def test_slurm_unreachable_is_retried(node: Node) -> None:
    (node.dir / "scontrol").write_text("#!/bin/sh\necho \"$*\" >> " + str(node.dir) + "/calls.log\necho 'slurm_load_node error: Unable to contact slurm controller' >&2\nexit 1\n")
    node.umount()
    result = node.healthcheck()
    assert result.returncode == 1 and "could not update the node's state in Slurm" in result.stderr
    node.healthcheck()
    assert node.calls() == [SHOW, SHOW]  # nothing remembered: the next check asks again



def test_prolog_on_a_read_only_volume_records_the_finding_for_the_health_check(node: Node) -> None:
    assert node.healthcheck().returncode == 0
    node.remount("remount,ro")
    env = _job_env(node, 4711)
    prolog = subprocess.run([str(REPO / "hooks" / "prolog")], env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert prolog.returncode == 1 and "Traceback" not in prolog.stderr
    assert "Read-only file system" in Path(drain.HOOK_FILE).read_text()
    assert node.calls() == [SHOW]  # the Prolog asked Slurm nothing
    _slurm_drains_then_the_health_check_takes_over(node, "Prolog error")


def test_broken_node_resumed_by_an_admin_is_drained_at_the_next_check(node: Node) -> None:
    node.set_state("IDLE+DRAIN", "admin: firmware update")
    node.umount()
    assert node.healthcheck().returncode == 1
    assert node.state() == ("IDLE+DRAIN", "admin: firmware update")  # kept, nothing appended
    node.set_state("IDLE")  # the admin resumes it; the volume is still broken
    assert node.healthcheck().returncode == 1
    assert node.state() == ("IDLE+DRAIN", f"scratch: {node.mount_point} not mounted")
    calls = len(node.calls())
    assert node.healthcheck().returncode == 1
    assert len(node.calls()) == calls  # drained by us now: no RPC until the finding changes


def test_healthy_steady_state_imports_nothing_heavy(node: Node) -> None:
    """Every node runs this every minute: the healthy path must not pay for subprocess, json, re,
    signal, psutil or filelock (each costs milliseconds to import)."""
    assert node.healthcheck().returncode == 0  # the first check after boot (asks the fake Slurm)
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from slurm_scratch import cli\n"
        "status = cli.hook('healthcheck')\n"
        "heavy = sorted({'subprocess', 'json', 're', 'signal', 'psutil', 'filelock', 'logging', 'dataclasses'} & set(sys.modules))\n"
        "print('HEAVY', ','.join(heavy))\n"
        "sys.exit(status)\n"
    )
    env = {"SLURMD_NODENAME": NODE, "SLURM_SCRATCH_CONF": str(node.config)}
    result = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "HEAVY ", result.stdout
    assert node.calls() == [SHOW]


def test_report_only_checks_but_never_calls_slurm(node: Node) -> None:
    """`healthcheck --report-only` (for NHC or cron): the same findings and exit code, no drain."""
    node.umount()
    argv = [sys.executable, "-m", "slurm_scratch", "--config", str(node.config), "healthcheck", "--node", NODE, "--report-only"]
    broken = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=str(REPO))
    assert broken.returncode == 1, broken.stderr
    assert broken.stdout.splitlines() == [f"{node.mount_point} not mounted"]
    assert node.calls() == []
    assert node.state() == ("IDLE", "")
