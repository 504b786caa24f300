"""The test tree itself: `make test` collects tests/ as one tree without packages, where two test
modules with the same basename abort the whole collection ("import file mismatch")."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique() -> None:
    names = Counter(path.name for path in TESTS.rglob("test_*.py") if "guest" not in path.parts)
    assert [name for name, count in names.items() if count > 1] == []
