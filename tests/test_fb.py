import dataclasses
import math

import pytest
import torch
from torch import nn

from zsrl.agents.base import Model
from zsrl.agents.fb import FBAgent, FBConfig, FBModel
from zsrl.config import from_dict
from zsrl.errors import CheckpointError, UserError

TINY = FBConfig(z_dim=8, hidden_dim=32, embedding_dim=16, backward_hidden_dim=32, discount=0.9)


class _Fixed(nn.Module):
    """A stand-in network that returns a fixed tensor."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.value


def _fb_loss(f, b, target_f, target_b, discount):
    """FB's loss with fixed F, B and targets (2 transitions, d = 2)."""
    agent = FBAgent(4, 2, dataclasses.replace(TINY, z_dim=2), torch.device("cpu"))
    agent.model.forward_map, agent.model.backward_map = _Fixed(f), _Fixed(b)
    agent.forward_target, agent.backward_target = _Fixed(target_f), _Fixed(target_b)
    obs, z = torch.zeros(2, 4), torch.zeros(2, 2)
    return agent.fb_loss(obs, torch.zeros(2, 2), obs, discount, z)


def test_measure_and_orthonormality_losses_hand_computed():
    # M = F Bᵀ = [[1, 2], [3, 4]] (one head, B = I), M̄ = [[0.5, 0], [0, 0.5]], the second
    # transition terminal: Δ = [[0.5, 2], [3, 4]], off-diagonal ½·(2² + 3²)/2 = 3.25, diagonal
    # −(0.5 + 4)/2 = −2.25; B orthonormal: L_ortho = 0 − 1
    f, eye = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]), torch.eye(2)
    discount = torch.tensor([1.0, 0.0])
    loss, metrics, _, _ = _fb_loss(f, eye, 0.5 * eye[None], eye, discount)
    assert metrics["loss/fb_offdiag"].item() == pytest.approx(3.25)
    assert metrics["loss/fb_diag"].item() == pytest.approx(-2.25) and metrics["loss/fb"].item() == pytest.approx(1.0)
    assert (metrics["loss/ortho_offdiag"].item(), metrics["loss/ortho_diag"].item()) == (0.0, -1.0)
    assert loss.item() == pytest.approx(1.0 - 1.0)  # L_FB + ortho_coef · L_ortho
    # heads are summed, and the target averages them
    _, metrics, _, _ = _fb_loss(f.expand(2, 2, 2), eye, torch.stack([0 * eye, eye]), eye, discount)
    assert metrics["loss/fb"].item() == pytest.approx(2.0)
    # B Bᵀ = 2 everywhere: off-diagonal ½·(2² + 2²)/2, diagonal −2
    _, metrics, _, _ = _fb_loss(f, torch.ones(2, 2), 0.5 * eye[None], eye, discount)
    assert (metrics["loss/ortho_offdiag"].item(), metrics["loss/ortho_diag"].item()) == (2.0, -2.0)


def test_backward_map_lies_on_sphere_and_prompts_project():
    torch.manual_seed(0)
    model = FBModel(4, 2, TINY)
    obs = torch.randn(100, 4)
    b = model.backward_map(obs)
    assert torch.allclose(b.norm(dim=-1), torch.full((100,), math.sqrt(8)), atol=1e-5)
    rewards = torch.rand(100)
    z = model.infer_z_from_rewards(obs, rewards)
    expected = (rewards[:, None] * b).sum(0)
    assert z.shape == (1, 8)
    assert torch.allclose(z[0], math.sqrt(8) * expected / expected.norm(), atol=1e-5)
    zg = model.infer_z_from_goal(obs[0])
    assert zg.shape == (1, 8) and torch.allclose(zg[0], b[0], atol=1e-5)
    assert model.sample_z(5).norm(dim=-1).sub(math.sqrt(8)).abs().max() < 1e-5
    assert model.act(obs, z.expand(100, -1)).abs().max() <= 1


def test_bad_prompts_are_rejected():
    model = FBModel(4, 2, TINY)
    obs = torch.randn(10, 4)
    with pytest.raises(ValueError, match="reward samples contains 1 non-finite"):
        model.infer_z_from_rewards(obs, torch.tensor([float("nan")] + [0.0] * 9))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        model.infer_z_from_rewards(torch.randn(10, 5), torch.zeros(10))
    with pytest.raises(ValueError, match="got 9 rewards for 10 states"):
        model.infer_z_from_rewards(obs, torch.zeros(9))


