"""The config file: strict parsing, validation of every value, messages naming file, line, section and key."""

from __future__ import annotations

import os

import pytest

from slurm_scratch import config
from slurm_scratch.errors import ConfigError

PATH = "/etc/slurm-scratch/test.conf"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config.parse_config(text, PATH)
    assert caught.value.exit_code == 3
    return caught.value.problems


def test_defaults() -> None:
    cfg = config.parse_config("", "")
    assert cfg.volume.mount_point == "/scratch"
    assert cfg.volume.devices == ("auto",)
    assert cfg.volume.mount_mode == 0o1777
    assert cfg.jobs.dir == "/scratch/job_%j"
    assert cfg.jobs.mode == 0o700
    assert cfg.jobs.export == ("SCRATCH",)
    assert cfg.jobs.kill_processes is True
    assert cfg.jobs.sweep_guard == 60.0
    assert cfg.jobs.fs_timeout == 30.0
    assert cfg.slurm.squeue == "/usr/bin/squeue"
    assert all(not from_file for _, _, _, from_file in cfg.effective)


def test_values_are_parsed_and_sections_keys_are_case_insensitive() -> None:
    cfg = config.parse_config(
        "# comment\n; another\n[VOLUME]\nMount_Point = /local/scratch/\n\n[jobs]\ndir = %u/%n/job_%j\nmode = 750\n"
        "export = SCRATCH, TMPDIR\nkill_processes = No\nsweep_guard = 0.5\n[slurm]\ntimeout = 2.5\n",
        PATH,
    )
    assert cfg.volume.mount_point == "/local/scratch"
    assert cfg.jobs.dir == "/local/scratch/%u/%n/job_%j"
    assert cfg.jobs.mode == 0o750
    assert cfg.jobs.export == ("SCRATCH", "TMPDIR")
    assert cfg.jobs.kill_processes is False
    assert cfg.jobs.sweep_guard == 0.5
    assert cfg.slurm.timeout == 2.5
    assert ("jobs", "mode", "750", True) in cfg.effective


def test_unknown_key_names_file_line_section_and_key() -> None:
    (problem,) = problems("[jobs]\nmode = 0700\ndirectory = x\n")
    assert problem.startswith(f"{PATH}:3: [jobs] directory: unknown key (known: dir, mode, ")


def test_wrong_type_names_file_line_section_key_and_value() -> None:
    (problem,) = problems("[jobs]\nsweep_guard = a minute\n")
    assert problem == f"{PATH}:2: [jobs] sweep_guard = 'a minute': must be a number"


def test_every_problem_is_reported_at_once() -> None:
    found = problems("[volume]\nwipe = sometimes\nbogus = 1\n[jobs]\nmode = 8\n[nope]\nx = 1\n[slurm]\ntimeout = 0\n")
    assert len(found) == 5
    assert any("[volume] wipe = 'sometimes': must be yes or no" in p for p in found)
    assert any("[volume] bogus: unknown key" in p for p in found)
    assert any("[jobs] mode = '8': must be an octal mode" in p for p in found)
    assert any(f"{PATH}:6: unknown section [nope]" in p for p in found)
    assert any("[slurm] timeout = '0': must be between 0.5 and 600" in p for p in found)
    assert not any("x" == p for p in found)  # keys of an unknown section are not reported again


