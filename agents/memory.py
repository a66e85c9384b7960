r"""FB with memory (FB-M) and with stacked frames (FB-STACK), for partially observed domains.

Jeen et al., "Zero-Shot Reinforcement Learning Under
Partial Observability" (RLC 2025); the anchor is enjeeneer/bfms-with-memory ``agents/fb_m``.
When the observation ``o_t`` is not the state (:mod:`zsrl.envs.pomdp`: noise, flickering,
occluded velocities), FB's networks read a *history* instead: the last ``L`` frames
``h_t = ((o_{t−L+1}, a_{t−L}), …, (o_t, a_{t−1}))`` (one frame per decision; before the episode
starts, its first observation with a zero action):

.. math::

   F(h_t, a, z) = F_{\mathrm{MLP}}([m_F(h_t), o_t], a, z), \qquad
   \pi(h_t, z) = \pi_{\mathrm{MLP}}([m_\pi(h_t), o_t], z), \qquad
   B(h'_t) = B_{\mathrm{MLP}}([m_B(h'_t), o'_t])

with ``m`` a GRU over the frames (its last hidden state, one fused call over the window)
for ``fbm``, or the flattened frames for ``fbstack``. F and π read ``history`` frames (L_F,
32 in the reference), B the last ``backward_history`` observations without actions (L_B, 8);
F, π and B have a memory each (``memory_in`` gives it to F and π only, or to B only);
``memory_actions=false`` drops the previous actions from F's and π's frames: on sticky-action
data (the maze's) the previous action is almost always the current one, so F and π would
learn that the action continues (docs/results.md §27). The
losses are FB's, on histories: ``s`` becomes ``h_t``, ``s'`` becomes ``h_{t+1}`` (the window moved
on by one decision), so every FB option (goal space, hindsight goals, the myopic term, held
actions) applies unchanged. Prompting: rewards ``z ∝ Σ r_i B(h'_i)`` over histories that end
at the rewarded states; a goal ``g`` is the history of ``g`` alone. At test time a rolling window
(:class:`~zsrl.agents.policy.Policy`) starts from copies of the first observation.

Windows are gathered from the dataset inside the update's step (no host synchronisation),
one frame per decision (``action_repeat`` steps apart), never across an episode start. A GRU
reads a window in one fused call (``_VF.gru``, cuDNN on a GPU); under ``train.compile`` it is
traced into the compiled step and unrolled over the window's frames at compile time.

Differences from the reference: the GRU reads the frame itself (the reference first embeds
it with Linear–LayerNorm–tanh–Linear–ReLU) and its output is concatenated with ``o_t``
before FB's usual input blocks (the reference: with an embedding of ``(o_t, z)``); F's
GRU reads the actions taken *before* each observation and the candidate action enters
through F's ``(s, a)`` block (the reference puts it in the GRU's last frame); B reads
observations only (the reference can add actions); each F head shares one memory, as in
the reference.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tensordict import TensorDict
from torch import nn

from zsrl.agents.base import check_finite
from zsrl.agents.fb import FBAgent, FBConfig, FBModel
from zsrl.agents.goals import goal_dims_index, sample_goal_indices
from zsrl.agents.skill import input_norm
from zsrl.config import param


@dataclass
class FBMConfig(FBConfig):
    """FB-M: FB's hyper-parameters plus the memory (reference: GRU, L_F 32, L_B 8, width 512)."""

    name: str = "fbm"
    #: how a network reads its frames: a GRU (``gru``) or the frames side by side (``stack``)
    memory: Literal["gru", "stack"] = "gru"
    #: frames F and the actor read (L_F)
    history: int = param(32, ge=1)
    #: frames B reads (L_B)
    backward_history: int = param(8, ge=1)
    #: width of each GRU
    memory_dim: int = param(512, ge=1)
    #: which networks read histories, the others the current observation only: ``all``;
    #: ``forward``: F and the actor (and the myopic term's P); ``backward``: B only
    memory_in: Literal["all", "forward", "backward"] = "all"
    #: whether F's and the actor's frames carry the action taken before each observation
    #: (false on sticky-action data, where it is the current action in most windows)
    memory_actions: bool = True


@dataclass
class FBStackConfig(FBMConfig):
    """FB-STACK: FB-M's windows read as stacked frames by FB's MLPs (no recurrent memory)."""

    name: str = "fbstack"
    memory: Literal["gru", "stack"] = "stack"


class HistoryEncoder(nn.Module):
    """Features of a history ``(N, L', obs_dim + action_dim)`` (its last ``length`` frames):
    ``[GRU(frames), o_t]`` (``gru``), the frames flattened (``stack``) or ``o_t`` alone
    (``length`` 0: a network without memory). Observations are standardised first
    (``normalize_obs``) and cut to ``goal_dims`` where given; ``actions`` keeps the frames'
    previous actions."""

    def __init__(self, obs_dim: int, action_dim: int, length: int, cfg: FBMConfig, actions: bool,
                 goal_dims: list[int] | None = None):
        super().__init__()
        self.obs_dim, self.length, self.kind = obs_dim, length, cfg.memory if length else "none"
        self.actions = actions and length > 0
        self.norm = input_norm(obs_dim, cfg.normalize_obs)
        self.register_buffer("dims", goal_dims_index(goal_dims, obs_dim), persistent=False)
        seen = obs_dim if goal_dims is None else len(goal_dims)
        frame = seen + (action_dim if self.actions else 0)
        self.gru = nn.GRU(frame, cfg.memory_dim, batch_first=True) if self.kind == "gru" else None
        self.out_dim = {"gru": cfg.memory_dim + seen, "stack": length * frame, "none": seen}[self.kind]

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        frames = history[:, -max(self.length, 1):]
        obs = self.norm(frames[..., : self.obs_dim])
        if self.dims is not None:
            obs = obs.index_select(-1, self.dims)
        if self.kind == "none":
            return obs[:, -1]
        x = torch.cat([obs, frames[..., self.obs_dim :]], -1) if self.actions else obs
        if self.gru is None:
            return x.flatten(1)
        _, last = self.gru(x)  # (1, N, H): the hidden state after the window's last frame
        return torch.cat([last[0], obs[:, -1]], -1)


