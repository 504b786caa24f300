"""Run guest test modules (tests/vm/guest/test_*.py) in the test VM and read their results.

The host collects the guest tests itself (`pytest --collect-only` on the guest folder: the
guest modules import only the standard library at module level), so that every guest test is
a host test too. One VM boots per guest module; its pytest writes a junit XML to the results
share, which gives each test's outcome and failure text back to the host.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from lab.vm_boot import PROJECT_ROOT, VmResult, run_in_vm

GUEST_DIR = Path(__file__).resolve().parent / "guest"
GUEST_SOURCE = Path("/src")  # where lab/vm_init.sh mounts the project checkout
DEFAULT_MODULE_TIMEOUT_S = 900
PER_TEST_TIMEOUT_S = 300


@dataclass(frozen=True)
class GuestOutcome:
    kind: str  # passed, failed, skipped, xfailed
    message: str
    seconds: float


@dataclass(frozen=True)
class GuestModuleRun:
    module: str
    result: VmResult
    outcomes: dict[str, GuestOutcome]
    problem: str  # why the run as a whole is not trustworthy; empty when it is


def collect_guest_tests() -> tuple[list[str], str]:
    """(node ids relative to the guest folder, error text if collection failed)."""
    argv = [sys.executable, "-m", "pytest", "--collect-only", "-q",
            "-c", str(GUEST_DIR / "pytest.ini"), "--rootdir", str(GUEST_DIR),
            "--confcutdir", str(GUEST_DIR), "-p", "no:cacheprovider", str(GUEST_DIR)]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run(argv, capture_output=True, text=True, cwd=GUEST_DIR, env=env,
                            timeout=120)
    ids = [line.strip() for line in result.stdout.splitlines() if "::" in line]
    if result.returncode != 0 or not ids:
        return ids, f"collecting the guest tests failed (exit {result.returncode}):\n" \
                    f"{result.stdout[-4000:]}{result.stderr[-4000:]}"
    return ids, ""


def module_of(node_id: str) -> str:
    return node_id.split("::", 1)[0]


def module_timeout(module: str) -> int:
    """A guest module may raise its VM's time limit with a line `VM_TIMEOUT_S = <seconds>`."""
    text = (GUEST_DIR / module).read_text()
    match = re.search(r"^VM_TIMEOUT_S\s*=\s*(\d+)", text, re.M)
    return int(match.group(1)) if match else DEFAULT_MODULE_TIMEOUT_S


def guest_command(module: str, node_ids: list[str] | None) -> str:
    guest_dir = GUEST_SOURCE / GUEST_DIR.relative_to(PROJECT_ROOT)
    targets = node_ids or [module]
    argv = ["python3", "-m", "pytest", "-c", f"{guest_dir}/pytest.ini",
            f"--rootdir={guest_dir}", f"--confcutdir={guest_dir}",
            "--junitxml=/results/junit.xml", "-o", "junit_logging=all",
            "-o", "junit_family=xunit1", f"--timeout={PER_TEST_TIMEOUT_S}", "-v",
            *[f"{guest_dir}/{target}" for target in targets]]
    return (f"cd {shlex.quote(str(GUEST_SOURCE))} && "
            f"PYTHONPATH={shlex.quote(str(GUEST_SOURCE))} {shlex.join(argv)}")


def run_guest_module(module: str, node_ids: list[str] | None, results_dir: Path) -> GuestModuleRun:
    """Boot a VM and run `node_ids` (all of `module` when None) in it."""
    result = run_in_vm(guest_command(module, node_ids), timeout_s=module_timeout(module),
                       results_dir=results_dir)
    junit = results_dir / "junit.xml"
    outcomes = parse_junit(junit.read_text()) if junit.exists() else {}
    problem = ""
    if result.exit_code not in (0, 1):  # pytest: 0 all passed, 1 some failed
        problem = result.describe_failure()
    elif not outcomes:
        problem = "the guest wrote no junit results; " + result.describe_failure()
    return GuestModuleRun(module, result, outcomes, problem)


def junit_key(node_id: str) -> str:
    """The junit (xunit1) identity of a node id: classname::name."""
    parts = node_id.split("::")
    classname = ".".join([parts[0][:-3].replace("/", ".")] + parts[1:-1])
    return f"{classname}::{parts[-1]}"


def parse_junit(text: str) -> dict[str, GuestOutcome]:
    outcomes: dict[str, GuestOutcome] = {}
    for case in ElementTree.fromstring(text).iter("testcase"):
        key = f"{case.get('classname')}::{case.get('name')}"
        if key in outcomes and outcomes[key].kind == "failed":
            continue  # a teardown report after a failure: the failure is what counts
        seconds = float(case.get("time") or 0)
        problems = [child for child in case if child.tag in ("failure", "error")]
        skipped = case.find("skipped")
        captured = "\n".join(f"--- guest {child.tag} ---\n{child.text or ''}"
                             for child in case if child.tag in ("system-out", "system-err")
                             and (child.text or "").strip())
        if problems:
            text = "\n".join(f"[{child.tag}] {child.get('message', '')}\n{child.text or ''}"
                             for child in problems)
            outcomes[key] = GuestOutcome("failed", f"{text}\n{captured[-6000:]}", seconds)
        elif skipped is not None:
            kind = "xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"
            outcomes[key] = GuestOutcome(kind, skipped.get("message", ""), seconds)
        else:
            outcomes[key] = GuestOutcome("passed", "", seconds)
    return outcomes
