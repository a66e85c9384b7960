"""The life cycle of zsrl's folders on disk: runs, datasets, checkpoints, models, reports.

Four guarantees, each one section of this module:

* **Plain words for storage failures** — :func:`storage_errors` turns an ``OSError`` (disk
  full, permission denied, read-only disk) into a :class:`~zsrl.errors.StorageError`.
* **Atomic files** — :func:`atomic_write_bytes` writes through a temporary file in the same
  folder and renames it: a reader sees the old file or the new one, never a partial write.
* **One writer per folder** — :func:`writer_lock` takes an exclusive ``flock`` on
  ``.NAME.lock`` beside the folder ``NAME`` (beside it, so a folder that does not exist yet,
  or is replaced by a rename, can be locked too). The kernel drops the lock when its process
  dies, however it dies, so a killed writer's lock is taken over by the next one; the file
  records the holder's pid, host and start time for the message a second writer gets. Locks
  are re-entrant within a process.
* **Folders swapped in by renames** — a new folder is built as ``.NAME.*.partial`` and
  swapped in by two renames (:func:`swap_in`): the current one becomes ``.NAME.old``, the
  new one ``NAME``; at every moment one of them is complete (:func:`complete_copy`).
  :func:`new_directory` does the whole life cycle: lock, check once, build, swap.

**What may be replaced** (``--overwrite``): only a folder zsrl itself wrote — a run
(``run.json``) or a dataset (``meta.json`` beside ``tensors/``). The working directory, a
folder holding the dataset being trained on, a home directory or a folder of the user's own
files is never removed (:func:`check_out`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from zsrl.errors import LockedError, StorageError, UserError
from zsrl.utils import fault_point

try:
    import fcntl
except ImportError:  # Windows: no flock; the lock file is still written, but not enforced
    fcntl = None  # type: ignore[assignment]

_UMASK = os.umask(0)
os.umask(_UMASK)
#: modes of new files and directories as the user's umask allows
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK

Kind = Literal["run", "dataset"]


# ---- storage failures in plain words ----------------------------------------------------
_ERRNO_TEXT = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
}
#: the errnos that mean "fix the storage", not "a bug"
STORAGE_ERRNOS = tuple(_ERRNO_TEXT)


def describe_os_error(exc: OSError) -> str:
    """Plain words for an OSError (``no space left on device`` …)."""
    return _ERRNO_TEXT.get(exc.errno or 0, exc.strerror or type(exc).__name__)


@contextlib.contextmanager
def storage_errors(action: str, advice: str = "") -> Iterator[None]:
    """Turn an OSError in the block into a :class:`StorageError`: ``cannot {action}: why. advice``."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        text = f"cannot {action}: {describe_os_error(exc)}{where}.{' Free some space.' if full else ''}"
        raise StorageError(f"{text} {advice}".strip()) from None


# ---- atomic files ------------------------------------------------------------------------
def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)  # mkstemp creates 0600; use the usual file mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_json(path: str | Path, what: str) -> Any:
    """Read a JSON file, turning a missing or corrupt file into a :class:`UserError`."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{what}: {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what}: {path} is not valid JSON ({exc}); the file is corrupt") from None
    except OSError as exc:
        raise StorageError(f"{what}: cannot read {path}: {describe_os_error(exc)}") from None


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """:func:`read_json` for files that must hold a JSON object."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise UserError(f"{what}: {path} holds {type(data).__name__} JSON, not an object; the file is corrupt")
    return data


def check_format_version(version: Any, supported: int, what: str, error: type[UserError] = UserError) -> None:
    """Refuse a file format this zsrl cannot read: a ``format_version`` that is not a whole
    number (an edited or corrupt file) or is newer than ``supported``."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise error(f"{what} records the format version {version!r}, not a whole number: the file was edited "
                    "or is corrupt")
    if version > supported:
        raise error(f"{what} has format version {version}, newer than this zsrl reads ({supported}); upgrade zsrl")


# ---- one writer per folder ----------------------------------------------------------------
_held: dict[Path, int] = {}  # lock file → nesting depth, for this process


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
    try:
        fd = _try_lock(lock)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        raise UserError(f"the name {Path(path).name!r} is too long for the file system (its lock file "
                        f"{lock.name!r} is longer still); choose a shorter one") from None
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


# ---- folders swapped in by renames -----------------------------------------------------------
def old_copy(path: str | Path) -> Path:
    """Where :func:`swap_in` keeps the previous version of ``path``: ``.NAME.old``."""
    path = Path(path)
    return path.with_name(f".{path.name}.old")


def make_temp_dir(path: str | Path) -> Path:
    """A new ``.NAME.*.partial`` directory beside ``path`` (mode as the umask allows)."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    os.chmod(tmp, DIR_MODE)  # mkdtemp creates 0700
    return tmp