class ReadsHistory(nn.Module):
    """``net(encoder(history), *rest)``: a network of FB put behind a :class:`HistoryEncoder`."""

    def __init__(self, encoder: HistoryEncoder, net: nn.Module):
        super().__init__()
        self.encoder, self.net = encoder, net

    def forward(self, history: torch.Tensor, *rest: Any) -> torch.Tensor:
        return self.net(self.encoder(history), *rest)


class FBMModel(FBModel):
    """FB's model on histories: each network behind its own :class:`HistoryEncoder`."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: FBMConfig):
        #: frames of history the networks read: the rolling window a policy keeps
        self.history_length = max(cfg.history, cfg.backward_history)
        super().__init__(obs_dim, action_dim, cfg)

    def reading_observations(self, role: str, build: Callable[[int, FBConfig], nn.Module]) -> nn.Module:
        cfg: FBMConfig = self.cfg  # type: ignore[assignment]
        backward = role == "backward"
        has_memory = cfg.memory_in == "all" or (cfg.memory_in == "backward") == backward
        length = (cfg.backward_history if backward else cfg.history) if has_memory else 0
        encoder = HistoryEncoder(self.obs_dim, self.action_dim, length, cfg, actions=cfg.memory_actions and not backward,
                                 goal_dims=cfg.goal_dims if backward else None)
        inner = copy.copy(cfg)
        inner.normalize_obs, inner.goal_dims = False, None  # done by the encoder
        return ReadsHistory(encoder, build(encoder.out_dim, inner))

    def as_history(self, x: torch.Tensor) -> torch.Tensor:
        """A history ``(N, L, obs_dim + action_dim)`` as it is, or states ``(N, obs_dim)`` as
        histories of themselves (an episode's first window: copies and zero actions)."""
        frame = self.obs_dim + self.action_dim
        if x.dim() == 3 and x.shape[2] == frame:
            return x
        if x.dim() == 2 and x.shape[1] == self.obs_dim:
            pad = x.new_zeros(x.shape[0], self.action_dim)
            return torch.cat([x, pad], -1).unsqueeze(1).expand(-1, self.history_length, -1)
        raise ValueError(f"{self.agent_name} reads histories (N, L, {frame}) or states (N, {self.obs_dim}), "
                         f"got {tuple(x.shape)}")

    def act(self, obs: torch.Tensor, z: torch.Tensor, mean: bool = True) -> torch.Tensor:
        return super().act(self.as_history(obs), z, mean)

    def infer_z_from_rewards(self, obs: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        return super().infer_z_from_rewards(self.as_history(obs), rewards)

    def infer_z_from_goal(self, goal_obs: torch.Tensor, obs: torch.Tensor | None = None) -> torch.Tensor:
        goal_obs = goal_obs.reshape(-1, self.obs_dim)
        self._check_prompt(goal_obs)
        return self.project_z(self.backward_map(self.as_history(goal_obs)))

    def _check_prompt(self, obs: torch.Tensor, rewards: torch.Tensor | None = None) -> None:
        if obs.dim() == 3:  # histories: the shape, every frame finite, one reward per history
            check_finite("prompt histories", self.as_history(obs))
            obs = obs[:, -1, : self.obs_dim]
        super()._check_prompt(obs, rewards)


class FBMAgent(FBAgent):
    """Trains :class:`FBMModel`: FB's update on batches of histories (:meth:`sample_batch`)."""

    config_class = FBMConfig
    model_class = FBMModel

    def sample_batch(self, dataset: Any, batch_size: int) -> TensorDict:
        """Histories ``H, H'`` of uniform transitions (:meth:`~zsrl.data.OfflineDataset.histories`)
        as ``observation`` and ``next/observation``; with hindsight goals, ``goal``: the history
        that ends at a later state of the same trajectory."""
        cfg, length = self.cfg, self.model.history_length
        idx = dataset.sample_indices(batch_size)
        history, next_history = dataset.histories(idx, length, cfg.action_repeat)
        batch = {
            "observation": history,
            "action": dataset.data["action"][idx],
            "next": {"observation": next_history, "terminated": dataset.data["next", "terminated"][idx]},
        }
        if cfg.goal_from_trajectory > 0:
            goal_idx = sample_goal_indices(dataset, idx, 0.0, cfg.goal_from_trajectory, cfg.goal_future)
            batch["goal"] = dataset.histories(goal_idx, length, cfg.action_repeat)[1]
        return TensorDict(batch, batch_size=[batch_size], device=history.device)

    def setup(self, dataset: Any, domain: Any, task: str | None = None) -> None:
        raw = dataset if dataset.source is None else dataset.source
        _ = raw.episode_start  # computed once here, outside any compiled or graphed step
        super().setup(dataset, domain, task)


class FBStackAgent(FBMAgent):
    """Trains FB-STACK (:class:`FBStackConfig`)."""

    config_class = FBStackConfig