@pytest.mark.parametrize(
    "text, message",
    [
        ("mode = 0700\n", "key 'mode' before any [section]"),
        ("[jobs\n", "malformed section header"),
        ("[jobs]\n[jobs]\n", "section [jobs] appears twice"),
        ("[jobs]\nmode = 0700\nmode = 0700\n", "[jobs] mode: set twice"),
        ("[jobs]\nmode\n", "expected 'key = value', got 'mode'"),
    ],
)
def test_malformed_files(text: str, message: str) -> None:
    assert any(message in p and p.startswith(f"{PATH}:") for p in problems(text))


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("volume", "mount_point", "/", "must not be /"),
        ("volume", "mount_point", "scratch", "must be an absolute path"),
        ("volume", "mount_point", "/a/../scratch", "must be a normalised path"),
        ("volume", "mount_point", "/a//scratch", "must be a normalised path"),
        ("volume", "mount_point", "/my scratch", "must not contain whitespace"),
        ("volume", "mount_mode", "0777", "needs the sticky bit"),
        ("volume", "mount_mode", "0775", "needs the sticky bit"),
        ("volume", "mount_mode", "17777", "must be an octal mode"),
        ("volume", "devices", "/tmp/disk.img", "explicit devices must be paths or globs under /dev/"),
        ("volume", "devices", "/dev/../etc/passwd", "under /dev/"),
        ("volume", "backend", "zfs", "must be one of lvm, mdadm, single, btrfs, auto"),
        ("volume", "filesystem", "ntfs", "must be one of ext4, xfs, btrfs"),
        ("volume", "vg_name", "-vg", "not starting with -"),
        ("volume", "vg_name", "vg/01", "must be 1-64 characters"),
        ("volume", "label", "a-very-long-label", "must be 1-12 characters"),
        ("volume", "stripe_kb", "2", "must be between 4 and 4096"),
        ("volume", "stripe_kb", "64k", "must be a whole number"),
        ("volume", "mount_options", "noatime,,nodiratime", "comma-separated list of mount options"),
        ("volume", "mount_options", "noatime, nodiratime", "must not contain whitespace"),
        ("volume", "command_timeout", "nan", "must be between 1 and 86400"),
        ("jobs", "dir", "/elsewhere/job_%j", "must resolve to a path below [volume] mount_point /scratch"),
        ("jobs", "dir", "/scratch", "must resolve to a path below [volume] mount_point"),
        ("jobs", "dir", "/scratchy/job_%j", "must resolve to a path below [volume] mount_point"),
        ("jobs", "dir", "../job_%j", "must not contain empty, '.' or '..' components"),
        ("jobs", "dir", "a//job_%j", "must not contain empty, '.' or '..' components"),
        ("jobs", "dir", "./job_%j", "must not contain empty, '.' or '..' components"),
        ("jobs", "dir", "job_%j/", "must not contain empty, '.' or '..' components"),
        ("jobs", "dir", "%j/data", "the last component must contain %j"),
        ("jobs", "dir", "job_%%j", "the last component must contain %j"),
        ("jobs", "dir", "job_%j_%s", "unknown placeholder in 'job_%j_%s'"),
        ("jobs", "dir", "job_%j%", "unknown placeholder"),
        ("jobs", "dir", "job %j", "must not contain whitespace"),
        ("jobs", "mode", "rwx", "must be an octal mode"),
        ("jobs", "export", "SCRATCH,MY-DIR", "'MY-DIR' is not a valid environment variable name"),
        ("jobs", "export", ",", "must name at least one environment variable"),
        ("jobs", "kill_processes", "2", "must be yes or no"),
        ("jobs", "reaper_max_seconds", "0", "must be between 1 and 604800"),
        ("slurm", "drain_prefix", 'scratch"', "without quotes or backslashes"),
        ("slurm", "api", "rest", "must be one of auto, scontrol, pyslurm"),
        ("slurm", "scontrol", "scontrol", "must be an absolute path"),
        ("slurm", "slurm_conf", "slurm.conf", "must be an absolute path"),
    ],
)
def test_bad_values(section: str, key: str, value: str, message: str) -> None:
    found = problems(f"[{section}]\n{key} = {value}\n")
    assert len(found) == 1, found
    assert f"[{section}] {key}" in found[0] and message in found[0] and found[0].startswith(PATH)


def test_btrfs_backend_needs_btrfs() -> None:
    (problem,) = problems("[volume]\nbackend = btrfs\n")
    assert "backend = btrfs and filesystem = ext4" in problem
    assert config.parse_config("[volume]\nbackend = btrfs\nfilesystem = btrfs\n", PATH).volume.backend == "btrfs"


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("job_%j", "/scratch/job_%j"),
        ("/scratch/job_%j", "/scratch/job_%j"),
        ("%u/job_%j", "/scratch/%u/job_%j"),
        ("%n/%u/%j.d", "/scratch/%n/%u/%j.d"),
        ("100%%/job_%j", "/scratch/100%%/job_%j"),
    ],
)
def test_good_dir_patterns(pattern: str, expected: str) -> None:
    assert config.parse_config(f"[jobs]\ndir = {pattern}\n", PATH).jobs.dir == expected


