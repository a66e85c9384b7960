"""Point-mass maze: ExORL's four-room navigation domain (Yarats et al. 2022).

A ball (r 0.01 m) slides on a 0.6 m x 0.6 m floor ``[-0.3, 0.3]²``, pushed by two motors
(actions in ``[-1, 1]``, force 0.1·a N per axis, joint damping 1, 0.02 s step). Two inner
walls form a central '+' — ``maze_x``: half-size 0.02 x 0.18 m, ``maze_y``: 0.18 x 0.02 m,
both centred at the origin — splitting the floor into four rooms joined by 0.12 m gaps.
Contacts are enabled (dm_control's point_mass disables them). Episodes last 20 s = 1000
steps and start in the top-left room, ``x ~ U(-0.29, -0.15)``, ``y ~ U(0.15, 0.29)``.
Observations: ``[x, y, vx, vy]``. The MuJoCo model is ``assets/point_mass_maze.xml``.

Tasks ``reach_top_left`` (-0.15, 0.15), ``reach_top_right`` (0.15, 0.15),
``reach_bottom_left`` (-0.15, -0.15) and ``reach_bottom_right`` (0.15, -0.15), with ``d`` the
ball-to-target distance in the plane and ``tol`` dm_control's ``rewards.tolerance``::

    near          = tol(d, bounds=(0, 0.015), margin=0.015)          # gaussian, 0.1 at d = 0.03
    small_control = (mean_i tol(u_i, margin=1, value_at_margin=0, 'quadratic') + 4) / 5
    r             = near · small_control                              # in [0, 1]

where ``u`` is the control (= the action, the actuator range being ``[-1, 1]``). The reward
depends only on the next position and the action, so the task functions here are vectorised
numpy and need no physics state: they read the position from ``next_physics[:, :2]`` when the
dataset has it (bit-exact) and from ``next_observation[:, :2]`` otherwise (float32-rounded
positions; within 1e-6 of the environment's reward).

Reward-free data is collected sticky-random (``default_collector``) in 50,000-step episodes
(``collection_episode_length``): a random walk needs that long to spread from the start room
over the four rooms.

Goals: the four targets as observations ``[x, y, 0, 0]``, named like the tasks, with
``goal_distance`` = distance in the plane and ``goal_threshold = 0.03``: at 0.03 m, ``near``
has decayed to 0.1 (``value_at_margin``), so "reached" means the reward's bump is substantial.

Differences from ExORL's definition:

* the start position is drawn from the task's ``RandomState`` (ExORL uses the global
  ``np.random``), so seeded resets are reproducible;
* the target sphere is moved to the task's target at every reset so renders show it, and it
  does not collide; the reward uses the task's target constant, so one physics relabels
  every task;
* the motors act on the slide joints directly instead of through unit-coefficient tendons,
  and the inner walls are axis-aligned boxes instead of rotated ones (same forces, same
  footprint);
* ExORL's relabelling restores only ``qpos, qvel`` and evaluates ``small_control`` against
  whatever control the environment last held; zsrl uses the transition's own action, so
  relabelled rewards equal the rewards the environment returned.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from dm_control import mujoco
from dm_control.rl import control
from dm_control.suite import base as suite_base
from dm_control.suite import common
from dm_control.utils import rewards

from zsrl.data import RewardFn, Transitions

from .dmc import DMCDomain, action_to_control

_XML = Path(__file__).parent / "assets" / "point_mass_maze.xml"
_TIME_LIMIT = 20.0

#: half-width of the square floor (m)
ARENA_HALF_SIZE = 0.3
#: inner walls as ``name -> (half-size x, half-size y)``, centred at the origin
INNER_WALLS: dict[str, tuple[float, float]] = {"maze_x": (0.02, 0.18), "maze_y": (0.18, 0.02)}
#: target radius; also the width of the reward's plateau and of its margin (m)
TARGET_SIZE = 0.015
TARGETS: dict[str, tuple[float, float]] = {
    "reach_top_left": (-0.15, 0.15),
    "reach_top_right": (0.15, 0.15),
    "reach_bottom_left": (-0.15, -0.15),
    "reach_bottom_right": (0.15, -0.15),
}
START_X = (-0.29, -0.15)
START_Y = (0.15, 0.29)
_CONTROL_MIN = np.full(2, -1.0)
_CONTROL_MAX = np.full(2, 1.0)


def reach_reward(position: np.ndarray, control: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``near · small_control`` (module docstring), vectorised over leading dimensions.

    Args:
        position: ``(..., 2)`` ball positions after the step.
        control: ``(..., 2)`` controls applied during the step.
        target: ``(2,)`` target position.
    """
    offset = np.asarray(position, np.float64) - np.asarray(target, np.float64)
    distance = np.sqrt(np.sum(offset * offset, axis=-1))
    near = rewards.tolerance(distance, bounds=(0, TARGET_SIZE), margin=TARGET_SIZE)
    effort = rewards.tolerance(
        np.asarray(control, np.float64), margin=1, value_at_margin=0, sigmoid="quadratic"
    )
    small_control = (np.mean(effort, axis=-1) + 4) / 5
    return near * small_control


