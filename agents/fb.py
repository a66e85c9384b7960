r"""Forward-backward (FB) representations.

Touati & Ollivier, "Learning One Representation to Optimize All Rewards" (NeurIPS 2021);
Touati, Rapin & Ollivier, "Does Zero-Shot Reinforcement Learning Exist?" (ICLR 2023).

FB learns ``F(s, a, z) ∈ R^d`` and ``B(s') ∈ R^d`` such that the successor measure of the
policy ``π_z`` factorises as ``M^{π_z}(s, a, ds') ≈ F(s, a, z)ᵀ B(s') ρ(ds')`` for the data
distribution ρ. For any reward ``r``, ``z_r = E_ρ[r(s') B(s')]`` then makes
``Q_r(s, a) = F(s, a, z_r)ᵀ z_r`` the Q-function of ``π_{z_r}``, and ``π_z`` is trained to
maximise ``F(s, a, z)ᵀ z`` — so one pretraining serves every reward.

**Measure loss** (on a batch of N transitions, with goals = the batch's next states):

.. math::

   M_{ij} &= F(s_i, a_i, z_i)^\top B(s'_j), \qquad
   \bar M_{ij} = \bar F(s'_i, a'_i, z_i)^\top \bar B(s'_j), \quad a'_i \sim \pi_{z_i}(s'_i) \\
   \Delta &= M - \gamma (1 - d_i) \bar M \\
   L_{FB} &= \tfrac12 \operatorname{mean}_{i \ne j} \Delta_{ij}^2 - \operatorname{mean}_i \Delta_{ii}

summed over the F ensemble heads (the target ``M̄`` averages or takes the min over heads).
The off-diagonal term is a TD regression of the measure on "negative" states; the diagonal
term rewards ``F(s,a,z)ᵀB(s')`` on the state actually reached. (The ``−γ M̄_ii`` part of the
diagonal has no gradient; it is kept so the logged loss is complete.)

**Orthonormality** of B under ρ, so that ``z`` coordinates are identifiable:

.. math:: L_{ortho} = \tfrac12 \operatorname{mean}_{i\ne j} (B_i^\top B_j)^2
                      - \operatorname{mean}_i B_i^\top B_i

**Auxiliary Q loss** (``q_loss_coef`` > 0; metamotivo's FB-CPR): the measure loss fits
``F`` in every direction of ``B``'s span, while the policy only reads ``Q = Fᵀz``. This term
also regresses ``Q`` directly onto its own TD target, for the reward that ``z`` stands for in
``B``'s span, ``r_z(s') = B(s')ᵀ Cov⁻¹ z`` with ``Cov = mean_j B(s'_j)B(s'_j)ᵀ`` (then
``E_ρ[r_z B] = z``):

.. math:: L_Q = \tfrac12 \sum_{heads} \operatorname{mean}_i
                \big(F(s_i,a_i,z_i)^\top z_i - r_{z_i}(s'_i) - \gamma (1-d_i) \bar Q_i\big)^2,
          \qquad \bar Q_i = \bar F(s'_i, a'_i, z_i)^\top z_i

with ``r`` and ``Q̄`` held fixed (no gradient) and ``Q̄`` reduced over heads like ``M̄``.

**z prior**: ``z = √d · u``, ``u`` uniform on the unit sphere; a fraction ``mix_ratio`` of
the batch instead uses ``z = √d · B(g)/‖B(g)‖`` for goal states ``g`` (goal-like tasks):
random dataset states, or, with probability ``goal_from_trajectory``, a state the
transition's own trajectory reaches later, ``g = s'_{i+k}`` with ``k ~ Geometric(1 −
goal_future)`` rows (hindsight goals, controllable_agent's ``future_ratio``). A random goal
is rarely near ``s_i``, so the measure and the actor almost never train on the last steps
towards a goal; hindsight goals put a share of the batch there.

**Actor** (TD3-style): ``a = π(s, z) + clip(ε σ, ±c)``, maximising
``min_heads F(s, a, z)ᵀ z``, or with ``actor_reduction="mean"`` the heads' mean. The min is
pessimistic where the heads disagree, which is where the data is thin.

**Myopic term** (``myopic_coef`` = λ > 0). One action moves ``Q`` by about ``1 − γ`` of its
scale (the action gap), and ``F`` is smoother than ``B``'s kernel: near a goal ``Q`` is nearly
flat, and the actor comes to rest a few cm short as readily as on the goal. A one-step
predictor ``P(s, a) ≈ E[B(s') | s, a]``, regressed on the online ``B(s')`` (held fixed),

.. math:: L_P = \tfrac12 \operatorname{mean}_i \lVert P(s_i, a_i) - B(s'_i) \rVert^2,

says where the next decision lands in ``B``'s embedding, and the actor maximises

.. math:: \min_{heads} F(s, a, z)^\top z - λ\, d\, \lVert \hat P(s, a) - \hat z \rVert,
          \qquad \hat x = x / \lVert x \rVert,

the (chordal) distance from the next decision's embedding direction to the task's. The next
decision's reward ``B(s')ᵀz = d cos θ`` (θ the angle between ``B(s')`` and ``z``; both have
norm ``√d``) is flat at its peak: ``d(1 − θ²/2)``. Its pull on the actor fades near a goal,
below F's errors (on the maze, 2–4 cm short of it). The distance ``‖P̂ − ẑ‖ = 2 sin(θ/2) ≈ θ``
grows linearly away from it, so the pull holds up to the goal. It orders actions like the
next reward does.
``P`` trains no other network and is part of the agent's training state only: the exported
model and its prompting are unchanged.

**Auxiliary block of B** (``aux_z_dim`` = k > 0). With ``goal_dims`` B reads a few
coordinates (the maze's position) and cannot represent a reward of the others (a velocity).
One network over all of them blurs B over the goal coordinates (on the maze, every reach task
failed). The auxiliary block gives B's last ``k`` coordinates their own MLP ``c`` of the
coordinates ``aux_dims`` and their own sphere, so the kernel is a sum,

.. math:: B(s)^\top B(s') = b(s)^\top b(s') + c(s)^\top c(s'),

a reward of the goal coordinates and a reward of the auxiliary ones are both in its span, and
``b`` is what it is alone. Two parts of FB read the goal block only:

* the myopic term: ``P`` predicts ``b(s')`` and ``ẑ`` is z's goal block. One decision changes
  the velocity, not the position, so a distance over all of B makes the actor match z's
  velocity block at once (on the maze, with ``z`` from a goal at rest: stop wherever it is;
  reach-task mean 6 against 715);
* goal prompts, ``z = √d · normalise([b(g); 0])``: a goal names its goal coordinates, not a
  velocity to arrive with (on the maze, the far room's goal: 30 / 0 / 10% success with
  ``B(g)`` of ``g = [x, y, 0, 0]`` over three runs, 80 / 0 / 100% with the block left out).
  The goal z's of training (``mix_ratio``) are made the same way, so the policy trains on the
  z's that goal prompts give it.

The price, measured on the maze CPU preset: the goal block reaches goals less precisely
(``scripts/maze_goal_grid.py``; README), so the maze preset does not use it.

**Joint update** (``joint_update``): the actor's loss reads ``F`` (and ``P``) as they are
*before* this update's F/B step, so one backward pass of the sum of the losses serves F, B,
``P`` and the actor (their parameters are disjoint: each gets its own loss's gradient), as
JAX agents take one gradient step on their summed losses. Sequentially (the default, as
metamotivo and TD3) the actor reads the F that the F/B step just changed, so its forward
and backward passes run after the F/B step's, as a second pair. The arithmetic is the same;
the joint step is one pair of passes, and on a CPU one compiled region instead of two
(``train.compile``).

**Prompting**: ``z = √d · normalise(Σ_i r_i B(s'_i))`` for reward samples, and
``z = √d · normalise(B(g))`` for a goal ``g`` (its auxiliary block, if any, set to 0).

**Standardised inputs** (``normalize_obs``): every network reads ``s̄ = (s − μ)/σ``
(clamped to ±10), with ``μ, σ`` the per-coordinate mean and standard deviation of the
dataset's next observations, fixed before training (buffers saved with the model). Each
network's first block is Linear → LayerNorm → tanh with zero-initialised biases, and
LayerNorm is invariant to the scale of its input vector: where ``s`` is concatenated with
``z`` (norm ``√d``) or an action (coordinates up to 1), ``s`` steers the block in proportion
to its share of that vector's norm. Raw coordinates on a small scale (the maze's positions,
≤ 0.3 m, and velocities, ≤ 0.1 m/s, next to ``‖z‖ = 8``) are then nearly invisible to ``F``
and the actor; standardised ones weigh like a coordinate of ``z``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from tensordict import TensorDict
from torch import nn

from zsrl.agents.base import Agent, Metrics, Model, compiled_region
from zsrl.agents.common import goal_dims_index, sample_batch_with_goals
from zsrl.config import AgentConfig, param
from zsrl.data import OfflineDataset
from zsrl.nn import (
    Standardize,
    call_frozen,
    clipped_noise_action,
    mlp,
    project_to_sphere,
    soft_update,
)
from zsrl.utils import UserError


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


@dataclass
class FBConfig(SkillPolicyConfig):
    """FB hyper-parameters (defaults: metamotivo's DMC settings)."""

    name: str = "fb"
    backward_hidden_dim: int = param(256, ge=1)
    backward_layers: int = param(2, ge=1)
    lr_f: float = param(1e-4, gt=0)
    lr_b: float = param(1e-4, gt=0)
    weight_decay: float = param(0.0, ge=0)
    ortho_coef: float = param(1.0, ge=0)
    #: how the target measure (and the target Q of ``q_loss_coef``) combines ensemble heads
    target_reduction: Literal["mean", "min"] = "mean"
    #: how the actor's objective combines the heads' ``Q = F(s, a, z)ᵀz``: the pessimistic
    #: min (metamotivo's, TD3's) or their mean
    actor_reduction: Literal["min", "mean"] = "min"
    #: weight of the auxiliary Q loss (metamotivo's ``q_loss_coef``; module docstring):
    #: TD on ``Q = F(s,a,z)ᵀz`` with the implicit reward ``B(s')ᵀCov⁻¹z``; 0 = off
    q_loss_coef: float = param(0.0, ge=0)
    #: fraction of the goal z's (the ``mix_ratio`` part) taken from a later state of the
    #: transition's own trajectory (hindsight goals) instead of a random dataset state
    goal_from_trajectory: float = param(0.0, ge=0, le=1)
    #: geometric discount (per dataset row) of the offset of trajectory goals
    goal_future: float = param(0.99, gt=0, lt=1)
    #: weight λ of the myopic term ``−λ d ‖P̂(s, a) − ẑ‖`` in the actor's objective: the
    #: distance from the next decision's embedding direction, ``P(s, a) ≈ E[B(s') | s, a]``
    #: a one-step predictor of B, to z's (module docstring); 0 = off
    myopic_coef: float = param(0.0, ge=0)
    #: one backward pass for the F/B and the actor losses, the actor reading F before this
    #: update's F/B step (module docstring); off: the actor steps after F/B, on the updated F
    joint_update: bool = False
    #: the goal space: observation coordinates that ``B`` reads (``None``: all of them).
    #: When every task's reward is a function of a few coordinates (the maze's rewards of
    #: the position), ``B`` on those alone generalises across the rest (the velocities).
    goal_dims: list[int] | None = None
    #: size ``k`` of B's auxiliary block: B's last ``k`` coordinates read the observation
    #: coordinates ``aux_dims`` through their own MLP and sphere (module docstring), so that
    #: rewards of coordinates outside ``goal_dims`` (the maze's velocities) can be prompted
    #: without blurring B over the goal coordinates; 0 = no auxiliary block
    aux_z_dim: int = param(0, ge=0)
    #: the observation coordinates B's auxiliary block reads (``None``: all of them)
    aux_dims: list[int] | None = None

    @property
    def goal_block_dim(self) -> int:
        """``d − k``: the leading coordinates of B (and z) that read ``goal_dims``."""
        return self.z_dim - self.aux_z_dim


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


class BackwardMap(nn.Module):
    """``B(s) = [√(d−k) · b(g(s̄))/‖b(g(s̄))‖ ; √k · c(h(s̄))/‖c(h(s̄))‖]`` with ``b, c`` MLPs
    (LayerNorm+tanh input block), ``s̄`` the (optionally standardised) observation, ``g`` the
    goal-space projection (the coordinates ``cfg.goal_dims``, or the identity) and ``h`` the
    auxiliary block's (``cfg.aux_dims``, or the identity). Without an auxiliary block
    (``k = cfg.aux_z_dim = 0``) ``B(s) = √d · b(g(s̄))/‖b(g(s̄))‖``."""

    def __init__(self, obs_dim: int, cfg: FBConfig):
        super().__init__()
        if cfg.aux_z_dim >= cfg.z_dim:
            raise UserError(f"agent.aux_z_dim={cfg.aux_z_dim} must be smaller than agent.z_dim={cfg.z_dim}")
        if cfg.aux_dims is not None and not cfg.aux_z_dim:
            raise UserError(f"agent.aux_dims={cfg.aux_dims} needs agent.aux_z_dim > 0 (the size of B's auxiliary block)")
        self.norm = input_norm(obs_dim, cfg.normalize_obs)
        self.register_buffer("goal_dims", goal_dims_index(cfg.goal_dims, obs_dim), persistent=False)
        self.net = _block_mlp(obs_dim, cfg.goal_dims, cfg.goal_block_dim, cfg)
        self.radius = math.sqrt(cfg.goal_block_dim)
        self.aux: nn.Module | None = None
        if cfg.aux_z_dim:
            self.register_buffer("aux_dims", goal_dims_index(cfg.aux_dims, obs_dim, "aux_dims"), persistent=False)
            self.aux = _block_mlp(obs_dim, cfg.aux_dims, cfg.aux_z_dim, cfg)
            self.aux_radius = math.sqrt(cfg.aux_z_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        obs = self.norm(obs)
        b = _sphere_block(self.net, obs, self.goal_dims, self.radius)
        if self.aux is None:
            return b
        return torch.cat([b, _sphere_block(self.aux, obs, self.aux_dims, self.aux_radius)], -1)


def _block_mlp(obs_dim: int, dims: list[int] | None, size: int, cfg: FBConfig) -> nn.Module:
    """The MLP of one block of B: ``dims`` (all ``obs_dim`` if ``None``) to ``size``."""
    in_dim = obs_dim if dims is None else len(dims)
    return mlp(in_dim, [cfg.backward_hidden_dim] * cfg.backward_layers, size)


def _sphere_block(net: nn.Module, obs: torch.Tensor, dims: torch.Tensor | None, radius: float) -> torch.Tensor:
    """``radius · net(obs_dims)/‖net(obs_dims)‖`` (``dims=None``: every coordinate)."""
    if dims is not None:
        obs = obs.index_select(-1, dims)
    return project_to_sphere(net(obs), radius)


class OneStepB(nn.Module):
    """``P(s, a) ≈ E[b(s') | s, a]``, B's goal block one decision ahead: an MLP (two
    hidden layers of ``hidden_dim``, LayerNorm+tanh input block) of the (optionally
    standardised) state and the action."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: FBConfig):
        super().__init__()
        self.norm = input_norm(obs_dim, cfg.normalize_obs)
        self.net = mlp(obs_dim + action_dim, [cfg.hidden_dim] * 2, cfg.goal_block_dim)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([self.norm(obs), action], -1))


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


class FBModel(Model):
    """Inference side of FB: ``forward_map``, ``backward_map``, ``actor`` and prompting."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: FBConfig):
        super().__init__(obs_dim, action_dim, cfg)
        self.forward_map = ForwardMap(obs_dim, action_dim, cfg)
        self.backward_map = BackwardMap(obs_dim, cfg)
        self.actor = Actor(obs_dim, action_dim, cfg)
        self.radius = math.sqrt(cfg.z_dim)

    def project_z(self, z: torch.Tensor) -> torch.Tensor:
        return project_to_sphere(z, self.radius)

    def sample_z(self, n: int, device: torch.device | None = None) -> torch.Tensor:
        return self.project_z(torch.randn(n, self.z_dim, device=device or self.device))

    def act(self, obs: torch.Tensor, z: torch.Tensor, mean: bool = True) -> torch.Tensor:
        mu = self.actor(obs, z)
        if mean:
            return mu
        return clipped_noise_action(mu, self.cfg.actor_std, self.cfg.std_clip)

    def q_values(self, obs: torch.Tensor, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``Q_z(s, a) = F(s, a, z)ᵀ z`` per head, ``(E, N)``."""
        return (self.forward_map(obs, z, action) * z).sum(-1)

    @torch.no_grad()
    def infer_z_from_rewards(self, obs: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        self._check_prompt(obs, rewards)
        b = self.backward_map(obs)
        z = (rewards.reshape(-1, 1).to(b.dtype) * b).sum(0, keepdim=True)
        return self.project_z(z)

    @torch.no_grad()
    def infer_z_from_goal(self, goal_obs: torch.Tensor, obs: torch.Tensor | None = None) -> torch.Tensor:
        goal_obs = goal_obs.reshape(-1, self.obs_dim)
        self._check_prompt(goal_obs)
        return self.goal_z(goal_obs)

    def goal_z(self, goal_obs: torch.Tensor) -> torch.Tensor:
        """``z = √d · normalise([b(g); 0])`` for goal states ``(N, obs_dim)``: B(g) with its
        auxiliary block, if any, set to 0 — a goal names its goal coordinates only (unchecked)."""
        b = self.backward_map(goal_obs)
        b[:, self.cfg.goal_block_dim:] = 0
        return self.project_z(b)


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


def fb_measure_loss(
    m: torch.Tensor, target_m: torch.Tensor, discount: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FB measure loss for ``m`` of shape ``(E, N, N)``; see the module docstring.

    Args:
        m: ``F(s_i,a_i,z_i)ᵀ B(s'_j)`` per head.
        target_m: the (already reduced) target ``F̄(s'_i,a'_i,z_i)ᵀ B̄(s'_j)``, ``(N, N)``.
        discount: ``γ (1 − d_i)``, shape ``(N,)``.

    Returns:
        ``(loss, off_diagonal, diagonal)``, each summed over heads. The off-diagonal mean is
        computed as ``(Σ_ij Δ² − Σ_i Δ_ii²) / (N(N−1))`` — no N×N mask is built.
    """
    n = m.shape[-1]
    diff = m - discount.view(1, -1, 1) * target_m.unsqueeze(0)
    diag_diff = diff.diagonal(dim1=-2, dim2=-1)  # (E, N)
    off_diag = 0.5 * (diff.pow(2).sum() - diag_diff.pow(2).sum()) / (n * (n - 1))
    diag = -diag_diff.mean(-1).sum()
    return off_diag + diag, off_diag, diag


def implicit_reward(b: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``r_i = B(s'_i)ᵀ Cov⁻¹ z_i`` ``(N,)`` with ``Cov = bᵀb / N``: the reward in ``B``'s span
    whose FB prompt is ``z`` (for one ``z``, ``mean_i r_i B(s'_i) = z``).

    ``b``: ``B(s')`` ``(N, d)``; ``z``: ``(N, d)``. ``Cov⁻¹z`` is one solve (``solve_ex``: no
    host sync to check for singularity), in float64: before B spreads out (while the
    orthonormality loss dominates) Cov is ill-conditioned, and in float32 the rounding of
    ``bᵀb`` alone then moves the reward by ~1e-3 relative between kernels (compiled vs eager).
    """
    b64 = b.double()
    cov = b64.T @ b64 / b.shape[0]
    cov_inv_z = torch.linalg.solve_ex(cov, z.double().T)[0].T
    return (b64 * cov_inv_z).sum(-1).to(b.dtype)  # Cov symmetric: Bᵀ(Cov⁻¹z)


def implicit_q_loss(
    f: torch.Tensor, b: torch.Tensor, z: torch.Tensor, next_q: torch.Tensor, discount: torch.Tensor
) -> torch.Tensor:
    """``½ Σ_heads mean_i (F_iᵀz_i − r_i − γ(1−d_i) Q̄_i)²`` with ``r`` the
    :func:`implicit_reward` of ``b`` (held fixed: pass it without gradient).

    Args:
        f: ``F(s, a, z)`` per head, ``(E, N, d)`` (carries gradients).
        b: ``B(s')``, ``(N, d)``. z: ``(N, d)``.
        next_q: the target ``Q̄``, ``(N,)``. discount: ``γ(1 − d_i)``, ``(N,)``.
    """
    target = implicit_reward(b, z) + discount * next_q
    return 0.5 * ((f * z).sum(-1) - target).pow(2).mean(-1).sum()


def chord_distance(u: torch.Tensor, v: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """``√(‖û − v̂‖² + eps²)`` over the last dimension, ``x̂ = x/‖x‖``: the distance between
    the directions of ``u`` and ``v`` (``2 sin(θ/2)``), smoothed at 0 so its gradient stays
    finite where they meet."""
    return ((project_to_sphere(u, 1.0) - project_to_sphere(v, 1.0)).pow(2).sum(-1) + eps**2).sqrt()


def orthonormality_loss(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``½ mean_{i≠j} (B_iᵀB_j)² − mean_i B_iᵀB_i`` → ``(loss, off_diagonal, diagonal)``."""
    n = b.shape[0]
    cov = b @ b.T
    cov_diag = cov.diagonal()
    off_diag = 0.5 * (cov.pow(2).sum() - cov_diag.pow(2).sum()) / (n * (n - 1))
    diag = -cov_diag.mean()
    return off_diag + diag, off_diag, diag


def effective_rank(cov: torch.Tensor) -> torch.Tensor:
    """Participation ratio ``(Σλ)² / Σλ² = tr(C)² / ‖C‖_F²`` of a symmetric ``(d, d)`` matrix
    ``C`` with eigenvalues ``λ`` (no eigendecomposition): ``d`` for B orthonormal under ρ
    (``C = I``), 1 when every ``B(s)`` lies on one line. A low value means B spends its ``d``
    dimensions on few directions, so the goal kernel ``B(s)ᵀB(g)`` is wide."""
    return cov.diagonal().sum().square() / cov.square().sum()


@dataclass
class FBStep:
    """What the F/B step hands to the actor step (and to variants' extra terms): the batch
    tensors and z it used, the online ``F(s, a, z)`` ``(E, N, d)`` and ``B(s')`` ``(N, d)``
    (detached, *before* the F/B optimiser step), the metrics so far and the target
    ``Q̄ = F̄(s', a', z)ᵀz`` ``(N,)`` (reduced over heads; ``None`` where no target was taken)."""

    obs: torch.Tensor
    action: torch.Tensor
    next_obs: torch.Tensor
    discount: torch.Tensor
    z: torch.Tensor
    f: torch.Tensor
    b: torch.Tensor
    metrics: Metrics = field(default_factory=dict)
    next_q: torch.Tensor | None = None


class FBAgent(Agent):
    """Trains :class:`FBModel` with the measure loss, orthonormality and a TD3 actor.

    One update is ``z = sample_training_z``; :meth:`update_fb` (one backward pass of
    :meth:`fb_objective` — measure + orthonormality loss, and ``P``'s regression where the
    myopic term is on — and a step of each optimiser in :attr:`fb_optimizers`);
    :meth:`update_actor` (maximise ``min_heads F(s, π(s,z), z)ᵀz`` with the *updated* F, as
    metamotivo); Polyak targets (:meth:`update_targets`). With ``joint_update``,
    :meth:`update_joint` replaces the first two: one backward pass of both losses. A variant
    overrides one of them — e.g. conservative FB adds its penalty to :meth:`fb_loss` and its
    ``α`` optimiser to :attr:`fb_optimizers` — and returns its extra metrics by name.
    :meth:`fb_objective`, :meth:`actor_loss` and :meth:`joint_objective` (the two in one) are
    the compile regions (:class:`~zsrl.agents.base.compiled_region`).
    """

    config_class = FBConfig
    model_class = FBModel

    def __init__(self, obs_dim: int, action_dim: int, cfg: FBConfig, device: torch.device):
        super().__init__(obs_dim, action_dim, cfg, device)
        m = self.model
        self.forward_target = self.add_module(
            "forward_target", copy.deepcopy(m.forward_map).requires_grad_(False)
        )
        self.backward_target = self.add_module(
            "backward_target", copy.deepcopy(m.backward_map).requires_grad_(False)
        )
        self.fb_opt = self.add_optimizer(
            "fb_opt",
            [
                {"params": m.forward_map.parameters(), "lr": cfg.lr_f},
                {"params": m.backward_map.parameters(), "lr": cfg.lr_b},
            ],
            weight_decay=cfg.weight_decay,
        )
        self.actor_opt = self.add_optimizer(
            "actor_opt", m.actor.parameters(), lr=cfg.lr_actor, weight_decay=cfg.weight_decay
        )
        #: the optimisers stepped on :meth:`fb_objective`'s loss (disjoint parameters)
        self.fb_optimizers: list[torch.optim.Optimizer] = [self.fb_opt]
        self.next_b: OneStepB | None = None
        if cfg.myopic_coef > 0:
            self.next_b = self.add_module("next_b", OneStepB(obs_dim, action_dim, cfg))
            self.next_b_opt = self.add_optimizer(
                "next_b_opt", self.next_b.parameters(), lr=cfg.lr_f, weight_decay=cfg.weight_decay
            )
            self.fb_optimizers.append(self.next_b_opt)

    def sample_batch(self, dataset: OfflineDataset, batch_size: int) -> TensorDict:
        """Uniform transitions; with ``goal_from_trajectory`` > 0, plus the ``goal`` state of
        each (a later state of its trajectory w.p. ``goal_from_trajectory``, else a random
        dataset state) that :meth:`sample_training_z` reads (no host sync)."""
        cfg = self.cfg
        if cfg.goal_from_trajectory == 0:
            return dataset.sample(batch_size)
        return sample_batch_with_goals(dataset, batch_size, 0.0, cfg.goal_from_trajectory, cfg.goal_future)

    def sample_training_z(self, next_obs: torch.Tensor, goal: torch.Tensor | None = None) -> torch.Tensor:
        """Sphere samples, a ``mix_ratio`` fraction replaced by goal z's ``proj(B(g))`` (with an
        auxiliary block, :meth:`FBModel.goal_z`: a goal prompt's z): ``g`` from ``goal``
        (``(N, obs_dim)``, the batch's goal states) or else the batch's permuted next states.

        The permuted states are taken with ``gather``, not ``x[torch.randperm(n)]`` (nor
        ``index_select``, which decomposes to the same ``aten.index``): that pattern trips
        inductor's ``randperm_index`` rewrite (``fx_passes/misc_patterns``) with "Not all inputs
        to pattern found in match.kwargs … slice_shape" (torch 2.11–2.13, CPU and CUDA), which
        is why ``train.compile`` crashed.
        """
        n = next_obs.shape[0]
        model = self.model
        z = model.sample_z(n, next_obs.device)
        if goal is None:
            perm = torch.randperm(n, device=next_obs.device)
            goal = next_obs.gather(0, perm[:, None].expand_as(next_obs))
        with torch.no_grad():  # without the block B(g) is already on the sphere: used as is
            goal_z = model.goal_z(goal) if self.cfg.aux_z_dim else model.backward_map(goal)
        use_goal = torch.rand(n, 1, device=next_obs.device) < self.cfg.mix_ratio
        return torch.where(use_goal, goal_z, z)

    # ---- the F/B step --------------------------------------------------------------------
    def target_measure(self, next_obs: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(M̄, Q̄)``: ``M̄ = F̄(s', a', z) B̄(s')ᵀ`` ``(N, N)`` and ``Q̄ = F̄(s', a', z)ᵀz``
        ``(N,)``, each reduced over heads, with ``a' ~ π_z(s')``.

        The head mean is taken on F̄ before the product (the product is linear in F̄): one
        N×N matmul instead of one per head.
        """
        cfg, model = self.cfg, self.model
        with torch.no_grad():
            next_action = clipped_noise_action(model.actor(next_obs, z), cfg.actor_std, cfg.std_clip)
            target_f = self.forward_target(next_obs, z, next_action)  # (E, N, d)
            target_b = self.backward_target(next_obs)  # (N, d)
            if cfg.target_reduction == "mean":
                mean_f = target_f.mean(0)
                return mean_f @ target_b.T, (mean_f * z).sum(-1)
            return (target_f @ target_b.T).min(0).values, (target_f * z).sum(-1).min(0).values

    def fb_loss(self, step: FBStep, target_m: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        """The loss of the F/B step: measure loss + ``ortho_coef`` × orthonormality."""
        m = step.f @ step.b.T  # (E, N, N); f, b carry gradients here
        fb_loss, fb_offdiag, fb_diag = fb_measure_loss(m, target_m, step.discount)
        ortho_loss, ortho_offdiag, ortho_diag = orthonormality_loss(step.b)
        with torch.no_grad():
            n = m.shape[-1]
            m_diag = m.diagonal(dim1=-2, dim2=-1).mean()
            metrics = {
                "loss/fb": fb_loss.detach(),
                "loss/fb_offdiag": fb_offdiag.detach(),
                "loss/fb_diag": fb_diag.detach(),
                "loss/ortho": ortho_loss.detach(),
                "loss/ortho_offdiag": ortho_offdiag.detach(),
                "loss/ortho_diag": ortho_diag.detach(),
                "diag/M_diag": m_diag,
                "diag/M_offdiag": (m.mean() * n - m_diag) / (n - 1),
            }
        loss = fb_loss + self.cfg.ortho_coef * ortho_loss
        if self.cfg.q_loss_coef > 0:
            q_loss = implicit_q_loss(step.f, step.b.detach(), step.z, step.next_q, step.discount)
            loss = loss + self.cfg.q_loss_coef * q_loss
            metrics["loss/q"] = q_loss.detach()
        return loss, metrics

    def update_fb(self, batch: TensorDict, z: torch.Tensor) -> FBStep:
        """One optimiser step of F and B (and ``P``) on :meth:`fb_objective`; returns what the
        actor step needs."""
        loss, step = self.fb_objective(
            batch["observation"], batch["action"], batch["next", "observation"], batch["next", "terminated"], z
        )
        self.step_optimizers(loss, *self.fb_optimizers)
        return step

    @compiled_region
    def fb_objective(
        self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor, terminated: torch.Tensor,
        z: torch.Tensor,
    ) -> tuple[torch.Tensor, FBStep]:
        """The F/B step's loss — :meth:`fb_loss`, plus ``P``'s :meth:`next_b_loss` where the
        myopic term is on (its own parameters: one backward pass serves both) — and the
        :class:`FBStep` with ``f``, ``b`` detached and the step's metrics."""
        cfg, model = self.cfg, self.model
        discount = cfg.discount * (~terminated).to(obs.dtype)
        target_m, next_q = self.target_measure(next_obs, z)
        f = model.forward_map(obs, z, action)
        b = model.backward_map(next_obs)
        step = FBStep(obs, action, next_obs, discount, z, f, b, next_q=next_q)
        loss, metrics = self.fb_loss(step, target_m)
        f, b = f.detach(), b.detach()
        with torch.no_grad():
            cov = b.T @ b / b.shape[0]  # (d, d); identity when B is orthonormal under ρ
            eff_rank = effective_rank(cov)
            cov.diagonal().sub_(1.0)
            metrics.update({
                "diag/orth_linf": cov.abs().max(),
                "diag/B_eff_rank": eff_rank,
                "diag/B_norm": b.norm(dim=-1).mean(),
                "diag/F_norm": f.norm(dim=-1).mean(),
                "diag/z_norm": z.norm(dim=-1).mean(),
            })
        if self.next_b is not None:
            next_b_loss = self.next_b_loss(obs, action, b)
            loss = loss + next_b_loss
            metrics["loss/next_b"] = next_b_loss.detach()
        step.f, step.b, step.metrics = f, b, metrics
        return loss, step

    # ---- the actor step ------------------------------------------------------------------
    @compiled_region
    def actor_loss(self, step: FBStep) -> tuple[torch.Tensor, Metrics]:
        """``−mean min_heads F(s, a, z)ᵀz`` (or the heads' mean: ``actor_reduction``) with
        ``a = π(s, z) + clipped noise`` (:func:`td3_actor_loss`), plus
        ``myopic_coef · d · mean ‖P̂(s, a) − ẑ‖`` where it is on."""
        cfg, model = self.cfg, self.model
        loss, q = td3_actor_loss(
            model.actor, model.forward_map, step.obs, step.z, cfg.actor_std, cfg.std_clip,
            bonus=self.myopic_bonus(step), reduction=cfg.actor_reduction,
        )
        metrics = {"loss/actor": loss.detach(), "diag/actor_q": q.mean().detach()}
        if self.next_b is not None:  # mean ‖P̂ − ẑ‖, from −loss = mean(q − λ d ‖P̂ − ẑ‖)
            metrics["diag/actor_next_dist"] = ((loss + q.mean()) / (cfg.myopic_coef * cfg.z_dim)).detach()
        return loss, metrics

    def myopic_bonus(self, step: FBStep) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``a ↦ −myopic_coef · d · ‖P̂(s, a) − ẑ‖`` on the step's states and z (``P``
        frozen: the gradient reaches the action only); ``None`` when ``myopic_coef`` is 0."""
        next_b, coef = self.next_b, self.cfg.myopic_coef * self.cfg.z_dim
        goal_block = self.cfg.goal_block_dim
        if next_b is None:
            return None

        def bonus(action: torch.Tensor) -> torch.Tensor:
            return -coef * chord_distance(call_frozen(next_b, step.obs, action), step.z[..., :goal_block])

        return bonus

    def next_b_loss(self, obs: torch.Tensor, action: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``P``'s regression ``½ mean ‖P(s, a) − b(s')‖²`` (``myopic_coef`` > 0), with ``b`` the
        goal block of ``B(s')`` (pass it detached)."""
        assert self.next_b is not None
        return 0.5 * (self.next_b(obs, action) - b[..., : self.cfg.goal_block_dim]).pow(2).sum(-1).mean()

    def update_actor(self, step: FBStep) -> Metrics:
        """One optimiser step of the actor (after the F/B step, so with the updated F)."""
        loss, metrics = self.actor_loss(step)
        self.step_optimizers(loss, self.actor_opt)
        return metrics

    @compiled_region
    def joint_objective(
        self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor, terminated: torch.Tensor,
        goal: torch.Tensor | None,
    ) -> tuple[torch.Tensor, Metrics]:
        """:meth:`fb_objective`'s loss plus :meth:`actor_loss` on its step (F as it is before
        the step), and both metrics, for z's drawn by :meth:`sample_training_z` (in the region:
        on a CPU its forward pass of B is compiled too)."""
        z = self.sample_training_z(next_obs, goal)
        fb_loss, step = self.fb_objective(obs, action, next_obs, terminated, z)
        actor_loss, actor_metrics = self.actor_loss(step)
        return fb_loss + actor_loss, {**step.metrics, **actor_metrics}

    def update_joint(self, batch: TensorDict) -> Metrics:
        """One backward pass of :meth:`joint_objective` and a step of every optimiser
        (``joint_update``)."""
        loss, metrics = self.joint_objective(
            batch["observation"], batch["action"], batch["next", "observation"], batch["next", "terminated"],
            batch.get("goal"),
        )
        self.step_optimizers(loss, *self.fb_optimizers, self.actor_opt)
        return metrics

    def update_targets(self) -> None:
        """Polyak averaging of the F and B targets (one foreach lerp each)."""
        soft_update(self.forward_target, self.model.forward_map, self.cfg.tau)
        soft_update(self.backward_target, self.model.backward_map, self.cfg.tau)

    def _update(self, batch: TensorDict) -> Metrics:
        if self.cfg.joint_update:
            metrics = self.update_joint(batch)
        else:
            step = self.update_fb(batch, self.sample_training_z(batch["next", "observation"], batch.get("goal")))
            metrics = {**step.metrics, **self.update_actor(step)}
        self.update_targets()
        return metrics
