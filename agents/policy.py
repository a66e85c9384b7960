"""A prompted policy: what :meth:`zsrl.agents.base.Model.prompt` returns.

A :class:`Policy` holds one task embedding (or a goal) and acts on observations — one
``(obs_dim,)`` or a batch ``(N, obs_dim)``, numpy or torch, answered in kind — keeping the
per-episode state the method needs: the held action of a model trained with
``agent.action_repeat = k`` (a new decision every ``k`` steps of each environment); for
models whose goal embedding depends on the state (HILP) the goal, from which ``z`` is inferred
again at every decision; and for models with memory (:mod:`zsrl.agents.memory`) the rolling
window of the last ``L`` frames ``(o, a_prev)``, one per decision, started at an episode's first
observation as ``L`` copies with zero actions. It drops into a plain gymnasium loop, and :meth:`Policy.predict` has
stable-baselines3's signature.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class Policy:
    """``π_z`` of a model for one prompt (see the module docstring).

    Args:
        model: the prompted :class:`~zsrl.agents.base.Model`.
        z: the task embedding ``(1, z_dim)``; None: inferred from ``goal``.
        goal: a goal observation ``(obs_dim,)`` (``z`` is inferred from it, at every decision
            when the model's goal embedding depends on the state).
    """

    def __init__(self, model: Any, z: torch.Tensor | None = None, goal: torch.Tensor | None = None):
        if z is None and goal is None:
            raise ValueError("a policy needs a task embedding z or a goal")
        self.model, self.goal = model, goal
        self.z = model.infer_z_from_goal(goal) if z is None else z.reshape(1, -1)
        self.repeat = int(model.action_repeat)
        self.length = int(model.history_length)
        self._held: torch.Tensor | None = None  # (N, action_dim): the action of each env's last decision
        self._age = np.zeros(0, dtype=np.int64)  # steps since each env's last decision
        self._window: torch.Tensor | None = None  # (N, L, obs_dim + action_dim): models with memory
        self._fresh = np.zeros(0, dtype=bool)  # envs whose episode has not taken a decision yet

    def reset(self, done: Any = None) -> None:
        """Start new episodes: of every environment, or of those where ``done`` (a boolean
        mask over the batch) is true; their next step takes a fresh decision."""
        if done is None:
            self._held, self._age = None, np.zeros(0, dtype=np.int64)
        elif self._held is not None:
            done = np.asarray(done, dtype=bool).reshape(-1)
            self._age[done] = 0
            self._fresh[done] = True

    @torch.no_grad()
    def act(self, obs: Any) -> Any:
        """Actions in ``[-1, 1]`` for ``obs`` ``(obs_dim,)`` or ``(N, obs_dim)``, numpy or torch."""
        model = self.model
        is_torch = isinstance(obs, torch.Tensor)
        x = torch.as_tensor(obs, dtype=torch.float32, device=model.device)
        single = x.dim() == 1
        x = x.reshape(-1, model.obs_dim)
        n = x.shape[0]
        if self._held is None or self._held.shape[0] != n:
            self._held, self._age = torch.zeros(n, model.action_dim, device=model.device), np.zeros(n, dtype=np.int64)
            self._fresh = np.ones(n, dtype=bool)
            if self.length:
                self._window = torch.zeros(n, self.length, model.obs_dim + model.action_dim, device=model.device)
        decide = self._age % self.repeat == 0
        if decide.any():
            rows = torch.as_tensor(np.flatnonzero(decide), device=model.device)
            states = x[rows]
            if self.goal is not None and model.goal_z_depends_on_obs:
                z = model.infer_z_from_goal(self.goal.expand(len(rows), -1), states)
            else:
                z = self.z.expand(len(rows), -1)
            inputs = states if self._window is None else self._push(decide, rows, states)
            self._held[rows] = model.act(inputs, z, mean=True)
        self._age += 1
        action = self._held.clone()
        action = action[0] if single else action
        return action if is_torch else action.cpu().numpy()

    __call__ = act

    def _push(self, decide: np.ndarray, rows: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """The windows of the deciding envs ``rows`` moved on by the frame ``(obs, last action)``
        (an episode's first decision: ``L`` copies of ``(obs, 0)``)."""
        fresh = torch.as_tensor(self._fresh[decide], device=obs.device)[:, None]
        frame = torch.cat([obs, self._held[rows] * ~fresh], -1)[:, None]  # (n, 1, obs + action)
        window = self._window[rows]
        moved = torch.cat([window[:, 1:], frame], 1)
        self._window[rows] = torch.where(fresh[:, :, None], frame.expand_as(window), moved)
        self._fresh[decide] = False
        return self._window[rows]

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None,
                deterministic: bool = True) -> tuple[Any, Any]:
        """stable-baselines3's ``predict``: ``(action, state)``; ``episode_start`` marks the
        environments whose episode just began."""
        if episode_start is not None:
            self.reset(episode_start)
        return self.act(observation), state
