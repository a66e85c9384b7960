"""How an agent's updates run: compiled, CUDA-graphed, autocast, averaged and accounted.

An :class:`~zsrl.agents.base.Agent` says *what* one update is (``sample_batch`` and
``update``); the :class:`Engine` says *how* it runs. One :meth:`Engine.step` samples a batch
on the training device, calls ``agent.update(batch)``, folds the new weights into the
agent's :class:`ParameterAverage` (``agent.ema_decay``) and returns the metrics packed in one
vector, so the training loop never synchronises with the host:

* ``compile`` on CUDA compiles the whole step, sampling included, and ``cudagraphs`` replays
  it as one CUDA graph (:class:`tensordict.nn.CudaGraphModule`; a graph per training phase).
  On a CPU nothing replays a graph, and a whole-step compile breaks at every ``backward()``
  and optimiser call; there each :class:`compiled_region` of the agent (a pure loss
  computation) is compiled on its own and the optimiser steps between them run eagerly.
* ``precision="bf16"`` autocasts the step's matmuls to bfloat16 (parameters and optimiser
  state stay float32).
* The metric names are fixed by the first step, checked on a throw-away copy of the training
  state with the random stream restored, so checking changes nothing.

:class:`MetricAccumulator` sums the metric vectors on the device; its sums double as the
divergence guard (NaN and inf are sticky under addition), read back once per log row.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from zsrl import distributed
from zsrl.errors import TrainingDiverged
from zsrl.utils import rng_state, set_rng_state

Metrics = dict[str, torch.Tensor]


class compiled_region:
    """Marks an agent method as a *compile region*: a pure loss computation of an update —
    forward passes, losses and metrics, no optimiser step or in-place parameter change.

    Where the :class:`Engine` compiles by region (``compile`` on a CPU) each region is
    compiled on its own, its backward pass too; elsewhere the method runs as written. A
    region called inside another one is inlined into it (FB's joint update).
    """

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, agent: Any, owner: type | None = None) -> Any:
        if agent is None:
            return self
        bound = self.fn.__get__(agent, owner)
        compiled = getattr(agent, "_compiled_regions", None)
        if compiled is None or torch.compiler.is_compiling():
            return bound
        if self.name not in compiled:
            compiled[self.name] = torch.compile(bound)
        return compiled[self.name]


def region_names(agent_class: type) -> list[str]:
    """The :class:`compiled_region` methods of an agent class."""
    return [n for n in dir(agent_class) if isinstance(getattr(agent_class, n, None), compiled_region)]


class ParameterAverage(nn.Module):
    """An exponential moving average of a module's parameters over training (Polyak
    averaging of the iterates): the weights an agent exports when ``agent.ema_decay > 0``.

    After the ``n``-th :meth:`update`, ``θ̄_n = δ_n θ̄_{n−1} + (1 − δ_n) θ_n`` with
    ``δ_n = min(δ, (1 + n) / (10 + n))``: early on the average follows the recent iterates
    (the warm-up of TensorFlow's ``ExponentialMovingAverage``), so a short run never exports
    its initial weights; it spans about the last ``n / 9`` updates while ``δ_n < δ``, then
    about the last ``1 / (1 − δ)``. Buffers are not averaged: :meth:`averaged` copies the
    source's in (fitted normalisers, prompt banks). One foreach kernel with the weight on the
    device: it runs inside a compiled or CUDA-graphed step without a host synchronisation.
    """

    def __init__(self, source: nn.Module, decay: float):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the decay of a parameter average must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(source).requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, source: nn.Module) -> None:
        """Fold ``source``'s current parameters into the average."""
        self.updates.add_(1)
        n = self.updates.float()
        weight = 1.0 - torch.clamp((1.0 + n) / (10.0 + n), max=self.decay)
        averaged = list(self.module.parameters())
        torch._foreach_lerp_(averaged, list(source.parameters()), [weight] * len(averaged))

    @torch.no_grad()
    def averaged(self, source: nn.Module) -> nn.Module:
        """The averaged copy of ``source``, with ``source``'s buffers copied in."""
        for mine, theirs in zip(self.module.buffers(), source.buffers(), strict=True):
            mine.copy_(theirs)
        return self.module


class Engine:
    """Runs an agent's updates (see the module docstring).

    Args:
        agent: a :class:`~zsrl.agents.base.Agent`.
        compile: ``torch.compile`` the step (CUDA) or the agent's compile regions (CPU).
        cudagraphs: replay each step as a CUDA graph (CUDA devices only).
        precision: ``"fp32"`` or ``"bf16"`` (autocast).
    """

    def __init__(self, agent: Any, compile: bool = False, cudagraphs: bool = False, precision: str = "fp32"):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        if cudagraphs and agent.device.type != "cuda":
            warnings.warn("train.cudagraphs=true needs a CUDA device; running without CUDA graphs", stacklevel=2)
            cudagraphs = False
        if compile:  # inductor's own use of a deprecated torch helper, on every compile
            warnings.filterwarnings("ignore", r"`torch\._prims_common\.check` is deprecated", FutureWarning)
            # trace recurrent modules (FB-M's GRUs) into the graph instead of breaking it there: the
            # GRU over a window is then decomposed into the window's steps at compile time (no
            # Python loop when the step runs); eager steps keep the one fused _VF.gru call
            torch._dynamo.config.allow_rnn = True
        self.agent, self.compile, self.cudagraphs, self.precision = agent, compile, cudagraphs, precision
        by_region = compile and agent.device.type == "cpu" and bool(region_names(type(agent)))
        self.compile_whole_step = compile and not by_region
        agent._compiled_regions = {} if by_region else None
        #: the metric names, fixed by the first step (the order of :meth:`step`'s vector)
        self.metric_names: tuple[str, ...] | None = None
        self._steps: dict[tuple[str, int, int], Callable[[], torch.Tensor]] = {}

    def step(self, dataset: Any, batch_size: int) -> torch.Tensor:
        """One update on a batch sampled inside the step; returns the metrics as one vector
        in the order of :attr:`metric_names` (one device tensor: nothing is read back)."""
        agent = self.agent
        key = (agent.phase, id(dataset), batch_size)
        fn = self._steps.get(key)
        if fn is None:
            names = self._probe_metric_names(dataset, batch_size)
            if self.metric_names is None:
                self.metric_names = names
            elif names != self.metric_names:
                raise ValueError(
                    f"{type(agent).__name__}: metric names changed between phases ({list(self.metric_names)} "
                    f"then {list(names)}); every update must return the same names"
                )

            def step() -> torch.Tensor:
                metrics = self._update(agent.sample_batch(dataset, batch_size))
                return torch.stack([metrics[k].float() for k in names])

            fn = self._steps[key] = self._wrap(step)
        out = fn()
        agent.after_step()
        return out

    def _update(self, batch: Any) -> Metrics:
        """``agent.update(batch)``, then the parameter average folds the new weights in."""
        metrics = self.agent.update(batch)
        if self.agent.model_average is not None:
            self.agent.model_average.update(self.agent.model)
        return metrics

    def _probe_metric_names(self, dataset: Any, batch_size: int) -> tuple[str, ...]:
        """Check one eager update's metrics and return their names; the training state and
        the random stream are restored afterwards."""
        agent = self.agent
        check_declared_state(agent)
        saved, rng = copy.deepcopy(agent.state_dict()), rng_state()
        regions, agent._compiled_regions = agent._compiled_regions, None
        try:
            metrics = agent.update(agent.sample_batch(dataset, batch_size))
        finally:
            agent._compiled_regions = regions
        agent.load_state_dict(saved)
        set_rng_state(rng)
        if not isinstance(metrics, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) and v.dim() == 0 for k, v in metrics.items()
        ):
            raise TypeError(
                f"{type(agent).__name__}.update must return a dict of named 0-dim tensors, got "
                f"{type(metrics).__name__} {metrics!r:.200}"
            )
        return tuple(metrics)

    def _wrap(self, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        """``fn`` under autocast (bf16), ``torch.compile`` and a CUDA graph, as configured."""
        if self.precision == "bf16":
            inner, device_type = fn, self.agent.device.type

            def fn() -> torch.Tensor:
                with torch.autocast(device_type, dtype=torch.bfloat16):
                    return inner()

        if self.compile_whole_step:
            fn = torch.compile(fn)
        if self.cudagraphs:
            from tensordict.nn import CudaGraphModule

            # a function of no tensors (sampling happens inside): nothing is copied per call
            fn = CudaGraphModule(fn, warmup=3 if self.compile else 2, device=self.agent.device)
        return fn


def check_declared_state(agent: Any) -> None:
    """Every trainable parameter of the agent's declared modules is trained by one of its
    declared optimizers (the contract of :class:`~zsrl.agents.base.Agent`)."""
    optimised = {id(p) for o in agent.optimizers().values() for g in o.param_groups for p in g["params"]}
    orphans = [f"{m}.{n}" for m, mod in agent.modules().items() for n, p in mod.named_parameters()
               if p.requires_grad and id(p) not in optimised]
    if orphans:
        raise TypeError(
            f"{type(agent).__name__}: parameters {orphans[:5]}{' …' if len(orphans) > 5 else ''} require "
            "gradients but no declared optimizer trains them; add them to an add_optimizer call "
            "or freeze them with requires_grad_(False)"
        )


# ---- metrics and the divergence guard ---------------------------------------------------------
class MetricAccumulator:
    """Sums of the per-step metric vectors since the last row, kept on the device.

    A second device vector counts, per metric, the steps whose running sum was still finite,
    which pins down the exact step a metric first went non-finite. In a data-parallel run
    :meth:`read` and :meth:`first_nonfinite` (called by every rank at the same steps) return
    the means over the ranks and the earliest non-finite step of any rank.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.sums: torch.Tensor | None = None
        self.finite_steps: torch.Tensor | None = None
        self.count = 0
        self.first_step = 0  # the last step before this period

    def add(self, values: torch.Tensor, names: Sequence[str], step: int) -> None:
        """Accumulate one step's metric vector ``values`` (named ``names``; device ops only)."""
        values = values.detach().float()
        if self.sums is None:
            self.names, self.sums, self.first_step = list(names), values.clone(), step - 1
            self.finite_steps = torch.zeros(values.shape, dtype=torch.int64, device=values.device)
        else:
            self.sums += values
        self.finite_steps += torch.isfinite(self.sums)
        self.count += 1

    def read(self) -> tuple[dict[str, float], tuple[str, int] | None]:
        """``(means, first non-finite (metric, step) or None)`` in one host transfer; resets."""
        if self.sums is None:
            return {}, None
        sums, finite_steps = self._over_ranks()
        host = torch.cat([sums / self.count, finite_steps.double()]).tolist()
        n = len(self.names)
        means, first = dict(zip(self.names, host[:n])), self._first_bad(host[n:])
        self.reset()
        return means, first

    def first_nonfinite(self) -> tuple[str, int] | None:
        """The first non-finite (metric, step) of the period so far, without resetting."""
        return None if self.finite_steps is None else self._first_bad(self._over_ranks()[1].tolist())

    def _over_ranks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sums, finite steps)``: the mean of the ranks' sums and the least of their counts."""
        if not distributed.active():
            return self.sums, self.finite_steps
        return distributed.global_mean(self.sums), distributed.global_min(self.finite_steps)

    def _first_bad(self, finite_steps: list[float]) -> tuple[str, int] | None:
        bad = [(int(k), name) for name, k in zip(self.names, finite_steps) if k < self.count]
        return None if not bad else (min(bad)[1], self.first_step + min(bad)[0] + 1)

    def reset(self) -> None:
        self.names, self.sums, self.finite_steps, self.count = [], None, None, 0

    def state_dict(self) -> dict[str, Any]:
        """The period so far (for exact metric rows after a resume)."""
        if self.sums is None:
            return {}
        return {"names": list(self.names), "sums": self.sums, "finite_steps": self.finite_steps,
                "count": self.count, "first_step": self.first_step}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        if not state:
            self.reset()
            return
        self.names, self.count, self.first_step = list(state["names"]), int(state["count"]), int(state["first_step"])
        self.sums = state["sums"].to(device)
        self.finite_steps = state["finite_steps"].to(device)


def nonfinite_parameter(modules: dict[str, nn.Module]) -> str | None:
    """The name of the first parameter or buffer holding NaN/inf (one host transfer)."""
    names, flags = [], []
    for prefix, module in modules.items():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if t.is_floating_point():
                names.append(f"{prefix}.{name}")
                flags.append(torch.isfinite(t).all())
    if not flags:
        return None
    ok = torch.stack(flags).tolist()
    return next((n for n, good in zip(names, ok) if not good), None)


def diverged(what: str, step: int, last_checkpoint: int | None, run_dir: Any) -> TrainingDiverged:
    """The error for a run that went non-finite."""
    kept = (f"the last good checkpoint (step {last_checkpoint}) is kept in {run_dir}/checkpoint"
            if last_checkpoint else "no checkpoint was written")
    return TrainingDiverged(
        f"training diverged: {what} became non-finite (NaN or inf) at step {step}. Nothing from "
        f"that step on was saved; {kept}. Lower the learning rates (agent.lr*) or set "
        "agent.clip_grad_norm, and start a new run."
    )
