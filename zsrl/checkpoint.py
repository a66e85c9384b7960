"""Run checkpoints and final models: written by renames only, verified when read.

``RUN_DIR/checkpoint/`` holds::

    model.safetensors, config.json   the inference model (``Model.load`` reads these)
    training_state.pt                agent modules, optimizers, RNG states, step, the
                                     metrics accumulated since the last log row (of
                                     every rank, in a data-parallel run)
    manifest.json                    step, format version and the sha256 of every file
                                     above (written last: its presence marks completion)

A new checkpoint is built in ``.checkpoint.*.partial`` and swapped in by two renames
(:func:`zsrl.storage.swap_in`): the current one becomes ``.checkpoint.old``, the new one
becomes ``checkpoint``. At every moment one of the two is complete, and readers
(:func:`find_checkpoint`) take ``checkpoint`` and else ``.checkpoint.old``; the previous
checkpoint is kept as ``.checkpoint.old`` until the next swap, so a corrupt current one can
be replaced by hand. ``RUN_DIR/model/`` (the final model) is swapped in the same way and has
its own manifest. ``training_state.pt`` holds only tensors and plain containers and is read
with ``torch.load(weights_only=True)`` after its checksum matched.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from zsrl import distributed
from zsrl.agents.base import Model
from zsrl.agents.model_files import first_line
from zsrl.data import env_dims
from zsrl.errors import CheckpointError
from zsrl.storage import (
    atomic_write_bytes,
    atomic_write_json,
    check_format_version,
    complete_copy,
    old_copy,
    read_json_object,
    sha256_file,
    storage_errors,
    swapped_directory,
)
from zsrl.utils import fault_point, rng_state, set_rng_state

TRAINING_FORMAT_VERSION = 2
CHECKPOINT = "checkpoint"
FINAL_MODEL = "model"
MANIFEST = "manifest.json"
_LEGACY_MANIFEST = "progress.json"  # format 1 checkpoints (no checksums)
TRAINING_STATE = "training_state.pt"
#: what torch.load raises on a damaged file
_UNREADABLE = (RuntimeError, ValueError, OSError, EOFError, KeyError, TypeError, IndexError,
               AttributeError, pickle.UnpicklingError)


def write_manifest(directory: Path, **info: Any) -> None:
    """Record the sha256 of every file in ``directory`` plus ``info``; written last."""
    sums = {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}
    atomic_write_json(directory / MANIFEST, {**info, "sha256": sums})


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a checkpoint or model directory (a legacy ``progress.json`` too)."""
    name = MANIFEST if (directory / MANIFEST).is_file() else _LEGACY_MANIFEST
    return read_json_object(directory / name, f"the manifest of {directory}")


def is_complete(directory: Path) -> bool:
    """Whether ``directory`` is a finished checkpoint or model write (by its manifest)."""
    return (directory / MANIFEST).is_file() or (directory / _LEGACY_MANIFEST).is_file()


def _is_model(directory: Path) -> bool:
    """A finished model folder, or one an older zsrl (without manifests) wrote."""
    return is_complete(directory) or (
        (directory / "model.safetensors").is_file() and (directory / "config.json").is_file()
    )


def verify(directory: Path) -> dict[str, Any]:
    """Check every file of ``directory`` against its manifest; returns the manifest."""
    manifest = read_manifest(directory)
    sums = manifest.get("sha256")
    unlisted = sorted(p.name for p in directory.iterdir()
                      if p.is_file() and p.name not in (MANIFEST, _LEGACY_MANIFEST) and p.name not in (sums or {}))
    if not isinstance(sums, dict) or unlisted:
        why = f"its files {', '.join(unlisted)} have no checksum" if isinstance(sums, dict) else "no checksum table"
        raise CheckpointError(
            f"{directory} cannot be verified ({why} in its manifest: damaged, edited, or written by an "
            f"older zsrl); it is not loaded unverified.{_older_copy_hint(directory)}"
        )
    for name, expected in sums.items():
        file = directory / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing; {directory} is incomplete")
        with storage_errors(f"read {file}"):
            actual = sha256_file(file)
        if actual != expected:
            raise CheckpointError(
                f"{file} is corrupt: its sha256 differs from the one recorded when it was written "
                f"(a damaged disk or copy, or an edit).{_older_copy_hint(directory)}"
            )
    return manifest


