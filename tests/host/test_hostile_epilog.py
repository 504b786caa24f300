"""Issue 8, the Epilog's side: what a hostile job user does to the Epilog, the sweep and the health
check's housekeeping, through the hooks as slurmd runs them (env -i plus Slurm's variables).

Each case asserts the Epilog's exit code (0 whenever the cause is the user's), that the job
directory is gone from its name (into the trash, or left for the sweep as designed), that nothing
outside the volume changed, and that the user's processes are gone and named in the log. Every
process a test starts is recorded and ended by PID; mounts are undone and the volume thawed in
`finally` blocks; every hook runs under a subprocess timeout (the hang detector).
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from lab.jobs import make_canary, scratch_volume, snapshot
from lab.kernel import sh

from slurm_scratch.health import drain

pytestmark = pytest.mark.root

UID1, UID2 = 4201, 4202
GHOST = 4299  # a uid with no passwd entry: the job's user was removed, or NSS is down


@pytest.fixture(params=["ext4", "xfs"])
def scratch(request, loops):
    with scratch_volume(loops, request.param) as volume:
        volume.canary = make_canary(volume.base.parent)
        volume.canary_before = snapshot(volume.canary)
        try:
            yield volume
        finally:
            _undo_mounts_below(volume.mount_point)
            _undo_mounts_below(Path(tempfile.gettempdir()) / "ss-userns")


@pytest.fixture(autouse=True)
def no_finding():
    with contextlib.suppress(FileNotFoundError):
        os.unlink(drain.HOOK_FILE)
    yield
    with contextlib.suppress(FileNotFoundError):
        os.unlink(drain.HOOK_FILE)


def _undo_mounts_below(path: Path) -> None:
    with open("/proc/self/mountinfo") as stream:
        targets = [line.split()[4] for line in stream if line.split()[4].startswith(str(path) + "/")]
    for target in reversed(targets):
        sh("umount", "-l", target, check=False)


def outside_untouched(scratch) -> None:
    assert snapshot(scratch.canary) == scratch.canary_before


def retired(scratch, job_id: int) -> None:
    """The job's directory is gone from its name, and the reaper emptied the trash."""
    assert not os.path.lexists(scratch.job_dir(job_id))
    scratch.wait_trash_empty()


