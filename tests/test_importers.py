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
