"""The contract of a zero-shot method: an inference :class:`Model` and a training
:class:`Agent` (the split of metamotivo's FBModel / FBAgent).

* :class:`Model` — an ``nn.Module`` with everything needed at test time and nothing else:
  ``act(obs, z)``, ``sample_z(n)``, ``infer_z_from_rewards(obs, rewards)``,
  ``infer_z_from_goal(goal_obs, obs)`` and ``save(dir)`` / ``load(dir)`` as safetensors plus
  a JSON config (never pickle). Loading needs no optimizer, target network or dataset.
* :class:`Agent` — owns a Model plus optimizers and target networks. A method implements
  ``update(batch)``: one gradient step, returning a dict of named 0-dim metric *tensors*
  (never read back here: the engine packs them and the training loop reads them every K
  steps). It declares its training state explicitly — ``add_module`` for every network,
  target network or buffer holder, ``add_optimizer`` for every optimizer — and
  ``state_dict()`` is exactly those, for exact resume. Optional hooks: ``setup`` (once,
  with the dataset and domain), ``sample_batch``, and for methods with several training
  phases (FRE) the ``phase`` attribute and ``after_step``.

How updates run — compiled, CUDA-graphed, autocast, with the parameter average
(``agent.ema_decay``) folded in — is the engine's business (:mod:`zsrl.engine`), not the
method's.

``z`` is the task embedding. Reward prompting receives the states at which the rewards
were observed (for a transition ``(s, a, s')`` with reward ``r(s, a, s')``, the next state
``s'``), following FB's ``z = Σ r_i B(s'_i)``; ``infer_z_from_transitions(s, s', r)``
carries whole transitions for methods that need both ends (HILP).
"""

from __future__ import annotations

from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
from tensordict import TensorDict
from torch import nn

from zsrl.agents.model_files import MODEL_FORMAT_VERSION, MODEL_WEIGHTS, read_model, write_model
from zsrl.agents.policy import Policy
from zsrl.config import AgentConfig
from zsrl.data import ArrayRewardFn, reward_from_arrays
from zsrl.engine import Metrics, ParameterAverage
from zsrl.errors import CheckpointError, UserError
from zsrl.nn import Standardize, fit_standardizers, make_adam, optimizer_step, restore_fast_adam

