"""The metrics file through the real collector: Debian's prometheus-node-exporter (textfile
collector only, on loopback, started by the test and stopped by PID) scrapes what the healthcheck
hook wrote, and prometheus_client's parser reads it back. Checked against the volume itself: its
size, a job's bytes, the hooks' runs, a drain, and a stale file through node_textfile_mtime_seconds.
Hooks run as slurmd runs them (lab/jobs.py); Slurm is lab/fake_slurm.py's."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from lab.fake_slurm import FakeSlurm
from lab.jobs import poll, scratch_volume
from lab.process import die_with_parent, stop_process
from slurm_scratch import layout, locks

pytestmark = pytest.mark.root
prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

EXPORTER = "/usr/bin/prometheus-node-exporter"
REPO = Path(__file__).resolve().parents[2]
NODE = "node1"


@pytest.fixture(autouse=True)
def fresh_node():
    names = [layout.HEALTH_STATE, layout.HOOK_FINDING, layout.HOOK_FIGURES, layout.HOOK_TOTALS, layout.HEALTH_FINDINGS,
             layout.VOLUME_RECORD_CACHE, layout.IO_ERRORS_STATE, layout.VOLUME_RECORD]
    for path in names:
        if os.path.exists(path):
            os.unlink(path)
    yield
    for path in names:
        if os.path.exists(path):
            os.unlink(path)


class Exporter:
    def __init__(self, directory: Path) -> None:
        if not os.access(EXPORTER, os.X_OK):
            pytest.skip("prometheus-node-exporter is not installed (make deps)")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process = subprocess.Popen(
            [EXPORTER, f"--web.listen-address=127.0.0.1:{self.port}", "--collector.disable-defaults",
             "--collector.textfile", f"--collector.textfile.directory={directory}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with_parent)
        poll(self._up, 20, 0.1, "node_exporter listening")

    def _up(self) -> bool:
        try:
            return bool(self.text())
        except OSError:
            return False

    def text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
            return response.read().decode()

    def scrape(self) -> dict:
        return {family.name: family for family in text_string_to_metric_families(self.text())}

    def stop(self) -> None:
        stop_process(self.process.pid, self.process)
        self.process.stderr.close()


def value(families: dict, name: str, **labels: str) -> float:
    family = families[name]
    return next(s.value for s in family.samples if s.name in (name, f"{name}_total") and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture
def node(loops, tmp_path):
    with scratch_volume(loops, "ext4", size_mb=256) as scratch:
        slurm = FakeSlurm(tmp_path / "slurm")
        textfiles = scratch.base / "textfile"  # reachable by every user, as node_exporter's directory is
        textfiles.mkdir()
        scratch.configure({"volume": {"backend": "single"}, "health": {"metrics_dir": str(textfiles)},
                           "slurm": {"scontrol": str(slurm.dir / "scontrol"), "squeue": str(slurm.dir / "squeue")}})
        exporter = Exporter(textfiles)
        try:
            yield scratch, slurm, textfiles, exporter
        finally:
            exporter.stop()


def healthcheck(scratch, *args: str) -> subprocess.CompletedProcess:
    if args:
        return scratch.cli("healthcheck", "--node", NODE, *args)
    return scratch.hook("healthcheck", {"SLURMD_NODENAME": NODE, "SLURM_SCRATCH_CONF": str(scratch.config)})


def test_the_collector_shows_the_volume_a_jobs_bytes_the_hooks_and_a_drain(node) -> None:
    scratch, slurm, textfiles, exporter = node
    assert healthcheck(scratch).returncode == 0
    before = exporter.scrape()
    st = os.statvfs(scratch.mount_point)
    assert before["slurm_scratch_volume_size_bytes"].type == "gauge"
    assert value(before, "slurm_scratch_volume_size_bytes") == st.f_blocks * st.f_frsize
    assert value(before, "slurm_scratch_volume_mounted") == 1 and value(before, "slurm_scratch_healthy") == 1
    assert value(before, "node_textfile_scrape_error") == 0

    assert scratch.prolog(71).returncode == 0
    with open(scratch.job_dir(71) / "output", "wb") as stream:  # the running job's 32 MiB
        stream.write(os.urandom(1 << 20) * 32)
        os.fsync(stream.fileno())
    assert healthcheck(scratch).returncode == 0
    running = exporter.scrape()
    used = value(before, "slurm_scratch_volume_free_bytes") - value(running, "slurm_scratch_volume_free_bytes")
    assert 32 << 20 <= used < 40 << 20
    assert value(running, "slurm_scratch_trash_entries") == 0

    reaper_lock = locks.acquire(layout.REAPER_LOCK)  # the reaper waits: the job's bytes stay in the trash
    try:
        assert scratch.epilog(71).returncode == 0
        assert scratch.prolog(72).returncode == 0
        assert healthcheck(scratch).returncode == 0
        during = exporter.scrape()
    finally:
        os.close(reaper_lock)
    assert value(during, "slurm_scratch_trash_entries") == 1 and value(during, "slurm_scratch_trash_bytes") >= 32 << 20
    assert value(during, "slurm_scratch_trash_scan_complete") == 1
    histogram = during["slurm_scratch_hook_duration_seconds"]
    assert histogram.type == "histogram"
    counts = {s.labels["hook"]: s.value for s in histogram.samples if s.name.endswith("_count")}
    assert counts == {"prolog": 2, "epilog": 1}
    assert value(during, "slurm_scratch_hook_failures", hook="prolog") == 0
    assert during["slurm_scratch_hook_failures"].type == "counter"

    subprocess.run(["mount", "-o", "remount,ro", str(scratch.mount_point)], check=True, capture_output=True)
    try:
        assert healthcheck(scratch).returncode == 1
        drained = exporter.scrape()
        assert slurm.state()[0] == "IDLE+DRAIN"
        assert value(drained, "slurm_scratch_drained", reason="writable") == 1
        assert value(drained, "slurm_scratch_check_ok", check="writable") == 0 and value(drained, "slurm_scratch_healthy") == 0
        last_success = value(drained, "slurm_scratch_last_success_timestamp_seconds")  # the healthy run before
        assert 0 <= value(during, "slurm_scratch_last_run_timestamp_seconds") - last_success < 5
        assert value(drained, "slurm_scratch_last_run_timestamp_seconds") > last_success
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(scratch.mount_point)], check=True, capture_output=True)
    assert scratch.epilog(72).returncode == 0


def test_a_stale_file_shows_through_the_collectors_mtime(node) -> None:
    scratch, slurm, textfiles, exporter = node
    assert healthcheck(scratch).returncode == 0
    path = textfiles / "slurm_scratch.prom"
    fresh = value(exporter.scrape(), "node_textfile_mtime_seconds", file=str(path))
    assert abs(fresh - path.stat().st_mtime) < 1 and time.time() - fresh < 60
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))  # as if no health check had run for an hour
    stale = value(exporter.scrape(), "node_textfile_mtime_seconds", file=str(path))
    assert time.time() - stale > 3000  # what ScratchMetricsStale (etc/prometheus) alerts on


def test_the_file_is_world_readable_replaced_by_rename_and_never_half_written(node) -> None:
    scratch, slurm, textfiles, exporter = node
    path = textfiles / "slurm_scratch.prom"
    assert healthcheck(scratch).returncode == 0
    reads: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            with open(path) as stream:
                reads.append(stream.read())

    def last_run(text: str) -> str:
        return next(line for line in text.splitlines() if line.startswith("slurm_scratch_last_run_timestamp_seconds "))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for args in ((), (), (), ("--report-only",)):  # NHC or cron (--report-only) write it too
            held = os.open(path, os.O_RDONLY)
            try:
                before = os.pread(held, 1 << 20, 0).decode()
                assert healthcheck(scratch, *args).returncode == 0
                assert os.fstat(held).st_nlink == 0, "the old file was replaced by a rename, not rewritten"
                assert os.pread(held, 1 << 20, 0).decode() == before and last_run(path.read_text()) != last_run(before)
            finally:
                os.close(held)
    finally:
        stop.set()
        thread.join()
    assert slurm.calls() == [f"show node -o {NODE}"], "metrics on: still no RPC on a healthy node after the first check"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and path.stat().st_uid == 0
    assert sorted(os.listdir(textfiles)) == ["slurm_scratch.prom"], "no temporary left"
    assert len(reads) > 5
    whole = [text for text in reads if text.endswith("\n") and "slurm_scratch_io_errors_sticky" in text]
    assert len(whole) == len(reads), "every read saw a whole file"
    as_nobody = subprocess.run(["/usr/bin/setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "cat", str(path)],
                               capture_output=True, text=True)
    assert as_nobody.returncode == 0 and "slurm_scratch_healthy" in as_nobody.stdout


def test_status_shows_the_node_at_a_glance(node) -> None:
    scratch, slurm, textfiles, exporter = node
    assert scratch.prolog(81).returncode == 0
    assert scratch.epilog(81).returncode == 0
    assert healthcheck(scratch).returncode == 0
    result = scratch.cli("status")  # exit 1: this loop filesystem is not a volume setup built (the volume part says so)
    for line in ("volume:", "slurm:      not drained by slurm-scratch", "health:     ok (", "io errors:  none in the kernel log since boot",
                 "trash:", f"metrics:    {textfiles}/slurm_scratch.prom, written"):
        assert line in result.stdout, result.stdout
    import json

    report = json.loads(scratch.cli("status", "--json").stdout)
    assert report["mounted"] is True and report["mount_point"] == str(scratch.mount_point)  # the volume's keys, as before
    assert report["health"]["healthy"] is True and {f["check"] for f in report["health"]["findings"]} >= {"mount", "probe", "io"}
    assert report["metrics"]["age_seconds"] < 120 and report["io_errors"]["watched"] is True
    assert report["slurm"]["drained_by_tool"] == "" and report["trash"]["complete"] is True


def imported_by(scratch, hook: str, job_id: int) -> set[str]:
    """The modules a hook imports, as `python3 -X importtime` reports them (the hook's own -I -S)."""
    context = "prolog_slurmd" if hook == "prolog" else "epilog_slurmd"
    env = scratch.job_env(job_id, context=context)
    result = subprocess.run(["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), "/usr/bin/python3", "-I", "-S", "-X", "importtime",
                             str(REPO / "hooks" / hook)], cwd="/", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")} - {"imported package"}


def test_the_per_job_hooks_pay_nothing_for_metrics(node) -> None:
    """With metrics on, the Prolog and Epilog import exactly what they import with metrics off (no
    prometheus_client, re, json, logging...) but the small module that appends one line to a file
    in /run; with metrics off, not even that."""
    scratch, slurm, textfiles, exporter = node
    assert healthcheck(scratch).returncode == 0  # metrics on: the health check made the figures file
    on = {hook: imported_by(scratch, hook, 91) for hook in ("prolog", "epilog")}
    lines = Path(layout.HOOK_FIGURES).read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["prolog", "epilog"] and all(line.split()[2] == "0" for line in lines)
    scratch.configure({"volume": {"backend": "single"}, "slurm": {"scontrol": str(slurm.dir / "scontrol")}})
    assert healthcheck(scratch).returncode == 0  # metrics off: the figures file is gone
    assert not os.path.exists(layout.HOOK_FIGURES)
    off = {hook: imported_by(scratch, hook, 92) for hook in ("prolog", "epilog")}
    for hook in ("prolog", "epilog"):
        assert on[hook] - {"slurm_scratch.figures"} == off[hook] and "slurm_scratch.figures" not in off[hook], hook
        assert not {"prometheus_client", "re", "json", "logging", "dataclasses", "typing", "subprocess"} & on[hook], hook


def test_the_installed_hooks_write_the_metrics(installed, node) -> None:
    """`make install` brings prometheus_client into the virtualenv: the installed healthcheck writes
    the file, the installed Prolog and Epilog leave their figures, as slurmd runs them (env -i)."""
    scratch, slurm, textfiles, exporter = node
    hooks = installed / "libexec" / "slurm-scratch"
    env = {"SLURMD_NODENAME": NODE, "SLURM_SCRATCH_CONF": str(scratch.config)}
    assert scratch.hook("healthcheck", env, hooks_dir=hooks).returncode == 0
    assert scratch.hook("prolog", scratch.job_env(95), hooks_dir=hooks).returncode == 0
    assert scratch.hook("epilog", scratch.job_env(95, context="epilog_slurmd"), hooks_dir=hooks).returncode == 0
    result = scratch.hook("healthcheck", env, hooks_dir=hooks)
    assert result.returncode == 0, result.stderr
    found = exporter.scrape()
    counts = {s.labels["hook"]: s.value for s in found["slurm_scratch_hook_duration_seconds"].samples if s.name.endswith("_count")}
    assert counts == {"prolog": 1, "epilog": 1} and value(found, "slurm_scratch_healthy") == 1
