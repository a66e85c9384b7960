"""Domains: environments, exact reward relabelling, goals, seeding and the gymnasium plug-in."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from zsrl.envs import DMCDomain, DMCEnv, GymDomain, Transitions, UnknownTaskError, make_domain
from zsrl.envs.dmc import flatten_observation

DMC_DOMAINS = ["walker", "cheetah", "quadruped", "point_mass_maze"]
EXPECTED_TASKS = {
    "walker": ["stand", "walk", "run", "flip"],
    "cheetah": ["run", "run_backward", "walk", "walk_backward"],
    "quadruped": ["walk", "run", "stand", "jump"],
    "point_mass_maze": [
        "reach_top_left", "reach_top_right", "reach_bottom_left", "reach_bottom_right"
    ],
}
ALL_TASKS = [(d, t) for d in DMC_DOMAINS for t in EXPECTED_TASKS[d]]
PENDULUM = "examples.pendulum_domain:PendulumDomain"
# gymnasium's checker warns about unbounded observation spaces, which ours are by design
quiet_checker = pytest.mark.filterwarnings("ignore::UserWarning")

Policy = Callable[[np.ndarray], np.ndarray]


@pytest.fixture(scope="module")
def domains() -> dict[str, DMCDomain]:
    return {name: make_domain(name) for name in DMC_DOMAINS}


def rollout(
    env: DMCEnv, steps: int, policy: Policy, start_qpos: np.ndarray | None = None
) -> tuple[Transitions, np.ndarray]:
    """``steps`` transitions (with physics states) and the env's rewards for them."""
    obs, info = env.reset()
    if start_qpos is not None:
        with env.physics.reset_context():
            env.physics.data.qpos[:] = start_qpos
        obs = flatten_observation(env.task.get_observation(env.physics))
        info = {"physics": env.physics.get_state()}
    rows: list[tuple] = []
    for _ in range(steps):
        action = policy(obs)
        next_obs, reward, terminated, truncated, next_info = env.step(action)
        assert not (terminated or truncated)
        rows.append((obs, action, next_obs, info["physics"], next_info["physics"], reward))
        obs, info = next_obs, next_info
    o, a, o2, p, p2, r = (np.asarray(column) for column in zip(*rows))
    return Transitions(o, a, o2, p, p2), r.astype(np.float32)


def uniform_policy(env: gym.Env, seed: int) -> Policy:
    rng = np.random.default_rng(seed)
    return lambda _: rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)


def hover_policy(target: np.ndarray, seed: int) -> Policy:
    """A noisy controller around ``target``: random actions never reach the maze targets."""
    rng = np.random.default_rng(seed)

    def act(obs: np.ndarray) -> np.ndarray:
        push = 10 * (target - obs[:2]) - obs[2:] + rng.normal(0, 0.5, 2)
        return np.clip(push, -1, 1).astype(np.float32)

    return act


# ---- relabelling --------------------------------------------------------------------------
@pytest.mark.parametrize(("domain_name", "task"), ALL_TASKS)
def test_relabelled_rewards_equal_the_env_rewards(domains, domain_name, task):
    domain = domains[domain_name]
    env = domain.make_env(seed=7, task=task)  # the env's own reward is this task
    if domain_name == "point_mass_maze":
        target = env.task.target
        transitions, env_rewards = rollout(env, 200, hover_policy(target, 7), target + 0.03)
    else:
        transitions, env_rewards = rollout(env, 200, uniform_policy(env, 7))
    env.close()
    assert env_rewards.std() > 0, "degenerate rollout: constant rewards prove nothing"

    relabelled = domain.reward(task, transitions)
    assert relabelled.dtype == np.float32 and relabelled.shape == env_rewards.shape
    assert np.max(np.abs(relabelled - env_rewards)) <= 1e-6
    from_physics = domain.relabel_from_physics(task, transitions)
    assert np.max(np.abs(from_physics - env_rewards)) <= 1e-6


