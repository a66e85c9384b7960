"""Partially observed variants (zsrl.envs.pomdp): names, corruptions, datasets seen through
them, evaluation rollouts and changed dynamics."""

import numpy as np
import pytest
import torch
from conftest import make_arrays
from fakes import FakeModel

from zsrl.data import from_numpy
from zsrl.envs import make_domain
from zsrl.errors import UserError
from zsrl.evaluation import rollout


def test_variant_names_parse_and_bad_ones_are_refused():
    d = make_domain("walker+occluded+noisy=0.1+dynamics=1.5")
    assert (d.name, d.variant, d.dynamics) == ("walker", "walker+occluded+noisy=0.1+dynamics=1.5", 1.5)
    assert str(d.observer) == "occluded+noisy=0.1" and d.observer.seen_dim(24) == 15
    assert list(d.tasks) == list(make_domain("walker").tasks) and d.goals.keys() == make_domain("walker").goals.keys()
    assert make_domain("point_mass_maze+flickering").observer.corruptions[0].value == 0.2  # the default p
    for spec, words in [
        ("walker+blurry", "unknown setting 'blurry'"),
        ("walker+dynamics=-1", "positive multiplier"),
        ("walker+dynamics", "positive multiplier"),
        ("walker+flickering=1.5", "is a probability"),
        ("walker+noisy=x", "unknown setting"),
        ("gym:Pendulum-v1+occluded", "position_dims"),
        ("walker+occluded+occluded", "appears twice"),
    ]:
        with pytest.raises(UserError, match=words):
            make_domain(spec)


def test_corruptions_are_seeded_and_do_what_they_say():
    d = make_domain("point_mass_maze+sensors=0.3")
    obs = torch.ones(20_000, 4)
    seen = d.observer(obs, torch.Generator().manual_seed(0))
    assert torch.equal(seen, d.observer(obs, torch.Generator().manual_seed(0)))
    assert not torch.equal(seen, d.observer(obs, torch.Generator().manual_seed(1)))
    assert abs((seen == 0).float().mean().item() - 0.3) < 0.01 and (seen == 0).all(1).float().mean() < 0.05
    flick = make_domain("point_mass_maze+flickering=0.25").observer(obs, torch.Generator().manual_seed(0))
    rows_off = (flick == 0).all(1)
    assert abs(rows_off.float().mean().item() - 0.25) < 0.01 and ((flick == 0) == rows_off[:, None]).all()
    noisy = make_domain("point_mass_maze+noisy=0.5").observer(obs, torch.Generator().manual_seed(0))
    assert abs((noisy - 1).std().item() - 0.5) < 0.01
    occluded = make_domain("point_mass_maze+occluded").observer
    x = torch.arange(8.0).reshape(2, 4)
    assert torch.equal(occluded(x), x[:, :2]) and torch.equal(occluded.goal(x), x[:, :2])
    assert torch.equal(make_domain("point_mass_maze+noisy").observer.goal(x), x)  # goals are prompted clean


def test_a_dataset_is_seen_frozen_with_consistent_frames_and_true_rewards():
    arrays = make_arrays(n=64, episode_len=16)
    arrays["next_observation"][:-1] = arrays["observation"][1:]  # consecutive frames of each episode
    data = from_numpy(arrays, {"domain": "point_mass_maze"})
    observer = make_domain("point_mass_maze+noisy=0.3").observer
    seen = data.seen_through(observer, seed=0)
    assert torch.equal(seen.data["observation"], data.seen_through(observer, seed=0).data["observation"])
    assert not torch.equal(seen.data["observation"], data.seen_through(observer, seed=1).data["observation"])
    assert torch.equal(seen.data["true_observation"], data.data["observation"])
    obs, next_obs = seen.data["observation"], seen.data["next", "observation"]
    same_episode = data.data["episode"][1:] == data.data["episode"][:-1]
    assert torch.equal(next_obs[:-1][same_episode], obs[1:][same_episode])  # s'_t is s_{t+1} as seen
    assert not torch.equal(next_obs[:-1][~same_episode], obs[1:][~same_episode])  # a new episode: drawn anew

    def reward(batch):  # rewards read the true observations, whatever the agent sees
        return batch.next_observation[:, 0]

    _, s, r = seen.labelled_sample(reward, 32, seed=3)
    _, s_true, r_true = data.labelled_sample(reward, 32, seed=3)
    assert torch.equal(r, r_true) and not torch.equal(s, s_true)


class Spy(FakeModel):
    """Records what the policy was shown."""

    def __init__(self):
        super().__init__(obs_dim=4, action_dim=2, zero=True)
        self.seen = []

    def act(self, obs, z, mean=True):
        self.seen.append(obs.clone())
        return super().act(obs, z, mean)


def test_evaluation_shows_the_policy_fresh_corruptions_and_keeps_the_truth():
    spy = Spy()
    traj = rollout(spy, make_domain("point_mass_maze+flickering=0.5"), torch.zeros(1, 3), episodes=4, seed=0,
                   max_steps=30)
    seen = torch.stack(spy.seen).numpy()  # (T, E, 4)
    dark = (seen == 0).all(-1)
    assert 0.3 < dark.mean() < 0.7  # fresh every step, ≈ p
    assert not (traj.observation == 0).all(-1).any()  # the rollout keeps the true observations
    np.testing.assert_array_equal(seen[~dark], traj.observation[~dark])
    again = Spy()
    rollout(again, make_domain("point_mass_maze+flickering=0.5"), torch.zeros(1, 3), episodes=4, seed=0, max_steps=30)
    assert np.array_equal(torch.stack(again.seen).numpy(), seen)  # seeded by the evaluation seed


def test_dynamics_scale_every_mass_and_damping_of_every_env_maker():
    base = make_domain("walker").make_env(seed=0).unwrapped.physics.model
    variant = make_domain("walker+dynamics=2")
    for env in (variant.make_env(seed=0), variant.make_task_env("run", seed=0), variant.make_collection_env(0, 100)):
        env.reset(seed=0)
        model = env.unwrapped.physics.model
        np.testing.assert_allclose(model.body_mass, 2 * base.body_mass)
        np.testing.assert_allclose(model.dof_damping, 2 * base.dof_damping)
        env.close()
    with pytest.raises(UserError, match="needs a MuJoCo environment"):
        make_domain("gym:Pendulum-v1+dynamics=2").make_env(seed=0)
