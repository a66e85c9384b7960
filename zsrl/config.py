"""Typed configuration: dataclasses are the single source of truth.

A run is described by :class:`RunConfig` — ``domain``, ``task`` (supervised agents only),
``agent`` (the agent's own dataclass, chosen by ``agent.name``) and ``train``. YAML presets
under ``configs/<agent>/<domain>.yaml`` fill it, and ``key.sub=value`` overrides
(``agent.z_dim=100 train.steps=5000``) are applied on top. Unknown keys and values of the
wrong type are errors that name the offending key.

Presets state only what differs: a preset names its parent with ``base:`` (a sibling file
such as ``generic_cpu``, a preset name such as ``fb/generic`` or a YAML path) and overrides
some of its keys; the chain ends at a preset without ``base:``, whose unstated keys keep the
dataclass defaults. ``configs/<agent>/generic.yaml`` (published size, for a GPU) and
``generic_cpu.yaml`` (sized for a laptop CPU) are the roots; they carry no domain, which
``zsrl train --agent AGENT`` takes from the dataset.

Values are checked where they are declared: a field made with :func:`param` carries its
bounds (``lr: float = param(1e-4, gt=0)``), and a dataclass may define ``check(self)`` for
relations between its fields. :func:`from_dict` enforces both, so a bad value stops a
command before it creates any folder, with an error that names the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml

from zsrl.errors import UserError
from zsrl.registry import agent_class

T = TypeVar("T")

_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def param(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    why: str = "",
) -> Any:
    """A dataclass field with bounds, enforced by :func:`from_dict` (``why`` joins the error)."""
    bounds = {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt}.items() if v is not None}
    return field(default=default, default_factory=default_factory,
                 metadata={"bounds": bounds, "why": why})


def _in_bounds(value: float, op: str, bound: float) -> bool:
    return {"ge": value >= bound, "gt": value > bound, "le": value <= bound, "lt": value < bound}[op]


def validate(cfg: Any, prefix: str = "") -> None:
    """Check every bounded field of dataclass ``cfg`` (recursively) and its ``check()`` relations.

    Raises :class:`UserError` naming the first offending key.
    """
    for f in fields(cfg):
        bounds = f.metadata.get("bounds")
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            validate(value, f"{prefix}.{f.name}" if prefix else f.name)
            continue
        if not bounds or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        failed = [op for op, bound in bounds.items() if not (math.isfinite(value) and _in_bounds(value, op, bound))]
        if failed:
            key = f"{prefix}.{f.name}" if prefix else f.name
            need = " and ".join(f"{_BOUND_TEXT[op]} {bounds[op]:g}" for op in bounds)
            why = f" ({f.metadata['why']})" if f.metadata.get("why") else ""
            raise UserError(f"{key} = {value!r} is out of range: it must be {need}{why}")
    check = getattr(cfg, "check", None)
    if callable(check):
        try:
            check()
        except UserError as exc:
            raise UserError(f"{prefix + ': ' if prefix else ''}{exc}") from None


@dataclass
class TrainConfig:
    """Options of the training loop shared by every agent."""

    steps: int = param(100_000, ge=1, le=10**12)
    batch_size: int = param(1024, ge=2, why="the losses contrast the samples of a batch")
    seed: int = param(0, ge=0)
    device: str = "auto"
    #: metrics are read back from the device (one host sync) every ``log_every`` updates
    log_every: int = param(1000, ge=1)
    checkpoint_every: int = param(10_000, ge=1)
    #: periodic zero-shot evaluation (0 = off) on ``eval_tasks`` with ``eval_episodes`` each
    eval_every: int = param(0, ge=0)
    eval_tasks: list[str] = field(default_factory=list)
    eval_episodes: int = param(2, ge=1)
    eval_reward_samples: int = param(10_000, ge=1)
    #: ``torch.compile`` the training step; ``auto``: on for CUDA, off elsewhere
    compile: bool | Literal["auto"] = "auto"
    #: record the training step as a CUDA graph (CUDA only); ``auto``: on for CUDA
    cudagraphs: bool | Literal["auto"] = "auto"
    #: TF32 tensor-core matmuls for float32 on CUDA (ignored elsewhere)
    tf32: bool = True
    #: ``bf16``: autocast the update's matmuls to bfloat16 (parameters and optimiser stay fp32)
    precision: Literal["fp32", "bf16"] = "fp32"
    progress: bool = True
    #: experiment trackers that get the metric rows too: ``tensorboard``, ``wandb`` (zsrl.trackers)
    loggers: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)

    #: options removed since zsrl 0.1, and the value each behaved as when off
    retired: ClassVar[dict[str, Any]] = {"tensorboard": False}


def resolve_auto(flag: bool | str, device: Any) -> bool:
    """A ``bool | "auto"`` switch for ``device``: ``auto`` is on exactly for CUDA devices."""
    if flag == "auto":
        return str(device).startswith("cuda")
    return bool(flag)


@dataclass
class AgentConfig:
    """Base of every agent's config; ``name`` selects the agent class in the registry."""

    name: str = ""
    #: the policy picks an action every ``action_repeat`` environment steps and holds it
    #: (a frame skip). Training then reads ``k``-step transitions ``(s_t, a_t, s_{t+k})``
    #: from windows of the dataset in which the action was held for ``k`` steps (see
    #: :func:`zsrl.data.held_action_transitions`), so the discount applies per decision and
    #: the effective horizon is ``k / (1 − γ)`` environment steps. Returns are still summed
    #: over every environment step.
    action_repeat: int = param(1, ge=1)
    #: export an exponential moving average of the model's parameters over the updates
    #: (:class:`zsrl.nn.ParameterAverage`, ``θ̄ ← δ θ̄ + (1 − δ) θ`` with ``δ = ema_decay``)
    #: instead of the last update's: the final model, checkpoints' models and periodic
    #: evaluations use it; training itself is unchanged. 0 = off.
    ema_decay: float = param(0.0, ge=0, lt=1, why="0 is off; 0.999 averages about the last 1000 updates")


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
    data = _without_retired(cls, data, prefix)
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
    out = cls(**kwargs)
    if cls is not RunConfig:  # a RunConfig is checked once its agent section is parsed
        validate(out, prefix)
    return out