__all__ = ["MODEL_WEIGHTS", "Agent", "Model", "Policy", "check_finite"]


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raise a clear ValueError for NaN/inf in user-provided prompts (not for hot loops)."""
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite values (NaN or inf); clean the input first")


class Model(nn.Module):
    """Inference-only model of a zero-shot agent (see the module docstring)."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: AgentConfig):
        super().__init__()
        self.obs_dim, self.action_dim, self.cfg = obs_dim, action_dim, cfg

    @property
    def agent_name(self) -> str:
        """The registry name of the agent that trains this model: ``cfg.name`` (written once,
        in the agent's config class), so a variant agent (e.g. a subclass of FB with its own
        config subclass) reuses its parent's Model class and still loads as itself."""
        return self.cfg.name

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

    def infer_z_from_transitions(
        self, obs: torch.Tensor, next_obs: torch.Tensor, rewards: torch.Tensor
    ) -> torch.Tensor:
        """A task embedding from reward-labelled transitions ``(s_i, s'_i, r_i)``.

        The general form of reward prompting: methods whose reward model is a function of
        the transition (HILP's ``r ≈ (φ(s') − φ(s))ᵀz``) override this. By default the reward
        is a function of the reached state and this is ``infer_z_from_rewards(next_obs, r)``.
        """
        if obs.shape != next_obs.shape:
            raise ValueError(
                f"transition states must have equal shapes, got {tuple(obs.shape)} and {tuple(next_obs.shape)}"
            )
        return self.infer_z_from_rewards(next_obs, rewards)

    def infer_z_from_goal(self, goal_obs: torch.Tensor, obs: torch.Tensor | None = None) -> torch.Tensor:
        """A task embedding for reaching ``goal_obs`` (``(obs_dim,)`` or ``(N, obs_dim)``)."""
        raise NotImplementedError

    #: whether the goal embedding depends on the current observation (re-infer every step)
    goal_z_depends_on_obs: ClassVar[bool] = False
    #: frames of history the networks read (:mod:`zsrl.agents.memory`): ``act``, and reward
    #: prompts, take histories ``(N, L, obs_dim + action_dim)`` of one frame ``(o, a_prev)`` per
    #: decision, which a :class:`Policy` keeps; 0: the current observation only
    history_length: int = 0

    @property
    def prompt_history(self) -> tuple[int, int] | None:
        """``(L, stride)`` of the histories a reward prompt reads (None: states)."""
        return (self.history_length, self.action_repeat) if self.history_length else None

    @property
    def action_repeat(self) -> int:
        """Environment steps each action is held for (``agent.action_repeat``)."""
        return int(getattr(self.cfg, "action_repeat", 1))

    @property
    def inference_samples(self) -> int:
        """How many reward-labelled dataset transitions a reward prompt reads by default (the
        config's ``inference_samples``; 10,000 for a method without one)."""
        return getattr(self.cfg, "inference_samples", 10_000)

    def prompt(
        self, *, rewards: tuple[Any, ...] | None = None, reward_fn: ArrayRewardFn | None = None, goal: Any = None,
        dataset: Any = None, samples: int | None = None, seed: int = 0,
    ) -> Policy:
        """A :class:`~zsrl.agents.policy.Policy` acting on one task, given as one of

        * ``rewards=(states, r)`` — rewards observed at states (``(obs, next_obs, r)``:
          reward-labelled transitions), arrays or tensors;
        * ``reward_fn=f`` with ``dataset`` — ``f(obs, action, next_obs) -> (N,)`` labels
          ``samples`` random transitions of the dataset (default: ``agent.inference_samples``);
        * ``goal=g`` — a goal observation.
        """
        if sum(x is not None for x in (rewards, reward_fn, goal)) != 1:
            raise ValueError("prompt with one of rewards=(states, rewards), reward_fn=f (with dataset=) or goal=g")
        as_tensor = partial(torch.as_tensor, dtype=torch.float32, device=self.device)
        if goal is not None:
            return Policy(self, goal=as_tensor(goal).reshape(-1))
        if reward_fn is not None:
            if dataset is None:
                raise ValueError("reward_fn= labels dataset states: pass the dataset (zsrl.load_dataset(DIR))")
            n = samples or self.inference_samples
            rewards = dataset.labelled_sample(reward_from_arrays(reward_fn), n, seed, self.prompt_history)
        parts = [as_tensor(x) for x in rewards]
        if len(parts) == 2:
            return Policy(self, z=self.finite_prompt(self.infer_z_from_rewards(*parts), parts[-1]))
        if len(parts) == 3:
            return Policy(self, z=self.finite_prompt(self.infer_z_from_transitions(*parts), parts[-1]))
        raise ValueError(f"rewards= takes (states, rewards) or (obs, next_obs, rewards), got {len(parts)} arrays")

    @staticmethod
    def finite_prompt(z: torch.Tensor, rewards: torch.Tensor, what: str = "the prompt") -> torch.Tensor:
        """``z`` inferred from ``rewards``, refused when it is not finite: finite rewards too
        large for float32 once the model sums them (1e38) would give NaN actions."""
        if not bool(torch.isfinite(z).all()):
            peak = float(rewards.abs().max())
            raise UserError(f"{what} is not finite: its {len(rewards):,} rewards (up to {peak:.3g} in size) overflow "
                            "float32 when the model sums them; scale the reward down")
        return z

    def _check_prompt(self, obs: torch.Tensor, rewards: torch.Tensor | None = None) -> None:
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"prompt states must have shape (N, {self.obs_dim}), got {tuple(obs.shape)}")
        check_finite("prompt states", obs)
        if rewards is not None:
            if rewards.reshape(-1).shape[0] != obs.shape[0]:
                raise ValueError(f"got {rewards.numel()} rewards for {obs.shape[0]} states")
            check_finite("reward samples", rewards)

    # ---- persistence: a folder of model.safetensors + config.json (agents/model_files.py) ----
    def config_dict(self) -> dict[str, Any]:
        """What ``config.json`` records: the agent's name, the sizes and the agent config."""
        return {"format_version": MODEL_FORMAT_VERSION, "agent": self.agent_name, "obs_dim": self.obs_dim,
                "action_dim": self.action_dim, "agent_config": asdict(self.cfg)}

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write ``model.safetensors`` and ``config.json`` atomically into ``directory``."""
        write_model(self, directory, {**self.config_dict(), **(extra or {})})

    @staticmethod
    def load(directory: str | Path, device: str | torch.device = "cpu") -> Model:
        """Rebuild any zsrl model from ``directory`` (dispatching on the agent name)."""
        return read_model(directory, device)


class Agent:
    """Training-side owner of a :class:`Model` (see the module docstring).

    Subclasses set ``config_class`` / ``model_class``, declare their modules and optimizers
    with :meth:`add_module` / :meth:`add_optimizer` and implement :meth:`update`.
    """

    config_class: ClassVar[type[AgentConfig]] = AgentConfig
    model_class: ClassVar[type[Model]] = Model
    #: supervised agents train on one task's reward (set via ``RunConfig.task``)
    needs_task: ClassVar[bool] = False
    #: the current training phase; the engine builds one static step per phase
    phase: str = "update"

    def __init__(self, obs_dim: int, action_dim: int, cfg: AgentConfig, device: torch.device):
        if not isinstance(cfg, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(cfg).__name__}"
            )
        self.cfg, self.device = cfg, torch.device(device)
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self._modules: dict[str, nn.Module] = {}
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._optimizer_flags: dict[str, list[dict[str, Any]]] = {}
        #: compiled regions, where the engine compiles by region (:class:`zsrl.engine.compiled_region`)
        self._compiled_regions: dict[str, Any] | None = None
        self.model = self.add_module("model", self.model_class(obs_dim, action_dim, cfg))
        #: the moving average of the model's parameters that is exported (``agent.ema_decay``)
        self.model_average: ParameterAverage | None = None
        if cfg.ema_decay > 0:
            self.model_average = self.add_module("model_average", ParameterAverage(self.model, cfg.ema_decay))

    # ---- what a method implements ----------------------------------------------------------
    def update(self, batch: TensorDict) -> Metrics:
        """One gradient step on ``batch``; returns named 0-dim metric tensors (the same names
        at every step and in every phase)."""
        raise NotImplementedError

    @torch.no_grad()
    def setup(self, dataset: Any, domain: Any, task: str | None = None) -> None:
        """Called once before training with the dataset and the domain (e.g. to relabel).

        By default it computes ``dataset.episode_end`` (which synchronises, so that goal
        samplers can draw future states inside a compiled or graphed step) and fits every
        :class:`~zsrl.nn.Standardize` inside the agent's modules to the dataset's next
        observations. An override calls ``super().setup(...)``.
        """
        _ = dataset.episode_end
        modules = list(self._modules.values())
        if any(isinstance(m, Standardize) for module in modules for m in module.modules()):
            fit_standardizers(modules, dataset.data["next", "observation"].to(self.device))

    def sample_batch(self, dataset: Any, batch_size: int) -> TensorDict:
        """The batch of one update of the current phase (uniform transitions by default)."""
        return dataset.sample(batch_size)

    def after_step(self) -> None:
        """Host-side bookkeeping after every update (e.g. the phase of a multi-phase agent)."""

    def batch_bytes(self, batch_size: int) -> int:
        """About the memory one update of ``batch_size`` takes beyond the networks (checked
        against the device before training; 0: small enough to leave unchecked)."""
        return 0

    # ---- declared training state -----------------------------------------------------------
    def add_module(self, name: str, module: nn.Module) -> Any:
        """Declare ``module`` part of the training state (moved to the agent's device)."""
        if name in self._modules:
            raise ValueError(f"{type(self).__name__}: module {name!r} is declared twice")
        if not isinstance(module, nn.Module):
            raise TypeError(f"{type(self).__name__}: {name!r} is not an nn.Module")
        self._modules[name] = module.to(self.device)
        return module

    def add_optimizer(self, name: str, params: Any, **adam_kwargs: Any) -> torch.optim.Adam:
        """Declare an Adam optimizer over ``params`` (tensors or param groups), built by
        :func:`zsrl.nn.make_adam`: fused (on CPU and CUDA), capturable on CUDA."""
        if name in self._optimizers:
            raise ValueError(f"{type(self).__name__}: optimizer {name!r} is declared twice")
        opt = make_adam(params, self.device, **adam_kwargs)
        self._optimizers[name] = opt
        self._optimizer_flags[name] = [
            {k: g.get(k) for k in ("fused", "capturable", "foreach")} for g in opt.param_groups
        ]
        return opt

    def modules(self) -> dict[str, nn.Module]:
        """Every module whose parameters/buffers belong to the training state."""
        return dict(self._modules)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return dict(self._optimizers)

    def step_optimizers(self, loss: torch.Tensor, *opts: torch.optim.Optimizer) -> None:
        """One backward pass of ``loss`` and a step of each of ``opts`` (disjoint parameters;
        :func:`zsrl.nn.optimizer_step`), clipping each network's gradient norm at the
        config's ``clip_grad_norm`` where it has one."""
        optimizer_step(loss, *opts, clip_grad_norm=getattr(self.cfg, "clip_grad_norm", 0.0))

    def inference_model(self) -> Model:
        """The model to evaluate and export: the parameter average when ``agent.ema_decay >
        0`` (with the online model's buffers), else the online model itself."""
        if self.model_average is None:
            return self.model
        return self.model_average.averaged(self.model)

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"module.{k}": m.state_dict() for k, m in self._modules.items()}
        out.update({f"optim.{k}": o.state_dict() for k, o in self._optimizers.items()})
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {f"module.{k}" for k in self._modules} | {f"optim.{k}" for k in self._optimizers}
        if set(state) != expected:
            raise CheckpointError(
                f"training state does not match this agent (keys {sorted(state)} vs {sorted(expected)})"
            )
        for k, m in self._modules.items():
            m.load_state_dict(state[f"module.{k}"])
        for k, o in self._optimizers.items():
            o.load_state_dict(state[f"optim.{k}"])
            restore_fast_adam(o, self._optimizer_flags[k])