def test_sticky_world_writable_mount_mode_is_fine() -> None:
    assert config.parse_config("[volume]\nmount_mode = 1777\n", PATH).volume.mount_mode == 0o1777
    assert config.parse_config("[volume]\nmount_mode = 0755\n", PATH).volume.mount_mode == 0o755


def test_render_marks_defaults() -> None:
    text = config.render(config.parse_config("[jobs]\ndir = %u/job_%j\n", PATH))
    assert text.startswith(f"# effective configuration ({PATH})\n")
    assert "\n[jobs]\ndir = /scratch/%u/job_%j\nmode = 0700    # default\n" in text
    assert "[volume]" in text and "[health]" in text and "[slurm]" in text


def test_load_config_from_environment_and_argument(tmp_path) -> None:
    path = tmp_path / "a.conf"
    path.write_text("[jobs]\nmode = 0750\n")
    path.chmod(0o644)
    assert config.load_config(environ={"SLURM_SCRATCH_CONF": str(path)}).jobs.mode == 0o750
    assert config.load_config(str(path)).path == str(path)


def test_missing_default_file_means_defaults(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "absent.conf"))
    cfg = config.load_config(environ={})
    assert cfg.path == "" and cfg.volume.mount_point == "/scratch"


def test_missing_named_file_is_an_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="absent.conf: no such file"):
        config.load_config(environ={"SLURM_SCRATCH_CONF": str(tmp_path / "absent.conf")})
    with pytest.raises(ConfigError, match="no such file"):
        config.load_config(str(tmp_path / "absent.conf"))


def test_not_utf8_is_an_error(tmp_path) -> None:
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"[jobs]\n# caf\xe9\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        config.load_config(str(path))


@pytest.mark.skipif(os.geteuid() != 0, reason="the ownership rule applies to root, who runs the hooks")
@pytest.mark.parametrize("mode, uid", [(0o666, 0), (0o620, 0), (0o644, 1)])
def test_file_others_can_change_is_refused_as_root(tmp_path, mode: int, uid: int) -> None:
    path = tmp_path / "shared.conf"
    path.write_text("[jobs]\nmode = 0700\n")
    os.chown(path, uid, 0)
    path.chmod(mode)
    with pytest.raises(ConfigError, match="must be owned by root and not writable by group or others"):
        config.load_config(str(path))


@pytest.mark.parametrize("kind", ["a FIFO", "a directory", "a character device"])
def test_a_path_that_is_not_a_regular_file_is_refused_without_opening_it(tmp_path, kind: str) -> None:
    # Opening a FIFO nobody writes to blocks for good: this test would hang, not fail, if it were opened.
    path = {"a FIFO": tmp_path / "conf.fifo", "a directory": tmp_path, "a character device": "/dev/zero"}[kind]
    if kind == "a FIFO":
        os.mkfifo(path)
    with pytest.raises(ConfigError, match=f"{path}: is {kind}, not a regular file") as caught:
        config.load_config(environ={"SLURM_SCRATCH_CONF": str(path)})
    assert caught.value.exit_code == 3


def test_a_symlink_to_a_regular_file_is_followed(tmp_path) -> None:
    # Config management keeps /etc files as symlinks (into a store or a checkout): a design choice.
    real = tmp_path / "real.conf"
    real.write_text("[jobs]\nfs_timeout = 5\n")
    real.chmod(0o644)
    (tmp_path / "link.conf").symlink_to(real)
    assert config.load_config(str(tmp_path / "link.conf")).jobs.fs_timeout == 5.0


def test_a_huge_file_is_refused(tmp_path) -> None:
    path = tmp_path / "huge.conf"
    with open(path, "wb") as stream:
        stream.truncate(config.MAX_CONFIG_BYTES + 1)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="larger than"):
        config.load_config(str(path))


@pytest.mark.parametrize("value", ["0", "0.5", "3601", "soon"])
def test_fs_timeout_must_be_a_sane_number_of_seconds(value: str) -> None:
    (problem,) = problems(f"[jobs]\nfs_timeout = {value}\n")
    assert f"[jobs] fs_timeout = {value!r}" in problem
