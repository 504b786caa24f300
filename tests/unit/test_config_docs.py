"""etc/slurm-scratch.conf documents every key with its real default, and parses to the defaults."""

from __future__ import annotations

from pathlib import Path

from slurm_scratch import config

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "slurm-scratch.conf"


def test_example_sets_every_key_to_its_default() -> None:
    documented = config.parse_config(EXAMPLE.read_text(), str(EXAMPLE))
    defaults = config.parse_config("", "")
    assert {(s, k) for s, k, _, from_file in documented.effective if from_file} == {
        (s, k) for s, keys in config.SCHEMA.items() for k in keys
    }
    assert documented.replace(path="", effective=()) == defaults.replace(path="", effective=())
