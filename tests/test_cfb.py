"""Conservative FB (vcfb, mcfb): the penalty by hand, its direction, the Lagrange multiplier,
save/load, exact resume and the CLI."""

import json
import math

import pytest
import torch
from conftest import make_arrays
from torch import nn

from zsrl.agents.base import Model
from zsrl.agents.cfb import MCFBAgent, MCFBConfig, VCFBAgent, VCFBConfig
from zsrl.agents.fb import FBAgent, FBConfig, FBModel
from zsrl.cli import main
from zsrl.config import list_presets, load_run_config
from zsrl.data import from_numpy
from zsrl.training import resume_run, start_run

CPU = torch.device("cpu")
SMALL = {"z_dim": 8, "hidden_dim": 32, "embedding_dim": 16, "backward_hidden_dim": 32, "discount": 0.9}
RUN_TINY = [
    "agent.z_dim=8", "agent.hidden_dim=32", "agent.embedding_dim=16", "agent.backward_hidden_dim=32",
    "train.batch_size=32", "train.log_every=5", "train.checkpoint_every=10", "train.progress=false",
    "train.compile=false",  # the maze preset compiles its update; a few-step run need not
]
AGENTS = {"vcfb": (VCFBAgent, VCFBConfig), "mcfb": (MCFBAgent, MCFBConfig)}


@pytest.fixture
def data():
    return from_numpy(make_arrays(n=256), {"domain": "x"})


class _LinearF(nn.Module):
    """``F^e(s, a, z) = c_e · a`` for two heads (action_dim = z_dim = 2)."""

    def forward(self, obs, z, action):
        return torch.stack([1.0 * action, 2.0 * action])

    def forward_actions(self, obs, z, actions):
        return self(obs, z, actions)


def _lse(xs):
    return math.log(sum(math.exp(x) for x in xs))


@pytest.mark.parametrize("name", ["vcfb", "mcfb"])
def test_penalty_by_hand(name):
    agent_cls, cfg_cls = AGENTS[name]
    agent = agent_cls(3, 2, cfg_cls(**{**SMALL, "z_dim": 2}), CPU)
    agent.model.forward_map = _LinearF()
    obs = torch.zeros(2, 3)
    data_a = [[0.5, 0.0], [0.0, -1.0]]
    sampled = [[[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.5, 0.5]]]  # (K=2, N=2, A=2)
    z = [[1.0, 0.0], [0.0, 1.0]]
    b = [[1.0, 1.0], [-1.0, 2.0]]  # B(s'_j)
    def dot(u, v):
        return u[0] * v[0] + u[1] * v[1]

    lse_sum = data_sum = 0.0
    for c in (1.0, 2.0):  # the heads
        if name == "vcfb":  # logsumexp over the K sampled actions and the data action, mean over i
            lse = [_lse([c * dot(sampled[k][i], z[i]) for k in range(2)] + [c * dot(data_a[i], z[i])])
                   for i in range(2)]
            dat = [c * dot(data_a[i], z[i]) for i in range(2)]
        else:  # the same on M_ij = F(s_i, a, z_i)ᵀ B(s'_j), mean over (i, j)
            lse = [_lse([c * dot(sampled[k][i], b[j]) for k in range(2)] + [c * dot(data_a[i], b[j])])
                   for i in range(2) for j in range(2)]
            dat = [c * dot(data_a[i], b[j]) for i in range(2) for j in range(2)]
        lse_sum += sum(lse) / len(lse)
        data_sum += sum(dat) / len(dat)
    expected = lse_sum - data_sum
    t = torch.tensor
    f = agent.model.forward_map(obs, t(z), t(data_a))
    penalty, lse, dat = agent.conservative_penalty(obs, t(z), f, t(b), t(sampled))
    assert penalty.item() == pytest.approx(expected, rel=1e-6)
    assert lse.item() == pytest.approx(lse_sum, rel=1e-6) and dat.item() == pytest.approx(data_sum, rel=1e-6)


