"""Quadruped: dm_control's four-legged ant-like robot with the URLB/ExORL task set.

With ``tol`` = dm_control's ``rewards.tolerance``, ``zz`` the torso's up-axis z component,
``vx`` the torso's forward velocity in its own frame (``velocimeter`` sensor) and ``com_z``
the height of the torso subtree's centre of mass (``center_of_mass`` sensor):

* ``upright = tol(zz, (1, ∞), margin=2, value_at_margin=0, 'linear') = (1 + zz)/2``;
* ``stand = upright`` — URLB/ExORL;
* ``walk`` / ``run`` = ``upright · tol(vx, (v*, ∞), margin=v*, value_at_margin=0.5,
  'linear')`` with ``v* = 0.5`` / ``5`` — dm_control's ``quadruped.Move``;
* ``jump = upright · tol(com_z, (1, ∞), margin=1, value_at_margin=0.5, 'linear')`` — URLB/ExORL.

Every episode starts from a uniformly random orientation, dropped from the lowest height
without contacts. Episodes last 20 s at a 0.02 s control step = 1000 steps. Observations
(78-D): egocentric joint state with actuator activations (44), torso velocity (3), torso
uprightness (1), IMU (6), toe force/torque sensors (24). Actions: 12 actuators.

Goals (:mod:`zsrl.envs.goals`): five states of a uniform-random dataset (``zsrl collect
--domain quadruped --collector random --transitions 100000 --seed 0``; an RND collection of
that size did not fit the CPU session that made the file), shipped in
``assets/goals/quadruped.json``, with the standardised RMS distance over 51 coordinates:
joints, torso velocity, uprightness and gyro (the accelerometer and the toe force/torque
sensors, which depend on the applied control and jump at contacts, are left out); a goal is
reached when an episode spends at least 200 of its 1000 steps within 1.10 (FRE's ExORL rule;
FRE has no quadruped goals, so the threshold is walker's). Each goal ``g`` also is the dense
task ``dense_g``.

Differences from the reference: every task runs on one model, dm_control's *walk* model
(floor half-size 10 m; no walls, ball, target or terrain), as URLB does for stand and jump;
dm_control's ``run`` draws a floor of half-size 100 m instead. MuJoCo planes are infinite
for collisions, so the floor size changes only what is drawn (a robot placed 50 m out
follows the same trajectory on both models), and a single model lets every task be
relabelled from the same stored states.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from dm_control.rl import control
from dm_control.suite import base as suite_base
from dm_control.suite import common, quadruped
from dm_control.utils import rewards

from .dmc import DMCDomain
from .goals import GOALS_DIR

_TIME_LIMIT = 20.0
_CONTROL_TIMESTEP = 0.02
_WALK_SPEED = 0.5
_RUN_SPEED = 5.0
_JUMP_HEIGHT = 1.0
_FLOOR_SIZE = _TIME_LIMIT * _WALK_SPEED  # dm_control's walk model: 10 m


def upright_reward(physics: quadruped.Physics) -> float:
    """``tol(zz, (1, ∞), margin=2, value_at_margin=0, 'linear')``: 1 upright, 0 upside down.

    dm_control's ``quadruped._upright_reward`` with its default ``deviation_angle=0``.
    """
    return rewards.tolerance(
        physics.torso_upright(),
        bounds=(1.0, float("inf")),
        sigmoid="linear",
        margin=2.0,
        value_at_margin=0,
    )


class Stand(quadruped.Move):
    """Stay upright: ``upright``."""

    def __init__(self, random: Any = None) -> None:
        super().__init__(desired_speed=0.0, random=random)

    def get_reward(self, physics: quadruped.Physics) -> float:
        return upright_reward(physics)


class Jump(quadruped.Move):
    """Raise the centre of mass: ``upright · tol(com_z, (1, ∞), margin=1, vam=0.5, linear)``."""

    def __init__(self, random: Any = None) -> None:
        super().__init__(desired_speed=0.0, random=random)

    def get_reward(self, physics: quadruped.Physics) -> float:
        jump = rewards.tolerance(
            physics.named.data.sensordata["center_of_mass"][2],
            bounds=(_JUMP_HEIGHT, float("inf")),
            margin=_JUMP_HEIGHT,
            value_at_margin=0.5,
            sigmoid="linear",
        )
        return upright_reward(physics) * jump


class Quadruped(DMCDomain):
    """dm_control quadruped: ``walk``, ``run``, ``stand``, ``jump`` (see module doc)."""

    name: ClassVar[str] = "quadruped"
    episode_length: ClassVar[int] = 1000
    camera_id: ClassVar[int | str] = "y"
    goals_file: ClassVar[Path | None] = GOALS_DIR / "quadruped.json"
    goal_threshold: ClassVar[float] = 1.10
    goal_dwell_steps: ClassVar[int] = 200
    #: the goal distance reads joints, torso velocity, uprightness and gyro; it leaves out the
    #: accelerometer (observation[48:51]) and the toe force/torque sensors (observation[54:]),
    #: acceleration-stage readings that depend on the applied control and jump at contacts
    goal_dims: ClassVar[tuple[int, ...] | None] = (*range(48), 51, 52, 53)
    #: +occluded keeps the egocentric state, uprightness and toe force/torque sensors and drops
    #: the torso velocity and the IMU (the reference's quadruped occlusion)
    position_dims: ClassVar[tuple[int, ...] | None] = (*range(44), 47, *range(54, 78))

    def dmc_tasks(self) -> dict[str, suite_base.Task]:
        return {
            "walk": quadruped.Move(desired_speed=_WALK_SPEED),
            "run": quadruped.Move(desired_speed=_RUN_SPEED),
            "stand": Stand(),
            "jump": Jump(),
        }

    def environment(
        self, task: suite_base.Task, time_limit: float | None = None
    ) -> control.Environment:
        xml = quadruped.make_model(floor_size=_FLOOR_SIZE)
        physics = quadruped.Physics.from_xml_string(xml, common.ASSETS)
        return control.Environment(
            physics,
            task,
            time_limit=_TIME_LIMIT if time_limit is None else time_limit,
            control_timestep=_CONTROL_TIMESTEP,
        )
