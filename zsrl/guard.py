"""Metric accumulation on the device, with a divergence guard that needs no per-step sync.

Every update adds its metric tensors into one device vector; the running sums double as the
guard, because a non-finite value is sticky under addition (NaN stays NaN, ±inf stays
non-finite). A second device vector counts, per metric, the steps whose running sum was
still finite, which pins down the exact step a metric first went non-finite. Both are read
back only when a metric row is written (every ``log_every`` updates) or before a checkpoint
is written; :func:`nonfinite_parameter` checks the agent's parameters at the same moments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from zsrl.utils import UserError


class TrainingDiverged(UserError):
    """A non-finite loss or parameter; the message names it and the step."""


class MetricAccumulator:
    """Sums of the per-update metric tensors since the last row, kept on the device."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.sums: torch.Tensor | None = None
        self.finite_steps: torch.Tensor | None = None
        self.count = 0
        self.first_step = 0  # the last step before this period

    def add(self, values: torch.Tensor, names: Sequence[str], step: int) -> None:
        """Accumulate one update's metric vector ``values`` (named ``names``; device ops only)."""
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
        host = torch.cat([self.sums / self.count, self.finite_steps.double()]).tolist()
        n = len(self.names)
        means, first = dict(zip(self.names, host[:n])), self._first_bad(host[n:])
        self.reset()
        return means, first

    def first_nonfinite(self) -> tuple[str, int] | None:
        """The first non-finite (metric, step) of the period so far, without resetting."""
        return None if self.finite_steps is None else self._first_bad(self.finite_steps.tolist())

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


def nonfinite_parameter(modules: dict[str, torch.nn.Module]) -> str | None:
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
