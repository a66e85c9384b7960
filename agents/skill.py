"""The skill policy FB (with its conservative variants) and HILP share: a forward network
``F(s, a, z) ∈ R^d`` with ``E`` heads, a deterministic actor ``π(s, z)``, and the TD3 actor loss
that trains ``π`` to maximise ``Q_z(s, a) = F(s, a, z)ᵀz`` (metamotivo's architecture: each
network embeds ``(s, a)`` or ``s`` and ``(s, z)`` separately, Linear → LayerNorm → tanh →
Linear → ReLU, and a trunk reads the concatenated embeddings).

FB's ``F`` is the forward map of its successor-measure factorisation; HILP's successor
features ``ψ(s, a, z)`` are the same network, trained by TD on its intrinsic reward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from zsrl.config import AgentConfig, param
from zsrl.nn import Standardize, call_frozen, clipped_noise_action, mlp


@dataclass
class SkillPolicyConfig(AgentConfig):
    """What :class:`ForwardMap`, :class:`Actor` and :func:`td3_actor_loss` read, and the
    training settings around them: shared by FB and HILP (whose successor features are a
    :class:`ForwardMap`). Defaults: metamotivo's DMC settings."""

    z_dim: int = param(50, ge=1)
    #: width of the F and actor embeddings' first layer and of their trunks
    hidden_dim: int = param(1024, ge=1)
    #: output width of each of the two embeddings (s,a) and (s,z) of F and the actor
    embedding_dim: int = param(512, ge=1)
    #: hidden layers of the F / actor trunk after the concatenated embeddings
    trunk_layers: int = param(1, ge=0)
    num_heads: int = param(2, ge=1)
    lr_actor: float = param(1e-4, gt=0)
    discount: float = param(0.98, ge=0, lt=1)
    tau: float = param(0.01, gt=0, le=1)
    #: fraction of training z's taken from dataset states instead of the prior
    mix_ratio: float = param(0.5, ge=0, le=1)
    actor_std: float = param(0.2, ge=0)
    std_clip: float = param(0.3, ge=0)
    #: gradient-norm clipping for all networks (0 = off)
    clip_grad_norm: float = param(0.0, ge=0)
    #: reward samples used by default to infer z at evaluation
    inference_samples: int = param(10_000, ge=1)
    #: standardise the observation input of every network built from this config by the
    #: dataset's mean and standard deviation, ``s̄ = clamp((s − μ)/σ, ±10)`` (module
    #: docstring); off: raw observations
    normalize_obs: bool = False


def input_norm(obs_dim: int, standardize: bool) -> nn.Module:
    """The observation input of one network: :class:`Standardize` (fitted by the agent's
    ``setup`` through :func:`~zsrl.nn.fit_standardizers`), else the identity (no buffers:
    the state dict of a model without it is unchanged)."""
    return Standardize(obs_dim) if standardize else nn.Identity()


class ForwardMap(nn.Module):
    """``F(s, a, z)`` for ``E`` heads at once: ``(N, ·) → (E, N, d)``.

    Two embeddings, ``φ(s, a)`` and ``ψ(s, z)`` (Linear→LayerNorm→tanh→Linear→ReLU), are
    concatenated and passed through an MLP trunk; every layer is an ensemble layer.
    Reads its sizes and ``normalize_obs`` from a :class:`SkillPolicyConfig` (HILP's
    successor features ψ are this network, built from a HILPConfig).
    """

    def __init__(self, obs_dim: int, action_dim: int, cfg: SkillPolicyConfig):
        super().__init__()
        h, e, k = cfg.hidden_dim, cfg.embedding_dim, cfg.num_heads
        self.norm = input_norm(obs_dim, cfg.normalize_obs)
        self.embed_sa = mlp(obs_dim + action_dim, [h], e, ensemble=k, final_activation=True)
        self.embed_sz = mlp(obs_dim + cfg.z_dim, [h], e, ensemble=k, final_activation=True)
        self.trunk = mlp(2 * e, [h] * cfg.trunk_layers, cfg.z_dim, ensemble=k, first_layernorm_tanh=False)

    def forward(self, obs: torch.Tensor, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``F(s_i, a_i, z_i)``: ``(N, ·) → (E, N, d)`` (:meth:`forward_actions` with K = 1)."""
        return self.forward_actions(obs, z, action.unsqueeze(0)).squeeze(1)

    def forward_actions(self, obs: torch.Tensor, z: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``F(s_i, a_ki, z_i)`` for ``K`` actions per state: ``actions (K, N, A) → (E, K, N, d)``.
        Equal to :meth:`forward` on the ``K·N`` repeated rows, with ``ψ(s, z)`` computed once
        per state instead of ``K`` times."""
        k, n = actions.shape[:2]
        obs = self.norm(obs)
        sa = self.embed_sa(torch.cat([obs.expand(k, n, -1), actions], -1).flatten(0, 1))  # (E, K·N, e)
        sz = self.embed_sz(torch.cat([obs, z], -1))  # (E, N, e)
        sz = sz.unsqueeze(1).expand(-1, k, -1, -1).flatten(1, 2)
        return self.trunk(torch.cat([sa, sz], -1)).unflatten(1, (k, n))


class Actor(nn.Module):
    """Deterministic policy mean ``μ(s, z) ∈ [-1, 1]`` from embeddings of ``s`` and ``(s, z)``
    (reads ``hidden_dim, embedding_dim, trunk_layers, z_dim``; HILP's actor too)."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: SkillPolicyConfig):
        super().__init__()
        h, e = cfg.hidden_dim, cfg.embedding_dim
        self.norm = input_norm(obs_dim, cfg.normalize_obs)
        self.embed_s = mlp(obs_dim, [h], e, final_activation=True)
        self.embed_sz = mlp(obs_dim + cfg.z_dim, [h], e, final_activation=True)
        self.trunk = mlp(2 * e, [h] * cfg.trunk_layers, action_dim, first_layernorm_tanh=False)

    def forward(self, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        obs = self.norm(obs)
        x = torch.cat([self.embed_s(obs), self.embed_sz(torch.cat([obs, z], -1))], -1)
        return torch.tanh(self.trunk(x))



def td3_actor_loss(
    actor: nn.Module,
    forward_map: nn.Module,
    obs: torch.Tensor,
    z: torch.Tensor,
    std: float,
    clip: float,
    bonus: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reduction: Literal["min", "mean"] = "min",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(−mean (q + bonus(a)), q)`` with ``q = min_heads F(s, a, z)ᵀz`` (``reduction``:
    or the heads' mean) and ``a = π(s, z) + clipped noise``.

    The actor loss of FB (and of HILP's successor features ψ, the same network); ``bonus``
    maps the actions to a per-sample term added to ``q`` (FB's myopic term; none by default).
    F is evaluated with frozen (detached) parameters: the gradient flows into the action
    only, so F's weight gradients are never computed.
    """
    a = clipped_noise_action(actor(obs, z), std, clip)
    f = call_frozen(forward_map, obs, z, a)  # (E, N, d)
    q_heads = (f * z).sum(-1)  # (E, N)
    q = q_heads.min(0).values if reduction == "min" else q_heads.mean(0)
    objective = q if bonus is None else q + bonus(a)
    return -objective.mean(), q
