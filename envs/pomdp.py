"""Partially observed variants of any domain: corrupted observations and changed dynamics.

A variant is named by the base domain's name followed by ``+SETTING`` parts, the same string
in ``zsrl collect --domain``, a run's ``domain=``, ``zsrl eval --domain`` and ``zsrl pipeline``:

* ``+noisy[=σ]`` — ``o = s + ε``, ``ε ~ N(0, σ²)`` on every coordinate (σ 0.2);
* ``+flickering[=p]`` — the whole observation is zeros with probability ``p`` (0.2);
* ``+sensors[=p]`` — each coordinate is zero with probability ``p`` (0.2), independently;
* ``+occluded`` — only the domain's :attr:`~zsrl.envs.Domain.position_dims` are seen (the
  velocities are removed);
* ``+dynamics=m`` — every body mass and joint damping of the simulator times ``m``.

Observation settings apply in the order written (``walker+occluded+noisy=0.1``). After
Jeen et al., "Zero-Shot Reinforcement Learning Under Partial Observability" (RLC 2025;
enjeeneer/bfms-with-memory ``occlusions.py``): a dataset is corrupted once when a run loads
it (each stored observation frozen, drawn from the run's seed), an evaluation afresh at
every environment step. Datasets always hold the true observations and physics states, so
one collected dataset serves every corruption, and rewards (for prompting and for scoring)
are computed from the truth. A goal prompt is the goal seen without noise (only
``occluded`` applies to it).

Differences from the reference: every network sees the corrupted observations (the
reference can corrupt only F/π's or only B's); the dynamics multiplier changes the
environment, not the relabelling physics of dm_control tasks (their rewards read positions
and velocities, not masses).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from zsrl.errors import UserError

from .base import Domain

#: default strength of each corruption: σ for ``noisy``, p for ``flickering`` and ``sensors``
DEFAULTS = {"noisy": 0.2, "flickering": 0.2, "sensors": 0.2}
SEPARATOR = "+"


@dataclass(frozen=True)
class Corruption:
    """One observation setting (``kind``: ``occluded`` or one of :data:`DEFAULTS`) with its strength ``value``
    and, for ``occluded``, the coordinates ``keep`` that stay visible."""

    kind: str
    value: float = 0.0
    keep: tuple[int, ...] = ()

    def __call__(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``obs (N, D)`` as seen through this setting, fresh randomness from ``generator``."""
        if self.kind == "occluded":
            return obs[..., list(self.keep)]
        shape = (*obs.shape[:-1], 1) if self.kind == "flickering" else obs.shape
        draw = torch.randn if self.kind == "noisy" else torch.rand
        u = draw(shape, generator=generator, device=generator.device if generator else obs.device)
        if self.kind == "noisy":
            return obs + self.value * u.to(obs.dtype)
        return obs * (u >= self.value).to(obs.dtype)

    def goal(self, goal: torch.Tensor) -> torch.Tensor:
        """The goal as a prompt sees it: occluded coordinates removed, no noise."""
        return goal[..., list(self.keep)] if self.kind == "occluded" else goal

    def seen_dim(self, obs_dim: int) -> int:
        return len(self.keep) if self.kind == "occluded" else obs_dim

    def __str__(self) -> str:
        return self.kind if self.kind == "occluded" else f"{self.kind}={self.value:g}"


