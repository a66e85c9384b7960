"""One writer per run or dataset directory.

:func:`writer_lock` takes an exclusive ``flock`` on ``.NAME.lock`` next to the directory
``NAME`` (next to it, so a directory that does not exist yet, or is replaced by a rename,
can be locked too). The kernel drops the lock when its process dies, however it dies, so
the lock of a killed process (``kill -9``, a crashed node) is recognised as stale and taken
over by the next writer; no pid guessing is involved. The file records the holder's pid,
host and start time for the message a second writer gets. Locks are re-entrant within a
process (collect holds the dataset's lock while ``OfflineDataset.save`` takes it again).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from zsrl.utils import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; the lock file is still written, but not enforced
    fcntl = None  # type: ignore[assignment]

_held: dict[Path, int] = {}  # lock file → nesting depth, for this process


class LockedError(UserError):
    """Another live process is writing the directory."""


def lock_path(path: str | Path) -> Path:
    """The lock file of directory ``path``: ``.NAME.lock`` beside it."""
    path = Path(path).resolve()
    return path.parent / f".{path.name}.lock"


def _holder(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text())
        return f"process {info['pid']} on {info['host']} (since {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _try_lock(lock: Path) -> int | None:
    """An fd holding ``flock(lock)``, or None if a live process holds it."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:  # the previous holder may have unlinked the file between our open and flock
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def writer_lock(path: str | Path, what: str) -> Iterator[None]:
    """Hold the writer lock of directory ``path`` (``what`` names it in the error).

    Raises :class:`LockedError` when another live process holds it.
    """
    lock = lock_path(path)
    if lock in _held:
        _held[lock] += 1
        try:
            yield
        finally:
            _held[lock] -= 1
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _try_lock(lock)
    if fd is None:
        raise LockedError(
            f"{what} {Path(path)} is being written by {_holder(lock)}; two writers would mix "
            "their files. Wait for it to finish or stop it, or choose another path."
        )
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    _held[lock] = 1
    try:
        yield
    finally:
        del _held[lock]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def holds_lock(path: str | Path) -> bool:
    """Whether this process holds the writer lock of ``path``."""
    return lock_path(path) in _held
