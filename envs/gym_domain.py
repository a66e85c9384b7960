"""Plug any gymnasium environment into zsrl: :class:`GymDomain`.

A domain needs an environment and reward functions. For a gymnasium env, write the rewards
as batched numpy functions of ``(obs, action, next_obs)`` and either subclass::

    class PendulumDomain(GymDomain):
        name = "pendulum"
        env_id = "Pendulum-v1"

        def reward_functions(self):
            return {"swingup": swingup_reward}

or instantiate directly::

    GymDomain("Pendulum-v1", {"swingup": swingup_reward}, name="pendulum")

Then register it (:func:`zsrl.registry.register_domain`), advertise it as an entry point
(``[project.entry-points."zsrl.domains"] pendulum = "my_pkg.pendulum:PendulumDomain"``) or
name it on the command line as ``my_pkg.pendulum:PendulumDomain``.

**Actions are always in [-1, 1].** :meth:`GymDomain.make_env` rescales the env's ``Box``
action space onto ``[-1, 1]`` (gymnasium's ``RescaleAction``), and zsrl stores and serves
those rescaled actions. A reward function therefore receives rescaled actions; map them back
to the env's own units with :meth:`GymDomain.native_action`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from zsrl.data import ArrayRewardFn, RewardFn, reward_from_arrays
from zsrl.utils import UserError

from .base import Domain

EnvFactory = Callable[..., gym.Env]


class _SeededReset(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Seeds the first ``reset()`` (and the action space) when it is called without a seed."""

    def __init__(self, env: gym.Env, seed: int | None) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, seed=seed)
        gym.Wrapper.__init__(self, env)
        self._pending_seed = seed
        if seed is not None:
            self.action_space.seed(seed)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None:
            seed = self._pending_seed
        self._pending_seed = None
        return super().reset(seed=seed, options=options)


