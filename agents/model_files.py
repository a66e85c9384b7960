"""The model folder: ``model.safetensors`` (the weights, never pickle) and ``config.json``
(format version, agent name, sizes, the agent's config), written atomically. Any zsrl model
loads from it without its optimizer, target networks or dataset, dispatching on the agent
name through the registry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from zsrl.config import from_dict
from zsrl.errors import CheckpointError, RegistryError
from zsrl.registry import agent_class
from zsrl.storage import atomic_write_bytes, atomic_write_json, check_format_version

MODEL_FORMAT_VERSION = 1
MODEL_WEIGHTS = "model.safetensors"
MODEL_CONFIG = "config.json"


def write_model(model: nn.Module, directory: str | Path, config: dict[str, Any]) -> None:
    """Write ``model``'s weights and ``config`` into ``directory`` (each file atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(directory / MODEL_WEIGHTS, safetensors_bytes(tensors))
    atomic_write_json(directory / MODEL_CONFIG, config)


def read_model(directory: str | Path, device: str | torch.device = "cpu") -> Any:
    """The model in ``directory``, in eval mode without gradients, its ``config.json`` as
    ``model.meta``; a :class:`CheckpointError` says what is missing or damaged."""
    directory = Path(directory)
    cfg_path, weights = directory / MODEL_CONFIG, directory / MODEL_WEIGHTS
    if not cfg_path.is_file() or not weights.is_file():
        raise CheckpointError(
            f"{directory} holds no model ({MODEL_CONFIG} and {MODEL_WEIGHTS} expected); "
            "point at a run directory's model/ folder or a checkpoint written by zsrl train"
        )
    try:
        meta = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{cfg_path} is corrupt (invalid JSON)") from None
    check_format_version(meta.get("format_version"), MODEL_FORMAT_VERSION, f"the model {directory}", CheckpointError)
    if "agent" not in meta:
        raise CheckpointError(f"{cfg_path} names no agent; the model cannot be rebuilt from it")
    try:
        agent_cls = agent_class(meta["agent"], source=f"the model {directory}")
    except RegistryError as exc:
        raise CheckpointError(f"{cfg_path}: {exc}") from None
    cfg = from_dict(agent_cls.config_class, meta["agent_config"], "agent")
    model = agent_cls.model_class(meta["obs_dim"], meta["action_dim"], cfg)
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights} is truncated or corrupt ({exc}); use another checkpoint") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights} does not match its config.json: {first_line(exc)}") from None
    model.meta = meta  # type: ignore[attr-defined]
    return model.to(device).eval().requires_grad_(False)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message cut to its first line (torch lists every mismatched tensor)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + " …"
