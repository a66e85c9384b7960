"""Walker: dm_control's planar biped with the URLB/ExORL task set.

With ``tol`` = dm_control's ``rewards.tolerance``, ``h`` the torso height, ``zz`` the torso's
up-axis z component and ``vx`` the torso subtree's horizontal velocity:

* ``stand = (3·tol(h, (1.2, ∞), margin=0.6) + (1 + zz)/2) / 4`` (gaussian sigmoid);
* ``walk`` / ``run`` = ``stand · (5·tol(vx, (v*, ∞), margin=v*/2, value_at_margin=0.5,
  'linear') + 1) / 6`` with ``v* = 1`` / ``8`` — dm_control's ``PlanarWalker``;
* ``flip = stand · (5·tol(L_y, (5, ∞), margin=5, value_at_margin=0, 'linear') + 1) / 6`` with
  ``L_y = subtree_angmom['torso'][1]``, the torso subtree's angular momentum about the world
  y-axis — URLB/ExORL's ``flip`` with ``forward=True``.

Episodes last 25 s at a 0.025 s control step = 1000 steps. Observations (24-D): body
orientations (14), torso height (1), generalised velocities (9). Actions: 6 joint torques.

Goals (:mod:`zsrl.envs.goals`): five states of zsrl's own RND dataset (``zsrl collect
--domain walker --collector rnd --transitions 100000 --seed 0``), shipped in
``assets/goals/walker.json``, with the standardised RMS distance over all 24 coordinates; a
goal is reached when an episode spends at least 200 of its 1000 steps within 1.10 (FRE's
ExORL rule: ``‖(s − g)/σ‖/27 < 0.2`` with three σ = 100 auxiliary coordinates). Each goal
``g`` also is the dense task ``dense_g``.

Differences from the reference: none in the rewards or dynamics. stand, walk and run use the
dm_control suite's own task class; flip is re-implemented on top of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from dm_control.rl import control
from dm_control.suite import base as suite_base
from dm_control.suite import walker
from dm_control.utils import rewards

from .dmc import DMCDomain
from .goals import GOALS_DIR

_TIME_LIMIT = 25.0
_CONTROL_TIMESTEP = 0.025
_WALK_SPEED = 1.0
_RUN_SPEED = 8.0
_SPIN_SPEED = 5.0


class Flip(walker.PlanarWalker):
    """Stand up while spinning: ``stand · (5·tol(L_y, (5, ∞), margin=5, vam=0, linear) + 1)/6``."""

    def __init__(self, random: Any = None) -> None:
        super().__init__(move_speed=0, random=random)

    def get_reward(self, physics: walker.Physics) -> float:
        stand = super().get_reward(physics)  # move_speed 0: the stand reward
        spin = rewards.tolerance(
            physics.named.data.subtree_angmom["torso"][1],
            bounds=(_SPIN_SPEED, float("inf")),
            margin=_SPIN_SPEED,
            value_at_margin=0,
            sigmoid="linear",
        )
        return stand * (5 * spin + 1) / 6


class Walker(DMCDomain):
    """dm_control walker with tasks ``stand``, ``walk``, ``run`` and ``flip`` (see module doc)."""

    name: ClassVar[str] = "walker"
    episode_length: ClassVar[int] = 1000
    camera_id: ClassVar[int | str] = "side"
    goals_file: ClassVar[Path | None] = GOALS_DIR / "walker.json"
    goal_threshold: ClassVar[float] = 1.10
    goal_dwell_steps: ClassVar[int] = 200
    reference_goal_dwell_steps: ClassVar[int | None] = 101  # kvfrans/fre: more than 100 steps
    #: +occluded keeps the orientations and the height (the reference's walker occlusion)
    position_dims: ClassVar[tuple[int, ...] | None] = tuple(range(15))

    def dmc_tasks(self) -> dict[str, suite_base.Task]:
        return {
            "stand": walker.PlanarWalker(move_speed=0),
            "walk": walker.PlanarWalker(move_speed=_WALK_SPEED),
            "run": walker.PlanarWalker(move_speed=_RUN_SPEED),
            "flip": Flip(),
        }

    def environment(
        self, task: suite_base.Task, time_limit: float | None = None
    ) -> control.Environment:
        physics = walker.Physics.from_xml_string(*walker.get_model_and_assets())
        return control.Environment(
            physics,
            task,
            time_limit=_TIME_LIMIT if time_limit is None else time_limit,
            control_timestep=_CONTROL_TIMESTEP,
        )
