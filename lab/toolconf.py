"""The tool's config file (slurm-scratch.conf) as the lab writes and reads it: settings are
{section: {key: value}}; one writer, one reader, for every builder of a node.

Standard library only: the compose nodes import it (the Dockerfile copies it).
"""
from __future__ import annotations

import configparser
import os
from pathlib import Path

Settings = dict[str, dict[str, str]]


def render_ini(settings: Settings) -> str:
    return "".join(f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in keys.items())
                   + "\n" for section, keys in settings.items())


def read_ini(path: Path) -> Settings:
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=("#", ";"),
                                       inline_comment_prefixes=None, strict=True)
    parser.optionxform = str  # keep keys as written
    with open(path) as stream:
        parser.read_file(stream)
    return {section: dict(parser[section]) for section in parser.sections()}


def write_tool_conf(path: Path, settings: Settings) -> Path:
    """Write a slurm-scratch.conf atomically, root-owned 0644 (the tool insists when root)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".new")
    temporary.write_text(render_ini(settings))
    os.chown(temporary, 0, 0)
    temporary.chmod(0o644)
    os.replace(temporary, path)
    return path
