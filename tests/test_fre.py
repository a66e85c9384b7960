"""FRE: encoder invariance, the reward prior, both update phases, persistence and learning."""

import math
import warnings
from contextlib import contextmanager

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import make_arrays
from fakes import FakeModel

from zsrl.agents.base import Model
from zsrl.agents.fre import (
    FREAgent,
    FREConfig,
    FREModel,
    RewardPrior,
    discretize_rewards,
    goal_rewards,
)
from zsrl.data import from_numpy
from zsrl.envs.base import Domain

TINY = FREConfig(
    z_dim=8, context_size=8, trajectory_context=3, decoder_queries=4, emb_dim=16, num_heads=2,
    mlp_dim=32, num_layers=1, hidden_dim=32, hidden_layers=2, num_random_nets=20,
    prompt_bank_size=32, encoder_steps=1, lr=1e-3,
)
CPU = torch.device("cpu")


@contextmanager
def torch_threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def tiny_data(n=256, obs_dim=4, seed=0):
    return from_numpy(make_arrays(n=n, obs_dim=obs_dim, seed=seed), {"domain": "test", "seed": seed})


def ready_agent(cfg=TINY, n=256, domain=None):
    torch.manual_seed(0)
    data = tiny_data(n)
    agent = FREAgent(4, 2, cfg, CPU)
    agent.setup(data, domain)
    return agent, data


# ---- the encoder --------------------------------------------------------------------------
def test_encoder_is_permutation_invariant():
    torch.manual_seed(0)
    model = FREModel(4, 2, TINY)
    states, rewards = torch.randn(3, 8, 4), torch.rand(3, 8) * 2 - 1
    mu, log_std = model.encode(states, rewards)
    assert mu.shape == log_std.shape == (3, 8)
    perm = torch.randperm(8)
    mu_p, log_std_p = model.encode(states[:, perm], rewards[:, perm])
    torch.testing.assert_close(mu_p, mu, atol=1e-5, rtol=0)
    torch.testing.assert_close(log_std_p, log_std, atol=1e-5, rtol=0)
    # ... but it does depend on which reward goes with which state
    mu_swapped, _ = model.encode(states, rewards[:, perm])
    assert not torch.allclose(mu_swapped, mu, atol=1e-4)


def test_reward_binning_and_goal_reward():
    r = torch.tensor([-5.0, -1.0, -0.99, 0.0, 0.999, 1.0, 7.0])
    assert discretize_rewards(r, 32).tolist() == [0, 0, 0, 16, 31, 31, 31]
    states = torch.tensor([[[0.0, 0.0], [0.1, 0.1], [1.0, 0.0]]])
    assert goal_rewards(states, torch.zeros(1, 1, 2), 0.2).tolist() == [[0.0, 0.0, -1.0]]


# ---- the prior over rewards -------------------------------------------------------------
def _goal_rows(cfg, b):
    """Rows ``[0, n)`` of a batch hold goal-reaching rewards (fixed slices, as the reference)."""
    return round(b * cfg.prior_goal / (cfg.prior_goal + cfg.prior_linear + cfg.prior_mlp))


def test_prior_batches_have_the_right_shapes_and_ranges():
    agent, data = ready_agent()
    b, k, q = 60, TINY.context_size, TINY.decoder_queries
    n_goal = _goal_rows(TINY, b)
    batch = agent.sample_batch(data, b)  # encoder phase
    assert batch["context_obs"].shape == (b, k, 4) and batch["context_reward"].shape == (b, k)
    assert batch["query_obs"].shape == (b, q, 4) and batch["query_reward"].shape == (b, q)
    ctx, query = batch["context_reward"], batch["query_reward"]
    # goal rows: rewards in {-1, 0}; the goal is one of the context states and query 0
    goal_ctx = ctx[:n_goal]
    assert set(goal_ctx.unique().tolist()) <= {-1.0, 0.0}
    assert (goal_ctx == 0).any(1).all()
    assert (query[:n_goal, 0] == 0).all()
    # linear and random-MLP rows: clipped to [-1, 1]
    assert ctx[n_goal:].abs().max() <= 1 and query[n_goal:].abs().max() <= 1
    # the first context state is the transition's reached state s'
    next_obs = data.data["next", "observation"]
    assert (batch["context_obs"][:, 0, None, :] == next_obs[None]).all(-1).any(-1).all()
    # policy phase: transition, reward of s' and terminal mask of goal rows
    agent._updates = agent.cfg.encoder_steps
    agent._set_phase()
    batch = agent.sample_batch(data, b)
    assert "query_obs" not in batch
    assert batch["observation"].shape == (b, 4) and batch["action"].shape == (b, 2)
    torch.testing.assert_close(batch["reward"], batch["context_reward"][:, 0])
    torch.testing.assert_close(batch["next", "observation"], batch["context_obs"][:, 0])
    torch.testing.assert_close(batch["mask"][:n_goal], -batch["reward"][:n_goal])
    assert (batch["mask"][:n_goal] == 0).any()  # some goal reached: terminal there
    assert (batch["mask"][n_goal:] == 1).all()


