"""End a user's processes that still hold a job directory, before it is retired.

What a process holds is decided by what the kernel says, never by path strings: a process holds a
directory when that directory's inode on the scratch volume is among the ancestors of its cwd (or a
thread's), its root, its executable, an open descriptor or a mapped file. So a program run from the
job directory with its cwd elsewhere, a file mapped and then closed, a cwd deeper than PATH_MAX and
a bind mount of the directory in the process's own namespace are all seen.

Objects on other filesystems are skipped without ever being stat'ed (a stat on a FUSE file asks its
daemon, which a user can stop): their mount id (fdinfo's mnt_id) is looked up in the process's own
mountinfo first, and only objects on the volume's device are looked at. Directories are walked up
with descriptors (`..`, O_PATH), never leaving their mount; files are placed by their path inside the
filesystem, walked down from the volume's root with O_NOFOLLOW descriptors and checked by inode.

/proc is scanned once per run into an index of the directories held and what their parents are
(`Index`); the directories asked about are answered together by one memoised pass up from what is
held, so the sweep of thousands of directories costs one scan, and no depth or number of held
directories a user chooses makes it quadratic. The scan stops at a deadline. Read straight from
/proc rather than through psutil: psutil cannot find the holders of a directory by device and
inode, and importing it would cost the Epilog more than the rest of its work (bench/). A process is signalled through a pidfd, and only when it is still
the process the scan saw (same start time), so a PID reused in between is never hit.
"""

from __future__ import annotations

import os
import time

from slurm_scratch import mounts as mount_table
from slurm_scratch import timed
from slurm_scratch.layout import DIR_PATH_FLAGS, PATH_FLAGS

WAIT_SECONDS = 2.0
MAX_DEPTH = 8192  # directory levels walked up from one object (a cwd deeper than PATH_MAX is ~20-2000)
FOLLOWING_PATH_FLAGS = PATH_FLAGS & ~os.O_NOFOLLOW  # for /proc's magic links, which must be followed


def _read(path: str, size: int = 65536) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while True:
            chunk = os.read(fd, size)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)


def _mnt_id_of(fdinfo_path: str) -> int | None:
    data = _read(fdinfo_path, 4096)
    if data is None:
        return None
    for line in data.splitlines():
        if line.startswith(b"mnt_id:"):
            try:
                return int(line[7:])
            except ValueError:
                return None
    return None


def _uids(pid: str) -> tuple[int, int] | None:
    """Real and effective uid from /proc/PID/status, or None when the process is gone."""
    try:
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
        try:
            head = os.read(fd, 2048)  # Uid: is on line 9, well within the first 2 KiB
        finally:
            os.close(fd)
        real, effective = head.split(b"\nUid:", 1)[1].split(None, 2)[:2]
        return int(real), int(effective)
    except (OSError, IndexError, ValueError):
        return None


def _has_program(pid: str) -> bool:
    """False for kernel threads (no executable), and for processes already gone."""
    try:
        os.readlink(f"/proc/{pid}/exe")
        return True
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: look closer


def _comm(pid: int) -> str:
    data = _read(f"/proc/{pid}/comm", 256)
    return data.decode("utf-8", errors="replace").strip() if data else "?"


_unescape = mount_table._unescape  # mountinfo's \ooo escapes


