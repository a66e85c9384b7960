"""The data-parallel equivalence cases, shared by tests/test_distributed.py (one process,
the whole batch) and tests/dp_worker.py (one ``torchrun`` rank, its share of the batch).

Each case builds an agent with small networks and one global batch, both from fixed seeds,
and runs one ``agent.update`` with the update's own random draws made row-aligned: no noise
(``randn_like`` → 0), identity permutations and ``rand`` → ½ (FB's and HILP's z mix then
takes every row's z from its own next state, CFB's uniform OOD actions are 0). What a rank
computes then depends only on its rows, so ``N`` ranks × ``b`` rows must reproduce one
process × ``N b`` rows: the losses (metric means over ranks), the averaged gradients (Adam's
first moment after one step is ``(1 − β₁) g``) and the parameters after the step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from conftest import make_arrays

from zsrl.agents.cfb import MCFBAgent, MCFBConfig, VCFBAgent, VCFBConfig
from zsrl.agents.fb import FBAgent, FBConfig
from zsrl.agents.fre import FREAgent, FREConfig
from zsrl.agents.hilp import HILPAgent, HILPConfig
from zsrl.agents.td3 import TD3Agent, TD3Config
from zsrl.data import from_numpy

CPU = torch.device("cpu")
#: rows of the global batch
GLOBAL_BATCH = 32
_FB = {"z_dim": 8, "hidden_dim": 32, "embedding_dim": 16, "backward_hidden_dim": 32, "discount": 0.9,
       "mix_ratio": 1.0}
_FRE = {"z_dim": 8, "context_size": 8, "trajectory_context": 3, "decoder_queries": 4, "emb_dim": 16, "num_heads": 2,
        "mlp_dim": 32, "num_layers": 1, "hidden_dim": 32, "hidden_layers": 2, "num_random_nets": 20,
        "prompt_bank_size": 32, "encoder_steps": 1}


def _fre_policy(cfg: FREConfig) -> FREAgent:
    agent = FREAgent(4, 2, cfg, CPU)
    agent._updates = cfg.encoder_steps  # the policy phase
    agent._set_phase()
    return agent


def _td3() -> TD3Agent:
    agent = TD3Agent(4, 2, TD3Config(hidden_dim=32, bc_weight=2.5), CPU)
    agent.rewards = torch.linspace(-1, 1, 256)
    return agent


CASES = {
    "fb": lambda: FBAgent(4, 2, FBConfig(**_FB), CPU),
    "fb_joint_myopic": lambda: FBAgent(4, 2, FBConfig(**_FB, joint_update=True, myopic_coef=0.1), CPU),
    "vcfb": lambda: VCFBAgent(4, 2, VCFBConfig(**_FB, ood_action_samples=4), CPU),
    "mcfb": lambda: MCFBAgent(4, 2, MCFBConfig(**_FB, ood_action_samples=4), CPU),
    "hilp": lambda: HILPAgent(4, 2, HILPConfig(z_dim=8, phi_hidden_dim=32, hidden_dim=32, embedding_dim=16,
                                               mix_ratio=1.0), CPU),
    "fre_encoder": lambda: FREAgent(4, 2, FREConfig(**_FRE), CPU),
    "fre_policy": lambda: _fre_policy(FREConfig(**_FRE, actor_loss="ddpg", bc_weight=0.5)),
    "td3": _td3,
}


def dataset() -> Any:
    return from_numpy(make_arrays(n=256), {"domain": "point_mass_maze", "collector": "test", "seed": 0})


def build(case: str) -> tuple[Any, Any]:
    """The case's agent (set up on the dataset) and its global batch, from fixed seeds."""
    data = dataset()
    torch.manual_seed(0)
    agent = CASES[case]()
    if case != "td3":  # (TD3's rewards are set above: no domain to relabel with)
        agent.setup(data, None)
    torch.manual_seed(1)
    return agent, agent.sample_batch(data, GLOBAL_BATCH)


@contextlib.contextmanager
def row_aligned_randomness() -> Iterator[None]:
    """Inside: ``randn_like`` gives zeros, ``randperm`` the identity, ``rand`` ½."""
    saved = torch.randn_like, torch.randperm, torch.rand
    torch.randn_like = lambda x, **kw: torch.zeros_like(x, **kw)
    torch.randperm = lambda n, **kw: torch.arange(n, device=kw.get("device"))
    torch.rand = lambda *size, **kw: torch.full(size[0] if len(size) == 1 and isinstance(size[0], tuple | list)
                                                else size, 0.5, **kw)
    try:
        yield
    finally:
        torch.randn_like, torch.randperm, torch.rand = saved


def one_update(agent: Any, batch: Any) -> dict[str, Any]:
    """Run one update; its metrics, each optimiser's first moments (``(1 − β₁) g``) and the
    modules' buffers (running statistics, normalisers). The parameters themselves are not
    compared: Adam's first step ``lr · g / (|g| + ε)`` flips with the float rounding of a
    gradient element that is zero up to rounding."""
    with row_aligned_randomness():
        metrics = agent.update(batch)
    moments = {f"{name}.{i}": opt.state[p]["exp_avg"].clone()
               for name, opt in agent.optimizers().items()
               for i, p in enumerate(p for g in opt.param_groups for p in g["params"]) if p in opt.state}
    buffers = {f"{m}.{k}": v.clone() for m, mod in agent.modules().items() for k, v in mod.named_buffers()}
    return {"metrics": {k: float(v) for k, v in metrics.items()}, "moments": moments, "buffers": buffers}
