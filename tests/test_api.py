"""zsrl's Python API, used as a training script would: only ``zsrl.*``, a model's ``prompt``
and the policy it returns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zsrl
from zsrl.envs import make_domain

TINY = {"agent.z_dim": 8, "agent.hidden_dim": 32, "agent.embedding_dim": 16, "agent.backward_hidden_dim": 32,
        "train.batch_size": 32, "train.steps": 40, "train.log_every": 10, "train.checkpoint_every": 20,
        "train.progress": False, "train.compile": False}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("api")
    data = zsrl.collect("point_mass_maze", transitions=3000, out=out / "data", episode_length=1000, progress=False)

    class StopAt20(zsrl.Callback):
        def __init__(self):
            self.rows = []

        def on_log(self, run_dir, step, row):
            self.rows.append(step)
            return step >= 20

    stop = StopAt20()
    run = zsrl.train("fb/point_mass_maze_cpu", data, out=out / "run", overrides=TINY, callbacks=[stop])
    return out, data, run, stop


def test_collect_train_with_a_callback_that_stops_early(trained):
    out, data, run, stop = trained
    assert len(data) == 3000 and data.meta["collector"] == "sticky10-100-rest0.2"
    assert zsrl.load_dataset(out / "data").meta["num_transitions"] == 3000
    assert stop.rows == [10, 20] and run.step == 20 and run.config.train.steps == 40
    assert [row["step"] for row in run.metrics] == [10.0, 20.0] and "loss/fb" in run.metrics[0]
    run.resume()  # trains on to train.steps
    assert run.step == 40


def test_a_prompted_policy_acts_like_the_model_and_holds_its_actions(trained):
    out = trained[0]
    model = zsrl.load(out / "run")
    assert type(model) is type(zsrl.load(out / "run" / "model")) and model.action_repeat == 10
    goal = [0.15, 0.15, 0.0, 0.0]
    policy = model.prompt(goal=goal)
    z = model.infer_z_from_goal(torch.tensor(goal))
    obs = np.zeros(4, np.float32)
    first = policy.act(obs)
    assert isinstance(first, np.ndarray) and first.shape == (2,)
    np.testing.assert_allclose(first, model.act(torch.zeros(1, 4), z)[0].numpy())
    moved = np.full(4, 0.1, np.float32)
    for _ in range(9):  # the action is held for action_repeat = 10 steps
        np.testing.assert_array_equal(policy.act(moved), first)
    assert not np.array_equal(policy.act(moved), first)  # the 11th step decides anew
    batch = torch.zeros(3, 4)
    actions = policy(batch)
    assert isinstance(actions, torch.Tensor) and actions.shape == (3, 2)
    action, state = policy.predict(np.zeros((3, 4), np.float32), episode_start=np.array([True, False, True]))
    assert action.shape == (3, 2) and state is None


def test_reward_prompts_from_a_function_or_from_samples(trained):
    _, data, run, _ = trained

    def left(obs, action, next_obs):
        return (next_obs[:, 0] < -0.1).astype(np.float32)

    model = run.model
    by_fn = model.prompt(reward_fn=left, dataset=data, samples=500)
    states = data.data["next", "observation"][:500]
    by_samples = model.prompt(rewards=(states.numpy(), left(None, None, states.numpy())))
    for policy in (by_fn, by_samples):
        env = make_domain("point_mass_maze").make_env(seed=0)
        obs, _ = env.reset(seed=0)
        for _ in range(15):  # a plain gymnasium loop
            obs, *_ = env.step(policy.act(obs))
        env.close()
        assert np.isfinite(obs).all()
    with pytest.raises(ValueError, match="one of rewards="):
        model.prompt(goal=[0, 0, 0, 0], reward_fn=left)
    with pytest.raises(ValueError, match="pass the dataset"):
        model.prompt(reward_fn=left)
    huge = np.full(500, 1e38, dtype=np.float32)  # finite, but their sum into z overflows float32
    with pytest.raises(zsrl.errors.UserError, match="is not finite.*up to 1e\\+38 in size"):
        model.prompt(rewards=(states.numpy(), huge))


def test_evaluate_and_errors_are_the_clis(trained):
    out, data, run, _ = trained
    evaluation = zsrl.evaluate(run, tasks=["reach_top_left"], goals=["reach_top_left"], episodes=1, dataset=data)
    assert set(evaluation.tasks) == {"reach_top_left"} and 0 <= evaluation.goals["reach_top_left"].success <= 1
    with pytest.raises(zsrl.errors.UserError, match="unknown config key"):
        zsrl.train("fb/point_mass_maze_cpu", data, out=out / "bad", overrides={"agent.nope": 1})
    assert not (out / "bad").exists()


def test_the_example_training_script_runs(tmp_path):
    from examples.train_script import main

    ends = main(tmp_path, transitions=3000, steps=40, episode_steps=20,
                extra={k: v for k, v in TINY.items() if k not in ("train.steps", "train.progress")})
    assert set(ends) == {"left doorway (reward)", "top-right room (goal)"} and all(np.isfinite(list(ends.values())))