class Index:
    """Which processes hold which directories of the volume whose root `root_fd` is open on.

    `uids`: look only at processes whose real or effective uid is in it (the Epilog: the job's
    user); None: every process with a non-root real or effective uid (the sweep).
    `deadline` (time.monotonic()): the scan stops there and `complete` is False.
    """

    def __init__(self, root_fd: int, deadline: float, uids: set[int] | None = None) -> None:
        st = os.fstat(root_fd)
        self.root_fd = root_fd
        self.dev = st.st_dev
        self.root_ino = st.st_ino
        self.deadline = deadline
        self.uids = uids
        self.complete = True
        # The device as mountinfo and maps name it: the filesystem's, which on btrfs is not the
        # st_dev of the root (each subvolume, the top one too, has an anonymous device of its own).
        self.fs_root, self.major_minor = self._own_mount(root_fd, f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
        self.mnt_id = mount_table.mount_id(root_fd)
        self.parents: dict[int, int] = {}  # directory inode -> its parent's (on the volume)
        self.dir_of_path: dict[str, int | None] = {}  # a directory's path in the filesystem -> inode
        self.held: dict[int, dict[int, set[str]]] = {}  # directory inode -> {pid: what holds it}
        self.procs: dict[int, tuple[tuple[int, int], str]] = {}  # pid -> (uids, start time)
        self.namespaces: dict[str, tuple[dict, dict]] = {}  # mnt ns -> its _volume_mounts
        self.unresolved = 0
        self._targets: set[int] = set()
        self._by_target: dict[int, dict[int, set[str]]] | None = None
        self._anchored: dict[int, str] = {}
        self.file_parents: dict[int, int] = {}  # a file's inode (one link) -> its directory's
        self.listings: dict[str, dict[str, int]] = {}  # directory below the root -> {name: d_ino}
        self._scan()

    # ---- the scan ------------------------------------------------------------------------------

    def _own_mount(self, root_fd: int, major_minor: str) -> tuple[str, str]:
        """The root's mount: its root in the filesystem and the filesystem's major:minor."""
        mine = mount_table.mount_id(root_fd)
        for line in (_read("/proc/self/mountinfo") or b"").decode("utf-8", "surrogateescape").splitlines():
            fields = line.split(" ", 5)
            if len(fields) > 4 and fields[0] == str(mine):
                return _unescape(fields[3]), fields[2]
        return "/", major_minor

    def _volume_mounts(self, pid: str) -> tuple[dict[int, tuple[str, str]], dict[int, str]]:
        """The mounts of the volume in `pid`'s mount namespace, {mount id: (root in fs, mount point)},
        and the other filesystems mounted somewhere on it, {mount id: the mount point's path in the
        volume's filesystem} (an object on those is placed at its mount point, never stat'ed)."""
        try:
            namespace = os.readlink(f"/proc/{pid}/ns/mnt")
        except OSError:
            return {}, {}
        known = self.namespaces.get(namespace)
        if known is not None:
            return known
        table: dict[int, tuple[int, str, str, str]] = {}
        text = (_read(f"/proc/{pid}/mountinfo") or b"").decode("utf-8", "surrogateescape")
        for line in text.splitlines():
            fields = line.split(" ", 5)
            if len(fields) > 4:
                try:
                    table[int(fields[0])] = (int(fields[1]), fields[2], _unescape(fields[3]), _unescape(fields[4]))
                except ValueError:
                    continue
        ours = {mnt: (root, mount_point) for mnt, (_, major_minor, root, mount_point) in table.items() if major_minor == self.major_minor}
        anchored: dict[int, str] = {}
        for mnt in table:
            if mnt in ours:
                continue
            child, parent = mnt, table[mnt][0]
            for _ in range(64):  # up the mount tree to a mount of the volume, if any
                if parent in ours or parent not in table or parent == child:
                    break
                child, parent = parent, table[parent][0]
            if parent in ours:
                root, mount_point = ours[parent]
                below = table[child][3]
                if mount_point == "/" or below.startswith(mount_point + "/"):
                    anchored[mnt] = root.rstrip("/") + (below if mount_point == "/" else below[len(mount_point) :])
        self.namespaces[namespace] = (ours, anchored)
        return ours, anchored

    def _scan(self) -> None:
        me = str(os.getpid())
        try:
            entries = os.listdir("/proc")
        except OSError:
            self.complete = False
            return
        for pid in entries:
            if not pid.isdigit() or pid == me:
                continue
            if time.monotonic() > self.deadline:
                self.complete = False
                return
            try:
                self._scan_process(pid)
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile, not ours to read, or /proc said something odd

    def _scan_process(self, pid: str) -> None:
        owner = os.stat(f"/proc/{pid}").st_uid  # the effective uid, or root for a non-dumpable process
        if self.uids is not None and owner not in self.uids and owner != 0:
            return
        if owner == 0 and not _has_program(pid):
            return  # a kernel thread (most root-owned entries on a many-core node)
        uids = _uids(pid)
        if uids is None:
            return
        if self.uids is None and uids == (0, 0):
            return
        if self.uids is not None and not (set(uids) & self.uids):
            return
        mounts, anchored = self._volume_mounts(pid)
        if not mounts:
            return  # the volume is not even mounted in its namespace
        self._anchored = anchored
        start = timed.start_time(int(pid))
        if start is None:
            return
        holds: dict[int, set[str]] = {}
        base = f"/proc/{pid}"
        for link in ("cwd", "root", "exe"):
            self._object(f"{base}/{link}", None, mounts, link, holds)
        try:
            threads = os.listdir(f"{base}/task")
        except OSError:
            threads = []
        for tid in threads:  # a thread may have a cwd of its own (unshare(CLONE_FS))
            if tid != pid:
                self._object(f"{base}/task/{tid}/cwd", None, mounts, "thread cwd", holds)
        try:
            descriptors = os.listdir(f"{base}/fd")
        except OSError:
            descriptors = []
        for fd in descriptors:
            if time.monotonic() > self.deadline:
                self.complete = False
                break
            mnt = _mnt_id_of(f"{base}/fdinfo/{fd}")
            if mnt is not None and (mnt in mounts or mnt in anchored):
                self._object(f"{base}/fd/{fd}", mnt, mounts, f"fd {fd}", holds)
        self._maps(base, mounts, holds)
        if holds:
            self.procs[int(pid)] = (uids, start)
            for ino, what in holds.items():
                self.held.setdefault(ino, {}).setdefault(int(pid), set()).update(what)

    def _maps(self, base: str, mounts: dict[int, tuple[str, str]], holds: dict[int, set[str]]) -> None:
        data = _read(f"{base}/maps")
        if not data:
            return
        major, minor = (int(part) for part in self.major_minor.split(":"))
        seen: set[bytes] = set()
        for line in data.splitlines():
            fields = line.split(None, 5)
            if len(fields) < 6 or fields[4] == b"0" or fields[4] in seen:
                continue
            try:
                dev_major, dev_minor = (int(part, 16) for part in fields[3].split(b":"))
            except ValueError:
                continue
            if (dev_major, dev_minor) != (major, minor):
                continue
            seen.add(fields[4])
            self._object(f"{base}/map_files/{fields[0].decode()}", None, mounts, "map", holds)

    def _object(self, link: str, mnt: int | None, mounts: dict[int, tuple[str, str]], what: str, holds: dict[int, set[str]]) -> None:
        """Record the directory `link` (a /proc magic link) is in, or is, when it lies on the volume."""
        try:
            fd = os.open(link, FOLLOWING_PATH_FLAGS)  # O_PATH: no open, no lookup in the filesystem it points to
        except OSError:
            return
        try:
            if mnt is None:  # cwd, root, exe, a mapping: no fdinfo of its own, ask ours
                mnt = mount_table.mount_id(fd)
            if mnt is not None and mnt in self._anchored:  # another filesystem mounted on the volume
                ino = self._fs_dir_ino(self._anchored[mnt])
                if ino is not None:
                    holds.setdefault(ino, set()).add(f"{what} on a mount")
                return
            if mnt is None or mnt not in mounts:
                return  # on another filesystem: never stat'ed
            st = os.fstat(fd)
            if (st.st_mode & 0o170000) == 0o040000:
                self._walk_up(fd, self.key(st), mnt)
                holds.setdefault(self.key(st), set()).add(what)
                return
            parent = self.file_parents.get(self.key(st))  # the same file open many times: placed once
            if parent is None:
                parent = self._parent_by_path(link, mounts[mnt], st)
                if parent is not None and st.st_nlink == 1:
                    self.file_parents[self.key(st)] = parent
            if parent is None:
                self.unresolved += 1
            else:
                holds.setdefault(parent, set()).add(what)
        finally:
            os.close(fd)

    def key(self, st: os.stat_result) -> int:
        """An inode's key in the index: its number on the volume's device; on a btrfs subvolume of
        the volume (a job directory with a quota), which has a device of its own and repeats other
        subvolumes' inode numbers, the number tagged with that device."""
        return st.st_ino if st.st_dev == self.dev else st.st_dev << 64 | st.st_ino

    def _walk_up(self, fd: int, ino: int, mnt: int | None) -> None:
        """Learn the parents of the directory `fd` up to the volume's root, by `..` with descriptors,
        never leaving the mount it is on (whose parent may be a FUSE filesystem)."""
        current = os.dup(fd)
        try:
            for _ in range(MAX_DEPTH):
                if ino == self.root_ino or ino in self.parents:
                    return
                parent = os.open("..", DIR_PATH_FLAGS, dir_fd=current)
                os.close(current)
                current = parent
                if mount_table.mount_id(parent) != mnt:
                    return  # the root of a (bind) mount: what lies above it is another filesystem's
                parent_ino = self.key(os.fstat(parent))
                if parent_ino == ino:
                    return
                self.parents[ino] = parent_ino
                ino = parent_ino
        finally:
            os.close(current)

    def _parent_by_path(self, link: str, mount: tuple[str, str], st: os.stat_result) -> int | None:
        """The inode of the directory a file on the volume is in: its path inside the filesystem (the
        mount's root plus the path below the mount point), walked down from the volume's root with
        O_NOFOLLOW descriptors; only believed if the name there is that file (or it is deleted)."""
        try:
            path = os.readlink(link)
        except OSError:  # ENAMETOOLONG: deeper than PATH_MAX
            return None
        if path.endswith(" (deleted)"):
            path = path[: -len(" (deleted)")]
        root, mount_point = mount
        if mount_point == "/":
            below = path
        elif path == mount_point or path.startswith(mount_point + "/"):
            below = path[len(mount_point) :]
        else:
            return None
        relative = self._below_root(root.rstrip("/") + below)
        if relative is None:
            return None
        directory, _, name = relative.rpartition("/")
        parent = self._dir_ino(directory)
        if parent is None or not name:
            return None
        if st.st_nlink == 0:
            return parent
        dir_fd = self._open_dir(directory)
        if dir_fd is None:
            return None
        try:
            name_fd = os.open(name, PATH_FLAGS, dir_fd=dir_fd)
        except OSError:
            return None
        finally:
            os.close(dir_fd)
        try:
            if mount_table.mount_id(name_fd) != self.mnt_id:
                return None  # covered by a mount here: not stat'ed
            there = os.fstat(name_fd)
        finally:
            os.close(name_fd)
        return parent if (there.st_dev, there.st_ino) == (st.st_dev, st.st_ino) else None

    def _below_root(self, fs_path: str) -> str | None:
        """A path in the volume's filesystem, relative to the directory `root_fd` is (None: not below)."""
        prefix = self.fs_root.rstrip("/")
        return fs_path[len(prefix) + 1 :] if fs_path.startswith(prefix + "/") else None

    def _fs_dir_ino(self, fs_path: str) -> int | None:
        relative = self._below_root(fs_path)
        return None if relative is None else self._dir_ino(relative)

    def _open_dir(self, directory: str) -> int | None:
        """An O_PATH descriptor of a directory below the volume's root, or None when a level is
        missing, not a directory, or covered by another mount here (never crossed, never stat'ed)."""
        fd = os.dup(self.root_fd)
        for name in directory.split("/") if directory else ():
            try:
                next_fd = os.open(name, DIR_PATH_FLAGS, dir_fd=fd)
            except OSError:
                os.close(fd)
                return None
            os.close(fd)
            fd = next_fd
            if mount_table.mount_id(fd) != self.mnt_id:
                os.close(fd)
                return None
        return fd

    def _dir_ino(self, directory: str) -> int | None:
        """A directory's inode by its path below the volume's root; every level on the way is
        memoised with its parent, and the walk starts at the deepest level already known (one
        openat per new level, however deep the path)."""
        if not directory:
            return self.root_ino
        if directory in self.dir_of_path:
            return self.dir_of_path[directory]
        names = directory.split("/")
        if len(names) > MAX_DEPTH:
            return None
        known, ino = 0, self.root_ino
        end = len(directory)
        for level in range(len(names) - 1, 0, -1):
            end = directory.rindex("/", 0, end)
            if directory[:end] in self.dir_of_path:
                known, ino = level, self.dir_of_path[directory[:end]]
                break
        if ino is None:
            self.dir_of_path[directory] = None
            return None
        fd = self._open_dir("/".join(names[:known]))
        prefix = "/".join(names[:known])
        try:
            for level in range(known, len(names)):
                above, prefix = prefix, f"{prefix}/{names[level]}" if prefix else names[level]
                parent, ino = ino, None
                next_fd = None
                if level % 64 == 63 and time.monotonic() > self.deadline:
                    self.complete = False
                    if fd is not None:
                        os.close(fd)
                    fd = None
                if fd is not None:
                    try:
                        next_fd = os.open(names[level], DIR_PATH_FLAGS, dir_fd=fd)
                    except OSError:
                        next_fd = None
                    if next_fd is not None and mount_table.mount_id(next_fd) != self.mnt_id:
                        os.close(next_fd)  # covered by a mount here: never crossed, never stat'ed
                        next_fd = None
                        ino = self._covered_ino(above, names[level])
                    elif next_fd is not None:
                        st = os.fstat(next_fd)
                        ino = self.key(st)
                    os.close(fd)
                fd = next_fd
                if ino is not None and ino != parent:
                    self.parents.setdefault(ino, parent)
                self.dir_of_path[prefix] = ino
                if ino is None:
                    break
        finally:
            if fd is not None:
                os.close(fd)
        return self.dir_of_path.setdefault(directory, None)

    def _covered_ino(self, above: str, name: str) -> int | None:
        """The inode of `name` in directory `above` as the directory entry says (getdents' d_ino):
        right even when a mount covers it here, and nothing mounted is looked at."""
        if above not in self.listings:
            listing: dict[str, int] = {}
            fd = self._open_dir(above)
            if fd is not None:
                try:
                    listing_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                except OSError:
                    listing_fd = None
                finally:
                    os.close(fd)
                if listing_fd is not None:
                    try:
                        with os.scandir(listing_fd) as entries:
                            listing = {entry.name: entry.inode() for entry in entries}
                    except OSError:
                        pass
                    finally:
                        os.close(listing_fd)
            self.listings[above] = listing
        return self.listings[above].get(name)

    # ---- lookups -------------------------------------------------------------------------------

    def want(self, inos) -> None:
        """Directories that holders() will be asked about (the sweep's candidates): all of them are
        answered by one pass over what the scan found."""
        new = set(inos) - self._targets
        if new:
            self._targets |= new
            self._by_target = None

    def _build(self) -> None:
        """{target directory: {pid: what}} for every target: each held directory is walked up to the
        nearest target above it once, with every step memoised, so the cost is linear in the
        directories the scan learnt however deep or many they are."""
        nearest: dict[int, int | None] = {}  # inode -> the nearest target at or above it

        def nearest_of(ino: int | None) -> int | None:
            path, found = [], None
            for _ in range(MAX_DEPTH):
                if ino is None:
                    break
                if ino in nearest:
                    found = nearest[ino]
                    break
                path.append(ino)
                if ino in self._targets:
                    found = ino
                    break
                parent = self.parents.get(ino)
                ino = parent if parent != ino else None
            for step in path:
                nearest[step] = found
            return found

        by_target: dict[int, dict[int, set[str]]] = {}
        for held, pids in self.held.items():
            target = nearest_of(held)
            for _ in range(64):  # a job directory inside another one: both are held
                if target is None:
                    break
                into = by_target.setdefault(target, {})
                for pid, what in pids.items():
                    into.setdefault(pid, set()).update(what)
                parent = self.parents.get(target)
                target = nearest_of(parent) if parent != target else None
        self._by_target = by_target

    def holders(self, ino: int, uid: int) -> dict[int, set[str]]:
        """{pid: what it holds} of the processes of `uid` (real or effective) holding directory `ino`."""
        self.want((ino,))
        if self._by_target is None:
            self._build()
        assert self._by_target is not None
        found = self._by_target.get(ino, {})
        return {pid: what for pid, what in found.items() if uid in self.procs[pid][0]}


def holders(index: Index, ino: int, uid: int) -> list[int]:
    return sorted(index.holders(ino, uid))


def end_holders(index: Index, ino: int, uid: int, path: str, deadline: float | None = None) -> list[str]:
    """SIGKILL the processes of `uid` holding directory `ino` (the job is over) and wait for them
    until `deadline` (at most WAIT_SECONDS); returns one log line per process ended or surviving."""
    found = index.holders(ino, uid)
    if not found:
        return []
    import signal

    lines = []
    killed = []
    for pid, what in sorted(found.items()):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            if timed.start_time(pid) != index.procs[pid][1]:
                continue  # gone, and the PID is another process's now
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            killed.append(pid)
            lines.append(f"killed pid {pid} ({_comm(pid)}) of uid {uid}: it held {path} ({', '.join(sorted(what))})")
        except ProcessLookupError:
            continue
        finally:
            os.close(pidfd)
    end = time.monotonic() + WAIT_SECONDS
    if deadline is not None:
        end = min(end, deadline)
    alive = [pid for pid in killed if timed.start_time(pid) is not None]
    while alive and time.monotonic() < end:
        time.sleep(0.01)
        alive = [pid for pid in alive if timed.start_time(pid) is not None]
    lines.extend(f"pid {pid} still alive after SIGKILL" for pid in alive)
    return lines