class Reach(suite_base.Task):
    """Reach a fixed target in the maze, starting in the top-left room."""

    def __init__(self, target: tuple[float, float], random: Any = None) -> None:
        self.target = np.asarray(target, dtype=np.float64)
        super().__init__(random=random)

    def initialize_episode(self, physics: mujoco.Physics) -> None:
        physics.named.data.qpos["root_x"] = self.random.uniform(*START_X)
        physics.named.data.qpos["root_y"] = self.random.uniform(*START_Y)
        physics.named.model.geom_pos["target"][:2] = self.target
        super().initialize_episode(physics)

    def get_observation(self, physics: mujoco.Physics) -> collections.OrderedDict:
        obs = collections.OrderedDict()
        obs["position"] = physics.position()
        obs["velocity"] = physics.velocity()
        return obs

    def get_reward(self, physics: mujoco.Physics) -> float:
        return float(reach_reward(physics.position(), physics.control(), self.target))


class _ReachReward:
    """Vectorised reach reward of one target over :class:`Transitions` (no physics needed)."""

    def __init__(self, domain: PointMassMaze, task: str) -> None:
        self.domain = domain
        self.task = task

    def __call__(self, transitions: Transitions) -> np.ndarray:
        position = self.domain.next_positions(transitions)
        controls = action_to_control(transitions.action, _CONTROL_MIN, _CONTROL_MAX)
        return reach_reward(position, controls, TARGETS[self.task]).astype(np.float32)

    def __repr__(self) -> str:
        return f"<point_mass_maze.{self.task} reward>"