@pytest.mark.parametrize("task", EXPECTED_TASKS["point_mass_maze"])
def test_maze_rewards_need_no_physics(domains, task):
    domain = domains["point_mass_maze"]
    env = domain.make_env(seed=3, task=task)
    target = env.task.target
    transitions, env_rewards = rollout(env, 150, hover_policy(target, 3), target - 0.02)
    env.close()
    without_physics = Transitions(
        transitions.observation, transitions.action, transitions.next_observation
    )
    relabelled = domain.reward(task, without_physics)
    assert env_rewards.max() > 0.5
    # positions come from float32 observations: within the reward's float32 sensitivity
    assert np.max(np.abs(relabelled - env_rewards)) <= 2e-6


def test_dmc_relabelling_needs_physics(domains):
    walker = domains["walker"]
    n = 3
    obs = np.zeros((n, 24), np.float32)
    action = np.zeros((n, 6), np.float32)
    with pytest.raises(ValueError, match="no physics state.*zsrl collect"):
        walker.reward("walk", Transitions(obs, action, obs))
    wrong = np.zeros((n, 5))
    with pytest.raises(ValueError, match=r"expects \(3, 18\)"):
        walker.reward("walk", Transitions(obs, action, obs, wrong, wrong))
    right = np.zeros((n, 18))
    with pytest.raises(ValueError, match=r"actions have shape \(3, 2\)"):
        walker.reward("walk", Transitions(obs, action[:, :2], obs, right, right))


def test_unknown_task_lists_the_tasks(domains):
    for name, domain in domains.items():
        assert list(domain.tasks) == EXPECTED_TASKS[name]
        with pytest.raises(UnknownTaskError, match=", ".join(EXPECTED_TASKS[name])):
            domain.reward("moonwalk", Transitions(*(np.zeros((1, 1), np.float32),) * 3))
        with pytest.raises(UnknownTaskError, match="moonwalk"):
            domain.make_env(task="moonwalk")


# ---- environments -------------------------------------------------------------------------
@quiet_checker
@pytest.mark.parametrize("domain_name", DMC_DOMAINS)
def test_env_passes_gymnasium_checker(domains, domain_name):
    env = domains[domain_name].make_env(seed=0)
    check_env(env, skip_render_check=True)
    assert env.observation_space.dtype == np.float32
    assert env.action_space.dtype == np.float32
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)


