"""Typed configuration: dataclasses are the single source of truth.

A run is described by :class:`RunConfig` — ``domain``, ``task`` (supervised agents only),
``agent`` (the agent's own dataclass, chosen by ``agent.name``) and ``train``. YAML presets
under ``configs/<agent>/<domain>.yaml`` fill it, and ``key.sub=value`` overrides
(``agent.z_dim=100 train.steps=5000``) are applied on top. Unknown keys and values of the
wrong type are errors that name the offending key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from zsrl.registry import agent_class
from zsrl.utils import UserError

T = TypeVar("T")


@dataclass
class TrainConfig:
    """Options of the training loop shared by every agent."""

    steps: int = 100_000
    batch_size: int = 1024
    seed: int = 0
    device: str = "auto"
    #: metrics are read back from the device (one host sync) every ``log_every`` updates
    log_every: int = 1000
    checkpoint_every: int = 10_000
    #: periodic zero-shot evaluation (0 = off) on ``eval_tasks`` with ``eval_episodes`` each
    eval_every: int = 0
    eval_tasks: list[str] = field(default_factory=list)
    eval_episodes: int = 2
    eval_reward_samples: int = 10_000
    #: ``torch.compile`` the training step; ``auto``: on for CUDA, off elsewhere
    compile: bool | Literal["auto"] = "auto"
    #: record the training step as a CUDA graph (CUDA only); ``auto``: on for CUDA
    cudagraphs: bool | Literal["auto"] = "auto"
    #: TF32 tensor-core matmuls for float32 on CUDA (ignored elsewhere)
    tf32: bool = True
    #: ``bf16``: autocast the update's matmuls to bfloat16 (parameters and optimiser stay fp32)
    precision: Literal["fp32", "bf16"] = "fp32"
    tensorboard: bool = False
    progress: bool = True


def resolve_auto(flag: bool | str, device: Any) -> bool:
    """A ``bool | "auto"`` switch for ``device``: ``auto`` is on exactly for CUDA devices."""
    if flag == "auto":
        return str(device).startswith("cuda")
    return bool(flag)


@dataclass
class AgentConfig:
    """Base of every agent's config; ``name`` selects the agent class in the registry."""

    name: str = ""


@dataclass
class RunConfig:
    domain: str = "point_mass_maze"
    agent: AgentConfig = field(default_factory=AgentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    #: the task reward for supervised agents (the oracle); ``None`` for reward-free agents
    task: str | None = None


# ---- strict dict → dataclass ------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(f"{key}: {value!r} does not fit {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise UserError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{key}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise UserError."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise UserError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f" in {prefix}" if prefix else ""
        raise UserError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}{where}; "
            f"valid keys: {', '.join(sorted(known))}"
        )
    kwargs = {
        name: _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name)
        for name, value in data.items()
    }
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# ---- run configs -----------------------------------------------------------------------
def agent_config_class(name: str) -> type[AgentConfig]:
    return agent_class(name).config_class


def run_config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Parse a whole run config; the agent section is parsed with its agent's dataclass."""
    data = dict(data)
    agent = data.pop("agent", None)
    if not isinstance(agent, dict) or not agent.get("name"):
        raise UserError("config: 'agent' must be a mapping with a 'name' (e.g. agent: {name: fb})")
    cfg = from_dict(RunConfig, data)
    cfg.agent = from_dict(agent_config_class(agent["name"]), agent, "agent")
    return cfg


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["agent.z_dim=100", "train.device=cuda"]`` → nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not of the form key.sub=value")
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``extra`` wins."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def preset_path(spec: str | Path) -> Path:
    """A YAML path, or a preset name like ``fb/point_mass_maze_cpu`` shipped in zsrl.configs."""
    path = Path(spec)
    if path.is_file():
        return path
    name = str(spec).removeprefix("configs/").removesuffix(".yaml")
    packaged = resources.files("zsrl.configs").joinpath(f"{name}.yaml")
    if packaged.is_file():
        return Path(str(packaged))
    raise UserError(
        f"config {spec!r} is neither a file nor a preset; presets: {', '.join(list_presets())}"
    )


def list_presets() -> list[str]:
    root = resources.files("zsrl.configs")
    out = []
    for agent_dir in root.iterdir():
        if agent_dir.is_dir() and not agent_dir.name.startswith("_"):
            out += [f"{agent_dir.name}/{f.name[:-5]}" for f in agent_dir.iterdir()
                    if f.name.endswith(".yaml")]
    return sorted(out)


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"config {path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path}: expected a mapping at the top level")
    return data


def load_run_config(spec: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a preset or YAML file, apply dotted overrides, and validate."""
    data = merge(load_yaml(preset_path(spec)), parse_overrides(overrides or []))
    return run_config_from_dict(data)
