"""Small shared utilities: seeding, devices, versions, atomic file and directory writes,
storage errors as user errors, and the fault-injection hook of the test suite."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

_UMASK = os.umask(0)
os.umask(_UMASK)
#: modes of new files and directories as the user's umask allows
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


class UserError(Exception):
    """A mistake in the user's input (a path, a config, a dataset).

    The CLI prints these as one paragraph without a traceback. The message says what is
    wrong and what to do about it.
    """


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA if available, else CPU; anything else as given (validated)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(
            f"device {device!r} is not a device torch knows; use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device {device!r} was requested but CUDA is not available here; "
            "use device=cpu or device=auto"
        )
    return dev


def versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("zsrl", "torch", "tensordict", "gymnasium", "dm_control", "mujoco", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    out["cuda"] = torch.version.cuda or "none"
    return out


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ---- fault injection (tests) -----------------------------------------------------------
FAULT_ENV = "ZSRL_FAULT_POINT"
_fault_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Test hook: ``ZSRL_FAULT_POINT=name[@k]`` sends this process SIGKILL (or the signal
    named by ``ZSRL_FAULT_SIGNAL``, e.g. ``TERM``) the k-th time (default: first) it passes
    the point ``name``. A no-op when the variable is unset."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    target, _, nth = spec.partition("@")
    if target != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] == int(nth or 1):
        os.kill(os.getpid(), getattr(signal, f"SIG{os.environ.get('ZSRL_FAULT_SIGNAL', 'KILL')}"))


# ---- storage errors --------------------------------------------------------------------
class StorageError(UserError):
    """A file that cannot be written or read (disk full, permissions, read-only disk)."""


_ERRNO_TEXT = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
}


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


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and rename.

    A reader sees either the old file or the new one, never a partial write.
    """
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

    Only call it while holding ``path``'s writer lock (:mod:`zsrl.lock`): then no live
    process is writing them, and they are debris of a killed one.
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
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it into place on success.

    Holds ``path``'s writer lock throughout, removes debris of earlier killed writes, and
    swaps the result in with :func:`swap_in`. An exception (or Ctrl-C) inside the block
    removes the temporary directory, so an interrupted write never leaves something at
    ``path`` that looks complete. The caller decides whether ``path`` may be replaced.
    """
    from zsrl.lock import writer_lock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(path, "directory"):
        old = old_copy(path)
        if not path.exists() and old.is_dir():  # a swap killed between its renames
            os.replace(old, path)
        if path.exists() and not overwrite:
            raise UserError(f"{path} already exists; choose another path or pass --overwrite")
        remove_stale_partials(path)
        tmp = make_temp_dir(path)
        try:
            yield tmp
            fault_point(f"written:{path.name}")
            swap_in(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


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