def test_update_returns_device_tensors_and_changes_params(tiny_dataset):
    torch.manual_seed(0)
    agent = FBAgent(4, 2, TINY, torch.device("cpu"))
    before = [p.clone() for p in agent.model.parameters()]
    metrics = agent.update(tiny_dataset.sample(32))
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in metrics.values())
    assert {"loss/fb_offdiag", "loss/fb_diag", "diag/orth_linf", "diag/B_norm", "diag/B_eff_rank",
            "diag/z_norm", "diag/actor_q"} <= set(metrics)
    assert 1.0 <= float(metrics["diag/B_eff_rank"]) <= TINY.z_dim + 1e-4
    assert all(not torch.equal(a, b) for a, b in zip(before, agent.model.parameters()))
    # the target networks move by Polyak averaging only
    assert not agent.forward_target.embed_sa[0].weight.requires_grad


def test_save_load_roundtrip_and_corruption(tmp_path):
    model = FBModel(4, 2, TINY)
    model.save(tmp_path / "m", extra={"domain": "point_mass_maze"})
    loaded = Model.load(tmp_path / "m")
    assert isinstance(loaded, FBModel) and loaded.meta["domain"] == "point_mass_maze"
    obs, z = torch.randn(3, 4), model.sample_z(3)
    assert torch.equal(loaded.act(obs, z), model.act(obs, z))
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        Model.load(tmp_path / "m")


def test_newer_format_is_refused(tmp_path):
    import json

    model = FBModel(4, 2, TINY)
    model.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["format_version"] = 99
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="format version 99, newer than this zsrl reads .*upgrade zsrl"):
        Model.load(tmp_path / "m")
    cfg["format_version"] = 1.0
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="records the format version 1.0, not a whole number"):
        Model.load(tmp_path / "m")


def _fitted_agent(data, cfg):
    torch.manual_seed(0)
    agent = FBAgent(4, 2, cfg, torch.device("cpu"))
    agent.setup(data, None)
    return agent


def test_normalize_obs_standardises_every_network_input(tiny_dataset, tmp_path):
    """With ``normalize_obs`` the networks read ``(s − μ)/σ`` of the dataset (online and target
    copies), so an affine change of the observations that the prompts share changes nothing;
    the statistics travel with the saved model. Without it the state dict has no extra keys."""
    from dataclasses import replace

    from zsrl.data import OfflineDataset

    cfg = replace(TINY, normalize_obs=True)
    agent = _fitted_agent(tiny_dataset, cfg)
    next_obs = tiny_dataset.data["next", "observation"]
    for net in (agent.model.forward_map, agent.model.backward_map, agent.model.actor,
                agent.forward_target, agent.backward_target):
        torch.testing.assert_close(net.norm.mean, next_obs.mean(0))
        torch.testing.assert_close(net.norm.std, next_obs.std(0))
    scale, shift = torch.tensor([0.01, 0.05, 3.0, 0.2]), torch.tensor([1.0, -2.0, 0.0, 0.5])
    moved = tiny_dataset.data.clone()
    for key in ("observation", ("next", "observation")):
        moved[key] = moved[key] * scale + shift
    other = _fitted_agent(OfflineDataset(moved, tiny_dataset.meta), cfg)
    obs, z, action = torch.randn(6, 4), agent.model.sample_z(6), torch.rand(6, 2) * 2 - 1
    close = {"atol": 1e-4, "rtol": 1e-4}  # float32 rounding of the affine map and its inverse
    torch.testing.assert_close(other.model.backward_map(obs * scale + shift), agent.model.backward_map(obs), **close)
    torch.testing.assert_close(other.model.act(obs * scale + shift, z), agent.model.act(obs, z), **close)
    torch.testing.assert_close(other.model.q_values(obs * scale + shift, z, action),
                               agent.model.q_values(obs, z, action), **close)
    agent.model.save(tmp_path / "m")
    loaded = Model.load(tmp_path / "m")
    torch.testing.assert_close(loaded.backward_map.norm.std, next_obs.std(0))
    assert torch.equal(loaded.act(obs, z), agent.model.act(obs, z))
    plain = _fitted_agent(tiny_dataset, TINY)
    assert not any("norm." in k for k in plain.model.state_dict())  # unchanged format when off


