"""Exceptions that carry the process exit code the CLI and the hooks return (see README)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_JOB_CONTEXT = 4


class ScratchError(Exception):
    """An operation failed; the message says what and where."""

    exit_code = EXIT_FAILURE


class ConfigError(ScratchError):
    """The configuration file is unreadable or invalid; one message per problem."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class JobContextError(ScratchError):
    """The job environment Slurm handed to a hook is missing or inconsistent."""

    exit_code = EXIT_JOB_CONTEXT
