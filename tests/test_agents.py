"""The agent contract and the engine that runs every agent's updates (agents/base.py,
zsrl/engine.py, zsrl/nn.py)."""

import json
import math
from dataclasses import dataclass

import pytest
import torch
from conftest import make_arrays

from zsrl.agents.base import Model
from zsrl.agents.fb import FBAgent, FBConfig, FBModel
from zsrl.agents.goals import goal_position_probs, sample_categorical, sample_goal_indices
from zsrl.data import from_numpy
from zsrl.engine import Engine, ParameterAverage, region_names
from zsrl.errors import CheckpointError
from zsrl.nn import (
    Tanh,
    _OutputGradReLU,
    call_frozen,
    expectile_loss,
    kl_standard_normal,
    make_adam,
    mlp,
)
from zsrl.registry import register_agent

TINY = FBConfig(z_dim=8, hidden_dim=32, embedding_dim=16, backward_hidden_dim=32, discount=0.9)
CPU = torch.device("cpu")


@pytest.fixture
def data():
    return from_numpy(make_arrays(n=256), {"domain": "point_mass_maze", "collector": "test", "seed": 0})


def _params(agent):
    return [p.detach().clone() for m in agent.modules().values() for p in m.state_dict().values()]


def test_an_engine_step_is_sample_then_update_and_leaves_no_trace(data):
    """Engine.step (sampling inside the step, metrics packed by name) follows exactly the same
    random stream and maths as update(sample_batch); learning the metric names first changes
    neither the training state nor the random stream."""
    torch.manual_seed(0)
    a = FBAgent(4, 2, TINY, CPU)
    b = FBAgent(4, 2, TINY, CPU)
    b.load_state_dict(a.state_dict())
    engine = Engine(a)
    torch.manual_seed(1)
    va = [engine.step(data, 32) for _ in range(3)]
    torch.manual_seed(1)
    mb = [b.update(b.sample_batch(data, 32)) for _ in range(3)]
    assert engine.metric_names == tuple(mb[0])
    for v, m in zip(va, mb):
        assert torch.equal(v, torch.stack([m[k] for k in engine.metric_names]))
    for p, q in zip(_params(a), _params(b)):
        assert torch.equal(p, q)


def test_parameter_average_follows_its_recursion_and_exports_the_sources_buffers():
    """θ̄_n = δ_n θ̄_{n−1} + (1 − δ_n) θ_n with δ_n = min(δ, (1 + n) / (10 + n)); buffers copied."""
    source = torch.nn.Linear(1, 1, bias=False)
    source.register_buffer("scale", torch.ones(1))
    average = ParameterAverage(source, decay=0.5)
    expected = source.weight.item()
    for n, value in enumerate([3.0, -1.0, 4.0, 1.0, 5.0, -9.0, 2.0, 6.0, 5.0, 3.0], start=1):
        source.weight.data.fill_(value)
        average.update(source)
        delta = min(0.5, (1 + n) / (10 + n))
        expected = delta * expected + (1 - delta) * value
        assert average.module.weight.item() == pytest.approx(expected, rel=1e-6), n
    assert int(average.updates) == 10 and not average.module.weight.requires_grad
    source.scale.fill_(7.0)
    assert average.averaged(source).scale.item() == 7.0  # buffers are the source's, not averaged
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        ParameterAverage(source, decay=1.0)


