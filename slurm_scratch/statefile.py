"""The format of the small state files in RUN_DIR: `key=value` lines, written atomically.

Read on every health check and written by the hooks, so it is cheaper than JSON (whose import the
hooks would pay). Values are one line each: newlines and runs of blanks become one space.
"""

from __future__ import annotations

import os


def read_fields(path: str) -> dict[str, str] | None:
    """The file's fields (None when there is no file)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            text = stream.read()
    except FileNotFoundError:
        return None
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value
    return fields


def write_fields(path: str, fields: dict[str, object]) -> None:
    """Replace the file with these fields: written under a temporary name, then renamed."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    text = "".join(f"{key}={one_line(str(value))}\n" for key, value in fields.items())
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode("utf-8", errors="replace"))
    finally:
        os.close(fd)
    os.replace(temporary, path)


def one_line(text: str) -> str:
    return " ".join(text.split())


def fields_or_empty(path: str) -> dict[str, str]:
    """The file's fields; none when it is missing or cannot be read (a state that starts afresh)."""
    try:
        return read_fields(path) or {}
    except OSError:
        return {}


def number(value: str | None) -> float:
    """A field's number; 0 when absent or not a number."""
    try:
        return float(value or 0)
    except ValueError:
        return 0.0
