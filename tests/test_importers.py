"""Datasets of the field: ExORL episode folders, made here in ExORL's layout (no download)."""

from __future__ import annotations

import numpy as np
import pytest

import zsrl
from zsrl.cli import main
from zsrl.data import as_transitions
from zsrl.envs import make_domain
from zsrl.errors import DatasetError


def write_exorl(folder, domain_name, task, episodes=2, steps=40, seed=0):
    """Episodes of random actions saved as ExORL saves them: T + 1 steps, a dummy first one;
    returns the rewards the environment gave for ``task``."""
    domain = make_domain(domain_name)
    rng = np.random.default_rng(seed)
    rewards = []
    folder.mkdir(parents=True)
    for k in range(episodes):
        env = domain.make_task_env(task, seed=seed + k)
        obs, info = env.reset(seed=seed + k)
        a_dim = env.action_space.shape[0]
        ep = {"observation": [obs], "action": [np.zeros(a_dim, np.float32)], "reward": [0.0], "discount": [1.0],
              "physics": [info["physics"]]}
        for _ in range(steps):
            action = rng.uniform(-1, 1, a_dim).astype(np.float32)
            obs, reward, terminated, _, info = env.step(action)
            for key, value in zip(ep, (obs, action, reward, 0.0 if terminated else 1.0, info["physics"])):
                ep[key].append(value)
        env.close()
        np.savez(folder / f"{k:06d}_{steps + 1}.npz", **{key: np.asarray(v) for key, v in ep.items()})
        rewards.append(np.asarray(ep["reward"][1:], np.float32))
    return np.concatenate(rewards)


def test_an_exorl_folder_imports_and_relabels_exactly(tmp_path):
    env_rewards = write_exorl(tmp_path / "buffer", "walker", "walk")
    data = zsrl.import_dataset("exorl", tmp_path / "buffer", "walker", tmp_path / "ds")
    assert len(data) == 80 and data.meta["collector"] == "exorl:buffer" and data.meta["episodes_imported"] == 2
    loaded = zsrl.load_dataset(tmp_path / "ds")
    relabelled = make_domain("walker").reward("walk", as_transitions(loaded.data))
    np.testing.assert_allclose(relabelled, env_rewards, atol=1e-6)
    assert (loaded.data["episode"][:40] == 0).all() and (loaded.data["step"][:3] == np.arange(3)).all()


def test_the_cli_imports_trains_on_and_refuses_another_domains_data(tmp_path, capsys):
    write_exorl(tmp_path / "maze", "point_mass_maze", "reach_top_left", episodes=3, steps=30)
    assert main(["data", "import", "exorl", str(tmp_path / "maze"), "--domain", "point_mass_maze",
                 "--out", str(tmp_path / "ds"), "--episodes", "2"]) == 0
    assert "imported 2 episodes, 60 transitions of point_mass_maze" in capsys.readouterr().out
    run = zsrl.train("fb/point_mass_maze_cpu", tmp_path / "ds", out=tmp_path / "run",
                     overrides={"agent.z_dim": 8, "agent.hidden_dim": 32, "agent.embedding_dim": 16,
                                "agent.backward_hidden_dim": 32, "agent.action_repeat": 1, "train.batch_size": 16,
                                "train.steps": 4, "train.progress": False, "train.compile": False})
    assert run.step == 4
    assert main(["data", "import", "exorl", str(tmp_path / "maze"), "--domain", "walker",
                 "--out", str(tmp_path / "w")]) == 2
    assert "is it an ExORL dataset of this domain?" in " ".join(capsys.readouterr().err.split())
    (tmp_path / "junk").mkdir()
    np.savez(tmp_path / "junk" / "x.npz", observation=np.zeros((3, 4)))
    with pytest.raises(DatasetError, match="is not an ExORL episode: it lacks action, discount, physics"):
        zsrl.import_dataset("exorl", tmp_path / "junk", "point_mass_maze", tmp_path / "j")


def test_a_zsrl_dataset_goes_to_minari_and_back(tmp_path, monkeypatch):
    pytest.importorskip("minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    data = zsrl.collect("point_mass_maze", transitions=2000, out=tmp_path / "ds", episode_length=1000, progress=False)
    exported = zsrl.export_minari(tmp_path / "ds", "zsrl/maze/sticky-v0")
    assert (exported.total_episodes, exported.total_steps) == (data.meta["num_episodes"], 2000)
    back = zsrl.import_dataset("minari", "zsrl/maze/sticky-v0", "point_mass_maze", tmp_path / "back")
    for key in ("observation", "action", ("next", "observation"), ("next", "terminated"), "physics", "episode"):
        assert (back.data[key] == data.data[key]).all(), key
    np.testing.assert_array_equal(make_domain("point_mass_maze").reward("reach_top_left", as_transitions(back.data)),
                                  make_domain("point_mass_maze").reward("reach_top_left", as_transitions(data.data)))


def test_a_minari_dataset_of_any_gymnasium_env_trains(tmp_path, monkeypatch, capsys):
    """A dataset recorded with Minari's own API in the env's units (Pendulum's torques in
    [-2, 2]) imports as domain gym:Pendulum-v1 with zsrl's [-1, 1] actions, and trains."""
    minari = pytest.importorskip("minari")
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(0)
    buffers = []
    for k in range(2):
        obs, _ = env.reset(seed=k)
        observations, actions = [obs], []
        for _ in range(100):
            action = rng.uniform(-2, 2, 1).astype(np.float32)
            obs, *_ = env.step(action)
            observations.append(obs)
            actions.append(action)
        buffers.append(EpisodeBuffer(id=k, observations=np.array(observations), actions=np.array(actions),
                                     rewards=np.zeros(100), terminations=np.zeros(100, bool),
                                     truncations=np.r_[np.zeros(99, bool), True], infos={}))
    minari.create_dataset_from_buffers("test/pendulum/random-v0", buffers, env="Pendulum-v1", algorithm_name="random")
    assert main(["data", "import", "minari", "test/pendulum/random-v0", "--domain", "gym:Pendulum-v1",
                 "--out", str(tmp_path / "ds")]) == 0
    data = zsrl.load_dataset(tmp_path / "ds")
    np.testing.assert_allclose(data.data["action"][:100].numpy().ravel(), np.array(buffers[0].actions).ravel() / 2,
                               atol=1e-6)
    assert main(["train", "--agent", "fb", "--dataset", str(tmp_path / "ds"), "--out", str(tmp_path / "run"),
                 "agent.z_dim=8", "agent.hidden_dim=32", "agent.embedding_dim=16", "agent.backward_hidden_dim=32",
                 "train.batch_size=32", "train.steps=5", "train.progress=false"]) == 0
    assert main(["data", "import", "minari", "test/nothing-v0", "--domain", "gym:Pendulum-v1",
                 "--out", str(tmp_path / "x")]) == 2
    assert "cannot be loaded" in capsys.readouterr().err
