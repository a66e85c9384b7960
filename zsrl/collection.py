"""Reward-free data collection with parallel environments.

``collect(domain, explorer, num_transitions, ...)`` steps ``num_envs`` copies of the domain's
environment in a gymnasium vector env with ``AutoresetMode.SAME_STEP`` — when an episode
ends, the true last observation comes back in ``infos["final_obs"]`` and the reset happens
in the same call, so no transition is lost or fabricated. Each environment's episode is
buffered and written contiguously with a fresh episode id.

Collection episodes last ``domain.collection_episode_length`` steps by default (the task
episode length unless the domain asks for longer ones), or ``episode_length``: undirected
exploration gets only as far from the start states as one episode lets it (the maze collects
50,000-step episodes so that a random walk leaves its start room).

What is collected and how is one :class:`CollectorConfig`, shared by ``zsrl collect``,
``zsrl pipeline`` and the benchmark.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from zsrl import distributed
from zsrl.data import OfflineDataset, env_dims, from_numpy
from zsrl.errors import UserError
from zsrl.explore import RandomExplorer, RNDConfig, RNDExplorer, SB3Explorer
from zsrl.storage import new_directory
from zsrl.utils import fault_point, now_iso, resolve_device, versions

COLLECTORS = ("random", "sticky", "rnd", "sb3")
#: parallel environments at most (each holds a simulator in memory)
MAX_ENVS = 256


@dataclass
class CollectorConfig:
    """How reward-free data is collected: the one set of defaults that ``zsrl collect``,
    ``zsrl pipeline`` and ``scripts/benchmark.py`` share (the quick start's).

    The sticky collector holds each uniform random action a random multiple of ``hold``
    steps up to ``hold_max`` (every hold then serves ``agent.action_repeat = hold``), and a
    held action is the zero action with probability ``rest``, so the data shows travelling,
    turning and braking.
    """

    #: ``random``, ``sticky``, ``rnd`` or ``sb3``; None: the domain's ``default_collector``
    collector: str | None = None
    #: the sticky collector's settings; None: 10 steps, ten times ``hold``, 0.2 (:meth:`sticky`)
    hold: int | None = None
    hold_max: int | None = None
    rest: float | None = None
    #: parallel environments (they decide the data: keep the number to repeat a dataset)
    num_envs: int = 4
    asynchronous: bool = False
    #: steps per collected episode (None: the domain's ``collection_episode_length``)
    episode_length: int | None = None
    #: the sb3 collector's saved stable-baselines3 model (``.zip``) and its Gaussian action noise
    policy: str | None = None
    action_noise: float = 0.0
    #: the device of the RND explorer's networks
    device: str = "cpu"

    def collector_for(self, domain: Any) -> str:
        return self.collector or domain.default_collector

    def sticky(self) -> tuple[int, int, float]:
        """``(hold, hold_max, rest)`` of the sticky collector, defaults filled in."""
        hold = self.hold or 10
        return hold, self.hold_max or 10 * hold, 0.2 if self.rest is None else self.rest

    def check(self, domain: Any) -> None:
        """A :class:`UserError` naming the flag of the first bad setting (for ``domain``)."""
        for flag, value in (("--num-envs", self.num_envs), ("--hold", self.hold), ("--hold-max", self.hold_max),
                            ("--episode-length", self.episode_length)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UserError(f"{flag} must be a positive integer, got {value!r}")
        if self.num_envs > MAX_ENVS:
            raise UserError(f"--num-envs {self.num_envs}: at most {MAX_ENVS} (each environment holds a simulator "
                            "in memory, and more than the CPU has cores collect no faster)")
        if self.collector is not None and self.collector not in COLLECTORS:
            raise UserError(f"unknown collector {self.collector!r}; choose one of {', '.join(COLLECTORS)}")
        collector = self.collector_for(domain)
        given = [flag for flag, value in (("--hold", self.hold), ("--hold-max", self.hold_max), ("--rest", self.rest))
                 if value is not None]
        if given and collector != "sticky":
            raise UserError(f"{', '.join(given)} set the sticky collector, not {collector!r}; pass --collector sticky "
                            "or leave them out")
        if not self.action_noise >= 0:
            raise UserError(f"--action-noise must be >= 0, got {self.action_noise!r}")
        resolve_device(self.device)  # a clear error for --device gpu0


@dataclass
class _Episode:
    obs: list
    action: list
    next_obs: list
    terminated: list
    physics: list
    next_physics: list


def _new_episode() -> _Episode:
    return _Episode([], [], [], [], [], [])


def reached_states(
    next_obs: np.ndarray, info: dict[str, Any], done: np.ndarray, with_physics: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """The states a SAME_STEP vector-env step actually reached: ``(next_obs, next_physics)``.

    For an env whose episode just ended, the returned observation (and ``info["physics"]``)
    already belong to the reset; the reached ones are in ``final_obs`` / ``final_info``.
    """
    next_physics = info.get("physics") if with_physics else None
    if not done.any():
        return next_obs, next_physics
    reached = next_obs.copy()
    for i in np.flatnonzero(done):
        reached[i] = info["final_obs"][i]
    if next_physics is not None:
        next_physics = next_physics.copy()
        next_physics[done] = info["final_info"]["physics"][done]
    return reached, next_physics


@contextlib.contextmanager
def env_errors(domain: Any, doing: str) -> Iterator[None]:
    """An exception from the domain's environment (a plug-in's code) as one paragraph."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"the environment of domain {getattr(domain, 'name', domain)!r} failed {doing}: "
                        f"{type(exc).__name__}: {exc}") from exc


