r"""Forward-backward (FB) representations.

Touati & Ollivier, "Learning One Representation to Optimize All Rewards" (NeurIPS 2021);
Touati, Rapin & Ollivier, "Does Zero-Shot Reinforcement Learning Exist?" (ICLR 2023). The
anchor is metamotivo's ``FBAgent`` (facebookresearch/metamotivo).

FB learns ``F(s, a, z) ∈ R^d`` and ``B(s') ∈ R^d`` such that the successor measure of the
policy ``π_z`` factorises as ``M^{π_z}(s, a, ds') ≈ F(s, a, z)ᵀ B(s') ρ(ds')`` for the data
distribution ρ. For any reward ``r``, ``z_r = E_ρ[r(s') B(s')]`` then makes
``Q_r(s, a) = F(s, a, z_r)ᵀ z_r`` the Q-function of ``π_{z_r}``, and ``π_z`` is trained to
maximise ``F(s, a, z)ᵀ z``: one pretraining serves every reward.

**Measure loss** on a batch of ``N`` transitions, the batch's next states as goals:

.. math::

   M_{ij} &= F(s_i, a_i, z_i)^\top B(s'_j), \qquad
   \bar M_{ij} = \bar F(s'_i, a'_i, z_i)^\top \bar B(s'_j), \quad a'_i \sim \pi_{z_i}(s'_i) \\
   \Delta &= M - \gamma (1 - d_i) \bar M, \qquad
   L_{FB} = \tfrac12 \operatorname{mean}_{i \ne j} \Delta_{ij}^2 - \operatorname{mean}_i \Delta_{ii}

summed over F's heads, with ``F̄`` averaged over heads. **Orthonormality** of B under ρ, so
that the coordinates of ``z`` are identifiable:
``L_ortho = ½ mean_{i≠j} (B_iᵀB_j)² − mean_i B_iᵀB_i``. F and B minimise
``L_FB + ortho_coef · L_ortho``.

**z prior**: ``z = √d · u``, ``u`` uniform on the unit sphere; a fraction ``mix_ratio`` of
the batch uses ``z = √d · B(g)/‖B(g)‖`` for goal states ``g`` instead: random dataset states,
or with probability ``goal_from_trajectory`` a state the transition's own trajectory reaches
later, ``g = s'_{i+k}``, ``k ~ Geometric(1 − goal_future)`` rows (hindsight goals).

**Actor** (TD3): ``a = π(s, z) + clip(ε σ, ±c)``, maximising ``min_heads F(s, a, z)ᵀ z``
(``actor_reduction="mean"``: the heads' mean).

**Prompting**: ``z = √d · normalise(Σ_i r_i B(s'_i))`` for reward samples,
``z = √d · normalise(B(g))`` for a goal ``g``.

Extensions, each off unless a preset turns it on (the maze CPU preset uses them all):

* **Goal space** (``goal_dims``): B reads those observation coordinates only (the maze's
  position), so it generalises across the others (the velocities).
* **Standardised inputs** (``normalize_obs``): every network reads
  ``s̄ = clamp((s − μ)/σ, ±10)`` with the dataset's statistics. The input blocks are
  Linear → LayerNorm → tanh, and LayerNorm is blind to coordinates whose scale is tiny next to
  the rest of its input (metres next to ``‖z‖ = √d``).
* **Myopic term** (``myopic_coef`` = λ). One action moves ``Q`` by about ``1 − γ`` of its
  scale, so near a goal F's ``Q`` is nearly flat. A one-step predictor
  ``P(s, a) ≈ E[B(s') | s, a]``, regressed on the online ``B(s')`` held fixed
  (``L_P = ½ mean ‖P(s, a) − B(s')‖²``), adds the distance from the next decision's direction
  in B's embedding to the task's: the actor maximises
  ``min_heads F(s, a, z)ᵀz − λ d ‖P̂(s, a) − ẑ‖``, ``x̂ = x/‖x‖``. The next reward
  ``B(s')ᵀz = d cos θ`` is flat at its peak; ``‖P̂ − ẑ‖ = 2 sin(θ/2)`` keeps its slope up to
  the goal. ``P`` is training state only: the exported model is unchanged.
* **Joint update** (``joint_update``): the actor's loss reads F (and P) as they are *before*
  the update's F/B step, so one backward pass of the summed losses steps F, B, P and the
  actor (disjoint parameters), as JAX agents do; the default (metamotivo's order) steps the
  actor on the F the F/B step just changed.
* Held actions (``action_repeat``) and averaged weights (``ema_decay``) are every agent's.

Differences from metamotivo (weights copied in, same batch, z and noise: losses, gradients
and Adam steps agree to float32 rounding):

* the noisy actions of the actor loss and of the target are clamped to ``[−1, 1]`` (TD3);
  metamotivo clamps to ``±(1 − 10⁻⁶)`` and passes the gradient straight through to the
  unclamped action, so a saturated action still learns;
* F's ensemble layers (and every other layer) are initialised orthogonally with gain 1;
  metamotivo initialises the ensemble layers with gain √2 (``calculate_gain("relu")``), F
  2.6× larger at init. Measured on the maze and walker CPU presets, 3 seeds: neither alone
  did better; together, higher walker returns but fewer goals (docs/results.md §25);
* the actor's ``min`` over heads is metamotivo's ``mean − ½ · uncertainty`` only for two
  heads; for more, metamotivo's uncertainty is the mean pairwise ``|Q_i − Q_j|``;
* the z mix draws goals from the batch's next states (metamotivo: its ``goal`` key, the same
  states in its DMC example), and optionally hindsight goals;
* one Adam for F and B with two parameter groups (metamotivo: two Adams; the same steps).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from tensordict import TensorDict
from torch import nn

from zsrl import distributed
from zsrl.agents.base import Agent, Model
from zsrl.agents.goals import goal_dims_index, sample_batch_with_goals
from zsrl.agents.skill import Actor, ForwardMap, SkillPolicyConfig, input_norm, td3_actor_loss
from zsrl.config import param
from zsrl.engine import Metrics, compiled_region
from zsrl.nn import call_frozen, clipped_noise_action, mlp, project_to_sphere, soft_update


@dataclass
class FBConfig(SkillPolicyConfig):
    """FB hyper-parameters (defaults: metamotivo's DMC settings)."""

    name: str = "fb"
    backward_hidden_dim: int = param(256, ge=1)
    backward_layers: int = param(2, ge=1)
    lr_f: float = param(1e-4, gt=0)
    lr_b: float = param(1e-4, gt=0)
    ortho_coef: float = param(1.0, ge=0)
    #: how the actor's objective combines the heads' ``Q = F(s, a, z)ᵀz``: the pessimistic
    #: min (metamotivo's, TD3's) or their mean
    actor_reduction: Literal["min", "mean"] = "min"
    #: fraction of the goal z's (the ``mix_ratio`` part) taken from a later state of the
    #: transition's own trajectory (hindsight goals) instead of a random dataset state
    goal_from_trajectory: float = param(0.0, ge=0, le=1)
    #: geometric discount (per dataset row) of the offset of trajectory goals
    goal_future: float = param(0.99, gt=0, lt=1)
    #: weight λ of the myopic term ``−λ d ‖P̂(s, a) − ẑ‖`` in the actor's objective; 0 = off
    myopic_coef: float = param(0.0, ge=0)
    #: one backward pass for the F/B and actor losses, the actor reading F before this
    #: update's F/B step; off: the actor steps after F/B, on the updated F (metamotivo)
    joint_update: bool = False
    #: the goal space: observation coordinates that ``B`` reads (``None``: all of them)
    goal_dims: list[int] | None = None

    #: options removed since zsrl 0.1, and the value each behaved as when off
    retired: ClassVar[dict[str, Any]] = {
        "weight_decay": 0.0, "target_reduction": "mean", "q_loss_coef": 0.0, "aux_z_dim": 0, "aux_dims": None,
    }


class BackwardMap(nn.Module):
    """``B(s) = √d · b(s̄_g)/‖b(s̄_g)‖``: an MLP ``b`` (LayerNorm+tanh input block) of the
    (optionally standardised) observation's goal coordinates ``s̄_g`` (``goal_dims``)."""

    def __init__(self, obs_dim: int, cfg: FBConfig):
        super().__init__()
        self.norm = input_norm(obs_dim, cfg.normalize_obs)
        self.register_buffer("goal_dims", goal_dims_index(cfg.goal_dims, obs_dim), persistent=False)
        in_dim = obs_dim if cfg.goal_dims is None else len(cfg.goal_dims)
        self.net = mlp(in_dim, [cfg.backward_hidden_dim] * cfg.backward_layers, cfg.z_dim)
        self.radius = math.sqrt(cfg.z_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        obs = self.norm(obs)
        if self.goal_dims is not None:
            obs = obs.index_select(-1, self.goal_dims)
        return project_to_sphere(self.net(obs), self.radius)


class OneStepB(nn.Module):
    """The myopic term's ``P(s, a) ≈ E[B(s') | s, a]``: an MLP (two hidden layers of
    ``hidden_dim``, LayerNorm+tanh input block) of the (standardised) state and the action."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: FBConfig):
        super().__init__()
        self.norm = input_norm(obs_dim, cfg.normalize_obs)
        self.net = mlp(obs_dim + action_dim, [cfg.hidden_dim] * 2, cfg.z_dim)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([self.norm(obs), action], -1))


class FBModel(Model):
    """Inference side of FB: ``forward_map``, ``backward_map``, ``actor`` and prompting."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: FBConfig):
        super().__init__(obs_dim, action_dim, cfg)
        self.forward_map = self.reading_observations("forward", lambda d, c: ForwardMap(d, action_dim, c))
        self.backward_map = self.reading_observations("backward", BackwardMap)
        self.actor = self.reading_observations("actor", lambda d, c: Actor(d, action_dim, c))
        self.radius = math.sqrt(cfg.z_dim)

    def reading_observations(self, role: str, build: Callable[[int, FBConfig], nn.Module]) -> nn.Module:
        """The network ``build(obs_dim, cfg)`` that reads observations in ``role`` (``forward``,
        ``backward`` or ``actor``): the seam where FB with memory (:mod:`zsrl.agents.memory`)
        puts a history encoder in front of each network."""
        return build(self.obs_dim, self.cfg)

    def project_z(self, z: torch.Tensor) -> torch.Tensor:
        return project_to_sphere(z, self.radius)

    def sample_z(self, n: int, device: torch.device | None = None) -> torch.Tensor:
        return self.project_z(torch.randn(n, self.z_dim, device=device or self.device))

    def act(self, obs: torch.Tensor, z: torch.Tensor, mean: bool = True) -> torch.Tensor:
        mu = self.actor(obs, z)
        return mu if mean else clipped_noise_action(mu, self.cfg.actor_std, self.cfg.std_clip)

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
        return self.project_z(self.backward_map(goal_obs))


class FBAgent(Agent):
    """Trains :class:`FBModel`. One :meth:`update`: draw z; one step of F and B (and P) on
    :meth:`fb_objective`; one step of the actor on :meth:`actor_loss`; Polyak targets.

    :meth:`fb_objective`, :meth:`actor_loss` and :meth:`joint_objective` (both in one) are
    the compile regions. A variant overrides :meth:`fb_loss` to add a term (conservative FB)
    and appends its optimisers to :attr:`fb_optimizers`.
    """

    config_class = FBConfig
    model_class = FBModel

    def __init__(self, obs_dim: int, action_dim: int, cfg: FBConfig, device: torch.device):
        super().__init__(obs_dim, action_dim, cfg, device)
        m = self.model
        self.forward_target = self.add_module("forward_target", copy.deepcopy(m.forward_map).requires_grad_(False))
        self.backward_target = self.add_module("backward_target", copy.deepcopy(m.backward_map).requires_grad_(False))
        self.fb_opt = self.add_optimizer("fb_opt", [
            {"params": m.forward_map.parameters(), "lr": cfg.lr_f},
            {"params": m.backward_map.parameters(), "lr": cfg.lr_b},
        ])
        self.actor_opt = self.add_optimizer("actor_opt", m.actor.parameters(), lr=cfg.lr_actor)
        #: the optimisers stepped on :meth:`fb_objective`'s loss (disjoint parameters)
        self.fb_optimizers: list[torch.optim.Optimizer] = [self.fb_opt]
        self.next_b: nn.Module | None = None
        if cfg.myopic_coef > 0:
            self.next_b = self.add_module(
                "next_b", m.reading_observations("forward", lambda d, c: OneStepB(d, action_dim, c)))
            self.fb_optimizers.append(self.add_optimizer("next_b_opt", self.next_b.parameters(), lr=cfg.lr_f))

    def batch_bytes(self, batch_size: int) -> int:
        """The ``(E, N, N)`` measure, its target, difference and gradients: about ``6 E N²``
        floats (MC-FB's penalty, ``K + 1`` of them more)."""
        return 4 * 6 * self.cfg.num_heads * batch_size**2

    def sample_batch(self, dataset: Any, batch_size: int) -> TensorDict:
        """Uniform transitions; with hindsight goals, plus each one's ``goal`` state."""
        if self.cfg.goal_from_trajectory == 0:
            return dataset.sample(batch_size)
        return sample_batch_with_goals(dataset, batch_size, 0.0, self.cfg.goal_from_trajectory, self.cfg.goal_future)

    def update(self, batch: TensorDict) -> Metrics:
        obs, action, next_obs = batch["observation"], batch["action"], batch["next", "observation"]
        terminated, goal = batch["next", "terminated"], batch.get("goal")
        if self.cfg.joint_update:
            loss, metrics = self.joint_objective(obs, action, next_obs, terminated, goal)
            self.step_optimizers(loss, *self.fb_optimizers, self.actor_opt)
        else:
            z = self.sample_training_z(next_obs, goal)
            fb_loss, metrics = self.fb_objective(obs, action, next_obs, terminated, z)
            self.step_optimizers(fb_loss, *self.fb_optimizers)
            actor_loss, actor_metrics = self.actor_loss(obs, z)  # on the updated F
            self.step_optimizers(actor_loss, self.actor_opt)
            metrics = {**metrics, **actor_metrics}
        soft_update(self.forward_target, self.model.forward_map, self.cfg.tau)
        soft_update(self.backward_target, self.model.backward_map, self.cfg.tau)
        return metrics

    def sample_training_z(self, next_obs: torch.Tensor, goal: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, d)``: sphere samples, a ``mix_ratio`` fraction replaced by ``B(g)`` of the
        batch's ``goal`` states, or of its permuted next states.

        The permutation is taken with ``gather``: ``x[torch.randperm(n)]`` trips inductor's
        ``randperm_index`` rewrite (torch 2.11–2.13) and crashes ``train.compile``.
        """
        n = next_obs.shape[0]
        z = self.model.sample_z(n, next_obs.device)
        if goal is None:
            perm = torch.randperm(n, device=next_obs.device)
            goal = next_obs.gather(0, perm.view(-1, *[1] * (next_obs.dim() - 1)).expand_as(next_obs))
        with torch.no_grad():
            goal_z = self.model.backward_map(goal)
        use_goal = torch.rand(n, 1, device=next_obs.device) < self.cfg.mix_ratio
        return torch.where(use_goal, goal_z, z)

    def fb_loss(
        self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor, discount: torch.Tensor,
        z: torch.Tensor,
    ) -> tuple[torch.Tensor, Metrics, torch.Tensor, torch.Tensor]:
        """``L_FB + ortho_coef · L_ortho`` → ``(loss, metrics, F(s, a, z), B(s'))``, the last
        two with their gradients (for a variant's extra term).

        Under data parallelism (:mod:`zsrl.distributed`) this rank's ``n`` rows meet the
        ``N`` columns of the global batch: ``B(s')`` is the global batch's ``(N, d)``, the
        diagonal starts at this rank's row offset, and the means are over the global pairs.
        """
        cfg, model = self.cfg, self.model
        n = obs.shape[0]
        with torch.no_grad():  # the target measure M̄ = mean_heads F̄(s', a', z) B̄(s')ᵀ
            next_action = clipped_noise_action(model.actor(next_obs, z), cfg.actor_std, cfg.std_clip)  # (n, A)
            target_f = self.forward_target(next_obs, z, next_action)  # (E, n, d)
            target_b = distributed.gather_rows(self.backward_target(next_obs))  # (N, d)
            target_m = target_f.mean(0) @ target_b.T  # (n, N)
        f = model.forward_map(obs, z, action)  # (E, n, d)
        b = distributed.gather_rows(model.backward_map(next_obs))  # (N, d)
        m = f @ b.T  # (E, n, N): M_ij = F(s_i, a_i, z_i)ᵀB(s'_j)
        total, offset = b.shape[0], distributed.row_offset(n)  # global batch; column of row 0
        diff = m - discount.view(1, -1, 1) * target_m.unsqueeze(0)  # (E, n, N): Δ = M − γ(1−d)M̄
        diff_diag = diff.diagonal(offset, dim1=-2, dim2=-1)  # (E, n): Δ_ii
        fb_offdiag = 0.5 * (diff.pow(2).sum() - diff_diag.pow(2).sum()) / (n * (total - 1))
        fb_diag = -diff_diag.mean(-1).sum()
        fb = fb_offdiag + fb_diag  # L_FB, summed over heads
        cov = b.narrow(0, offset, n) @ b.T  # (n, N): B_iᵀB_j
        cov_diag = cov.diagonal(offset)
        ortho_offdiag = 0.5 * (cov.pow(2).sum() - cov_diag.pow(2).sum()) / (n * (total - 1))
        ortho_diag = -cov_diag.mean()
        ortho = ortho_offdiag + ortho_diag  # L_ortho
        with torch.no_grad():
            m_diag = m.diagonal(offset, dim1=-2, dim2=-1).mean()
            metrics = {
                "loss/fb": fb.detach(),
                "loss/fb_offdiag": fb_offdiag.detach(),
                "loss/fb_diag": fb_diag.detach(),
                "loss/ortho": ortho.detach(),
                "loss/ortho_offdiag": ortho_offdiag.detach(),
                "loss/ortho_diag": ortho_diag.detach(),
                "diag/M_diag": m_diag,
                "diag/M_offdiag": (m.mean() * total - m_diag) / (total - 1),
            }
        loss = fb + cfg.ortho_coef * ortho
        return loss, metrics, f, b

    @compiled_region
    def fb_objective(
        self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor, terminated: torch.Tensor,
        z: torch.Tensor,
    ) -> tuple[torch.Tensor, Metrics]:
        """:meth:`fb_loss`, plus ``P``'s regression ``L_P`` where the myopic term is on (its
        own parameters: one backward pass serves both), and B's diagnostics."""
        discount = self.cfg.discount * (~terminated).to(obs.dtype)
        loss, metrics, f, b = self.fb_loss(obs, action, next_obs, discount, z)
        f, b = f.detach(), b.detach()  # b: the global batch's B(s') (this rank's rows at its offset)
        with torch.no_grad():
            cov = b.T @ b / b.shape[0]  # (d, d); the identity when B is orthonormal under ρ
            eff_rank = cov.diagonal().sum().square() / cov.square().sum()  # participation ratio
            cov.diagonal().sub_(1.0)
            metrics.update({
                "diag/orth_linf": cov.abs().max(),
                "diag/B_eff_rank": eff_rank,
                "diag/B_norm": b.norm(dim=-1).mean(),
                "diag/F_norm": f.norm(dim=-1).mean(),
                "diag/z_norm": z.norm(dim=-1).mean(),
            })
        if self.next_b is not None:
            own_b = b.narrow(0, distributed.row_offset(obs.shape[0]), obs.shape[0])
            next_b_loss = 0.5 * (self.next_b(obs, action) - own_b).pow(2).sum(-1).mean()
            loss = loss + next_b_loss
            metrics["loss/next_b"] = next_b_loss.detach()
        return loss, metrics

    @compiled_region
    def actor_loss(self, obs: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        """``−mean min_heads F(s, a, z)ᵀz`` with ``a = π(s, z) + clipped noise``, plus
        ``myopic_coef · d · mean ‖P̂(s, a) − ẑ‖`` where the myopic term is on."""
        cfg, model = self.cfg, self.model
        loss, q = td3_actor_loss(
            model.actor, model.forward_map, obs, z, cfg.actor_std, cfg.std_clip,
            bonus=self.myopic_bonus(obs, z), reduction=cfg.actor_reduction,
        )
        metrics = {"loss/actor": loss.detach(), "diag/actor_q": q.mean().detach()}
        if self.next_b is not None:  # mean ‖P̂ − ẑ‖, from −loss = mean(q − λ d ‖P̂ − ẑ‖)
            metrics["diag/actor_next_dist"] = ((loss + q.mean()) / (cfg.myopic_coef * cfg.z_dim)).detach()
        return loss, metrics

    def myopic_bonus(self, obs: torch.Tensor, z: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``a ↦ −λ d ‖P̂(s, a) − ẑ‖`` (``P`` frozen: the gradient reaches the action only)."""
        next_b, coef = self.next_b, self.cfg.myopic_coef * self.cfg.z_dim
        if next_b is None:
            return None
        return lambda action: -coef * chord_distance(call_frozen(next_b, obs, action), z)

    @compiled_region
    def joint_objective(
        self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor, terminated: torch.Tensor,
        goal: torch.Tensor | None,
    ) -> tuple[torch.Tensor, Metrics]:
        """:meth:`fb_objective` plus :meth:`actor_loss` on the F before the step, for z's drawn
        inside the region (on a CPU its forward pass of B is compiled too)."""
        z = self.sample_training_z(next_obs, goal)
        fb_loss, metrics = self.fb_objective(obs, action, next_obs, terminated, z)
        actor_loss, actor_metrics = self.actor_loss(obs, z)
        return fb_loss + actor_loss, {**metrics, **actor_metrics}


def chord_distance(u: torch.Tensor, v: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    """``√(‖û − v̂‖² + eps²)`` over the last dimension, ``x̂ = x/‖x‖``: the distance between
    the directions of ``u`` and ``v`` (``2 sin(θ/2)``), smoothed at 0 so its gradient stays
    finite where they meet."""
    return ((project_to_sphere(u, 1.0) - project_to_sphere(v, 1.0)).pow(2).sum(-1) + eps**2).sqrt()