def test_options_removed_from_fb_load_when_off_and_are_refused_when_on():
    """Configs and models saved before an option was removed keep loading where it was off."""
    old = {"z_dim": 8, "q_loss_coef": 0.0, "aux_z_dim": 0, "aux_dims": None, "weight_decay": 0.0,
           "target_reduction": "mean"}
    assert from_dict(FBConfig, old, "agent").z_dim == 8
    with pytest.raises(UserError, match=r"agent.q_loss_coef = 0.1: this option was removed"):
        from_dict(FBConfig, {**old, "q_loss_coef": 0.1}, "agent")


def test_hindsight_goals_are_later_states_of_the_transitions_own_trajectory(tiny_dataset):
    torch.manual_seed(0)
    assert "goal" not in FBAgent(4, 2, TINY, torch.device("cpu")).sample_batch(tiny_dataset, 8)
    cfg = dataclasses.replace(TINY, goal_from_trajectory=1.0, goal_future=0.9, mix_ratio=1.0)
    agent = FBAgent(4, 2, cfg, torch.device("cpu"))
    batch = agent.sample_batch(tiny_dataset, 256)
    data = tiny_dataset.data

    def rows(x, column):  # dataset row of each batch entry (the random floats are unique)
        match = (x[:, None] == column[None]).all(-1)
        assert match.sum(1).eq(1).all()
        return match.float().argmax(1)

    start, goal = rows(batch["observation"], data["observation"]), rows(batch["goal"], data["next", "observation"])
    assert (data["episode"][goal] == data["episode"][start]).all() and (goal >= start).all()
    assert (goal > start).float().mean() > 0.5  # offsets ~ Geometric(0.1): mostly later states
    # with mix_ratio 1 every training z is the goal's B
    z = agent.sample_training_z(batch["next", "observation"], batch["goal"])
    assert torch.allclose(z, agent.model.backward_map(batch["goal"]))


def _fb_step(agent, batch):
    """One F/B step of ``agent`` on ``batch``; returns the z it used."""
    obs, next_obs = batch["observation"], batch["next", "observation"]
    z = agent.sample_training_z(next_obs)
    loss, _ = agent.fb_objective(obs, batch["action"], next_obs, batch["next", "terminated"], z)
    agent.step_optimizers(loss, *agent.fb_optimizers)
    return z


@torch.no_grad()
def _q_and_next_decision_distance(agent, obs, z):
    """The actor's noise-free ``min_heads F(s, π(s,z), z)ᵀz`` and the chord ``2 sin(θ/2)``
    between ``P(s, π(s,z))`` and z (θ their angle)."""
    a = agent.model.actor(obs, z)
    q = agent.model.q_values(obs, z, a).min(0).values
    p = agent.next_b(obs, a)
    cos = (p * z).sum(-1) / (p.norm(dim=-1) * z.norm(dim=-1))
    return q, 2 * torch.sin(torch.acos(cos.clamp(-1, 1)) / 2)