@pytest.mark.parametrize("domain_name", DMC_DOMAINS)
def test_seeding_is_reproducible(domains, domain_name):
    domain = domains[domain_name]

    def observations(env: gym.Env, **reset_kwargs) -> np.ndarray:
        obs = [env.reset(**reset_kwargs)[0]]
        actions = np.random.default_rng(0).uniform(-1, 1, (5, *env.action_space.shape))
        obs += [env.step(a.astype(np.float32))[0] for a in actions]
        return np.stack(obs)

    first, second, other = (domain.make_env(seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(observations(first), observations(second))
    assert not np.array_equal(observations(first, seed=11), observations(other))
    np.testing.assert_array_equal(observations(first, seed=11), observations(other, seed=11))
    assert first.reset()[1]["physics"].dtype == np.float64
    for env in (first, second, other):
        env.close()


def test_episodes_truncate_at_the_time_limit(domains):
    maze = domains["point_mass_maze"].make_env(seed=0)
    maze.reset()
    zero = np.zeros(2, np.float32)
    for step in range(1, 1001):
        _, _, terminated, truncated, _ = maze.step(zero)
        assert not terminated and truncated == (step == 1000)
    with pytest.raises(RuntimeError, match="reset"):
        maze.step(zero)

    walker = domains["walker"].make_env(seed=0, time_limit=0.25)  # 10 control steps
    walker.reset()
    flags = [walker.step(np.zeros(6, np.float32))[2:4] for _ in range(10)]
    assert flags == [(False, False)] * 9 + [(False, True)]


def test_vector_env_stacks_physics(domains):
    maze = domains["point_mass_maze"]
    envs = gym.vector.SyncVectorEnv(
        [lambda i=i: maze.make_env(seed=i) for i in range(2)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    obs, info = envs.reset(seed=0)
    _, _, _, _, info = envs.step(np.zeros((2, 2), np.float32))
    assert obs.shape == (2, 4) and info["physics"].shape == (2, 4)
    envs.close()


def test_domains_pickle_without_their_relabelling_physics(domains):
    walker = domains["walker"]
    assert walker._relabel_environment() is not None  # build the cached physics
    clone = pickle.loads(pickle.dumps(walker))
    assert clone._relabel_env is None and list(clone.tasks) == EXPECTED_TASKS["walker"]


def test_render_returns_rgb_frames(domains):
    env = domains["point_mass_maze"].make_env(seed=0, render_mode="rgb_array")
    env.reset()
    try:
        frame = env.render()
    except Exception as exc:  # noqa: BLE001 — no OpenGL on this machine
        pytest.skip(f"no headless OpenGL here: {exc}")
    finally:
        env.close()
    assert frame.shape == (240, 320, 3) and frame.dtype == np.uint8 and frame.std() > 0


# ---- point-mass maze ----------------------------------------------------------------------
def test_maze_goals_and_threshold(domains):
    maze = domains["point_mass_maze"]
    assert list(maze.goals) == EXPECTED_TASKS["point_mass_maze"]
    goal = maze.goal("reach_bottom_right")
    np.testing.assert_array_equal(goal, np.array([0.15, -0.15, 0, 0], np.float32))
    moving_nearby = np.array([[0.15, -0.13, 0.5, -0.5], [0.15, -0.11, 0, 0]], np.float32)
    np.testing.assert_allclose(maze.goal_distance(moving_nearby, goal), [0.02, 0.04], atol=1e-6)
    assert maze.goal_threshold == 0.03


def test_maze_start_region(domains):
    env = domains["point_mass_maze"].make_env()
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        assert -0.29 <= obs[0] <= -0.15 and 0.15 <= obs[1] <= 0.29
        assert np.all(obs[2:] == 0)
    env.close()


def test_maze_geometry_matches_the_model(domains):
    from zsrl.envs.point_mass_maze import INNER_WALLS, TARGETS, free_cells

    env = domains["point_mass_maze"].make_env(task="reach_top_right")
    env.reset()
    sizes = env.physics.named.model.geom_size
    for name, (half_x, half_y) in INNER_WALLS.items():
        np.testing.assert_allclose(sizes[name][:2], [half_x, half_y])
    np.testing.assert_allclose(
        env.physics.named.data.geom_xpos["target"][:2], TARGETS["reach_top_right"]
    )
    env.close()
    assert free_cells(30).sum() == 900 - 68  # the '+' covers 2x18 + 18x2 - 2x2 cells


def test_maze_coverage(domains):
    maze = domains["point_mass_maze"]
    positions = np.array([
        [-0.29, 0.29], [-0.285, 0.285],  # one cell, visited twice
        [0.25, -0.25],                   # a second cell
        [0.0, 0.1],                      # inside the wall maze_x: not a free cell
        [0.5, 0.5],                      # off the floor: ignored
    ])
    observations = np.concatenate([positions, np.zeros_like(positions)], axis=1)
    assert maze.coverage(observations) == pytest.approx(2 / 832)
    # 6 cm cells: no cell centre lies inside the 4 cm thick walls, so every cell is free
    assert maze.coverage(observations[:, :2], bins=10) == pytest.approx(3 / 100)


def test_maze_draws_its_layout(domains):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    assert domains["point_mass_maze"].draw_layout(ax) is ax
    assert len(ax.patches) == 1 + 2 + 4  # floor, walls, targets
    plt.close(fig)


# ---- gymnasium plug-ins -------------------------------------------------------------------
def test_registry_builds_the_builtin_domains(domains):
    from zsrl.envs.cheetah import Cheetah
    from zsrl.envs.point_mass_maze import PointMassMaze
    from zsrl.envs.quadruped import Quadruped
    from zsrl.envs.walker import Walker

    classes = [Walker, Cheetah, Quadruped, PointMassMaze]
    for name, cls in zip(DMC_DOMAINS, classes):
        assert isinstance(domains[name], cls) and domains[name].name == name
        assert domains[name].episode_length == 1000 and domains[name].has_physics


@quiet_checker
def test_pendulum_plugin_reproduces_the_env_reward():
    domain = make_domain(PENDULUM)
    assert isinstance(domain, GymDomain) and domain.name == "pendulum"
    assert domain.episode_length == 200 and list(domain.tasks) == ["swingup", "hang_down"]
    env = domain.make_env(seed=0)
    check_env(env, skip_render_check=True)

    env = domain.make_env(seed=1)
    policy = uniform_policy(env, 1)
    obs, _ = env.reset()
    rows = []
    for step in range(1, 201):
        action = policy(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        rows.append((obs, action, next_obs, reward))
        obs = next_obs
        assert not terminated and truncated == (step == 200)
    o, a, o2, r = (np.asarray(column) for column in zip(*rows))
    transitions = Transitions(o, a.astype(np.float32), o2)
    assert np.max(np.abs(domain.reward("swingup", transitions) - r)) <= 1e-5
    hang_down = domain.reward("hang_down", transitions)
    assert hang_down.shape == (200,) and np.all(hang_down <= 0)

    np.testing.assert_array_equal(domain.make_env(seed=5).reset()[0],
                                  domain.make_env(seed=5).reset()[0])
    np.testing.assert_allclose(domain.native_action(np.array([[-1.0], [0.5]])), [[-2.0], [1.0]])
    assert domain.goal_distance(domain.goal("upright"), domain.goal("upright")) == 0


class _Float64Env(gym.Env):
    """A 2x2-observation, float64 env with a [0, 4] action: exercises make_env's adapters."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2, 2), np.float64)
    action_space = gym.spaces.Box(0.0, 4.0, (1,), np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.uniform(-1, 1, (2, 2)), {}

    def step(self, action):
        assert action.dtype == np.float64 and 0 <= action[0] <= 4
        return np.full((2, 2), action[0] / 4), 0.0, False, False, {}


def test_gym_domain_adapts_factories():
    def spread(obs, action, next_obs):
        return next_obs.max(axis=1) - obs.min(axis=1)

    domain = GymDomain(_Float64Env, {"spread": spread}, name="toy", episode_length=3)
    env = domain.make_env(seed=0)
    assert env.observation_space == gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    obs, _ = env.reset()
    next_obs, *_ = env.step(np.array([0.0], np.float32))
    assert obs.dtype == np.float32 and next_obs.tolist() == [0.5] * 4
    assert [env.step(np.array([1.0], np.float32))[3] for _ in range(2)] == [False, True]
    transitions = Transitions(obs[None], np.zeros((1, 1), np.float32), next_obs[None])
    np.testing.assert_allclose(domain.reward("spread", transitions), [0.5 - obs.min()])
    with pytest.raises(ValueError, match="episode_length"):
        GymDomain(_Float64Env, {"spread": spread})


def test_plugin_mistakes_are_user_errors():
    from zsrl.envs import GymDomain, make_domain
    from zsrl.errors import UserError

    with pytest.raises(UserError, match="gymnasium has no env 'Nowhere-v9'"):
        GymDomain("Nowhere-v9", {})
    with pytest.raises(UserError, match="gymnasium cannot make 'Nowhere-v9'"):
        GymDomain("Nowhere-v9", {}, episode_length=10).make_env()
    with pytest.raises(UserError, match="Discrete-action envs are not supported"):
        GymDomain("CartPole-v1", {}).make_env()
    with pytest.raises(UserError, match="gives a dict, not a zsrl Domain"):
        make_domain("builtins:dict")


def test_domain_hooks_have_defaults():
    from zsrl.envs import GymDomain

    domain = GymDomain("Pendulum-v1", {})
    assert not domain.has_layout and domain.coverage(np.zeros((3, 3))) is None
    obs = np.ones((2, 3), np.float32)
    assert domain.features(obs) is None  # the priors read the observations
    env = domain.make_task_env("anything", seed=0)
    assert env.reset(seed=0)[0].shape == (3,)
    env.close()