def collection_episode_length(domain: Any, episode_length: int | None = None) -> int:
    """Steps per collected episode: ``episode_length``, else the domain's collection length."""
    return episode_length or domain.collection_episode_length or domain.episode_length


def make_vector_env(
    domain: Any, num_envs: int, seed: int, asynchronous: bool = False, episode_length: int | None = None
) -> gym.vector.VectorEnv:
    """``num_envs`` envs seeded ``seed + i``; ``episode_length`` truncates their episodes there
    instead of at the domain's :attr:`episode_length` (:meth:`Domain.make_collection_env`)."""
    if episode_length is None or episode_length == domain.episode_length:
        fns: list[Callable[[], gym.Env]] = [(lambda i=i: domain.make_env(seed=seed + i)) for i in range(num_envs)]
    else:
        fns = [(lambda i=i: domain.make_collection_env(seed + i, episode_length)) for i in range(num_envs)]
    mode = gym.vector.AutoresetMode.SAME_STEP
    if asynchronous and num_envs > 1:
        return gym.vector.AsyncVectorEnv(fns, autoreset_mode=mode, context="spawn")
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)


def make_explorer(cfg: CollectorConfig, collector: str, obs_dim: int, action_dim: int, num_transitions: int,
                  seed: int) -> Any:
    """The explorer of ``collector`` with ``cfg``'s settings."""
    if collector == "random":
        return RandomExplorer(action_dim, seed)
    if collector == "sticky":
        hold, hold_max, rest = cfg.sticky()
        return RandomExplorer(action_dim, seed, hold=hold, hold_max=hold_max, rest=rest)
    if collector == "rnd":
        return RNDExplorer(obs_dim, action_dim, capacity=num_transitions, cfg=RNDConfig(device=cfg.device), seed=seed)
    if collector == "sb3":
        if not cfg.policy:
            raise UserError("--collector sb3 needs --policy FILE.zip (a saved stable-baselines3 model)")
        return SB3Explorer(cfg.policy, action_dim, noise_std=cfg.action_noise, seed=seed)
    raise UserError(f"unknown collector {collector!r}; choose one of {', '.join(COLLECTORS)}")


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")


def collect(
    domain: Any,
    explorer: Any,
    num_transitions: int,
    *,
    num_envs: int = 4,
    seed: int = 0,
    asynchronous: bool = False,
    progress: bool = True,
    domain_spec: str | None = None,
    episode_length: int | None = None,
) -> OfflineDataset:
    """Collect ``num_transitions`` reward-free transitions with ``explorer``.

    Episodes last ``episode_length`` steps (default: the domain's collection episode length,
    see the module docstring). Returns an in-memory :class:`OfflineDataset` whose metadata
    records the domain, collector, seed, episode length, throughput and package versions.
    """
    arrays, elapsed = collect_arrays(domain, explorer, num_transitions, num_envs=num_envs, seed=seed,
                                     asynchronous=asynchronous, progress=progress, episode_length=episode_length)
    meta = collection_meta(domain, explorer, seed, num_envs, episode_length, domain_spec, num_transitions, elapsed)
    return from_numpy(arrays, meta)


