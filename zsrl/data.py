"""Reward-free offline datasets: a TensorDict memmap directory plus ``meta.json``.

Layout of a dataset directory::

    DIR/meta.json          format version, domain, collector, seed, versions, sizes
    DIR/tensors/...        TensorDict.memmap of the transitions
    DIR/coverage.png       (optional) picture of the visited states

Keys (``N`` transitions, episodes stored contiguously):

========================  ====================  ==========================================
key                       shape / dtype         meaning
========================  ====================  ==========================================
``observation``           (N, obs_dim) f32      s
``action``                (N, act_dim) f32      a, in [-1, 1]
``next/observation``      (N, obs_dim) f32      s'
``next/terminated``       (N,) bool             s' is terminal (no bootstrap)
``episode``               (N,) i64              episode id
``step``                  (N,) i64              index of the transition in its episode
``physics``               (N, P) f64            simulator state at s (MuJoCo domains)
``next/physics``          (N, P) f64            simulator state at s'
========================  ====================  ==========================================

Rewards are not stored: tasks relabel transitions with ``Domain.reward``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict

from zsrl.errors import DatasetError, StorageError, UserError
from zsrl.storage import (
    atomic_write_json,
    check_format_version,
    complete_copy,
    describe_os_error,
    is_dataset_dir,
    new_directory,
    old_copy,
    read_json_object,
    sha256_file,
    storage_errors,
)
from zsrl.utils import now_iso, versions

FORMAT_VERSION = 1

_FLOAT32 = ("observation", "action", ("next", "observation"))
_REQUIRED: dict[Any, torch.dtype] = {
    "observation": torch.float32,
    "action": torch.float32,
    ("next", "observation"): torch.float32,
    ("next", "terminated"): torch.bool,
    "episode": torch.int64,
    "step": torch.int64,
}
_OPTIONAL: dict[Any, torch.dtype] = {"physics": torch.float64, ("next", "physics"): torch.float64}


@dataclass(frozen=True)
class Transitions:
    """A batch of transitions as numpy arrays with a leading batch dimension ``N``: what
    reward functions read (:data:`zsrl.envs.RewardFn`)."""

    observation: np.ndarray  # (N, obs_dim) float32
    action: np.ndarray  # (N, action_dim) float32, in [-1, 1]
    next_observation: np.ndarray  # (N, obs_dim) float32
    physics: np.ndarray | None = None  # (N, physics_dim) float64, MuJoCo state before
    next_physics: np.ndarray | None = None  # (N, physics_dim) float64, state after

    def __len__(self) -> int:
        return int(self.observation.shape[0])


def _key_name(key: Any) -> str:
    return "/".join(key) if isinstance(key, tuple) else key


class OfflineDataset:
    """Transitions resident on one device, with uniform sampling drawn on that device.

    Args:
        data: the transitions (see the module docstring for keys).
        meta: metadata (``domain``, ``collector``, ``seed``, ``versions`` …).
    """

    def __init__(self, data: TensorDict, meta: Mapping[str, Any], path: Path | None = None,
                 source: OfflineDataset | None = None):
        self.data = data
        self.meta = dict(meta)
        #: the directory it was loaded from or saved to (None: in memory only)
        self.path = path
        #: the step-by-step dataset whose rows ``data["row"]`` these transitions start at
        #: (:func:`held_action_transitions`); None: the rows are this dataset's own
        self.source = source
        self._episode_bounds: tuple[torch.Tensor, torch.Tensor] | None = None

    # ---- basic properties --------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.data.batch_size[0])

    @property
    def device(self) -> torch.device:
        return self.data["observation"].device

    @property
    def obs_dim(self) -> int:
        return int(self.data["observation"].shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.data["action"].shape[1])

    @property
    def domain(self) -> str:
        return str(self.meta.get("domain", ""))

    @property
    def has_physics(self) -> bool:
        return "physics" in self.data

    def to(self, device: str | torch.device) -> OfflineDataset:
        """The same dataset on ``device`` (itself where it is there already)."""
        if torch.device(device) == self.device:
            return self
        source = None if self.source is None else self.source.to(device)
        return OfflineDataset(self.data.to(device), self.meta, self.path, source)

    # ---- sampling ----------------------------------------------------------------------
    def sample_indices(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform indices drawn on the dataset's device (no host synchronisation)."""
        return torch.randint(len(self), (batch_size,), device=self.device, generator=generator)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TensorDict:
        """A uniformly sampled batch of transitions (a TensorDict on the dataset's device)."""
        return self.data[self.sample_indices(batch_size, generator)]

    def labelled_sample(
        self, reward_fn: Callable[[Transitions], Any], n: int, seed: int, history: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(obs, next_obs, rewards)`` of ``n`` distinct random transitions (all if fewer),
        drawn with ``seed`` and labelled by ``reward_fn`` on the host, returned on the
        dataset's device: what a reward prompt reads. Rewards must be finite real numbers.
        ``history=(L, stride)``: the states are the histories that end at them (:meth:`histories`)."""
        g = torch.Generator().manual_seed(seed)
        n = min(n, len(self))
        idx = torch.randperm(len(self), generator=g)[:n].to(self.device)
        batch = self.data[idx]
        rewards = checked_rewards(reward_fn(as_transitions(batch)), n, f"the reward function {reward_fn!r}")
        if not np.isfinite(rewards).all():
            raise ValueError("the reward function returned NaN or inf rewards; fix it before prompting with it")
        obs, next_obs = (batch["observation"], batch["next", "observation"]) if history is None else self.histories(
            idx, *history)
        return obs, next_obs, torch.as_tensor(rewards, device=self.device)

    @property
    def episode_start(self) -> torch.Tensor:
        """For each transition, the index of the first transition of its episode."""
        return self._bounds()[0]

    @property
    def episode_end(self) -> torch.Tensor:
        """For each transition, the index of the last transition of its episode."""
        return self._bounds()[1]

    def _bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(episode_start, episode_end)``, computed once (episodes are stored contiguously)."""
        if self._episode_bounds is None:
            ep = self.data["episode"]
            first = torch.ones_like(ep, dtype=torch.bool)
            first[1:] = ep[1:] != ep[:-1]
            starts = torch.nonzero(first).squeeze(-1)
            ends = torch.cat([starts[1:] - 1, starts.new_tensor([ep.shape[0] - 1])])
            which = torch.cumsum(first, 0) - 1  # each row's episode, counted in storage order
            self._episode_bounds = starts[which], ends[which]
        return self._episode_bounds

    def histories(self, idx: torch.Tensor, length: int, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``(H, H')``, each ``(N, L, obs_dim + action_dim)``: the last ``L = length`` frames
        ``(o, a_prev)`` of a policy deciding every ``stride`` steps, up to ``observation[idx]``
        and up to ``next/observation[idx]``.

        Frame ``k`` of ``H`` is the observation ``(L − 1 − k)·stride`` steps before ``idx`` with
        the action taken just before it; before its episode starts, the episode's first
        observation with a zero action (the window a policy starts an episode with). The last
        frame of ``H'`` is ``(next/observation[idx], action[idx])``. Rows of a dataset of
        held-action transitions (:func:`held_action_transitions`) are read in the
        step-by-step dataset they were made from (:attr:`source`). Drawn on the dataset's
        device, no host synchronisation once ``episode_start`` exists.
        """
        raw = self if self.source is None else self.source
        rows = idx if self.source is None else self.data["row"][idx]
        start = raw.episode_start[rows].unsqueeze(1)  # (N, 1)
        reached = rows + (stride if self.source is not None else 1)  # the raw row of next/observation

        def frames(end: torch.Tensor, count: int) -> torch.Tensor:  # (N, count, D + A), ending at row `end`
            at = end.unsqueeze(1) - stride * torch.arange(count - 1, -1, -1, device=idx.device)
            at = torch.maximum(at, start)
            prev_action = raw.data["action"][(at - 1).clamp_min(0)] * (at > start).unsqueeze(-1)
            return torch.cat([raw.data["observation"][at], prev_action], -1)

        last = torch.cat([self.data["next", "observation"][idx], self.data["action"][idx]], -1).unsqueeze(1)
        return frames(rows, length), torch.cat([frames(reached - stride, length - 1), last], 1)

    def seen_through(self, observer: Callable[..., torch.Tensor], seed: int) -> OfflineDataset:
        """The dataset as an agent of a partially observed domain variant sees it
        (:mod:`zsrl.envs.pomdp`): ``observation`` and ``next/observation`` through
        ``observer``, drawn once from ``seed`` (frozen for the run). A transition's
        ``next/observation`` is the next row's seen ``observation`` where that row continues
        its episode, so consecutive frames agree. The true ones stay as ``true_observation``
        and ``next/true_observation``: rewards are computed from them."""
        g = torch.Generator(device=self.device).manual_seed(seed)
        data = self.data.clone(recurse=False)
        obs, next_obs = data["observation"], data["next", "observation"]
        seen, seen_next = observer(obs, g), observer(next_obs, g)
        continues = torch.zeros(len(self), dtype=torch.bool, device=self.device)
        continues[:-1] = (data["episode"][1:] == data["episode"][:-1]) & (data["step"][1:] == data["step"][:-1] + 1)
        seen_next[:-1] = torch.where(continues[:-1, None], seen[1:], seen_next[:-1])
        data["true_observation"], data["next", "true_observation"] = obs, next_obs
        data["observation"], data["next", "observation"] = seen, seen_next
        return OfflineDataset(data, {**self.meta, "seen_through": str(observer)}, self.path)

    def sample_future(
        self, idx: torch.Tensor, discount: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Indices of future transitions in the same episode, offset ~ Geometric(1 - discount).

        The offset ``k >= 0`` is clipped to the end of the episode, so index ``idx + k`` and
        its ``next/observation`` is a state reached ``k + 1`` steps after ``observation[idx]``.
        """
        u = torch.rand(idx.shape, device=idx.device, generator=generator).clamp_min(1e-12)
        offset = torch.floor(torch.log(u) / np.log(discount)).long()
        return torch.minimum(idx + offset, self.episode_end[idx])

    # ---- persistence -------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False, extra_files: Mapping[str, bytes] | None = None) -> Path:
        """Write the dataset directory ``path`` atomically (:func:`zsrl.storage.new_directory`):
        an interrupted save leaves nothing that loads as a dataset, and ``overwrite`` replaces
        only a dataset directory."""
        path = Path(path)
        with new_directory(path, "dataset", overwrite) as tmp:
            self.write_into(tmp, extra_files)
        self.path = path
        return path

    def write_into(self, directory: Path, extra_files: Mapping[str, bytes] | None = None) -> None:
        """Write ``tensors/``, ``meta.json`` (with the tensors' checksums) and ``extra_files``
        into the new, empty ``directory``. The free space is checked first: the memory-mapped
        write would otherwise die of SIGBUS on a full disk."""
        with storage_errors(f"write the dataset {directory}"):
            _check_free_space(directory, int(self.data.bytes()) + sum(len(b) for b in (extra_files or {}).values()))
            self.data.memmap(directory / "tensors", num_threads=0)
            for name, blob in (extra_files or {}).items():
                (directory / name).write_bytes(blob)
            meta = {
                "format_version": FORMAT_VERSION,
                "num_transitions": len(self),
                "num_episodes": int(self.data["episode"].unique().numel()),
                "obs_dim": self.obs_dim,
                "action_dim": self.action_dim,
                **self.meta,
            }
            meta.setdefault("created", now_iso())
            meta.setdefault("versions", versions())
            meta["sha256"] = _tensor_checksums(directory / "tensors")
            atomic_write_json(directory / "meta.json", meta)
        self.meta = meta

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        domain: str | None = None,
    ) -> OfflineDataset:
        """Load and validate a dataset directory onto ``device``.

        Raises :class:`DatasetError` for a missing directory, an unfinished or corrupt
        write, missing keys, wrong shapes or dtypes, non-finite values, or (when ``domain``
        is given) a dataset collected on another domain.
        """
        path = Path(path)
        if not path.is_dir() and complete_copy(path, is_dataset_dir) is not None:
            path = old_copy(path)  # an overwrite was killed between its two renames
        if not path.is_dir():
            partial = sorted(path.parent.glob(f".{path.name}.*.partial")) if path.parent.is_dir() else []
            hint = (
                f" (found the unfinished write {partial[0].name}: the collection was "
                "interrupted; run it again)" if partial else ""
            )
            raise DatasetError(f"dataset {path} does not exist{hint}. Create one with `zsrl collect`.")
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise DatasetError(
                f"{path} is not a zsrl dataset (no meta.json). Datasets are written by "
                "`zsrl collect`; an interrupted collection never leaves one behind."
            )
        meta = read_json_object(meta_path, f"dataset {path}")
        check_format_version(meta.get("format_version"), FORMAT_VERSION, f"dataset {path}", DatasetError)
        if domain is not None:
            check_domain(path, meta.get("domain"), domain)
        _check_leaf_files(path / "tensors")
        _verify_checksums(path, meta.get("sha256"))
        try:
            stored = TensorDict.load_memmap(path / "tensors")
        except PermissionError as exc:
            raise StorageError(f"dataset {path}: cannot read {exc.filename}: {describe_os_error(exc)}") from None
        except (RuntimeError, ValueError, OSError, KeyError, TypeError, AttributeError) as exc:  # corrupt folder
            raise DatasetError(
                f"dataset {path} cannot be read ({type(exc).__name__}: {exc}). The files are "
                "corrupt or incomplete; re-collect the dataset."
            ) from None
        if stored.batch_size and stored.batch_size[0] != meta.get("num_transitions"):
            raise DatasetError(
                f"dataset {path}: meta.json says {meta.get('num_transitions')} transitions but "
                f"the tensors hold {stored.batch_size[0]}; the dataset is corrupt, re-collect it."
            )
        # copy out of the memory map onto the training device
        data = stored.to(torch.device(device)) if torch.device(device).type != "cpu" else stored.clone()
        _validate(data, f"dataset {path}")
        return cls(data, meta, path)

    # ---- summaries ---------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Size, episodes, per-dimension ranges and a coverage summary."""
        obs = self.data["observation"].double()
        act = self.data["action"].double()
        ep_len = torch.bincount(self.data["episode"] - self.data["episode"].min()).double()
        ep_len = ep_len[ep_len > 0]
        occupied = _occupied_cells(obs, bins=10)
        return {
            "domain": self.meta.get("domain"),
            "collector": self.meta.get("collector"),
            "seed": self.meta.get("seed"),
            "transitions": len(self),
            "episodes": int(ep_len.numel()),
            "episode_length": {"min": int(ep_len.min()), "mean": float(ep_len.mean()), "max": int(ep_len.max())},
            "terminal_fraction": float(self.data["next", "terminated"].float().mean()),
            "physics": self.has_physics,
            "observation": _ranges(obs),
            "action": _ranges(act),
            "coverage": {
                "occupied_cells_10_per_dim_top2_pca": occupied,
                "mean_per_dim_std": float(_std(obs).mean()),
            },
        }


def _ranges(x: torch.Tensor) -> dict[str, list[float]]:
    q = torch.quantile(x[: min(len(x), 200_000)], torch.tensor([0.01, 0.99], dtype=x.dtype), dim=0)
    return {
        "min": x.min(0).values.tolist(),
        "p01": q[0].tolist(),
        "mean": x.mean(0).tolist(),
        "p99": q[1].tolist(),
        "max": x.max(0).values.tolist(),
        "std": _std(x).tolist(),
    }


def _std(x: torch.Tensor) -> torch.Tensor:
    """Per-column sample standard deviation (0 for a single row)."""
    return x.std(0) if x.shape[0] > 1 else torch.zeros_like(x[0])


def _occupied_cells(obs: torch.Tensor, bins: int) -> float:
    """Fraction of a bins×bins grid over the top two principal components that is visited.

    A domain-agnostic proxy for state coverage (maze domains report exact floor coverage).
    """
    x = obs - obs.mean(0)
    if min(x.shape) >= 2:
        _, _, v = torch.pca_lowrank(x, q=2, center=False)
        x = x @ v[:, :2]
    elif x.shape[1] >= 2:  # one state: no plane to fit
        x = x[:, :2]
    else:
        x = torch.cat([x, torch.zeros_like(x)], 1)
    lo, hi = x.min(0).values, x.max(0).values
    cell = ((x - lo) / (hi - lo).clamp_min(1e-9) * bins).long().clamp(0, bins - 1)
    flat = cell[:, 0] * bins + cell[:, 1]
    return float(torch.unique(flat).numel() / bins**2)


def _check_leaf_files(root: Path) -> None:
    """Compare every memmap leaf's size with the size its metadata promises."""
    if not root.is_dir():
        raise DatasetError(f"{root} is missing; the dataset is incomplete, re-collect it.")
    for meta_file in root.rglob("meta.json"):
        try:
            meta = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DatasetError(f"{meta_file} is corrupt; re-collect the dataset.") from None
        except OSError as exc:
            raise StorageError(f"cannot read {meta_file}: {describe_os_error(exc)}") from None
        if not isinstance(meta, dict):
            raise DatasetError(f"{meta_file} is corrupt (not a JSON object); re-collect the dataset.")
        for leaf, info in meta.items():
            if not isinstance(info, dict) or "shape" not in info or "dtype" not in info:
                continue
            file = meta_file.parent / f"{leaf}.memmap"
            if not file.is_file():
                raise DatasetError(f"{file} is missing; the dataset is incomplete, re-collect it.")
            dtype = getattr(torch, str(info["dtype"]).removeprefix("torch."), None)
            if not isinstance(dtype, torch.dtype) or not isinstance(info["shape"], list):
                raise DatasetError(f"{meta_file} is corrupt (bad dtype or shape of {leaf}); re-collect the dataset.")
            expected = int(np.prod(info["shape"])) * torch.empty((), dtype=dtype).element_size()
            actual = file.stat().st_size
            if actual < expected:
                raise DatasetError(
                    f"{file} is truncated ({actual} of {expected} bytes); the dataset is "
                    "corrupt, re-collect it."
                )


def fingerprint(path: str | Path) -> dict[str, Any]:
    """What identifies a dataset directory's contents cheaply: the sha256 of its meta.json
    (which records the collection's time, seed and sizes) and the bytes of its tensors."""
    path = Path(path)
    with storage_errors(f"read the dataset {path}"):
        meta = (path / "meta.json").read_bytes()
        size = sum(f.stat().st_size for f in (path / "tensors").rglob("*") if f.is_file())
    return {"meta_sha256": hashlib.sha256(meta).hexdigest(), "tensor_bytes": size}


def run_dataset(run_dir: Path, run: dict[str, Any], dataset: str | Path | None, moved: str) -> Path:
    """The dataset a run recorded in its ``run.json`` (or ``dataset``, a moved copy), checked
    against the recorded fingerprint; ``moved`` says how to point at a new place."""
    recorded = run.get("dataset")
    if not isinstance(recorded, str):
        raise UserError(f"{run_dir}/run.json is corrupt (no dataset path)")
    path = Path(dataset) if dataset is not None else Path(recorded)
    if not path.exists():
        raise DatasetError(f"the dataset of run {run_dir} is gone from {path}. If it moved, {moved}.")
    expected = run.get("dataset_fingerprint")
    if expected is not None and (path / "meta.json").is_file() and fingerprint(path) != expected:
        raise DatasetError(
            f"the dataset at {path} is not the one run {run_dir} started on (its meta.json or "
            "size differ: it was re-collected or replaced). Using other data would mix two "
            "datasets in one run; pass the original with `--dataset`, or start a new run."
        )
    return path


def env_dims(domain: Any, seed: int = 0) -> tuple[int, int]:
    """``(obs_dim, action_dim)`` of the domain's env; a failing env is a one-paragraph error."""
    try:
        env = domain.make_env(seed=seed)
        dims = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
        env.close()
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 — a plug-in's own failure, told in one paragraph
        raise UserError(
            f"domain {getattr(domain, 'name', domain)!r} cannot make its environment: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    return dims


def check_domain(path: Any, collected_on: Any, domain: str) -> None:
    """Refuse a dataset collected on another domain than ``domain``."""
    if collected_on != domain:
        raise DatasetError(
            f"dataset {path} was collected on domain {collected_on!r}, but this run "
            f"uses domain {domain!r}. Pass a dataset of {domain!r} (collect one with "
            f"`zsrl collect --domain {domain}`) or set domain={collected_on}."
        )


def check_fits_domain(data: OfflineDataset, domain: Any, where: str) -> None:
    """Refuse a dataset whose observation or action size differs from ``domain``'s env."""
    obs_dim, act_dim = env_dims(domain)
    if (data.obs_dim, data.action_dim) != (obs_dim, act_dim):
        raise DatasetError(
            f"dataset {where} has observations of size {data.obs_dim} and actions of size "
            f"{data.action_dim}, but domain {domain.name!r} has {obs_dim} and {act_dim}; it was "
            f"collected with another version or variant of the domain. Re-collect it with `zsrl collect`."
        )


def _tensor_checksums(root: Path) -> dict[str, str]:
    return {f.relative_to(root).as_posix(): sha256_file(f) for f in sorted(root.rglob("*")) if f.is_file()}


def _verify_checksums(path: Path, expected: Any) -> None:
    """Compare the tensor files with the checksums meta.json recorded; every file must have one."""
    unlisted = sorted(f.relative_to(path / "tensors").as_posix() for f in (path / "tensors").rglob("*")
                      if f.is_file() and f.relative_to(path / "tensors").as_posix() not in (expected or {}))
    if not isinstance(expected, dict) or unlisted:
        why = f"{', '.join(unlisted[:3])} have no checksum" if isinstance(expected, dict) else "it has no checksum table"
        raise DatasetError(
            f"dataset {path} cannot be verified ({why} in meta.json: damaged, edited, or written by an older "
            "zsrl); it is not loaded unverified. Re-collect it."
        )
    with storage_errors(f"read the dataset {path}"):
        for rel, digest in expected.items():
            file = path / "tensors" / rel
            if not file.is_file():
                raise DatasetError(f"{file} is missing; the dataset is incomplete, re-collect it.")
            if sha256_file(file) != digest:
                raise DatasetError(
                    f"{file} is corrupt: its sha256 differs from the one recorded when the dataset "
                    "was written (a damaged disk or copy, or an edit). Re-collect the dataset or "
                    "copy it again."
                )


def _check_free_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed * 1.05 + (16 << 20):
        raise StorageError(
            f"cannot write the dataset: it needs {needed / 2**20:,.0f} MiB but only "
            f"{free / 2**20:,.0f} MiB are free on {directory.parent}. Free some space or choose "
            "another --out."
        )


def _validate(data: TensorDict, what: str) -> None:
    keys = set(data.keys(include_nested=True, leaves_only=True))
    missing = [_key_name(k) for k in _REQUIRED if k not in keys]
    if missing:
        raise DatasetError(f"{what} lacks the keys {', '.join(missing)}; re-collect it with `zsrl collect`.")
    if len(data.batch_size) != 1:
        raise DatasetError(f"{what} must have one batch dimension, has {tuple(data.batch_size)}")
    n = data.batch_size[0]
    if n == 0:
        raise DatasetError(f"{what} is empty")
    for key, dtype in {**_REQUIRED, **{k: v for k, v in _OPTIONAL.items() if k in keys}}.items():
        t = data[key]
        if t.dtype != dtype:
            raise DatasetError(f"{what}: {_key_name(key)} has dtype {t.dtype}, expected {dtype}")
    if data["observation"].ndim != 2 or data["action"].ndim != 2:
        raise DatasetError(f"{what}: observation and action must be 2-D (N, dim)")
    if data["next", "observation"].shape != data["observation"].shape:
        raise DatasetError(
            f"{what}: next/observation has shape {tuple(data['next', 'observation'].shape)} but "
            f"observation has {tuple(data['observation'].shape)}"
        )
    if ("physics" in keys) != (("next", "physics") in keys):
        raise DatasetError(f"{what}: physics and next/physics must come together")
    for key in [*_FLOAT32, *[k for k in _OPTIONAL if k in keys]]:
        finite = torch.isfinite(data[key]).all(-1)
        if not bool(finite.all()):
            bad = (~finite).nonzero().squeeze(-1)
            raise DatasetError(
                f"{what}: {_key_name(key)} has non-finite values (NaN or inf) in {bad.numel()} of "
                f"{n} rows, first at row {int(bad[0])}. Fix the collector or re-collect."
            )
    if data["action"].abs().max() > 1 + 1e-5:
        raise DatasetError(f"{what}: actions must lie in [-1, 1] (max |a| = {float(data['action'].abs().max()):.3g})")
    episode, step = data["episode"], data["step"]
    starts = episode[1:] != episode[:-1]
    blocks, ids = int(starts.sum()) + 1, int(episode.unique().numel())
    jumps = int(((step[1:] != step[:-1] + 1) & ~starts).sum())
    if blocks != ids or jumps:
        raise DatasetError(
            f"{what}: its rows are not episodes stored in order ({ids} episode ids in {blocks} runs of rows, "
            f"{jumps} steps that do not follow the one before): were the rows shuffled? Samplers of future "
            "states read an episode's rows one after the other; store each episode contiguously, in order."
        )


def from_numpy(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> OfflineDataset:
    """Build a dataset from flat numpy arrays keyed ``observation``, ``next_observation`` …"""
    td: dict[str, Any] = {
        "observation": torch.as_tensor(arrays["observation"], dtype=torch.float32),
        "action": torch.as_tensor(arrays["action"], dtype=torch.float32),
        "episode": torch.as_tensor(arrays["episode"], dtype=torch.int64),
        "step": torch.as_tensor(arrays["step"], dtype=torch.int64),
        "next": {
            "observation": torch.as_tensor(arrays["next_observation"], dtype=torch.float32),
            "terminated": torch.as_tensor(arrays["terminated"], dtype=torch.bool),
        },
    }
    if arrays.get("physics") is not None:
        td["physics"] = torch.as_tensor(arrays["physics"], dtype=torch.float64)
        td["next"]["physics"] = torch.as_tensor(arrays["next_physics"], dtype=torch.float64)
    n = td["observation"].shape[0]
    data = TensorDict(td, batch_size=[n])
    _validate(data, "collected data")
    return OfflineDataset(data, meta)


def checked_rewards(values: Any, n: int, what: str) -> np.ndarray:
    """What a reward function returned for ``n`` transitions as float32 ``(n,)``; a
    ValueError when it is not ``n`` real numbers (None, text, complex, another count)."""
    try:
        array = np.asarray(values)
    except (TypeError, ValueError):  # ragged sequences
        array = np.asarray(None)
    if array.dtype.kind not in "biuf":
        kind = "None" if values is None else f"{type(values).__name__} of {array.dtype.name}"
        raise ValueError(f"{what} returned {kind}, not {n} real numbers (one reward per transition)")
    array = array.astype(np.float32).reshape(-1)
    if array.shape[0] != n:
        raise ValueError(f"{what} returned {array.shape[0]} rewards for {n} transitions")
    return array


#: a reward function of a batch of transitions → ``(N,)``
RewardFn = Callable[[Transitions], np.ndarray]
#: the form users write: ``f(obs, action, next_obs) -> (N,)`` over numpy batches
ArrayRewardFn = Callable[[np.ndarray, np.ndarray, np.ndarray], Any]


class _FromArrays:
    """A :data:`RewardFn` calling an :data:`ArrayRewardFn` on the batch's arrays."""

    def __init__(self, fn: ArrayRewardFn) -> None:
        self.fn = fn

    def __call__(self, transitions: Transitions) -> np.ndarray:
        rewards = self.fn(transitions.observation, transitions.action, transitions.next_observation)
        return checked_rewards(rewards, len(transitions), f"the reward function {self.fn.__name__!r}"
                               if hasattr(self.fn, "__name__") else "the reward function")

    def __repr__(self) -> str:
        return f"<reward {getattr(self.fn, '__name__', self.fn)!r}>"


def reward_from_arrays(fn: ArrayRewardFn) -> RewardFn:
    """``fn(obs, action, next_obs)`` as a :data:`RewardFn` over :class:`Transitions`."""
    return _FromArrays(fn)


def as_transitions(data: TensorDict) -> Transitions:
    """The :class:`Transitions` (numpy, on the host) of a batch of transitions."""

    def np_(key: Any) -> np.ndarray | None:
        return data[key].detach().cpu().numpy() if key in data.keys(include_nested=True) else None

    true = "true_observation" in data.keys(include_nested=False)  # a partially observed view: rewards from the truth
    return Transitions(
        observation=np_("true_observation" if true else "observation"),
        action=np_("action"),
        next_observation=np_(("next", "true_observation") if true else ("next", "observation")),
        physics=np_("physics"),
        next_physics=np_(("next", "physics")),
    )


#: the smallest fraction of k-step windows with a held action that makes a dataset usable
#: for ``agent.action_repeat = k`` (below it, the data was not collected with held actions)
MIN_HELD_FRACTION = 0.5


def held_action_transitions(dataset: OfflineDataset, repeat: int) -> OfflineDataset:
    """The ``repeat``-step transitions of ``dataset`` over which one action was held.

    A window ``t … t+k−1`` (``k = repeat``) of one episode whose actions are all equal gives
    the transition ``(s_t, a_t, s_{t+k})``: ``observation`` and ``physics`` of row ``t``,
    ``next/*`` of row ``t+k−1`` (its terminal flag included: an episode ends only at its
    last row). Windows that straddle an episode boundary or an action change are dropped.
    Sticky-random data (actions held ``--hold`` steps) keeps about ``1 − (k−1)/hold`` of its
    rows; data whose actions change every step keeps almost none and is refused.
    """
    if repeat == 1:
        return dataset
    data, n = dataset.data, len(dataset)
    if n < repeat:
        raise DatasetError(f"the dataset has {n} transitions, fewer than agent.action_repeat={repeat}")
    starts = n - repeat + 1
    episode, action = data["episode"], data["action"]
    held = torch.ones(starts, dtype=torch.bool, device=dataset.device)
    for j in range(1, repeat):
        held &= episode[j : j + starts] == episode[:starts]
        held &= (action[j : j + starts] == action[:starts]).all(-1)
    fraction = float(held.float().mean())
    if fraction < MIN_HELD_FRACTION:
        raise DatasetError(
            f"agent.action_repeat={repeat} trains on windows where one action was held for "
            f"{repeat} steps, but only {fraction:.0%} of this dataset's windows hold their action "
            f"(collector {dataset.meta.get('collector', '?')!r}). Collect with "
            f"`zsrl collect --collector sticky --hold H` (H well above {repeat}) or set "
            "agent.action_repeat=1."
        )
    first = torch.nonzero(held).squeeze(-1)
    last = first + repeat - 1
    out = data.exclude("next")[first]  # tensor indexing copies: one copy of each key
    out["next"] = data["next"][last]
    out["row"] = first
    return OfflineDataset(out, {**dataset.meta, "action_repeat": repeat}, source=dataset)