@dataclass(frozen=True)
class Observer:
    """What an agent sees of the true observation: the corruptions of a variant, in order."""

    corruptions: tuple[Corruption, ...]

    def __call__(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for c in self.corruptions:
            obs = c(obs, generator)
        return obs

    def goal(self, goal: torch.Tensor) -> torch.Tensor:
        for c in self.corruptions:
            goal = c.goal(goal)
        return goal

    def seen_dim(self, obs_dim: int) -> int:
        for c in self.corruptions:
            obs_dim = c.seen_dim(obs_dim)
        return obs_dim

    def __str__(self) -> str:
        return SEPARATOR.join(map(str, self.corruptions))


def split_variant(spec: str) -> tuple[str, list[str]]:
    """``"walker+flickering=0.3"`` → ``("walker", ["flickering=0.3"])``."""
    base, *settings = spec.split(SEPARATOR)
    return base, settings


def partially_observed(domain: Domain, settings: list[str], spec: str) -> Domain:
    """``domain`` with the variant ``settings`` (the ``+`` parts of ``spec``): a copy whose
    class also derives from :class:`VariantDomain`, so every method of the base domain
    (tasks, goals, rendering) stays its own."""
    corruptions, dynamics = [], 1.0
    for part in settings:
        kind, has_value, raw = part.partition("=")
        try:
            value = float(raw) if has_value else None
        except ValueError:
            value = None
        if kind == "dynamics":
            if value is None or not value > 0:
                raise UserError(f"{spec!r}: dynamics=m needs a positive multiplier m, e.g. {domain.name}+dynamics=1.5")
            dynamics *= value
        elif kind == "occluded" and not has_value:
            if any(c.kind == "occluded" for c in corruptions):
                raise UserError(f"{spec!r}: +occluded appears twice; name it once")
            if domain.position_dims is None:
                raise UserError(
                    f"{spec!r}: domain {domain.name!r} does not say which observation coordinates are positions; "
                    "set position_dims on its Domain class to use +occluded")
            corruptions.append(Corruption("occluded", keep=tuple(domain.position_dims)))
        elif kind in DEFAULTS and (value is None) == (not has_value) and (value is None or 0 <= value):
            v = DEFAULTS[kind] if value is None else value
            if kind != "noisy" and v > 1:
                raise UserError(f"{spec!r}: {kind}={v:g} is a probability; give one in [0, 1]")
            corruptions.append(Corruption(kind, v))
        else:
            raise UserError(
                f"{spec!r}: unknown setting {part!r}; a variant is DOMAIN+SETTING…, with SETTING one of "
                "noisy[=σ], flickering[=p], sensors[=p], occluded, dynamics=m (e.g. walker+flickering=0.2)")
    variant = copy.copy(domain)
    variant.__class__ = type(f"{type(domain).__name__}Variant", (VariantDomain, type(domain)), {})
    variant.observer = Observer(tuple(corruptions)) if corruptions else None
    variant.dynamics = dynamics
    variant.variant = spec
    return variant


class VariantDomain(Domain):
    """The mixin of :func:`partially_observed`: environments with scaled dynamics."""

    def make_env(self, seed: int | None = None, render_mode: str | None = None, **kwargs: Any) -> gym.Env:
        return scale_dynamics(super().make_env(seed=seed, render_mode=render_mode, **kwargs), self.dynamics)

    def make_task_env(self, task: str | None = None, seed: int | None = None,
                      render_mode: str | None = None) -> gym.Env:
        return scale_dynamics(super().make_task_env(task, seed=seed, render_mode=render_mode), self.dynamics)

    def make_collection_env(self, seed: int | None, episode_length: int) -> gym.Env:
        return scale_dynamics(super().make_collection_env(seed, episode_length), self.dynamics)

    def make_render_env(self, seed: int | None = None, task: str | None = None,
                        size: tuple[int, int] = (240, 320)) -> gym.Env:
        return scale_dynamics(super().make_render_env(seed, task, size), self.dynamics)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "variant": self.variant,
                "observation": str(self.observer or "true state"), "dynamics": self.dynamics}


def scale_dynamics(env: gym.Env, multiplier: float) -> gym.Env:
    """``env`` with every body mass and joint damping of its MuJoCo model times
    ``multiplier`` (once per environment, whichever maker built it)."""
    if multiplier == 1.0:
        return env
    inner = env.unwrapped
    if getattr(inner, "zsrl_dynamics", 1.0) != 1.0:
        return env
    physics = getattr(inner, "physics", None)  # dm_control (zsrl.envs.DMCEnv)
    model = physics.model if physics is not None else getattr(inner, "model", None)  # gymnasium MuJoCo
    if model is None or not hasattr(model, "body_mass"):
        raise UserError(f"+dynamics needs a MuJoCo environment (dm_control or gymnasium's MuJoCo envs); "
                        f"{type(inner).__name__} has no MuJoCo model")
    model.body_mass[:] = np.asarray(model.body_mass) * multiplier
    model.dof_damping[:] = np.asarray(model.dof_damping) * multiplier
    inner.zsrl_dynamics = multiplier
    return env


def settings_help() -> str:
    """The settings of a variant in one line, for ``zsrl domains``."""
    return "+noisy[=σ] (0.2)  +flickering[=p] (0.2)  +sensors[=p] (0.2)  +occluded  +dynamics=m"