def test_an_agent_with_ema_decay_exports_the_average_of_its_updates(data):
    """``agent.ema_decay``: training is unchanged (the online weights equal those of an agent
    without it), the average is part of the training state, folded in by the engine after
    every update, and it is what ``inference_model`` gives."""
    cfg = FBConfig(**{**TINY.__dict__, "ema_decay": 0.9})
    torch.manual_seed(0)
    plain = FBAgent(4, 2, TINY, CPU)
    torch.manual_seed(0)
    a = FBAgent(4, 2, cfg, CPU)
    assert plain.inference_model() is plain.model and "module.model_average" not in plain.state_dict()
    engine = Engine(a)
    manual = [p.detach().clone() for p in a.model.parameters()]
    for n in range(1, 6):
        torch.manual_seed(n)
        plain.update(plain.sample_batch(data, 32))
        torch.manual_seed(n)
        engine.step(data, 32)
        delta = min(0.9, (1 + n) / (10 + n))
        manual = [delta * m + (1 - delta) * p.detach() for m, p in zip(manual, a.model.parameters())]
    for p, q in zip(plain.model.parameters(), a.model.parameters()):
        assert torch.equal(p, q)
    assert "module.model_average" in a.state_dict()
    exported = a.inference_model()
    assert exported is not a.model and isinstance(exported, FBModel)
    for m, e in zip(manual, exported.parameters()):
        torch.testing.assert_close(e, m)
    assert any(not torch.equal(e, p) for e, p in zip(exported.parameters(), a.model.parameters()))


def test_contract_is_checked(data):
    class NoDict(FBAgent):
        def update(self, batch):
            return [torch.zeros(())]

    class PhaseChanging(FBAgent):
        def update(self, batch):
            return {f"m_{self.phase}": torch.zeros(())}

        def after_step(self):
            self.phase = "second"

    with pytest.raises(TypeError, match="dict of named 0-dim tensors"):
        Engine(NoDict(4, 2, TINY, CPU)).step(data, 8)
    agent = PhaseChanging(4, 2, TINY, CPU)
    engine = Engine(agent)
    engine.step(data, 8)
    with pytest.raises(ValueError, match="metric names changed between phases"):
        engine.step(data, 8)
    with pytest.raises(TypeError, match="needs a FBConfig"):
        FBAgent(4, 2, object(), CPU)
    with pytest.raises(ValueError, match="declared twice"):
        agent.add_module("model", torch.nn.Linear(1, 1))
    assert set(agent.modules()) == {"model", "forward_target", "backward_target"}
    assert set(agent.optimizers()) == {"fb_opt", "actor_opt"}
    with pytest.raises(CheckpointError, match="does not match this agent"):
        agent.load_state_dict({"module.model": {}})

    class Orphan(FBAgent):
        def __init__(self, *args):
            super().__init__(*args)
            self.extra = self.add_module("extra", torch.nn.Linear(2, 2))

    with pytest.raises(TypeError, match=r"\['extra.weight', 'extra.bias'\] require gradients"):
        Engine(Orphan(4, 2, TINY, CPU)).step(data, 8)


def test_state_keys_are_those_of_earlier_checkpoints():
    # checkpoints written before the contract was explicit must keep loading
    assert set(FBAgent(4, 2, TINY, CPU).state_dict()) == {
        "module.model", "module.forward_target", "module.backward_target", "optim.fb_opt", "optim.actor_opt"
    }


def test_fb_seams_a_variant_overrides_one_step(data):
    """A variant adds a loss term by overriding fb_loss only: it gets F(s, a, z) and B(s')
    with their gradients, and its metrics reach the update's."""
    seen = {}

    class Penalised(FBAgent):
        def fb_loss(self, obs, action, next_obs, discount, z):
            loss, metrics, f, b = super().fb_loss(obs, action, next_obs, discount, z)
            seen["f"], seen["b"] = f, b
            penalty = f.pow(2).mean()
            return loss + 0.1 * penalty, {**metrics, "loss/penalty": penalty.detach()}, f, b

    torch.manual_seed(0)
    agent = Penalised(4, 2, TINY, CPU)
    metrics = agent.update(agent.sample_batch(data, 32))
    assert "loss/penalty" in metrics and "loss/actor" in metrics
    assert seen["f"].shape == (2, 32, 8) and seen["b"].shape == (32, 8)
    assert seen["f"].requires_grad and seen["b"].requires_grad


