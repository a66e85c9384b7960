r"""Conservative forward-backward representations: VC-FB and MC-FB.

Jeen, Bewley & Cullen, "Zero-Shot Reinforcement Learning from Low Quality Data" (NeurIPS 2024).

FB trained on a small or narrow dataset over-estimates ``F(s, a, z)`` for actions the data
never took, and ``π_z`` exploits those errors. Conservative FB adds a CQL-style penalty
(Kumar et al., 2020) to the FB loss of :class:`~zsrl.agents.fb.FBAgent` — everything else
(measure loss, orthonormality, z prior, actor, prompting, the inference model) is FB's.

**Action samples.** For each state ``s_i`` of the batch, ``K = ood_action_samples`` actions:
``K − 2⌊K/4⌋`` uniform in ``[-1, 1]^A``, ``⌊K/4⌋`` from ``π_{z_i}(s_i)`` and ``⌊K/4⌋`` from
``π_{z_i}(s'_i)`` (TD3 noise, no gradient), all evaluated at ``s_i`` as in CQL; the dataset
action ``a_i`` is the ``(K+1)``-th. (``K = 12``: 6 uniform, 3 + 3 policy.)

**VC-FB** (value-conservative) penalises ``Q_z(s, a) = F(s, a, z)ᵀ z``:

.. math:: P_{VC} = \sum_{e} \Big[ \operatorname{mean}_i \log\sum_{k \le K+1}
                   \exp Q^e_{z_i}(s_i, a_{ik}) - \operatorname{mean}_i Q^e_{z_i}(s_i, a_i) \Big]

**MC-FB** (measure-conservative) penalises the measure ``M(s, a, s'_j) = F(s, a, z)ᵀ B(s'_j)``
for every pair ``(i, j)`` of the batch:

.. math:: P_{MC} = \sum_{e} \Big[ \operatorname{mean}_{ij} \log\sum_{k \le K+1}
                   \exp F^e(s_i, a_{ik}, z_i)^\top B(s'_j) - \operatorname{mean}_{ij} M^e_{ij} \Big]

(``e`` runs over the F ensemble heads.) Because the data action is one of the ``K+1``, each
head's term is ≥ 0; it is ``log(K+1)`` when all actions are valued alike and tends to 0 as the
sampled actions fall infinitely below the data's. The F/B loss becomes ``L_FB + ortho_coef·L_ortho + α·P``.

**α.** With ``lagrange=False``, ``α`` is the constant ``alpha``. With ``lagrange=True``
(default), ``α = clamp(exp(log α), 0, 1e6)`` with ``log α`` (initialised at 0, i.e. ``α = 1``)
a trained parameter minimising ``−α·(P̂ − target_penalty)`` with its own Adam
(``lr_alpha``) on the detached penalty ``P̂`` of the same batch: ``α`` grows while the penalty
exceeds the threshold τ and shrinks below it (the dual ascent of a constraint ``P ≤ τ``).
``log α`` is a declared module/optimiser, so it is checkpointed and resumes bit-exactly.
The penalty's gradient reaches F (VC) or F and B (MC); ``α`` in the F/B loss carries none.

**Differences from the paper / its code** (zero-shot-rl ``agents/cfb``):

- the dataset action enters the log-sum-exp once, not repeated per policy sample;
- no gradient-value clamp to ±1 (use FB's ``clip_grad_norm`` if wanted) and the actor keeps
  FB's learning rate (the code uses 3e-5);
- the α loss drops the code's factor ½ (Adam is invariant to it, up to ε);
- the threshold ``target_penalty`` (50 in the code) is on the penalty summed over heads, as
  there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from zsrl.agents.fb import FBAgent, FBConfig
from zsrl.config import param
from zsrl.engine import Metrics
from zsrl.nn import clipped_noise_action


@dataclass
class CFBConfig(FBConfig):
    """FB's hyper-parameters plus the conservative penalty's (defaults: the paper's code)."""

    #: actions sampled per state: half uniform, a quarter each from π(s) and π(s')
    ood_action_samples: int = param(12, ge=1)
    #: the penalty's fixed weight when ``lagrange`` is off
    alpha: float = param(0.01, ge=0)
    #: tune α by dual ascent against ``target_penalty``
    lagrange: bool = True
    #: the threshold τ of the Lagrange constraint ``penalty ≤ τ``
    target_penalty: float = param(50.0, ge=0)
    lr_alpha: float = param(1e-4, gt=0)


@dataclass
class VCFBConfig(CFBConfig):
    name: str = "vcfb"


@dataclass
class MCFBConfig(CFBConfig):
    name: str = "mcfb"


class LogAlpha(nn.Module):
    """The Lagrange multiplier's logarithm, a module so that it is checkpointed."""

    def __init__(self) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.zeros(()))

    def forward(self) -> torch.Tensor:
        return self.value.exp().clamp(0.0, 1e6)