def test_linear_and_random_mlp_rewards():
    torch.manual_seed(0)
    cfg = FREConfig(num_random_nets=50, prior_seed=3)
    prior = RewardPrior(5, cfg)
    # the bank follows the reference init and is reproducible from the seed
    assert prior.mlp_w1.shape == (50, 5, 32) and prior.mlp_b1.shape == (50, 32)
    assert prior.mlp_b1.std().item() == pytest.approx(4.0, rel=0.1)
    assert prior.mlp_w2.std().item() == pytest.approx(0.25, rel=0.1)
    assert torch.equal(RewardPrior(5, cfg).mlp_w1, prior.mlp_w1)
    feats = torch.randn(400, 10, 5) * 3
    r = prior.random_mlp(feats, torch.randint(50, (400,)))
    assert r.shape == (400, 10) and r.min() >= -1 and r.max() <= 1 and r.std() > 0.1
    w, clip01 = prior.sample_linear(400, CPU)
    assert ((w != 0).sum(1) >= 1).all() and w.abs().max() <= 1
    assert 0.03 < (w != 0).float().mean() < 0.35  # ~10% kept (+ the forced one)
    r = prior.linear(feats, w, clip01)
    assert r[clip01].min() >= 0 and r[clip01].max() <= 1
    assert r[~clip01].min() >= -1 and r[~clip01].max() <= 1 and r[~clip01].min() < 0


class _FeatureDomain(Domain):
    """A domain whose features add the squared observation (the prior must use them)."""

    name = "feature_test"

    def make_env(self, seed=None, render_mode=None):  # pragma: no cover - not used
        raise NotImplementedError

    @property
    def tasks(self):
        return {}

    def features(self, observation):
        return np.concatenate([observation, observation**2], -1)


def test_prior_uses_domain_features_when_overridden():
    agent, data = ready_agent(domain=_FeatureDomain())
    assert agent.prior.feat_norm.mean.shape == (8,) and agent.prior.mlp_w1.shape[1] == 8
    assert agent.sample_batch(data, 30)["context_reward"].shape == (30, TINY.context_size)
    plain, _ = ready_agent()
    assert plain.prior.feat_norm.mean.shape == (4,)


# ---- updates ---------------------------------------------------------------------------
def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _step(agent, data, batch_size):
    """One update as the engine runs it: the phase's batch, the update, the phase counter."""
    metrics = agent.update(agent.sample_batch(data, batch_size))
    agent.after_step()
    return metrics


def _changed(before, module):
    return [not torch.equal(a, b) for a, b in zip(before, module.parameters())]


def test_updates_change_the_right_parameters_in_each_phase():
    agent, data = ready_agent()
    m = agent.model
    enc, dec, pol = _params(m.encoder), _params(m.decoder), _params(m.actor)
    metrics = _step(agent, data, 32)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in metrics.values())
    assert metrics["train/policy_phase"].item() == 0 and metrics["loss/reward_pred"] > 0
    assert any(_changed(enc, m.encoder)) and all(_changed(dec, m.decoder))
    assert not any(_changed(pol, m.actor))
    assert agent.phase == "policy"

    enc = _params(m.encoder)
    val, crit, pol, tgt = _params(m.value_net), _params(m.critic), _params(m.actor), _params(agent.critic_target)
    metrics2 = _step(agent, data, 32)
    assert list(metrics2) == list(metrics)  # same keys in both phases (for the CSV log)
    assert metrics2["train/policy_phase"].item() == 1 and metrics2["loss/critic"] > 0
    assert all(_changed(val, m.value_net)) and all(_changed(crit, m.critic)) and all(_changed(pol, m.actor))
    assert all(_changed(tgt, agent.critic_target))  # Polyak
    assert not any(_changed(enc, m.encoder))  # frozen after the first phase
    assert agent.updates_done == 2


