"""A worked plug-in domain: gymnasium's ``Pendulum-v1`` with two tasks and two goals.

Use it without installing anything, from the repository root::

    zsrl collect --domain examples.pendulum_domain:PendulumDomain ...

or ship it in your own package and advertise it as an entry point, so that
``--domain pendulum`` finds it::

    # pyproject.toml of my_pkg
    [project.entry-points."zsrl.domains"]
    pendulum = "my_pkg.pendulum:PendulumDomain"

Pendulum's observation is ``[cos θ, sin θ, θ̇]`` with ``θ = 0`` upright, and its action is a
torque in ``[-2, 2]``, which zsrl sees rescaled to ``[-1, 1]`` (``torque = 2·a``;
:meth:`GymDomain.native_action` undoes the rescaling).

Tasks (rewards of the step ``s → s'`` under action ``a``, computed from ``s`` as Pendulum
does):

* ``swingup`` — Pendulum's own reward, ``-(θ² + 0.1·θ̇² + 0.001·u²)`` with ``θ`` in
  ``[-π, π]`` and ``u`` the clipped torque; equals the environment's reward to float32
  precision (the observation stores ``cos θ, sin θ, θ̇`` in float32);
* ``hang_down`` — the mirror task, ``-((π - |θ|)² + 0.1·θ̇² + 0.001·u²)``: 0 when hanging still.

Goals: ``upright`` ``[1, 0, 0]`` and ``hanging`` ``[-1, 0, 0]`` — the pole at rest, up or down.
Success is an observation within 0.2 (Euclidean, in observation space) of the goal: about
11° off with little velocity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from zsrl.envs import ArrayRewardFn, GymDomain

MAX_TORQUE = 2.0


class PendulumDomain(GymDomain):
    """``Pendulum-v1`` with tasks ``swingup`` and ``hang_down`` (see the module docstring)."""

    name: ClassVar[str] = "pendulum"
    env_id: ClassVar[str | None] = "Pendulum-v1"
    goal_threshold: ClassVar[float] = 0.2
    #: cos θ, sin θ: what the ``+occluded`` variant keeps (θ̇ is dropped)
    position_dims: ClassVar[tuple[int, ...] | None] = (0, 1)

    def reward_functions(self) -> Mapping[str, ArrayRewardFn]:
        return {"swingup": self.swingup, "hang_down": self.hang_down}

    def goal_observations(self) -> Mapping[str, np.ndarray]:
        return {"upright": np.array([1.0, 0.0, 0.0]), "hanging": np.array([-1.0, 0.0, 0.0])}

    def _cost_terms(self, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, ...]:
        obs = np.asarray(obs, np.float64)
        theta = np.arctan2(obs[:, 1], obs[:, 0])  # in [-π, π], 0 = upright
        torque = np.clip(self.native_action(action)[:, 0], -MAX_TORQUE, MAX_TORQUE)
        return theta, obs[:, 2], torque

    def swingup(self, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
        """Pendulum's reward: ``-(θ² + 0.1·θ̇² + 0.001·u²)`` at the state before the step."""
        theta, theta_dot, torque = self._cost_terms(obs, action)
        return -(theta**2 + 0.1 * theta_dot**2 + 0.001 * torque**2)

    def hang_down(self, obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
        """``-((π - |θ|)² + 0.1·θ̇² + 0.001·u²)``: the angle is measured from the bottom."""
        theta, theta_dot, torque = self._cost_terms(obs, action)
        return -((np.pi - np.abs(theta)) ** 2 + 0.1 * theta_dot**2 + 0.001 * torque**2)
