"""Pieces several agents share: goal sampling (FRE's goal prior, HILP's goals) and goal
spaces (the observation coordinates FB's ``B`` and HILP's ``φ`` read).

A *goal* for a transition ``(s_i, a_i, s'_i)`` comes from one of three sources:

* **current**: the state it reaches, ``s'_i`` (probability ``p_current``);
* **trajectory**: a later state of the same episode, ``s'_{i+k}`` with
  ``k ~ Geometric(1 − γ_goal)`` clipped to the episode end (probability ``p_trajectory``);
* **random**: a uniformly drawn dataset state (the rest, ``1 − p_current − p_trajectory``).

Every draw happens on the dataset's device without a host synchronisation (categorical
draws by inverse CDF, not ``torch.multinomial``), so the samplers can run inside a
compiled or CUDA-graphed training step.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict

from zsrl.errors import UserError


def sample_categorical(probs: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` indices ``~ Categorical(probs)`` by inverse CDF (graph-safe, no host sync)."""
    cdf = probs.cumsum(0)
    u = torch.rand(n, device=probs.device) * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp_max(probs.shape[0] - 1)


def goal_position_probs(
    context_size: int, trajectory_context: int, p_current: float, p_trajectory: float
) -> torch.Tensor:
    """Probability of each position of a context to be the goal (FRE's goal prior).

    A context of ``K = context_size`` states holds the reached state at position 0, then
    ``T − 1`` future states of its trajectory (``T = trajectory_context``), then random
    states. The current / trajectory / random masses are spread uniformly over those
    positions; a source without positions gives its mass to the random ones (or, when
    there are none, the distribution is renormalised).
    """
    k, t = context_size, trajectory_context
    p = torch.zeros(k)
    p[0] = p_current
    p_rand = 1.0 - p_current - p_trajectory
    if t > 1:
        p[1:t] = p_trajectory / (t - 1)
    else:
        p_rand += p_trajectory
    if k > t:
        p[t:] = p_rand / (k - t)
    if p.sum() <= 0:
        p[0] = 1.0
    return p / p.sum()


def sample_goal_indices(
    dataset: Any, idx: torch.Tensor, p_current: float, p_trajectory: float, discount: float
) -> torch.Tensor:
    """Dataset indices whose ``next/observation`` is the goal of transition ``idx`` (HILP).

    Per transition: ``idx`` itself (its reached state) w.p. ``p_current``, a future
    transition of its episode (``dataset.sample_future(idx, discount)``) w.p.
    ``p_trajectory``, a uniform dataset index otherwise.
    """
    u = torch.rand(idx.shape, device=idx.device)
    future = dataset.sample_future(idx, discount)
    random = torch.randint(len(dataset), idx.shape, device=idx.device)
    return torch.where(u < p_current, idx, torch.where(u < p_current + p_trajectory, future, random))


def sample_batch_with_goals(
    dataset: Any, batch_size: int, p_current: float, p_trajectory: float, discount: float
) -> TensorDict:
    """Uniform transitions (observation, action, next observation and terminal flag) plus a
    ``goal`` state per transition drawn by :func:`sample_goal_indices` (HILP's goals, FB's
    hindsight goals); no host sync once ``dataset.episode_end`` exists (``Agent.setup``)."""
    idx = dataset.sample_indices(batch_size)
    goal_idx = sample_goal_indices(dataset, idx, p_current, p_trajectory, discount)
    data = dataset.data
    next_obs = data["next", "observation"]
    return TensorDict(
        {
            "observation": data["observation"][idx],
            "action": data["action"][idx],
            "next": {"observation": next_obs[idx], "terminated": data["next", "terminated"][idx]},
            "goal": next_obs[goal_idx],
        },
        batch_size=[batch_size],
        device=next_obs.device,
    )


def goal_dims_index(dims: list[int] | None, obs_dim: int, key: str = "goal_dims") -> torch.Tensor | None:
    """``agent.<key>`` (observation coordinates, ``goal_dims`` by default) as an index tensor
    (``None``: every coordinate), validated."""
    if dims is None:
        return None
    if not dims or min(dims) < 0 or max(dims) >= obs_dim:
        raise UserError(f"agent.{key}={dims} must be indices of the {obs_dim} observation coordinates")
    return torch.tensor(dims)
