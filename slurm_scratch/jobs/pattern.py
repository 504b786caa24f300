"""The `[jobs] dir` pattern language: %j (job id), %u (user), %n (node), %% (a literal %).

One reading of a pattern component (`tokens`) serves all three uses: config validates a pattern
(`problem`), the Prolog, TaskProlog and Epilog expand it for one job (`relative_components`), and
the sweep matches names on the volume against it (`component_regex`). A new placeholder is added
here and nowhere else. Imported by config.py, so it imports nothing at load time (`re` only in
component_regex, which only the sweep calls).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: config.py imports this module, which needs no job
    from slurm_scratch.jobs.job import JobContext

PLACEHOLDERS = ("j", "u", "n")
UNKNOWN = "%?"  # the token of a '%' followed by no known code


def tokens(component: str) -> list[str]:
    """The component read left to right, in one pass (so that a '%' inside a user or node name is
    never read as a placeholder): "%j", "%u", "%n", UNKNOWN, or literal text ("%%" becomes "%")."""
    out: list[str] = []
    index = 0
    while index < len(component):
        char, code = component[index], component[index + 1 : index + 2]
        if char != "%":
            out.append(char)
            index += 1
        elif code == "%":
            out.append("%")
            index += 2
        elif code in PLACEHOLDERS:
            out.append(char + code)
            index += 2
        else:
            out.append(UNKNOWN)
            index += 1
    return out


def problem(pattern: str, mount_point: str) -> str | None:
    """What is wrong with an absolute `[jobs] dir` pattern, or None when it is valid."""
    relative = pattern[len(mount_point) + 1 :] if pattern.startswith(mount_point + "/") else None
    if relative is None:
        return f"must resolve to a path below [volume] mount_point {mount_point}"
    components = relative.split("/")
    for component in components:
        if component in ("", ".", ".."):
            return "must not contain empty, '.' or '..' components"
        if UNKNOWN in tokens(component):
            return f"unknown placeholder in {component!r} (use %j job id, %u user, %n node, %% for %)"
    if "%j" not in tokens(components[-1]):
        return "the last component must contain %j, so that every job has its own directory"
    return None


def components(pattern: str, mount_point: str) -> list[str]:
    """The pattern's components below the mount point (a validated pattern)."""
    return pattern[len(mount_point) + 1 :].split("/")


def expand(component: str, job: JobContext) -> str:
    """One component with its placeholders replaced by this job's values."""
    values = {"%j": str(job.job_id), "%u": job.user, "%n": job.node, UNKNOWN: "%"}
    return "".join(values.get(token, token) for token in tokens(component))


def relative_components(pattern: str, mount_point: str, job: JobContext) -> list[str]:
    """The job directory's path below the mount point, as components (a validated pattern)."""
    return [expand(component, job) for component in components(pattern, mount_point)]


def component_regex(component: str, node: str):
    """A compiled regex for one component: %j captures the job id (group `job`), %u a user name
    (group `user`); %n is this node's name."""
    import re

    pieces = []
    seen = set()
    for token in tokens(component):
        if token == "%n":
            pieces.append(re.escape(node))
        elif token in ("%j", "%u"):
            group = "job" if token == "%j" else "user"
            # Repeats must match what the first one captured; %u is lazy so that in `%u_%j`
            # the user "a_1" of job 42 is read as a_1 / 42, not a_1_4 / 2.
            pattern = "(?P<job>[0-9]+)" if token == "%j" else "(?P<user>[^/]+?)"
            pieces.append(f"(?P={group})" if group in seen else pattern)
            seen.add(group)
        else:
            pieces.append(re.escape("%" if token == UNKNOWN else token))
    return re.compile("".join(pieces) + r"\Z")