def test_actor_step_computes_no_forward_map_gradients(data):
    torch.manual_seed(0)
    agent = FBAgent(4, 2, TINY, CPU)
    batch = agent.sample_batch(data, 32)
    obs, next_obs = batch["observation"], batch["next", "observation"]
    z = agent.sample_training_z(next_obs)
    loss, _ = agent.fb_objective(obs, batch["action"], next_obs, batch["next", "terminated"], z)
    loss.backward()
    f_grads = [p.grad.clone() for p in agent.model.forward_map.parameters()]
    agent.actor_loss(obs, z)[0].backward()
    for g, p in zip(f_grads, agent.model.forward_map.parameters()):
        assert torch.equal(g, p.grad)  # untouched by the actor's backward
    assert all(p.grad is not None for p in agent.model.actor.parameters())


@pytest.mark.parametrize("variant", ["fb", "vcfb"])
def test_joint_update_steps_the_actor_on_the_forward_map_before_the_fb_step(data, variant):
    """``joint_update``: F, B, P (and VC-FB's α) take the same step as sequentially (the actor
    does not enter their losses); the actor takes the step of its loss on the pre-update F —
    one backward pass for both — where sequentially it reads the updated F."""
    from zsrl.agents.cfb import VCFBAgent, VCFBConfig

    agent_class, config_class = {"fb": (FBAgent, FBConfig), "vcfb": (VCFBAgent, VCFBConfig)}[variant]

    def make(joint: bool) -> FBAgent:
        return agent_class(4, 2, config_class(**{**TINY.__dict__, "myopic_coef": 1.0, "joint_update": joint}), CPU)

    torch.manual_seed(0)
    init = make(False)
    batch = init.sample_batch(data, 32)
    agents = {}
    for mode in ("sequential", "joint", "actor_on_old_f"):
        agent = make(mode == "joint")
        agent.load_state_dict(init.state_dict())
        torch.manual_seed(1)
        if mode == "actor_on_old_f":  # the actor's step alone, on the unchanged F and P
            z = agent.sample_training_z(batch["next", "observation"])
            agent.fb_objective(batch["observation"], batch["action"], batch["next", "observation"],
                               batch["next", "terminated"], z)  # its random draws, no step
            agent.step_optimizers(agent.actor_loss(batch["observation"], z)[0], agent.actor_opt)
        else:
            metrics = agent.update(batch)
            assert {"loss/fb", "loss/next_b", "loss/actor", "diag/actor_q"} <= metrics.keys()
        agents[mode] = agent
    seq, joint, old_f = (agents[m].state_dict() for m in ("sequential", "joint", "actor_on_old_f"))
    actor_keys = {k for k in seq["module.model"] if k.startswith("actor.")}
    assert actor_keys
    for name in seq:
        if name.startswith("module."):
            for key, value in seq[name].items():
                if key not in actor_keys or name != "module.model":
                    torch.testing.assert_close(joint[name][key], value, rtol=0, atol=0, msg=f"{name} {key}")
    for key in actor_keys:
        torch.testing.assert_close(joint["module.model"][key], old_f["module.model"][key], rtol=0, atol=0)
    assert any(not torch.equal(joint["module.model"][k], seq["module.model"][k]) for k in actor_keys)


