r"""Functional Reward Encodings (FRE).

Frans, Park, Abbeel & Levine, "Unsupervised Zero-Shot Reinforcement Learning via Functional
Reward Encodings" (ICML 2024); the anchor is kvfrans/fre ``experiment/run_fre.py``.

A task is a reward function ``η``; FRE represents it by ``K`` samples ``{(s_k, η(s_k))}``
and learns a variational encoder of such sets, then a policy conditioned on the code.

**Encoder** (a set transformer, permutation invariant: no positional embedding):

.. math::

   e_k &= [\,\mathrm{Linear}(\bar s_k) \,\|\, \mathrm{Embed}(\mathrm{bin}(\eta(s_k)))\,],\qquad
   \mathrm{bin}(r) = \lfloor (r/2 + 1/2)\,n_{bins} \rfloor \text{ clipped to } [0, n_{bins}) \\
   (\mu, \log\sigma) &= \mathrm{Linear}\big(\operatorname{mean}_k \mathrm{Transformer}(e_{1..K})_k\big),
   \qquad w = \mu + \sigma \odot \epsilon

where ``s̄`` is the observation standardised by dataset statistics (``normalize_obs``).
A decoder ``D(w, s)`` predicts the reward at ``Q`` *other* states, so ``w`` must carry the
function, not the samples:

.. math::

   L_{enc} = \operatorname{mean}_{q} \big(D(w, s_q) - \eta(s_q)\big)^2
           + \beta\, \mathrm{KL}\big(\mathcal N(\mu, \sigma^2) \,\|\, \mathcal N(0, I)\big)

**Prior over rewards** ``η``, sampled per batch row (fixed row slices with weights
``prior_goal / prior_linear / prior_mlp``), on ``f(s)`` = the domain's ``features(s)`` when
the domain overrides it, else ``s``. ``f̄`` below is ``f`` as it is (``prior_inputs: raw``, the
reference: its constants were chosen for ExORL's state scales, where the joint velocities
dominate) or standardised by dataset statistics (``standardized``, for domains whose raw
scale is far from 1, such as the maze's metres):

* goal reaching: ``η(s) = −1 + 1[RMS((s̄ − ḡ)_{goal_dims}) < goal_threshold]`` with the goal
  ``g`` one of the row's context states (the current state w.p. 0.2, a future state of the
  same trajectory w.p. 0.5, a random dataset state w.p. 0.3). Reaching it is terminal:
  the IQL mask is ``−η`` (a mask of 1, "stay at the goal", did no better: docs/experiments.md);
* linear: ``η(s) = clip(uᵀ f̄(s))`` with ``u ~ U(−1, 1)``, each coordinate kept w.p. 0.1
  (at least one kept), clipped to ``[0, 1]`` or ``[−1, 1]`` (50/50);
* random MLP: ``η(s) = clip(W₂ᵀ tanh(W₁ᵀ f̄(s) + b₁), −1, 1)``, one of ``num_random_nets``
  fixed nets with ``W₁ ~ N(0, 1/32)``, ``b₁ ~ N(0, 16)``, ``W₂ ~ N(0, 1/16)`` (the
  reference init, drawn once from ``prior_seed``).

**Context** of one row (index ``i``, transition ``(s_i, a_i, s'_i)``): ``s'_i``, then
``trajectory_context − 1`` future states of its trajectory (geometric offsets,
``trajectory_discount``), then random dataset states; all rewards are rewards of *reached*
states, so the transition's reward is ``r_i = η(s'_i)``, as in zsrl's prompting convention.

**Two phases.** For ``encoder_steps`` updates only ``L_enc`` is trained. Then the encoder is
frozen and an IQL policy learns on ``w = μ`` (no sampling, no gradient):

.. math::

   L_V &= \operatorname{mean} |\tau - 1(\bar Q - V < 0)|\,(\bar Q - V)^2,
       \quad \bar Q = \min_j \bar Q_j(s, a, w), \ \ \tau = \text{expectile} \\
   L_Q &= \textstyle\sum_j \operatorname{mean} \big(Q_j(s, a, w) - r - \gamma\, m\, V(s', w)\big)^2,
       \quad m = (1 - d)\cdot(−η(s') \text{ for goals}, 1 \text{ otherwise}) \\
   L_\pi &= -\operatorname{mean} \min\big(e^{T (\min_j Q_j - V)}, 100\big)\, \log \pi(a \mid s, w)

with Polyak targets ``Q̄`` (rate ``tau``) and a Gaussian policy: tanh mean, state-independent
learned standard deviation. ``act(mean=True)`` returns the tanh mean. ``actor_loss: ddpg``
replaces ``L_π`` by ``−mean min_j Q_j(s, π(s, w), w) / mean|Q| + bc_weight·‖π(s, w) − a‖²``.
Every MLP uses LayerNorm + mish after each hidden layer (``mlp_blocks: ln_mish``).

**Prompting.** ``infer_z_from_rewards(s', r)``: rewards are clipped to ``[−1, 1]`` (the bins
cover only that range: scale a task's reward into it). With at most ``context_size``
samples they form one context. With more, they are shuffled (deterministically) and cut
into ``⌊N/K⌋`` chunks of ``K``; ``z`` is the **mean of μ over the chunks**.
``infer_z_from_goal(g)``: a bank of dataset states stored in the model at setup is cut into
chunks of ``K − 1``; each chunk plus ``g`` is labelled with the goal reward and encoded;
``z`` = the mean μ. ``sample_z(n)`` encodes random goal-reaching tasks (random bank goals)
— codes from the training distribution.

Differences from the reference: observations are standardised before every network
(``normalize_obs``); goal distances are RMS over standardised ``goal_dims`` with one
``goal_threshold`` (the reference hard-codes per-domain standard deviations and divides the
norm by the state width: its walker 0.2 and cheetah 0.08 are RMS 1.10 and 0.35 here); the KL
uses ``σ = exp(log σ)`` consistently (the reference mixes log-variance and log-std); the
policy mean is squashed by tanh (the reference clips an unsquashed mean); the ExORL runs of
the reference append auxiliary physics coordinates to the encoder's states, which no
training reward uses — zsrl encodes observations only. Also (kvfrans/fre read, not measured):

* goal sources: the reference divides the trajectory mass by its 8 trajectory states (the
  current one among them) and renormalises, so its goals are current / trajectory / random
  w.p. 0.213 / 0.467 / 0.320; zsrl's are 0.2 / 0.5 / 0.3;
* the reference's contexts are observations ``s``, the TD reward ``η(s)`` and the goal mask
  ``−η(s)`` (dataset terminals ignored); zsrl's are reached states ``s′``, ``η(s′)``, and a
  terminal ends the episode;
* the reference's linear prior forces one kept weight at an index drawn from ``[2, D)``;
  zsrl's can force any feature;
* the reference's actor has LayerNorm after its first two hidden layers only, Glorot-uniform
  weights and a mean head scaled by 0.01; zsrl's MLPs (actor, critics, value, decoder) have
  LayerNorm + mish after every hidden layer and orthogonal weights (gain 1);
* the reference trains every network with one Adam across both phases; zsrl uses
  ``encoder_opt`` (encoder, decoder) and ``policy_opt`` (value, critics, actor), fresh at the
  switch.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from tensordict import TensorDict
from torch import nn

from zsrl.agents.base import Agent, Model
from zsrl.agents.goals import goal_position_probs, sample_categorical
from zsrl.config import AgentConfig, param
from zsrl.engine import Metrics
from zsrl.errors import UserError
from zsrl.nn import (
    Standardize,
    accept_renamed_keys,
    call_frozen,
    expectile_loss,
    gaussian_log_prob,
    kl_standard_normal,
    mlp,
    q_scale,
    soft_update,
)

__all__ = [
    "FREAgent", "FREConfig", "FREModel", "RewardEncoder", "RewardPrior", "discretize_rewards",
    "expectile_loss", "goal_rewards", "kl_standard_normal", "validate_config",
]


@dataclass
class FREConfig(AgentConfig):
    """FRE hyper-parameters (defaults: the published ones, kvfrans/fre ``run_fre.py``)."""

    name: str = "fre"
    #: dimension of the reward encoding ``w`` (the task embedding z)
    z_dim: int = param(128, ge=1)
    # ---- encoder / decoder ----------------------------------------------------------
    #: K, (state, reward) pairs per encoder context
    context_size: int = param(32, ge=2)
    #: of the K, states from the row's own trajectory (the reached state first)
    trajectory_context: int = param(8, ge=1)
    #: geometric discount of the offsets of those trajectory states
    trajectory_discount: float = param(0.99, gt=0, lt=1)
    #: decoder query states per row
    decoder_queries: int = param(8, ge=1)
    #: reward bins over [-1, 1]
    reward_bins: int = param(32, ge=2)
    #: transformer width (half state embedding, half reward embedding)
    emb_dim: int = param(128, ge=2)
    num_layers: int = param(2, ge=1)
    num_heads: int = param(2, ge=1)
    mlp_dim: int = param(256, ge=1)
    kl_weight: float = param(0.01, ge=0)
    # ---- prior over reward functions ------------------------------------------------
    prior_goal: float = param(1 / 3, ge=0)
    prior_linear: float = param(1 / 3, ge=0)
    prior_mlp: float = param(1 / 3, ge=0)
    #: fixed random reward nets (published 10000)
    num_random_nets: int = param(10_000, ge=1)
    random_net_hidden: int = param(32, ge=1)
    #: probability that a linear-reward weight is kept (not zeroed)
    linear_keep_prob: float = param(0.1, ge=0, le=1)
    #: goal reached when the RMS standardised distance over ``goal_dims`` is below this
    goal_threshold: float = param(0.2, gt=0)
    #: observation dimensions the goal distance uses (empty: all)
    goal_dims: list[int] = field(default_factory=list)
    #: where goals come from: the reached state / its trajectory / (rest) random states
    goal_from_current: float = param(0.2, ge=0, le=1)
    goal_from_trajectory: float = param(0.5, ge=0, le=1)
    #: seed of the random-MLP bank
    prior_seed: int = param(0, ge=0)
    #: what the linear and random-MLP rewards read: the features as they are (``raw``, the
    #: reference, whose constants suit ExORL's state scales) or standardised by dataset statistics
    prior_inputs: Literal["raw", "standardized"] = "raw"
    # ---- IQL policy -----------------------------------------------------------------
    hidden_dim: int = param(512, ge=1)
    hidden_layers: int = param(3, ge=1)
    #: hidden blocks of the decoder, value, critics and actor: LayerNorm + mish after every
    #: layer (``ln_mish``, the reference) or zsrl's ``ntanh`` (LayerNorm + tanh, then ReLU)
    mlp_blocks: Literal["ln_mish", "ntanh"] = "ln_mish"
    #: policy extraction: advantage-weighted regression (``awr``, the reference default) or
    #: ``ddpg``: maximise ``min_j Q_j(s, π(s, w), w)`` (normalised by its mean |Q|), plus
    #: ``bc_weight`` · ``‖π(s, w) − a‖²`` (the reference's ``actor_loss_type='ddpg'``)
    actor_loss: Literal["awr", "ddpg"] = "awr"
    bc_weight: float = param(0.0, ge=0)
    lr: float = param(1e-4, gt=0)
    discount: float = param(0.99, ge=0, lt=1)
    expectile: float = param(0.8, gt=0, lt=1)
    temperature: float = param(3.0, ge=0)
    max_weight: float = param(100.0, gt=0)
    tau: float = param(0.001, gt=0, le=1)
    #: gradient-norm clipping (0 = off)
    clip_grad_norm: float = param(0.0, ge=0)
    #: updates of the first phase (encoder + decoder only); the policy trains afterwards
    encoder_steps: int = param(1_000_000, ge=0)
    # ---- observations and prompting -----------------------------------------------------
    normalize_obs: bool = True
    #: dataset states kept in the model for goal prompting and sample_z
    prompt_bank_size: int = param(1024, ge=1)
    #: reward samples used by default to infer z at evaluation (K: one context, as published)
    inference_samples: int = param(32, ge=1)


def validate_config(cfg: FREConfig, obs_dim: int) -> None:
    """Raise :class:`UserError` for inconsistent FRE settings."""
    problems = []
    if cfg.context_size < 2:
        problems.append("context_size must be >= 2")
    if not 1 <= cfg.trajectory_context <= cfg.context_size:
        problems.append("trajectory_context must lie in [1, context_size]")
    if not 0 < cfg.trajectory_discount < 1:
        problems.append("trajectory_discount must lie in (0, 1)")
    if cfg.emb_dim < 2 or cfg.emb_dim % cfg.num_heads:
        problems.append("emb_dim must be >= 2 and divisible by num_heads")
    if min(cfg.prior_goal, cfg.prior_linear, cfg.prior_mlp) < 0 or (
        cfg.prior_goal + cfg.prior_linear + cfg.prior_mlp <= 0
    ):
        problems.append("prior_goal/prior_linear/prior_mlp must be >= 0 with a positive sum")
    if cfg.num_random_nets < 1 or cfg.reward_bins < 2 or cfg.decoder_queries < 1:
        problems.append("num_random_nets >= 1, reward_bins >= 2 and decoder_queries >= 1 are needed")
    if any(not 0 <= d < obs_dim for d in cfg.goal_dims):
        problems.append(f"goal_dims {cfg.goal_dims} must index the {obs_dim} observation dims")
    if cfg.goal_from_current < 0 or cfg.goal_from_trajectory < 0 or (
        cfg.goal_from_current + cfg.goal_from_trajectory > 1
    ):
        problems.append("goal_from_current + goal_from_trajectory must lie in [0, 1]")
    if cfg.prompt_bank_size < cfg.context_size:
        problems.append("prompt_bank_size must be >= context_size")
    if problems:
        raise UserError("invalid FRE config: " + "; ".join(problems))


def discretize_rewards(rewards: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin index of rewards over ``[-1, 1]`` (values outside fall into the end bins)."""
    idx = torch.floor((rewards / 2.0 + 0.5) * bins).long()
    return idx.clamp(0, bins - 1)


