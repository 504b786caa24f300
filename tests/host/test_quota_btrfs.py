"""Per-job quotas on btrfs ([jobs] quota), through the installed hooks as slurmd runs them: each job
directory is a subvolume under a level-1 qgroup limit; the volume runs btrfs simple quotas, so a
subvolume (or snapshot) a user nests inside is charged to the job too; the reaper deletes nested
subvolumes and removes the qgroups once the data is gone."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from lab.jobs import poll, scratch_volume
from lab.kernel import sh
from slurm_scratch.volume import apply

pytestmark = pytest.mark.root

MIB = 1 << 20


@pytest.fixture
def volume(loops):
    """A btrfs volume as `setup` leaves it with a quota on: simple quotas, mount point 0755."""
    with scratch_volume(loops, "btrfs", size_mb=1024, mount_mode=0o755) as scratch:
        assert "enabled btrfs simple quotas" in apply.quotas(str(scratch.mount_point))
        yield scratch


@pytest.fixture
def hooks(installed) -> Path:
    return installed / "libexec" / "slurm-scratch"


def write_as(user: str, path: Path, mib: int) -> subprocess.CompletedProcess:
    """`user` writes `mib` MiB to `path` (what a job does), synced so the quota sees it."""
    argv = ["/usr/bin/setpriv", "--reuid", user, "--regid", user, "--init-groups", "--",
            "/bin/dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "conv=fsync"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def run_as(user: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/usr/bin/setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", *argv],
                          capture_output=True, text=True, timeout=60)


def qgroups(mount_point: Path) -> dict[str, tuple[int, str, str]]:
    """qgroup -> (referenced bytes, max referenced, children)."""
    out = sh("btrfs", "qgroup", "show", "--raw", "-r", "-c", str(mount_point)).stdout
    rows = {}
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0][:2] in ("0/", "1/"):
            rows[fields[0]] = (int(fields[1]), fields[3], fields[4])
    return rows


def subvolume_id(path: Path) -> int:
    out = sh("btrfs", "subvolume", "show", str(path)).stdout
    return int(next(line.split()[-1] for line in out.splitlines() if "Subvolume ID:" in line))


def start_job(volume, hooks: Path, job_id: int, user: str = "sstest1") -> Path:
    result = volume.hook("prolog", volume.job_env(job_id, user), hooks_dir=hooks)
    assert result.returncode == 0, result.stderr
    return volume.job_dir(job_id, user=user)


def end_job(volume, hooks: Path, job_id: int, user: str = "sstest1") -> None:
    result = volume.hook("epilog", volume.job_env(job_id, user, "epilog_slurmd"), hooks_dir=hooks)
    assert result.returncode == 0, result.stderr


def test_a_job_writing_past_its_quota_gets_edquot_and_a_neighbour_is_unaffected(volume, hooks) -> None:
    volume.configure({"jobs": {"quota": "64M"}})
    greedy, neighbour = start_job(volume, hooks, 301), start_job(volume, hooks, 302, user="sstest2")
    st = os.lstat(greedy)
    assert (st.st_uid, stat.S_IMODE(st.st_mode), st.st_ino) == (4201, 0o700, 256)  # a subvolume of the job's user
    limit = qgroups(volume.mount_point)[f"1/{subvolume_id(greedy)}"]
    assert limit[1] == str(64 * MIB)

    over = write_as("sstest1", greedy / "big", 100)
    assert over.returncode != 0 and "Disk quota exceeded" in over.stderr
    assert os.path.getsize(greedy / "big") <= 64 * MIB
    # The neighbour job (another user, its own limit) writes all it is allowed to.
    assert write_as("sstest2", neighbour / "data", 60).returncode == 0
    assert os.path.getsize(neighbour / "data") == 60 * MIB
    end_job(volume, hooks, 301)  # the Epilog of the job that hit its quota succeeds: no drain
    end_job(volume, hooks, 302, user="sstest2")
    volume.wait_trash_empty()


def test_a_subvolume_or_snapshot_nested_by_the_user_is_charged_to_the_job(volume, hooks) -> None:
    volume.configure({"jobs": {"quota": "64M"}})
    job = start_job(volume, hooks, 311)
    assert run_as("sstest1", "/usr/bin/btrfs", "subvolume", "create", str(job / "escape")).returncode == 0
    assert run_as("sstest1", "/usr/bin/btrfs", "subvolume", "snapshot", str(job), str(job / "escape" / "snap")).returncode == 0
    assert write_as("sstest1", job / "escape" / "part1", 40).returncode == 0
    over = write_as("sstest1", job / "escape" / "snap" / "part2", 40)
    assert over.returncode != 0 and "Disk quota exceeded" in over.stderr
    group = qgroups(volume.mount_point)[f"1/{subvolume_id(job)}"]
    assert group[0] <= 64 * MIB and f"0/{subvolume_id(job / 'escape')}" in group[2].split(",")

    ids = [subvolume_id(path) for path in (job, job / "escape", job / "escape" / "snap")]
    end_job(volume, hooks, 311)
    volume.wait_trash_empty()  # rm cannot delete nested subvolumes: the reaper deleted them innermost first
    volume.wait_reapers()
    left = qgroups(volume.mount_point)
    assert not {f"0/{i}" for i in ids} & set(left) and f"1/{ids[0]}" not in left, left
    listed = sh("btrfs", "subvolume", "list", str(volume.mount_point)).stdout
    assert listed.strip() == "", listed


def test_the_user_cannot_write_outside_job_directories(volume, hooks) -> None:
    volume.configure({"jobs": {"quota": "64M"}})
    start_job(volume, hooks, 321)
    denied = run_as("sstest1", "/usr/bin/touch", str(volume.mount_point / "outside"))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr


def test_after_the_epilog_the_qgroup_is_released_and_a_new_job_gets_its_own(volume, hooks) -> None:
    volume.configure({"jobs": {"quota": "64M"}})
    job = start_job(volume, hooks, 331)
    first = subvolume_id(job)
    assert write_as("sstest1", job / "data", 50).returncode == 0
    end_job(volume, hooks, 331)
    assert not os.path.lexists(job)
    volume.wait_trash_empty()
    volume.wait_reapers()
    assert f"1/{first}" not in qgroups(volume.mount_point)
    # The next job starts from nothing used, whatever the last one wrote.
    again = start_job(volume, hooks, 332)
    assert write_as("sstest1", again / "data", 60).returncode == 0
    assert qgroups(volume.mount_point)[f"1/{subvolume_id(again)}"][1] == str(64 * MIB)


def test_a_requeued_job_keeps_its_directory_data_and_limit(volume, hooks) -> None:
    volume.configure({"jobs": {"quota": "64M"}})
    job = start_job(volume, hooks, 341)
    subvolume = subvolume_id(job)
    assert write_as("sstest1", job / "checkpoint", 30).returncode == 0
    requeued = volume.hook("prolog", volume.job_env(341, SLURM_JOB_RESTART_COUNT=1), hooks_dir=hooks)
    assert requeued.returncode == 0, requeued.stderr
    assert "reused" in requeued.stderr and "(kept)" in requeued.stderr
    assert subvolume_id(job) == subvolume and os.path.getsize(job / "checkpoint") == 30 * MIB
    over = write_as("sstest1", job / "more", 40)
    assert over.returncode != 0 and "Disk quota exceeded" in over.stderr


def test_only_a_directory_the_prolog_made_for_the_job_is_reused(volume, hooks) -> None:
    """A directory of the job's user at the name, but not made by the Prolog for this job (left from
    quota = off, or another job's subvolume renamed there), would be unlimited: moved aside."""
    volume.configure({"jobs": {"quota": "64M"}})
    plain = volume.job_dir(351)
    plain.mkdir()
    os.chown(plain, 4201, 4201)
    (plain / "old").write_text("old data")
    other = start_job(volume, hooks, 352)
    os.rename(other, volume.job_dir(353))  # job 352's subvolume (with its mark) at job 353's name
    for job_id in (351, 353):
        result = volume.hook("prolog", volume.job_env(job_id), hooks_dir=hooks)
        assert result.returncode == 0, result.stderr
        assert "moved aside" in result.stderr and "created" in result.stderr
        made = volume.job_dir(job_id)
        assert os.lstat(made).st_ino == 256 and os.listdir(made) == []
        assert f"1/{subvolume_id(made)}" in qgroups(volume.mount_point)


