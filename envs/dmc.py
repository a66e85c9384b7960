"""dm_control as gymnasium: :class:`DMCEnv`, and :class:`DMCDomain`, the base of MuJoCo domains.

:class:`DMCEnv` wraps a dm_control :class:`~dm_control.rl.control.Environment`:

* observations: the task's ``OrderedDict`` flattened value by value, in order, as float32;
* actions: float32 in ``[-1, 1]``, clipped, then mapped linearly onto the action-spec bounds
  (:func:`action_to_control`);
* ``terminated = ts.last() and ts.discount == 0``, ``truncated = ts.last() and not terminated``;
* ``info["physics"]``: the float64 MuJoCo state ``qpos ‖ qvel ‖ act`` after reset and after
  every step — what :class:`DMCDomain` relabels rewards from.

:class:`DMCDomain` relabels a transition ``(s, a, s')`` with the reward the environment itself
returned for that step: it restores ``s'`` into one cached :class:`~dm_control.mujoco.Physics`,
sets the control to the mapped ``a`` and calls the dm_control task's ``get_reward``.

Rendering is headless: importing :mod:`zsrl.envs` picks the OpenGL backend before dm_control
loads (``MUJOCO_GL``, see the package docstring).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from dm_control.rl import control
from dm_control.suite import base as suite_base

from zsrl.data import RewardFn, Transitions
from zsrl.errors import UnknownTaskError

from .base import Domain

_NO_PHYSICS = (
    "this dataset has no physics state; dm_control tasks are relabelled from the stored "
    "MuJoCo state — re-collect with zsrl collect"
)


def action_to_control(action: np.ndarray, minimum: np.ndarray, maximum: np.ndarray) -> np.ndarray:
    """Map actions in ``[-1, 1]`` linearly onto ``[minimum, maximum]`` (float64).

    Actions are first cast to float32 (what zsrl stores) and clipped to ``[-1, 1]``, so the
    environment and the relabeller compute bit-identical controls from the same stored action.
    """
    unit = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0).astype(np.float64)
    return minimum + (unit + 1.0) * 0.5 * (maximum - minimum)


def control_bounds(env: control.Environment) -> tuple[np.ndarray, np.ndarray]:
    """The action spec's ``(minimum, maximum)`` as float64 arrays of the action's shape."""
    spec = env.action_spec()
    return (
        np.broadcast_to(np.asarray(spec.minimum, np.float64), spec.shape).copy(),
        np.broadcast_to(np.asarray(spec.maximum, np.float64), spec.shape).copy(),
    )


def flatten_observation(observation: Mapping[str, Any]) -> np.ndarray:
    """Concatenate the values of a dm_control observation dict, each flattened, as float32."""
    parts = [np.asarray(value, dtype=np.float64).ravel() for value in observation.values()]
    return np.concatenate(parts).astype(np.float32)


def _unknown_task(domain: str, task: str, tasks: Mapping[str, Any]) -> UnknownTaskError:
    return UnknownTaskError(
        f"domain {domain!r} has no task {task!r}; its tasks are: {', '.join(tasks)}"
    )


class DMCEnv(gym.Env[np.ndarray, np.ndarray]):
    """A gymnasium view of a dm_control ``control.Environment``.

    Args:
        env: the dm_control environment (its physics and task are owned by this wrapper).
        seed: seeds the task's ``RandomState`` now, so a first ``reset()`` without a seed is
            reproducible; ``reset(seed=...)`` reseeds it again.
        render_mode: ``None`` or ``"rgb_array"``.
        camera_id: camera index or name used by :meth:`render`.
        render_size: ``(height, width)`` of rendered frames.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        env: control.Environment,
        *,
        seed: int | None = None,
        render_mode: str | None = None,
        camera_id: int | str = 0,
        render_size: tuple[int, int] = (240, 320),
    ) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', not {render_mode!r}")
        self._env = env
        self.render_mode = render_mode
        self.camera_id = camera_id
        self.render_size = render_size
        self.metadata = {**self.metadata, "render_fps": round(1.0 / env.control_timestep())}

        self._ctrl_min, self._ctrl_max = control_bounds(env)
        self.action_space = gym.spaces.Box(
            -1.0, 1.0, shape=self._ctrl_min.shape, dtype=np.float32
        )
        obs_dim = sum(int(np.prod(s.shape)) for s in env.observation_spec().values())
        self.observation_space = gym.spaces.Box(
            -np.inf, np.inf, shape=(obs_dim,), dtype=np.float32
        )
        self._needs_reset = True
        self._closed = False
        if seed is not None:
            self._seed_task(seed)

    # ---- dm_control objects -----------------------------------------------------------
    @property
    def physics(self) -> Any:
        """The dm_control ``Physics`` of the wrapped environment."""
        return self._env.physics

    @property
    def task(self) -> suite_base.Task:
        return self._env.task

    @property
    def dm_env(self) -> control.Environment:
        return self._env

    # ---- gymnasium API ----------------------------------------------------------------
    def _seed_task(self, seed: int) -> None:
        # A SeedSequence accepts any non-negative int and gives RandomState a full-entropy key.
        self._env.task.random.seed(np.random.SeedSequence(seed).generate_state(4))

    def _info(self) -> dict[str, Any]:
        return {"physics": self._env.physics.get_state()}  # a fresh float64 array

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._seed_task(seed)
        ts = self._env.reset()
        self._needs_reset = False
        return flatten_observation(ts.observation), self._info()

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError("call reset() before step() and after an episode ends")
        ts = self._env.step(action_to_control(action, self._ctrl_min, self._ctrl_max))
        terminated = bool(ts.last() and ts.discount == 0)
        truncated = bool(ts.last() and not terminated)
        self._needs_reset = ts.last()
        obs = flatten_observation(ts.observation)
        return obs, float(ts.reward), terminated, truncated, self._info()

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        height, width = self.render_size
        return self._env.physics.render(height, width, camera_id=self.camera_id)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._env.physics.free()  # also frees rendering contexts
        super().close()


