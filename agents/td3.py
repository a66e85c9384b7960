r"""Supervised oracle: offline TD3 (optionally TD3+BC) on one task's true reward.

Fujimoto, van Hoof & Meger, "Addressing Function Approximation Error in Actor-Critic
Methods" (ICML 2018); Fujimoto & Gu, "A Minimalist Approach to Offline RL" (NeurIPS 2021).

The dataset is relabelled once with the task reward ``r`` (``RunConfig.task``), then

.. math::

   y &= r + \gamma (1-d) \min_{k=1,2} \bar Q_k(s', \bar a'), \qquad
        \bar a' = \operatorname{clip}(\pi(s') + \operatorname{clip}(\epsilon\sigma, \pm c), \pm 1) \\
   L_Q &= \textstyle\sum_k (Q_k(s, a) - y)^2, \qquad
   L_\pi = -\lambda\, \frac{Q_1(s, \pi(s))}{\operatorname{mean}|Q_1|} + \beta\, \lVert \pi(s) - a \rVert^2

with ``β = bc_weight`` (0: plain offline TD3 as ExORL's supervised baseline; 2.5⁻¹-scaled
TD3+BC when ``bc_weight > 0``). It is the denominator of "% of oracle": same dataset, same
update budget, but it sees the task reward during training. Its ``z`` is a dummy of size 1.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tensordict import TensorDict

from zsrl.agents.base import Agent, Model
from zsrl.config import AgentConfig, param
from zsrl.data import as_transitions
from zsrl.engine import Metrics
from zsrl.nn import call_frozen, clipped_noise_action, mlp, q_scale, soft_update


@dataclass
class TD3Config(AgentConfig):
    """Offline TD3 (ExORL's supervised baseline: width 1024, lr 1e-4, γ 0.99)."""

    name: str = "td3"
    z_dim: int = param(1, ge=1)
    hidden_dim: int = param(1024, ge=1)
    hidden_layers: int = param(2, ge=1)
    lr: float = param(1e-4, gt=0)
    discount: float = param(0.99, ge=0, lt=1)
    tau: float = param(0.01, gt=0, le=1)
    policy_noise: float = param(0.2, ge=0)
    noise_clip: float = param(0.3, ge=0)
    #: β of the behaviour-cloning term (0 = plain offline TD3)
    bc_weight: float = param(0.0, ge=0)
    #: relabelling chunk size (transitions per call of the domain's reward function)
    relabel_chunk: int = param(50_000, ge=1)
    inference_samples: int = param(1, ge=1)


class TD3Model(Model):
    """The oracle policy ``π(s)``; prompts are ignored (it knows its task)."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: TD3Config):
        super().__init__(obs_dim, action_dim, cfg)
        self.actor = mlp(obs_dim, [cfg.hidden_dim] * cfg.hidden_layers, action_dim)

    def act(self, obs: torch.Tensor, z: torch.Tensor, mean: bool = True) -> torch.Tensor:
        mu = torch.tanh(self.actor(obs))
        return mu if mean else clipped_noise_action(mu, self.cfg.policy_noise, self.cfg.noise_clip)

    def sample_z(self, n: int, device: torch.device | None = None) -> torch.Tensor:
        return torch.zeros(n, 1, device=device or self.device)

    def infer_z_from_rewards(self, obs: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        self._check_prompt(obs, rewards)
        return torch.zeros(1, 1, device=self.device)

    def infer_z_from_goal(self, goal_obs: torch.Tensor, obs: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError("the TD3 oracle is trained for one reward; it cannot be prompted with goals")


class TD3Agent(Agent):
    """Trains :class:`TD3Model` on the dataset relabelled with ``RunConfig.task``."""

    config_class = TD3Config
    model_class = TD3Model
    needs_task = True

    def __init__(self, obs_dim: int, action_dim: int, cfg: TD3Config, device: torch.device):
        super().__init__(obs_dim, action_dim, cfg, device)
        h = [cfg.hidden_dim] * cfg.hidden_layers
        self.critic = self.add_module("critic", mlp(obs_dim + action_dim, h, 1, ensemble=2))
        self.critic_target = self.add_module(
            "critic_target", copy.deepcopy(self.critic).requires_grad_(False)
        )
        self.actor_target = self.add_module(
            "actor_target", copy.deepcopy(self.model.actor).requires_grad_(False)
        )
        self.critic_opt = self.add_optimizer("critic_opt", self.critic.parameters(), lr=cfg.lr)
        self.actor_opt = self.add_optimizer("actor_opt", self.model.actor.parameters(), lr=cfg.lr)
        self.rewards: torch.Tensor | None = None

    def setup(self, dataset: Any, domain: Any, task: str | None = None) -> None:
        """Relabel the whole dataset with the task reward (once, in chunks)."""
        chunks = []
        for start in range(0, len(dataset), self.cfg.relabel_chunk):
            part = dataset.data[start : start + self.cfg.relabel_chunk]
            chunks.append(domain.reward(task, as_transitions(part)))
        self.rewards = torch.as_tensor(np.concatenate(chunks), device=dataset.device)

    def sample_batch(self, dataset: Any, batch_size: int) -> TensorDict:
        idx = dataset.sample_indices(batch_size)
        batch = dataset.data[idx]
        batch["next", "reward"] = self.rewards[idx]
        return batch

    def update(self, batch: TensorDict) -> Metrics:
        cfg, actor = self.cfg, self.model.actor
        obs, action = batch["observation"], batch["action"]
        next_obs, reward = batch["next", "observation"], batch["next", "reward"]
        not_done = (~batch["next", "terminated"]).to(obs.dtype)
        with torch.no_grad():
            next_action = clipped_noise_action(torch.tanh(self.actor_target(next_obs)), cfg.policy_noise, cfg.noise_clip)
            target_q = self.critic_target(torch.cat([next_obs, next_action], -1)).min(0).values.squeeze(-1)
            y = reward + cfg.discount * not_done * target_q
        q = self.critic(torch.cat([obs, action], -1)).squeeze(-1)  # (2, N)
        critic_loss = F.mse_loss(q, y.expand_as(q), reduction="none").mean(-1).sum()
        self.step_optimizers(critic_loss, self.critic_opt)

        pi = torch.tanh(actor(obs))
        # the critic is frozen here: its weight gradients are not computed
        q_pi = call_frozen(self.critic, torch.cat([obs, pi], -1))[0].squeeze(-1)
        lam = 1.0 / q_scale(q_pi) if cfg.bc_weight > 0 else 1.0
        bc = (pi - action).pow(2).sum(-1).mean()
        actor_loss = -lam * q_pi.mean() + cfg.bc_weight * bc
        self.step_optimizers(actor_loss, self.actor_opt)
        soft_update(self.critic_target, self.critic, cfg.tau)
        soft_update(self.actor_target, actor, cfg.tau)
        return {
            "loss/critic": critic_loss.detach(),
            "loss/actor": actor_loss.detach(),
            "diag/q": q.mean().detach(),
            "diag/bc_mse": bc.detach(),
            "diag/reward": reward.mean(),
        }
