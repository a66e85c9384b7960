"""HILP: the value loss and the intrinsic reward by hand, the successor-feature target, the
z mix, prompting (least squares, goal directions), bad input, persistence, exact resume, the
CLI and the presets."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import make_arrays
from fakes import FakeModel
from torch import nn

from zsrl.agents.base import Model
from zsrl.agents.hilp import HILPAgent, HILPConfig, HILPModel, goal_value_loss
from zsrl.cli import main
from zsrl.config import from_dict, list_presets, load_run_config
from zsrl.data import from_numpy
from zsrl.engine import Engine
from zsrl.errors import UserError
from zsrl.training import resume_run, start_run

CPU = torch.device("cpu")
TINY = HILPConfig(z_dim=8, phi_hidden_dim=32, hidden_dim=32, embedding_dim=16)
RUN_TINY = [
    "agent.z_dim=8", "agent.phi_hidden_dim=32", "agent.hidden_dim=32", "agent.embedding_dim=16",
    "train.batch_size=32", "train.log_every=5", "train.checkpoint_every=10", "train.progress=false",
]


@pytest.fixture
def data():
    return from_numpy(make_arrays(n=256), {"domain": "x"})


class _LinearPhi(nn.Module):
    """``φ_e(x) = x W_e`` for known matrices ``W`` ``(E, obs_dim, d)``."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, x):
        return torch.einsum("ni,eid->end", x, self.w)


class _ConstantSF(nn.Module):
    """``ψ_e(s, a, z)`` = fixed vectors per head, ``(E, d)`` broadcast over the batch."""

    def __init__(self, values):
        super().__init__()
        self.values = nn.Parameter(torch.tensor(values))

    def forward(self, obs, z, action):
        return self.values[:, None, :].expand(-1, obs.shape[0], -1)


def _matvec(x, w):
    return [sum(x[i] * w[i][j] for i in range(len(x))) for j in range(len(w[0]))]


def _v(w, s, g):
    """``−√max(‖sW − gW‖², 1e-6)`` in plain Python."""
    ps, pg = _matvec(s, w), _matvec(g, w)
    return -math.sqrt(max(sum((a - b) ** 2 for a, b in zip(ps, pg)), 1e-6))


# ---- the losses by hand ------------------------------------------------------------------------
def test_goal_value_loss_by_hand():
    w_online = [[[1.0, 0.0], [0.0, 1.0]], [[2.0, 0.0], [0.0, 1.0]]]
    w_target = [[[1.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [0.5, 1.0]]]
    obs = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]
    nxt = [[1.0, 0.0], [1.0, 1.0], [2.0, 1.0]]
    goal = [[0.0, 0.0], [3.0, 1.0], [1.0, 1.0]]  # row 0 is at its goal (s == g); row 2's goal is s
    gamma, tau = 0.9, 0.7
    expected = [0.0, 0.0]
    for s, s2, g in zip(obs, nxt, goal):
        success = 1.0 if s == g else 0.0
        r, m = success - 1.0, 1.0 - success
        next_vt = [_v(w, s2, g) for w in w_target]
        q_min = r + gamma * m * min(next_vt)
        adv = q_min - sum(_v(w, s, g) for w in w_target) / 2
        for e in range(2):
            diff = r + gamma * m * next_vt[e] - _v(w_online[e], s, g)
            expected[e] += (tau if adv >= 0 else 1 - tau) * diff**2 / 3
    agent = HILPAgent(2, 2, HILPConfig(z_dim=2, hilp_discount=gamma, hilp_expectile=tau), CPU)
    agent.model.phi = _LinearPhi(w_online)
    agent.phi_target = _LinearPhi(w_target)
    t = torch.tensor
    loss, _ = agent.phi_loss(t(obs), t(nxt), t(goal))
    assert loss.item() == pytest.approx(sum(expected), rel=1e-5)
    loss.backward()
    assert agent.model.phi.w.grad.abs().sum() > 0  # gradients reach the online φ only
    # the pure function: success stops the bootstrap and gives reward 0
    v = t([[-2.0], [-3.0]])
    loss, adv = goal_value_loss(v, t([[-5.0], [-1.0]]), t([[-1.0], [-1.0]]), t([1.0]), 0.9, 0.5)
    assert adv.item() == pytest.approx(1.0) and loss.item() == pytest.approx(0.5 * (4 + 9))