class _PhysicsReward:
    """The reward of one dm_control task, relabelled from stored physics states."""

    def __init__(self, domain: DMCDomain, task: str) -> None:
        self.domain = domain
        self.task = task

    def __call__(self, transitions: Transitions) -> np.ndarray:
        return self.domain.relabel_from_physics(self.task, transitions)

    def __repr__(self) -> str:
        return f"<{self.domain.name}.{self.task} reward (from physics)>"


class DMCDomain(Domain):
    """Base class for domains built on dm_control.

    A subclass implements :meth:`dmc_tasks` (fresh dm_control ``Task`` objects by name; the
    first is the default) and :meth:`environment` (a ``control.Environment`` running a given
    task on a fresh physics). :meth:`make_env` builds an environment for any task, and
    :attr:`tasks` relabels stored transitions by re-evaluating each task's ``get_reward`` on
    the stored MuJoCo state — exactly the reward the environment returned for that step.

    One relabelling physics is built lazily and reused, so a domain object must not relabel
    from several threads at once. Subclasses that define ``__init__`` call
    ``super().__init__()``.
    """

    has_physics: ClassVar[bool] = True
    #: camera used by ``render()``
    camera_id: ClassVar[int | str] = 0
    #: ``(height, width)`` of rendered frames
    render_size: ClassVar[tuple[int, int]] = (240, 320)

    def __init__(self) -> None:
        self._relabel_tasks: dict[str, suite_base.Task] | None = None
        self._relabel_env: control.Environment | None = None

    # ---- to implement -----------------------------------------------------------------
    @abstractmethod
    def dmc_tasks(self) -> dict[str, suite_base.Task]:
        """Fresh dm_control ``Task`` instances keyed by task name; the first is the default."""

    @abstractmethod
    def environment(
        self, task: suite_base.Task, time_limit: float | None = None
    ) -> control.Environment:
        """A ``control.Environment`` running ``task`` on a fresh physics of this domain.

        ``time_limit`` (seconds) overrides the domain's default episode duration.
        """

    # ---- environments -----------------------------------------------------------------
    def make_env(
        self,
        seed: int | None = None,
        render_mode: str | None = None,
        task: str | None = None,
        time_limit: float | None = None,
    ) -> DMCEnv:
        """A :class:`DMCEnv` whose reward is ``task`` (default: the first task).

        zsrl datasets are reward-free, so the task only matters for the returned rewards
        (and, in the maze, for where the target is drawn). ``time_limit`` (seconds) shortens
        or lengthens episodes; by default they last :attr:`episode_length` steps.
        """
        tasks = self.dmc_tasks()
        name = next(iter(tasks)) if task is None else task
        if name not in tasks:
            raise _unknown_task(self.name, name, tasks)
        return DMCEnv(
            self.environment(tasks[name], time_limit),
            seed=seed,
            render_mode=render_mode,
            camera_id=self.camera_id,
            render_size=self.render_size,
        )

    def make_task_env(
        self, task: str | None = None, seed: int | None = None, render_mode: str | None = None
    ) -> DMCEnv:
        """The env of ``task`` (its reward; in the maze, where its target is drawn)."""
        return self.make_env(seed=seed, render_mode=render_mode, task=task)

    def make_collection_env(self, seed: int | None, episode_length: int) -> DMCEnv:
        """An env whose episodes last ``episode_length`` control steps (its time limit set).

        dm_control ends an episode once ``steps >= time_limit / control_timestep``; a limit of
        ``(episode_length − ½)`` control steps makes that exactly ``episode_length`` steps
        whatever the rounding of the division.
        """
        env = self.make_env(seed=seed)
        if episode_length == self.episode_length:
            return env
        dt = env.dm_env.control_timestep()
        env.close()
        return self.make_env(seed=seed, time_limit=(episode_length - 0.5) * dt)

    def make_render_env(
        self, seed: int | None = None, task: str | None = None, size: tuple[int, int] = (240, 320)
    ) -> DMCEnv:
        """The env of ``task`` rendering ``size`` ``(height, width)`` frames from :attr:`camera_id`."""
        env = self.make_task_env(task, seed=seed, render_mode="rgb_array")
        env.render_size = (int(size[0]), int(size[1]))
        return env

    # ---- relabelling ------------------------------------------------------------------
    @property
    def tasks(self) -> Mapping[str, RewardFn]:
        return {name: _PhysicsReward(self, name) for name in self._tasks_for_relabelling()}

    def _tasks_for_relabelling(self) -> dict[str, suite_base.Task]:
        if self._relabel_tasks is None:
            self._relabel_tasks = self.dmc_tasks()
        return self._relabel_tasks

    def _relabel_environment(self) -> control.Environment:
        if self._relabel_env is None:
            self._relabel_env = self.environment(next(iter(self.dmc_tasks().values())))
        return self._relabel_env

    def relabel_from_physics(self, task: str, transitions: Transitions) -> np.ndarray:
        """Rewards of ``task`` for ``transitions``, recomputed from ``next_physics``.

        For each transition: restore ``s'`` (``physics.set_state``), set the control to ``a``
        mapped onto the actuator bounds, recompute the derived quantities (``mj_forward``)
        and evaluate the dm_control task's ``get_reward`` — the call that produced the
        environment's reward for that step, on the same state and control.

        Exactness: dm_control ends every step with ``mj_step1``, which computes the position-
        and velocity-dependent quantities (kinematics, subtree momenta, position/velocity
        sensors) from ``qpos, qvel`` alone; ``mj_forward`` recomputes the same quantities
        with the same code, so a reward built from them is reproduced bit for bit (the
        zsrl tasks all are). Acceleration-stage quantities (contact forces, accelerometers)
        are not part of the stored state and cannot be reproduced by any relabeller.
        ``mj_forward`` is used instead of ``with physics.reset_context():`` because it skips
        a data reset and a second forward pass, restoring a state about 3x faster.
        """
        tasks = self._tasks_for_relabelling()
        if task not in tasks:
            raise _unknown_task(self.name, task, tasks)
        dm_task = tasks[task]
        env = self._relabel_environment()
        physics = env.physics
        states = self._check_physics(transitions, physics.get_state().shape[0])
        controls = self._controls(transitions, env)
        model, data = physics.model.ptr, physics.data.ptr
        rewards = np.empty(len(transitions), dtype=np.float32)
        for i in range(len(transitions)):
            physics.set_state(states[i])
            physics.set_control(controls[i])
            mujoco.mj_forward(model, data)
            rewards[i] = dm_task.get_reward(physics)
        return rewards

    def _check_physics(self, transitions: Transitions, width: int) -> np.ndarray:
        """``next_physics`` as float64 ``(N, width)``, or a ValueError saying what is wrong."""
        states = transitions.next_physics
        if states is None:
            raise ValueError(_NO_PHYSICS)
        states = np.asarray(states, dtype=np.float64)
        expected = (len(transitions), width)
        if states.shape != expected:
            raise ValueError(
                f"next_physics has shape {states.shape} but domain {self.name!r} expects "
                f"{expected}: these physics states come from another model — re-collect "
                "with zsrl collect"
            )
        return states

    def _controls(self, transitions: Transitions, env: control.Environment) -> np.ndarray:
        minimum, maximum = control_bounds(env)
        expected = (len(transitions), *minimum.shape)
        if np.shape(transitions.action) != expected:
            raise ValueError(
                f"actions have shape {np.shape(transitions.action)} but domain {self.name!r} "
                f"expects {expected}"
            )
        return action_to_control(transitions.action, minimum, maximum)

    def __getstate__(self) -> dict[str, Any]:
        # The cached physics is rebuilt on demand; vector envs pickle domains into workers.
        state = self.__dict__.copy()
        state["_relabel_tasks"] = None
        state["_relabel_env"] = None
        return state
