"""Name → class registries for agents and domains.

The core never imports an algorithm or an environment: it resolves names here, by import
path, in this order:

1. names registered at run time with :func:`register_agent` / :func:`register_domain`;
2. the built-ins, listed as lazy ``"module:attribute"`` paths so importing :mod:`zsrl`
   stays cheap;
3. third-party plug-ins advertised through the entry-point groups ``zsrl.agents`` and
   ``zsrl.domains`` (``[project.entry-points."zsrl.domains"] my_env = "my_pkg.mod:MyDomain"``);
4. a literal ``"my_pkg.my_mod:MyDomain"`` path.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points
from typing import Any

from zsrl.errors import RegistryError

_BUILTIN_AGENTS = {
    "fb": "zsrl.agents.fb:FBAgent",
    "fre": "zsrl.agents.fre:FREAgent",
    "hilp": "zsrl.agents.hilp:HILPAgent",
    "mcfb": "zsrl.agents.cfb:MCFBAgent",
    "td3": "zsrl.agents.td3:TD3Agent",
    "vcfb": "zsrl.agents.cfb:VCFBAgent",
}

_BUILTIN_DOMAINS = {
    "point_mass_maze": "zsrl.envs.point_mass_maze:PointMassMaze",
    "walker": "zsrl.envs.walker:Walker",
    "cheetah": "zsrl.envs.cheetah:Cheetah",
    "quadruped": "zsrl.envs.quadruped:Quadruped",
}

_registered: dict[str, dict[str, Any]] = {"zsrl.agents": {}, "zsrl.domains": {}}


def import_object(path: str) -> Any:
    """Import ``package.module:attribute`` (the working directory is importable too)."""
    module_name, _, attr = path.partition(":")
    if not attr:
        raise RegistryError(f"{path!r} is not of the form 'package.module:Name'")
    if os.getcwd() not in sys.path:  # plug-ins in the working directory, as `python -m` would
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(f"cannot import module {module_name!r} for {path!r}: {exc}") from exc
    try:
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise RegistryError(f"module {module_name!r} has no attribute {attr!r}") from exc
    return obj


def _resolve(group: str, builtins: dict[str, str], name: str) -> Any:
    if name in _registered[group]:
        return _registered[group][name]
    if name in builtins:
        return import_object(builtins[name])
    for ep in entry_points(group=group):
        if ep.name == name:
            return ep.load()
    if ":" in name:
        return import_object(name)
    known = sorted(set(builtins) | set(_registered[group]) | available_plugins(group))
    kind = group.split(".")[1][:-1]
    raise RegistryError(
        f"unknown {kind} {name!r}. Known: {', '.join(known)}. "
        f"A plug-in can be named as 'package.module:Class' or registered in the "
        f"'{group}' entry-point group."
    )


def available_plugins(group: str) -> set[str]:
    return {ep.name for ep in entry_points(group=group)}


def register_agent(name: str, cls: Any) -> None:
    """Make ``cls`` (an :class:`zsrl.agents.base.Agent` subclass) available as ``name``."""
    _registered["zsrl.agents"][name] = cls


def register_domain(name: str, factory: Any) -> None:
    """Make ``factory`` (a Domain class or a zero-argument callable) available as ``name``."""
    _registered["zsrl.domains"][name] = factory


def agent_class(name: str) -> Any:
    return _resolve("zsrl.agents", _BUILTIN_AGENTS, name)


def domain_factory(name: str) -> Any:
    """The Domain class (or zero-argument factory) called ``name``; ``zsrl.envs.make_domain``
    builds and checks the domain."""
    return _resolve("zsrl.domains", _BUILTIN_DOMAINS, name)


def known_domains() -> list[str]:
    return sorted(set(_BUILTIN_DOMAINS) | set(_registered["zsrl.domains"]) | available_plugins("zsrl.domains"))


def known_agents() -> list[str]:
    return sorted(set(_BUILTIN_AGENTS) | set(_registered["zsrl.agents"]) | available_plugins("zsrl.agents"))