def collection_meta(domain: Any, explorer: Any, seed: int, num_envs: int, episode_length: int | None,
                    domain_spec: str | None, num_transitions: int, elapsed: float) -> dict[str, Any]:
    """What a collected dataset's ``meta.json`` records."""
    return {
        "domain": domain.name,
        "domain_spec": domain_spec or domain.name,
        "collector": getattr(explorer, "name", type(explorer).__name__),
        "seed": seed,
        "num_envs": num_envs,
        "episode_length": collection_episode_length(domain, episode_length),
        "collection_seconds": round(elapsed, 3),
        "transitions_per_second": round(num_transitions / elapsed, 1),
        "created": now_iso(),
        "versions": versions(),
    }


def collect_arrays(
    domain: Any, explorer: Any, num_transitions: int, *, num_envs: int = 4, seed: int = 0,
    asynchronous: bool = False, progress: bool = True, episode_length: int | None = None,
) -> tuple[dict[str, np.ndarray], float]:
    """:func:`collect`'s transitions as flat arrays (episode ids from 0), and its seconds."""
    _check_counts(transitions=num_transitions, num_envs=num_envs)
    if episode_length is not None:
        _check_counts(episode_length=episode_length)
    length = collection_episode_length(domain, episode_length)
    if length != domain.episode_length:  # a domain that cannot: a clear error, not one per subprocess
        domain.make_collection_env(seed, length).close()
    envs = make_vector_env(domain, num_envs, seed, asynchronous, length)
    store_physics = domain.has_physics
    episodes: list[_Episode] = []
    current = [_new_episode() for _ in range(num_envs)]
    collected = 0
    start = time.perf_counter()
    bar = tqdm(total=num_transitions, unit="tr", disable=not progress, desc=f"collect {domain.name}",
               smoothing=0.05, mininterval=1.0)
    try:
        with env_errors(domain, "at reset"):
            obs, info = envs.reset(seed=seed)
        physics = info.get("physics") if store_physics else None
        while collected < num_transitions:
            action = np.asarray(explorer.act(obs), dtype=np.float32)
            with env_errors(domain, f"after {collected:,} transitions"):
                next_obs, _, terminated, truncated, info = envs.step(action)
            done = terminated | truncated
            true_next, next_physics = reached_states(next_obs, info, done, store_physics)
            take = min(num_envs, num_transitions - collected)
            explorer.observe(obs[:take], action[:take], true_next[:take], terminated[:take])
            for i in range(take):
                ep = current[i]
                ep.obs.append(obs[i])
                ep.action.append(action[i])
                ep.next_obs.append(true_next[i])
                ep.terminated.append(bool(terminated[i]))
                if store_physics:
                    ep.physics.append(physics[i])
                    ep.next_physics.append(next_physics[i])
                if done[i]:
                    episodes.append(ep)
                    current[i] = _new_episode()
            collected += take
            bar.update(take)
            obs = next_obs
            physics = info.get("physics") if store_physics else None
    finally:
        bar.close()
        envs.close()
    episodes += [ep for ep in current if ep.obs]
    elapsed = time.perf_counter() - start

    arrays: dict[str, Any] = {
        "observation": np.concatenate([np.stack(e.obs) for e in episodes]),
        "action": np.concatenate([np.stack(e.action) for e in episodes]),
        "next_observation": np.concatenate([np.stack(e.next_obs) for e in episodes]),
        "terminated": np.concatenate([np.asarray(e.terminated) for e in episodes]),
        "episode": np.concatenate([np.full(len(e.obs), k) for k, e in enumerate(episodes)]),
        "step": np.concatenate([np.arange(len(e.obs)) for e in episodes]),
    }
    if store_physics:
        arrays["physics"] = np.concatenate([np.stack(e.physics) for e in episodes])
        arrays["next_physics"] = np.concatenate([np.stack(e.next_physics) for e in episodes])
    return arrays, elapsed