def _older_copy_hint(directory: Path) -> str:
    old = old_copy(directory)
    if directory.name == CHECKPOINT and is_complete(old):
        step = read_manifest(old).get("step")
        return (
            f" The previous checkpoint (step {step}) is kept in {old}: move it to {directory} "
            "to resume from it."
        )
    return ""


def find_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint of ``run_dir`` (``checkpoint/`` or, mid-swap, ``.checkpoint.old``)."""
    return complete_copy(Path(run_dir) / CHECKPOINT, is_complete)


def find_final_model(run_dir: str | Path) -> Path | None:
    """The complete final model of ``run_dir``, if training finished writing it."""
    return complete_copy(Path(run_dir) / FINAL_MODEL, _is_model)


def checkpoint_step(run_dir: str | Path) -> int | None:
    """The step of the run's complete checkpoint (None without one)."""
    path = find_checkpoint(run_dir)
    return None if path is None else int(read_manifest(path).get("step", 0))


@contextlib.contextmanager
def _swapped_dir(path: Path, step: int, keep_old: bool) -> Iterator[Path]:
    """A temporary folder to fill; its manifest is written last and it is swapped in at ``path``."""
    with swapped_directory(path, keep_old=keep_old) as tmp:
        yield tmp
        write_manifest(tmp, step=step, format_version=TRAINING_FORMAT_VERSION)
        fault_point(f"{path.name}:written")


def save_checkpoint(
    run_dir: Path, agent: Any, step: int, extra_model_meta: dict[str, Any], loop: dict[str, Any] | None = None,
    peers: Sequence[dict[str, Any]] = (),
) -> Path:
    """Replace ``run_dir/checkpoint`` with the state after ``step`` updates (see module doc).

    ``loop`` is the training loop's own state (the metrics accumulated since the last log
    row), saved so that a resumed run writes the same metric rows. ``peers``: the ``rng`` and
    ``loop`` of ranks 1, 2, … of a data-parallel run (this process is rank 0).
    """
    with _swapped_dir(run_dir / CHECKPOINT, step, keep_old=True) as tmp:
        agent.inference_model().save(tmp, extra=extra_model_meta)
        buf = io.BytesIO()
        torch.save({"agent": agent.state_dict(), "rng": rng_state(), "step": step, "loop": loop or {},
                    "world_size": 1 + len(peers), "peers": list(peers)}, buf)
        atomic_write_bytes(tmp / TRAINING_STATE, buf.getvalue())
    return run_dir / CHECKPOINT


def save_final_model(run_dir: Path, model: Model, step: int, extra_model_meta: dict[str, Any]) -> Path:
    """Write ``run_dir/model`` (the inference model after ``step`` updates) by a swap."""
    with _swapped_dir(run_dir / FINAL_MODEL, step, keep_old=False) as tmp:
        model.save(tmp, extra=extra_model_meta)
    return run_dir / FINAL_MODEL