def free_cells(bins: int) -> np.ndarray:
    """``(bins, bins)`` mask, indexed ``[x_bin, y_bin]``, of floor cells not inside a wall.

    The floor ``[-0.3, 0.3]²`` is cut into ``bins x bins`` equal cells; a cell is free when
    its centre is outside both inner walls (the boundary walls lie on the floor's edge). The
    walls are 4 cm thick, so grids with cells wider than that may count no wall cell at all.
    """
    edges = np.linspace(-ARENA_HALF_SIZE, ARENA_HALF_SIZE, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    x, y = np.meshgrid(centres, centres, indexing="ij")
    inside = np.zeros_like(x, dtype=bool)
    for half_x, half_y in INNER_WALLS.values():
        inside |= (np.abs(x) <= half_x) & (np.abs(y) <= half_y)
    return ~inside


class PointMassMaze(DMCDomain):
    """ExORL's four-room point-mass maze (see the module docstring for tasks and goals)."""

    name: ClassVar[str] = "point_mass_maze"
    episode_length: ClassVar[int] = 1000
    camera_id: ClassVar[int | str] = "top"
    goal_threshold: ClassVar[float] = 0.03
    has_layout: ClassVar[bool] = True
    #: collectors reset every 50,000 steps, not every 1000: nothing ends an episode early and
    #: every episode starts in the top-left room, where 1000-step sticky-random walks keep
    #: 88% of their states (0.2% reach the bottom-right room, none its target); 50,000-step
    #: walks spread over the four rooms (30/27/22/21% of 200k states, ~1000 within 3 cm of
    #: each target).
    collection_episode_length: ClassVar[int | None] = 50_000
    default_collector: ClassVar[str] = "sticky"
    #: +occluded keeps the ball's position (x, y) and drops its velocity
    position_dims: ClassVar[tuple[int, ...] | None] = (0, 1)

    def dmc_tasks(self) -> dict[str, suite_base.Task]:
        return {name: Reach(target) for name, target in TARGETS.items()}

    def environment(
        self, task: suite_base.Task, time_limit: float | None = None
    ) -> control.Environment:
        physics = mujoco.Physics.from_xml_string(_XML.read_text(), common.ASSETS)
        return control.Environment(
            physics, task, time_limit=_TIME_LIMIT if time_limit is None else time_limit
        )

    @property
    def tasks(self) -> dict[str, RewardFn]:
        return {name: _ReachReward(self, name) for name in TARGETS}

    def next_positions(self, transitions: Transitions) -> np.ndarray:
        """``(N, 2)`` ball positions after each transition, in float64.

        From ``next_physics[:, :2]`` (``qpos``, exact) when the dataset stores physics states,
        else from the float32 ``next_observation[:, :2]``.
        """
        if transitions.next_physics is None:
            return np.asarray(transitions.next_observation, np.float64)[:, :2]
        return self._check_physics(transitions, 4)[:, :2]

    @property
    def goals(self) -> dict[str, np.ndarray]:
        return {name: np.array([x, y, 0.0, 0.0], np.float32) for name, (x, y) in TARGETS.items()}

    def goal_distance(self, observation: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Distance in the plane: ``‖obs[..., :2] - goal[..., :2]‖`` (velocities ignored)."""
        offset = np.asarray(observation)[..., :2] - np.asarray(goal)[..., :2]
        return np.linalg.norm(offset, axis=-1)

    # ---- pictures and statistics ------------------------------------------------------
    def draw_layout(self, ax: Any) -> Any:
        """Draw the floor, the walls and the four targets on a matplotlib ``Axes`` (xy, m)."""
        from matplotlib.patches import Circle, Rectangle

        a = ARENA_HALF_SIZE
        ax.add_patch(Rectangle((-a, -a), 2 * a, 2 * a, facecolor="whitesmoke",
                               edgecolor="black", linewidth=2, zorder=0))
        for half_x, half_y in INNER_WALLS.values():
            ax.add_patch(Rectangle((-half_x, -half_y), 2 * half_x, 2 * half_y,
                                   facecolor="dimgray", edgecolor="none", zorder=2))
        for name, (x, y) in TARGETS.items():
            ax.add_patch(Circle((x, y), TARGET_SIZE, facecolor="tab:red", zorder=3))
            ax.annotate(name.removeprefix("reach_").replace("_", " "), (x, y),
                        xytext=(0, 9), textcoords="offset points", ha="center",
                        fontsize=7, zorder=3)
        margin = 0.02
        ax.set_xlim(-a - margin, a + margin)
        ax.set_ylim(-a - margin, a + margin)
        ax.set_aspect("equal")
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
        return ax

    def coverage(self, observations: np.ndarray, bins: int = 30) -> float:
        """Fraction of free floor cells visited by at least one observation.

        ``observations[..., :2]`` are binned on a ``bins x bins`` grid over the floor
        ``[-0.3, 0.3]²`` (cells of ``0.6/bins`` m; 30 bins gives 2 cm cells); a cell counts
        when its centre is not inside a wall (:func:`free_cells`: 832 of 900 cells at 30
        bins). Positions outside the floor are ignored.
        """
        xy = np.asarray(observations, dtype=np.float64)[..., :2].reshape(-1, 2)
        a = ARENA_HALF_SIZE
        counts, _, _ = np.histogram2d(xy[:, 0], xy[:, 1], bins=bins, range=[[-a, a], [-a, a]])
        free = free_cells(bins)
        return float(np.count_nonzero((counts > 0) & free) / np.count_nonzero(free))
