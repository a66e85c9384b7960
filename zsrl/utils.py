"""Small shared utilities: seeding and random states, devices, versions, and the
fault-injection hook of the test suite."""

from __future__ import annotations

import os
import platform
import random
import signal
import time
from typing import Any

import numpy as np
import torch

from zsrl.errors import UserError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA if available, else CPU; anything else as given (validated)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(
            f"device {device!r} is not a device torch knows; use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device {device!r} was requested but CUDA is not available here; "
            "use device=cpu or device=auto"
        )
    return dev


def versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("zsrl", "torch", "tensordict", "gymnasium", "dm_control", "mujoco", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    out["cuda"] = torch.version.cuda or "none"
    return out


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def rng_state() -> dict[str, Any]:
    """torch's random states (CPU and every CUDA device), for exact resume."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ---- fault injection (tests) -----------------------------------------------------------
FAULT_ENV = "ZSRL_FAULT_POINT"
_fault_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Test hook: ``ZSRL_FAULT_POINT=name[@k]`` sends this process SIGKILL (or the signal
    named by ``ZSRL_FAULT_SIGNAL``, e.g. ``TERM``) the k-th time (default: first) it passes
    the point ``name``. A no-op when the variable is unset."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    target, _, nth = spec.partition("@")
    if target != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] == int(nth or 1):
        os.kill(os.getpid(), getattr(signal, f"SIG{os.environ.get('ZSRL_FAULT_SIGNAL', 'KILL')}"))
