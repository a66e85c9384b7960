"""The :class:`Domain` interface: an environment, its tasks and its goals.

A domain bundles what zero-shot RL needs to know about an environment:

* ``make_env(seed)`` builds a :class:`gymnasium.Env` with a flat float32 ``Box``
  observation space and a float32 ``Box`` action space scaled to ``[-1, 1]``;
* ``tasks`` maps a task name to a *batched* reward function over stored transitions
  (see :class:`Transitions`), used to relabel a reward-free dataset and to score rollouts;
* ``goals`` maps a goal name to a goal observation, with ``goal_distance`` and
  ``goal_threshold`` defining success.

Reward functions receive float32 observations/actions (and float64 physics states for
MuJoCo domains) with a leading batch dimension and return float32 rewards of shape
``(N,)``. The reward of transition ``(s, a, s')`` is the one the environment returns for
the step that takes ``s`` to ``s'`` with action ``a``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from zsrl.utils import UserError


class UnknownTaskError(UserError, KeyError):
    """A task or goal name the domain does not define (a user mistake: no traceback in the CLI)."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0])


@dataclass(frozen=True)
class Transitions:
    """A batch of transitions as numpy arrays with a leading batch dimension ``N``."""

    observation: np.ndarray  # (N, obs_dim) float32
    action: np.ndarray  # (N, action_dim) float32, in [-1, 1]
    next_observation: np.ndarray  # (N, obs_dim) float32
    physics: np.ndarray | None = None  # (N, physics_dim) float64, MuJoCo state before
    next_physics: np.ndarray | None = None  # (N, physics_dim) float64, state after

    def __len__(self) -> int:
        return int(self.observation.shape[0])


RewardFn = Callable[[Transitions], np.ndarray]


class Domain(ABC):
    """An environment with named tasks (reward functions) and goals.

    Subclasses set ``name`` and ``episode_length`` and implement :meth:`make_env` and
    :attr:`tasks`. Everything else has a working default.
    """

    name: ClassVar[str] = ""
    episode_length: ClassVar[int] = 1000
    #: whether ``info["physics"]`` carries a simulator state worth storing for relabelling
    has_physics: ClassVar[bool] = False
    #: goal success: ``goal_distance(obs, goal) <= goal_threshold``
    goal_threshold: ClassVar[float] = 0.1

    @abstractmethod
    def make_env(self, seed: int | None = None, render_mode: str | None = None) -> gym.Env:
        """A fresh environment. ``seed`` makes its resets reproducible."""

    @property
    @abstractmethod
    def tasks(self) -> Mapping[str, RewardFn]:
        """Task name → batched reward function."""

    @property
    def goals(self) -> Mapping[str, np.ndarray]:
        """Goal name → goal observation (float32, ``(obs_dim,)``)."""
        return {}

    # ---- derived helpers -------------------------------------------------------------
    def reward(self, task: str, transitions: Transitions) -> np.ndarray:
        """Rewards of ``task`` on ``transitions``, as float32 ``(N,)``."""
        try:
            fn = self.tasks[task]
        except KeyError:
            raise UnknownTaskError(
                f"domain {self.name!r} has no task {task!r}; its tasks are: "
                f"{', '.join(self.tasks)}"
            ) from None
        rewards = np.asarray(fn(transitions), dtype=np.float32).reshape(-1)
        if rewards.shape[0] != len(transitions):
            raise ValueError(
                f"reward function for {task!r} returned {rewards.shape[0]} rewards "
                f"for {len(transitions)} transitions"
            )
        return rewards

    def goal(self, name: str) -> np.ndarray:
        try:
            return np.asarray(self.goals[name], dtype=np.float32)
        except KeyError:
            raise UnknownTaskError(
                f"domain {self.name!r} has no goal {name!r}; its goals are: "
                f"{', '.join(self.goals) or '(none)'}"
            ) from None

    def goal_distance(self, observation: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Distance between observations and goals (broadcast over leading dims)."""
        return np.linalg.norm(np.asarray(observation) - np.asarray(goal), axis=-1)

    def sample_goals(
        self, observations: np.ndarray, n: int, rng: np.random.Generator
    ) -> np.ndarray:
        """``n`` goal observations drawn uniformly from dataset observations."""
        idx = rng.integers(0, observations.shape[0], size=n)
        return np.asarray(observations[idx], dtype=np.float32)

    def features(self, observation: Any) -> Any:
        """Inputs for reward priors (FRE). The observation itself unless overridden."""
        return observation

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "episode_length": self.episode_length,
            "tasks": list(self.tasks),
            "goals": list(self.goals),
            "has_physics": self.has_physics,
        }