def remove_stale_partials(path: str | Path) -> list[Path]:
    """Remove the ``.NAME.*.partial`` folders of interrupted writes of ``path``.

    Only call it while holding ``path``'s writer lock: then no live process is writing
    them, and they are debris of a killed one.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    # exactly mkdtemp's names for this path (not those of "NAME.v2", whose writer may be alive)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.partial")
    stale = sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def swap_in(tmp: Path, path: Path, keep_old: bool = False) -> None:
    """Move the complete directory ``tmp`` to ``path`` by renames only.

    The previous ``path`` is first renamed to ``.NAME.old`` (replacing an older one), so at
    every moment either ``path`` or ``.NAME.old`` is a complete copy: a kill between the
    two renames leaves ``.NAME.old`` in place for :func:`complete_copy` and the next writer.
    ``keep_old=False`` removes ``.NAME.old`` once ``path`` is in place.
    """
    old = old_copy(path)
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
    # else: a previous swap was interrupted between its renames; .NAME.old stays the copy
    fault_point(f"swap:{path.name}")
    os.replace(tmp, path)
    if not keep_old and old.exists():
        shutil.rmtree(old, ignore_errors=True)


def complete_copy(path: str | Path, is_complete: Any = Path.exists) -> Path | None:
    """``path`` if it is complete, else the previous copy a swap kept, else None."""
    path = Path(path)
    for candidate in (path, old_copy(path)):
        if is_complete(candidate):
            return candidate
    return None


@contextlib.contextmanager
def swapped_directory(path: str | Path, keep_old: bool = False) -> Iterator[Path]:
    """A temporary folder to fill, swapped in at ``path`` when the block succeeds.

    An exception (or Ctrl-C) inside the block removes the temporary folder, so an
    interrupted write never leaves something at ``path`` that looks complete. The caller
    holds ``path``'s lock and has decided that ``path`` may be replaced.
    """
    path = Path(path)
    tmp = make_temp_dir(path)
    try:
        yield tmp
        fault_point(f"written:{path.name}")
        swap_in(tmp, path, keep_old=keep_old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def new_directory(path: str | Path, kind: Kind, overwrite: bool = False) -> Iterator[Path]:
    """Write a whole ``kind`` folder at ``path``: lock it, check once that it may be written
    (:func:`check_out`), hand out a temporary folder to fill, swap it in on success.

    A swap killed between its renames is completed first; debris of killed writes is removed.
    """
    path = Path(path)
    target = path.resolve()  # a name to put beside, also for "." and ".."
    target.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(target, kind):
        old = old_copy(target)
        if not target.exists() and old.is_dir():  # a swap killed between its renames
            os.replace(old, target)
        if not check_out(path, kind, overwrite) and target.exists():
            raise UserError(f"{path} exists (an empty folder); a {kind} is written as a new folder: "
                            "choose a path that does not exist yet")
        remove_stale_partials(target)
        with swapped_directory(target) as tmp:
            yield tmp


# ---- what may be written, and replaced ---------------------------------------------------------
def is_run_dir(path: Path) -> bool:
    """A run directory written by ``zsrl train``."""
    return (path / "run.json").is_file()


def is_dataset_dir(path: Path) -> bool:
    """A dataset directory written by ``zsrl collect``."""
    return (path / "meta.json").is_file() and (path / "tensors").is_dir()


_RECOGNISE = {"run": is_run_dir, "dataset": is_dataset_dir}
#: what a run or dataset folder holds of its own (hidden entries are its partial writes and old
#: copies; tb/: the TensorBoard logs of earlier releases)
_OWN = {"run": {"config.json", "run.json", "metrics.csv", "eval.csv", "checkpoint", "model", "tb"},
        "dataset": {"meta.json", "tensors", "coverage.png"}}


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _check_target(path: str | Path, kind: Kind, protect: tuple[Path, ...]) -> None:
    """Refuse a ``path`` that equals, contains or lies inside one of ``protect`` (e.g. the
    dataset a run trains on)."""
    target = Path(path).resolve()
    for other in protect:
        other = Path(other).resolve()
        if _is_within(other, target) or _is_within(target, other):
            relation = "is" if target == other else ("contains" if _is_within(other, target) else "lies inside")
            raise UserError(
                f"{path} {relation} the dataset {other}; writing the {kind} there would destroy "
                f"or mix with it. Choose another --out."
            )


def _check_replaceable(path: str | Path, kind: Kind) -> None:
    """Raise :class:`UserError` unless ``path`` is a ``kind`` directory zsrl may replace."""
    target = Path(path).resolve()
    if _is_within(Path.cwd().resolve(), target):
        raise UserError(
            f"--overwrite will not remove {path}: it is the working directory or contains it. "
            f"Choose a new --out such as {Path(path) / kind}."
        )
    if target == Path.home().resolve() or target == Path(target.anchor) or Path(path).is_symlink():
        raise UserError(f"--overwrite will not remove {path}; choose another --out")
    if _RECOGNISE[kind](target):
        foreign = sorted(p.name + ("/" if p.is_dir() else "") for p in target.iterdir()
                         if not p.name.startswith(".") and p.name not in _OWN[kind])
        if foreign:
            raise UserError(
                f"--overwrite will not remove {path}: besides the {kind} it holds {', '.join(foreign[:6])}"
                f"{' …' if len(foreign) > 6 else ''} (an evaluation, another run or dataset, or files of "
                f"your own), which replacing the {kind} would delete. Move them away or choose another --out."
            )
        return
    other: Kind = "dataset" if kind == "run" else "run"
    found = f"a zsrl {other}" if _RECOGNISE[other](target) else "not something zsrl wrote"
    marker = "run.json" if kind == "run" else "meta.json and tensors/"
    raise UserError(
        f"--overwrite will not remove {path}: it is {found} (a {kind} directory has {marker}). "
        f"--overwrite only replaces a {kind} that zsrl wrote; choose another --out or remove it yourself."
    )


def check_out(path: str | Path, kind: Kind, overwrite: bool, protect: tuple[Path, ...] = ()) -> bool:
    """Raise unless a ``kind`` may be written at ``path``; True when an old one is there to
    be replaced.

    A missing or empty directory is used as is; an existing non-empty one only with
    ``overwrite``, and only when it is a ``kind`` zsrl wrote. Call it once, under ``path``'s
    writer lock, before any work that a refusal would waste.
    """
    path = Path(path)
    _check_target(path, kind, protect)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file, not a directory; choose another --out")
    if not (path.is_dir() and any(path.iterdir())):
        return False
    if not overwrite:
        hint = f"resume it with `zsrl train --resume {path}`, " if kind == "run" and is_run_dir(path) else ""
        raise UserError(f"{kind} directory {path} already exists; {hint}choose another --out or pass --overwrite")
    _check_replaceable(path, kind)
    return True


def create_run_dir(path: str | Path, files: dict[str, Any], replace: bool) -> Path:
    """Create the run directory ``path`` holding the JSON ``files`` (``run.json``, its marker,
    last); ``replace``: remove the run :func:`check_out` found there first.

    Call it under ``path``'s writer lock. The files are written into a temporary folder that
    is renamed to ``path``, so a kill never leaves a half-created directory that looks like
    a run.
    """
    path = Path(path)
    remove_stale_partials(path)  # debris of killed writers (we hold the lock)
    if replace:
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(path)
    try:
        for name, obj in files.items():
            atomic_write_json(tmp / name, obj)
        if path.is_dir():  # an empty directory (perhaps the working one): fill it, marker last
            for name in files:
                os.replace(tmp / name, path / name)
            tmp.rmdir()
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