def test_the_quota_can_be_a_percentage_of_the_volume(volume, hooks) -> None:
    volume.configure({"jobs": {"quota": "5%"}})
    job = start_job(volume, hooks, 361)
    size = os.statvfs(volume.mount_point)
    expected = int(size.f_blocks * size.f_frsize * 5 / 100)
    assert qgroups(volume.mount_point)[f"1/{subvolume_id(job)}"][1] == str(expected)


def test_quota_off_makes_a_plain_directory_as_before(volume, hooks) -> None:
    job = start_job(volume, hooks, 371)
    st = os.lstat(job)
    assert st.st_ino != 256 and st.st_dev == os.lstat(volume.mount_point).st_dev
    assert not os.path.exists(os.path.join(volume.mount_point, ".slurm-scratch-project-ids"))
    assert write_as("sstest1", job / "data", 100).returncode == 0  # no limit
    end_job(volume, hooks, 371)
    volume.wait_trash_empty()


def test_a_subvolume_nested_in_a_plain_job_directory_is_reaped_too(volume, hooks) -> None:
    """With quota = off, rm -rf --one-file-system stops at a subvolume a user made: the reaper deletes it."""
    job = start_job(volume, hooks, 381)
    assert run_as("sstest1", "/usr/bin/btrfs", "subvolume", "create", str(job / "nested")).returncode == 0
    (job / "nested" / "f").write_text("x")
    end_job(volume, hooks, 381)
    volume.wait_trash_empty()
    assert sh("btrfs", "subvolume", "list", str(volume.mount_point)).stdout.strip() == ""