def test_sampled_actions_are_half_uniform_half_policy(data):
    agent = VCFBAgent(4, 2, VCFBConfig(**SMALL, actor_std=0.0), CPU)
    batch = agent.sample_batch(data, 16)
    obs, nxt = batch["observation"], batch["next", "observation"]
    z = agent.model.sample_z(16)
    actions = agent.sample_actions(obs, nxt, z)
    assert actions.shape == (12, 16, 2) and actions.abs().max() <= 1
    with torch.no_grad():
        for k in (6, 7, 8):
            torch.testing.assert_close(actions[k], agent.model.actor(obs, z))
        for k in (9, 10, 11):
            torch.testing.assert_close(actions[k], agent.model.actor(nxt, z))


def _gap(agent, batch, z, actions):
    """mean over sampled actions of Q (or M) minus its mean on the data actions, per head mean."""
    model = agent.model
    with torch.no_grad():
        obs, act, nxt = batch["observation"], batch["action"], batch["next", "observation"]
        k, n = actions.shape[:2]
        f_data = model.forward_map(obs, z, act)
        f_ood = model.forward_map(obs.repeat(k, 1), z.repeat(k, 1), actions.reshape(k * n, -1))
        if isinstance(agent, MCFBAgent):
            b = model.backward_map(nxt)
            return (f_ood @ b.T).mean() - (f_data @ b.T).mean()
        return (f_ood * z.repeat(k, 1)).sum(-1).mean() - (f_data * z).sum(-1).mean()


@pytest.mark.parametrize("name", ["vcfb", "mcfb"])
def test_penalty_lowers_sampled_actions_relative_to_data(data, name):
    """From the same init and the same batch, z and target noise, a few updates with a large
    fixed α leave the sampled actions valued lower, relative to the data's, than plain FB."""
    agent_cls, cfg_cls = AGENTS[name]
    common = {**SMALL, "lr_f": 1e-3, "lr_b": 1e-3}
    torch.manual_seed(0)
    fb = FBAgent(4, 2, FBConfig(**common), CPU)
    torch.manual_seed(0)
    cfb = agent_cls(4, 2, cfg_cls(**common, lagrange=False, alpha=10.0), CPU)
    for k, v in fb.model.state_dict().items():
        assert torch.equal(v, cfb.model.state_dict()[k])
    torch.manual_seed(1)
    batch = cfb.sample_batch(data, 64)
    z = cfb.model.sample_z(64)
    actions = torch.rand(12, 64, 2) * 2 - 1
    before = _gap(fb, batch, z, actions)
    for i in range(5):
        for agent in (fb, cfb):
            torch.manual_seed(10 + i)
            loss, _ = agent.fb_objective(batch["observation"], batch["action"], batch["next", "observation"],
                                         batch["next", "terminated"], z)
            agent.step_optimizers(loss, *agent.fb_optimizers)
    gap_fb, gap_cfb = _gap(fb, batch, z, actions), _gap(cfb, batch, z, actions)
    assert gap_cfb < gap_fb and gap_cfb < before


@pytest.mark.parametrize("target, grows", [(0.0, True), (1e3, False)])
def test_lagrange_alpha_moves_against_the_threshold(data, target, grows):
    """Penalty above the threshold → α grows; below → α shrinks. F/B see α, not its loss."""
    torch.manual_seed(0)
    agent = VCFBAgent(4, 2, VCFBConfig(**SMALL, target_penalty=target, lr_alpha=1e-2), CPU)
    assert agent.log_alpha().item() == 1.0
    batch = agent.sample_batch(data, 32)
    for _ in range(3):
        metrics = agent.update(batch)
    penalty = metrics["loss/penalty"].item()
    assert (penalty > target) == grows
    alpha = agent.log_alpha().item()
    assert (alpha > 1.0) == grows and alpha != 1.0
    assert metrics["loss/alpha"].item() == pytest.approx(-metrics["diag/alpha"].item() * (penalty - target),
                                                         rel=1e-5)


