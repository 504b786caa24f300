"""The VM tests: every guest test (tests/vm/guest/test_*.py) is one test here.

The first host test of a guest module boots a VM (QEMU, TCG) that runs all the selected tests
of that module; the rest of the module's host tests read their outcome from that run's junit
XML. A guest failure fails its host test with the guest's failure text; a guest skip or xfail
is reported the same way here. See tests/vm/README.md.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from guest_run import (GuestModuleRun, collect_guest_tests, junit_key,  # noqa: E402
                       module_of, run_guest_module)
from lab.vm_boot import qemu_unavailable_reason  # noqa: E402
from lab.vm_image import VmImage, ensure_image  # noqa: E402

pytestmark = pytest.mark.vm

GUEST_TESTS, COLLECTION_ERROR = collect_guest_tests()


@pytest.fixture(scope="session")
def vm_image() -> VmImage:
    reason = qemu_unavailable_reason()
    if reason:
        pytest.skip(f"no VM possible here: {reason}")
    if os.geteuid() != 0:
        pytest.skip("the VM image is built as root (mmdebstrap, chroot)")
    return ensure_image()


@pytest.fixture(scope="session")
def guest_runs(vm_image: VmImage, request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory):
    """run(module) -> GuestModuleRun, booting the VM for a module at most once per session."""
    runs: dict[str, GuestModuleRun] = {}
    selected: dict[str, list[str]] = {}
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if callspec and "guest_test" in callspec.params and item.module.__name__ == __name__:
            node_id = callspec.params["guest_test"]
            selected.setdefault(module_of(node_id), []).append(node_id)

    def run(module: str) -> GuestModuleRun:
        if module not in runs:
            wanted = selected.get(module, [])
            all_of_module = [t for t in GUEST_TESTS if module_of(t) == module]
            node_ids = None if sorted(wanted) == sorted(all_of_module) else wanted
            results = tmp_path_factory.mktemp("vm-" + Path(module).stem)
            runs[module] = run_guest_module(module, node_ids, results)
            done = runs[module]
            print(f"\n[vm] {module}: exit {done.result.exit_code} in "
                  f"{done.result.seconds:.1f} s, results in {results}", file=sys.stderr)
        return runs[module]

    return run


def test_guest_collection() -> None:
    """The guest tests can be collected (a syntax or import error in one shows up here)."""
    assert not COLLECTION_ERROR, COLLECTION_ERROR


@pytest.mark.parametrize("guest_test", GUEST_TESTS)
def test_in_vm(guest_test: str, guest_runs) -> None:
    run: GuestModuleRun = guest_runs(module_of(guest_test))
    outcome = run.outcomes.get(junit_key(guest_test))
    if outcome is None:
        pytest.fail(f"{guest_test} did not report from the VM. {run.problem or ''}\n"
                    f"guest output tail:\n{run.result.output[-3000:]}", pytrace=False)
    if outcome.kind == "failed":
        pytest.fail(f"in the VM ({outcome.seconds:.1f} s):\n{outcome.message}", pytrace=False)
    if outcome.kind == "skipped":
        pytest.skip(f"in the VM: {outcome.message}")
    if outcome.kind == "xfailed":
        pytest.xfail(f"in the VM: {outcome.message}")
    if run.problem:
        pytest.fail(f"{guest_test} passed, but the VM run went wrong: {run.problem}",
                    pytrace=False)