def test_intrinsic_reward_by_hand():
    model = HILPModel(2, 2, HILPConfig(z_dim=2))
    model.phi = _LinearPhi([[[1.0, 0.0], [0.0, 1.0]], [[5.0, 5.0], [5.0, 5.0]]])  # head 1 unused
    model.phi_mean.copy_(torch.tensor([0.5, -0.5]))
    s, s2, z = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 1.0]]), torch.tensor([2.0, 1.0])
    diff = model.reward_features(s, s2)
    assert diff.tolist() == [[2.0, -1.0]] and (diff @ z).item() == 3.0  # (φ(s') − φ(s))ᵀz
    model.cfg.feature_type = "state"
    state = model.reward_features(s, s2)
    assert state.tolist() == [[2.5, 1.5]] and (state @ z).item() == 6.5  # (φ(s') − φ̄)ᵀz


@pytest.mark.parametrize("q_loss, expected", [(False, 0.25 + 4.25), (True, 0.5**2 + 3.5**2)])
def test_sf_target_bootstraps_the_head_with_the_smaller_q(q_loss, expected):
    agent = HILPAgent(2, 2, HILPConfig(z_dim=2, q_loss=q_loss), CPU)
    agent.sf_target = _ConstantSF([[3.0, 1.0], [2.0, 5.0]])  # Qᵀz with z = (1, 2): 5 < 12 → head 0
    agent.model.successor_features = _ConstantSF([[2.0, 0.0], [1.0, 2.0]])
    obs, z = torch.zeros(1, 2), torch.tensor([[1.0, 2.0]])
    feats, discount = torch.tensor([[1.0, -1.0]]), torch.tensor([0.5])
    # y = (1, −1) + 0.5·(3, 1) = (2.5, −0.5), yᵀz = 1.5 (head 1 would give (2, 1.5));
    # ψ: mean((2, 0) − y)² = 0.25, mean((1, 2) − y)² = 4.25; ψᵀz = 2 and 5
    loss, _ = agent.sf_loss(obs, torch.zeros(1, 2), obs, discount, z, feats)
    assert loss.item() == pytest.approx(expected)


def test_training_z_mixes_whitened_features():
    torch.manual_seed(0)
    feats = torch.randn(64, 8) @ torch.randn(8, 8)
    agent = HILPAgent(4, 2, HILPConfig(**{**vars(TINY), "mix_ratio": 1.0}), CPU)
    z = agent.sample_training_z(feats)
    assert torch.allclose(z.norm(dim=-1), torch.full((64,), math.sqrt(8)), atol=1e-4)
    cov = feats.T @ feats / 64
    # each z is Σ⁻¹ c_p for some batch row p: Σ z is parallel to a row of feats
    cos = torch.nn.functional.normalize(z @ cov, dim=-1) @ torch.nn.functional.normalize(feats, dim=-1).T
    assert cos.max(1).values.min() > 0.999
    agent.cfg.mix_ratio = 0.0  # the sphere prior only (drawn first)
    torch.manual_seed(1)
    z = agent.sample_training_z(feats)
    torch.manual_seed(1)
    torch.testing.assert_close(z, agent.model.sample_z(64))


def test_goals_come_from_the_trajectory_or_the_reached_state(data):
    torch.manual_seed(0)
    agent = HILPAgent(4, 2, HILPConfig(**{**vars(TINY), "goal_from_trajectory": 1.0}), CPU)
    agent.setup(data, None)
    batch = agent.sample_batch(data, 200)
    nxt, ep = data.data["next", "observation"], data.data["episode"]
    rows = [(nxt == g).all(-1).nonzero().item() for g in batch["goal"]]
    starts = [(data.data["observation"] == s).all(-1).nonzero().item() for s in batch["observation"]]
    assert all(r >= i and ep[r] == ep[i] for r, i in zip(rows, starts))
    assert len({r - i for r, i in zip(rows, starts)}) > 5  # geometric offsets, not always 0
    agent.cfg.goal_from_trajectory, agent.cfg.goal_from_current = 0.0, 1.0
    batch = agent.sample_batch(data, 50)
    torch.testing.assert_close(batch["goal"], batch["next", "observation"])