class GymDomain(Domain):
    """A :class:`Domain` over a gymnasium env with batched numpy reward functions.

    Configure it with constructor arguments or, in a subclass, with the class attributes
    ``env_id`` / ``env_kwargs`` / ``episode_length`` / ``goal_threshold`` and by overriding
    :meth:`reward_functions` and :meth:`goal_observations`. Arguments win over attributes.

    Args:
        env: a registered env id (``"Pendulum-v1"``) or a factory returning a
            ``gymnasium.Env``, called as ``f()``, or as ``f(render_mode=...)`` to render.
        rewards: task name → ``fn(obs, action, next_obs) -> (N,)`` rewards, where ``action``
            is in ``[-1, 1]`` (see the module docstring).
        goals: goal name → goal observation.
        goal_threshold: success radius for :meth:`goal_distance`.
        name: the domain name (default: the class attribute, else the env id).
        episode_length: steps per episode; defaults to the registered env's
            ``max_episode_steps``. Environments from :meth:`make_env` truncate there.
        env_kwargs: keyword arguments for ``gymnasium.make`` (env ids only).
    """

    #: registered gymnasium id of the env (subclasses)
    env_id: ClassVar[str | None] = None
    #: keyword arguments for ``gymnasium.make``
    env_kwargs: ClassVar[Mapping[str, Any]] = {}
    #: 0 means: take ``max_episode_steps`` from the registered env
    episode_length: ClassVar[int] = 0

    def __init__(
        self,
        env: str | EnvFactory | None = None,
        rewards: Mapping[str, ArrayRewardFn] | None = None,
        *,
        goals: Mapping[str, np.ndarray] | None = None,
        goal_threshold: float | None = None,
        name: str | None = None,
        episode_length: int | None = None,
        env_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self._env: str | EnvFactory | None = env if env is not None else self.env_id
        if self._env is None:
            raise ValueError(
                f"{type(self).__name__} needs an env: pass a gymnasium id or factory, or set "
                "the class attribute env_id"
            )
        self._env_kwargs = dict(self.env_kwargs if env_kwargs is None else env_kwargs)
        self._rewards = dict(self.reward_functions() if rewards is None else rewards)
        goals = self.goal_observations() if goals is None else goals
        self._goals = {name: np.asarray(goal, np.float32) for name, goal in goals.items()}
        if goal_threshold is not None:
            self.goal_threshold = goal_threshold
        if name is not None:
            self.name = name
        elif not self.name and isinstance(self._env, str):
            self.name = self._env
        self.episode_length = episode_length or self.episode_length or self._registered_length()
        self._native_space: gym.spaces.Box | None = None

    def _registered_length(self) -> int:
        if isinstance(self._env, str):
            try:
                steps = gym.spec(self._env).max_episode_steps
            except gym.error.Error as exc:
                raise UserError(f"{type(self).__name__}: gymnasium has no env {self._env!r} ({exc})") from None
            if steps:
                return int(steps)
        raise ValueError(
            f"cannot tell the episode length of {self._env!r}; pass episode_length= or set "
            "the class attribute episode_length"
        )

    # ---- for subclasses ---------------------------------------------------------------
    def reward_functions(self) -> Mapping[str, ArrayRewardFn]:
        """Task name → ``fn(obs, action, next_obs) -> (N,)`` (actions in ``[-1, 1]``)."""
        return {}

    def goal_observations(self) -> Mapping[str, np.ndarray]:
        """Goal name → goal observation."""
        return {}

    # ---- Domain -----------------------------------------------------------------------
    @property
    def tasks(self) -> Mapping[str, RewardFn]:
        return {name: reward_from_arrays(fn) for name, fn in self._rewards.items()}

    @property
    def goals(self) -> Mapping[str, np.ndarray]:
        return dict(self._goals)

    def _raw_env(self, render_mode: str | None, episode_length: int | None = None) -> gym.Env:
        steps = episode_length or self.episode_length
        if isinstance(self._env, str):
            try:
                return gym.make(
                    self._env,
                    render_mode=render_mode,
                    max_episode_steps=steps,
                    **self._env_kwargs,
                )
            except gym.error.Error as exc:
                raise UserError(f"{type(self).__name__}: gymnasium cannot make {self._env!r} ({exc})") from None
        env = self._env() if render_mode is None else self._env(render_mode=render_mode)
        return gym.wrappers.TimeLimit(env, steps)

    def make_env(self, seed: int | None = None, render_mode: str | None = None) -> gym.Env:
        """The env with flat float32 observations and float32 actions in ``[-1, 1]``.

        ``seed`` seeds the first ``reset()`` that comes without a seed, and the action space.
        Episodes are truncated after :attr:`episode_length` steps.
        """
        return self._make(seed, render_mode)

    def make_collection_env(self, seed: int | None, episode_length: int) -> gym.Env:
        """:meth:`make_env` with episodes truncated after ``episode_length`` steps instead."""
        return self._make(seed, None, episode_length)

    def _make(self, seed: int | None, render_mode: str | None, episode_length: int | None = None) -> gym.Env:
        env = self._raw_env(render_mode, episode_length)
        actions = env.action_space
        if not (isinstance(actions, gym.spaces.Box) and actions.is_bounded()):
            raise UserError(
                f"zsrl needs a bounded continuous (Box) action space; {self._env!r} has {actions}. "
                "Discrete-action envs are not supported: FB and FRE act in [-1, 1]^d"
            )
        obs_space = env.observation_space
        if not (isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1):
            env = gym.wrappers.FlattenObservation(env)
        if env.observation_space.dtype != np.float32:
            obs_space = env.observation_space
            with np.errstate(over="ignore"):  # huge float64 bounds become ±inf
                low, high = obs_space.low.astype(np.float32), obs_space.high.astype(np.float32)
            env = gym.wrappers.TransformObservation(
                env,
                lambda obs: np.asarray(obs, dtype=np.float32),
                gym.spaces.Box(low, high, dtype=np.float32),
            )
        unit = env.action_space.dtype.type  # bounds in the space's own dtype: no cast warnings
        env = gym.wrappers.RescaleAction(env, unit(-1.0), unit(1.0))
        if env.action_space.dtype != np.float32:
            native_dtype = env.action_space.dtype
            env = gym.wrappers.TransformAction(
                env,
                lambda a: np.asarray(a, dtype=native_dtype),
                gym.spaces.Box(-1.0, 1.0, shape=env.action_space.shape, dtype=np.float32),
            )
        return _SeededReset(env, seed)

    # ---- helpers ----------------------------------------------------------------------
    @property
    def native_action_space(self) -> gym.spaces.Box:
        """The env's own (unrescaled) action space."""
        if self._native_space is None:
            env = self._raw_env(None)
            self._native_space = env.action_space
            env.close()
        return self._native_space

    def native_action(self, action: np.ndarray) -> np.ndarray:
        """Map zsrl actions in ``[-1, 1]`` back to the env's units, as ``RescaleAction`` does."""
        low = self.native_action_space.low.astype(np.float64)
        high = self.native_action_space.high.astype(np.float64)
        return low + (np.asarray(action, np.float64) + 1.0) * 0.5 * (high - low)

    def zsrl_action(self, native: np.ndarray) -> np.ndarray:
        """Map actions in the env's units to zsrl's ``[-1, 1]`` (the inverse of :meth:`native_action`)."""
        low = self.native_action_space.low.astype(np.float64)
        high = self.native_action_space.high.astype(np.float64)
        return (2.0 * (np.asarray(native, np.float64) - low) / (high - low) - 1.0).astype(np.float32)
