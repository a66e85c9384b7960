"""Name → class registries for agents and domains.

The core never imports an algorithm or an environment: it resolves names here, by import
path, in this order:

1. names registered at run time with :func:`register_agent` / :func:`register_domain`;
2. the built-ins, listed as lazy ``"module:attribute"`` paths so importing :mod:`zsrl`
   stays cheap;
3. third-party plug-ins advertised through the entry-point groups ``zsrl.agents`` and
   ``zsrl.domains`` (``[project.entry-points."zsrl.domains"] my_env = "my_pkg.mod:MyDomain"``);
4. a literal ``"my_pkg.my_mod:MyDomain"`` path.

**Trust.** A name the user gives (a command-line argument, a config they pass, their own
code) resolves in all four ways. A name read from an artifact — a run's ``config.json``, a
dataset's ``meta.json``, a model's ``config.json``, which anyone can write — resolves only
in the first three: importing a module path that an artifact names would run that module's
code. The user allows it with ``--trust-plugins`` (:func:`trusted_plugins`) or the environment
variable ``ZSRL_TRUST_PLUGINS`` (``1`` for every module, or a comma-separated list of module
names), or by naming the plug-in again themselves.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Any

from zsrl.errors import RegistryError

_BUILTIN_AGENTS = {
    "fb": "zsrl.agents.fb:FBAgent",
    "fbm": "zsrl.agents.memory:FBMAgent",
    "fbstack": "zsrl.agents.memory:FBStackAgent",
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
#: module names allowed from artifacts for now (``"*"``: all), see :func:`trusted_plugins`
_trusted: set[str] = set()
TRUST_ENV = "ZSRL_TRUST_PLUGINS"


@contextlib.contextmanager
def trusted_plugins(modules: str | list[str] = "*") -> Iterator[None]:
    """Within the block, artifacts may name these plug-in modules (``"*"``: any)."""
    added = {modules} if isinstance(modules, str) else set(modules)
    added -= _trusted
    _trusted.update(added)
    try:
        yield
    finally:
        _trusted.difference_update(added)


def _is_trusted(module: str) -> bool:
    env = {m.strip() for m in os.environ.get(TRUST_ENV, "").split(",") if m.strip()}
    allowed = _trusted | ({"*"} if env & {"1", "*", "all"} else env)
    return "*" in allowed or module in allowed


def _check_trusted(name: str, source: str | None, kind: str) -> None:
    """Refuse a module path read from an artifact (``source``) that the user has not allowed."""
    module = name.partition(":")[0]
    if source is None or _is_trusted(module):
        return
    raise RegistryError(
        f"{source} names the {kind} {name!r}, a module outside zsrl and its installed plug-ins; "
        f"opening it would import and run the code of {module!r}. If you trust it, pass "
        f"--trust-plugins (or set {TRUST_ENV}={module}), or name the {kind} yourself."
    )


def import_object(path: str) -> Any:
    """Import ``package.module:attribute`` (the working directory is importable too)."""
    module_name, _, attr = path.partition(":")
    if not attr or not module_name:
        raise RegistryError(f"{path!r} is not of the form 'package.module:Name'")
    if os.getcwd() not in sys.path:  # plug-ins in the working directory, as `python -m` would
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except (ImportError, ValueError) as exc:  # ValueError: a relative or empty module name
        raise RegistryError(f"cannot import module {module_name!r} for {path!r}: {exc}") from exc
    try:
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise RegistryError(f"module {module_name!r} has no attribute {attr!r}") from exc
    return obj


def _resolve(group: str, builtins: dict[str, str], name: str, source: str | None = None) -> Any:
    if name in _registered[group]:
        return _registered[group][name]
    if name in builtins:
        return import_object(builtins[name])
    for ep in entry_points(group=group):
        if ep.name == name:
            return ep.load()
    kind = group.split(".")[1][:-1]
    if ":" in name:
        _check_trusted(name, source, kind)
        return import_object(name)
    known = sorted(set(builtins) | set(_registered[group]) | available_plugins(group))
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


def agent_class(name: str, source: str | None = None) -> Any:
    """The Agent class called ``name``; ``source``: the artifact the name was read from."""
    return _resolve("zsrl.agents", _BUILTIN_AGENTS, name, source)


def domain_factory(name: str, source: str | None = None) -> Any:
    """The Domain class (or zero-argument factory) called ``name`` (``source``: the artifact
    the name was read from); ``zsrl.envs.make_domain`` builds and checks the domain."""
    return _resolve("zsrl.domains", _BUILTIN_DOMAINS, name, source)


def known_domains() -> list[str]:
    return sorted(set(_BUILTIN_DOMAINS) | set(_registered["zsrl.domains"]) | available_plugins("zsrl.domains"))


def known_agents() -> list[str]:
    return sorted(set(_BUILTIN_AGENTS) | set(_registered["zsrl.agents"]) | available_plugins("zsrl.agents"))