# ---- prompting -----------------------------------------------------------------------------------
@pytest.mark.parametrize("feature_type", ["diff", "state"])
def test_least_squares_prompt_recovers_a_known_z(feature_type):
    torch.manual_seed(0)
    model = HILPModel(4, 2, HILPConfig(**{**vars(TINY), "feature_type": feature_type}))
    model.phi_mean.copy_(torch.randn(8))
    obs, nxt = torch.randn(500, 4), torch.randn(500, 4)
    w = torch.randn(8)
    rewards = model.reward_features(obs, nxt) @ w
    z = model.infer_z_from_transitions(obs, nxt, rewards)
    torch.testing.assert_close(z[0], math.sqrt(8) * w / w.norm(), atol=1e-4, rtol=0)
    if feature_type == "state":  # then the reward is one of the reached state: both agree
        torch.testing.assert_close(model.infer_z_from_rewards(nxt, rewards), z, atol=1e-4, rtol=0)
    # fewer samples than dimensions: the minimum-norm solution, no error
    assert model.infer_z_from_transitions(obs[:3], nxt[:3], rewards[:3]).shape == (1, 8)


def test_goal_prompt_is_the_latent_direction_from_the_state():
    torch.manual_seed(0)
    model = HILPModel(4, 2, TINY)
    model.phi_mean.copy_(torch.randn(8))
    goal, obs = torch.randn(4), torch.randn(5, 4)
    z = model.infer_z_from_goal(goal, obs)
    direction = model.phi(goal[None])[0] - model.phi(obs)[0]
    torch.testing.assert_close(z, math.sqrt(8) * direction / direction.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(model.infer_z_from_goal(goal.expand(5, 4), obs), z)
    f_goal = model.features(goal[None])  # without a state: from the mean representation φ̄
    torch.testing.assert_close(model.infer_z_from_goal(goal), math.sqrt(8) * f_goal / f_goal.norm())
    assert model.goal_z_depends_on_obs


def test_bad_input_is_rejected():
    model = HILPModel(4, 2, TINY)
    obs = torch.randn(10, 4)
    with pytest.raises(ValueError, match="reward samples contains 1 non-finite"):
        model.infer_z_from_transitions(obs, obs, torch.tensor([float("nan")] + [0.0] * 9))
    with pytest.raises(ValueError, match="equal shapes"):
        model.infer_z_from_transitions(obs, obs[:5], torch.zeros(10))
    with pytest.raises(ValueError, match="got 9 rewards for 10 states"):
        model.infer_z_from_transitions(obs, obs, torch.zeros(9))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        model.infer_z_from_rewards(torch.randn(10, 5), torch.zeros(10))
    with pytest.raises(ValueError, match="non-finite"):
        model.infer_z_from_goal(torch.tensor([0.0, float("inf"), 0.0, 0.0]), obs)
    with pytest.raises(ValueError, match="3 goals for 10 states"):
        model.infer_z_from_goal(torch.randn(3, 4), obs)
    with pytest.raises(UserError, match="goal_from_current \\+ goal_from_trajectory"):
        from_dict(HILPConfig, {"goal_from_current": 0.5, "goal_from_trajectory": 0.6}, "agent")
    with pytest.raises(UserError, match="hilp_discount"):
        from_dict(HILPConfig, {"hilp_discount": 1.0}, "agent")
    with pytest.raises(UserError, match="goal_dims"):
        HILPModel(4, 2, HILPConfig(goal_dims=[0, 4]))


# ---- training, persistence, resume -----------------------------------------------------------------
def test_updates_train_every_network_and_the_running_mean(data):
    torch.manual_seed(0)
    agent = HILPAgent(4, 2, TINY, CPU)
    agent.setup(data, None)
    before = {k: v.clone() for k, v in agent.model.state_dict().items()}
    targets = [p.clone() for p in agent.phi_target.parameters()]
    engine = Engine(agent)
    for _ in range(3):
        metrics = engine.step(data, 32)
    assert torch.isfinite(metrics).all() and len(metrics) == len(engine.metric_names)
    assert {"loss/phi", "loss/sf", "loss/actor", "diag/intrinsic_reward"} <= set(engine.metric_names)
    after = agent.model.state_dict()
    for prefix in ("phi.", "successor_features.", "actor.", "phi_mean"):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), prefix
    assert any(not torch.equal(a, b) for a, b in zip(targets, agent.phi_target.parameters()))
    assert set(agent.optimizers()) == {"phi_opt", "sf_opt", "actor_opt"}


