"""Held actions: k-step training transitions, the rollout's frame skip, FB's goal space."""

import numpy as np
import pytest
import torch
from conftest import make_arrays

from zsrl.agents.fb import FBConfig, FBModel
from zsrl.data import DatasetError, from_numpy, held_action_transitions
from zsrl.envs import make_domain
from zsrl.errors import UserError
from zsrl.evaluation import rollout


def _sticky(n=60, episode_len=20, hold=5):
    arrays = make_arrays(n=n, episode_len=episode_len, physics_dim=3)
    for start in range(0, n, hold):  # actions held `hold` steps, as the sticky collector does
        arrays["action"][start : start + hold] = arrays["action"][start]
    return arrays


def test_held_windows_pair_first_state_with_state_k_steps_later():
    arrays = _sticky()
    ds = from_numpy(arrays, {"domain": "point_mass_maze", "collector": "sticky"})
    out = held_action_transitions(ds, 3)
    # per block of 5 held steps, windows starting at offsets 0, 1, 2 hold their action
    first = np.array([b + o for b in range(0, 60, 5) for o in range(3)])
    assert len(out) == len(first)
    np.testing.assert_array_equal(out.data["observation"].numpy(), arrays["observation"][first])
    np.testing.assert_array_equal(out.data["action"].numpy(), arrays["action"][first])
    np.testing.assert_array_equal(out.data["next", "observation"].numpy(), arrays["next_observation"][first + 2])
    np.testing.assert_array_equal(out.data["next", "physics"].numpy(), arrays["next_physics"][first + 2])
    np.testing.assert_array_equal(out.data["physics"].numpy(), arrays["physics"][first])
    assert out.meta["action_repeat"] == 3
    assert held_action_transitions(ds, 1) is ds


def test_windows_never_cross_an_episode_boundary():
    arrays = _sticky(n=40, episode_len=10, hold=20)  # one held action spans two episodes
    ds = from_numpy(arrays, {"domain": "point_mass_maze", "collector": "sticky"})
    out = held_action_transitions(ds, 4)
    steps = out.data["step"].numpy()
    assert len(out) == 4 * 7 and steps.max() == 10 - 4  # windows t..t+3 inside each 10-step episode
    np.testing.assert_array_equal(out.data["episode"].numpy(), np.repeat(np.arange(4), 7))


def test_data_without_held_actions_is_refused_with_advice():
    ds = from_numpy(make_arrays(n=64), {"domain": "point_mass_maze", "collector": "random"})
    with pytest.raises(DatasetError, match="--collector sticky"):
        held_action_transitions(ds, 4)


def test_rollout_holds_each_action_for_action_repeat_steps():
    cfg = FBConfig(z_dim=8, hidden_dim=32, embedding_dim=16, backward_hidden_dim=32, action_repeat=4)
    torch.manual_seed(0)
    model = FBModel(4, 2, cfg).eval()
    domain = make_domain("point_mass_maze")
    traj = rollout(model, domain, model.sample_z(1), episodes=2, seed=0, max_steps=12)
    actions = traj.action  # (T, E, 2)
    for block in range(3):
        np.testing.assert_array_equal(actions[4 * block : 4 * block + 4], np.broadcast_to(actions[4 * block], (4, 2, 2)))
    assert not np.array_equal(actions[0], actions[4])  # it does decide again after 4 steps


def test_goal_space_backward_map_reads_only_goal_coordinates():
    cfg = FBConfig(z_dim=8, hidden_dim=32, embedding_dim=16, backward_hidden_dim=32, goal_dims=[0, 1])
    model = FBModel(4, 2, cfg)
    obs = torch.randn(5, 4)
    moved = obs.clone()
    moved[:, 2:] = torch.randn(5, 2)  # other velocities, same positions
    torch.testing.assert_close(model.backward_map(obs), model.backward_map(moved))
    assert not torch.allclose(model.backward_map(obs), model.backward_map(obs + 0.5))
    goal = torch.tensor([0.1, -0.2, 3.0, 3.0])
    torch.testing.assert_close(model.infer_z_from_goal(goal), model.infer_z_from_goal(torch.tensor([0.1, -0.2, 0.0, 0.0])))


def test_goal_dims_out_of_range_is_an_error():
    with pytest.raises(UserError, match="goal_dims"):
        FBModel(4, 2, FBConfig(z_dim=8, hidden_dim=32, embedding_dim=16, goal_dims=[0, 4]))
