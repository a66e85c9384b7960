"""The :class:`Domain` interface: an environment, its tasks and its goals.

A domain bundles what zero-shot RL needs to know about an environment:

* ``make_env(seed)`` builds a :class:`gymnasium.Env` with a flat float32 ``Box``
  observation space and a float32 ``Box`` action space scaled to ``[-1, 1]``;
* ``tasks`` maps a task name to a *batched* reward function over stored transitions
  (see :class:`Transitions`), used to relabel a reward-free dataset and to score rollouts;
* ``goals`` maps a goal name to a goal observation, with ``goal_distance`` and
  ``goal_threshold`` defining success.

Reward functions (:data:`RewardFn`) receive float32 observations/actions (and float64
physics states for MuJoCo domains) with a leading batch dimension and return float32 rewards
of shape ``(N,)``. The reward of transition ``(s, a, s')`` is the one the environment returns
for the step that takes ``s`` to ``s'`` with action ``a``. Users usually write the simpler
form ``f(obs, action, next_obs)`` (:data:`ArrayRewardFn`); :func:`reward_from_arrays` turns
it into a :data:`RewardFn`.

Optional hooks, each with a default on :class:`Domain` (override what your domain has):

* goal space — ``goals``, ``goal_distance``, ``goal_threshold``, ``goal_dwell_steps``;
  or ship a goal file (``goals_file``, ``goal_dims``: see
  :mod:`zsrl.envs.goals`) and get five dataset goals with a standardised distance. Every goal
  ``g`` also is a dense task ``dense_<g>`` (``r = −goal_distance(s', g)``) in :attr:`all_tasks`;
* features — ``features(obs)``, the inputs of reward priors (FRE);
* a task-specific env — ``make_task_env(task, seed, render_mode)``, whose own reward (and
  drawn scene) is the task's;
* collection episodes of another length — ``make_collection_env(seed, episode_length)``,
  and ``collection_episode_length``, the length collectors use by default;
* rendering — ``make_render_env(seed, task, size)`` for videos, and a floor plan for
  pictures of paths and coverage: ``has_layout``, ``draw_layout(ax)``, ``coverage(obs)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from zsrl.data import RewardFn, Transitions, checked_rewards
from zsrl.errors import UnknownTaskError, UserError

from .goals import GoalSet

#: prefix of the dense task of each goal: ``dense_<goal>``
DENSE_PREFIX = "dense_"




class Domain(ABC):
    """An environment with named tasks (reward functions) and goals.

    Subclasses set ``name`` and ``episode_length`` and implement :meth:`make_env` and
    :attr:`tasks`. Everything else is an optional hook with a working default (see the
    module docstring).
    """

    name: ClassVar[str] = ""
    episode_length: ClassVar[int] = 1000
    #: whether ``info["physics"]`` carries a simulator state worth storing for relabelling
    has_physics: ClassVar[bool] = False
    #: within a goal: ``goal_distance(obs, goal) <= goal_threshold``
    goal_threshold: ClassVar[float] = 0.1
    #: goal success: 0 — the episode's final state is within the goal; ``k > 0`` — at least
    #: ``k`` of its states are. kvfrans/fre's ExORL evaluation asks for 101 of 1000 steps
    #: (``clip_margin=100`` in experiment/run_fre.py, action repeat 1); zsrl's DMC domains 200
    goal_dwell_steps: ClassVar[int] = 0
    #: the dwell rule of the protocol a domain's goals come from, reported beside
    #: :attr:`goal_dwell_steps` (kvfrans/fre's ExORL evaluation: 101); None: none reported
    reference_goal_dwell_steps: ClassVar[int | None] = None
    #: a goal file (:mod:`zsrl.envs.goals`): its goals and σ define ``goals`` and ``goal_distance``
    goals_file: ClassVar[Path | None] = None
    #: the observation coordinates a goal file's distance compares (None: all)
    goal_dims: ClassVar[tuple[int, ...] | None] = None
    #: whether :meth:`draw_layout` draws a floor plan in the plane of ``obs[..., :2]``
    has_layout: ClassVar[bool] = False
    #: steps per episode when collecting reward-free data (``None``: :attr:`episode_length`).
    #: Undirected exploration only gets as far from the start states as one episode lets it;
    #: a domain whose episodes never end early and always start in one region (the maze) sets
    #: a longer one. ``zsrl collect --episode-length`` overrides it.
    collection_episode_length: ClassVar[int | None] = None
    #: the collector ``zsrl collect`` and ``zsrl pipeline`` use unless told otherwise
    default_collector: ClassVar[str] = "rnd"
    #: the observation coordinates that are positions: what the ``+occluded`` variant keeps
    #: (:mod:`zsrl.envs.pomdp`; None: the domain has no occluded variant)
    position_dims: ClassVar[tuple[int, ...] | None] = None
    #: the variant's name (``walker+flickering``; "" for the domain itself), what its agents see
    #: of an observation (an :class:`~zsrl.envs.pomdp.Observer`; None: the true state) and its
    #: dynamics multiplier, all set by :func:`~zsrl.envs.pomdp.partially_observed`
    variant: str = ""
    observer: Any = None
    dynamics: float = 1.0

    @abstractmethod
    def make_env(self, seed: int | None = None, render_mode: str | None = None) -> gym.Env:
        """A fresh environment. ``seed`` makes its resets reproducible."""

    @property
    @abstractmethod
    def tasks(self) -> Mapping[str, RewardFn]:
        """Task name → batched reward function."""

    @property
    def goals(self) -> Mapping[str, np.ndarray]:
        """Goal name → goal observation (float32, ``(obs_dim,)``): the goal file's, if any."""
        return {} if self.goal_set is None else self.goal_set.observations

    @cached_property
    def goal_set(self) -> GoalSet | None:
        """The goals shipped in :attr:`goals_file`, read once (None without a file)."""
        if self.goals_file is None:
            return None
        return GoalSet.load(self.goals_file, self.name)

    @property
    def goal_tasks(self) -> Mapping[str, RewardFn]:
        """``dense_<goal>`` → ``r(s, a, s') = −goal_distance(s', goal)``, one per goal."""
        return {f"{DENSE_PREFIX}{goal}": DenseGoalReward(self, goal) for goal in self.goals}

    @property
    def all_tasks(self) -> Mapping[str, RewardFn]:
        """:attr:`tasks` (the benchmark's) and :attr:`goal_tasks`: every task a run can name."""
        return {**self.tasks, **self.goal_tasks}

    def goal_of_task(self, task: str) -> str | None:
        """The goal whose dense task is ``task``, else None."""
        goal = task.removeprefix(DENSE_PREFIX)
        return goal if task.startswith(DENSE_PREFIX) and goal in self.goals else None

    # ---- derived helpers -------------------------------------------------------------
    def reward(self, task: str, transitions: Transitions) -> np.ndarray:
        """Rewards of ``task`` (one of :attr:`all_tasks`) on ``transitions``, float32 ``(N,)``."""
        tasks = self.all_tasks
        try:
            fn = tasks[task]
        except KeyError:
            raise UnknownTaskError(
                f"domain {self.name!r} has no task {task!r}; its tasks are: "
                f"{', '.join(tasks)}"
            ) from None
        return checked_rewards(fn(transitions), len(transitions), f"the reward function of {task!r}")

    def goal(self, name: str) -> np.ndarray:
        try:
            return np.asarray(self.goals[name], dtype=np.float32)
        except KeyError:
            raise UnknownTaskError(
                f"domain {self.name!r} has no goal {name!r}; its goals are: "
                f"{', '.join(self.goals) or '(none)'}"
            ) from None

    def goal_distance(self, observation: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Distance between observations and goals (broadcast over leading dims).

        The goal file's standardised RMS over :attr:`goal_dims` when the domain ships one,
        else the Euclidean distance in observation space.
        """
        if self.goal_set is not None:
            return self.goal_set.distance(observation, goal, self.goal_dims)
        return np.linalg.norm(np.asarray(observation) - np.asarray(goal), axis=-1)

    def goal_success(self, distance: np.ndarray, alive: np.ndarray) -> np.ndarray:
        """Which episodes reached their goal, from distances ``(T, E)`` of their steps.

        ``alive[t, e]`` marks the steps episode ``e`` took. See :attr:`goal_dwell_steps`.
        """
        within = (np.asarray(distance) <= self.goal_threshold) & alive
        if self.goal_dwell_steps > 0:
            return within.sum(0) >= self.goal_dwell_steps
        last = alive.sum(0) - 1
        return within[last, np.arange(alive.shape[1])]

    def features(self, observation: np.ndarray) -> np.ndarray | None:
        """Inputs ``(N, F)`` for reward priors (FRE) of observations ``(N, obs_dim)``; None (the
        default): the priors read the observations themselves."""
        return None

    # ---- environments for a task, for rendering ------------------------------------------
    def make_task_env(
        self, task: str | None = None, seed: int | None = None, render_mode: str | None = None
    ) -> gym.Env:
        """An env whose own reward (and drawn scene) is ``task``'s where the domain has one.

        The default is :meth:`make_env`: zsrl scores rollouts by relabelling, so an env's own
        reward is never needed; domains whose scene depends on the task override this.
        """
        return self.make_env(seed=seed, render_mode=render_mode)

    def make_collection_env(self, seed: int | None, episode_length: int) -> gym.Env:
        """An env whose episodes are truncated after ``episode_length`` steps, for collectors.

        The default builds episodes of :attr:`episode_length` steps only (:meth:`make_env`);
        domains whose time limit can be set override it (dm_control and gymnasium domains do).
        """
        if episode_length != self.episode_length:
            raise UserError(
                f"domain {self.name!r} cannot collect episodes of {episode_length} steps: its "
                f"environments end after {self.episode_length}. Leave --episode-length out, or "
                "override Domain.make_collection_env to set the time limit."
            )
        return self.make_env(seed=seed)

    def make_render_env(
        self, seed: int | None = None, task: str | None = None, size: tuple[int, int] = (240, 320)
    ) -> gym.Env:
        """An env rendering ``rgb_array`` frames, ideally of ``size`` ``(height, width)``.

        The default renders at the env's own size (callers resize the frames).
        """
        return self.make_task_env(task, seed=seed, render_mode="rgb_array")

    # ---- pictures and statistics of the floor plan -------------------------------------------
    def draw_layout(self, ax: Any) -> None:
        """Draw the floor plan on a matplotlib ``Axes`` (domains with ``has_layout`` only)."""

    def coverage(self, observations: np.ndarray) -> float | None:
        """Fraction of the floor visited by ``observations``; None without a floor plan."""
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "episode_length": self.episode_length,
            "collection_episode_length": self.collection_episode_length or self.episode_length,
            "tasks": list(self.tasks),
            "goals": list(self.goals),
            "goal_threshold": self.goal_threshold,
            "goal_dwell_steps": self.goal_dwell_steps,
            "has_physics": self.has_physics,
        }


class DenseGoalReward:
    """``r(s, a, s') = −goal_distance(s', g)``: the dense task of one of a domain's goals."""

    def __init__(self, domain: Domain, goal: str) -> None:
        self.domain = domain
        self.goal = goal

    def __call__(self, transitions: Transitions) -> np.ndarray:
        goal = self.domain.goal(self.goal)
        distance = self.domain.goal_distance(np.asarray(transitions.next_observation), goal)
        return (-np.asarray(distance, np.float64)).astype(np.float32)

    def __repr__(self) -> str:
        return f"<{self.domain.name}.{DENSE_PREFIX}{self.goal} reward: minus the goal distance>"
