"""The interface every zero-shot method implements: an inference :class:`Model` and a
training :class:`Agent` (the split of metamotivo's FBModel / FBAgent).

* :class:`Model` — an ``nn.Module`` with everything needed at test time and nothing else:
  ``act(obs, z)``, ``sample_z(n)``, ``infer_z_from_rewards(obs, rewards)``,
  ``infer_z_from_goal(goal_obs, obs)`` and ``save(dir)`` / ``load(dir)`` as safetensors plus
  a JSON config (never pickle). Loading needs no optimizer, target network or dataset.
* :class:`Agent` — owns a Model plus optimizers and target networks: ``update(batch)``
  returns a dict of metric *tensors* (never synchronised with the host — the training loop
  reads them every K steps), and ``state_dict()`` / ``load_state_dict()`` capture the whole
  training state for exact resume.

``z`` is the task embedding. Reward prompting receives the states at which the rewards
were observed (for a transition ``(s, a, s')`` with reward ``r(s, a, s')``, the next state
``s'``), following FB's ``z = Σ r_i B(s'_i)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from tensordict import TensorDict
from torch import nn

from zsrl.config import AgentConfig, from_dict
from zsrl.utils import UserError, atomic_write_bytes, atomic_write_json

MODEL_FORMAT_VERSION = 1
MODEL_WEIGHTS = "model.safetensors"
MODEL_CONFIG = "config.json"


class CheckpointError(UserError):
    """A model or training checkpoint that cannot be loaded; the message says why."""


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raise a clear ValueError for NaN/inf in user-provided prompts (not for hot loops)."""
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite values (NaN or inf); clean the input first")


