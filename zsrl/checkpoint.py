"""Run checkpoints: written atomically, loadable for inference without training state.

``RUN_DIR/checkpoint/`` holds::

    model.safetensors, config.json   the inference model (``Model.load`` reads these)
    training_state.pt                agent modules, optimizers, RNG states, step
    progress.json                    {"step": k, "format_version": 1}

The folder is rebuilt under a temporary name and swapped in, so a crash mid-write keeps the
previous checkpoint intact. ``training_state.pt`` holds only tensors and plain containers and
is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from zsrl.agents.base import CheckpointError, Model
from zsrl.utils import atomic_directory, atomic_write_json, read_json

TRAINING_FORMAT_VERSION = 1
CHECKPOINT = "checkpoint"
FINAL_MODEL = "model"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, agent: Any, step: int, extra_model_meta: dict[str, Any]) -> Path:
    """Atomically replace ``run_dir/checkpoint`` with the state after ``step`` updates."""
    path = run_dir / CHECKPOINT
    with atomic_directory(path, overwrite=True) as tmp:
        agent.model.save(tmp, extra=extra_model_meta)
        buf = io.BytesIO()
        torch.save({"agent": agent.state_dict(), "rng": rng_state(), "step": step}, buf)
        (tmp / "training_state.pt").write_bytes(buf.getvalue())
        atomic_write_json(tmp / "progress.json", {"step": step, "format_version": TRAINING_FORMAT_VERSION})
    return path


def load_training_state(run_dir: Path, agent: Any) -> int:
    """Restore ``agent`` and the RNGs from ``run_dir/checkpoint``; returns the step."""
    path = run_dir / CHECKPOINT
    progress = read_json(path / "progress.json", f"checkpoint of {run_dir}")
    version = progress.get("format_version")
    if not isinstance(version, int) or version > TRAINING_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has training-state format {version!r}; this zsrl reads up to "
            f"{TRAINING_FORMAT_VERSION}. Upgrade zsrl to resume it."
        )
    try:
        state = torch.load(path / "training_state.pt", map_location=agent.device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}/training_state.pt is missing; the run cannot be resumed") from None
    except (RuntimeError, ValueError, OSError, EOFError, KeyError) as exc:  # truncated zip …
        raise CheckpointError(
            f"{path}/training_state.pt is truncated or corrupt ({type(exc).__name__}); the run "
            "cannot be resumed from it"
        ) from None
    try:
        agent.load_state_dict(state["agent"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path} does not match this run's agent config: {exc}") from None
    rng = state["rng"]
    rng["torch"] = rng["torch"].cpu()
    if "cuda" in rng:
        rng["cuda"] = [s.cpu() for s in rng["cuda"]]
    set_rng_state(rng)
    return int(state["step"])


def load_run_model(run_dir: str | Path, domain: Any | None = None, device: str | torch.device = "cpu") -> Model:
    """The final model of a run (or its latest checkpoint), checked against ``domain``."""
    run_dir = Path(run_dir)
    for sub in (FINAL_MODEL, CHECKPOINT):
        if (run_dir / sub / "model.safetensors").is_file():
            model = Model.load(run_dir / sub, device=device)
            break
    else:
        raise CheckpointError(
            f"{run_dir} has no trained model ({FINAL_MODEL}/ or {CHECKPOINT}/); train one with `zsrl train`"
        )
    return model if domain is None else check_model_fits_domain(model, domain, run_dir)


def check_model_fits_domain(model: Model, domain: Any, run_dir: str | Path) -> Model:
    """``model`` itself, or a CheckpointError when it was trained on another domain or sizes."""
    trained_on = model.meta.get("domain")  # type: ignore[attr-defined]
    if trained_on is not None and trained_on != domain.name:
        raise CheckpointError(
            f"the model in {run_dir} was trained on domain {trained_on!r}, not {domain.name!r}; "
            "evaluate it on its own domain"
        )
    env = domain.make_env(seed=0)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    if (model.obs_dim, model.action_dim) != (obs_dim, act_dim):
        raise CheckpointError(
            f"the model in {run_dir} expects obs/action dims {(model.obs_dim, model.action_dim)} "
            f"but domain {domain.name!r} has {(obs_dim, act_dim)}"
        )
    return model