def merge_parts(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The ranks' collections as one, in rank order, episode ids made unique (each part's
    follow the previous part's)."""
    offsets = np.cumsum([0] + [int(p["episode"].max()) + 1 for p in parts[:-1]])
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "episode"}
    merged["episode"] = np.concatenate([p["episode"] + off for p, off in zip(parts, offsets, strict=True)])
    return merged


def coverage_files(domain: Any, dataset: OfflineDataset) -> dict[str, bytes] | None:
    """The extra files of a new dataset folder: ``coverage.png`` where the domain draws a
    floor plan (:func:`coverage_png`), else none."""
    png = coverage_png(domain, dataset)
    return {"coverage.png": png} if png else None


def coverage_png(domain: Any, dataset: OfflineDataset) -> bytes | None:
    """A picture of visited positions over the domain layout (domains with ``draw_layout``)."""
    if not domain.has_layout:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy = dataset.data["next", "observation"][:, :2].cpu().numpy()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(xy[:, 0], xy[:, 1], s=0.3, alpha=0.25, color="tab:blue", rasterized=True)
    domain.draw_layout(ax)
    title = f"{domain.name}: {dataset.meta.get('collector')} ({len(dataset):,} transitions)"
    floor = domain.coverage(xy)
    if floor is not None:
        title += f"\ncoverage {floor:.1%} of floor cells"
    ax.set_title(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def collect_to_disk(
    domain: Any,
    cfg: CollectorConfig,
    num_transitions: int,
    out: str | Path,
    *,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    domain_spec: str | None = None,
) -> OfflineDataset:
    """Collect with ``cfg`` and write the dataset ``out`` atomically (with ``coverage.png``
    where the domain draws a floor plan).

    Everything that can be checked is checked before collecting, ``out`` once, under its
    writer lock; ``overwrite`` replaces only a dataset directory.

    Launched by ``torchrun`` (N processes), rank ``r`` collects its share of the transitions
    with its own explorer and environments seeded ``seed + r · num_envs + i``, and rank 0
    writes the ranks' parts as one dataset (in rank order, episode ids unique) and returns
    it; the other ranks return ``None``. The result is reproducible for a seed and N.
    """
    out = Path(out)
    cfg.check(domain)
    _check_counts(transitions=num_transitions)
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    distributed.init()
    rank, world = distributed.rank(), distributed.world_size()
    if num_transitions < world:
        raise UserError(f"--transitions {num_transitions} is fewer than the {world} processes collecting them")
    share = num_transitions // world + (rank < num_transitions % world)
    # rank r steps environments seeded seed + r·num_envs + i: every rank's differ
    rank_seed = seed + rank * cfg.num_envs
    obs_dim, action_dim = env_dims(domain, seed)
    explorer = make_explorer(cfg, cfg.collector_for(domain), obs_dim, action_dim, share, rank_seed)
    with contextlib.ExitStack() as stack:
        tmp = distributed.on_main(lambda: stack.enter_context(new_directory(out, "dataset", overwrite)))
        arrays, elapsed = collect_arrays(
            domain, explorer, share, num_envs=cfg.num_envs, seed=rank_seed, asynchronous=cfg.asynchronous,
            progress=progress and rank == 0, episode_length=cfg.episode_length,
        )
        parts = distributed.gather_objects((arrays, elapsed))
        if parts is None:  # rank > 0: rank 0 writes the dataset
            return None  # type: ignore[return-value]
        meta = collection_meta(domain, explorer, seed, cfg.num_envs, cfg.episode_length, domain_spec,
                               num_transitions, max(t for _, t in parts))
        if world > 1:
            meta["world_size"] = world  # rank r's environments: seed + r·num_envs + i
        dataset = from_numpy(merge_parts([a for a, _ in parts]), meta)
        fault_point("collect:collected")
        dataset.write_into(tmp, coverage_files(domain, dataset))
    dataset.path = out
    return dataset