class Model(nn.Module):
    """Inference-only model of a zero-shot agent (see the module docstring)."""

    #: the agent name in the registry, written into config.json
    agent_name: ClassVar[str] = ""

    def __init__(self, obs_dim: int, action_dim: int, cfg: AgentConfig):
        super().__init__()
        self.obs_dim, self.action_dim, self.cfg = obs_dim, action_dim, cfg

    # ---- the inference API -------------------------------------------------------------
    @property
    def z_dim(self) -> int:
        return int(self.cfg.z_dim)  # type: ignore[attr-defined]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def act(self, obs: torch.Tensor, z: torch.Tensor, mean: bool = True) -> torch.Tensor:
        """Actions in ``[-1, 1]`` for observations ``(N, obs_dim)`` and tasks ``(N, z_dim)``."""
        raise NotImplementedError

    def sample_z(self, n: int, device: torch.device | None = None) -> torch.Tensor:
        """``n`` task embeddings from the training prior."""
        raise NotImplementedError

    def infer_z_from_rewards(self, obs: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """A task embedding ``(1, z_dim)`` from reward samples ``r_i`` observed at ``obs_i``."""
        raise NotImplementedError

    def infer_z_from_goal(self, goal_obs: torch.Tensor, obs: torch.Tensor | None = None) -> torch.Tensor:
        """A task embedding for reaching ``goal_obs`` (``(obs_dim,)`` or ``(N, obs_dim)``)."""
        raise NotImplementedError

    #: whether the goal embedding depends on the current observation (re-infer every step)
    goal_z_depends_on_obs: ClassVar[bool] = False

    @property
    def action_repeat(self) -> int:
        """Environment steps each action is held for (``agent.action_repeat``)."""
        return int(getattr(self.cfg, "action_repeat", 1))

    def _check_prompt(self, obs: torch.Tensor, rewards: torch.Tensor | None = None) -> None:
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"prompt states must have shape (N, {self.obs_dim}), got {tuple(obs.shape)}")
        check_finite("prompt states", obs)
        if rewards is not None:
            if rewards.reshape(-1).shape[0] != obs.shape[0]:
                raise ValueError(f"got {rewards.numel()} rewards for {obs.shape[0]} states")
            check_finite("reward samples", rewards)

    # ---- persistence -------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {
            "format_version": MODEL_FORMAT_VERSION,
            "agent": self.agent_name,
            "obs_dim": self.obs_dim,
            "action_dim": self.action_dim,
            "agent_config": asdict(self.cfg),
        }

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write ``model.safetensors`` and ``config.json`` atomically into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(directory / MODEL_WEIGHTS, safetensors_bytes(tensors))
        atomic_write_json(directory / MODEL_CONFIG, {**self.config_dict(), **(extra or {})})

    @staticmethod
    def load(directory: str | Path, device: str | torch.device = "cpu") -> Model:
        """Rebuild any zsrl model from ``directory`` (dispatching on the agent name)."""
        from zsrl.registry import RegistryError, agent_class

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
        version = meta.get("format_version")
        if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
            raise CheckpointError(
                f"{directory} was written with model format {version!r}; this zsrl reads up to "
                f"{MODEL_FORMAT_VERSION}. Upgrade zsrl to load it."
            )
        try:
            agent_cls = agent_class(meta["agent"])
        except (RegistryError, KeyError) as exc:
            raise CheckpointError(f"{cfg_path}: cannot find the agent that wrote it ({exc})") from None
        cfg = from_dict(agent_cls.config_class, meta["agent_config"], "agent")
        model = agent_cls.model_class(meta["obs_dim"], meta["action_dim"], cfg)
        try:
            state = load_file(str(weights), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{weights} is truncated or corrupt ({exc}); use another checkpoint") from None
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{weights} does not match its config.json: {exc}") from None
        model.meta = meta  # type: ignore[attr-defined]
        return model.to(device).eval().requires_grad_(False)


class Agent:
    """Training-side owner of a :class:`Model` (see the module docstring).

    Subclasses set ``config_class`` / ``model_class`` and implement :meth:`_update`. The
    public :meth:`update` dispatches to the (optionally compiled / CUDA-graphed) step.
    """

    config_class: ClassVar[type[AgentConfig]] = AgentConfig
    model_class: ClassVar[type[Model]] = Model
    #: supervised agents train on one task's reward (set via ``RunConfig.task``)
    needs_task: ClassVar[bool] = False

    def __init__(self, obs_dim: int, action_dim: int, cfg: AgentConfig, device: torch.device):
        self.cfg, self.device = cfg, torch.device(device)
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.model = self.model_class(obs_dim, action_dim, cfg).to(self.device)
        self._step_fn: Callable[[TensorDict], dict[str, torch.Tensor]] = self._update

    # ---- data hooks --------------------------------------------------------------------
    def setup(self, dataset: Any, domain: Any, task: str | None = None) -> None:
        """Called once before training with the dataset and the domain (e.g. to relabel)."""

    def sample_batch(self, dataset: Any, batch_size: int) -> TensorDict:
        """The training batch of one update (uniform transitions by default)."""
        return dataset.sample(batch_size)

    # ---- updates -----------------------------------------------------------------------
    def _update(self, batch: TensorDict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def update(self, batch: TensorDict) -> dict[str, torch.Tensor]:
        """One gradient step; returns detached metric tensors (no host synchronisation)."""
        return self._step_fn(batch)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.optim.Optimizer)}

    def wrap_step(
        self, fn: Callable[[TensorDict], dict[str, torch.Tensor]], compile: bool = False, cudagraphs: bool = False
    ) -> Callable[[TensorDict], dict[str, torch.Tensor]]:
        """``fn`` wrapped in ``torch.compile`` and/or a CUDA graph.

        CUDA graphs need a CUDA device; elsewhere they are skipped with a warning, and the
        update runs eagerly (or compiled), so CPU runs of a GPU config stay correct.
        """
        if compile:
            if self.device.type == "cpu":
                # torch 2.13's inductor pattern matcher fails on the FB update on CPU
                # ("Not all inputs to pattern found … slice_shape"); without it the compile
                # succeeds (and on CPU it gives no measurable speed-up either way).
                import torch._inductor.config as inductor_config

                inductor_config.pattern_matcher = False
            fn = torch.compile(fn, mode=None if cudagraphs else "default")
        if cudagraphs:
            if self.device.type != "cuda":
                import warnings

                warnings.warn("train.cudagraphs=true needs a CUDA device; running without CUDA graphs", stacklevel=3)
            else:
                from tensordict.nn import CudaGraphModule

                for opt in self.optimizers().values():
                    for group in opt.param_groups:
                        group["capturable"] = True
                fn = CudaGraphModule(fn, in_keys=[], out_keys=[], warmup=5)
        return fn

    def setup_compile(self, compile: bool = False, cudagraphs: bool = False) -> None:
        """Wrap the update step (see :meth:`wrap_step`)."""
        self._step_fn = self.wrap_step(self._update, compile, cudagraphs)

    # ---- state -------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        """Every module whose parameters/buffers belong to the training state."""
        return {k: v for k, v in vars(self).items() if isinstance(v, nn.Module)}

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"module.{k}": m.state_dict() for k, m in self.modules().items()}
        out.update({f"optim.{k}": o.state_dict() for k, o in self.optimizers().items()})
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {f"module.{k}" for k in self.modules()} | {f"optim.{k}" for k in self.optimizers()}
        if set(state) != expected:
            raise CheckpointError(
                f"training state does not match this agent (keys {sorted(state)} vs {sorted(expected)})"
            )
        for k, m in self.modules().items():
            m.load_state_dict(state[f"module.{k}"])
        for k, o in self.optimizers().items():
            o.load_state_dict(state[f"optim.{k}"])