def test_quota_request_follows_tmp_and_falls_back_to_the_default(volume, hooks, tmp_path) -> None:
    """`quota = request`: the job's --tmp (one squeue query of the job); the default for a job
    without --tmp, and when Slurm does not answer within quota_query_timeout."""
    squeue = tmp_path / "squeue"
    squeue.write_text("#!/bin/sh\n"
                      "echo \"$*\" >> " + str(tmp_path / "calls") + "\n"
                      "case \"$2\" in\n"
                      "--jobs=391) echo '96M N/A' ;;\n"
                      "--jobs=392) echo '0 N/A' ;;\n"
                      "*) sleep 30 ;;\n"
                      "esac\n")
    squeue.chmod(0o755)
    volume.configure({"jobs": {"quota": "request", "quota_default": "48M", "quota_query_timeout": "1"},
                      "slurm": {"squeue": str(squeue)}})
    asked, nothing = start_job(volume, hooks, 391), start_job(volume, hooks, 392)
    began = time.monotonic()
    slow = volume.hook("prolog", volume.job_env(393), hooks_dir=hooks)
    took = time.monotonic() - began
    assert slow.returncode == 0, slow.stderr
    assert "quota_default" in slow.stderr and "timed out" in slow.stderr
    assert took < 20  # bounded by quota_query_timeout, not by the 30 s Slurm took
    groups = qgroups(volume.mount_point)
    assert groups[f"1/{subvolume_id(asked)}"][1] == str(96 * MIB)
    assert groups[f"1/{subvolume_id(nothing)}"][1] == str(48 * MIB)
    assert groups[f"1/{subvolume_id(volume.job_dir(393))}"][1] == str(48 * MIB)
    assert (tmp_path / "calls").read_text().splitlines()[0] == "--noheader --jobs=391 --format=%d %b"