def test_fixed_alpha_declares_no_multiplier(data):
    agent = MCFBAgent(4, 2, MCFBConfig(**SMALL, lagrange=False, alpha=0.3), CPU)
    metrics = agent.update(agent.sample_batch(data, 32))
    assert "loss/alpha" not in metrics and metrics["diag/alpha"].item() == pytest.approx(0.3)
    assert set(agent.optimizers()) == {"fb_opt", "actor_opt"} and "log_alpha" not in agent.modules()


@pytest.mark.parametrize("name", ["vcfb", "mcfb"])
def test_model_saves_and_loads_as_plain_fb_model(data, tmp_path, name):
    agent_cls, cfg_cls = AGENTS[name]
    agent = agent_cls(4, 2, cfg_cls(**SMALL, ood_action_samples=6, target_penalty=7.0), CPU)
    agent.update(agent.sample_batch(data, 32))
    agent.model.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["agent"] == name
    loaded = Model.load(tmp_path / "m")
    assert type(loaded) is FBModel and type(loaded.cfg) is cfg_cls and loaded.agent_name == name
    assert loaded.cfg.ood_action_samples == 6 and loaded.cfg.target_penalty == 7.0
    obs, z = torch.randn(3, 4), agent.model.sample_z(3)
    torch.testing.assert_close(loaded.act(obs, z), agent.model.act(obs, z))


@pytest.mark.parametrize("name", ["vcfb", "mcfb"])
def test_resume_reaches_identical_parameters_and_alpha(maze_data, tmp_path, name):
    preset = f"{name}/point_mass_maze_cpu"
    extra = [*RUN_TINY, "agent.lr_alpha=0.01"]  # α moves visibly within the run
    full = start_run(preset, maze_data, tmp_path / "full", [*extra, "train.steps=20"])
    part = start_run(preset, maze_data, tmp_path / "part", [*extra, "train.steps=10"])
    cfg = json.loads((part / "config.json").read_text())
    cfg["train"]["steps"] = 20
    (part / "config.json").write_text(json.dumps(cfg))
    resume_run(part)
    states = [torch.load(r / "checkpoint" / "training_state.pt", weights_only=True)["agent"]
              for r in (full, part)]
    a, b = states
    assert a.keys() == b.keys() and "module.log_alpha" in a and "optim.alpha_opt" in a
    assert a["module.log_alpha"]["value"].item() != 0.0
    for key in ("module.model", "module.forward_target", "module.backward_target", "module.log_alpha"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    assert "loss/penalty" in (part / "metrics.csv").read_text().splitlines()[0]


def test_cli_trains_vcfb_on_the_maze_preset(maze_data, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--config", "vcfb/point_mass_maze_cpu", "--dataset", str(maze_data),
                 "--out", str(out), *RUN_TINY, "train.steps=10"]) == 0
    header, *rows = (out / "metrics.csv").read_text().splitlines()
    assert "loss/penalty" in header and "diag/alpha" in header and len(rows) == 2
    assert type(Model.load(out / "model")) is FBModel


def test_presets_are_fbs_with_the_agent_name():
    presets = set(list_presets())
    fb = sorted(p.split("/", 1)[1] for p in presets if p.startswith("fb/"))
    for name in ("vcfb", "mcfb"):
        assert sorted(p.split("/", 1)[1] for p in presets if p.startswith(f"{name}/")) == fb
        for p in fb:
            ours, theirs = load_run_config(f"{name}/{p}"), load_run_config(f"fb/{p}")
            assert ours.agent.name == name and ours.domain == theirs.domain and ours.train == theirs.train
            for key, value in vars(theirs.agent).items():
                if key != "name":
                    assert getattr(ours.agent, key) == value, (p, key)
