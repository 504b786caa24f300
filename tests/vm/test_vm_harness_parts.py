"""The VM harness's own pure parts, without a VM: reading debian.sources, modules.dep closure,
the vmlinux extraction, and mapping junit results back to guest tests."""
from __future__ import annotations

import lzma
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from guest_run import junit_key, module_timeout, parse_junit  # noqa: E402
from lab.vm_image import (archive_url, dependency_closure, extract_vmlinux,  # noqa: E402
                      module_name, parse_modules_dep)

SOURCES = """\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_archive_url_is_the_uri_of_the_bookworm_stanza(tmp_path):
    sources = tmp_path / "debian.sources"
    sources.write_text(SOURCES)
    assert archive_url(sources) == "http://mirror.example/debian"
    sources.write_text(SOURCES.split("\n\n")[1])
    with pytest.raises(RuntimeError, match="no stanza with Suites: bookworm"):
        archive_url(sources)


def test_module_closure_follows_modules_dep():
    dependencies = parse_modules_dep(
        "kernel/drivers/nvme/host/nvme-tcp.ko: kernel/drivers/nvme/host/nvme-fabrics.ko "
        "kernel/drivers/nvme/host/nvme-core.ko\n"
        "kernel/drivers/nvme/host/nvme-fabrics.ko: kernel/drivers/nvme/host/nvme-core.ko\n"
        "kernel/drivers/nvme/host/nvme-core.ko:\n"
        "kernel/fs/xfs/xfs.ko: kernel/lib/libcrc32c.ko\n"
        "kernel/lib/libcrc32c.ko:\n")
    by_name = {module_name(path): path for path in dependencies}
    assert module_name("kernel/drivers/nvme/host/nvme-tcp.ko.xz") == "nvme_tcp"
    assert dependency_closure(by_name, dependencies, ["nvme-tcp"]) == {
        "kernel/drivers/nvme/host/nvme-tcp.ko", "kernel/drivers/nvme/host/nvme-fabrics.ko",
        "kernel/drivers/nvme/host/nvme-core.ko"}
    with pytest.raises(RuntimeError, match="dm_mod not found|dm-mod not found"):
        dependency_closure(by_name, dependencies, ["dm-mod"])


def test_vmlinux_is_the_xz_stream_that_holds_an_elf(tmp_path):
    elf = b"\x7fELF" + bytes(range(256)) * 64
    decoy = lzma.compress(b"not a kernel", format=lzma.FORMAT_XZ)
    bzimage = tmp_path / "vmlinuz"
    bzimage.write_bytes(b"MZ setup code" + decoy + b"\0" * 13 +
                        lzma.compress(elf, format=lzma.FORMAT_XZ) + b"trailer")
    extract_vmlinux(bzimage, tmp_path / "vmlinux")
    assert (tmp_path / "vmlinux").read_bytes() == elf
    bzimage.write_bytes(b"MZ" + decoy)
    with pytest.raises(RuntimeError, match="no xz-compressed ELF"):
        extract_vmlinux(bzimage, tmp_path / "vmlinux2")


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="test_a" name="test_ok" time="1.5" />
<testcase classname="test_a" name="test_param[2-lvm]" time="2.0">
  <failure message="AssertionError: boom">long text</failure>
  <system-err>slurm-scratch: setup failed</system-err></testcase>
<testcase classname="test_a" name="test_skip" time="0"><skipped type="pytest.skip" message="why" /></testcase>
<testcase classname="test_a" name="test_xfail" time="0"><skipped type="pytest.xfail" message="known bug" /></testcase>
<testcase classname="test_a.TestK" name="test_m" time="0.1"><error message="failed on teardown">tb</error></testcase>
</testsuite></testsuites>"""


def test_junit_results_map_back_to_guest_node_ids():
    outcomes = parse_junit(JUNIT)
    assert outcomes[junit_key("test_a.py::test_ok")].kind == "passed"
    failed = outcomes[junit_key("test_a.py::test_param[2-lvm]")]
    assert failed.kind == "failed" and "boom" in failed.message and "long text" in failed.message
    assert "setup failed" in failed.message
    assert outcomes[junit_key("test_a.py::test_skip")].kind == "skipped"
    assert outcomes[junit_key("test_a.py::test_xfail")].message == "known bug"
    assert outcomes[junit_key("test_a.py::test_xfail")].kind == "xfailed"
    assert outcomes[junit_key("test_a.py::TestK::test_m")].kind == "failed"


def test_a_guest_module_can_raise_its_vm_time_limit():
    assert module_timeout("test_volume_matrix.py") == 1200
    assert module_timeout("test_harness_smoke.py") == 900