def test_quota_request_follows_a_count_only_gres_when_configured(volume, hooks, tmp_path) -> None:
    """`quota_gres = tmpdisk:32M`: a job with --gres=tmpdisk:3 gets 96M, whatever its --tmp says;
    one without that GRES gets its --tmp."""
    squeue = tmp_path / "squeue"
    squeue.write_text("#!/bin/sh\n"
                      "case \"$2\" in\n"
                      "--jobs=421) echo '10M gres:tmpdisk:3' ;;\n"
                      "*) echo '40M gres:gpu:1' ;;\n"
                      "esac\n")
    squeue.chmod(0o755)
    volume.configure({"jobs": {"quota": "request", "quota_gres": "tmpdisk:32M"}, "slurm": {"squeue": str(squeue)}})
    result = volume.hook("prolog", volume.job_env(421), hooks_dir=hooks)
    assert result.returncode == 0 and "--gres=tmpdisk:3" in result.stderr, result.stderr
    other = start_job(volume, hooks, 422)
    groups = qgroups(volume.mount_point)
    assert groups[f"1/{subvolume_id(volume.job_dir(421))}"][1] == str(96 * MIB)
    assert groups[f"1/{subvolume_id(other)}"][1] == str(40 * MIB)


def test_the_epilog_ends_processes_holding_the_job_subvolume(volume, hooks) -> None:
    """A subvolume has a device of its own: the holder search must still find what is inside it."""
    volume.configure({"jobs": {"quota": "64M"}})
    job = start_job(volume, hooks, 401)
    (job / "deep").mkdir()
    os.chown(job / "deep", 4201, 4201)
    in_dir = volume.start_as("sstest1", ["/bin/sleep", "300"], cwd=job / "deep")
    open_file = volume.start_as("sstest1", ["/bin/sh", "-c", f"exec 3>{job}/held; exec /bin/sleep 300"])
    poll(lambda: (job / "held").exists(), 10, what="the holder to open its file")
    result = volume.hook("epilog", volume.job_env(401, context="epilog_slurmd"), hooks_dir=hooks)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("killed pid") == 2, result.stderr
    assert in_dir.wait(timeout=10) != 0 and open_file.wait(timeout=10) != 0
    volume.wait_trash_empty()


def prolog_modules(volume, job_id: int) -> set[str]:
    """The modules a Prolog (the hook's code, as slurmd starts it) has loaded when it is done."""
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from slurm_scratch import cli\n"
        "status = cli.hook('prolog')\n"
        "print('MODULES', ' '.join(sorted(sys.modules)))\n"
        "sys.exit(status)\n"
    )
    result = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", code], env=volume.job_env(job_id), capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 0, result.stderr
    return set(result.stdout.splitlines()[-1].split()[1:])


def test_the_prolog_imports_nothing_new_with_quota_off_and_little_with_it_on(volume) -> None:
    quota_modules = {"slurm_scratch.jobs.quota", "slurm_scratch.jobs.quota_btrfs", "slurm_scratch.jobs.quota_project"}
    heavy = {"subprocess", "json", "re", "signal", "logging", "dataclasses", "typing", "ctypes"}
    off = prolog_modules(volume, 411)
    assert not off & (quota_modules | heavy | {"fcntl", "struct"}), off & (quota_modules | heavy | {"fcntl", "struct"})
    volume.configure({"jobs": {"quota": "64M"}})
    on = prolog_modules(volume, 412)
    assert on - off <= quota_modules | {"fcntl", "struct", "_struct", "slurm_scratch.mounts"}, on - off
    assert not on & heavy  # (the quota's own work runs in the Prolog's forked child, under fs_timeout)
