"""Environments for zero-shot RL: the :class:`Domain` interface and its implementations.

* :mod:`zsrl.envs.base` — :class:`Domain`, :class:`Transitions`, :data:`RewardFn` (and
  :data:`ArrayRewardFn`, the ``f(obs, action, next_obs)`` form, via :func:`reward_from_arrays`);
* :mod:`zsrl.envs.dmc` — :class:`DMCEnv` (dm_control as gymnasium) and :class:`DMCDomain`;
* :mod:`zsrl.envs.gym_domain` — :class:`GymDomain`, the adapter for any gymnasium env;
* :func:`make_domain` — a domain by name: the built-ins ``walker``, ``cheetah``,
  ``quadruped``, ``point_mass_maze``, registered names, entry points of the ``zsrl.domains``
  group, or ``package.module:Class`` (:mod:`zsrl.registry`).

``DMCEnv`` and ``DMCDomain`` are imported on first use, so ``import zsrl.envs`` does not load
dm_control until a MuJoCo domain is needed.

Rendering is headless. On Linux, unless ``MUJOCO_GL`` is already set, importing this package
sets it to ``egl`` when an EGL library is installed (GPU driver or Mesa), else to ``osmesa``
when OSMesa is, else to ``disable`` (everything but ``render()`` still works). dm_control reads
the variable once, when it is first imported: import :mod:`zsrl.envs` before dm_control, or
set ``MUJOCO_GL`` yourself.
"""

from __future__ import annotations

import ctypes.util
import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from zsrl.data import ArrayRewardFn, RewardFn, Transitions, reward_from_arrays
from zsrl.errors import RegistryError, UnknownTaskError, UserError
from zsrl.registry import domain_factory

from .base import Domain
from .gym_domain import GymDomain
from .pomdp import partially_observed, split_variant

if TYPE_CHECKING:
    from .dmc import DMCDomain, DMCEnv

__all__ = [
    "ArrayRewardFn",
    "DMCDomain",
    "DMCEnv",
    "Domain",
    "GymDomain",
    "RewardFn",
    "Transitions",
    "UnknownTaskError",
    "make_domain",
    "reward_from_arrays",
]


def make_domain(name: str, source: str | None = None) -> Domain:
    """Build the domain called ``name`` (see :mod:`zsrl.registry` for the lookup order and
    for ``source``, the artifact a name was read from); ``gym:ENV_ID`` is any registered
    gymnasium env as a :class:`GymDomain` without tasks (prompt it with reward functions);
    ``NAME+SETTING…`` is a partially observed variant (:mod:`zsrl.envs.pomdp`)."""
    base, settings = split_variant(name)
    if settings:
        return partially_observed(make_domain(base, source), settings, name)
    if name.startswith("gym:"):
        return GymDomain(name.removeprefix("gym:"), name=name)
    factory = domain_factory(name, source)
    try:
        domain = factory() if callable(factory) else factory
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 — a plug-in's own failure, told in one paragraph
        raise RegistryError(f"domain {name!r} could not be created: {type(exc).__name__}: {exc}") from None
    if not isinstance(domain, Domain):
        raise RegistryError(
            f"domain {name!r} gives a {type(domain).__name__}, not a zsrl Domain: subclass "
            "zsrl.envs.Domain (or zsrl.envs.GymDomain for a gymnasium env)"
        )
    if not domain.name:
        domain.name = name
    return domain

def _default_gl_backend() -> str:
    for backend, library in (("egl", "EGL"), ("osmesa", "OSMesa")):
        if ctypes.util.find_library(library):
            return backend
    return "disable"


if sys.platform.startswith("linux") and "MUJOCO_GL" not in os.environ:
    os.environ["MUJOCO_GL"] = _default_gl_backend()

_LAZY = {"DMCEnv": ".dmc", "DMCDomain": ".dmc"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
