"""Cheetah: dm_control's planar half-cheetah with the ExORL / controllable_agent task set.

With ``tol`` = dm_control's ``rewards.tolerance`` and ``vx`` the torso subtree's horizontal
velocity (m/s):

* ``run           = tol( vx, (10, ∞), margin=10, value_at_margin=0, 'linear')`` — dm_control;
* ``run_backward  = tol(-vx, (10, ∞), margin=10, value_at_margin=0, 'linear')`` — ExORL;
* ``walk          = tol( vx, (2, ∞),  margin=2,  value_at_margin=0, 'linear')``;
* ``walk_backward = tol(-vx, (2, ∞),  margin=2,  value_at_margin=0, 'linear')`` — both from
  controllable_agent (Touati et al. 2023), as used by FB, FRE and TD-JEPA.

Each reward rises linearly from 0 at rest to 1 at the target speed. Episodes last 10 s at
the physics step of 0.01 s = 1000 steps. Observations (17-D): joint positions without the
horizontal root position (8), generalised velocities (9). Actions: 6 joint torques.

Goals (:mod:`zsrl.envs.goals`): five states of zsrl's own RND dataset (``zsrl collect
--domain cheetah --collector rnd --transitions 50000 --seed 0``), shipped in
``assets/goals/cheetah.json``, with the standardised RMS distance over all 17 coordinates; a
goal is reached when an episode spends at least 200 of its 1000 steps within 0.35 (FRE's
ExORL rule: ``‖(s − g)/σ‖/18 < 0.08`` with one σ = 100 auxiliary coordinate). Each goal
``g`` also is the dense task ``dense_g``.

Differences from the reference: ExORL's custom cheetah XML makes the ground plane's size 200
instead of dm_control's 100. MuJoCo planes are infinite for collisions, so this only changes
how far the floor is drawn; zsrl uses dm_control's model unchanged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from dm_control.rl import control
from dm_control.suite import base as suite_base
from dm_control.suite import cheetah
from dm_control.utils import rewards

from .dmc import DMCDomain
from .goals import GOALS_DIR

_TIME_LIMIT = 10.0
_RUN_SPEED = 10.0
_WALK_SPEED = 2.0


class Move(cheetah.Cheetah):
    """Reach a speed in a direction: ``tol(direction·vx, (speed, ∞), margin=speed, vam=0)``."""

    def __init__(self, speed: float, direction: float, random: Any = None) -> None:
        self._speed = speed
        self._direction = direction
        super().__init__(random=random)

    def get_reward(self, physics: cheetah.Physics) -> float:
        return rewards.tolerance(
            self._direction * physics.speed(),
            bounds=(self._speed, float("inf")),
            margin=self._speed,
            value_at_margin=0,
            sigmoid="linear",
        )


class Cheetah(DMCDomain):
    """dm_control cheetah: ``run``, ``run_backward``, ``walk``, ``walk_backward``."""

    name: ClassVar[str] = "cheetah"
    episode_length: ClassVar[int] = 1000
    camera_id: ClassVar[int | str] = "side"
    goals_file: ClassVar[Path | None] = GOALS_DIR / "cheetah.json"
    goal_threshold: ClassVar[float] = 0.35
    goal_dwell_steps: ClassVar[int] = 200
    reference_goal_dwell_steps: ClassVar[int | None] = 101  # kvfrans/fre: more than 100 steps
    #: +occluded keeps the joint positions (the reference's cheetah occlusion)
    position_dims: ClassVar[tuple[int, ...] | None] = tuple(range(8))

    def dmc_tasks(self) -> dict[str, suite_base.Task]:
        return {
            "run": cheetah.Cheetah(),
            "run_backward": Move(_RUN_SPEED, -1.0),
            "walk": Move(_WALK_SPEED, 1.0),
            "walk_backward": Move(_WALK_SPEED, -1.0),
        }

    def environment(
        self, task: suite_base.Task, time_limit: float | None = None
    ) -> control.Environment:
        # dm_control's cheetah.xml uses `settotalmass`, which MuJoCo 3.17 warns about on every
        # load ("deprecated"); the model is unchanged, so keep the log readable.
        with _quiet_absl():
            physics = cheetah.Physics.from_xml_string(*cheetah.get_model_and_assets())
        return control.Environment(
            physics, task, time_limit=_TIME_LIMIT if time_limit is None else time_limit
        )


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