def _without_retired(cls: type, data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``data`` without the keys of options ``cls`` retired (its ``retired`` table: key → the
    value it behaved as when off), so configs and models saved before keep loading; a retired
    option that was on is an error that says so."""
    retired = getattr(cls, "retired", {})
    for key in set(data) & set(retired):
        if data[key] != retired[key]:
            name = f"{prefix}.{key}" if prefix else key
            raise UserError(
                f"{name} = {data[key]!r}: this option was removed from zsrl (it measured no better; "
                "docs/experiments.md); a config or model that uses it needs the zsrl release it was made with"
            )
    return {k: v for k, v in data.items() if k not in retired}


def config_differences(saved: Any, other: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in saved, value in other)`` wherever two nested configs differ."""
    if isinstance(saved, dict) and isinstance(other, dict):
        return [d for k in sorted(set(saved) | set(other), key=str)
                for d in config_differences(saved.get(k), other.get(k), f"{prefix}.{k}" if prefix else str(k))]
    return [] if saved == other else [(prefix, saved, other)]


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# ---- run configs -----------------------------------------------------------------------
def agent_config_class(name: str, source: str | None = None) -> type[AgentConfig]:
    return agent_class(name, source).config_class


def run_config_from_dict(data: dict[str, Any], source: str | None = None) -> RunConfig:
    """Parse a whole run config; the agent section is parsed with its agent's dataclass.
    ``source``: the artifact the config was read from (see :mod:`zsrl.registry` on trust)."""
    data = dict(data)
    agent = data.pop("agent", None)
    if not isinstance(agent, dict) or not agent.get("name"):
        raise UserError("config: 'agent' must be a mapping with a 'name' (e.g. agent: {name: fb})")
    cfg = from_dict(RunConfig, data)
    cfg.agent = from_dict(agent_config_class(agent["name"], source), agent, "agent")
    validate(cfg)
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


#: the key by which a preset names the preset it extends
BASE_KEY = "base"


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


def load_preset(spec: str | Path) -> dict[str, Any]:
    """The preset or YAML file ``spec`` as a dict, with its ``base:`` chain merged in."""
    return _with_bases(preset_path(spec), ())


def _with_bases(path: Path, children: tuple[Path, ...]) -> dict[str, Any]:
    if path.resolve() in children:
        chain = " -> ".join(str(p) for p in (*children, path.resolve()))
        raise UserError(f"config {path}: its '{BASE_KEY}:' chain loops ({chain})")
    data = load_yaml(path)
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise UserError(f"config {path}: '{BASE_KEY}:' must name a preset or a YAML file, got {base!r}")
    sibling = path.parent / (base if base.endswith(".yaml") else f"{base}.yaml")
    parent = sibling if sibling.is_file() else preset_path(base)
    return merge(_with_bases(parent, (*children, path.resolve())), data)


def load_run_config(
    spec: str | Path, overrides: list[str] | None = None, domain: str | None = None
) -> RunConfig:
    """Load a preset or YAML file, set ``domain`` if given, apply dotted overrides, validate."""
    data = load_preset(spec)
    if domain is not None:
        data["domain"] = domain
    return run_config_from_dict(merge(data, parse_overrides(overrides or [])))


def generic_preset(agent: str, gpu: bool) -> str:
    """The domain-free preset of ``agent``: ``AGENT/generic`` (GPU size) or ``AGENT/generic_cpu``."""
    name = f"{agent}/generic" if gpu else f"{agent}/generic_cpu"
    if name not in list_presets():
        having = sorted({p.split("/")[0] for p in list_presets() if p.endswith("/generic_cpu")})
        raise UserError(
            f"agent {agent!r} has no generic preset; agents with one: {', '.join(having)}. "
            "Otherwise pass --config PRESET_OR_YAML."
        )
    return name
