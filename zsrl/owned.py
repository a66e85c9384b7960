"""What ``--overwrite`` may delete: only a directory zsrl itself wrote.

A run directory is recognised by its ``run.json``, a dataset by its ``meta.json`` next to
``tensors/``. Whatever else is at the path — the working directory, a folder that holds
the dataset being trained on, a home directory, a folder of the user's own files — is never
removed; the error says what was found and what to do.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Literal

from zsrl.utils import UserError, atomic_write_json, make_temp_dir, remove_stale_partials

Kind = Literal["run", "dataset"]


def is_run_dir(path: Path) -> bool:
    """A run directory written by ``zsrl train``."""
    return (path / "run.json").is_file()


def is_dataset_dir(path: Path) -> bool:
    """A dataset directory written by ``zsrl collect``."""
    return (path / "meta.json").is_file() and (path / "tensors").is_dir()


_RECOGNISE = {"run": is_run_dir, "dataset": is_dataset_dir}


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_target(path: str | Path, kind: Kind, protect: tuple[Path, ...] = ()) -> None:
    """Refuse to write a ``kind`` at ``path`` where that would touch something that is not ours.

    ``protect`` lists paths (e.g. the dataset a run trains on) that ``path`` must neither
    equal, contain nor lie inside.
    """
    target = Path(path).resolve()
    for other in protect:
        other = Path(other).resolve()
        if _is_within(other, target) or _is_within(target, other):
            relation = "is" if target == other else ("contains" if _is_within(other, target) else "lies inside")
            raise UserError(
                f"{path} {relation} the dataset {other}; writing the {kind} there would destroy "
                f"or mix with it. Choose another --out."
            )


def check_replaceable(path: str | Path, kind: Kind, protect: tuple[Path, ...] = ()) -> None:
    """Raise :class:`UserError` unless ``path`` is a ``kind`` directory zsrl may replace."""
    check_target(path, kind, protect)
    target = Path(path).resolve()
    cwd = Path.cwd().resolve()
    if _is_within(cwd, target):
        raise UserError(
            f"--overwrite will not remove {path}: it is the working directory or contains it. "
            f"Choose a new --out such as {Path(path) / kind}."
        )
    if target == Path.home().resolve() or target == Path(target.anchor) or Path(path).is_symlink():
        raise UserError(f"--overwrite will not remove {path}; choose another --out")
    if _RECOGNISE[kind](target):
        return
    other: Kind = "dataset" if kind == "run" else "run"
    found = f"a zsrl {other}" if _RECOGNISE[other](target) else "not something zsrl wrote"
    marker = "run.json" if kind == "run" else "meta.json and tensors/"
    raise UserError(
        f"--overwrite will not remove {path}: it is {found} (a {kind} directory has {marker}). "
        f"--overwrite only replaces a {kind} that zsrl wrote; choose another --out or remove it yourself."
    )


def check_out(path: str | Path, kind: Kind, overwrite: bool, protect: tuple[Path, ...] = ()) -> bool:
    """Raise unless a ``kind`` may be written at ``path``; True when an old one must go first.

    An empty or missing directory is used as is; an existing non-empty one only with
    ``overwrite`` and when :func:`check_replaceable` accepts it.
    """
    path = Path(path)
    check_target(path, kind, protect)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file, not a directory; choose another --out")
    if not (path.is_dir() and any(path.iterdir())):
        return False
    if not overwrite:
        hint = f"resume it with `zsrl train --resume {path}`, " if kind == "run" and is_run_dir(path) else ""
        raise UserError(f"{kind} directory {path} already exists; {hint}choose another --out or pass --overwrite")
    check_replaceable(path, kind, protect)
    return True


def create_dir(path: str | Path, kind: Kind, overwrite: bool, files: dict[str, Any],
               protect: tuple[Path, ...] = ()) -> Path:
    """Create the ``kind`` directory ``path`` holding the JSON ``files`` (the marker last).

    Call it under ``path``'s writer lock. The files are written into a temporary folder that
    is renamed to ``path`` (after removing an old ``kind`` there, see :func:`check_out`), so
    a kill never leaves a half-created directory that looks like a ``kind``.
    """
    path = Path(path)
    remove_stale_partials(path)  # debris of killed writers (we hold the lock)
    if check_out(path, kind, overwrite, protect):
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
