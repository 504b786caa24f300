"""The metrics file's content (health/metrics.py) as Prometheus reads it: parsed back with
prometheus_client's own parser; names, types, labels and values; the atomic, world-readable write.
And the hooks' figures (figures.py) folded into totals (health/hook_figures.py)."""

from __future__ import annotations

import os
import stat

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from slurm_scratch import figures as hook_record  # noqa: E402
from slurm_scratch.health import hook_figures, metrics  # noqa: E402
from slurm_scratch.health.backlog import Backlog  # noqa: E402
from slurm_scratch.health.findings import bad, ok  # noqa: E402


def sample_figures(**changes) -> metrics.Figures:
    prolog = hook_figures.fold_lines("prolog 3.5 0\nprolog 120 1\nepilog 7 0\n", {h: hook_figures._empty(h) for h in hook_record.HOOKS})
    values = dict(
        healthy=False, checks=(("mount", True), ("io", False)), last_run=1000.0, last_success=900.0, run_seconds=0.25,
        probe_seconds=0.002, kernel_log_seconds=0.004, mounted=True, space=(100 << 20, 40 << 20, 1000, 900),
        disks_expected=2, disks_present=1, drained="io", hooks=tuple(prolog[h] for h in sorted(prolog)),
        backlog=Backlog(entries=3, bytes=12288, complete=True), io_errors=(("/dev/nvme1n1", 14),), io_sticky=True)
    values.update(changes)
    return metrics.Figures(**values)


def parsed(figures: metrics.Figures) -> dict:
    return {family.name: family for family in text_string_to_metric_families(metrics.render(figures).decode())}


def sample(family, **labels) -> float:
    return next(s.value for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items()) and (not labels or s.labels))


def test_names_types_and_values() -> None:
    found = parsed(sample_figures())
    assert all(name.startswith("slurm_scratch_") for name in found)
    assert found["slurm_scratch_volume_size_bytes"].type == "gauge" and sample(found["slurm_scratch_volume_size_bytes"]) == 100 << 20
    assert sample(found["slurm_scratch_volume_free_bytes"]) == 40 << 20
    assert (sample(found["slurm_scratch_disks_expected"]), sample(found["slurm_scratch_disks_present"])) == (2, 1)
    assert sample(found["slurm_scratch_check_ok"], check="io") == 0 and sample(found["slurm_scratch_check_ok"], check="mount") == 1
    drained = {s.labels["reason"]: s.value for s in found["slurm_scratch_drained"].samples}
    assert drained["io"] == 1 and sum(drained.values()) == 1 and set(drained) == set(metrics.DRAIN_REASONS)
    histogram = found["slurm_scratch_hook_duration_seconds"]
    assert histogram.type == "histogram"
    count = {s.labels["hook"]: s.value for s in histogram.samples if s.name.endswith("_count")}
    assert count == {"prolog": 2, "epilog": 1}
    assert sample(histogram, hook="prolog", le="0.005") == 1 and sample(histogram, hook="prolog", le="0.25") == 2
    failures = found["slurm_scratch_hook_failures"]
    assert failures.type == "counter" and {s.name for s in failures.samples} == {"slurm_scratch_hook_failures_total"}
    assert {s.labels["hook"]: s.value for s in failures.samples} == {"prolog": 1, "epilog": 0}
    assert sample(found["slurm_scratch_io_errors"], disk="/dev/nvme1n1") == 14 and found["slurm_scratch_io_errors"].type == "counter"
    assert sample(found["slurm_scratch_trash_bytes"]) == 12288 and sample(found["slurm_scratch_io_errors_sticky"]) == 1


def test_what_was_not_measured_is_left_out() -> None:
    found = parsed(sample_figures(space=None, disks_expected=None, disks_present=None, backlog=None, io_sticky=None, io_errors=(), hooks=()))
    for name in ("slurm_scratch_volume_size_bytes", "slurm_scratch_disks_expected", "slurm_scratch_trash_entries",
                 "slurm_scratch_io_errors", "slurm_scratch_hook_duration_seconds"):
        assert name not in found
    assert sample(found["slurm_scratch_healthy"]) == 0


def test_findings_give_space_probe_time_and_the_drain_reason() -> None:
    findings = [ok("mount", "m"), ok("statvfs", "s").replace(value="100 40 1000 900 4096"), ok("probe", "p").replace(value="2.5"),
                bad("io", "I/O errors on /dev/loop3")]
    assert metrics.space_of(findings) == (409600, 163840, 1000, 900)
    assert metrics.probe_seconds(findings) == 0.0025
    assert metrics.drained_for("scratch: I/O errors on /dev/loop3", [findings[-1]], "scratch:") == "io"
    assert metrics.drained_for("scratch: something older", [findings[-1]], "scratch:") == "other"
    assert metrics.drained_for("", [findings[-1]], "scratch:") == ""


def test_the_file_is_replaced_whole_and_world_readable(tmp_path) -> None:
    old_umask = os.umask(0o077)
    try:
        path = metrics.write(str(tmp_path), b"slurm_scratch_healthy 1.0\n")
        inode = os.stat(path).st_ino
        metrics.write(str(tmp_path), metrics.render(sample_figures()))
    finally:
        os.umask(old_umask)
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_ino != inode
    assert os.listdir(tmp_path) == ["slurm_scratch.prom"]


def test_hooks_figures_are_folded_once_and_survive_rotation(tmp_path, monkeypatch) -> None:
    figures_file, totals_file = tmp_path / "hook-figures", tmp_path / "totals"
    monkeypatch.setattr(hook_record, "HOOK_FIGURES", str(figures_file))
    monkeypatch.setattr(hook_figures, "HOOK_FIGURES", str(figures_file))
    monkeypatch.setattr(hook_figures, "HOOK_TOTALS", str(totals_file))
    hook_record.record("prolog", 2.0, 0)
    assert not figures_file.exists(), "metrics off (no file): a hook writes nothing"
    hook_figures.fold()
    hook_record.record("prolog", 2.0, 0)
    hook_record.record("epilog", 30.0, 1)
    with open(figures_file, "a") as stream:
        stream.write("prolog 4")  # a line being written: not folded yet
    totals = hook_figures.fold()
    assert (totals["prolog"].runs, totals["epilog"].runs, totals["epilog"].failures) == (1, 1, 1)
    with open(figures_file, "a") as stream:
        stream.write(".0 0\n")
    assert hook_figures.fold()["prolog"].runs == 2
    assert hook_figures.fold()["prolog"].runs == 2, "nothing folded twice"
    monkeypatch.setattr(hook_figures, "ROTATE_BYTES", 10)
    hook_record.record("prolog", 1.0, 0)
    inode = figures_file.stat().st_ino
    assert hook_figures.fold()["prolog"].runs == 3 and figures_file.stat().st_ino != inode and figures_file.stat().st_size == 0
    hook_record.record("prolog", 1.0, 0)
    assert hook_figures.fold()["prolog"].runs == 4
    hook_figures.stop()
    assert not figures_file.exists()