def load_training_state(run_dir: Path, agent: Any) -> tuple[int, dict[str, Any]]:
    """Restore ``agent`` and the RNGs from the run's checkpoint; returns ``(step, loop state)``.

    In a data-parallel run every rank calls it and takes its own random stream and loop state.
    """
    path = find_checkpoint(run_dir)
    if path is None:
        raise CheckpointError(f"{run_dir} has no complete checkpoint to resume from")
    manifest = verify(path)
    check_format_version(manifest.get("format_version"), TRAINING_FORMAT_VERSION, f"the checkpoint {path}",
                         CheckpointError)
    try:
        state = torch.load(path / TRAINING_STATE, map_location=agent.device, weights_only=True)
        rng, step, loop = state["rng"], int(state["step"]), state.get("loop", {})
        saved_world, rank = int(state.get("world_size", 1)), distributed.rank()
        if 0 < rank < saved_world:
            rng, loop = state["peers"][rank - 1]["rng"], state["peers"][rank - 1]["loop"]
    except FileNotFoundError:
        raise CheckpointError(f"{path}/{TRAINING_STATE} is missing; the run cannot be resumed") from None
    except _UNREADABLE as exc:  # truncated zip, foreign pickle … (never load it unsafely)
        raise CheckpointError(
            f"{path}/{TRAINING_STATE} is truncated or corrupt ({type(exc).__name__}); the run "
            f"cannot be resumed from it.{_older_copy_hint(path)}"
        ) from None
    if saved_world != distributed.world_size():
        raise CheckpointError(f"{path} was written by a run of {saved_world} processes and this one has "
                              f"{distributed.world_size()}; resume it on {saved_world}")
    try:
        agent.load_state_dict(state["agent"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} does not match this run's agent config: {first_line(exc)}") from None
    set_rng_state(rng)
    return step, loop


_MODEL_KEYS = ("agent", "obs_dim", "action_dim", "agent_config")


def load_model_dir(directory: Path, device: str | torch.device = "cpu") -> Model:
    """``Model.load`` after checking the directory's checksums and config."""
    if is_complete(directory):
        verify(directory)
    cfg_path = directory / "config.json"
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text())
        except (ValueError, OSError):
            cfg = None
        missing = [k for k in _MODEL_KEYS if not isinstance(cfg, dict) or k not in cfg]
        if missing:
            raise CheckpointError(
                f"{cfg_path} is not a zsrl model config (it lacks {', '.join(missing)}); the model "
                "cannot be rebuilt from it. Use the run's other model folder or train again."
            )
    return Model.load(directory, device=device)


def _load_latest(run_dir: Path, device: str | torch.device, attempts: int = 3) -> Model:
    """The final model, else the checkpoint; retried when a training process swapped the
    checkpoint while it was being read (its files then mix two steps)."""
    for attempt in range(attempts):
        found = find_final_model(run_dir) or find_checkpoint(run_dir)
        if found is None:
            raise CheckpointError(
                f"{run_dir} has no trained model ({FINAL_MODEL}/ or {CHECKPOINT}/); train one with `zsrl train`"
            )
        step = read_manifest(found).get("step") if is_complete(found) else None
        try:
            return load_model_dir(found, device=device)
        except CheckpointError:
            swapped = is_complete(found) and read_manifest(found).get("step") != step
            if not swapped or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def load_run_model(run_dir: str | Path, domain: Any | None = None, device: str | torch.device = "cpu") -> Model:
    """The final model of a run (or its latest checkpoint), checked against ``domain``."""
    run_dir = Path(run_dir)
    model = _load_latest(run_dir, device)
    return model if domain is None else check_model_fits_domain(model, domain, run_dir)


def check_model_fits_domain(model: Model, domain: Any, run_dir: str | Path) -> Model:
    """``model`` itself, or a CheckpointError when it was trained on another domain or sizes."""
    trained_on = model.meta.get("domain")  # type: ignore[attr-defined]
    if trained_on is not None and trained_on != domain.name:
        raise CheckpointError(
            f"the model in {run_dir} was trained on domain {trained_on!r}, not {domain.name!r}; "
            "evaluate it on its own domain"
        )
    obs_dim, act_dim = env_dims(domain)
    if domain.observer is not None:
        obs_dim = domain.observer.seen_dim(obs_dim)
    if (model.obs_dim, model.action_dim) != (obs_dim, act_dim):
        raise CheckpointError(
            f"the model in {run_dir} expects obs/action dims {(model.obs_dim, model.action_dim)} "
            f"but domain {domain.name!r} has {(obs_dim, act_dim)}"
        )
    return model