def goal_rewards(states: torch.Tensor, goals: torch.Tensor, threshold: float) -> torch.Tensor:
    """``−1 + 1[RMS(states − goals) < threshold]`` on standardised (selected) dims.

    ``states`` ``(..., M, D)``, ``goals`` broadcastable ``(..., 1, D)`` → rewards ``(..., M)``.
    """
    rms = (states - goals).pow(2).mean(-1).sqrt()
    return (rms < threshold).to(states.dtype) - 1.0


class RewardEncoder(nn.Module):
    """Set transformer ``{(s_k, r_k)}_{k ≤ K} → (μ, log σ)`` (see the module docstring)."""

    def __init__(self, obs_dim: int, cfg: FREConfig):
        super().__init__()
        half = cfg.emb_dim // 2
        self.bins = cfg.reward_bins
        self.state_embed = nn.Linear(obs_dim, half)
        self.reward_embed = nn.Embedding(cfg.reward_bins, cfg.emb_dim - half)
        layer = nn.TransformerEncoderLayer(
            cfg.emb_dim, cfg.num_heads, cfg.mlp_dim, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(
            layer, cfg.num_layers, norm=nn.LayerNorm(cfg.emb_dim), enable_nested_tensor=False
        )
        self.mean = nn.Linear(cfg.emb_dim, cfg.z_dim)
        self.log_std = nn.Linear(cfg.emb_dim, cfg.z_dim)

    def forward(self, states: torch.Tensor, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``states`` ``(B, K, obs_dim)`` (standardised), ``rewards`` ``(B, K)`` → ``(B, z_dim)`` ×2."""
        x = torch.cat(
            [self.state_embed(states), self.reward_embed(discretize_rewards(rewards, self.bins))], -1
        )
        pooled = self.transformer(x).mean(1)
        return self.mean(pooled), self.log_std(pooled).clamp(-10.0, 2.0)


def fre_mlp_blocks(cfg: FREConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`zsrl.nn.mlp` for ``cfg.mlp_blocks``."""
    if cfg.mlp_blocks == "ln_mish":
        return {"first_layernorm_tanh": False, "activation": nn.Mish, "hidden_layernorm": True}
    return {}


class GaussianActor(nn.Module):
    """``π(a | s, w) = N(tanh(m(s, w)), diag σ²)`` with a learned state-independent σ."""

    def __init__(self, in_dim: int, action_dim: int, hidden: list[int], blocks: dict[str, Any]):
        super().__init__()
        self.net = mlp(in_dim, hidden, action_dim, **blocks)
        self.log_std = nn.Parameter(torch.zeros(action_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tanh(self.net(x)), self.log_std.clamp(-5.0, 2.0).expand(x.shape[0], -1)

    def log_prob(self, x: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        mean, log_std = self(x)
        return gaussian_log_prob(action, mean, log_std)


class FREModel(Model):
    """Inference side of FRE: reward encoder, reward decoder, IQL value/critic/actor.

    Buffers (saved with the model): ``obs_norm`` (a :class:`~zsrl.nn.Standardize` holding the
    dataset statistics that standardise every network input and goal distances) and
    ``prompt_bank`` (dataset states for goal prompting), filled by :meth:`FREAgent.setup`.
    """

    def __init__(self, obs_dim: int, action_dim: int, cfg: FREConfig):
        super().__init__(obs_dim, action_dim, cfg)
        validate_config(cfg, obs_dim)
        hidden = [cfg.hidden_dim] * cfg.hidden_layers
        blocks = fre_mlp_blocks(cfg)
        self.encoder = RewardEncoder(obs_dim, cfg)
        self.decoder = mlp(obs_dim + cfg.z_dim, hidden, 1, **blocks)
        self.value_net = mlp(obs_dim + cfg.z_dim, hidden, 1, **blocks)
        self.critic = mlp(obs_dim + action_dim + cfg.z_dim, hidden, 1, ensemble=2, **blocks)
        self.actor = GaussianActor(obs_dim + cfg.z_dim, action_dim, hidden, blocks)
        self.obs_norm = Standardize(obs_dim)
        accept_renamed_keys(self, {"obs_mean": "obs_norm.mean", "obs_std": "obs_norm.std"})
        self.register_buffer("prompt_bank", torch.zeros(cfg.prompt_bank_size, obs_dim))
        self.register_buffer("prompt_bank_ready", torch.zeros((), dtype=torch.bool))
        dims = cfg.goal_dims or list(range(obs_dim))
        self.register_buffer("goal_dims", torch.tensor(dims, dtype=torch.long), persistent=False)

    # ---- building blocks ---------------------------------------------------------------
    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return self.obs_norm(obs) if self.cfg.normalize_obs else obs

    def goal_space(self, obs: torch.Tensor) -> torch.Tensor:
        """Standardised ``goal_dims`` of observations (where goal distances are measured)."""
        return self.obs_norm.scale(obs).index_select(-1, self.goal_dims)

    def encode(self, states: torch.Tensor, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, log σ)`` of contexts: raw states ``(B, K, obs_dim)``, rewards ``(B, K)``."""
        return self.encoder(self.normalize(states), rewards)

    def predict_reward(self, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Decoder ``D(w, s)``: ``obs`` ``(..., obs_dim)`` with ``z`` broadcastable → ``(...)``."""
        z = z.expand(*obs.shape[:-1], z.shape[-1])
        return self.decoder(torch.cat([self.normalize(obs), z], -1)).squeeze(-1)

    def value(self, obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.value_net(torch.cat([self.normalize(obs), z], -1)).squeeze(-1)

    def q_values(self, obs: torch.Tensor, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Twin critics ``(2, N)``."""
        return self.critic(torch.cat([self.normalize(obs), action, z], -1)).squeeze(-1)

    # ---- the inference API -------------------------------------------------------------
    def act(self, obs: torch.Tensor, z: torch.Tensor, mean: bool = True) -> torch.Tensor:
        mu, log_std = self.actor(torch.cat([self.normalize(obs), z], -1))
        if mean:
            return mu
        return (mu + torch.randn_like(mu) * log_std.exp()).clamp(-1.0, 1.0)

    def _require_bank(self) -> None:
        if not bool(self.prompt_bank_ready):
            raise RuntimeError(
                "this FRE model has no bank of dataset states (FREAgent.setup was never run), so it "
                "cannot build goal prompts; train it with zsrl train or call agent.setup(dataset, domain)"
            )

    def _encode_goals(self, goals: torch.Tensor, chunks: torch.Tensor) -> torch.Tensor:
        """Mean μ over contexts ``[g, chunk_c]``: goals ``(N, D)``, chunks ``(N, C, K−1, D)``."""
        n, c = chunks.shape[:2]
        states = torch.cat([goals[:, None, None, :].expand(n, c, 1, -1), chunks], 2)  # (N, C, K, D)
        rewards = goal_rewards(
            self.goal_space(states), self.goal_space(goals)[:, None, None, :], self.cfg.goal_threshold
        )
        mu, _ = self.encode(states.flatten(0, 1), rewards.flatten(0, 1))
        return mu.view(n, c, -1).mean(1)

    @torch.no_grad()
    def sample_z(self, n: int, device: torch.device | None = None) -> torch.Tensor:
        """Codes of ``n`` random goal-reaching tasks (goals and contexts from the state bank)."""
        self._require_bank()
        bank = self.prompt_bank
        k = self.cfg.context_size
        idx = torch.randint(bank.shape[0], (n, k), device=bank.device)
        z = self._encode_goals(bank[idx[:, 0]], bank[idx[:, 1:]][:, None])
        return z.to(device or self.device)

    @torch.no_grad()
    def infer_z_from_rewards(self, obs: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """Mean μ over chunks of ``context_size`` reward samples (see the module docstring)."""
        self._check_prompt(obs, rewards)
        rewards = rewards.reshape(-1).to(obs.dtype)
        outside = int((rewards.abs() > 1.0 + 1e-6).sum())
        if outside:
            warnings.warn(
                f"FRE bins rewards over [-1, 1]; {outside} of {rewards.numel()} reward samples lie "
                "outside and are clipped. Scale the task reward into [-1, 1].",
                stacklevel=2,
            )
        rewards = rewards.clamp(-1.0, 1.0)
        n, k = obs.shape[0], self.cfg.context_size
        if n <= k:
            states, r = obs[None], rewards[None]
        else:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).to(obs.device)
            c = n // k
            keep = perm[: c * k]
            states, r = obs[keep].view(c, k, -1), rewards[keep].view(c, k)
        mu, _ = self.encode(states, r)
        return mu.mean(0, keepdim=True)

    @torch.no_grad()
    def infer_z_from_goal(self, goal_obs: torch.Tensor, obs: torch.Tensor | None = None) -> torch.Tensor:
        """One code per goal, ``(N, z_dim)``: goal rewards on chunks of the state bank."""
        if goal_obs.shape[-1] != self.obs_dim:
            raise ValueError(f"goal observations must have {self.obs_dim} dims, got shape {tuple(goal_obs.shape)}")
        goal_obs = goal_obs.reshape(-1, self.obs_dim)
        self._check_prompt(goal_obs)
        self._require_bank()
        k1 = self.cfg.context_size - 1
        c = self.prompt_bank.shape[0] // k1
        chunks = self.prompt_bank[: c * k1].view(1, c, k1, -1).expand(goal_obs.shape[0], -1, -1, -1)
        return self._encode_goals(goal_obs.to(self.prompt_bank.dtype), chunks)


class RewardPrior(nn.Module):
    """The prior over reward functions (goal / linear / random MLP) of the module docstring.

    Buffers (part of the agent's training state): feature statistics and the random-MLP bank.
    """

    def __init__(self, feature_dim: int, cfg: FREConfig):
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(cfg.prior_seed)
        n, h = cfg.num_random_nets, cfg.random_net_hidden
        self.feat_norm = Standardize(feature_dim)
        accept_renamed_keys(self, {"feat_mean": "feat_norm.mean", "feat_std": "feat_norm.std"})
        self.register_buffer("mlp_w1", torch.randn(n, feature_dim, h, generator=g) * math.sqrt(1 / 32))
        self.register_buffer("mlp_b1", torch.randn(n, h, generator=g) * math.sqrt(16))
        self.register_buffer("mlp_w2", torch.randn(n, h, generator=g) * math.sqrt(1 / 16))

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        """The inputs of the linear and MLP rewards: ``feats`` standardised, or as they are
        (``prior_inputs``)."""
        if self.cfg.prior_inputs == "raw":
            return feats
        return self.feat_norm(feats)

    def sample_linear(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights ``(n, F)`` (sparse, at least one nonzero) and clip-to-[0,1] flags ``(n,)``."""
        f = self.feat_norm.mean.shape[0]
        w = torch.rand(n, f, device=device) * 2 - 1
        keep = torch.rand(n, f, device=device) < self.cfg.linear_keep_prob
        keep[torch.arange(n, device=device), torch.randint(f, (n,), device=device)] = True
        return w * keep, torch.rand(n, device=device) < 0.5

    @staticmethod
    def linear(feats: torch.Tensor, w: torch.Tensor, clip01: torch.Tensor) -> torch.Tensor:
        """``feats`` ``(n, M, F)`` (from :meth:`normalize`), ``w`` ``(n, F)`` → rewards ``(n, M)``."""
        r = (feats * w[:, None, :]).sum(-1)
        return torch.where(clip01[:, None], r.clamp(0.0, 1.0), r.clamp(-1.0, 1.0))

    def random_mlp(self, feats: torch.Tensor, net: torch.Tensor) -> torch.Tensor:
        """``feats`` ``(n, M, F)`` (from :meth:`normalize`), net ids ``(n,)`` → rewards ``(n, M)`` in [-1, 1]."""
        h = torch.tanh(torch.bmm(feats, self.mlp_w1[net]) + self.mlp_b1[net][:, None, :])
        return (h * self.mlp_w2[net][:, None, :]).sum(-1).clamp(-1.0, 1.0)


_ENCODER_METRICS = ("loss/reward_pred", "loss/kl", "diag/w_norm", "diag/w_std", "diag/reward_mean")
_POLICY_METRICS = ("loss/value", "loss/critic", "loss/actor", "diag/v", "diag/q", "diag/adv",
                   "diag/awr_weight", "diag/policy_std")


class _Progress(nn.Module):
    """The update counter as a buffer, so that it is saved in the training state."""

    def __init__(self):
        super().__init__()
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))


def domain_features(domain: Any, next_obs: torch.Tensor) -> torch.Tensor | None:
    """``domain.features`` of the observations ``(n, obs_dim)`` as ``(n, F)``, computed on the
    host in chunks of 100k, or None where the domain has no features."""
    chunks = []
    for part in next_obs.split(100_000):
        out = domain.features(part.cpu().numpy())
        if out is None:
            return None
        chunks.append(torch.as_tensor(out, dtype=torch.float32).reshape(part.shape[0], -1))
    features = torch.cat(chunks).to(next_obs.device)
    if not torch.isfinite(features).all():
        raise UserError(f"domain {domain.name!r}: features() returned NaN or inf values")
    return features


class FREAgent(Agent):
    """Trains :class:`FREModel`: encoder phase, then IQL on the frozen encoder's codes."""

    config_class = FREConfig
    model_class = FREModel

    def __init__(self, obs_dim: int, action_dim: int, cfg: FREConfig, device: torch.device):
        super().__init__(obs_dim, action_dim, cfg, device)
        m = self.model
        self.critic_target = self.add_module("critic_target", copy.deepcopy(m.critic).requires_grad_(False))
        self.encoder_opt = self.add_optimizer(
            "encoder_opt", [*m.encoder.parameters(), *m.decoder.parameters()], lr=cfg.lr
        )
        self.policy_opt = self.add_optimizer(
            "policy_opt", [*m.value_net.parameters(), *m.critic.parameters(), *m.actor.parameters()], lr=cfg.lr
        )
        self.progress = self.add_module("progress", _Progress())
        self._updates = 0  # host mirror of progress.updates (no device sync per update)
        self._set_phase()
        # probabilities of each context position to be the goal of a goal-reaching row
        self._goal_position_probs = goal_position_probs(
            cfg.context_size, cfg.trajectory_context, cfg.goal_from_current, cfg.goal_from_trajectory
        ).to(self.device)
        self._dataset: Any = None
        self._source: Any = None
        self._domain: Any = None
        self._next_obs: torch.Tensor | None = None
        self._features: torch.Tensor | None = None

    # ---- phases ------------------------------------------------------------------------
    def _set_phase(self) -> None:
        """``"encoder"`` for the first ``encoder_steps`` updates, ``"policy"`` afterwards."""
        self.phase = "encoder" if self._updates < self.cfg.encoder_steps else "policy"

    @property
    def updates_done(self) -> int:
        return self._updates

    def after_step(self) -> None:
        self._updates += 1
        self._set_phase()

    # ---- data --------------------------------------------------------------------------
    @torch.no_grad()
    def setup(self, dataset: Any, domain: Any, task: str | None = None) -> None:
        """Dataset statistics, prior features, the random-MLP bank and the prompt bank.

        Where ``domain.features`` gives features (:meth:`zsrl.envs.Domain.features`), it is
        called on the dataset's next observations (float32 numpy arrays ``(n, obs_dim)``, in
        chunks of 100k) and returns ``(n, F)``; the prior then acts on those.
        """
        cfg, model = self.cfg, self.model
        source = dataset
        if dataset.device != self.device:
            dataset = dataset.to(self.device)
        next_obs = dataset.data["next", "observation"]
        model.obs_norm.fit(next_obs)
        features = None if domain is None else domain_features(domain, next_obs)
        feats = next_obs if features is None else features
        self._modules.pop("prior", None)  # a new setup rebuilds it (same seed, same bank)
        self.prior = self.add_module("prior", RewardPrior(feats.shape[1], cfg))
        self.prior.feat_norm.fit(feats)
        bank_idx = torch.randint(len(dataset), (cfg.prompt_bank_size,), device=next_obs.device)
        model.prompt_bank.copy_(next_obs[bank_idx])
        model.prompt_bank_ready.fill_(True)
        self._source, self._dataset, self._domain = source, dataset, domain
        _ = dataset.episode_end  # computed once here (it synchronises), not inside a step
        self._next_obs, self._features = next_obs, features

    @torch.no_grad()
    def sample_batch(self, dataset: Any, batch_size: int) -> TensorDict:
        """Everything one update of the current phase needs; see the module docstring for the context layout.

        Keys: ``context_obs`` ``(B, K, D)``, ``context_reward`` ``(B, K)``; in the encoder phase
        ``query_obs`` ``(B, Q, D)`` and ``query_reward`` ``(B, Q)``; in the policy phase the
        transition ``observation, action, next/observation`` with ``reward`` and ``mask``.
        """
        if self._dataset is None:  # e.g. benchmarks that skip setup(): prior on observations
            self.setup(dataset, None)
        elif dataset is not self._source:
            warnings.warn("FREAgent.sample_batch got another dataset than setup(); setting up again",
                          stacklevel=2)
            self.setup(dataset, self._domain)
        cfg, model, prior = self.cfg, self.model, self.prior
        data = self._dataset
        next_obs = self._next_obs
        feats_all = next_obs if self._features is None else self._features
        b, k, t, nq = batch_size, cfg.context_size, cfg.trajectory_context, cfg.decoder_queries
        dev = next_obs.device
        n_data = next_obs.shape[0]
        encoder_phase = self.phase == "encoder"

        idx = data.sample_indices(b)
        parts = [idx[:, None]]
        if t > 1:
            parts.append(data.sample_future(idx[:, None].expand(b, t - 1), cfg.trajectory_discount))
        parts.append(torch.randint(n_data, (b, k - t), device=dev))
        ctx_idx = torch.cat(parts, 1)  # (B, K)
        q_idx = torch.randint(n_data, (b, nq), device=dev) if encoder_phase else None
        all_idx = ctx_idx if q_idx is None else torch.cat([ctx_idx, q_idx], 1)  # (B, M)
        states = next_obs[all_idx]  # (B, M, D)

        total = cfg.prior_goal + cfg.prior_linear + cfg.prior_mlp
        n_goal = round(b * cfg.prior_goal / total)
        n_lin = min(b - n_goal, round(b * cfg.prior_linear / total))
        n_mlp = b - n_goal - n_lin
        rewards = torch.empty(b, all_idx.shape[1], device=dev)
        # goal reaching: the goal is one of the row's context states
        goal_pos = sample_categorical(self._goal_position_probs, n_goal) if n_goal else None
        if n_goal:
            g_states = states[:n_goal]
            goals = g_states[torch.arange(n_goal, device=dev), goal_pos]  # (n_goal, D)
            if q_idx is not None:  # decode the goal itself too
                g_states = g_states.clone()
                g_states[:, k] = goals
                states = torch.cat([g_states, states[n_goal:]], 0)
            rewards[:n_goal] = goal_rewards(
                model.goal_space(g_states), model.goal_space(goals)[:, None, :], cfg.goal_threshold
            )
        if n_lin + n_mlp:
            feats = prior.normalize(feats_all[all_idx[n_goal:]])  # (n_lin + n_mlp, M, F)
            if n_lin:
                w, clip01 = prior.sample_linear(n_lin, dev)
                rewards[n_goal : n_goal + n_lin] = prior.linear(feats[:n_lin], w, clip01)
            if n_mlp:
                net = torch.randint(cfg.num_random_nets, (n_mlp,), device=dev)
                rewards[n_goal + n_lin :] = prior.random_mlp(feats[n_lin:], net)

        out: dict[str, Any] = {"context_obs": states[:, :k], "context_reward": rewards[:, :k]}
        if encoder_phase:
            out["query_obs"], out["query_reward"] = states[:, k:], rewards[:, k:]
        else:
            td = data.data
            r = rewards[:, 0]  # the reward of the reached state s'
            mask = torch.ones(b, device=dev)
            mask[:n_goal] = -r[:n_goal]  # reaching the goal is terminal
            mask = mask * (~td["next", "terminated"][idx]).to(mask.dtype)
            out.update(
                observation=td["observation"][idx],
                action=td["action"][idx],
                next={"observation": next_obs[idx]},
                reward=r,
                mask=mask,
            )
        return TensorDict(out, batch_size=[b], device=dev)

    # ---- updates -----------------------------------------------------------------------
    @staticmethod
    def _metrics(enc: Metrics | None, pol: Metrics | None) -> dict:
        """The same keys, in the same order, in both phases (the inactive phase's are 0)."""
        active = enc or pol or {}
        zero = next(iter(active.values())).new_zeros(())
        enc, pol = enc or {}, pol or {}
        out = {k: enc.get(k, zero) for k in _ENCODER_METRICS}
        out.update({k: pol.get(k, zero) for k in _POLICY_METRICS})
        out["train/policy_phase"] = zero + (1.0 if pol else 0.0)
        return out

    def _update_encoder(self, batch: TensorDict) -> Metrics:
        cfg, model = self.cfg, self.model
        mu, log_std = model.encode(batch["context_obs"], batch["context_reward"])
        w = mu + torch.randn_like(mu) * log_std.exp()
        pred = model.predict_reward(batch["query_obs"], w[:, None, :])
        pred_loss = F.mse_loss(pred, batch["query_reward"])
        kl = kl_standard_normal(mu, log_std)
        loss = pred_loss + cfg.kl_weight * kl
        self.step_optimizers(loss, self.encoder_opt)
        with torch.no_grad():
            return self._metrics(
                {
                    "loss/reward_pred": pred_loss.detach(),
                    "loss/kl": kl.detach(),
                    "diag/w_norm": mu.norm(dim=-1).mean(),
                    "diag/w_std": log_std.exp().mean(),
                    "diag/reward_mean": batch["context_reward"].mean(),
                },
                None,
            )

    def _update_policy(self, batch: TensorDict) -> Metrics:
        cfg, model = self.cfg, self.model
        obs, action, next_obs = batch["observation"], batch["action"], batch["next", "observation"]
        with torch.no_grad():
            w, _ = model.encode(batch["context_obs"], batch["context_reward"])  # frozen encoder, w = μ
            obs_n = model.normalize(obs)
            target_q = self.critic_target(torch.cat([obs_n, action, w], -1)).squeeze(-1).min(0).values
            next_v = model.value(next_obs, w)
            q_target = batch["reward"] + cfg.discount * batch["mask"] * next_v
        v = model.value(obs, w)
        value_loss = expectile_loss(target_q - v, cfg.expectile)
        q = model.q_values(obs, w, action)  # (2, B)
        critic_loss = (q - q_target).pow(2).mean(1).sum()
        with torch.no_grad():
            adv = q.min(0).values - v
            weight = torch.exp(adv * cfg.temperature).clamp(max=cfg.max_weight)
        actor_in = torch.cat([obs_n, w], -1)
        if cfg.actor_loss == "ddpg":
            pi, _ = model.actor(actor_in)
            q_pi = call_frozen(model.critic, torch.cat([obs_n, pi, w], -1)).squeeze(-1).min(0).values
            actor_loss = -q_pi.mean() / q_scale(q_pi)
            actor_loss = actor_loss + cfg.bc_weight * (pi - action).pow(2).sum(-1).mean()
        else:
            actor_loss = -(weight * model.actor.log_prob(actor_in, action)).mean()
        self.step_optimizers(value_loss + critic_loss + actor_loss, self.policy_opt)
        soft_update(self.critic_target, model.critic, cfg.tau)
        with torch.no_grad():
            return self._metrics(
                None,
                {
                    "loss/value": value_loss.detach(),
                    "loss/critic": critic_loss.detach(),
                    "loss/actor": actor_loss.detach(),
                    "diag/v": v.mean().detach(),
                    "diag/q": q.mean().detach(),
                    "diag/adv": adv.mean(),
                    "diag/awr_weight": weight.mean(),
                    "diag/policy_std": model.actor.log_std.clamp(-5.0, 2.0).exp().mean().detach(),
                },
            )

    def update(self, batch: TensorDict) -> Metrics:
        return self._update_encoder(batch) if self.phase == "encoder" else self._update_policy(batch)

    # ---- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self.progress.updates.fill_(self._updates)
        return super().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._updates = int(self.progress.updates)
        self._set_phase()