def test_call_frozen_passes_gradients_to_inputs_only():
    net = mlp(3, [8], 2)
    x = torch.randn(5, 3, requires_grad=True)
    call_frozen(net, x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
    torch.testing.assert_close(call_frozen(net, x), net(x))


def test_fast_tanh_matches_tanh():
    x = torch.linspace(-20, 20, 100_001)
    assert (Tanh()(x) - torch.tanh(x)).abs().max() < 3e-7
    x = torch.randn(1000, requires_grad=True)
    (g,) = torch.autograd.grad(Tanh()(x).sum(), x)
    torch.testing.assert_close(g, 1 - torch.tanh(x.detach()) ** 2, atol=1e-6, rtol=1e-5)


def test_output_grad_relu_matches_relu():
    x = torch.cat([torch.randn(1000), torch.zeros(10)]).requires_grad_()  # relu'(0) = 0 in both
    upstream = torch.randn(1010)
    ours = _OutputGradReLU.apply(x)  # what zsrl.nn.ReLU runs when compiled for a CPU
    (g_ours,) = torch.autograd.grad(ours, x, upstream)
    (g_ref,) = torch.autograd.grad(torch.relu(x), x, upstream)
    assert torch.equal(ours, torch.relu(x))
    assert torch.equal(g_ours, g_ref)


def test_shared_losses():
    diff = torch.tensor([1.0, -2.0])
    # τ = 0.8: 0.8·1 and 0.2·4 → mean 0.8
    assert expectile_loss(diff, 0.8).item() == pytest.approx(0.8)
    assert kl_standard_normal(torch.zeros(3, 2), torch.zeros(3, 2)).item() == 0.0
    # KL(N(1, e²) ‖ N(0, 1)) = ½(1 + e² − 1 − 2) per dim
    assert kl_standard_normal(torch.ones(1, 1), torch.ones(1, 1)).item() == pytest.approx(0.5 * (math.e**2 - 2))


def test_goal_samplers():
    torch.manual_seed(0)
    p = goal_position_probs(8, 4, 0.2, 0.5)
    assert p[0] == pytest.approx(0.2) and p[1:4].sum() == pytest.approx(0.5) and p[4:].sum() == pytest.approx(0.3)
    draws = sample_categorical(p, 200_000)
    freq = torch.bincount(draws, minlength=8).float() / draws.numel()
    torch.testing.assert_close(freq, p, atol=5e-3, rtol=0)
    # trajectory mass goes to random positions when there is no trajectory context
    assert goal_position_probs(4, 1, 0.2, 0.5)[1:].sum() == pytest.approx(0.8)

    ds = from_numpy(make_arrays(n=1000, episode_len=100), {"domain": "x"})
    idx = torch.randint(1000, (20_000,))
    assert torch.equal(sample_goal_indices(ds, idx, 1.0, 0.0, 0.9), idx)
    fut = sample_goal_indices(ds, idx, 0.0, 1.0, 0.9)
    assert (fut >= idx).all() and (fut // 100 == idx // 100).all() and (fut > idx).float().mean() > 0.5
    mix = sample_goal_indices(ds, idx, 0.2, 0.5, 0.9)
    assert 0.15 < (mix == idx).float().mean() < 0.30  # current (plus a few future with offset 0)


def test_infer_z_from_transitions_defaults_to_reached_states():
    torch.manual_seed(0)
    model = FBModel(4, 2, TINY)
    obs, next_obs, r = torch.randn(50, 4), torch.randn(50, 4), torch.rand(50)
    torch.testing.assert_close(model.infer_z_from_transitions(obs, next_obs, r), model.infer_z_from_rewards(next_obs, r))
    with pytest.raises(ValueError, match="equal shapes"):
        model.infer_z_from_transitions(obs[:3], next_obs, r)


@dataclass
class _VariantConfig(FBConfig):
    name: str = "fb_variant_test"
    penalty: float = 0.5


class _VariantAgent(FBAgent):
    config_class = _VariantConfig


def test_variant_model_loads_without_its_own_model_class(tmp_path):
    register_agent("fb_variant_test", _VariantAgent)
    cfg = _VariantConfig(z_dim=8, hidden_dim=32, embedding_dim=16, backward_hidden_dim=32, penalty=2.0)
    agent = _VariantAgent(4, 2, cfg, CPU)
    agent.model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["agent"] == "fb_variant_test" and meta["agent_config"]["penalty"] == 2.0
    loaded = Model.load(tmp_path / "m")
    assert type(loaded) is FBModel and isinstance(loaded.cfg, _VariantConfig) and loaded.cfg.penalty == 2.0
    obs, z = torch.randn(3, 4), agent.model.sample_z(3)
    torch.testing.assert_close(loaded.act(obs, z), agent.model.act(obs, z))


def test_optimizer_flags_survive_loading_a_state_from_another_device():
    agent = FBAgent(4, 2, TINY, CPU)
    batch = from_numpy(make_arrays(), {"domain": "x"}).sample(8)
    agent.update(batch)
    state = agent.state_dict()
    for group in state["optim.fb_opt"]["param_groups"]:
        group["capturable"] = True  # as saved by a CUDA run
    agent.load_state_dict(state)
    assert all(not g["capturable"] for g in agent.fb_opt.param_groups)
    steps = [s["step"] for s in agent.fb_opt.state.values()]
    assert all(s.device.type == "cpu" and s.dtype == torch.float32 for s in steps)
    agent.update(batch)


def test_make_adam_is_fused_on_cpu_and_cuda_and_capturable_on_cuda_only():
    p = [torch.nn.Parameter(torch.zeros(2))]
    g = make_adam(p, CPU, lr=1e-3).param_groups[0]
    assert g["fused"] and not g["capturable"]
    assert not make_adam(p, torch.device("meta"), lr=1e-3).param_groups[0]["fused"]
    # the CUDA choice is made from the device alone (checked without a GPU)
    kwargs = {}
    import zsrl.nn as znn

    orig = torch.optim.Adam
    try:
        znn.torch.optim.Adam = lambda params, **kw: kwargs.update(kw)  # type: ignore[assignment]
        make_adam(p, torch.device("cuda"), lr=1e-3)
    finally:
        znn.torch.optim.Adam = orig
    assert kwargs == {"lr": 1e-3, "fused": True, "capturable": True}


def test_fused_adam_on_cpu_takes_the_same_steps_as_the_default_adam():
    torch.manual_seed(0)
    start, grads = torch.randn(5, 3), [torch.randn(5, 3) for _ in range(4)]
    params = {}
    for fused in (True, False):
        p = torch.nn.Parameter(start.clone())
        opt = make_adam([p], CPU, lr=1e-2, weight_decay=1e-3, fused=fused)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        params[fused] = p.detach()
    assert not torch.equal(params[True], start)
    torch.testing.assert_close(params[True], params[False])


def test_cudagraphs_on_cpu_warns_and_runs(data):
    agent = FBAgent(4, 2, TINY, CPU)
    with pytest.warns(UserWarning, match="needs a CUDA device"):
        engine = Engine(agent, cudagraphs=True)
    assert not engine.cudagraphs
    assert torch.isfinite(engine.step(data, 16)).all()


def test_bf16_autocast_runs_and_stays_close(data):
    torch.manual_seed(0)
    a = FBAgent(4, 2, TINY, CPU)
    b = FBAgent(4, 2, TINY, CPU)
    b.load_state_dict(a.state_dict())
    ea, eb = Engine(a), Engine(b, precision="bf16")
    torch.manual_seed(1)
    ma = ea.step(data, 64)
    torch.manual_seed(1)
    mb = eb.step(data, 64)
    assert torch.isfinite(mb).all()
    i = ea.metric_names.index("loss/fb")
    assert abs(ma[i] - mb[i]) < 0.05 * abs(ma[i]) + 0.05
    for p in b.model.parameters():
        assert p.dtype == torch.float32


def test_gpu_check_smallest_cpu_form(tmp_path, capsys):
    from scripts.gpu_check import main

    out = tmp_path / "gc.json"
    rc = main(["--device", "cpu", "--sizes", "tiny", "--agents", "fb", "fb:sequential", "--modes", "eager", "both",
               "--updates", "3", "--warmup", "1", "--tiny-batch", "32", "--dataset-size", "2000",
               "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "skipped: CUDA graphs need a CUDA device" in text and "upd/s" in text and "# device cpu" in text
    result = json.loads(out.read_text())
    eager, both, *sequential = result["results"]
    assert eager["finite"] and eager["updates_per_s"] > 0 and eager["gflop_per_update"] > 0
    assert both["skipped"]
    # the walker preset's FB update is sequential: fb:sequential is fb's config, checked once
    assert [r["skipped"] for r in sequential] == ["the same config as fb"] * 2
    assert "torch" in result["versions"]


@pytest.mark.slow
def test_every_agent_trains_with_every_precision_on_a_cpu(tmp_path, capsys):
    """``scripts/gpu_check.py --device cpu --sizes tiny`` in eager and bf16 mode (compiled
    updates: test_compiled_update_agrees_with_eager): every agent key trains with finite
    metrics, and bf16 agrees with eager within its tolerance."""
    from scripts.gpu_check import AGENTS, main

    out = tmp_path / "gc.json"
    rc = main(["--device", "cpu", "--sizes", "tiny", "--modes", "eager", "bf16", "--updates", "20", "--warmup", "2",
               "--tiny-batch", "64", "--dataset-size", "5000", "--json", str(out)])
    assert rc == 0, capsys.readouterr().out
    rows = json.loads(out.read_text())["results"]
    ran = {(r["agent"], r["mode"]) for r in rows if not r.get("skipped")}
    assert ran >= {(a, m) for a in AGENTS if a != "fb:sequential" for m in ("eager", "bf16")}
    assert all(r["finite"] for r in rows if not r.get("skipped"))


@pytest.mark.slow
@pytest.mark.parametrize("agent_key", ["fb:sequential", "fb:hindsight", "fb:joint", "td3", "td3:ema", "fre", "fre:policy", "vcfb", "mcfb", "hilp"])
def test_compiled_update_agrees_with_eager(agent_key):
    """torch.compile (inductor, really compiled: dynamo reports compiled graphs) agrees with
    eager within 1e-4 relative on the metrics of one update and the parameters after it."""

    import torch._dynamo

    from scripts.gpu_check import AGENTS, TINY, agreement, domain_dims, random_dataset
    from zsrl.config import load_run_config

    name, extra = AGENTS[agent_key]
    cfg = load_run_config(f"{name}/point_mass_maze_cpu", [*extra, *TINY[name], "train.batch_size=64",
                                                          "train.device=cpu"])
    obs_dim, action_dim = domain_dims(cfg.domain)
    data = random_dataset(obs_dim, action_dim, 5000, CPU)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    result, _ = agreement(cfg, data, CPU, (True, False, "fp32"), warmup=2)
    result.pop("first_metrics", None)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert result["metric_rel_err"] <= 1e-4 and result["param_rel_err"] <= 1e-4, result


def test_compile_on_a_cpu_compiles_the_update_regions_not_the_whole_step():
    """On a CPU, ``compile`` compiles FB's loss regions (F/B objective, actor loss, or both in
    one for the joint update) and runs the optimiser steps between them eagerly; an agent
    without regions (TD3) compiles its whole step; without ``compile`` the regions are the plain
    methods. Nothing is compiled here (the compiled results are checked against eager by
    test_compiled_update_agrees_with_eager)."""
    from zsrl.agents.td3 import TD3Agent, TD3Config

    agent = FBAgent(4, 2, TINY, CPU)
    assert region_names(FBAgent) == ["actor_loss", "fb_objective", "joint_objective"]
    assert agent.fb_objective.__func__ is FBAgent.fb_objective.fn and agent._compiled_regions is None
    engine = Engine(agent, compile=True)
    assert not engine.compile_whole_step and agent._compiled_regions == {}
    for name in region_names(FBAgent):
        region = getattr(agent, name)
        assert getattr(region, "_torchdynamo_orig_callable", None) is not None, name  # torch.compile'd
        assert getattr(agent, name) is region  # compiled once per agent
    assert not hasattr(engine._wrap(lambda: None), "_torchdynamo_orig_callable")
    td3 = TD3Agent(4, 2, TD3Config(hidden_dim=16), CPU)
    td3_engine = Engine(td3, compile=True)
    assert td3_engine.compile_whole_step and td3._compiled_regions is None
    assert hasattr(td3_engine._wrap(lambda: None), "_torchdynamo_orig_callable")
    Engine(agent, compile=False)
    assert agent.fb_objective.__func__ is FBAgent.fb_objective.fn


def test_compile_on_a_cpu_without_a_cpp_compiler_warns_and_trains_eagerly(monkeypatch):
    import zsrl.training
    from zsrl.config import load_run_config

    tc = load_run_config("fb/point_mass_maze_cpu", ["train.compile=true"]).train
    assert zsrl.training.configure_device(tc, CPU) == (True, False)
    monkeypatch.setattr(zsrl.training, "missing_cpp_compiler", lambda: "none was found (test)")
    with pytest.warns(UserWarning, match=r"needs a C\+\+ compiler and none was found .*train.compile=false"):
        assert zsrl.training.configure_device(tc, CPU) == (False, False)


def test_optimizer_step_shares_one_backward_between_disjoint_optimizers():
    """One backward of a sum of losses over disjoint parameters, then a step of each
    optimiser, is the same update as separate steps; gradient norms clip per network (per
    parameter group, as FB's F and B in one optimiser)."""
    from zsrl.nn import optimizer_step

    def run(shared: bool, clip: float) -> list[torch.Tensor]:
        torch.manual_seed(0)
        nets = [mlp(3, [8], 2), mlp(3, [8], 1)]
        opts = [make_adam(n.parameters(), CPU, lr=1e-2) for n in nets]
        x = torch.randn(16, 3)
        for _ in range(3):
            losses = [nets[0](x).pow(2).sum(), (nets[1](x) - 1).abs().mean()]
            if shared:
                optimizer_step(losses[0] + losses[1], *opts, clip_grad_norm=clip)
            else:
                for loss, opt in zip(losses, opts):
                    optimizer_step(loss, opt, clip_grad_norm=clip)
        return [p.detach() for n in nets for p in n.parameters()]

    for clip in (0.0, 0.1):
        for a, b in zip(run(True, clip), run(False, clip)):
            assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(run(True, 0.0), run(True, 0.1)))

    nets = [mlp(3, [8], 2), mlp(3, [8], 1)]
    opt = make_adam([{"params": n.parameters()} for n in nets], CPU, lr=0.0)
    x = torch.randn(16, 3)
    seen = []
    opt.step = lambda: seen.extend(  # type: ignore[method-assign]
        torch.nn.utils.get_total_norm([p.grad for p in n.parameters()]) for n in nets)
    optimizer_step(100 * (nets[0](x).pow(2).sum() + nets[1](x).pow(2).sum()), opt, clip_grad_norm=0.5)
    assert [round(float(norm), 4) for norm in seen] == [0.5, 0.5]  # each network clipped to 0.5


def test_gpu_switches_default_to_auto_and_resolve_per_device():
    from zsrl.config import load_run_config, resolve_auto
    from zsrl.errors import UserError
    from zsrl.training import configure_device

    cfg = load_run_config("fb/walker_cpu")
    tc = cfg.train
    assert (tc.compile, tc.cudagraphs, tc.tf32, tc.precision) == ("auto", "auto", True, "fp32")
    assert load_run_config("fb/point_mass_maze_cpu").train.compile is True  # the quickstart compiles
    assert resolve_auto("auto", "cuda:0") and resolve_auto("auto", torch.device("cuda"))
    assert not resolve_auto("auto", "cpu") and resolve_auto(True, "cpu") and not resolve_auto(False, "cuda")
    assert configure_device(tc, CPU) == (False, False)
    cfg = load_run_config("fb/point_mass_maze_cpu", ["train.compile=true", "train.precision=bf16"])
    assert cfg.train.compile is True and cfg.train.precision == "bf16"
    with pytest.raises(UserError, match="train.compile"):
        load_run_config("fb/point_mass_maze_cpu", ["train.compile=sometimes"])
    with pytest.raises(UserError, match="train.precision"):
        load_run_config("fb/point_mass_maze_cpu", ["train.precision=fp16"])