class CFBAgent(FBAgent):
    """FB with a conservative penalty on sampled actions (see the module docstring)."""

    config_class: ClassVar[type[CFBConfig]] = CFBConfig
    #: what is penalised: ``value`` = VC-FB (``Fᵀz``), ``measure`` = MC-FB (``FᵀB(s'_j)``)
    penalty: ClassVar[Literal["value", "measure"]] = "value"

    def __init__(self, obs_dim: int, action_dim: int, cfg: CFBConfig, device: torch.device):
        super().__init__(obs_dim, action_dim, cfg, device)
        if cfg.lagrange:
            self.log_alpha = self.add_module("log_alpha", LogAlpha())
            self.alpha_opt = self.add_optimizer("alpha_opt", self.log_alpha.parameters(), lr=cfg.lr_alpha)
            self.fb_optimizers.append(self.alpha_opt)  # stepped on the F/B step's loss

    def batch_bytes(self, batch_size: int) -> int:
        extra = (self.cfg.ood_action_samples + 1) * 3 if self.penalty == "measure" else 0  # (E, K+1, N, N)
        return super().batch_bytes(batch_size) + 4 * extra * self.cfg.num_heads * batch_size**2

    def sample_actions(self, obs: torch.Tensor, next_obs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The ``K`` sampled actions per state, ``(K, N, A)``, without gradient."""
        cfg, model = self.cfg, self.model
        k = cfg.ood_action_samples
        n_pi = k // 4
        with torch.no_grad():
            uniform = torch.rand(k - 2 * n_pi, obs.shape[0], self.action_dim, device=obs.device) * 2 - 1
            if n_pi == 0:
                return uniform
            mu = torch.stack([model.actor(obs, z), model.actor(next_obs, z)])
            mu = mu.repeat_interleave(n_pi, 0)  # (2·n_pi, N, A)
            return torch.cat([uniform, clipped_noise_action(mu, cfg.actor_std, cfg.std_clip)])

    def conservative_penalty(
        self, obs: torch.Tensor, z: torch.Tensor, f: torch.Tensor, b: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(penalty, mean log-sum-exp, mean data value)`` for sampled ``actions`` ``(K, N, A)``,
        each summed over heads; ``f = F(s, a, z)`` ``(E, N, d)`` and ``b = B(s')`` ``(N, d)``
        carry gradients."""
        f_ood = self.model.forward_map.forward_actions(obs, z, actions)  # (E, K, N, d)
        f_all = torch.cat([f_ood, f.unsqueeze(1)], 1)  # (E, K+1, N, d)
        if self.penalty == "value":
            values = (f_all * z).sum(-1)  # (E, K+1, N)
        else:
            values = f_all @ b.T  # (E, K+1, N, N)
        lse = values.logsumexp(1).flatten(1).mean(1).sum()
        data = values[:, -1].flatten(1).mean(1).sum()
        return lse - data, lse.detach(), data.detach()

    def fb_loss(
        self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor, discount: torch.Tensor,
        z: torch.Tensor,
    ) -> tuple[torch.Tensor, Metrics, torch.Tensor, torch.Tensor]:
        """FB's loss plus ``α·penalty`` and, with Lagrange, the α loss (its gradient reaches
        ``log α`` only; its optimiser is one of :attr:`fb_optimizers`)."""
        loss, metrics, f, b = super().fb_loss(obs, action, next_obs, discount, z)
        penalty, lse, data = self.conservative_penalty(obs, z, f, b, self.sample_actions(obs, next_obs, z))
        # a fixed α is filled on the device (no host→device copy inside a CUDA graph)
        alpha = self.log_alpha() if self.cfg.lagrange else torch.full_like(lse, self.cfg.alpha)
        loss = loss + alpha.detach() * penalty
        metrics.update({
            "loss/penalty": penalty.detach(),
            "diag/penalty_lse": lse,
            "diag/penalty_data": data,
            "diag/alpha": alpha.detach(),
        })
        if self.cfg.lagrange:
            alpha_loss = -alpha * (penalty.detach() - self.cfg.target_penalty)
            loss = loss + alpha_loss
            metrics["loss/alpha"] = alpha_loss.detach()
        return loss, metrics, f, b


class VCFBAgent(CFBAgent):
    """Value-conservative FB (``vcfb``)."""

    config_class = VCFBConfig
    penalty = "value"


class MCFBAgent(CFBAgent):
    """Measure-conservative FB (``mcfb``)."""

    config_class = MCFBConfig
    penalty = "measure"