def test_myopic_coef_adds_the_next_decisions_embedding_distance_to_the_actor(tiny_dataset):
    """``myopic_coef`` λ: ``P(s, a)`` is regressed on ``B(s')``, the actor's loss is
    ``−mean(min_heads F(s,a,z)ᵀz − λ d ‖P̂(s,a) − ẑ‖)`` with ``P`` frozen, and ``P`` belongs
    to the agent's training state, not to the exported model."""
    batch = tiny_dataset.sample(64)
    off = FBAgent(4, 2, TINY, torch.device("cpu"))
    assert off.next_b is None and "loss/next_b" not in off.update(batch)
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, myopic_coef=2.0, actor_std=0.0, lr_f=1e-3)  # no action noise
    agent = FBAgent(4, 2, cfg, torch.device("cpu"))
    metrics = agent.update(batch)
    assert torch.isfinite(metrics["loss/next_b"]) and torch.isfinite(metrics["diag/actor_next_dist"])
    obs, action = batch["observation"], batch["action"]
    z = _fb_step(agent, batch)
    loss, metrics = agent.actor_loss(obs, z)
    q, dist = _q_and_next_decision_distance(agent, obs, z)
    assert loss.item() == pytest.approx(-(q - 2.0 * cfg.z_dim * dist).mean().item(), rel=1e-4)
    assert metrics["diag/actor_next_dist"].item() == pytest.approx(dist.mean().item(), rel=1e-3)
    for p in [*agent.next_b.parameters(), *agent.model.actor.parameters()]:
        p.grad = None
    loss.backward()  # the gradient reaches the actor, not P
    assert all(p.grad is None for p in agent.next_b.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.model.actor.parameters())
    # P's regression is L_P = ½ mean ‖P(s, a) − B(s')‖² and P fits it with its own optimiser
    with torch.no_grad():
        target = agent.model.backward_map(batch["next", "observation"])
    next_b_opt = agent.optimizers()["next_b_opt"]
    losses = []
    for _ in range(101):
        losses.append(0.5 * (agent.next_b(obs, action) - target).pow(2).sum(-1).mean())
        agent.step_optimizers(losses[-1], next_b_opt)
    assert losses[-1] < 0.5 * losses[0]
    _, step_metrics = agent.fb_objective(obs, action, batch["next", "observation"], batch["next", "terminated"], z)
    expected = 0.5 * (agent.next_b(obs, action) - target).pow(2).sum(-1).mean()
    assert step_metrics["loss/next_b"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert next_b_opt in agent.fb_optimizers  # stepped on the F/B step's loss
    assert "next_b" in agent.modules() and not any("next_b" in k for k in agent.model.state_dict())


def test_training_goal_zs_are_goal_prompts(tiny_dataset):
    """The goal z's of training (``mix_ratio``) are the z's a goal prompt gives: ``B(g)``."""
    batch = tiny_dataset.sample(64)
    next_obs, goal = batch["next", "observation"], batch["observation"]
    agent = FBAgent(4, 2, dataclasses.replace(TINY, mix_ratio=1.0, goal_dims=[0, 1]), torch.device("cpu"))
    torch.testing.assert_close(agent.sample_training_z(next_obs, goal), agent.model.infer_z_from_goal(goal))
    assert torch.equal(agent.sample_training_z(next_obs, goal), agent.model.backward_map(goal))


def test_actor_reduction_takes_the_min_or_the_mean_of_the_heads(tiny_dataset):
    """The actor maximises the heads' min of ``F(s, a, z)ᵀz`` by default, their mean with
    ``actor_reduction="mean"``; nothing else in the step changes."""
    batch = tiny_dataset.sample(64)
    for reduction in ("min", "mean"):
        torch.manual_seed(0)
        agent = FBAgent(4, 2, dataclasses.replace(TINY, actor_std=0.0, actor_reduction=reduction), torch.device("cpu"))
        z = _fb_step(agent, batch)
        obs = batch["observation"]
        loss, metrics = agent.actor_loss(obs, z)
        with torch.no_grad():
            q_heads = agent.model.q_values(obs, z, agent.model.actor(obs, z))
        q = q_heads.min(0).values if reduction == "min" else q_heads.mean(0)
        assert (q_heads[0] - q_heads[1]).abs().max() > 1e-3  # the heads differ, so the two objectives do
        assert loss.item() == pytest.approx(-q.mean().item(), rel=1e-5)
        assert metrics["diag/actor_q"].item() == pytest.approx(q.mean().item(), rel=1e-5)


def test_forward_actions_equals_forward_on_repeated_rows():
    """``F`` for K actions per state, ``ψ(s, z)`` computed once: the same values and parameter
    gradients as :meth:`forward` on the K·N repeated rows."""
    torch.manual_seed(0)
    f_map = FBModel(4, 2, dataclasses.replace(TINY, normalize_obs=True)).forward_map
    obs, z, actions = torch.randn(5, 4), torch.randn(5, 8), torch.rand(3, 5, 2) * 2 - 1
    shared = f_map.forward_actions(obs, z, actions)
    repeated = f_map(obs.repeat(3, 1), z.repeat(3, 1), actions.flatten(0, 1)).unflatten(1, (3, 5))
    assert shared.shape == (2, 3, 5, 8)
    torch.testing.assert_close(shared, repeated)
    grads = [torch.autograd.grad(out.square().sum(), list(f_map.parameters())) for out in (shared, repeated)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
