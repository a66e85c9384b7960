r"""Hilbert foundation policies (HILP).

Park, Kreiman & Levine, "Foundation Policies with Hilbert Representations" (ICML 2024); the
anchor is seohongpark/HILP ``hilp_zsrl/url_benchmark/agent/sf.py`` (its ExORL zero-shot code).

**Hilbert representation.** ``φ: S → R^d`` is learned so that the distance in latent space
is a temporal distance: the goal-conditioned value ``V(s, g) = −‖φ(s) − φ(g)‖`` is fitted
IQL-style to the reward ``r = −1`` per step until ``g`` is reached. Two φ networks (an
ensemble, evaluated as one batched network) with Polyak targets ``φ̄`` (rate ``phi_tau``):

.. math::

   \sigma &= 1[\lVert s - g \rVert < 10^{-6}], \quad r = \sigma - 1, \quad m = 1 - \sigma \\
   q_e &= r + \gamma_h\, m\, \bar V_e(s', g), \qquad
   q = r + \gamma_h\, m \min_e \bar V_e(s', g), \qquad
   A = q - \tfrac12 \textstyle\sum_e \bar V_e(s, g) \\
   L_\phi &= \textstyle\sum_e \operatorname{mean}\, |\tau - 1(A < 0)|\,(q_e - V_e(s, g))^2

with ``γ_h = hilp_discount``, ``τ = hilp_expectile``, ``V_e = −√max(‖φ_e(s) − φ_e(g)‖², 10⁻⁶)``.
Goals ``g`` are dataset states: for the transition ``i``, a reached state of its own
trajectory ``s'_{i+k}``, ``k ~ Geometric(1 − goal_future)`` (probability
``goal_from_trajectory``), the reached state ``s'_i`` itself (``goal_from_current``) or a
uniform dataset state (the rest) — :func:`zsrl.agents.goals.sample_goal_indices`. The
success test ``s == g`` is the reference's distance test on the *current* state: a goal
``g = s'`` is one step away (``V(g, g) = 0`` by construction, so its target is ``−1``). Marking
``g = s'`` (the goal index equal to the transition's) as success instead would give it the
target 0 and pull ``φ(s)`` onto ``φ(s')``, collapsing the metric.

**Skill policy.** The features are ``f(s) = φ_1(s) − φ̄_μ`` (the first φ head, ``φ̄_μ`` a
running mean of ``φ_1`` over training batches, momentum ``1 − feature_mean_tau``). A task
``z ∈ R^d`` (``‖z‖ = √d``) has the intrinsic reward ``r_z = c(s, s')ᵀz`` with

* ``feature_type = diff`` (the paper): ``c = f(s') − f(s) = φ(s') − φ(s)`` — ``π_z`` moves
  along ``z`` in the latent space;
* ``feature_type = state`` (the reference's default, used in its ExORL runs): ``c = f(s')``.

Successor features ``ψ(s, a, z) ∈ R^d`` (two heads; FB's forward network
:class:`~zsrl.agents.skill.ForwardMap`) are fitted by TD with the head whose ``ψ̄ᵀz`` is smaller,
and a TD3 actor (:class:`~zsrl.agents.skill.Actor`, :func:`~zsrl.agents.skill.td3_actor_loss`)
maximises ``Q = min_e ψ_eᵀz``:

.. math::

   y &= c(s, s') + \gamma (1 - d)\, \bar\psi_{e^*}(s', a', z), \quad
        e^* = \arg\min_e \bar\psi_e(s', a', z)^\top z, \quad a' = \pi(s', z) + \text{clipped noise} \\
   L_\psi &= \textstyle\sum_e \operatorname{mean} (\psi_e - y)^2 \quad\text{or, with } q\_loss,\quad
             \textstyle\sum_e \operatorname{mean} (\psi_e^\top z - y^\top z)^2 \\
   L_\pi &= -\operatorname{mean} \min_e \psi_e(s, \pi(s, z) + \text{clipped noise}, z)^\top z

**z prior.** ``z = √d · u`` with ``u`` uniform on the sphere; a ``mix_ratio`` fraction is
replaced by task-like directions ``√d · normalise(c_p Σ⁻¹)``, with ``c_p`` the features of a
permuted batch row and ``Σ = mean cᵀc`` (whitened features, as the reference).

**Prompting.** Rewards: ``z = √d · normalise(argmin_w Σ_i (c(s_i, s'_i)ᵀw − r_i)²)``
(least squares on the transitions, :meth:`HILPModel.infer_z_from_transitions`; what
``zsrl eval`` uses). Goals: ``z = √d · normalise(f(g) − f(s))`` from the current state,
re-inferred at every step (``goal_z_depends_on_obs``).

Differences from the reference:

* the mix ``Σ⁻¹`` is ``(Σ + εI)⁻¹`` with ``ε = 10⁻⁶ tr Σ / d`` (Cholesky, no host sync),
  not a pseudo-inverse;
* the φ targets are Polyak-averaged after the φ step (the reference averages just before it);
* least squares run in float64 with ``gelsd`` (minimum norm: fewer samples than ``d`` or
  collinear features are fine);
* ``goal_dims`` (as FB's) lets φ read some observation coordinates only (all by default);
* ``normalize_obs`` (as FB's, off by default) standardises the skill networks' inputs;
* the φ networks are zsrl's ``mlp`` (orthogonal init) — the same layers
  (``Linear→LayerNorm→tanh→[Linear→ReLU]…→Linear``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from tensordict import TensorDict
from torch import nn

from zsrl import distributed
from zsrl.agents.base import Agent, Model
from zsrl.agents.goals import goal_dims_index, sample_batch_with_goals
from zsrl.agents.skill import Actor, ForwardMap, SkillPolicyConfig, td3_actor_loss
from zsrl.config import param
from zsrl.engine import Metrics
from zsrl.errors import UserError
from zsrl.nn import (
    clipped_noise_action,
    expectile_loss,
    mlp,
    project_to_sphere,
    soft_update,
)

#: the reference's success test ``‖s − g‖ < 1e-6`` and the clamp of squared distances
SUCCESS_EPS = 1e-6


@dataclass
class HILPConfig(SkillPolicyConfig):
    """HILP hyper-parameters (defaults: the reference's ExORL settings, seohongpark/HILP)."""

    name: str = "hilp"
    # ---- the Hilbert representation φ ------------------------------------------------
    phi_hidden_dim: int = param(512, ge=1)
    #: hidden layers of each φ network (LayerNorm+tanh after the first, ReLU after the others)
    phi_layers: int = param(2, ge=1)
    lr_phi: float = param(5e-4, gt=0)
    #: γ of the goal-conditioned value (the unit of the temporal distance)
    hilp_discount: float = param(0.98, gt=0, lt=1)
    hilp_expectile: float = param(0.5, gt=0, lt=1)
    phi_tau: float = param(0.005, gt=0, le=1)
    #: goal sources: the reached state, a later state of its trajectory, (rest) a random state
    goal_from_current: float = param(0.0, ge=0, le=1)
    goal_from_trajectory: float = param(0.625, ge=0, le=1)
    #: geometric discount of the offset of trajectory goals
    goal_future: float = param(0.99, gt=0, lt=1)
    #: the observation coordinates φ reads (``None``: all of them), as FB's ``goal_dims``
    goal_dims: list[int] | None = None
    # ---- the skill policy (FB's forward network and actor; the rest in SkillPolicyConfig,
    # whose normalize_obs standardises ψ's and the actor's inputs, not φ's) --------------
    #: intrinsic reward ``(φ(s') − φ(s))ᵀz`` (diff, the paper) or ``(φ(s') − φ̄)ᵀz`` (state)
    feature_type: Literal["diff", "state"] = "diff"
    #: rate of the running mean φ̄ of φ (the reference: 0.005)
    feature_mean_tau: float = param(0.005, gt=0, le=1)
    lr_sf: float = param(1e-4, gt=0)
    #: fit ψᵀz to yᵀz (True) instead of ψ to y
    q_loss: bool = True

    #: options removed since zsrl 0.1, and the value each behaved as when off
    retired: ClassVar[dict[str, Any]] = {"mix_z": "whitened"}

    def check(self) -> None:
        if self.goal_from_current + self.goal_from_trajectory > 1:
            raise UserError(
                f"goal_from_current + goal_from_trajectory = "
                f"{self.goal_from_current + self.goal_from_trajectory:g} must be <= 1 (the rest are random goals)"
            )


class HilbertRepresentation(nn.Module):
    """``φ_e(s)`` for the ``E = 2`` heads at once: ``(N, obs_dim) → (E, N, d)``."""

    def __init__(self, obs_dim: int, cfg: HILPConfig, heads: int = 2):
        super().__init__()
        self.register_buffer("goal_dims", goal_dims_index(cfg.goal_dims, obs_dim), persistent=False)
        in_dim = obs_dim if cfg.goal_dims is None else len(cfg.goal_dims)
        self.net = mlp(in_dim, [cfg.phi_hidden_dim] * cfg.phi_layers, cfg.z_dim, ensemble=heads)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.goal_dims is not None:
            obs = obs.index_select(-1, self.goal_dims)
        return self.net(obs)


def goal_values(phi_s: torch.Tensor, phi_g: torch.Tensor) -> torch.Tensor:
    """``V_e(s, g) = −√max(‖φ_e(s) − φ_e(g)‖², 10⁻⁶)`` for ``(E, N, d)`` inputs → ``(E, N)``."""
    return -(phi_s - phi_g).pow(2).sum(-1).clamp_min(SUCCESS_EPS).sqrt()


def goal_value_loss(
    v: torch.Tensor, next_v_target: torch.Tensor, v_target: torch.Tensor, success: torch.Tensor,
    discount: float, expectile: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """HILP's value loss ``L_φ`` (see the module docstring) → ``(loss, advantage A)``.

    Args:
        v: online ``V_e(s, g)``, ``(E, N)``, with gradients.
        next_v_target: target ``V̄_e(s', g)``, ``(E, N)``.
        v_target: target ``V̄_e(s, g)``, ``(E, N)``.
        success: ``1[s == g]`` as floats, ``(N,)``.
    """
    reward, mask = success - 1.0, 1.0 - success
    q_heads = reward + discount * mask * next_v_target
    q = reward + discount * mask * next_v_target.min(0).values
    adv = q - v_target.mean(0)
    # per-head means, summed over heads (the reference's value_loss1 + value_loss2)
    loss = expectile_loss(q_heads - v, expectile, sign=adv) * v.shape[0]
    return loss, adv


class HILPModel(Model):
    """Inference side of HILP: φ (both heads), the successor features ψ, the actor, and the
    running mean φ̄ of the first φ head (a buffer, saved with the model)."""

    goal_z_depends_on_obs = True

    def __init__(self, obs_dim: int, action_dim: int, cfg: HILPConfig):
        super().__init__(obs_dim, action_dim, cfg)
        self.phi = HilbertRepresentation(obs_dim, cfg)
        self.successor_features = ForwardMap(obs_dim, action_dim, cfg)
        self.actor = Actor(obs_dim, action_dim, cfg)
        self.register_buffer("phi_mean", torch.zeros(cfg.z_dim))
        self.radius = math.sqrt(cfg.z_dim)

    # ---- representation ----------------------------------------------------------------
    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """``f(s) = φ_1(s) − φ̄``, ``(N, d)``."""
        return self.phi(obs)[0] - self.phi_mean

    def reward_features(self, obs: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """``c(s, s')``: ``f(s') − f(s)`` (diff) or ``f(s')`` (state); the reward is ``cᵀz``."""
        if self.cfg.feature_type == "diff":
            return self.features(next_obs) - self.features(obs)
        return self.features(next_obs)

    def value(self, obs: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """The learned goal-conditioned value ``V_e(s, g)`` per head, ``(2, N)`` (≈ minus the
        discounted number of steps from ``s`` to ``g``)."""
        return goal_values(self.phi(obs), self.phi(goal))

    def project_z(self, z: torch.Tensor) -> torch.Tensor:
        return project_to_sphere(z, self.radius)

    # ---- the inference API -------------------------------------------------------------
    def sample_z(self, n: int, device: torch.device | None = None) -> torch.Tensor:
        return self.project_z(torch.randn(n, self.z_dim, device=device or self.device))

    def act(self, obs: torch.Tensor, z: torch.Tensor, mean: bool = True) -> torch.Tensor:
        mu = self.actor(obs, z)
        return mu if mean else clipped_noise_action(mu, self.cfg.actor_std, self.cfg.std_clip)

    def q_values(self, obs: torch.Tensor, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``Q_z(s, a) = ψ(s, a, z)ᵀz`` per head, ``(E, N)``."""
        return (self.successor_features(obs, z, action) * z).sum(-1)

    def _least_squares_z(self, feats: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """``√d · normalise(argmin_w ‖feats w − r‖²)`` (float64, minimum norm) → ``(1, d)``."""
        a = feats.detach().double().cpu()
        b = rewards.detach().reshape(-1, 1).double().cpu()
        w = torch.linalg.lstsq(a, b, driver="gelsd").solution.reshape(1, -1)
        return self.project_z(w.to(device=feats.device, dtype=feats.dtype))

    @torch.no_grad()
    def infer_z_from_transitions(
        self, obs: torch.Tensor, next_obs: torch.Tensor, rewards: torch.Tensor
    ) -> torch.Tensor:
        """Least squares of the rewards on the reward features ``c(s_i, s'_i)``."""
        if obs.shape != next_obs.shape:
            raise ValueError(
                f"transition states must have equal shapes, got {tuple(obs.shape)} and {tuple(next_obs.shape)}"
            )
        self._check_prompt(obs, rewards)
        self._check_prompt(next_obs)
        return self._least_squares_z(self.reward_features(obs, next_obs), rewards)

    @torch.no_grad()
    def infer_z_from_rewards(self, obs: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """Least squares of rewards observed at states ``obs`` on ``f(obs) = φ(obs) − φ̄``.

        With ``feature_type = state`` this is the exact inference (the reward features are
        ``f(s')``). With ``diff`` the features are ``f(s') − f(s)`` and need both ends
        (:meth:`infer_z_from_transitions`, which ``zsrl eval`` calls); from states alone, the
        direction ``w`` of the best linear fit ``r ≈ f(s)ᵀw`` is returned — the latent
        direction along which the reward grows, which a ``diff`` policy follows.
        """
        self._check_prompt(obs, rewards)
        return self._least_squares_z(self.features(obs), rewards)

    @torch.no_grad()
    def infer_z_from_goal(self, goal_obs: torch.Tensor, obs: torch.Tensor | None = None) -> torch.Tensor:
        """``√d · normalise(f(g) − f(s))``: the latent direction from the current state ``s``
        to the goal. ``goal_obs`` ``(obs_dim,)`` or ``(N, obs_dim)``; ``obs`` ``(N, obs_dim)``
        or ``(obs_dim,)``. Without ``obs``, the direction from the mean representation φ̄
        (``f(g)``); evaluation passes the current state at every step."""
        goal_obs = goal_obs.reshape(-1, self.obs_dim)
        self._check_prompt(goal_obs)
        z = self.features(goal_obs)
        if obs is not None:
            obs = obs.reshape(-1, self.obs_dim)
            self._check_prompt(obs)
            if goal_obs.shape[0] not in (1, obs.shape[0]):
                raise ValueError(
                    f"got {goal_obs.shape[0]} goals for {obs.shape[0]} states; pass one goal or one per state"
                )
            z = z - self.features(obs)
        return self.project_z(z)


_METRICS = (
    "loss/phi", "loss/sf", "loss/actor", "diag/v", "diag/adv", "diag/adv_positive", "diag/phi_norm",
    "diag/intrinsic_reward", "diag/psi_norm", "diag/actor_q", "diag/z_norm",
)


class HILPAgent(Agent):
    """Trains :class:`HILPModel`: one φ step, one ψ step and one actor step per update.

    Order per update (the reference's): goals and z are drawn; the reward features
    ``c(s, s')`` and the whitened mix use φ *before* its step; φ, then ψ, then the actor
    (with the updated ψ) take one optimiser step each; the φ and ψ targets and φ̄ move last.
    """

    config_class = HILPConfig
    model_class = HILPModel

    def __init__(self, obs_dim: int, action_dim: int, cfg: HILPConfig, device: torch.device):
        super().__init__(obs_dim, action_dim, cfg, device)
        m = self.model
        self.phi_target = self.add_module("phi_target", copy.deepcopy(m.phi).requires_grad_(False))
        self.sf_target = self.add_module(
            "sf_target", copy.deepcopy(m.successor_features).requires_grad_(False)
        )
        self.phi_opt = self.add_optimizer("phi_opt", m.phi.parameters(), lr=cfg.lr_phi)
        self.sf_opt = self.add_optimizer("sf_opt", m.successor_features.parameters(), lr=cfg.lr_sf)
        self.actor_opt = self.add_optimizer("actor_opt", m.actor.parameters(), lr=cfg.lr_actor)

    # ---- data --------------------------------------------------------------------------
    def sample_batch(self, dataset: Any, batch_size: int) -> TensorDict:
        """Uniform transitions plus a ``goal`` state per transition (no host sync)."""
        cfg = self.cfg
        return sample_batch_with_goals(
            dataset, batch_size, cfg.goal_from_current, cfg.goal_from_trajectory, cfg.goal_future
        )

    # ---- z -------------------------------------------------------------------------------
    def sample_training_z(self, feats: torch.Tensor) -> torch.Tensor:
        """Sphere samples, a ``mix_ratio`` fraction replaced by whitened features: ``c_p (Σ + εI)⁻¹``
        for a permutation ``p`` of the batch's reward features ``c(s, s')`` ``(N, d)`` (taken
        with ``gather``: see :meth:`FBAgent.sample_training_z` for why not indexing)."""
        n, d = feats.shape
        model = self.model
        z = model.sample_z(n, feats.device)
        perm = torch.randperm(n, device=feats.device)
        feats_p = feats.gather(0, perm[:, None].expand_as(feats))
        cov = distributed.global_mean(feats.T @ feats) / n  # over the global batch
        eps = 1e-6 * cov.diagonal().mean() + 1e-12
        chol, _ = torch.linalg.cholesky_ex(cov + eps * torch.eye(d, device=feats.device, dtype=feats.dtype))
        mixed = torch.cholesky_solve(feats_p.T, chol).T
        use_mix = torch.rand(n, 1, device=feats.device) < self.cfg.mix_ratio
        return torch.where(use_mix, model.project_z(mixed), z)

    # ---- the three steps -----------------------------------------------------------------
    def phi_loss(self, obs: torch.Tensor, next_obs: torch.Tensor, goal: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        """``L_φ`` on a batch (see :func:`goal_value_loss`)."""
        cfg = self.cfg
        success = ((obs - goal).norm(dim=-1) < SUCCESS_EPS).to(obs.dtype)
        with torch.no_grad():
            target_g = self.phi_target(goal)
            next_v_target = goal_values(self.phi_target(next_obs), target_g)
            v_target = goal_values(self.phi_target(obs), target_g)
        phi = self.model.phi(torch.cat([obs, goal]))  # (E, 2N, d): one pass for s and g
        phi_s, phi_g = phi.chunk(2, dim=1)
        v = goal_values(phi_s, phi_g)
        loss, adv = goal_value_loss(v, next_v_target, v_target, success, cfg.hilp_discount, cfg.hilp_expectile)
        return loss, {
            "loss/phi": loss.detach(),
            "diag/v": v.detach().mean(),
            "diag/adv": adv.mean(),
            "diag/adv_positive": (adv >= 0).to(adv.dtype).mean(),
            "diag/phi_norm": phi_s.detach()[0].norm(dim=-1).mean(),
        }

    def sf_loss(
        self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor, discount: torch.Tensor,
        z: torch.Tensor, feats: torch.Tensor,
    ) -> tuple[torch.Tensor, Metrics]:
        """``L_ψ``: TD on successor features with the smaller-Q target head."""
        cfg, model = self.cfg, self.model
        with torch.no_grad():
            next_a = clipped_noise_action(model.actor(next_obs, z), cfg.actor_std, cfg.std_clip)
            next_psi = self.sf_target(next_obs, z, next_a)  # (E, N, d)
            head = (next_psi * z).sum(-1).argmin(0)  # (N,)
            next_psi = next_psi.gather(0, head[None, :, None].expand(1, *next_psi.shape[1:])).squeeze(0)
            target = feats + discount[:, None] * next_psi
        psi = model.successor_features(obs, z, action)  # (E, N, d)
        q = (psi * z).sum(-1)
        if cfg.q_loss:
            loss = (q - (target * z).sum(-1)).pow(2).mean(-1).sum()
        else:
            loss = (psi - target).pow(2).mean((-2, -1)).sum()
        return loss, {"loss/sf": loss.detach(), "diag/psi_norm": psi.detach().norm(dim=-1).mean()}

    def update(self, batch: TensorDict) -> Metrics:
        cfg, model = self.cfg, self.model
        obs, action = batch["observation"], batch["action"]
        next_obs, goal = batch["next", "observation"], batch["goal"]
        discount = cfg.discount * (~batch["next", "terminated"]).to(obs.dtype)
        # φ before its step: features, z, the running mean; in float32 even under bf16 autocast
        # (the intrinsic reward is ψ's TD target, and its batch mean cancels to a small number)
        with torch.no_grad(), torch.autocast(obs.device.type, enabled=False):
            phi1_s, phi1_next = model.phi(torch.cat([obs, next_obs]))[0].chunk(2)
            f_s, f_next = phi1_s - model.phi_mean, phi1_next - model.phi_mean
            feats = f_next - f_s if cfg.feature_type == "diff" else f_next
            z = self.sample_training_z(feats)
            reward = (feats * z).sum(-1)

        phi_loss, metrics = self.phi_loss(obs, next_obs, goal)
        self.step_optimizers(phi_loss, self.phi_opt)

        sf_loss, sf_metrics = self.sf_loss(obs, action, next_obs, discount, z, feats)
        self.step_optimizers(sf_loss, self.sf_opt)

        actor_loss, q = td3_actor_loss(model.actor, model.successor_features, obs, z, cfg.actor_std, cfg.std_clip)
        self.step_optimizers(actor_loss, self.actor_opt)

        soft_update(self.phi_target, model.phi, cfg.phi_tau)
        soft_update(self.sf_target, model.successor_features, cfg.tau)
        with torch.no_grad():
            model.phi_mean.lerp_(distributed.global_mean(phi1_s.mean(0)), cfg.feature_mean_tau)
        metrics.update(sf_metrics)
        metrics.update({
            "loss/actor": actor_loss.detach(),
            "diag/intrinsic_reward": reward.mean(),
            "diag/actor_q": q.detach().mean(),
            "diag/z_norm": z.norm(dim=-1).mean(),
        })
        return {k: metrics[k] for k in _METRICS}
