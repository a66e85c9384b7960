"""Datasets of the field, brought into zsrl's format: ExORL episode folders and Minari datasets
(and zsrl's datasets exported to Minari).

ExORL (Yarats et al. 2022, ``denisyarats/exorl``) stores one ``.npz`` file per episode with
``observation``, ``action``, ``reward``, ``discount`` and ``physics`` (the MuJoCo state) of
``T + 1`` steps, the first a dummy reset step (its action is zero). Transition ``t`` is then
``(observation[t], action[t + 1], observation[t + 1])``, terminal where ``discount[t + 1] == 0``,
with the states ``physics[t]`` and ``physics[t + 1]``: the stored rewards are not kept, since
zsrl's DMC domains relabel every task exactly from the physics state. The point-mass maze's
ExORL datasets have the same layout.

Minari (Farama; ``pip install "zsrl[minari]"``) stores episodes of ``T + 1`` observations and
``T`` actions, terminations and truncations, in the env's own action units; imported actions
are rescaled to zsrl's ``[-1, 1]`` for a gymnasium domain, and a ``physics`` entry of the
episode infos (as zsrl's export writes it) is kept for relabelling.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from zsrl.collection import coverage_files
from zsrl.data import OfflineDataset, env_dims, from_numpy
from zsrl.errors import DatasetError, UserError
from zsrl.utils import now_iso, versions

EXORL_KEYS = ("observation", "action", "discount", "physics")


def read_exorl_episode(path: Path) -> dict[str, np.ndarray]:
    """The transitions of one ExORL episode file (see the module docstring)."""
    try:
        with np.load(path) as episode:
            missing = [k for k in EXORL_KEYS if k not in episode.files]
            if missing:
                raise DatasetError(f"{path} is not an ExORL episode: it lacks {', '.join(missing)} "
                                   f"(it has {', '.join(episode.files)})")
            obs, action, discount, physics = (np.asarray(episode[k]) for k in EXORL_KEYS)
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{path} cannot be read as an .npz episode ({type(exc).__name__}: {exc})") from None
    steps = obs.shape[0] - 1
    if steps < 1 or any(x.shape[0] != steps + 1 for x in (action, discount, physics)):
        raise DatasetError(f"{path}: its arrays must hold the same T + 1 > 1 steps, got "
                           f"{[x.shape[0] for x in (obs, action, discount, physics)]}")
    return {
        "observation": obs[:-1], "action": action[1:], "next_observation": obs[1:],
        "terminated": discount[1:].reshape(-1) == 0, "physics": physics[:-1], "next_physics": physics[1:],
    }


def import_exorl(
    folder: str | Path, domain: Any, out: str | Path, *, episodes: int | None = None, overwrite: bool = False,
    domain_spec: str | None = None,
) -> OfflineDataset:
    """Import the ExORL episodes under ``folder`` (its ``.npz`` files, sorted by name; the
    first ``episodes`` of them) as a zsrl dataset of ``domain`` at ``out``."""
    folder = Path(folder)
    files = sorted(folder.rglob("*.npz"))[:episodes]
    if not files:
        raise UserError(f"{folder} holds no .npz episode files; point at an ExORL dataset folder (its buffer/)")
    if not domain.has_physics:
        raise UserError(f"domain {domain.name!r} stores no physics state; ExORL datasets are of the DMC domains")
    obs_dim, action_dim = env_dims(domain)
    env = domain.make_env(seed=0)
    _, info = env.reset(seed=0)
    env.close()
    physics_dim = int(np.asarray(info["physics"]).shape[-1])
    parts = []
    for k, path in enumerate(files):
        part = read_exorl_episode(path)
        dims = (part["observation"].shape[-1], part["action"].shape[-1], part["physics"].shape[-1])
        if dims != (obs_dim, action_dim, physics_dim):
            raise DatasetError(
                f"{path} has observations, actions and physics states of sizes {dims}, but domain "
                f"{domain.name!r} has {(obs_dim, action_dim, physics_dim)}: is it an ExORL dataset of this domain?"
            )
        part["episode"] = np.full(len(part["action"]), k)
        part["step"] = np.arange(len(part["action"]))
        parts.append(part)
    arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    arrays["action"] = np.clip(arrays["action"], -1.0, 1.0)  # float32 rounding of ExORL's clipped actions
    meta = {"domain": domain.name, "domain_spec": domain_spec or domain.name, "collector": f"exorl:{folder.name}",
            "source": str(folder.resolve()), "episodes_imported": len(files), "created": now_iso(),
            "versions": versions()}
    dataset = from_numpy(arrays, meta)
    dataset.save(out, overwrite, coverage_files(domain, dataset))
    return dataset


def _minari() -> Any:
    try:
        import minari
    except ImportError:
        raise UserError('Minari datasets need the minari package: pip install "zsrl[minari]"') from None
    return minari


def import_minari(
    dataset_id: str, domain: Any, out: str | Path, *, episodes: int | None = None, overwrite: bool = False,
    domain_spec: str | None = None,
) -> OfflineDataset:
    """Import the local Minari dataset ``dataset_id`` (``MINARI_DATASETS_PATH``; nothing is
    downloaded) as a zsrl dataset of ``domain`` at ``out``."""
    minari = _minari()
    try:
        source = minari.load_dataset(dataset_id)
    except Exception as exc:  # noqa: BLE001 — minari's own failure (missing, corrupt), told in one paragraph
        raise UserError(f"Minari dataset {dataset_id!r} cannot be loaded ({type(exc).__name__}: {exc}); it must be "
                        "in the local Minari folder (MINARI_DATASETS_PATH); zsrl downloads nothing") from None
    obs_dim, action_dim = env_dims(domain)
    to_zsrl = getattr(domain, "zsrl_action", None)
    parts = []
    for k, ep in enumerate(source.iterate_episodes()):
        if episodes is not None and k >= episodes:
            break
        obs, actions = np.asarray(ep.observations, np.float32), np.asarray(ep.actions, np.float32)
        if obs.ndim != 2 or obs.shape[-1] != obs_dim or actions.shape[-1] != action_dim:
            raise DatasetError(
                f"Minari dataset {dataset_id!r}: episode {ep.id} has observations of shape {obs.shape[1:]} and "
                f"actions of {actions.shape[1:]}, but domain {domain.name!r} has ({obs_dim},) and ({action_dim},)"
            )
        part = {"observation": obs[:-1], "action": to_zsrl(actions) if to_zsrl else actions, "next_observation": obs[1:],
                "terminated": np.asarray(ep.terminations, bool), "episode": np.full(len(actions), k),
                "step": np.arange(len(actions))}
        physics = (ep.infos or {}).get("physics")
        if physics is not None:
            part["physics"], part["next_physics"] = np.asarray(physics)[:-1], np.asarray(physics)[1:]
        parts.append(part)
    if not parts:
        raise UserError(f"Minari dataset {dataset_id!r} holds no episode")
    arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    meta = {"domain": domain.name, "domain_spec": domain_spec or domain.name, "collector": f"minari:{dataset_id}",
            "episodes_imported": len(parts), "created": now_iso(), "versions": versions()}
    dataset = from_numpy(arrays, meta)
    dataset.save(out, overwrite, coverage_files(domain, dataset))
    return dataset


def export_minari(dataset: OfflineDataset, dataset_id: str, domain: Any) -> Any:
    """Write ``dataset`` as the local Minari dataset ``dataset_id``: its episodes with zsrl's
    ``[-1, 1]`` actions (in the env's units for a gymnasium domain), no rewards (zsrl's data is
    reward-free: zeros), the physics states in the episode infos; returns the Minari dataset."""
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    minari = _minari()
    data = {k: v.cpu().numpy() for k, v in dataset.data.items(include_nested=True, leaves_only=True)}
    to_native = getattr(domain, "native_action", None)
    episode, buffers = data["episode"], []
    starts = np.flatnonzero(np.r_[True, episode[1:] != episode[:-1]])
    for k, (a, b) in enumerate(zip(starts, [*starts[1:], len(episode)])):
        terminated = data[("next", "terminated")][a:b]
        infos = {}
        if "physics" in data:
            infos["physics"] = np.concatenate([data["physics"][a:b], data[("next", "physics")][b - 1:b]])
        actions = data["action"][a:b]
        buffers.append(EpisodeBuffer(
            id=k, observations=np.concatenate([data["observation"][a:b], data[("next", "observation")][b - 1:b]]),
            actions=(to_native(actions).astype(np.float32) if to_native else actions), rewards=np.zeros(b - a),
            terminations=terminated, truncations=np.r_[np.zeros(b - a - 1, bool), not terminated[-1]], infos=infos))
    env = domain.make_env(seed=0)
    spaces = {"observation_space": env.observation_space,
              "action_space": domain.native_action_space if to_native else env.action_space}
    env.close()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is set to None", category=UserWarning)  # Minari's advice
            return minari.create_dataset_from_buffers(
            dataset_id, buffers, algorithm_name=str(dataset.meta.get("collector")), author="zsrl",
            description=f"zsrl dataset of domain {domain.name} (reward-free: rewards are 0; relabel with zsrl)",
            **spaces)
    except (ValueError, gym.error.Error) as exc:
        raise UserError(f"Minari cannot create {dataset_id!r}: {exc}") from None
