"""Which workers of one server are inside a batch right now, shared through locked files.

Every worker process holds an exclusive `flock` on its own file in a shared directory while it
runs a batch. Another worker tells whether it is busy by trying a shared lock without waiting:
that fails exactly while the owner holds its lock. The kernel drops a dead process's locks, so a
killed worker never looks busy, and nothing has to be cleaned up for correctness.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

_PREFIX = "worker-"
_SUFFIX = ".busy"


def usable_cores(cpu_max: str | os.PathLike = "/sys/fs/cgroup/cpu.max") -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path(cpu_max).read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


class BusyBoard:
    """One file per worker in `directory`; a worker is busy while it holds its file's lock."""

    def __init__(self, directory: str | os.PathLike, rescan_s: float = 1.0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._path = self.directory / f"{_PREFIX}{os.getpid()}{_SUFFIX}"
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        self._rescan_s = rescan_s
        self._others: dict[str, int] = {}
        self._scanned_at = -float("inf")
        self._remove_stale()

    def _remove_stale(self) -> None:
        """Delete files of processes that no longer exist (a restarted worker's old file)."""
        for path in self.directory.glob(f"{_PREFIX}*{_SUFFIX}"):
            pid = path.name[len(_PREFIX) : -len(_SUFFIX)]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    path.unlink()

    def _rescan(self) -> None:
        names = {p.name for p in self.directory.glob(f"{_PREFIX}*{_SUFFIX}") if p != self._path}
        for name in set(self._others) - names:
            os.close(self._others.pop(name))
        for name in names - set(self._others):
            with contextlib.suppress(OSError):
                self._others[name] = os.open(self.directory / name, os.O_RDONLY)
        self._scanned_at = time.monotonic()

    def others_busy(self) -> int:
        """How many other workers hold their lock right now."""
        if time.monotonic() - self._scanned_at > self._rescan_s:
            self._rescan()
        busy = 0
        for fd in self._others.values():
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                busy += 1
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
        return busy

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Mark this worker busy for the duration of the block."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Release every descriptor and remove this worker's file."""
        for fd in self._others.values():
            os.close(fd)
        self._others.clear()
        os.close(self._fd)
        with contextlib.suppress(OSError):
            self._path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
