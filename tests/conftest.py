import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # examples/ (plug-in domains) import from the repo root
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(min(2, torch.get_num_threads()))


def make_arrays(n=64, obs_dim=4, act_dim=2, episode_len=16, physics_dim=None, seed=0, hold=1):
    """Random transitions; ``hold > 1`` holds each action that many steps (sticky-random data)."""
    rng = np.random.default_rng(seed)
    arrays = {
        "observation": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        "next_observation": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "terminated": np.zeros(n, dtype=bool),
        "episode": np.arange(n) // episode_len,
        "step": np.arange(n) % episode_len,
    }
    if hold > 1:
        arrays["action"] = np.repeat(arrays["action"][::hold], hold, axis=0)[:n]
    if physics_dim:
        arrays["physics"] = rng.normal(size=(n, physics_dim))
        arrays["next_physics"] = rng.normal(size=(n, physics_dim))
    return arrays


@pytest.fixture
def tiny_dataset():
    from zsrl.data import from_numpy

    return from_numpy(make_arrays(), {"domain": "point_mass_maze", "collector": "test", "seed": 0})



def save_maze_dataset(path, obs_dim=4, seed=0):
    """A small maze-shaped dataset saved at ``path``, its actions held like the sticky
    collector's (the maze CPU preset trains on held-action windows)."""
    from zsrl.data import from_numpy

    arrays = make_arrays(n=256, obs_dim=obs_dim, act_dim=2, episode_len=64, seed=seed, hold=32)
    arrays["observation"] *= 0.1
    arrays["next_observation"] *= 0.1
    return from_numpy(arrays, {"domain": "point_mass_maze", "collector": "test", "seed": 0}).save(path)


@pytest.fixture
def maze_data(tmp_path):
    return save_maze_dataset(tmp_path / "ds")
