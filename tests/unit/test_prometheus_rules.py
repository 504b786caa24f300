"""etc/prometheus: the alert rules are valid (`promtool check rules`) and fire as their rule test
says (`promtool test rules`: volume missing, degraded, I/O errors, trash growing, stale metrics
file, drained), and they name only metrics the health check writes (health/metrics.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from slurm_scratch.health import metrics
from unit.test_metrics import sample_figures

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

RULES = Path(__file__).resolve().parents[2] / "etc" / "prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


@pytest.fixture(scope="module")
def promtool() -> str:
    if not os.access(PROMTOOL, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing (Debian's prometheus package; make deps installs it)")
        pytest.skip("promtool is missing (apt-get install prometheus, or make deps)")
    return PROMTOOL


def test_the_rules_pass_promtool_check(promtool: str) -> None:
    result = subprocess.run([promtool, "check", "rules", "slurm-scratch.rules.yml"], cwd=RULES, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "SUCCESS: 6 rules found" in result.stdout, result.stdout + result.stderr


def test_the_rules_pass_their_rule_test(promtool: str) -> None:
    result = subprocess.run([promtool, "test", "rules", "slurm-scratch.rules.test.yml"], cwd=RULES, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_the_rules_name_only_metrics_the_health_check_writes() -> None:
    text = (RULES / "slurm-scratch.rules.yml").read_text()
    named = {word.split("{")[0].split("[")[0] for word in text.replace("(", " ").replace(")", " ").split() if word.startswith("slurm_scratch_")}
    written = {sample.name for family in text_string_to_metric_families(metrics.render(sample_figures()).decode()) for sample in family.samples}
    assert named and named <= written, named - written