def test_training_state_restores_the_phase_and_the_prior():
    agent, data = ready_agent()
    for _ in range(3):
        _step(agent, data, 16)
    state = agent.state_dict()
    other = FREAgent(4, 2, TINY, CPU)
    other.setup(data, None)
    other.prior.mlp_w1.zero_()
    assert other.phase == "encoder"
    other.load_state_dict(state)
    assert other.updates_done == 3 and other.phase == "policy"
    assert torch.equal(other.prior.mlp_w1, agent.prior.mlp_w1)


# ---- prompting and persistence ---------------------------------------------------------------
def test_prompting_shapes_chunks_and_validation():
    agent, _ = ready_agent()
    model = agent.model.eval()
    obs, k = torch.randn(50, 4), TINY.context_size
    rewards = torch.rand(50) * 2 - 1
    z = model.infer_z_from_rewards(obs, rewards)
    assert z.shape == (1, TINY.z_dim)
    # more than K samples: the mean μ over ⌊N/K⌋ chunks of a fixed shuffle
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(0))[: 6 * k]
    mu, _ = model.encode(obs[perm].view(6, k, 4), rewards[perm].view(6, k))
    torch.testing.assert_close(z, mu.mean(0, keepdim=True))
    # at most K samples: one context
    mu1, _ = model.encode(obs[None, :5], rewards[None, :5])
    torch.testing.assert_close(model.infer_z_from_rewards(obs[:5], rewards[:5]), mu1)
    assert model.infer_z_from_goal(obs[0]).shape == (1, TINY.z_dim)
    assert model.infer_z_from_goal(obs[:3]).shape == (3, TINY.z_dim)
    assert model.sample_z(5).shape == (5, TINY.z_dim)
    a = model.act(obs, z.expand(50, -1))
    assert a.shape == (50, 2) and a.abs().max() <= 1
    assert model.act(obs, z.expand(50, -1), mean=False).abs().max() <= 1
    with pytest.warns(UserWarning, match="outside and are clipped"):
        model.infer_z_from_rewards(obs, rewards * 3)
    with pytest.raises(ValueError, match="reward samples contains 1 non-finite"):
        model.infer_z_from_rewards(obs[:3], torch.tensor([0.0, float("nan"), 0.0]))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        model.infer_z_from_rewards(torch.randn(10, 5), torch.zeros(10))
    with pytest.raises(ValueError, match="got 9 rewards for 10 states"):
        model.infer_z_from_rewards(obs[:10], torch.zeros(9))
    with pytest.raises(ValueError, match="must have 4 dims"):
        model.infer_z_from_goal(torch.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        model.infer_z_from_goal(torch.tensor([0.0, float("inf"), 0.0, 0.0]))
    with pytest.raises(RuntimeError, match="no bank of dataset states"):
        FREModel(4, 2, TINY).infer_z_from_goal(torch.zeros(4))


def test_save_load_roundtrip(tmp_path):
    agent, data = ready_agent()
    for _ in range(2):
        _step(agent, data, 16)
    model = agent.model.eval()
    model.save(tmp_path / "m", extra={"domain": "test"})
    loaded = Model.load(tmp_path / "m")
    assert isinstance(loaded, FREModel) and loaded.meta["domain"] == "test"
    obs, rewards = torch.randn(40, 4), torch.rand(40)
    z = model.infer_z_from_rewards(obs, rewards)
    torch.testing.assert_close(loaded.infer_z_from_rewards(obs, rewards), z)
    torch.testing.assert_close(loaded.infer_z_from_goal(obs[0]), model.infer_z_from_goal(obs[0]))
    torch.testing.assert_close(loaded.act(obs, z.expand(40, -1)), model.act(obs, z.expand(40, -1)))
    torch.testing.assert_close(loaded.obs_norm.std, model.obs_norm.std)
    # models saved before the statistics moved into a Standardize (keys obs_mean / obs_std) load
    from safetensors.torch import load_file, save_file

    from zsrl.agents.base import MODEL_WEIGHTS

    weights = tmp_path / "m" / MODEL_WEIGHTS
    state = load_file(str(weights))
    state["obs_mean"], state["obs_std"] = state.pop("obs_norm.mean"), state.pop("obs_norm.std")
    save_file(state, str(weights))
    old = Model.load(tmp_path / "m")
    torch.testing.assert_close(old.obs_norm.mean, model.obs_norm.mean)
    torch.testing.assert_close(old.act(obs, z.expand(40, -1)), model.act(obs, z.expand(40, -1)))


def test_config_is_validated():
    from zsrl.errors import UserError

    with pytest.raises(UserError, match="trajectory_context"):
        FREModel(4, 2, FREConfig(context_size=4, trajectory_context=8))
    with pytest.raises(UserError, match="goal_dims"):
        FREModel(4, 2, FREConfig(goal_dims=[0, 4]))


@pytest.mark.parametrize("domain", ["point_mass_maze", "walker", "cheetah", "quadruped"])
def test_presets_parse(domain):
    from zsrl.config import load_run_config

    for suffix in ("", "_cpu"):
        cfg = load_run_config(f"fre/{domain}{suffix}")
        assert cfg.agent.name == "fre" and cfg.domain == domain
        assert cfg.train.steps > cfg.agent.encoder_steps > 0  # both phases are trained


# ---- learning ---------------------------------------------------------------------------------
class PointEnv(gym.Env):
    """A 2-D point without momentum: ``s' = clip(s + 0.1·a, -1, 1)``; 50-step episodes."""

    def __init__(self, seed=None):
        self.observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self._rng = np.random.default_rng(seed)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._pos = self._rng.uniform(-1, 1, 2).astype(np.float32)
        self._t = 0
        return self._pos.copy(), {}

    def step(self, action):
        action = np.clip(np.asarray(action, np.float32), -1, 1)
        self._pos = np.clip(self._pos + 0.1 * action, -1, 1).astype(np.float32)
        self._t += 1
        return self._pos.copy(), 0.0, False, self._t >= PointDomain.episode_length, {}


GOALS = {"a": np.array([-0.6, 0.6], np.float32), "b": np.array([0.6, -0.6], np.float32)}


class PointDomain(Domain):
    name = "fre_test_point"
    episode_length = 50
    goal_threshold = 0.1

    def make_env(self, seed=None, render_mode=None):
        return PointEnv(seed)

    @property
    def tasks(self):
        return {
            f"reach_{g}": (lambda t, g=g: -np.linalg.norm(t.next_observation - GOALS[g], axis=-1))
            for g in GOALS
        }

    @property
    def goals(self):
        return dict(GOALS)


class _StickyRandom:
    """Uniform random actions, each held for a geometric number of steps (mean 5)."""

    name = "sticky_random"

    def __init__(self, num_envs, seed):
        self.rng = np.random.default_rng(seed)
        self.action = self.rng.uniform(-1, 1, (num_envs, 2))

    def act(self, obs):
        change = self.rng.random(len(self.action)) < 0.2
        self.action[change] = self.rng.uniform(-1, 1, (int(change.sum()), 2))
        return self.action.astype(np.float32)

    def observe(self, *args):
        pass


@pytest.mark.slow
def test_fre_learns_to_reach_prompted_goals(tmp_path):
    """Trained through the shared loop, goal prompts steer the policy to their own goal.

    Compared with a uniformly random policy from the same start states, and with the other
    goal: an untrained or prompt-ignoring policy fails both comparisons.
    """
    from zsrl.collection import collect
    from zsrl.config import RunConfig, TrainConfig
    from zsrl.evaluation import rollout
    from zsrl.registry import register_domain
    from zsrl.training import start_run

    register_domain(PointDomain.name, PointDomain)
    domain = PointDomain()
    with torch_threads(1):
        data = collect(domain, _StickyRandom(4, 0), 20_000, num_envs=4, seed=0, progress=False)
        data.save(tmp_path / "data")
        cfg = FREConfig(
            z_dim=16, context_size=12, trajectory_context=4, decoder_queries=4, emb_dim=32,
            mlp_dim=64, num_layers=1, hidden_dim=64, hidden_layers=2, num_random_nets=100,
            lr=1e-3, discount=0.95, tau=0.05, goal_threshold=0.15, encoder_steps=800,
            prior_goal=0.5, prior_linear=0.25, prior_mlp=0.25, prompt_bank_size=256,
        )
        run = RunConfig(
            domain=PointDomain.name, agent=cfg,
            train=TrainConfig(steps=2000, batch_size=128, device="cpu", log_every=500,
                              checkpoint_every=10_000, progress=False, seed=0),
        )
        run_dir = start_run(run, tmp_path / "data", tmp_path / "run")
        model = Model.load(run_dir / "model")

        def final_positions(policy, z):
            traj = rollout(policy, domain, z, episodes=8, seed=123, max_steps=40)
            return traj.next_observation[-1]

        random_final = final_positions(FakeModel(obs_dim=2), torch.zeros(1, 1))
        for name, goal in GOALS.items():
            other = GOALS["b" if name == "a" else "a"]
            final = final_positions(model, model.infer_z_from_goal(torch.as_tensor(goal)))
            to_goal = np.linalg.norm(final - goal, axis=-1).mean()
            to_other = np.linalg.norm(final - other, axis=-1).mean()
            random_to_goal = np.linalg.norm(random_final - goal, axis=-1).mean()
            assert to_goal < 0.5 * random_to_goal, (name, to_goal, random_to_goal)
            assert to_goal < 0.5 * to_other, (name, to_goal, to_other)


def test_point_mass_maze_end_to_end(tmp_path):
    """The CPU preset's agent trains a few updates on real point-mass maze data and prompts."""
    from zsrl.collection import collect
    from zsrl.config import load_run_config
    from zsrl.envs import make_domain
    from zsrl.evaluation import rollout
    from zsrl.explore import RandomExplorer
    from zsrl.training import start_run

    domain = make_domain("point_mass_maze")
    with torch_threads(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        data = collect(domain, RandomExplorer(2, seed=0), 2000, num_envs=2, seed=0, progress=False)
        data.save(tmp_path / "data")
        overrides = [
            "train.steps=6", "agent.encoder_steps=3", "train.batch_size=32", "train.progress=false",
            "agent.hidden_dim=32", "agent.num_random_nets=50", "train.checkpoint_every=4",
        ]
        cfg = load_run_config("fre/point_mass_maze_cpu", overrides)
        run_dir = start_run(cfg, tmp_path / "data", tmp_path / "run")
        model = Model.load(run_dir / "model")
        z = model.infer_z_from_goal(torch.as_tensor(domain.goal("reach_top_left")))
        assert z.shape == (1, cfg.agent.z_dim) and torch.isfinite(z).all()
        traj = rollout(model, domain, z, episodes=1, seed=0, max_steps=5)
        assert traj.action.shape == (5, 1, 2)
        assert math.isfinite(float(np.abs(traj.next_observation).max()))


# ---- reference options: prior inputs, MLP blocks, DDPG policy extraction ------------------------
def test_prior_reads_raw_or_standardized_features():
    feats = torch.tensor([[10.0, -4.0], [30.0, 0.0]])
    prior = RewardPrior(2, FREConfig(num_random_nets=2))  # default: raw, as the reference
    prior.feat_norm.mean.copy_(torch.tensor([20.0, -2.0]))
    prior.feat_norm.std.copy_(torch.tensor([10.0, 2.0]))
    assert torch.equal(prior.normalize(feats), feats)
    prior.cfg = FREConfig(num_random_nets=2, prior_inputs="standardized")
    assert torch.allclose(prior.normalize(feats), torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))


def test_mlp_blocks_follow_the_config():
    def kinds(net):
        return [type(m).__name__ for m in net]

    ref = FREModel(4, 2, TINY)  # ln_mish: LayerNorm + Mish after every hidden layer
    assert kinds(ref.value_net) == ["Linear", "LayerNorm", "Mish", "Linear", "LayerNorm", "Mish", "Linear"]
    ours = FREModel(4, 2, FREConfig(**{**TINY.__dict__, "mlp_blocks": "ntanh"}))
    assert kinds(ours.value_net) == ["Linear", "LayerNorm", "Tanh", "Linear", "ReLU", "Linear"]


def test_ddpg_actor_loss_is_the_normalised_q_plus_behaviour_cloning():
    cfg = FREConfig(**{**TINY.__dict__, "actor_loss": "ddpg", "bc_weight": 0.5})
    agent, data = ready_agent(cfg)
    _step(agent, data, 32)  # the encoder phase
    batch = agent.sample_batch(data, 32)
    m = agent.model
    with torch.no_grad():
        w, _ = m.encode(batch["context_obs"], batch["context_reward"])
        pi, _ = m.actor(torch.cat([m.normalize(batch["observation"]), w], -1))
        q = m.q_values(batch["observation"], w, pi).min(0).values
        expected = -q.mean() / q.abs().mean() + 0.5 * (pi - batch["action"]).pow(2).sum(-1).mean()
    critic = _params(m.critic)
    metrics = agent.update(batch)
    assert metrics["loss/actor"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert all(_changed(critic, m.critic))  # the critic still learns from its own loss