def start(scratch, uid: int, argv: list[str], cwd: str = "/") -> subprocess.Popen:
    """A process of `uid` (which need not be in passwd), recorded for teardown."""
    process = subprocess.Popen(
        ["/usr/bin/setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups", "--", *argv],
        cwd=cwd, env={"PATH": "/usr/bin:/bin", "SLURM_SCRATCH_TEST_TAG": scratch.tag},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    scratch.processes.append(process)
    return process


def ready(process: subprocess.Popen) -> None:
    """Wait for the process to print its first line (it is then set up as the test wants)."""
    line = process.stdout.readline()
    assert line.strip() == b"ready", f"pid {process.pid} did not get ready: {line!r}"


def killed(process: subprocess.Popen) -> bool:
    return process.wait(timeout=30) == -9


# ---- mounts on and in the job directory (a user's FUSE mount) -----------------------------------


def test_a_mount_on_the_job_dir_is_detached_and_the_dir_retired(scratch) -> None:
    assert scratch.prolog(801).returncode == 0
    job_dir = scratch.job_dir(801)
    (job_dir / "under").write_text("below the mount\n")
    sh("mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(job_dir))
    sh("mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(job_dir))  # stacked twice
    (job_dir / "on-the-mount").write_text("x\n")
    result = scratch.epilog(801, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(f"{job_dir} was a mount point") == 2 and "detached it lazily" in result.stderr
    assert f"retired {job_dir} to trash" in result.stderr
    retired(scratch, 801)
    outside_untouched(scratch)


def test_a_mount_deep_inside_the_job_dir_is_detached_and_nothing_behind_it_deleted(scratch) -> None:
    assert scratch.prolog(802).returncode == 0
    job_dir = scratch.job_dir(802)
    deep = job_dir / "a" / "b" / "fuse"
    scratch.as_user("sstest1", 'mkdir -p "$1"', str(deep))
    sh("mount", "--bind", str(scratch.canary), str(deep))  # what a user's FUSE mount shows, outside the volume
    result = scratch.epilog(802, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"{deep}: a mount inside the job directory" in result.stderr
    retired(scratch, 802)
    outside_untouched(scratch)


@contextlib.contextmanager
def hung_fuse(target: Path, uid: int = UID1):
    """A FUSE filesystem at `target` whose daemon never answers (a user's stopped or dead daemon):
    a stat or lookup in it blocks. The test holds its /dev/fuse descriptor; closing it at the end
    fails whatever still waits."""
    import ctypes

    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        options = f"fd={fd},rootmode=40000,user_id={uid},group_id={uid},allow_other".encode()  # root may ask it
        if libc.mount(b"hung", str(target).encode(), b"fuse.hung", 0, options) != 0:
            pytest.skip(f"cannot mount FUSE here: {os.strerror(ctypes.get_errno())}")
        yield
    finally:
        os.close(fd)


def test_a_hung_fuse_mount_on_and_in_the_job_dir_does_not_hang_the_epilog(scratch) -> None:
    assert scratch.prolog(803).returncode == 0
    job_dir = scratch.job_dir(803)
    deep = job_dir / "a" / "fuse"
    scratch.as_user("sstest1", 'mkdir -p "$1"', str(deep))
    in_dir = start(scratch, UID1, ["/bin/sh", "-c", "echo ready; exec /bin/sleep 600"], cwd=str(job_dir / "a"))
    ready(in_dir)
    with hung_fuse(deep), hung_fuse(job_dir):
        with pytest.raises(subprocess.TimeoutExpired):
            subprocess.run(["stat", str(job_dir)], capture_output=True, timeout=2)  # what a stat of it does
        result = scratch.epilog(803, timeout=60)  # the hang detector
        assert result.returncode == 0, result.stderr
        assert f"{job_dir} was a mount point" in result.stderr and f"{deep}: a mount inside the job directory" in result.stderr
        assert killed(in_dir)
        assert f"killed pid {in_dir.pid} (sleep) of uid {UID1}: it held {job_dir} (cwd)" in result.stderr
        retired(scratch, 803)
    outside_untouched(scratch)


def test_the_sweep_is_not_hung_by_a_fuse_mount_on_an_orphan_or_a_process_holding_one(scratch) -> None:
    for job_id in (804, 805):
        assert scratch.prolog(job_id).returncode == 0
    deep = scratch.job_dir(805) / "fuse"
    scratch.as_user("sstest1", 'mkdir "$1"', str(deep))
    then = time.time() - 3600
    with hung_fuse(deep), hung_fuse(scratch.job_dir(804)):
        os.utime(scratch.job_dir(805), (then, then))  # 804 (mounted on: young, or so it must be taken) stays
        # A process of the user holding the hung filesystem (O_PATH: opening it asks the daemon nothing).
        holder = start(scratch, UID1, ["/usr/bin/python3", "-c",
                                       "import os, sys, time; fd = os.open(sys.argv[1], os.O_PATH); print('ready', flush=True); time.sleep(600)",
                                       str(deep)])
        ready(holder)
        sweep = subprocess.run(
            ["/usr/bin/python3", "-c", "import sys; from slurm_scratch import config; from slurm_scratch.jobs import sweep; "
             "report = sweep.sweep(config.load_config(sys.argv[1]), 'node1', set()); print(sorted(report.retired), sorted(report.young))",
             str(scratch.config)],
            env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])}, cwd="/", capture_output=True, text=True, timeout=60,
        )
        assert sweep.returncode == 0, sweep.stderr
        assert str(scratch.job_dir(805)) in sweep.stdout and f"{deep}: a mount inside the job directory" in sweep.stderr
        assert killed(holder)  # it held the job dir through the mount on it
        assert "(fd 3 on a mount)" in sweep.stderr
    assert not os.path.lexists(scratch.job_dir(805))
    outside_untouched(scratch)


# ---- the job's user is gone from NSS -----------------------------------------------------------


def test_a_user_removed_from_nss_does_not_fail_the_epilog(scratch) -> None:
    assert scratch.prolog(811).returncode == 0
    job_dir = scratch.job_dir(811)
    (job_dir / "data").write_text("x\n")
    os.chown(job_dir, GHOST, GHOST)
    holder = start(scratch, GHOST, ["/bin/sh", "-c", "echo ready; exec /bin/sleep 600"], cwd=str(job_dir))
    ready(holder)
    env = scratch.job_env(811, context="epilog_slurmd", SLURM_JOB_USER="ghost", SLURM_JOB_UID=GHOST, SLURM_JOB_GID=GHOST)
    result = scratch.hook("epilog", env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert killed(holder)
    assert f"killed pid {holder.pid} (sleep) of uid {GHOST}: it held {job_dir} (cwd)" in result.stderr
    retired(scratch, 811)
    outside_untouched(scratch)


def test_the_epilog_still_checks_the_syntax_of_slurmds_variables(scratch) -> None:
    for bad in ({"SLURM_JOB_UID": "42x"}, {"SLURM_JOB_USER": "../etc"}, {"SLURM_JOB_UID": None}):
        result = scratch.hook("epilog", scratch.job_env(812, context="epilog_slurmd", **bad), timeout=60)
        assert result.returncode == 4, result.stderr
        assert "Traceback" not in result.stderr


# ---- the name is not the job's directory any more ------------------------------------------------


def test_a_job_dir_of_someone_else_or_a_symlink_or_a_squatted_level_exits_zero(scratch) -> None:
    assert scratch.prolog(821).returncode == 0
    job_dir = scratch.job_dir(821)
    os.rmdir(job_dir)
    scratch.as_user("sstest2", 'mkdir "$1" && echo theirs > "$1/f"', str(job_dir))  # sstest2 squats it
    result = scratch.epilog(821, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"{job_dir} belongs to uid {UID2}, not the job's uid {UID1}: leaving it alone" in result.stderr
    assert (job_dir / "f").read_text() == "theirs\n"

    assert scratch.prolog(822).returncode == 0
    link = scratch.job_dir(822)
    os.rmdir(link)
    scratch.as_user("sstest1", 'ln -s "$1" "$2"', str(scratch.canary), str(link))  # the user's own symlink
    result = scratch.epilog(822, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not os.path.lexists(link)  # the link itself went into the trash, never followed
    scratch.wait_trash_empty()

    scratch.configure({"jobs": {"dir": "%u/job_%j"}})
    scratch.as_user("sstest1", 'mkdir "$1/sstest1" && mkdir "$1/sstest1/job_823"', str(scratch.mount_point))
    result = scratch.epilog(823, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "must be owned by root" in result.stderr
    outside_untouched(scratch)


# ---- stray processes the path strings missed ------------------------------------------------------


def test_every_kind_of_stray_process_is_ended_and_named(scratch, tmp_path) -> None:
    assert scratch.prolog(831).returncode == 0
    job_dir = scratch.job_dir(831)
    scratch.as_user("sstest1", 'cp /bin/sleep "$1/mysleep" && echo data > "$1/mapped"', str(job_dir))
    exe = start(scratch, UID1, ["/bin/sh", "-c", 'echo ready; exec "$0" 600', str(job_dir / "mysleep")])
    mapped = start(scratch, UID1, ["/usr/bin/python3", "-c", (
        "import ctypes, os, sys, time\n"  # mmap(2) then close(2): Python's mmap module would keep a dup
        "libc = ctypes.CDLL(None); libc.mmap.restype = ctypes.c_void_p\n"
        "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY); assert libc.mmap(None, 4096, 1, 2, fd, 0) not in (None, 2**64 - 1); os.close(fd)\n"
        "os.chdir('/'); print('ready', flush=True); time.sleep(600)"), str(job_dir / "mapped")])
    deep = start(scratch, UID1, ["/usr/bin/python3", "-c", (
        "import os, sys, time\n"
        "os.chdir(sys.argv[1])\n"
        "for _ in range(20):\n"
        "    os.mkdir('d' * 250); os.chdir('d' * 250)\n"  # 5,000 characters: deeper than PATH_MAX
        "print('ready', flush=True); time.sleep(600)"), str(job_dir)])
    thread = start(scratch, UID1, ["/usr/bin/python3", "-c", (
        "import ctypes, os, sys, threading, time\n"
        "def away():\n"  # a thread with a cwd of its own, inside the job dir; the process's is /
        "    assert ctypes.CDLL(None).unshare(0x200) == 0; os.chdir(sys.argv[1]); print('ready', flush=True); time.sleep(600)\n"
        "threading.Thread(target=away).start()"), str(job_dir)])
    deep_file = start(scratch, UID1, ["/usr/bin/python3", "-c", (
        "import os, sys, time\n"
        "os.chdir(sys.argv[1])\n"
        "for _ in range(1500): os.mkdir('d'); os.chdir('d')\n"  # 1,500 levels, within PATH_MAX
        "os.chdir(sys.argv[1])\n"
        "fd = os.open('/'.join(['d'] * 1500) + '/f', os.O_CREAT | os.O_RDWR); os.chdir('/')\n"
        "print('ready', flush=True); time.sleep(600)"), str(job_dir)])
    ready(exe), ready(mapped), ready(deep), ready(thread), ready(deep_file)
    assert os.readlink(f"/proc/{thread.pid}/cwd") == "/"
    with pytest.raises(OSError):
        os.readlink(f"/proc/{deep.pid}/cwd")  # what the path-string scan tripped over
    result = scratch.epilog(831, timeout=60)
    assert result.returncode == 0, result.stderr
    assert killed(exe) and killed(mapped) and killed(deep) and killed(thread) and killed(deep_file)
    assert f"killed pid {deep_file.pid} (python3) of uid {UID1}: it held {job_dir} (fd 3)" in result.stderr
    assert f"killed pid {thread.pid} (python3) of uid {UID1}: it held {job_dir} (thread cwd)" in result.stderr
    assert f"killed pid {exe.pid} (mysleep) of uid {UID1}: it held {job_dir} (exe, map)" in result.stderr
    assert f"killed pid {mapped.pid} (python3) of uid {UID1}: it held {job_dir} (map)" in result.stderr
    assert f"killed pid {deep.pid} (python3) of uid {UID1}: it held {job_dir} (cwd)" in result.stderr
    retired(scratch, 831)
    outside_untouched(scratch)


def _userns_works() -> bool:
    probe = subprocess.run(
        ["/usr/bin/setpriv", "--reuid", str(UID1), "--regid", str(UID1), "--clear-groups", "--", "unshare", "-Urm", "true"],
        capture_output=True, timeout=30,
    )
    return probe.returncode == 0


def test_a_bind_mount_in_the_users_own_namespace_is_seen_through(scratch) -> None:
    if not _userns_works():
        pytest.skip("this kernel does not let unprivileged users make user namespaces")
    assert scratch.prolog(841).returncode == 0
    job_dir = scratch.job_dir(841)
    scratch.as_user("sstest1", 'mkdir "$1/sub"', str(job_dir))
    base = Path(tempfile.gettempdir()) / "ss-userns"
    base.mkdir(mode=0o1777, exist_ok=True)
    base.chmod(0o1777)
    view = Path(tempfile.mkdtemp(dir=base))
    os.chown(view, UID1, UID1)
    inside = start(scratch, UID1, ["unshare", "-Urm", "/bin/sh", "-c",
                                   'mount --bind "$0" "$1" && cd "$1/sub" && echo ready && exec /bin/sleep 600', str(job_dir), str(view)])
    ready(inside)
    assert not os.readlink(f"/proc/{inside.pid}/cwd").startswith(str(job_dir))  # the path differs
    result = scratch.epilog(841, timeout=60)
    assert result.returncode == 0, result.stderr
    assert killed(inside)
    assert f"killed pid {inside.pid} (sleep) of uid {UID1}: it held {job_dir} (cwd)" in result.stderr
    retired(scratch, 841)
    os.rmdir(view)
    outside_untouched(scratch)


def test_processes_holding_only_other_filesystems_are_spared(scratch, tmp_path) -> None:
    # The user's other work: cwd on another filesystem (never stat'ed), a file of the same name
    # pattern elsewhere, another job's directory on the same volume.
    assert scratch.prolog(851).returncode == 0
    assert scratch.prolog(852).returncode == 0
    other = tmp_path / "job_851"
    other.mkdir()
    os.chown(other, UID1, UID1)
    elsewhere = start(scratch, UID1, ["/bin/sh", "-c", "echo ready; exec /bin/sleep 600"], cwd=str(other))
    other_job = start(scratch, UID1, ["/bin/sh", "-c", 'exec 3<"$0"; echo ready; exec /bin/sleep 600', str(scratch.job_dir(852))])
    ready(elsewhere), ready(other_job)
    result = scratch.epilog(851, timeout=60)
    assert result.returncode == 0 and "killed" not in result.stderr, result.stderr
    assert elsewhere.poll() is None and other_job.poll() is None
    retired(scratch, 851)


# ---- a frozen volume ---------------------------------------------------------------------------


def test_a_frozen_volume_fails_the_epilog_within_fs_timeout_and_records_why(scratch) -> None:
    scratch.configure({"jobs": {"fs_timeout": "2"}})
    assert scratch.prolog(861).returncode == 0
    (scratch.job_dir(861) / "data").write_text("x\n")
    # the hang detector: fs_timeout plus generous slack
    result = scratch.while_frozen(lambda: scratch.epilog(861, timeout=60))
    assert result.returncode == 1, result.stderr
    assert f"{scratch.mount_point} hung: epilog timed out after 2 s" in result.stderr
    assert f"{scratch.mount_point} hung: epilog timed out after 2 s" in Path(drain.HOOK_FILE).read_text()
    # Thawed: the killed child may still have finished its rename; either way the next Epilog and
    # the reaper leave nothing behind.
    again = scratch.epilog(861, timeout=60)
    assert again.returncode == 0, again.stderr
    assert not os.path.lexists(scratch.job_dir(861))
    assert scratch.cli("reap").returncode == 0
    assert scratch.trash_entries() == []
    outside_untouched(scratch)


def test_a_read_only_volume_fails_the_epilog_and_records_why(scratch) -> None:
    assert scratch.prolog(871).returncode == 0
    sh("mount", "-o", "remount,ro", scratch.device, str(scratch.mount_point))
    try:
        result = scratch.epilog(871, timeout=60)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "cannot retire the job directory" in Path(drain.HOOK_FILE).read_text()
    finally:
        sh("mount", "-o", "remount,rw", scratch.device, str(scratch.mount_point))
    assert scratch.job_dir(871).is_dir()  # nothing lost
    assert scratch.epilog(871, timeout=60).returncode == 0
    retired(scratch, 871)


# ---- the health check's housekeeping at scale ----------------------------------------------------


FAKE_SCONTROL = """#!/bin/sh
case "$1" in
show) echo "NodeName=$4 State=IDLE Partitions=p" ;;
listpids) echo "No job steps exist on this node."; exit 1 ;;
*) exit 0 ;;
esac
"""


@pytest.mark.parametrize("scratch", ["ext4"], indirect=True)
def test_housekeeping_with_thousands_of_orphans_and_fds_ends_within_its_bound(scratch, tmp_path) -> None:
    seconds, slurm_timeout = 5, 10
    fake = tmp_path / "slurm"
    fake.mkdir()
    (fake / "scontrol").write_text(FAKE_SCONTROL)
    (fake / "squeue").write_text("#!/bin/sh\nexit 0\n")
    for name in ("scontrol", "squeue"):
        (fake / name).chmod(0o755)
    scratch.configure({
        "volume": {"backend": "single", "filesystem": "ext4"},
        "health": {"housekeeping_seconds": str(seconds)},
        "jobs": {"sweep_guard": "60"},
        "slurm": {"scontrol": str(fake / "scontrol"), "squeue": str(fake / "squeue"), "timeout": str(slurm_timeout),
                  "slurm_conf": "/etc/slurm-test/slurm.conf"},
    })
    orphans = 2000
    scratch.as_user("sstest1", 'cd "$1"; i=0; while [ $i -lt "$2" ]; do mkdir job_$((900000+i)); echo x > job_$((900000+i))/f; i=$((i+1)); done', str(scratch.mount_point), str(orphans))
    then = time.time() - 3600
    for name in os.listdir(scratch.mount_point):
        if name.startswith("job_"):
            os.utime(scratch.mount_point / name, (then, then))
    # Processes of the user holding 20,000 descriptors: on the volume (outside any job dir) and elsewhere.
    holders = []
    for index in range(4):
        holders.append(start(scratch, UID1, ["/usr/bin/python3", "-c", (
            "import os, resource, sys, time\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (6000, 6000))\n"
            "fds = [os.open(sys.argv[1] if i % 2 else '/dev/null', os.O_RDONLY) for i in range(5000)]\n"
            "print('ready', flush=True); time.sleep(600)"), str(scratch.mount_point / "job_900000" / "f") if index == 0 else "/etc/hostname"]))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= 6000, "the test needs RLIMIT_NOFILE >= 6000"
    for holder in holders:
        ready(holder)
    bound = seconds + 3 * slurm_timeout + 60  # housekeeping + Slurm calls + the checks' own timeouts and slack
    env = {"SLURMD_NODENAME": "node1", "SLURM_SCRATCH_CONF": str(scratch.config)}
    runs = 0
    started = time.monotonic()
    longest = 0.0
    while any(name.startswith("job_") for name in os.listdir(scratch.mount_point)) or scratch.trash_entries():
        runs += 1
        assert runs <= 20, "twenty health checks did not finish the sweep"
        check = subprocess.run([str(Path(__file__).resolve().parents[2] / "hooks" / "healthcheck")], env=env, cwd="/",
                               capture_output=True, text=True, timeout=bound)
        assert check.returncode == 0, check.stdout + check.stderr
        longest = max(longest, time.monotonic() - started)
        started = time.monotonic()
    assert killed(holders[0])  # it held job_900000
    assert all(holder.poll() is None for holder in holders[1:])
    print(f"{runs} health checks, the longest {longest:.1f} s")
    outside_untouched(scratch)
