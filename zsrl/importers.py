"""Datasets of the field, brought into zsrl's format: ExORL episode folders.

ExORL (Yarats et al. 2022, ``denisyarats/exorl``) stores one ``.npz`` file per episode with
``observation``, ``action``, ``reward``, ``discount`` and ``physics`` (the MuJoCo state) of
``T + 1`` steps, the first a dummy reset step (its action is zero). Transition ``t`` is then
``(observation[t], action[t + 1], observation[t + 1])``, terminal where ``discount[t + 1] == 0``,
with the states ``physics[t]`` and ``physics[t + 1]``: the stored rewards are not kept, since
zsrl's DMC domains relabel every task exactly from the physics state. The point-mass maze's
ExORL datasets have the same layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from zsrl.collection import coverage_png
from zsrl.data import OfflineDataset, env_dims, from_numpy
from zsrl.errors import DatasetError, UserError
from zsrl.storage import new_directory
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
    folder, out = Path(folder), Path(out)
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
    with new_directory(out, "dataset", overwrite) as tmp:
        png = coverage_png(domain, dataset)
        dataset.write_into(tmp, extra_files={"coverage.png": png} if png else None)
    dataset.path = out
    return dataset
