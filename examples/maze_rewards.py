"""Reward functions for the point-mass maze written outside zsrl: held-out prompts.

None of them is a built-in task; `zsrl eval RUN --task examples.maze_rewards:NAME` labels
dataset states with one, prompts the agent with them, and scores its rollouts with the
same function. Each takes batched float32 arrays ``(obs, action, next_obs)`` — observations
are ``[x, y, vx, vy]`` — and returns one reward per transition.
"""

import numpy as np


def _near(next_obs: np.ndarray, target: tuple[float, float], radius: float = 0.03) -> np.ndarray:
    distance = np.linalg.norm(next_obs[:, :2] - np.asarray(target, np.float32), axis=-1)
    return (distance < radius).astype(np.float32)


def left_doorway(obs, action, next_obs):
    """1 within 3 cm of the doorway between the two left rooms, (-0.24, 0)."""
    return _near(next_obs, (-0.24, 0.0))


def top_doorway(obs, action, next_obs):
    """1 within 3 cm of the doorway between the two top rooms, (0, 0.24)."""
    return _near(next_obs, (0.0, 0.24))


def bottom_right_corner(obs, action, next_obs):
    """1 within 3 cm of (0.25, -0.25), the far corner of the room farthest from the start."""
    return _near(next_obs, (0.25, -0.25))


def move_right(obs, action, next_obs):
    """The velocity along +x (m/s), clipped at 0: run right wherever you are."""
    return np.clip(next_obs[:, 2], 0.0, None).astype(np.float32)


def move_down(obs, action, next_obs):
    """The velocity along −y (m/s), clipped at 0: run down wherever you are."""
    return np.clip(-next_obs[:, 3], 0.0, None).astype(np.float32)