def test_model_saves_and_loads(data, tmp_path):
    torch.manual_seed(0)
    agent = HILPAgent(4, 2, HILPConfig(**{**vars(TINY), "feature_type": "state", "goal_dims": [0, 1]}), CPU)
    for _ in range(2):
        agent.update(agent.sample_batch(data, 32))
    agent.model.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["agent"] == "hilp"
    loaded = Model.load(tmp_path / "m")
    assert type(loaded) is HILPModel and loaded.cfg.feature_type == "state" and loaded.cfg.goal_dims == [0, 1]
    torch.testing.assert_close(loaded.phi_mean, agent.model.phi_mean)
    assert loaded.phi_mean.abs().sum() > 0
    obs, nxt = torch.randn(40, 4), torch.randn(40, 4)
    z = agent.model.sample_z(40)
    torch.testing.assert_close(loaded.act(obs, z), agent.model.act(obs, z))
    torch.testing.assert_close(loaded.infer_z_from_goal(obs[0], obs), agent.model.infer_z_from_goal(obs[0], obs))
    r = torch.rand(40)
    torch.testing.assert_close(loaded.infer_z_from_transitions(obs, nxt, r),
                               agent.model.infer_z_from_transitions(obs, nxt, r))


def test_resume_reaches_identical_parameters(maze_data, tmp_path):
    preset = "hilp/point_mass_maze_cpu"
    full = start_run(preset, maze_data, tmp_path / "full", [*RUN_TINY, "train.steps=20"])
    part = start_run(preset, maze_data, tmp_path / "part", [*RUN_TINY, "train.steps=10"])
    cfg = json.loads((part / "config.json").read_text())
    cfg["train"]["steps"] = 20
    (part / "config.json").write_text(json.dumps(cfg))
    resume_run(part)
    a, b = (torch.load(r / "checkpoint" / "training_state.pt", weights_only=True)["agent"] for r in (full, part))
    assert a.keys() == b.keys() == {"module.model", "module.phi_target", "module.sf_target",
                                    "optim.phi_opt", "optim.sf_opt", "optim.actor_opt"}
    for key in ("module.model", "module.phi_target", "module.sf_target"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    rows = [(full / "metrics.csv").read_text().splitlines(), (part / "metrics.csv").read_text().splitlines()]
    assert [r.split(",")[3:] for r in rows[0]] == [r.split(",")[3:] for r in rows[1]]  # same metrics


def test_cli_trains_and_the_model_prompts_with_goals(maze_data, tmp_path):
    from zsrl.envs import make_domain
    from zsrl.evaluation import rollout

    out = tmp_path / "run"
    assert main(["train", "--config", "hilp/point_mass_maze_cpu", "--dataset", str(maze_data),
                 "--out", str(out), *RUN_TINY, "train.steps=10"]) == 0
    header, *rows = (out / "metrics.csv").read_text().splitlines()
    assert "loss/phi" in header and "loss/sf" in header and len(rows) == 2
    model = Model.load(out / "model")
    assert type(model) is HILPModel and model.action_repeat == 10
    domain = make_domain("point_mass_maze")
    goal = domain.goal("reach_top_right")
    traj = rollout(model, domain, None, episodes=2, seed=0, goal=goal, max_steps=30)  # z from each state
    assert traj.action.shape == (30, 2, 2) and np.isfinite(traj.action).all()


# ---- presets -----------------------------------------------------------------------------------------
def test_presets_mirror_fbs_and_carry_the_published_settings():
    presets = set(list_presets())
    fb = sorted(p.split("/", 1)[1] for p in presets if p.startswith("fb/"))
    assert sorted(p.split("/", 1)[1] for p in presets if p.startswith("hilp/")) == fb
    for p in fb:
        cfg = load_run_config(f"hilp/{p}")
        assert cfg.agent.name == "hilp" and cfg.domain == load_run_config(f"fb/{p}").domain
    big = {d: load_run_config(f"hilp/{d}").agent for d in ("walker", "cheetah", "quadruped", "point_mass_maze")}
    assert {d: a.hilp_discount for d, a in big.items()} == {
        "walker": 0.96, "cheetah": 0.98, "quadruped": 0.98, "point_mass_maze": 0.98}
    assert {d: a.q_loss for d, a in big.items()} == {
        "walker": False, "cheetah": False, "quadruped": True, "point_mass_maze": True}
    for a in big.values():
        assert (a.z_dim, a.phi_hidden_dim, a.lr_phi, a.hilp_expectile, a.feature_type) == (50, 512, 5e-4, 0.5, "state")
    assert load_run_config("hilp/generic").train.batch_size == 1024


# ---- learning ------------------------------------------------------------------------------------
#: the start room's target, and the targets of the two rooms next to it
LEARN_GOALS = {"room_centre": (-0.15, 0.15), "top_right": (0.15, 0.15), "bottom_left": (-0.15, -0.15)}


@pytest.mark.slow
def test_goal_prompts_reach_maze_goals_a_random_policy_does_not(tmp_path):
    """Pretrained for 5k updates on 40k reward-free sticky-random maze transitions (about a
    minute on a 2-core CPU), goal prompts (z re-inferred from every state) end within the
    domain's 3 cm success radius of the start room's target and of the two neighbouring
    rooms' targets — through the doorways — where a uniformly random policy from the same
    start states does not get, and closer to their own goal than the agent prompted with
    another goal ends. Measured (two training seeds, one thread): 8 of 8 episodes within
    1–2 cm of every goal; random: 0–1 of 8 for the start room's target, 0 for the others.
    """
    from zsrl.checkpoint import load_run_model
    from zsrl.collection import collect
    from zsrl.config import run_config_from_dict
    from zsrl.envs import make_domain
    from zsrl.evaluation import rollout
    from zsrl.explore import RandomExplorer

    torch.manual_seed(0)
    domain = make_domain("point_mass_maze")
    data = collect(domain, RandomExplorer(2, seed=0, hold=100), 40_000, num_envs=8, progress=False,
                   episode_length=domain.episode_length)  # 1000-step episodes, as the test was sized
    data.save(tmp_path / "data")
    cfg = run_config_from_dict({
        "domain": "point_mass_maze",
        "agent": {"name": "hilp", "z_dim": 16, "phi_hidden_dim": 64, "hidden_dim": 64, "embedding_dim": 32,
                  "lr_phi": 1e-3, "lr_sf": 5e-4, "lr_actor": 5e-4, "phi_tau": 0.02, "discount": 0.95,
                  "tau": 0.1, "feature_type": "state", "action_repeat": 10, "goal_dims": [0, 1]},
        "train": {"steps": 5000, "batch_size": 128, "device": "cpu", "log_every": 1000,
                  "checkpoint_every": 5000, "progress": False},
    })
    model = load_run_model(start_run(cfg, tmp_path / "data", tmp_path / "run"), domain)

    def final_xy(policy, z, goal=None):
        g = None if goal is None else np.array([*goal, 0.0, 0.0], np.float32)
        return rollout(policy, domain, z, episodes=8, seed=1, goal=g, max_steps=500).next_observation[-1, :, :2]

    ends = {name: final_xy(model, None, goal) for name, goal in LEARN_GOALS.items()}  # z from each state
    random_end = final_xy(FakeModel(), torch.zeros(1, 1))
    for name, goal in LEARN_GOALS.items():
        dist = {n: np.linalg.norm(xy - np.array(goal), axis=-1) for n, xy in ends.items()}
        random = np.linalg.norm(random_end - np.array(goal), axis=-1)
        success, random_success = (dist[name] <= domain.goal_threshold).mean(), (random <= domain.goal_threshold).mean()
        summary = (name, dist[name].round(3), random.round(3))
        assert success >= 0.75 and random_success <= 0.25, summary
        assert dist[name].mean() < 0.5 * random.mean(), summary
        assert all(dist[name].mean() < d.mean() for n, d in dist.items() if n != name), summary


def test_normalize_obs_fits_the_skill_networks_inputs_in_setup(data):
    """``normalize_obs``: setup fits ψ's, its target's and the actor's input standardisation to
    the dataset's next observations (φ reads raw observations); off, no network has one."""
    agent = HILPAgent(4, 2, HILPConfig(**{**vars(TINY), "normalize_obs": True}), CPU)
    agent.setup(data, None)
    next_obs = data.data["next", "observation"]
    for net in (agent.model.successor_features, agent.sf_target, agent.model.actor):
        torch.testing.assert_close(net.norm.mean, next_obs.mean(0))
        torch.testing.assert_close(net.norm.std, next_obs.std(0))
    plain = HILPAgent(4, 2, TINY, CPU)
    plain.setup(data, None)
    assert isinstance(plain.model.successor_features.norm, nn.Identity)
